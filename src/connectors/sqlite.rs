//! sqlite connector (in progress).
