//! SQLite: an embedded checkpoint store (SQLite bundled, no server).
//!
//! | type | what it gives | guarantee |
//! |---|---|---|
//! | [`SqliteCheckpointStore`] | checkpoints in `batchstream_checkpoints(pipeline_id, epoch, body, updated_at)` in a database file (WAL mode, `synchronous=FULL`) or in memory | a save is one atomic, durable statement; a damaged row is [`CheckpointError::Corrupt`] naming the pipeline |
//!
//! Every call runs on tokio's blocking pool (`spawn_blocking`), so a slow disk does
//! not stall the runtime. Several pipelines can share one database (one row each).
//!
//! ```
//! use batchstream::checkpoint::{Checkpoint, CheckpointStore};
//! use batchstream::connectors::sqlite::SqliteCheckpointStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), batchstream::CheckpointError> {
//! # let dir = std::env::temp_dir().join(format!("bs-sqlite-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let store = SqliteCheckpointStore::open(dir.join("checkpoints.db")).await?;
//! let mut ck = Checkpoint::new("orders");
//! ck.epoch = 3;
//! store.save(&ck).await?;
//! drop(store);
//!
//! let reopened = SqliteCheckpointStore::open(dir.join("checkpoints.db")).await?;
//! assert_eq!(reopened.load("orders").await?.unwrap().epoch, 3);
//! assert!(reopened.load("payments").await?.is_none());
//! # drop(reopened);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension};

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::error::CheckpointError;

/// The default table.
pub const CHECKPOINT_TABLE: &str = "batchstream_checkpoints";

/// Checkpoints in an SQLite database: one row per pipeline,
/// `(pipeline_id TEXT PRIMARY KEY, epoch INTEGER, body TEXT, updated_at TEXT)`, the
/// body the checkpoint as JSON. Clones share the connection.
///
/// A file database uses WAL mode with `synchronous=FULL`, so a saved checkpoint
/// survives a crash, and waits up to 5 s for a lock held by another process (then the
/// error is a retryable [`CheckpointError::Io`] of kind `TimedOut`).
///
/// See the [module docs](self) for an example.
#[derive(Clone)]
pub struct SqliteCheckpointStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl fmt::Debug for SqliteCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCheckpointStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteCheckpointStore {
    /// Opens (creating if needed) the database file at `path` and its table.
    ///
    /// # Errors
    /// [`CheckpointError::Io`] when the file cannot be opened or written;
    /// [`CheckpointError::Corrupt`] when it is not an SQLite database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = blocking(&path, move || {
            let conn = Connection::open(&p).map_err(|e| map_err(&p, e))?;
            setup(&conn, &p, true)?;
            Ok(conn)
        })
        .await?;
        Ok(SqliteCheckpointStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// A store in a private in-memory database (gone when the last clone is dropped).
    ///
    /// # Errors
    /// [`CheckpointError::Io`] if SQLite cannot allocate it.
    pub fn in_memory() -> Result<Self, CheckpointError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| map_err(&path, e))?;
        setup(&conn, &path, false)?;
        Ok(SqliteCheckpointStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    fn with_conn<R, F>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<R, CheckpointError>> + Send + use<R, F>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<R, CheckpointError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let path = self.path.clone();
        async move {
            let p = path.clone();
            blocking(&path, move || {
                // A panic while holding the lock cannot leave a half-written row: each
                // save is one statement, atomic in SQLite.
                let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                f(&conn, &p)
            })
            .await
        }
    }
}

async fn blocking<R, F>(path: &Path, f: F) -> Result<R, CheckpointError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, CheckpointError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CheckpointError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("the SQLite task failed: {e}")),
        })?
}

fn setup(conn: &Connection, path: &Path, file: bool) -> Result<(), CheckpointError> {
    let err = |e| map_err(path, e);
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    if file {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=FULL").map_err(err)?;
    }
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (
            pipeline_id TEXT PRIMARY KEY NOT NULL,
            epoch INTEGER NOT NULL,
            body TEXT NOT NULL,
            updated_at TEXT NOT NULL)"
    ))
    .map_err(err)?;
    Ok(())
}

/// Busy or locked: retryable `TimedOut`; a damaged or foreign file: `Corrupt`; a full
/// disk: `StorageFull`; anything else: `Other`.
fn map_err(path: &Path, e: rusqlite::Error) -> CheckpointError {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => std::io::ErrorKind::TimedOut,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            return CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
        }
        Some(ErrorCode::DiskFull) => std::io::ErrorKind::StorageFull,
        Some(ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            std::io::ErrorKind::PermissionDenied
        }
        _ => std::io::ErrorKind::Other,
    };
    CheckpointError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, e),
    }
}

fn locator(path: &Path, pipeline_id: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}#{CHECKPOINT_TABLE}/{pipeline_id}",
        path.display()
    ))
}

impl CheckpointStore for SqliteCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, CheckpointError>> + Send {
        let id = pipeline_id.to_owned();
        self.with_conn(move |conn, path| {
            let row: Option<(Option<i64>, Option<String>)> = conn
                .query_row(
                    &format!("SELECT epoch, body FROM {CHECKPOINT_TABLE} WHERE pipeline_id = ?1"),
                    [&id],
                    |r| Ok((r.get(0).ok(), r.get(1).ok())),
                )
                .optional()
                .map_err(|e| map_err(path, e))?;
            let Some((epoch, body)) = row else {
                return Ok(None);
            };
            let corrupt = |reason: String| CheckpointError::Corrupt {
                path: locator(path, &id),
                reason,
            };
            let body = body.ok_or_else(|| corrupt("the body is not text".into()))?;
            let ck: Checkpoint = serde_json::from_str(&body)
                .map_err(|e| corrupt(format!("the body does not decode as a checkpoint: {e}")))?;
            if ck.pipeline_id != id {
                return Err(corrupt(format!(
                    "the body belongs to pipeline `{}`",
                    ck.pipeline_id
                )));
            }
            if epoch.and_then(|e| u64::try_from(e).ok()) != Some(ck.epoch) {
                return Err(corrupt(format!(
                    "the epoch column says {epoch:?}, the body {}",
                    ck.epoch
                )));
            }
            Ok(Some(ck))
        })
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send {
        let encoded = serde_json::to_string(checkpoint)
            .map_err(|e| e.to_string())
            .and_then(|body| {
                i64::try_from(checkpoint.epoch)
                    .map(|epoch| (epoch, body))
                    .map_err(|_| format!("epoch {} does not fit an INTEGER", checkpoint.epoch))
            })
            .map_err(|message| CheckpointError::Serde {
                pipeline_id: checkpoint.pipeline_id.clone(),
                action: "encoded",
                message,
            });
        let id = checkpoint.pipeline_id.clone();
        self.with_conn(move |conn, path| {
            let (epoch, body) = encoded?;
            conn.execute(
                &format!(
                    "INSERT INTO {CHECKPOINT_TABLE} (pipeline_id, epoch, body, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (pipeline_id) DO UPDATE
                     SET epoch = excluded.epoch, body = excluded.body, updated_at = excluded.updated_at"
                ),
                rusqlite::params![id, epoch, body, chrono::Utc::now().to_rfc3339()],
            )
            .map_err(|e| map_err(path, e))?;
            Ok(())
        })
    }
}
