//! The model advisor (in progress).
