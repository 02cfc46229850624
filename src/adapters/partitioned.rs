//! Partitioned sources (in progress).
