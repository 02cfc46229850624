//! PostgreSQL: a keyset-paginated source, three sinks and a checkpoint store.
//!
//! | type | role | guarantee |
//! |---|---|---|
//! | [`PgClient`] | one connection, shared by clones; reconnects on the next call after a loss | transient failures are retryable errors naming `PostgreSQL at host:port` |
//! | [`PgSource`] | bounded extract of a table or query by keyset pagination (`WHERE key > $last ORDER BY key LIMIT n`) | resumable: the position is the last key read; undecodable rows become dead letters naming table and key |
//! | [`PgUpsertSink`] | `INSERT .. ON CONFLICT (key) DO UPDATE`, one transaction per flush | [`Idempotent`](DeliveryGuarantee::Idempotent) |
//! | [`PgCounterSink`] | additive increments (`total = total + EXCLUDED.total`) staged at `prepare`, applied at `commit` in the transaction that records the epoch | [`Transactional`](DeliveryGuarantee::Transactional): exactly once |
//! | [`PgTransactionalSink`] + [`PgTransactionalStore`] | rows and checkpoint written in **one** transaction by the store's `save` | [`Transactional`](DeliveryGuarantee::Transactional): exactly once, no two-phase protocol |
//! | [`PgCheckpointStore`] | checkpoints in `batchstream_checkpoints(pipeline_id, epoch, body jsonb, updated_at)` | atomic upsert; a damaged row is [`CheckpointError::Corrupt`] |
//! | [`PgServingView`] | Lambda batch view ([`ServingView`]): `(period, key, value jsonb)` rows, a staging table and a table of complete periods | `publish` replaces a period's rows and marks it complete in one transaction; idempotent |
//!
//! Records map to columns through a [`PgTable`]: a table name, its column list and a
//! closure returning the values, as a tuple (`|o: &Order| (o.id, o.total)`) or a
//! [`PgValues`] vector.
//!
//! Table, column and key names are SQL identifiers (`orders`, `public.orders`,
//! `"Orders"`) checked when a component is built; filters and queries are SQL text
//! written by the developer, with values bound as `$1`, `$2`, .. parameters.
//!
//! # Connection loss
//! A lost connection, a timeout, a server shutting down, a serialization failure or a
//! deadlock is a *transient* error: retryable ([`Error::is_retryable`]), and its
//! message names the server (`PostgreSQL at 127.0.0.1:5432: ...`). The next call
//! reconnects. [`Pipeline::with_retry`](crate::Pipeline::with_retry) retries source
//! reads and checkpoint saves; the executors do not retry sink calls, so the sinks
//! take their own [`RetryPolicy`] (`with_retry`). Every retried unit is a whole
//! transaction, and each one is safe to repeat even when the connection died while
//! its `COMMIT` was in flight (upserts are idempotent; the counter sink and the
//! transactional store check the epoch first).
//!
//! Connections use no TLS ([`tokio_postgres::NoTls`]).
//!
//! # Example
//! Extract one day of orders and keep per-day totals exactly once:
//! ```no_run
//! use batchstream::connectors::postgres::{PgClient, PgCheckpointStore, PgCounterSink, PgSource, PgTable};
//! use batchstream::connectors::postgres::tokio_postgres;
//! use batchstream::transform::{self, TransformExt};
//! use batchstream::{Pipeline, StreamExecutor};
//! use chrono::{DateTime, TimeZone, Utc};
//!
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! struct Increment { day: String, orders: i64, revenue: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> batchstream::Result<()> {
//! let db = "host=127.0.0.1 user=postgres dbname=test";
//! let from: DateTime<Utc> = Utc.with_ymd_and_hms(2024, 5, 1, 0, 0, 0).unwrap();
//! let to = from + chrono::TimeDelta::days(1);
//! let source = PgSource::table(PgClient::new(db)?, "orders", "id", |row| {
//!     let at: DateTime<Utc> = row.try_get("created_at")?;
//!     Ok::<_, tokio_postgres::Error>(Increment {
//!         day: at.date_naive().to_string(),
//!         orders: 1,
//!         revenue: row.try_get("amount_cents")?,
//!     })
//! })?
//! .filter("created_at >= $1 AND created_at < $2")
//! .bind(from)
//! .bind(to);
//! let totals = PgTable::new(
//!     "totals",
//!     ["key", "total_orders", "total_revenue", "avg_order"],
//!     |i: &Increment| (i.day.clone(), i.orders, i.revenue, i.revenue as f64 / i.orders as f64),
//! )
//! .key(["key"]);
//! let sink = PgCounterSink::new(PgClient::new(db)?, "daily-totals", totals)?
//!     .counters(["total_orders", "total_revenue"])?
//!     .set(
//!         "avg_order",
//!         "(totals.total_revenue + EXCLUDED.total_revenue)::float8 \
//!          / (totals.total_orders + EXCLUDED.total_orders)",
//!     )?;
//! let store = PgCheckpointStore::new(PgClient::new(db)?);
//! let pipeline = Pipeline::new("daily", source, transform::identity(), sink)
//!     .with_checkpoint_store(store);
//! StreamExecutor::new().checkpoint_every_records(10_000).run(pipeline).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::{Config, NoTls, Row};

/// The `tokio-postgres` crate this connector uses, for `Row`, `types::ToSql` and
/// `Config` at the matching version.
pub use tokio_postgres;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::dead_letter::DeadLetter;
use crate::error::{CheckpointError, Error, Location, RecordError, RecordErrorKind, Result};
use crate::retry::RetryPolicy;
use crate::sink::{DeliveryGuarantee, Sink};
use crate::source::{Boundedness, Source, SourceBatch, SourceProgress};

/// The default table of [`PgCheckpointStore`].
pub const CHECKPOINT_TABLE: &str = "batchstream_checkpoints";
/// The default epoch table of [`PgCounterSink`].
pub const EPOCH_TABLE: &str = "batchstream_sink_epochs";

/// Rows per pipelined group of statements in one transaction.
const PIPELINE_DEPTH: usize = 1000;

// ---------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------

/// A PostgreSQL failure: which server, what was being done, and whether a retry may
/// succeed.
///
/// It is wrapped in the crate [`Error`] (as the source of [`Error::Source`] or
/// [`Error::Sink`]) or in a [`CheckpointError`]; its text starts with
/// `PostgreSQL at host:port`.
#[derive(Debug)]
pub struct PgError {
    server: String,
    context: String,
    message: String,
    transient: bool,
    source: Option<tokio_postgres::Error>,
}

impl PgError {
    fn new(server: &str, context: impl fmt::Display, message: impl fmt::Display) -> Self {
        PgError {
            server: server.to_owned(),
            context: context.to_string(),
            message: message.to_string(),
            transient: false,
            source: None,
        }
    }

    fn from_pg(server: &str, context: impl fmt::Display, e: tokio_postgres::Error) -> Self {
        PgError {
            server: server.to_owned(),
            context: context.to_string(),
            message: describe(&e),
            transient: is_transient(&e),
            source: Some(e),
        }
    }

    /// `PostgreSQL at host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether the failure is transient (a lost connection, a timeout, a serialization
    /// failure, a deadlock, a server starting or shutting down).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The SQLSTATE code, when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        self.source
            .as_ref()
            .and_then(|e| e.code())
            .map(|c| c.code())
    }

    fn into_source_error(self) -> Error {
        Error::source_with(self.transient, self)
    }

    fn into_sink_error(self, operation: &'static str) -> Error {
        Error::sink_with(operation, self.transient, self)
    }

    /// A transient failure is [`CheckpointError::Io`] of kind `Interrupted` (which
    /// the pipeline's retry policy retries); a permanent one [`CheckpointError::Other`].
    fn into_checkpoint_error(self, table: &str) -> CheckpointError {
        if self.transient {
            CheckpointError::Io {
                path: PathBuf::from(format!("{}/{table}", self.server)),
                source: std::io::Error::new(std::io::ErrorKind::Interrupted, self),
            }
        } else {
            CheckpointError::Other(Box::new(self))
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.server, self.context)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// The server's message (with SQLSTATE) or the client error with its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str("; ");
            s.push_str(detail);
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// `CREATE TABLE IF NOT EXISTS` racing another session can fail with a duplicate
/// (42P07) or a unique violation on the catalog (23505): the table exists either way.
fn created_concurrently(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "42P07" | "23505"))
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now;
        // 40001 serialization failure; 40P01 deadlock; 53300 too many connections;
        // 55P03 lock not available.
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300" | "55P03"
            );
    }
    // Connect and i/o failures carry an io::Error; a timeout has no cause.
    std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

/// A failure inside a transaction: a database error, or a permanent problem found in
/// the data.
enum TxFail {
    Db(tokio_postgres::Error),
    Data(PgError),
}

impl From<tokio_postgres::Error> for TxFail {
    fn from(e: tokio_postgres::Error) -> Self {
        TxFail::Db(e)
    }
}

/// The wait before retrying after `e` failed attempt `attempt`, if the policy allows one.
fn retry_delay(
    policy: Option<&RetryPolicy>,
    e: &PgError,
    attempt: u32,
    first: Instant,
) -> Option<Duration> {
    let policy = policy?;
    if !e.transient || !policy.allows(attempt, first.elapsed()) {
        return None;
    }
    let delay = policy.delay(attempt);
    tracing::warn!(attempt, ?delay, error = %e, "retrying PostgreSQL operation");
    Some(delay)
}

// ---------------------------------------------------------------------------------
// Identifiers and rows
// ---------------------------------------------------------------------------------

/// Checks that `name` is a (possibly schema-qualified) SQL identifier: each part is
/// `[A-Za-z_][A-Za-z0-9_$]*` or a double-quoted name without quotes inside.
fn check_ident(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.split('.').all(|part| {
            if let Some(inner) = part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                !inner.is_empty() && !inner.contains('"')
            } else {
                let mut chars = part.chars();
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            }
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid PostgreSQL {what} `{name}`: use an identifier such as `orders`, `public.orders` or `\"Orders\"`"
        )))
    }
}

/// The last part of a qualified name, without quotes: the name a result column or an
/// `ON CONFLICT` target is referred to by.
fn bare(name: &str) -> &str {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(last)
}

