//! Shutdown signals: the first stops a run gracefully, a second aborts it.
//!
//! [`Shutdown::new`] gives a [`ShutdownHandle`] to signal with and a [`Shutdown`] to
//! pass to an executor's `run_with_shutdown`. On the **first** signal the executor
//! stops reading, finishes the batch in hand, flushes the sink, saves and commits a
//! final checkpoint, acks the source and returns a report with
//! [`Outcome::Stopped`](crate::Outcome::Stopped). If a **second** signal arrives
//! before that is done (a sink that takes too long to flush, say), the run is
//! abandoned where it stands and returns [`Error::Aborted`](crate::Error::Aborted):
//! nothing past the last saved checkpoint was committed or acked, so a restart
//! resumes from it without loss (and, with an idempotent or transactional sink,
//! without duplicates).
//!
//! [`Shutdown::ctrl_c`] wires this to Ctrl-C / `SIGINT` (and `SIGTERM` on Unix), the
//! usual behaviour of a service: press once to stop cleanly, twice to quit now.
//!
//! ```
//! use batchstream::{Pipeline, StreamExecutor, Outcome, Shutdown};
//! use batchstream::adapters::{ChannelSource, CollectSink};
//! use batchstream::transform;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let (tx, rx) = tokio::sync::mpsc::channel(16);
//! let (sink, out) = CollectSink::new();
//! let p = Pipeline::new("svc", ChannelSource::new(rx), transform::identity::<u32>(), sink);
//! let (handle, shutdown) = Shutdown::new();
//! let run = tokio::spawn(StreamExecutor::new().run_with_shutdown(p, shutdown));
//! tx.send(7).await.unwrap();
//! tokio::task::yield_now().await;
//! handle.signal(); // the first signal: stop cleanly
//! let report = run.await.unwrap()?;
//! assert_eq!(report.outcome, Outcome::Stopped);
//! # drop(tx); let _ = out;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use tokio::sync::watch;

/// The receiving side of shutdown signals; cheap to clone. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u32>,
}

/// Sends shutdown signals; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<u32>>,
}

impl ShutdownHandle {
    /// Sends one signal: the first stops gracefully, the second aborts.
    pub fn signal(&self) {
        self.tx.send_modify(|n| *n = n.saturating_add(1));
    }
}

impl Shutdown {
    /// A pair: signal with the handle, give the `Shutdown` to the executor.
    pub fn new() -> (ShutdownHandle, Shutdown) {
        let (tx, rx) = watch::channel(0);
        (ShutdownHandle { tx: Arc::new(tx) }, Shutdown { rx })
    }

    /// Signals on every Ctrl-C (`SIGINT`), and on Unix every `SIGTERM`. Must be
    /// called inside a tokio runtime: it spawns the task that listens.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the signal handlers cannot be installed.
    pub fn ctrl_c() -> crate::Result<Shutdown> {
        let (handle, shutdown) = Shutdown::new();
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| crate::Error::io("SIGTERM handler", e))?;
        tokio::spawn(async move {
            loop {
                #[cfg(unix)]
                let got = tokio::select! {
                    r = tokio::signal::ctrl_c() => r.is_ok(),
                    r = term.recv() => r.is_some(),
                };
                #[cfg(not(unix))]
                let got = tokio::signal::ctrl_c().await.is_ok();
                if !got {
                    return;
                }
                tracing::warn!("shutdown signal received");
                handle.signal();
            }
        });
        Ok(shutdown)
    }

    /// Signals received so far.
    pub fn signals(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Completes once at least `n` signals were sent; never, if every handle is
    /// dropped first.
    async fn at_least(mut self, n: u32) {
        if self.rx.wait_for(|count| *count >= n).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Completes at the first signal: use it as the `shutdown` future of `run_until`.
    pub async fn requested(self) {
        self.at_least(1).await;
    }

    /// Completes at the second signal.
    pub async fn aborted(self) {
        self.at_least(2).await;
    }
}
