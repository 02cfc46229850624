//! The `batchstream` command-line model advisor (in progress).
fn main() {}