/// The reference to a table inside its own `ON CONFLICT DO UPDATE` (no schema).
fn table_ref(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The values of one row, in the column order of its [`PgTable`].
pub type PgValues = Vec<Box<dyn ToSql + Sync + Send>>;

/// Something that becomes one row of values: a tuple of up to 12 values (`(o.id,
/// o.name.clone())`) or a [`PgValues`] vector built by hand.
pub trait IntoPgRow {
    /// The values, in column order.
    fn into_pg_row(self) -> PgValues;
}

impl IntoPgRow for PgValues {
    fn into_pg_row(self) -> PgValues {
        self
    }
}

macro_rules! tuple_row {
    ($($name:ident)+) => {
        impl<$($name: ToSql + Sync + Send + 'static),+> IntoPgRow for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_pg_row(self) -> PgValues {
                let ($($name,)+) = self;
                vec![$(Box::new($name)),+]
            }
        }
    };
}

tuple_row!(A);
tuple_row!(A B);
tuple_row!(A B C);
tuple_row!(A B C D);
tuple_row!(A B C D E);
tuple_row!(A B C D E F);
tuple_row!(A B C D E F G);
tuple_row!(A B C D E F G H);
tuple_row!(A B C D E F G H I);
tuple_row!(A B C D E F G H I J);
tuple_row!(A B C D E F G H I J K);
tuple_row!(A B C D E F G H I J K L);

type RowFn<T> = Arc<dyn Fn(&T) -> PgValues + Send + Sync>;

/// How records of type `T` map to the columns of a table: the table, its columns, the
/// key columns (the `ON CONFLICT` target) and a closure giving each record's values in
/// column order.
///
/// ```
/// use batchstream::connectors::postgres::PgTable;
///
/// struct Order { id: i64, customer: String, amount_cents: i64 }
///
/// let table = PgTable::new("orders_out", ["id", "customer", "amount_cents"], |o: &Order| {
///     (o.id, o.customer.clone(), o.amount_cents)
/// })
/// .key(["id"]);
/// assert_eq!(table.name(), "orders_out");
/// assert_eq!(table.key_columns(), ["id"]);
/// ```
pub struct PgTable<T> {
    name: String,
    columns: Vec<String>,
    key: Vec<String>,
    to_row: RowFn<T>,
}

impl<T> Clone for PgTable<T> {
    fn clone(&self) -> Self {
        PgTable {
            name: self.name.clone(),
            columns: self.columns.clone(),
            key: self.key.clone(),
            to_row: Arc::clone(&self.to_row),
        }
    }
}

impl<T> fmt::Debug for PgTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTable")
            .field("name", &self.name)
            .field("columns", &self.columns)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<T> PgTable<T> {
    /// Table `name` with `columns`; `to_row` gives a record's values in that order.
    pub fn new<R, F>(
        name: impl Into<String>,
        columns: impl IntoIterator<Item = impl Into<String>>,
        to_row: F,
    ) -> Self
    where
        R: IntoPgRow,
        F: Fn(&T) -> R + Send + Sync + 'static,
    {
        PgTable {
            name: name.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            key: Vec::new(),
            to_row: Arc::new(move |t| to_row(t).into_pg_row()),
        }
    }

    /// The key columns: the `ON CONFLICT` target, which needs a unique index or primary
    /// key on exactly these columns. Each must be one of the table's columns.
    pub fn key(mut self, columns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.key = columns.into_iter().map(Into::into).collect();
        self
    }

    /// The table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The columns, in value order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The key columns.
    pub fn key_columns(&self) -> &[String] {
        &self.key
    }

    fn validate(&self, needs_key: bool) -> Result<()> {
        check_ident("table name", &self.name)?;
        if self.columns.is_empty() {
            return Err(Error::Config(format!(
                "PostgreSQL table `{}`: no columns given",
                self.name
            )));
        }
        for c in &self.columns {
            check_ident("column name", c)?;
        }
        if needs_key && self.key.is_empty() {
            return Err(Error::Config(format!(
                "PostgreSQL table `{}`: this sink needs key columns (`PgTable::key`)",
                self.name
            )));
        }
        for k in &self.key {
            if !self.columns.contains(k) {
                return Err(Error::Config(format!(
                    "PostgreSQL table `{}`: key column `{k}` is not among its columns {:?}",
                    self.name, self.columns
                )));
            }
        }
        Ok(())
    }

    /// The values of `record`, checked against the column count.
    fn row(&self, record: &T) -> Result<PgValues> {
        let values = (self.to_row)(record);
        if values.len() != self.columns.len() {
            return Err(Error::Config(format!(
                "PostgreSQL table `{}`: a record mapped to {} values for {} columns {:?}",
                self.name,
                values.len(),
                self.columns.len(),
                self.columns
            )));
        }
        Ok(values)
    }

    /// `INSERT INTO t (cols) VALUES ($1, ..)` followed by `conflict`.
    fn insert_sql(&self, conflict: &str) -> String {
        let placeholders: Vec<String> = (1..=self.columns.len()).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({}){conflict}",
            self.name,
            self.columns.join(", "),
            placeholders.join(", ")
        )
    }

    /// An upsert: non-key columns take `set` (column -> expression), by default
    /// `EXCLUDED.column`; with only key columns, `DO NOTHING`.
    fn upsert_sql(&self, set: impl Fn(&str) -> String) -> String {
        if self.key.is_empty() {
            return self.insert_sql("");
        }
        let updates: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .map(|c| format!("{c} = {}", set(c)))
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        self.insert_sql(&format!(" ON CONFLICT ({}) {action}", self.key.join(", ")))
    }
}

fn as_params(row: &PgValues) -> Vec<&(dyn ToSql + Sync)> {
    row.iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Executes `sql` once per row inside `tx`, pipelined in groups.
async fn execute_rows(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    rows: &[PgValues],
) -> std::result::Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare(sql).await?;
    for group in rows.chunks(PIPELINE_DEPTH) {
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = group.iter().map(as_params).collect();
        futures::future::try_join_all(params.iter().map(|p| tx.execute(&statement, p))).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------

/// A PostgreSQL connection that reconnects on the next call after it was lost.
///
/// Clones share the connection (calls take turns). Give each component its own
/// `PgClient` to let them work in parallel; a [`PgTransactionalSink`] and its store
/// share one by design.
///
/// ```
/// use batchstream::connectors::postgres::PgClient;
///
/// let client = PgClient::new("host=127.0.0.1 port=5432 user=postgres dbname=test")?;
/// assert_eq!(client.server(), "PostgreSQL at 127.0.0.1:5432");
/// assert!(PgClient::new("port=notanumber").is_err());
/// # Ok::<(), batchstream::Error>(())
/// ```
#[derive(Clone)]
pub struct PgClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: Config,
    server: String,
    conn: Mutex<Option<tokio_postgres::Client>>,
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClient")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

impl PgClient {
    /// A client for `params`, a libpq-style (`host=.. user=.. dbname=..`) or URL
    /// (`postgresql://user@host/db`) connection string. It connects on first use; the
    /// connect timeout defaults to 10 s.
    ///
    /// # Errors
    /// [`Error::Config`] when the string does not parse.
    pub fn new(params: &str) -> Result<Self> {
        let config: Config = params
            .parse()
            .map_err(|e| Error::Config(format!("invalid PostgreSQL connection string: {e}")))?;
        Ok(Self::from_config(config))
    }

    /// A client for an already built configuration.
    pub fn from_config(mut config: Config) -> Self {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let server = server_name(&config);
        PgClient {
            inner: Arc::new(ClientInner {
                config,
                server,
                conn: Mutex::new(None),
            }),
        }
    }

    /// A client for `params`, connected now.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad string; a retryable [`Error::Source`] naming the
    /// server when it cannot be reached.
    pub async fn connect(params: &str) -> Result<Self> {
        let client = Self::new(params)?;
        client.session().await.map_err(PgError::into_source_error)?;
        Ok(client)
    }

    /// `PostgreSQL at host:port`, as error messages name it.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// Runs `sql` (one or more statements, no parameters) on this connection, for
    /// setup such as `CREATE TABLE`.
    ///
    /// # Errors
    /// A sink error (operation `execute`) wrapping a [`PgError`].
    pub async fn batch_execute(&self, sql: &str) -> Result<()> {
        let mut s = self
            .session()
            .await
            .map_err(|e| e.into_sink_error("execute"))?;
        let r = s.client().batch_execute(sql).await;
        r.map_err(|e| {
            s.error("executing statements", e)
                .into_sink_error("execute")
        })
    }

    /// Locks the connection, connecting first when there is none (or it was lost).
    async fn session(&self) -> std::result::Result<Session<'_>, PgError> {
        let mut guard = self.inner.conn.lock().await;
        if guard
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            *guard = None;
        }
        if guard.is_none() {
            let (client, connection) = self
                .inner
                .config
                .connect(NoTls)
                .await
                .map_err(|e| PgError::from_pg(&self.inner.server, "connecting", e))?;
            let server = self.inner.server.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%server, error = %describe(&e), "PostgreSQL connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(Session {
            guard,
            server: &self.inner.server,
        })
    }
}

fn server_name(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => config
            .get_hostaddrs()
            .first()
            .map_or_else(|| "localhost".to_owned(), ToString::to_string),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL at {host}:{port}")
}

/// A locked, connected client.
struct Session<'a> {
    guard: MutexGuard<'a, Option<tokio_postgres::Client>>,
    server: &'a str,
}

impl Session<'_> {
    fn client(&mut self) -> &mut tokio_postgres::Client {
        self.guard
            .as_mut()
            .expect("a session always holds a connected client")
    }

    /// Wraps `e`; forgets the connection when the failure is transient or closed it,
    /// so that the next call reconnects.
    fn error(&mut self, context: impl fmt::Display, e: tokio_postgres::Error) -> PgError {
        let err = PgError::from_pg(self.server, context, e);
        if err.transient || self.guard.as_ref().is_none_or(|c| c.is_closed()) {
            *self.guard = None;
        }
        err
    }
}

// ---------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------

/// The position of a [`PgSource`]: the last key read, and how many rows that was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysetPosition<K> {
    /// The key of the last row read; `None` before the first row.
    pub last_key: Option<K>,
    /// Rows read up to and including it (decoded and rejected).
    pub rows_read: u64,
}

type Decode<T> = Box<dyn Fn(&Row) -> std::result::Result<T, String> + Send + Sync>;
type Param = Box<dyn ToSql + Sync + Send>;

enum Base {
    Table {
        table: String,
        columns: String,
        filter: Option<String>,
    },
    Query(String),
}

