//! redis connector (in progress).
