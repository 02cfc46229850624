//! Named fault-injection points, compiled in only with the `failpoints` feature.
//!
//! Each point is a [`fail`](https://docs.rs/fail) fail point. Tests configure them with
//! `fail::cfg(name, action)`: `return` makes the operation fail with a typed error at
//! that point (`return(enospc)` makes a checkpoint point fail as a full disk would),
//! `panic` panics there, and `fail::cfg_callback` runs any code there (the crash
//! harness kills its own process). Without the feature the macro expands to nothing.
//!
//! | point | where |
//! |---|---|
//! | `batchstream::sink::before_flush` | before the sink's `flush` at a checkpoint |
//! | `batchstream::sink::after_flush` | after it, before `prepare` |
//! | `batchstream::sink::after_prepare` | after `prepare(epoch)`, before the checkpoint is saved |
//! | `batchstream::checkpoint::after_temp_write` | file store: the temporary file is written and fsynced, not yet renamed |
//! | `batchstream::checkpoint::after_rename` | file store: renamed into place, directory not yet fsynced |
//! | `batchstream::checkpoint::before_dir_fsync` | file store: just before the directory fsync |
//! | `batchstream::sink::after_commit` | after `commit(epoch)`, before the source ack |
//! | `batchstream::source::before_ack` | just before the source is acked |

/// Evaluates fail point `$name`; a `return(arg)` action makes the enclosing function
/// return `$on_return(arg)`.
macro_rules! failpoint {
    ($name:literal, $on_return:expr) => {
        #[cfg(feature = "failpoints")]
        ::fail::fail_point!($name, |arg: Option<String>| $on_return(arg));
    };
}

pub(crate) use failpoint;

/// The error a failing sink point returns.
#[cfg(feature = "failpoints")]
pub(crate) fn sink_error<T>(
    point: &'static str,
) -> impl FnOnce(Option<String>) -> crate::Result<T> {
    move |arg| {
        Err(crate::Error::sink(
            point,
            format!("fail point {point} ({})", arg.unwrap_or_default()),
        ))
    }
}

/// The error a failing source point returns.
#[cfg(feature = "failpoints")]
pub(crate) fn source_error<T>(
    point: &'static str,
) -> impl FnOnce(Option<String>) -> crate::Result<T> {
    move |arg| {
        Err(crate::Error::source(format!(
            "fail point {point} ({})",
            arg.unwrap_or_default()
        )))
    }
}

/// The I/O error a failing file point returns: `return(enospc)` is a full disk
/// (`ErrorKind::StorageFull`), anything else a generic I/O error.
#[cfg(feature = "failpoints")]
pub(crate) fn io_error(point: &'static str, arg: Option<String>) -> std::io::Error {
    match arg.as_deref() {
        Some("enospc") => std::io::Error::from_raw_os_error(28),
        _ => std::io::Error::other(format!("fail point {point}")),
    }
}