/// A bounded source reading a table (or a query) in chunks by keyset pagination:
/// `SELECT .. WHERE <filter> AND key > $last ORDER BY key LIMIT n`.
///
/// Each chunk is one indexed range scan, so extraction does not slow down with depth
/// the way `OFFSET` does, and rows inserted behind the cursor are not read twice.
/// The key must be unique and totally ordered (a primary key); the position is the
/// last key read, so a restarted pipeline resumes after it.
///
/// Rows decode through a closure `Fn(&Row) -> Result<T, E>`. A row that fails to
/// decode does not stop the run: it becomes a dead letter naming the table and its
/// key. A key that cannot be read is a permanent error.
///
/// ```no_run
/// use batchstream::connectors::postgres::{PgClient, PgSource, tokio_postgres};
/// use chrono::{DateTime, Utc};
///
/// struct Order { id: i64, amount_cents: i64 }
///
/// # fn main() -> batchstream::Result<()> {
/// # let (from, to) = (Utc::now(), Utc::now());
/// let client = PgClient::new("host=127.0.0.1 user=postgres dbname=test")?;
/// let source = PgSource::table(client, "orders", "id", |row| {
///     Ok::<_, tokio_postgres::Error>(Order { id: row.try_get("id")?, amount_cents: row.try_get("amount_cents")? })
/// })?
/// .columns("id, amount_cents")
/// .filter("created_at >= $1 AND created_at < $2")
/// .bind(from)
/// .bind(to)
/// .count_total(true);
/// # Ok(()) }
/// ```
pub struct PgSource<T, K = i64> {
    client: PgClient,
    label: String,
    base: Base,
    key: String,
    params: Vec<Param>,
    decode: Decode<T>,
    count_total: bool,
    total: Option<u64>,
    last: Option<K>,
    rows_read: u64,
    exhausted: bool,
}

impl<T, K> fmt::Debug for PgSource<T, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSource")
            .field("server", &self.client.server())
            .field("from", &self.label)
            .field("key", &self.key)
            .field("rows_read", &self.rows_read)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> PgSource<T, i64> {
    /// Reads `table` ordered by `key`, a `bigint` column (see
    /// [`key_type`](Self::key_type) for others) (all columns unless [`columns`](Self::columns)
    /// says otherwise), decoding each row with `decode`.
    ///
    /// # Errors
    /// [`Error::Config`] if `table` or `key` is not an identifier.
    pub fn table<E, F>(client: PgClient, table: &str, key: &str, decode: F) -> Result<Self>
    where
        E: fmt::Display,
        F: Fn(&Row) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        check_ident("table name", table)?;
        Self::build(
            client,
            table.to_owned(),
            Base::Table {
                table: table.to_owned(),
                columns: "*".to_owned(),
                filter: None,
            },
            key,
            decode,
        )
    }

    /// Reads the rows of `query` (any `SELECT`, e.g. a join) ordered by its output
    /// column `key`. The query's own parameters are bound with [`bind`](Self::bind).
    /// Dead letters name it as `query` unless [`label`](Self::label) says otherwise.
    ///
    /// # Errors
    /// [`Error::Config`] if `key` is not an identifier.
    pub fn query<E, F>(client: PgClient, query: &str, key: &str, decode: F) -> Result<Self>
    where
        E: fmt::Display,
        F: Fn(&Row) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        Self::build(
            client,
            "query".to_owned(),
            Base::Query(query.to_owned()),
            key,
            decode,
        )
    }

    fn build<E, F>(
        client: PgClient,
        label: String,
        base: Base,
        key: &str,
        decode: F,
    ) -> Result<Self>
    where
        E: fmt::Display,
        F: Fn(&Row) -> std::result::Result<T, E> + Send + Sync + 'static,
    {
        check_ident("key column", key)?;
        Ok(PgSource {
            client,
            label,
            base,
            key: key.to_owned(),
            params: Vec::new(),
            decode: Box::new(move |row| decode(row).map_err(|e| e.to_string())),
            count_total: false,
            total: None,
            last: None,
            rows_read: 0,
            exhausted: false,
        })
    }
}

impl<T, K> PgSource<T, K>
where
    T: Send + 'static,
    K: ToSql + FromSqlOwned + Serialize + Clone + Send + Sync + 'static,
{
    /// Uses a key column of another type (`text`, `uuid`, `timestamptz`, ..: any `K`
    /// that converts to and from SQL and serializes into checkpoints). Call it before
    /// reading.
    pub fn key_type<K2>(self) -> PgSource<T, K2> {
        PgSource {
            client: self.client,
            label: self.label,
            base: self.base,
            key: self.key,
            params: self.params,
            decode: self.decode,
            count_total: self.count_total,
            total: self.total,
            last: None,
            rows_read: 0,
            exhausted: false,
        }
    }

    /// The select list for a table source (default `*`); it must include the key.
    pub fn columns(mut self, columns: &str) -> Self {
        if let Base::Table { columns: c, .. } = &mut self.base {
            *c = columns.to_owned();
        }
        self
    }

    /// A `WHERE` condition for a table source, with parameters `$1`, `$2`, .. bound by
    /// [`bind`](Self::bind), e.g. `created_at >= $1 AND created_at < $2`.
    pub fn filter(mut self, condition: &str) -> Self {
        if let Base::Table { filter, .. } = &mut self.base {
            *filter = Some(condition.to_owned());
        }
        self
    }

    /// Binds the next `$n` parameter of the filter or query.
    pub fn bind(mut self, value: impl ToSql + Sync + Send + 'static) -> Self {
        self.params.push(Box::new(value));
        self
    }

    /// The name dead letters and errors give this input (default: the table name, or
    /// `query`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Counts the rows of the range once, at the first read, so that
    /// [`progress`](Source::progress) knows the total (a percentage and an ETA on a
    /// progress bar). Off by default: the count is a scan of the range.
    pub fn count_total(mut self, on: bool) -> Self {
        self.count_total = on;
        self
    }

    fn chunk_sql(&self, after: bool) -> String {
        let n = self.params.len();
        let (limit, last) = (n + 1, n + 2);
        let key = &self.key;
        match &self.base {
            Base::Table {
                table,
                columns,
                filter,
            } => {
                let mut conds = Vec::new();
                if let Some(f) = filter {
                    conds.push(format!("({f})"));
                }
                if after {
                    conds.push(format!("{key} > ${last}"));
                }
                let cond = if conds.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", conds.join(" AND "))
                };
                format!("SELECT {columns} FROM {table}{cond} ORDER BY {key} LIMIT ${limit}")
            }
            Base::Query(q) => {
                let cond = if after {
                    format!(" WHERE {key} > ${last}")
                } else {
                    String::new()
                };
                format!(
                    "SELECT * FROM ({q}) AS batchstream_keyset{cond} ORDER BY {key} LIMIT ${limit}"
                )
            }
        }
    }

    fn count_sql(&self) -> String {
        match &self.base {
            Base::Table { table, filter, .. } => match filter {
                Some(f) => format!("SELECT count(*) FROM {table} WHERE ({f})"),
                None => format!("SELECT count(*) FROM {table}"),
            },
            Base::Query(q) => format!("SELECT count(*) FROM ({q}) AS batchstream_keyset"),
        }
    }

    /// Reads one chunk of rows after the last key.
    async fn fetch(&mut self, limit: i64) -> std::result::Result<Vec<Row>, PgError> {
        let mut s = self.client.session().await?;
        if self.count_total && self.total.is_none() {
            let sql = self.count_sql();
            let params: Vec<&(dyn ToSql + Sync)> = self
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let r = s.client().query_one(&sql, &params).await;
            let row = r.map_err(|e| s.error(format!("counting the rows of {}", self.label), e))?;
            let n: i64 = row
                .try_get(0)
                .map_err(|e| s.error(format!("counting the rows of {}", self.label), e))?;
            self.total = Some(u64::try_from(n).unwrap_or(0));
        }
        let sql = self.chunk_sql(self.last.is_some());
        let mut params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        params.push(&limit);
        if let Some(last) = &self.last {
            params.push(last);
        }
        let r = s.client().query(&sql, &params).await;
        r.map_err(|e| s.error(format!("reading {} {}", self.label, self.cursor()), e))
    }

    /// `after id = 42`, or `from the start`.
    fn cursor(&self) -> String {
        match self.last.as_ref().map(serde_json::to_value) {
            Some(Ok(k)) => format!("after {} = {k}", self.key),
            Some(Err(_)) => format!("after the last {} read", self.key),
            None => "from the start".to_owned(),
        }
    }

    fn dead_letter(&self, key: &K, message: &str) -> DeadLetter {
        let key_json = serde_json::to_value(key).unwrap_or(serde_json::Value::Null);
        let column = bare(&self.key);
        let error = RecordError::new(
            RecordErrorKind::Parse,
            "postgres",
            format!(
                "row with {column} = {key_json} of {} could not be decoded: {message}",
                self.label
            ),
            Location::default().with_partition(self.label.clone()),
        );
        DeadLetter::rejected(
            error,
            Some(serde_json::json!({
                "table": self.label,
                "key_column": column,
                "key": key_json,
            })),
        )
    }
}

impl<T, K> Source for PgSource<T, K>
where
    T: Send + 'static,
    K: ToSql
        + FromSqlOwned
        + Serialize
        + DeserializeOwned
        + Clone
        + fmt::Debug
        + Send
        + Sync
        + 'static,
{
    type Item = T;
    type Position = KeysetPosition<K>;

    fn boundedness(&self) -> Boundedness {
        Boundedness::Bounded
    }

    /// Reads the next chunk. Cancel safe: the cursor moves only once a chunk arrived.
    async fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch<T, Self::Position>>> {
        if self.exhausted {
            return Ok(None);
        }
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let rows = self
            .fetch(limit)
            .await
            .map_err(PgError::into_source_error)?;
        if rows.is_empty() {
            self.exhausted = true;
            return Ok(None);
        }
        let column = bare(&self.key).to_owned();
        let mut records = Vec::with_capacity(rows.len());
        let mut rejected = Vec::new();
        let mut last = None;
        for row in &rows {
            let key: K = row.try_get(column.as_str()).map_err(|e| {
                Error::source(PgError::new(
                    self.client.server(),
                    format!(
                        "reading key column `{column}` of {} {}",
                        self.label,
                        self.cursor()
                    ),
                    describe(&e),
                ))
            })?;
            match (self.decode)(row) {
                Ok(record) => records.push(record),
                Err(message) => rejected.push(self.dead_letter(&key, &message)),
            }
            last = Some(key);
        }
        if (rows.len() as u64) < limit as u64 {
            self.exhausted = true;
        }
        self.last = last;
        self.rows_read += rows.len() as u64;
        let position = KeysetPosition {
            last_key: self.last.clone(),
            rows_read: self.rows_read,
        };
        Ok(Some(
            SourceBatch::new(records, position).with_rejected(rejected),
        ))
    }

    async fn seek(&mut self, position: Self::Position) -> Result<()> {
        self.last = position.last_key;
        self.rows_read = position.rows_read;
        self.exhausted = false;
        Ok(())
    }

    fn progress(&self) -> Option<SourceProgress> {
        Some(SourceProgress {
            done: self.rows_read,
            total: self.total.map(|t| t.max(self.rows_read)),
            unit: "rows",
        })
    }
}

