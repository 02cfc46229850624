//! Lambda architecture (in progress).
