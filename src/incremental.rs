//! Incremental aggregates (in progress).