// ---------------------------------------------------------------------------------
// Upsert sink
// ---------------------------------------------------------------------------------

/// Writes records as keyed upserts: `INSERT .. ON CONFLICT (key) DO UPDATE SET
/// col = EXCLUDED.col, ..`, one transaction per flush (the statement prepared once and
/// pipelined). A replayed record overwrites itself: [`Idempotent`](DeliveryGuarantee::Idempotent).
///
/// Within a flush, later records win over earlier ones with the same key. Writes are
/// buffered up to [`max_buffer`](Self::max_buffer) rows, then applied early.
///
/// ```no_run
/// use batchstream::connectors::postgres::{PgClient, PgTable, PgUpsertSink};
///
/// struct Total { day: String, cents: i64 }
///
/// # fn main() -> batchstream::Result<()> {
/// let client = PgClient::new("host=127.0.0.1 user=postgres dbname=test")?;
/// let table = PgTable::new("daily", ["day", "cents"], |t: &Total| (t.day.clone(), t.cents))
///     .key(["day"]);
/// let sink = PgUpsertSink::new(client, table)?;
/// # Ok(()) }
/// ```
pub struct PgUpsertSink<T> {
    client: PgClient,
    table: PgTable<T>,
    sql: String,
    buffer: Vec<PgValues>,
    max_buffer: usize,
    retry: Option<RetryPolicy>,
}

impl<T> fmt::Debug for PgUpsertSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgUpsertSink")
            .field("server", &self.client.server())
            .field("table", &self.table)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl<T> PgUpsertSink<T> {
    /// An upsert sink into `table` (which needs [`key`](PgTable::key) columns).
    ///
    /// # Errors
    /// [`Error::Config`] for bad identifiers or missing key columns.
    pub fn new(client: PgClient, table: PgTable<T>) -> Result<Self> {
        table.validate(true)?;
        let sql = table.upsert_sql(|c| format!("EXCLUDED.{c}"));
        Ok(PgUpsertSink {
            client,
            table,
            sql,
            buffer: Vec::new(),
            max_buffer: 10_000,
            retry: None,
        })
    }

    /// Applies buffered rows once this many are waiting (default 10 000).
    pub fn max_buffer(mut self, rows: usize) -> Self {
        self.max_buffer = rows.max(1);
        self
    }

    /// Retries a flush that fails with a transient error (a lost connection) as
    /// `policy` says; the whole transaction is repeated.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The statement each record runs.
    pub fn statement(&self) -> &str {
        &self.sql
    }

    async fn apply(&mut self, operation: &'static str) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let context = format!(
            "upserting {} rows into {}",
            self.buffer.len(),
            self.table.name
        );
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            let r = async {
                let mut s = self.client.session().await?;
                let r = async {
                    let tx = s.client().transaction().await?;
                    execute_rows(&tx, &self.sql, &self.buffer).await?;
                    tx.commit().await
                }
                .await;
                r.map_err(|e| s.error(&context, e))
            }
            .await;
            match r {
                Ok(()) => {
                    self.buffer.clear();
                    return Ok(());
                }
                Err(e) => match retry_delay(self.retry.as_ref(), &e, attempt, first) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(e.into_sink_error(operation)),
                },
            }
        }
    }
}

impl<T: Send + Sync + 'static> Sink for PgUpsertSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Idempotent
    }

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        for record in &batch {
            self.buffer.push(self.table.row(record)?);
        }
        if self.buffer.len() >= self.max_buffer {
            self.apply("write").await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.apply("flush").await
    }
}

// ---------------------------------------------------------------------------------
// Counter sink
// ---------------------------------------------------------------------------------

/// Adds increments to counters, exactly once:
/// `INSERT .. ON CONFLICT (key) DO UPDATE SET total = totals.total + EXCLUDED.total`.
///
/// Additive increments are not safe to replay on their own, so the sink runs a
/// two-phase protocol keyed by the pipeline's epoch, in an epoch table
/// (`batchstream_sink_epochs(sink_id, epoch, state, pending jsonb, updated_at)`):
/// - `write` buffers the records of the epoch in memory;
/// - `prepare(epoch)` stages them durably (as JSON) in the epoch table;
/// - `commit(epoch)`, in one transaction, applies the staged increments and marks the
///   epoch committed; an epoch already committed is skipped;
/// - `recover(Some(e))` on restart commits staged epochs up to `e` and discards later
///   ones (their records are replayed from the checkpoint); `recover(None)` (no
///   checkpoint) forgets every epoch of this sink id.
///
/// Hence [`Transactional`](DeliveryGuarantee::Transactional). The sink id must be
/// unique to one pipeline and its checkpoint store. Exactly once holds across
/// crashes and restarts; a batch run repeated on purpose adds its increments again
/// (give batch runs a [run key](crate::BatchExecutor::run_key), so that a completed
/// range is skipped). Records must be
/// `Serialize + DeserializeOwned` (they are staged as JSON). Memory holds the records
/// of one epoch: checkpoint often (stream or micro-batch executors) for big inputs.
///
/// Columns that are neither key nor counter take `EXCLUDED.col`, or the expression
/// given with [`set`](Self::set) (e.g. an average recomputed from the new totals).
///
/// ```no_run
/// use batchstream::connectors::postgres::{PgClient, PgCounterSink, PgTable};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Inc { key: String, orders: i64, revenue: i64 }
///
/// # fn main() -> batchstream::Result<()> {
/// let client = PgClient::new("host=127.0.0.1 user=postgres dbname=test")?;
/// let table = PgTable::new("totals", ["key", "total_orders", "total_revenue", "avg_order"], |i: &Inc| {
///     (i.key.clone(), i.orders, i.revenue, i.revenue as f64 / i.orders as f64)
/// })
/// .key(["key"]);
/// let sink = PgCounterSink::new(client, "totals-from-orders", table)?
///     .counters(["total_orders", "total_revenue"])?
///     .set("avg_order", "(totals.total_revenue + EXCLUDED.total_revenue)::float8 \
///                        / (totals.total_orders + EXCLUDED.total_orders)")?;
/// # Ok(()) }
/// ```
pub struct PgCounterSink<T> {
    client: PgClient,
    sink_id: String,
    table: PgTable<T>,
    counters: Vec<String>,
    exprs: Vec<(String, String)>,
    epochs_table: String,
    sql: String,
    pending: Vec<T>,
    /// Epochs prepared in this run and not yet committed, with their records.
    prepared: Vec<(u64, Vec<T>)>,
    ensured: bool,
    retry: Option<RetryPolicy>,
}

