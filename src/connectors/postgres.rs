//! postgres connector (in progress).
