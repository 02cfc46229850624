//! kafka connector (in progress).