impl<T> fmt::Debug for PgCounterSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCounterSink")
            .field("server", &self.client.server())
            .field("sink_id", &self.sink_id)
            .field("table", &self.table)
            .field("counters", &self.counters)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<T> PgCounterSink<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A counter sink named `sink_id` (the key of its epochs) into `table` (which needs
    /// [`key`](PgTable::key) columns). Declare the counters with
    /// [`counters`](Self::counters).
    ///
    /// # Errors
    /// [`Error::Config`] for bad identifiers, missing key columns or an empty id.
    pub fn new(client: PgClient, sink_id: impl Into<String>, table: PgTable<T>) -> Result<Self> {
        table.validate(true)?;
        let sink_id = sink_id.into();
        if sink_id.is_empty() {
            return Err(Error::Config("PgCounterSink: empty sink id".into()));
        }
        let mut sink = PgCounterSink {
            client,
            sink_id,
            table,
            counters: Vec::new(),
            exprs: Vec::new(),
            epochs_table: EPOCH_TABLE.to_owned(),
            sql: String::new(),
            pending: Vec::new(),
            prepared: Vec::new(),
            ensured: false,
            retry: None,
        };
        sink.sql = sink.build_sql();
        Ok(sink)
    }

    /// The additive columns: `col = table.col + EXCLUDED.col`.
    ///
    /// # Errors
    /// [`Error::Config`] if one is not a non-key column of the table.
    pub fn counters(
        mut self,
        columns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self> {
        for c in columns {
            let c = c.into();
            self.check_value_column(&c)?;
            self.counters.push(c);
        }
        self.sql = self.build_sql();
        Ok(self)
    }

    /// Sets `column` to `expression` on conflict (SQL, may use the table's name for the
    /// stored row and `EXCLUDED` for the increment).
    ///
    /// # Errors
    /// [`Error::Config`] if `column` is not a non-key column of the table.
    pub fn set(mut self, column: &str, expression: &str) -> Result<Self> {
        self.check_value_column(column)?;
        self.exprs.retain(|(c, _)| c != column);
        self.exprs.push((column.to_owned(), expression.to_owned()));
        self.sql = self.build_sql();
        Ok(self)
    }

    /// The epoch table (default [`EPOCH_TABLE`]), created if missing.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is not an identifier.
    pub fn epochs_table(mut self, name: &str) -> Result<Self> {
        check_ident("table name", name)?;
        self.epochs_table = name.to_owned();
        Ok(self)
    }

    /// Retries a transaction (stage, apply, recover) that fails with a transient error
    /// as `policy` says. Each is safe to repeat.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The statement each increment runs.
    pub fn statement(&self) -> &str {
        &self.sql
    }

    fn check_value_column(&self, column: &str) -> Result<()> {
        if !self.table.columns.iter().any(|c| c == column)
            || self.table.key.iter().any(|k| k == column)
        {
            return Err(Error::Config(format!(
                "PgCounterSink `{}`: `{column}` is not a non-key column of {}",
                self.sink_id, self.table.name
            )));
        }
        Ok(())
    }

    fn build_sql(&self) -> String {
        let t = table_ref(&self.table.name);
        self.table.upsert_sql(|c| {
            if let Some((_, e)) = self.exprs.iter().find(|(col, _)| col == c) {
                e.clone()
            } else if self.counters.iter().any(|x| x == c) {
                format!("{t}.{c} + EXCLUDED.{c}")
            } else {
                format!("EXCLUDED.{c}")
            }
        })
    }

    /// Runs `op` as a whole, retrying transient failures per the policy.
    async fn retrying<R, F, Fut>(&self, operation: &'static str, mut op: F) -> Result<R>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<R, PgError>>,
    {
        let first = Instant::now();
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match retry_delay(self.retry.as_ref(), &e, attempt, first) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(e.into_sink_error(operation)),
                },
            }
        }
    }

    async fn ensure_table(&mut self) -> Result<()> {
        if self.ensured {
            return Ok(());
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                sink_id text NOT NULL,
                epoch bigint NOT NULL,
                state text NOT NULL,
                pending jsonb,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (sink_id, epoch))",
            self.epochs_table
        );
        let client = &self.client;
        let context = format!("creating epoch table {}", self.epochs_table);
        self.retrying("recover", || async {
            let mut s = client.session().await?;
            match s.client().batch_execute(&sql).await {
                Err(e) if !created_concurrently(&e) => Err(s.error(&context, e)),
                _ => Ok(()),
            }
        })
        .await?;
        self.ensured = true;
        Ok(())
    }

    /// Applies epoch `epoch` in one transaction unless it is already committed; uses
    /// `rows` when the records are at hand, else the staged JSON.
    async fn commit_epoch(
        &self,
        epoch: u64,
        rows: Option<&[PgValues]>,
    ) -> std::result::Result<(), PgError> {
        let mut s = self.client.session().await?;
        let server = s.server;
        let epoch_i = i64::try_from(epoch).unwrap_or(i64::MAX);
        let select = format!(
            "SELECT state, pending FROM {} WHERE sink_id = $1 AND epoch = $2 FOR UPDATE",
            self.epochs_table
        );
        let mark = format!(
            "UPDATE {} SET state = 'committed', pending = NULL, updated_at = now() WHERE sink_id = $1 AND epoch = $2",
            self.epochs_table
        );
        let prune = format!(
            "DELETE FROM {} WHERE sink_id = $1 AND state = 'committed' AND epoch < $2",
            self.epochs_table
        );
        let context = format!(
            "committing epoch {epoch} of counter sink `{}` into {}",
            self.sink_id, self.table.name
        );
        let r: std::result::Result<(), TxFail> = async {
            let tx = s.client().transaction().await?;
            let found = tx.query_opt(&select, &[&self.sink_id, &epoch_i]).await?;
            let Some(found) = found else {
                // Nothing staged (an empty epoch) or committed and pruned since.
                return Ok(tx.commit().await?);
            };
            let state: String = found.try_get(0)?;
            if state == "committed" {
                return Ok(tx.commit().await?);
            }
            let decoded;
            let rows = match rows {
                Some(rows) => rows,
                None => {
                    let pending: Option<serde_json::Value> = found.try_get(1)?;
                    let records: Vec<T> = serde_json::from_value(pending.unwrap_or_default())
                        .map_err(|e| {
                            TxFail::Data(PgError::new(
                                server,
                                &context,
                                format!("the staged records do not decode: {e}"),
                            ))
                        })?;
                    decoded = records
                        .iter()
                        .map(|r| self.table.row(r))
                        .collect::<Result<Vec<_>>>()
                        .map_err(|e| TxFail::Data(PgError::new(server, &context, e)))?;
                    &decoded[..]
                }
            };
            execute_rows(&tx, &self.sql, rows).await?;
            tx.execute(&mark, &[&self.sink_id, &epoch_i]).await?;
            tx.execute(&prune, &[&self.sink_id, &epoch_i]).await?;
            Ok(tx.commit().await?)
        }
        .await;
        match r {
            Ok(()) => Ok(()),
            Err(TxFail::Data(e)) => Err(e),
            Err(TxFail::Db(e)) => Err(s.error(&context, e)),
        }
    }
}

impl<T> Sink for PgCounterSink<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Transactional
    }

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        // Check the mapping now, so that a bad record fails here and not at commit.
        for record in &batch {
            self.table.row(record)?;
        }
        self.pending.extend(batch);
        Ok(())
    }

    /// Stages the epoch's increments (not yet visible) in the epoch table.
    async fn prepare(&mut self, epoch: u64) -> Result<()> {
        let records = std::mem::take(&mut self.pending);
        if records.is_empty() {
            self.prepared.push((epoch, records));
            return Ok(());
        }
        self.ensure_table().await?;
        let json = serde_json::to_value(&records).map_err(|e| {
            Error::sink(
                "prepare",
                format!(
                    "counter sink `{}`: records do not encode as JSON: {e}",
                    self.sink_id
                ),
            )
        })?;
        let epoch_i = i64::try_from(epoch).unwrap_or(i64::MAX);
        let sql = format!(
            "INSERT INTO {t} (sink_id, epoch, state, pending) VALUES ($1, $2, 'prepared', $3)
             ON CONFLICT (sink_id, epoch) DO UPDATE SET pending = EXCLUDED.pending, updated_at = now()
             WHERE {r}.state = 'prepared'",
            t = self.epochs_table,
            r = table_ref(&self.epochs_table),
        );
        let context = format!("staging epoch {epoch} of counter sink `{}`", self.sink_id);
        let client = &self.client;
        let id = &self.sink_id;
        let staged = self
            .retrying("prepare", || async {
                let mut s = client.session().await?;
                let r = s.client().execute(&sql, &[id, &epoch_i, &json]).await;
                r.map_err(|e| s.error(&context, e))
            })
            .await?;
        if staged == 0 {
            return Err(Error::sink(
                "prepare",
                PgError::new(
                    self.client.server(),
                    context,
                    "the epoch is already committed: is another pipeline using the same sink id?",
                ),
            ));
        }
        self.prepared.push((epoch, records));
        Ok(())
    }

    /// Applies every prepared epoch up to `epoch`, each in its own transaction.
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        while self.prepared.first().is_some_and(|(e, _)| *e <= epoch) {
            let (e, records) = self.prepared.remove(0);
            if records.is_empty() {
                continue;
            }
            let rows = records
                .iter()
                .map(|r| self.table.row(r))
                .collect::<Result<Vec<_>>>();
            let r = match rows {
                Ok(rows) => {
                    self.retrying("commit", || self.commit_epoch(e, Some(&rows)))
                        .await
                }
                Err(err) => Err(err),
            };
            if let Err(err) = r {
                // Keep the epoch: a later commit (or recovery, from the staged copy)
                // applies it.
                self.prepared.insert(0, (e, records));
                return Err(err);
            }
        }
        Ok(())
    }

    async fn recover(&mut self, checkpointed: Option<u64>) -> Result<()> {
        self.pending.clear();
        self.prepared.clear();
        self.ensure_table().await?;
        let client = &self.client;
        let id = &self.sink_id;
        let Some(last) = checkpointed else {
            let sql = format!("DELETE FROM {} WHERE sink_id = $1", self.epochs_table);
            let context = format!("resetting counter sink `{id}`");
            self.retrying("recover", || async {
                let mut s = client.session().await?;
                let r = s.client().execute(&sql, &[id]).await;
                r.map_err(|e| s.error(&context, e))
            })
            .await?;
            return Ok(());
        };
        let list = format!(
            "SELECT epoch FROM {} WHERE sink_id = $1 AND state = 'prepared' ORDER BY epoch",
            self.epochs_table
        );
        let context = format!("recovering counter sink `{id}`");
        let epochs: Vec<i64> = self
            .retrying("recover", || async {
                let mut s = client.session().await?;
                let r = s.client().query(&list, &[id]).await;
                let rows = r.map_err(|e| s.error(&context, e))?;
                rows.iter()
                    .map(|row| row.try_get::<_, i64>(0))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| s.error(&context, e))
            })
            .await?;
        let last_i = i64::try_from(last).unwrap_or(i64::MAX);
        for e in epochs.iter().copied().filter(|e| *e <= last_i) {
            let e = u64::try_from(e).unwrap_or(0);
            self.retrying("recover", || self.commit_epoch(e, None))
                .await?;
        }
        let discard = format!(
            "DELETE FROM {} WHERE sink_id = $1 AND state = 'prepared' AND epoch > $2",
            self.epochs_table
        );
        self.retrying("recover", || async {
            let mut s = client.session().await?;
            let r = s.client().execute(&discard, &[id, &last_i]).await;
            r.map_err(|e| s.error(&context, e))
        })
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Checkpoint store
// ---------------------------------------------------------------------------------

/// Checkpoints in a PostgreSQL table (default [`CHECKPOINT_TABLE`], created if
/// missing): `(pipeline_id text primary key, epoch bigint, body jsonb, updated_at
/// timestamptz)`, one row per pipeline, replaced by an upsert on save.
///
/// A row whose body does not decode as a checkpoint of its pipeline is
/// [`CheckpointError::Corrupt`] naming the pipeline. A lost connection is a retryable
/// [`CheckpointError::Io`] (kind `Interrupted`) naming the server; the next call
/// reconnects.
///
/// ```no_run
/// use batchstream::checkpoint::{Checkpoint, CheckpointStore};
/// use batchstream::connectors::postgres::{PgClient, PgCheckpointStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let store = PgCheckpointStore::new(PgClient::new("host=127.0.0.1 user=postgres dbname=test")?);
/// store.save(&Checkpoint::new("orders")).await?;
/// assert!(store.load("orders").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgCheckpointStore {
    client: PgClient,
    table: String,
    ensured: Arc<AtomicBool>,
}

impl PgCheckpointStore {
    /// A store in [`CHECKPOINT_TABLE`].
    pub fn new(client: PgClient) -> Self {
        PgCheckpointStore {
            client,
            table: CHECKPOINT_TABLE.to_owned(),
            ensured: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Uses table `name` instead.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is not an identifier.
    pub fn with_table(mut self, name: &str) -> Result<Self> {
        check_ident("table name", name)?;
        self.table = name.to_owned();
        self.ensured = Arc::new(AtomicBool::new(false));
        Ok(self)
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn locator(&self, pipeline_id: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}/{} (pipeline `{pipeline_id}`)",
            self.client.server(),
            self.table
        ))
    }

    async fn ensure(&self, s: &mut Session<'_>) -> std::result::Result<(), PgError> {
        if self.ensured.load(Ordering::Acquire) {
            return Ok(());
        }
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                pipeline_id text PRIMARY KEY,
                epoch bigint NOT NULL,
                body jsonb NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now())",
            self.table
        );
        match s.client().batch_execute(&sql).await {
            Err(e) if !created_concurrently(&e) => {
                return Err(s.error(format!("creating checkpoint table {}", self.table), e));
            }
            _ => {}
        }
        self.ensured.store(true, Ordering::Release);
        Ok(())
    }

    fn upsert_sql(&self) -> String {
        format!(
            "INSERT INTO {} (pipeline_id, epoch, body, updated_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (pipeline_id) DO UPDATE
             SET epoch = EXCLUDED.epoch, body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
            self.table
        )
    }

    fn encode(
        checkpoint: &Checkpoint,
    ) -> std::result::Result<(i64, serde_json::Value), CheckpointError> {
        let body = serde_json::to_value(checkpoint).map_err(|e| CheckpointError::Serde {
            pipeline_id: checkpoint.pipeline_id.clone(),
            action: "encoded",
            message: e.to_string(),
        })?;
        let epoch = i64::try_from(checkpoint.epoch).map_err(|_| CheckpointError::Serde {
            pipeline_id: checkpoint.pipeline_id.clone(),
            action: "encoded",
            message: format!("epoch {} does not fit a bigint", checkpoint.epoch),
        })?;
        Ok((epoch, body))
    }

    fn decode(
        &self,
        pipeline_id: &str,
        epoch: i64,
        body: Option<serde_json::Value>,
    ) -> std::result::Result<Checkpoint, CheckpointError> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: self.locator(pipeline_id),
            reason,
        };
        let body = body.ok_or_else(|| corrupt("the body is NULL".into()))?;
        let ck: Checkpoint = serde_json::from_value(body)
            .map_err(|e| corrupt(format!("the body does not decode as a checkpoint: {e}")))?;
        if ck.pipeline_id != pipeline_id {
            return Err(corrupt(format!(
                "the body belongs to pipeline `{}`",
                ck.pipeline_id
            )));
        }
        if i64::try_from(ck.epoch).ok() != Some(epoch) {
            return Err(corrupt(format!(
                "the epoch column says {epoch}, the body {}",
                ck.epoch
            )));
        }
        Ok(ck)
    }

    async fn load_inner(
        &self,
        pipeline_id: &str,
    ) -> std::result::Result<Option<Checkpoint>, CheckpointError> {
        let sql = format!(
            "SELECT epoch, body FROM {} WHERE pipeline_id = $1",
            self.table
        );
        let fetched: std::result::Result<Option<(i64, Option<serde_json::Value>)>, PgError> =
            async {
                let mut s = self.client.session().await?;
                self.ensure(&mut s).await?;
                let context = format!("loading the checkpoint of pipeline `{pipeline_id}`");
                let r = s.client().query_opt(&sql, &[&pipeline_id]).await;
                let row = r.map_err(|e| s.error(&context, e))?;
                let Some(row) = row else { return Ok(None) };
                let epoch: i64 = row.try_get(0).map_err(|e| s.error(&context, e))?;
                let body: Option<serde_json::Value> =
                    row.try_get(1).map_err(|e| s.error(&context, e))?;
                Ok(Some((epoch, body)))
            }
            .await;
        match fetched.map_err(|e| e.into_checkpoint_error(&self.table))? {
            None => Ok(None),
            Some((epoch, body)) => self.decode(pipeline_id, epoch, body).map(Some),
        }
    }
}

impl CheckpointStore for PgCheckpointStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = std::result::Result<Option<Checkpoint>, CheckpointError>> + Send {
        let id = pipeline_id.to_owned();
        async move { self.load_inner(&id).await }
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = std::result::Result<(), CheckpointError>> + Send {
        let encoded = Self::encode(checkpoint);
        let id = checkpoint.pipeline_id.clone();
        async move {
            let (epoch, body) = encoded?;
            let sql = self.upsert_sql();
            let r: std::result::Result<(), PgError> = async {
                let mut s = self.client.session().await?;
                self.ensure(&mut s).await?;
                let r = s.client().execute(&sql, &[&id, &epoch, &body]).await;
                r.map_err(|e| s.error(format!("saving the checkpoint of pipeline `{id}`"), e))?;
                Ok(())
            }
            .await;
            r.map_err(|e| e.into_checkpoint_error(&self.table))
        }
    }
}

// ---------------------------------------------------------------------------------
// Transactional sink + store
// ---------------------------------------------------------------------------------

struct TxShared {
    client: PgClient,
    sql: String,
    table: String,
    buffer: Mutex<Vec<PgValues>>,
}

/// A sink whose rows are written by its paired [`PgTransactionalStore`], in the same
/// transaction as the checkpoint: exactly once without a two-phase protocol.
///
/// [`PgTransactionalSink::new`] returns the pair. Give the store to the pipeline with
/// [`with_checkpoint_store`](crate::Pipeline::with_checkpoint_store). The sink buffers
/// what it is given; `prepare` does nothing visible; the store's `save` inserts the
/// buffered rows and upserts the checkpoint row in one transaction, so either both
/// are durable or neither is (the rows are then replayed from the previous
/// checkpoint). A save retried after its `COMMIT` was lost in flight sees its own
/// epoch already stored and writes nothing twice.
///
/// The table may have [`key`](PgTable::key) columns (an upsert) or none (a plain
/// `INSERT`; then a batch run repeated on purpose inserts its rows again: give batch
/// runs a [run key](crate::BatchExecutor::run_key)). Memory holds the rows since the last checkpoint. If the sink is used
/// without its store, `commit` fails (rows are never dropped silently).
///
/// ```no_run
/// use batchstream::connectors::postgres::{PgClient, PgTable, PgTransactionalSink};
/// use batchstream::transform;
/// use batchstream::{Pipeline, StreamExecutor, adapters::IterSource};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let client = PgClient::new("host=127.0.0.1 user=postgres dbname=test")?;
/// let table = PgTable::new("events", ["id", "payload"], |e: &(i64, String)| (e.0, e.1.clone()));
/// let (sink, store) = PgTransactionalSink::new(client, table)?;
/// let pipeline = Pipeline::new("events", IterSource::new(vec![(1, "a".to_string())]), transform::identity(), sink)
///     .with_checkpoint_store(store);
/// StreamExecutor::new().run(pipeline).await?;
/// # Ok(()) }
/// ```
pub struct PgTransactionalSink<T> {
    shared: Arc<TxShared>,
    table: PgTable<T>,
}

/// The checkpoint store paired with a [`PgTransactionalSink`]: its `save` writes the
/// sink's buffered rows and the checkpoint in one transaction. Loads read the same
/// table as a [`PgCheckpointStore`].
pub struct PgTransactionalStore {
    shared: Arc<TxShared>,
    checkpoints: PgCheckpointStore,
}

impl<T> fmt::Debug for PgTransactionalSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransactionalSink")
            .field("server", &self.shared.client.server())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PgTransactionalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransactionalStore")
            .field("server", &self.shared.client.server())
            .field("rows_table", &self.shared.table)
            .field("checkpoint_table", &self.checkpoints.table)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> PgTransactionalSink<T> {
    /// The sink and its store, sharing `client`; checkpoints go to
    /// [`CHECKPOINT_TABLE`].
    ///
    /// # Errors
    /// [`Error::Config`] for bad identifiers.
    pub fn new(client: PgClient, table: PgTable<T>) -> Result<(Self, PgTransactionalStore)> {
        Self::with_checkpoint_table(client, table, CHECKPOINT_TABLE)
    }

    /// As [`new`](Self::new), with checkpoints in table `checkpoint_table`.
    ///
    /// # Errors
    /// [`Error::Config`] for bad identifiers.
    pub fn with_checkpoint_table(
        client: PgClient,
        table: PgTable<T>,
        checkpoint_table: &str,
    ) -> Result<(Self, PgTransactionalStore)> {
        table.validate(false)?;
        let checkpoints = PgCheckpointStore::new(client.clone()).with_table(checkpoint_table)?;
        let shared = Arc::new(TxShared {
            client,
            sql: table.upsert_sql(|c| format!("EXCLUDED.{c}")),
            table: table.name.clone(),
            buffer: Mutex::new(Vec::new()),
        });
        Ok((
            PgTransactionalSink {
                shared: Arc::clone(&shared),
                table,
            },
            PgTransactionalStore {
                shared,
                checkpoints,
            },
        ))
    }
}

impl<T: Send + Sync + 'static> Sink for PgTransactionalSink<T> {
    type Item = T;

    fn guarantee(&self) -> DeliveryGuarantee {
        DeliveryGuarantee::Transactional
    }

    async fn write(&mut self, batch: Vec<T>) -> Result<()> {
        let rows = batch
            .iter()
            .map(|r| self.table.row(r))
            .collect::<Result<Vec<_>>>()?;
        self.shared.buffer.lock().await.extend(rows);
        Ok(())
    }

    /// The store's `save` has written the epoch's rows; rows still buffered mean the
    /// pipeline does not use the paired store.
    async fn commit(&mut self, epoch: u64) -> Result<()> {
        let left = self.shared.buffer.lock().await.len();
        if left > 0 {
            return Err(Error::Config(format!(
                "PgTransactionalSink into {}: epoch {epoch} was committed with {left} rows not written; \
                 give the pipeline the PgTransactionalStore returned with this sink",
                self.table.name
            )));
        }
        Ok(())
    }

    /// Rows buffered before a restart belong to no saved checkpoint: they are dropped
    /// here and replayed by the source.
    async fn recover(&mut self, _checkpointed: Option<u64>) -> Result<()> {
        self.shared.buffer.lock().await.clear();
        Ok(())
    }
}

impl CheckpointStore for PgTransactionalStore {
    fn load(
        &self,
        pipeline_id: &str,
    ) -> impl Future<Output = std::result::Result<Option<Checkpoint>, CheckpointError>> + Send {
        self.checkpoints.load(pipeline_id)
    }

    fn save(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = std::result::Result<(), CheckpointError>> + Send {
        let encoded = PgCheckpointStore::encode(checkpoint);
        let id = checkpoint.pipeline_id.clone();
        async move {
            let (epoch, body) = encoded?;
            let store = &self.checkpoints;
            let mut buffer = self.shared.buffer.lock().await;
            let upsert = store.upsert_sql();
            let current = format!(
                "SELECT epoch FROM {} WHERE pipeline_id = $1 FOR UPDATE",
                store.table
            );
            let context = format!(
                "saving {} rows into {} with the checkpoint of pipeline `{id}` (epoch {epoch})",
                buffer.len(),
                self.shared.table
            );
            let r: std::result::Result<(), PgError> = async {
                let mut s = self.shared.client.session().await?;
                store.ensure(&mut s).await?;
                let r = async {
                    let tx = s.client().transaction().await?;
                    let stored: Option<i64> = tx
                        .query_opt(&current, &[&id])
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    if stored.is_some_and(|e| e >= epoch) {
                        // This save already committed (its reply was lost): do not
                        // write the rows twice.
                        return tx.commit().await;
                    }
                    execute_rows(&tx, &self.shared.sql, &buffer).await?;
                    tx.execute(&upsert, &[&id, &epoch, &body]).await?;
                    tx.commit().await
                }
                .await;
                r.map_err(|e| s.error(&context, e))
            }
            .await;
            r.map_err(|e| e.into_checkpoint_error(&store.table))?;
            buffer.clear();
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------
// Lambda serving view
// ---------------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::fmt::Display;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::lambda::{BatchLookup, ServingView};

/// Rows per statement when [`PgServingView`] stages rows (`unnest` of two arrays).
const STAGE_CHUNK: usize = 5_000;

/// PostgreSQL truncates longer identifiers, which could make two names one.
const MAX_IDENT_BYTES: usize = 63;

/// `name` with `suffix` added to its last part (inside the quotes of a quoted name).
fn with_suffix(name: &str, suffix: &str) -> String {
    match name.strip_suffix('"') {
        Some(head) => format!("{head}{suffix}\""),
        None => format!("{name}{suffix}"),
    }
}

/// [`check_ident`], and no part longer than PostgreSQL keeps.
fn check_view_ident(what: &str, name: &str) -> Result<()> {
    check_ident(what, name)?;
    match name
        .split('.')
        .find(|part| part.trim_matches('"').len() > MAX_IDENT_BYTES)
    {
        Some(part) => Err(Error::Config(format!(
            "PostgreSQL {what} `{name}`: `{part}` is longer than {MAX_IDENT_BYTES} bytes, \
             which PostgreSQL would silently truncate"
        ))),
        None => Ok(()),
    }
}

/// The batch layer's view of a [Lambda architecture](crate::lambda) in PostgreSQL: a
/// [`ServingView`] in three tables, created if missing.
///
/// | table | columns | holds |
/// |---|---|---|
/// | [`table`](Self::table) | `period text, key text, value jsonb`, primary key `(period, key)` | the published rows, what [`lookup`](ServingView::lookup) reads |
/// | [`staging_table`](Self::staging_table) (default `{table}_staging`) | the same | rows [staged](ServingView::stage) by a batch run, invisible to lookups |
/// | [`complete_table`](Self::complete_table) (default `{table}_complete`) | `period text primary key, published_at timestamptz` | the complete periods, and when their rows were last replaced |
///
/// Keys and periods are stored as their [`Display`] text (so other readers can query
/// the table: `WHERE period = '2024-05-01' AND key = '/home'`); values as JSON
/// (`serde_json`). A value that does not survive the trip (an `f64` NaN becomes JSON
/// `null`) fails [`stage`](ServingView::stage) naming its key, before anything is
/// written.
///
/// - `stage` upserts rows into the staging table in one transaction (within a call,
///   the last row of a key wins); [`clear_staged`](ServingView::clear_staged) deletes
///   a period's staged rows.
/// - [`publish`](ServingView::publish) runs **one** transaction: it marks the period
///   complete and, if rows are staged, deletes the period's published rows, moves the
///   staged rows in and sets `published_at`. Readers see the old rows or the new ones,
///   never a mix; with nothing staged, the published rows stay as they are, so
///   publishing twice changes nothing. Publishes of one period take turns (a row lock
///   on its `complete` row).
/// - `lookup` is one statement: [`Incomplete`](BatchLookup::Incomplete) while the
///   period is not in the complete table, else
///   [`Complete`](BatchLookup::Complete) with the row's value or `None`.
///
/// Errors name the server (`PostgreSQL at host:port`) and the table; a lost
/// connection or a timeout is retryable, and the next call reconnects. Every call is
/// safe to repeat, so [`with_retry`](Self::with_retry) lets the view retry transient
/// failures itself (default: no retry; a failed batch run starts its period over,
/// and a failed publish is redone by the next, skipped, run). Failures of `stage`,
/// `clear_staged` and `publish` are sink errors (operations `stage`, `clear_staged`,
/// `publish`), failures of reads source errors. Clones share the client.
///
/// ```
/// use batchstream::connectors::postgres::{PgClient, PgServingView};
///
/// let client = PgClient::new("host=127.0.0.1 user=postgres dbname=test")?;
/// let view = PgServingView::new(client.clone(), "page_views")?;
/// assert_eq!(view.staging_table(), "page_views_staging");
/// assert_eq!(view.complete_table(), "page_views_complete");
/// let quoted = PgServingView::new(client.clone(), "lambda.\"Views\"")?;
/// assert_eq!(quoted.staging_table(), "lambda.\"Views_staging\"");
/// assert!(PgServingView::new(client, "views; drop table x").is_err());
/// # Ok::<(), batchstream::Error>(())
/// ```
///
/// With a [`Lambda`](crate::lambda::Lambda) (for the speed layer in Redis, see
/// `RedisSpeedStore` in `connectors::redis`, feature `redis`):
/// ```no_run
/// use std::time::Duration;
/// use batchstream::adapters::IterSource;
/// use batchstream::connectors::postgres::{PgCheckpointStore, PgClient, PgServingView};
/// use batchstream::lambda::{Lambda, Layer, MemorySpeedStore};
/// use batchstream::transform::{self, TransformExt};
/// use batchstream::{BatchExecutor, Pipeline};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> batchstream::Result<()> {
/// let db = "host=127.0.0.1 user=postgres dbname=test";
/// let view = PgServingView::new(PgClient::new(db)?, "page_views")?;
/// let lambda: Lambda<String, String, u64> =
///     Lambda::new(view, MemorySpeedStore::new(Duration::from_secs(2 * 86_400)));
/// let views = vec![("/home", "2024-05-01"), ("/home", "2024-05-01"), ("/cart", "2024-05-01")];
/// let store = PgCheckpointStore::new(PgClient::new(db)?);
/// lambda
///     .run_batch(BatchExecutor::new(), "2024-05-01".to_string(), |sink| {
///         let logic = transform::identity::<(&str, &str)>()
///             .key_by(|(page, _)| page.to_string())
///             .fold(0u64, |n, _| *n += 1);
///         Pipeline::new("views-batch", IterSource::new(views), logic, sink)
///             .with_checkpoint_store(store)
///     })
///     .await?;
/// let answer = lambda.query(&"/home".to_string(), &"2024-05-01".to_string()).await?;
/// assert_eq!((answer.value, answer.source), (Some(2), Layer::Batch));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgServingView {
    client: PgClient,
    table: String,
    staging: String,
    complete: String,
    retry: Option<RetryPolicy>,
    ensured: Arc<AtomicBool>,
}

impl PgServingView {
    /// A view whose published rows are in `table`, staged rows in `{table}_staging`
    /// and complete periods in `{table}_complete`.
    ///
    /// # Errors
    /// [`Error::Config`] if a name is not an identifier or is longer than 63 bytes.
    pub fn new(client: PgClient, table: &str) -> Result<Self> {
        check_view_ident("table name", table)?;
        let staging = with_suffix(table, "_staging");
        let complete = with_suffix(table, "_complete");
        check_view_ident("staging table name", &staging)?;
        check_view_ident("complete-periods table name", &complete)?;
        Ok(PgServingView {
            client,
            table: table.to_owned(),
            staging,
            complete,
            retry: None,
            ensured: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Keeps staged rows in table `name`.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is not an identifier or names another of the
    /// view's tables.
    pub fn with_staging_table(mut self, name: &str) -> Result<Self> {
        check_view_ident("staging table name", name)?;
        self.staging = name.to_owned();
        self.check_distinct()?;
        self.ensured = Arc::new(AtomicBool::new(false));
        Ok(self)
    }

    /// Keeps the complete periods in table `name`.
    ///
    /// # Errors
    /// [`Error::Config`] if `name` is not an identifier or names another of the
    /// view's tables.
    pub fn with_complete_table(mut self, name: &str) -> Result<Self> {
        check_view_ident("complete-periods table name", name)?;
        self.complete = name.to_owned();
        self.check_distinct()?;
        self.ensured = Arc::new(AtomicBool::new(false));
        Ok(self)
    }

    /// Retries a call that fails with a transient error (a lost connection) as
    /// `policy` says; each attempt is a whole transaction.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The table of published rows.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The table of staged rows.
    pub fn staging_table(&self) -> &str {
        &self.staging
    }

    /// The table of complete periods.
    pub fn complete_table(&self) -> &str {
        &self.complete
    }

    /// `PostgreSQL at host:port`.
    pub fn server(&self) -> &str {
        self.client.server()
    }

    /// Whether `period` is complete.
    ///
    /// # Errors
    /// A source error wrapping a [`PgError`].
    pub async fn is_complete(&self, period: &impl Display) -> Result<bool> {
        Ok(self.published_at(period).await?.is_some())
    }

    /// When the current rows of `period` were published (its first publish, if no
    /// later one had rows staged); `None` if it is not complete.
    ///
    /// # Errors
    /// A source error wrapping a [`PgError`].
    pub async fn published_at(&self, period: &impl Display) -> Result<Option<DateTime<Utc>>> {
        let period = period.to_string();
        let sql = format!(
            "SELECT published_at FROM {} WHERE period = $1",
            self.complete
        );
        let context = format!(
            "reading the completion of period `{period}` in {}",
            self.complete
        );
        self.retrying(|| async {
            let mut s = self.client.session().await?;
            self.ensure(&mut s).await?;
            let r = s.client().query_opt(&sql, &[&period]).await;
            let row = r.map_err(|e| s.error(&context, e))?;
            row.map(|row| row.try_get(0))
                .transpose()
                .map_err(|e| s.error(&context, e))
        })
        .await
        .map_err(PgError::into_source_error)
    }

    /// The published rows of `period` by key text (empty before its first publish).
    ///
    /// # Errors
    /// A source error wrapping a [`PgError`], also when a value does not decode as `V`.
    pub async fn rows<V: DeserializeOwned>(
        &self,
        period: &impl Display,
    ) -> Result<BTreeMap<String, V>> {
        self.read_rows(&self.table, &period.to_string()).await
    }

    /// The staged (not yet published) rows of `period` by key text.
    ///
    /// # Errors
    /// A source error wrapping a [`PgError`], also when a value does not decode as `V`.
    pub async fn staged_rows<V: DeserializeOwned>(
        &self,
        period: &impl Display,
    ) -> Result<BTreeMap<String, V>> {
        self.read_rows(&self.staging, &period.to_string()).await
    }

    fn check_distinct(&self) -> Result<()> {
        let (t, s, c) = (&self.table, &self.staging, &self.complete);
        if t == s || t == c || s == c {
            return Err(Error::Config(format!(
                "PgServingView: the rows ({t}), staging ({s}) and complete-periods ({c}) \
                 tables must be three different tables"
            )));
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retry policy (if
    /// any) gives up.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> std::result::Result<T, PgError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, PgError>>,
    {
        let first = Instant::now();
        let mut n = 1;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => match retry_delay(self.retry.as_ref(), &e, n, first) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        n += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }

    /// Creates the three tables if missing (once per view and its clones).
    async fn ensure(&self, s: &mut Session<'_>) -> std::result::Result<(), PgError> {
        if self.ensured.load(Ordering::Acquire) {
            return Ok(());
        }
        let rows = "(period text NOT NULL, key text NOT NULL, value jsonb NOT NULL, \
                    PRIMARY KEY (period, key))";
        let statements = [
            (
                &self.table,
                format!("CREATE TABLE IF NOT EXISTS {} {rows}", self.table),
            ),
            (
                &self.staging,
                format!("CREATE TABLE IF NOT EXISTS {} {rows}", self.staging),
            ),
            (
                &self.complete,
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (period text PRIMARY KEY, \
                     published_at timestamptz NOT NULL DEFAULT now())",
                    self.complete
                ),
            ),
        ];
        for (table, sql) in statements {
            match s.client().batch_execute(&sql).await {
                Err(e) if !created_concurrently(&e) => {
                    return Err(s.error(format!("creating serving-view table {table}"), e));
                }
                _ => {}
            }
        }
        self.ensured.store(true, Ordering::Release);
        Ok(())
    }

    async fn read_rows<V: DeserializeOwned>(
        &self,
        table: &str,
        period: &str,
    ) -> Result<BTreeMap<String, V>> {
        let sql = format!("SELECT key, value FROM {table} WHERE period = $1");
        let context = format!("reading the rows of period `{period}` from {table}");
        let raw: Vec<(String, serde_json::Value)> = self
            .retrying(|| async {
                let mut s = self.client.session().await?;
                self.ensure(&mut s).await?;
                let r = s.client().query(&sql, &[&period]).await;
                let rows = r.map_err(|e| s.error(&context, e))?;
                rows.iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<std::result::Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(|e| s.error(&context, e))
            })
            .await
            .map_err(PgError::into_source_error)?;
        raw.into_iter()
            .map(|(key, value)| {
                let v = self.decode(table, period, &key, value)?;
                Ok((key, v))
            })
            .collect()
    }

    fn decode<V: DeserializeOwned>(
        &self,
        table: &str,
        period: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<V> {
        serde_json::from_value(value.clone()).map_err(|e| {
            PgError::new(
                self.client.server(),
                format!("reading key `{key}` of period `{period}` from {table}"),
                format!(
                    "the value {value} does not decode as {}: {e}",
                    std::any::type_name::<V>()
                ),
            )
            .into_source_error()
        })
    }

    async fn stage_rows(
        &self,
        period: &str,
        keys: &[String],
        values: &[serde_json::Value],
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (period, key, value)
             SELECT $1::text, k, v FROM unnest($2::text[], $3::jsonb[]) AS r(k, v)
             ON CONFLICT (period, key) DO UPDATE SET value = EXCLUDED.value",
            self.staging
        );
        let context = format!(
            "staging {} rows of period `{period}` into {}",
            keys.len(),
            self.staging
        );
        self.retrying(|| async {
            let mut s = self.client.session().await?;
            self.ensure(&mut s).await?;
            let r = async {
                let tx = s.client().transaction().await?;
                let statement = tx.prepare(&sql).await?;
                for (k, v) in keys.chunks(STAGE_CHUNK).zip(values.chunks(STAGE_CHUNK)) {
                    tx.execute(&statement, &[&period, &k, &v]).await?;
                }
                tx.commit().await
            }
            .await;
            r.map_err(|e| s.error(&context, e))
        })
        .await
        .map_err(|e| e.into_sink_error("stage"))
    }

    async fn clear(&self, period: &str) -> Result<()> {
        let sql = format!("DELETE FROM {} WHERE period = $1", self.staging);
        let context = format!(
            "clearing the staged rows of period `{period}` from {}",
            self.staging
        );
        self.retrying(|| async {
            let mut s = self.client.session().await?;
            self.ensure(&mut s).await?;
            let r = s.client().execute(&sql, &[&period]).await;
            r.map(drop).map_err(|e| s.error(&context, e))
        })
        .await
        .map_err(|e| e.into_sink_error("clear_staged"))
    }

    async fn publish_period(&self, period: &str) -> Result<()> {
        let (t, st, c) = (&self.table, &self.staging, &self.complete);
        let mark = format!(
            "INSERT INTO {c} (period, published_at) VALUES ($1, now()) \
             ON CONFLICT (period) DO NOTHING"
        );
        let lock = format!("SELECT 1 FROM {c} WHERE period = $1 FOR UPDATE");
        let staged =
            format!("SELECT count(*) FROM (SELECT 1 FROM {st} WHERE period = $1 FOR UPDATE) s");
        let unpublish = format!("DELETE FROM {t} WHERE period = $1");
        let publish = format!(
            "WITH moved AS (DELETE FROM {st} WHERE period = $1 RETURNING key, value)
             INSERT INTO {t} (period, key, value) SELECT $1::text, key, value FROM moved"
        );
        let stamp = format!("UPDATE {c} SET published_at = now() WHERE period = $1");
        let context = format!("publishing period `{period}` from {st} into {t}");
        self.retrying(|| async {
            let mut s = self.client.session().await?;
            self.ensure(&mut s).await?;
            let r = async {
                let tx = s.client().transaction().await?;
                tx.execute(&mark, &[&period]).await?;
                // Publishes of this period take turns from here on.
                tx.execute(&lock, &[&period]).await?;
                let n: i64 = tx.query_one(&staged, &[&period]).await?.try_get(0)?;
                if n > 0 {
                    tx.execute(&unpublish, &[&period]).await?;
                    tx.execute(&publish, &[&period]).await?;
                    tx.execute(&stamp, &[&period]).await?;
                }
                tx.commit().await
            }
            .await;
            r.map_err(|e| s.error(&context, e))
        })
        .await
        .map_err(|e| e.into_sink_error("publish"))
    }

    async fn lookup_key<V: DeserializeOwned>(
        &self,
        key: &str,
        period: &str,
    ) -> Result<BatchLookup<V>> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE period = $1),
                    (SELECT value FROM {} WHERE period = $1 AND key = $2)",
            self.complete, self.table
        );
        let context = format!(
            "looking up key `{key}` of period `{period}` in {}",
            self.table
        );
        let (complete, value): (bool, Option<serde_json::Value>) = self
            .retrying(|| async {
                let mut s = self.client.session().await?;
                self.ensure(&mut s).await?;
                let r = async {
                    let row = s.client().query_one(&sql, &[&period, &key]).await?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                }
                .await;
                r.map_err(|e| s.error(&context, e))
            })
            .await
            .map_err(PgError::into_source_error)?;
        if !complete {
            return Ok(BatchLookup::Incomplete);
        }
        let value = value
            .map(|v| self.decode(&self.table, period, key, v))
            .transpose()?;
        Ok(BatchLookup::Complete(value))
    }
}

impl<K, P, V> ServingView<K, P, V> for PgServingView
where
    K: Display + Send + Sync,
    P: Display + Send + Sync,
    V: Serialize + DeserializeOwned + Send + Sync,
{
    fn stage<'a>(&'a self, period: &'a P, rows: Vec<(K, V)>) -> BoxFuture<'a, Result<()>> {
        let period = period.to_string();
        // Encoded before the future (which then holds no `K` or `V`); the last row of
        // a key wins.
        let mut encoded: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (key, value) in rows {
            let key = key.to_string();
            let json = serde_json::to_value(&value)
                .and_then(|json| serde_json::from_value::<V>(json.clone()).map(|_| json));
            match json {
                Ok(json) => {
                    encoded.insert(key, json);
                }
                Err(e) => {
                    let e = PgError::new(
                        self.client.server(),
                        format!("staging period `{period}` into {}", self.staging),
                        format!(
                            "the value of key `{key}` does not encode as JSON that decodes back: {e}; \
                             nothing of this call was staged"
                        ),
                    );
                    return Box::pin(std::future::ready(Err(e.into_sink_error("stage"))));
                }
            }
        }
        Box::pin(async move {
            if encoded.is_empty() {
                return Ok(());
            }
            let (keys, values): (Vec<String>, Vec<serde_json::Value>) = encoded.into_iter().unzip();
            self.stage_rows(&period, &keys, &values).await
        })
    }

    fn clear_staged<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>> {
        let period = period.to_string();
        Box::pin(async move { self.clear(&period).await })
    }

    fn publish<'a>(&'a self, period: &'a P) -> BoxFuture<'a, Result<()>> {
        let period = period.to_string();
        Box::pin(async move { self.publish_period(&period).await })
    }

    fn lookup<'a>(&'a self, key: &'a K, period: &'a P) -> BoxFuture<'a, Result<BatchLookup<V>>> {
        let (key, period) = (key.to_string(), period.to_string());
        Box::pin(async move { self.lookup_key(&key, &period).await })
    }
}
