//! The embedded default: one SQLite file in WAL mode with `synchronous=FULL`, migrated from
//! `migrations/sqlite` at open.
//!
//! The writer owns one connection ([`SqliteStore`]) and is the only writer, so no transaction
//! ever waits on another. Reads that are not on the command path (verify, queries) open their
//! own connection with [`SqliteStore::open_read_only`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite, SqliteConnection};

use super::{
    Batch, DeliveryState, Error, IdempotencyRow, InstanceRow, ReplanJob, Store, StoredCalendarFile, TimerFrom, TimerId,
    TimerRow,
};
use crate::calendar::{CalendarFile, FileKey};
use crate::clock::Millis;
use crate::domain::figures::CounterKey;
use crate::machine::HistoryEntry;

/// The columns `instance_from_row` reads, in the order the queries select them.
pub(crate) const INSTANCE_COLUMNS: &str =
    "id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at";

/// The columns `history_from_row` reads.
pub(crate) const HISTORY_COLUMNS: &str =
    "seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled, calendar";

/// Migrations of the SQLite schema, embedded at build time.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| super::embedded_migrator(super::SQLITE_MIGRATIONS));

/// SQLite allows 32,766 bound parameters per statement: a statement carries as many rows as
/// fit, because every statement is a hop to sqlx's SQLite worker thread.
const MAX_PARAMS: usize = 32_000;

/// Rows per statement for a table with `columns` bound columns.
const fn rows_for(columns: usize) -> usize {
    MAX_PARAMS / columns
}

/// Runs the migrations on the connection itself: `Migrator::run`'s generic `Acquire` bound
/// makes every caller's future fail the higher-ranked `Send` check, so a server built on it
/// could not be spawned on a runtime.
async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_direct(conn).await
}

/// Options for opening the database.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Upper bound on the database size in pages (`PRAGMA max_page_count`); writes beyond it
    /// fail with "database or disk is full" and are answered as unavailable. `None`: no bound.
    pub max_pages: Option<u32>,
    /// The calendar files a database with none is seeded with (as generations 1, 2, …), and
    /// when (engine time).
    pub calendar_seed: Vec<CalendarFile>,
    /// The instant recorded as the seed's load time.
    pub seeded_at: Millis,
}

/// The writer's connection to a SQLite database.
///
/// After any failed write the connection is closed and a new one opened for the next
/// operation. SQLite rolls a transaction back by itself on some errors (a full disk while
/// committing, an I/O error), and sqlx's count of open transactions then disagrees with the
/// connection's: the next `BEGIN` becomes a savepoint inside a transaction that is never
/// committed, and every later "commit" only releases that savepoint. A new connection has no
/// such history, so its state is known.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Option<SqliteConnection>,
    opts: SqliteConnectOptions,
    max_pages: Option<u32>,
    path: PathBuf,
    /// A connection was closed after a failure: the next one opened is a reopen (logged).
    lost: bool,
}

async fn set_max_pages(conn: &mut SqliteConnection, pages: Option<u32>) -> Result<(), sqlx::Error> {
    if let Some(pages) = pages {
        sqlx::query(&format!("PRAGMA max_page_count = {pages}")).execute(conn).await?;
    }
    Ok(())
}

fn open_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Open { path: path.display().to_string(), message: message.into() }
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message().to_owned();
            if msg.contains("not a database") {
                "the file is not a SQLite database (corrupt, or another kind of file)".to_owned()
            } else if msg.contains("readonly") || msg.contains("read-only") {
                format!("the database or its directory is read-only ({msg})")
            } else if msg.contains("unable to open") {
                format!("{msg} (does the directory exist and is it writable?)")
            } else {
                msg
            }
        }
        other => other.to_string(),
    }
}

/// Creates `path` empty with mode 0600 unless it exists (an existing file keeps its mode: the
/// operator may have chosen it).
pub(crate) fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) and migrates the database at `path`.
    pub async fn open(path: &Path, options: &Options) -> Result<Self, Error> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(open_error(path, format!("directory {} does not exist", dir.display())));
        }
        if path.is_dir() {
            return Err(open_error(path, "is a directory"));
        }
        // The database holds applicants' names, numbers and mobiles: only its owner may read
        // it. SQLite gives its -wal and -shm files the main file's mode.
        create_private(path).map_err(|e| open_error(path, e.to_string()))?;
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_error(path, e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(false)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536")
            .disable_statement_logging();
        let mut conn = opts.connect().await.map_err(|e| open_error(path, describe(&e)))?;
        // Reading the header here catches a corrupt or foreign file before migrations try to.
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&mut conn)
            .await
            .map_err(|e| open_error(path, describe(&e)))?;
        let applied: Vec<i64> = {
            let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| open_error(path, describe(&e)))?;
            if exists == 0 {
                Vec::new()
            } else {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&mut conn)
                    .await
                    .map_err(|e| open_error(path, describe(&e)))?
            }
        };
        super::newer_schema(&applied, &MIGRATOR).map_err(|m| open_error(path, m))?;
        migrate(&mut conn).await.map_err(|e| {
            let msg = match &e {
                sqlx::migrate::MigrateError::Execute(inner) => describe(inner),
                other => other.to_string(),
            };
            open_error(path, format!("migration failed: {msg}"))
        })?;
        seed(&mut conn, &options.calendar_seed, options.seeded_at)
            .await
            .map_err(|e| open_error(path, e.to_string()))?;
        set_max_pages(&mut conn, options.max_pages).await.map_err(|e| open_error(path, describe(&e)))?;
        // A reopen after a failure must find the database it lost, never create an empty one
        // (a file removed under a running server).
        let opts = opts.create_if_missing(false);
        Ok(SqliteStore { conn: Some(conn), opts, max_pages: options.max_pages, path: path.to_owned(), lost: false })
    }

    /// The open connection, or a new one when the last was closed after a failure.
    async fn conn(&mut self) -> Result<&mut SqliteConnection, Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let mut conn = self.opts.connect().await?;
                set_max_pages(&mut conn, self.max_pages).await?;
                if std::mem::take(&mut self.lost) {
                    tracing::info!(db = %self.path.display(), "reopened the database connection after a failure");
                }
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// Closes the connection after a failure whose effect on its state is not known.
    async fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.lost = true;
            // Closing may itself fail on a broken connection; it is gone either way.
            let _ = conn.close().await;
        }
    }

    /// Passes `result` through; on a failure that may have left the connection in an unknown
    /// state (anything but stored data that does not decode), closes the connection first.
    async fn after<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            if !matches!(e, Error::Corrupt(_)) {
                self.discard().await;
            }
        }
        result
    }

    /// Opens an existing database for reading only (verify, inspection). Never creates a file.
    pub async fn open_read_only(path: &Path) -> Result<Self, Error> {
        if !path.is_file() {
            return Err(open_error(path, "no such database file"));
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_error(path, e.to_string()))?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5))
            .disable_statement_logging();
        let mut conn = opts.connect().await.map_err(|e| open_error(path, describe(&e)))?;
        let reopen = opts.clone();
        let has_schema: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'instances'")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| open_error(path, describe(&e)))?;
        if has_schema == 0 {
            return Err(open_error(path, "not a shenguan database (no instances table)"));
        }
        Ok(SqliteStore { conn: Some(conn), opts: reopen, max_pages: None, path: path.to_owned(), lost: false })
    }

    /// The migrations recorded in the file at `path` (none for a missing file).
    pub async fn applied_versions(path: &Path) -> Result<Vec<i64>, Error> {
        if !path.is_file() {
            return Ok(Vec::new());
        }
        let reader = Self::open_read_only(path).await;
        let mut store = match reader {
            Ok(s) => s,
            // An empty or foreign file: `open` says what is wrong with it.
            Err(_) => return Ok(Vec::new()),
        };
        let conn = store.conn().await?;
        let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'")
            .fetch_one(&mut *conn)
            .await?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success").fetch_all(&mut *conn).await?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One instance's history, ascending.
    pub async fn history(&mut self, id: &str) -> Result<Vec<HistoryEntry>, Error> {
        let conn = self.conn().await?;
        let rows = sqlx::query(&format!("SELECT {HISTORY_COLUMNS} FROM history WHERE instance_id = ? ORDER BY seq"))
            .bind(id)
            .fetch_all(conn)
            .await;
        let rows = self.after(rows.map_err(Error::from)).await?;
        rows.iter().map(crate::store::row::history).collect()
    }

    /// Counts rows of a table (tests and reports).
    pub async fn count(&mut self, table: Table) -> Result<u64, Error> {
        let conn = self.conn().await?;
        let n = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {}", table.name())).fetch_one(conn).await;
        let n = self.after(n.map_err(Error::from)).await?;
        u64::try_from(n).map_err(|e| crate::store::row::corrupt("count(*)", e))
    }
}

pub use super::Table;

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot serialise a row: {e}")))
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The command path's statements, on one connection.
mod ops {
    use super::*;

    /// The rows of `SELECT {columns} FROM {table} WHERE {key} IN (keys)`, as many keys to a
    /// statement as fit, each decoded to (key, value).
    async fn select_in<T>(
        conn: &mut SqliteConnection,
        (columns, table, key): (&str, &str, &str),
        keys: &[&str],
        decode: impl Fn(&sqlx::sqlite::SqliteRow) -> Result<(String, T), Error>,
    ) -> Result<HashMap<String, T>, Error> {
        let mut out = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(rows_for(1)) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("SELECT {columns} FROM {table} WHERE {key} IN ("));
            let mut sep = q.separated(", ");
            for k in chunk {
                sep.push_bind(*k);
            }
            q.push(")");
            for row in q.build().fetch_all(&mut *conn).await? {
                let (k, value) = decode(&row)?;
                out.insert(k, value);
            }
        }
        Ok(out)
    }

    pub(super) async fn load_instances(
        conn: &mut SqliteConnection,
        ids: &[&str],
    ) -> Result<HashMap<String, InstanceRow>, Error> {
        select_in(conn, (INSTANCE_COLUMNS, "instances", "id"), ids, |row| {
            crate::store::row::instance(row).map(|r| (r.id.clone(), r))
        })
        .await
    }

    pub(super) async fn load_archived(
        conn: &mut SqliteConnection,
        ids: &[&str],
    ) -> Result<HashMap<String, crate::store::ArchivedRow>, Error> {
        select_in(conn, (crate::store::row::ARCHIVED_COLUMNS, "archived", "id"), ids, |row| {
            crate::store::row::archived(row).map(|r| (r.id.clone(), r))
        })
        .await
    }

    pub(super) async fn load_idempotency(
        conn: &mut SqliteConnection,
        keys: &[&str],
    ) -> Result<HashMap<String, IdempotencyRow>, Error> {
        select_in(
            conn,
            (crate::store::row::IDEMPOTENCY_COLUMNS, "idempotency", "key"),
            keys,
            crate::store::row::idempotency,
        )
        .await
    }

    pub(super) async fn commit(conn: &mut SqliteConnection, batch: &Batch) -> Result<(), Error> {
        // Every JSON column is serialised before the transaction starts: a value that does not
        // serialise fails the batch instead of storing an empty string.
        let instance_json = batch
            .instances
            .iter()
            .map(|r| Ok((json(&r.vars)?, json(&r.timers)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let history_json = batch
            .history
            .iter()
            .map(|(_, h)| Ok((json(&h.command)?, json(&h.armed)?, json(&h.cancelled)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut tx = conn.begin().await?;
        let n = rows_for(10);
        for (chunk, encoded) in batch.instances.chunks(n).zip(instance_json.chunks(n)) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at) ");
            q.push_values(chunk.iter().zip(encoded), |mut b, (r, (vars, timers))| {
                b.push_bind(&r.id)
                    .push_bind(&r.workflow)
                    .push_bind(i64::from(r.version))
                    .push_bind(&r.state)
                    .push_bind(vars)
                    .push_bind(timers)
                    .push_bind(seq_i64(r.seq))
                    .push_bind(i64::from(r.shard))
                    .push_bind(r.created_at)
                    .push_bind(r.updated_at);
            });
            q.push(
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state, vars = excluded.vars, timers = excluded.timers, \
                 seq = excluded.seq, updated_at = excluded.updated_at",
            );
            q.build().execute(&mut *tx).await?;
        }
        let n = rows_for(13);
        for (chunk, encoded) in batch.history.chunks(n).zip(history_json.chunks(n)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO history (instance_id, seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled, calendar) ",
            );
            q.push_values(chunk.iter().zip(encoded), |mut b, ((id, h), (command, armed, cancelled))| {
                b.push_bind(id)
                    .push_bind(seq_i64(h.seq))
                    .push_bind(h.at)
                    .push_bind(&h.actor)
                    .push_bind(&h.request_id)
                    .push_bind(command)
                    .push_bind(&h.from)
                    .push_bind(&h.to)
                    .push_bind(armed)
                    .push_bind(cancelled)
                    .push_bind(i64::from(h.messages))
                    .push_bind(h.handled)
                    .push_bind(i64::try_from(h.calendar).unwrap_or(i64::MAX));
            });
            q.build().execute(&mut *tx).await?;
        }
        let deletes: Vec<&(String, String)> =
            batch.timers.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
        for chunk in deletes.chunks(rows_for(2)) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("DELETE FROM timers WHERE (instance_id, name) IN (VALUES ");
            let mut first = true;
            for (id, name) in chunk {
                if !first {
                    q.push(", ");
                }
                first = false;
                q.push("(").push_bind(id).push(", ").push_bind(name).push(")");
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        let upserts: Vec<_> = batch.timers.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))).collect();
        for chunk in upserts.chunks(rows_for(8)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR REPLACE INTO timers (instance_id, name, due_at, event, shard, plan_first, plan_last, provisional) ",
            );
            q.push_values(chunk, |mut b, ((id, name), (timer, shard))| {
                let plan = timer.plan.as_ref();
                b.push_bind(id)
                    .push_bind(name)
                    .push_bind(timer.due)
                    .push_bind(&timer.event)
                    .push_bind(i64::from(*shard))
                    .push_bind(plan.map(|p| p.first.to_string()))
                    .push_bind(plan.map(|p| p.last.to_string()))
                    .push_bind(plan.is_some_and(|p| p.provisional));
            });
            q.build().execute(&mut *tx).await?;
        }
        for chunk in batch.outbox.chunks(rows_for(14)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO outbox (key, instance_id, seq, channel, recipient, body, created_at, next_attempt_at, \
                 destination, status, template, kind, schema_version, data) ",
            );
            q.push_values(chunk, |mut b, m| {
                let status = if m.destination.is_some() { DeliveryState::Pending } else { DeliveryState::Stream };
                b.push_bind(&m.key)
                    .push_bind(&m.instance)
                    .push_bind(seq_i64(m.seq))
                    .push_bind(&m.message.channel)
                    .push_bind(&m.message.recipient)
                    .push_bind(&m.message.body)
                    .push_bind(m.created_at)
                    .push_bind(0_i64)
                    .push_bind(&m.destination)
                    .push_bind(status.as_str())
                    .push_bind(&m.message.template)
                    .push_bind(&m.message.kind)
                    .push_bind(i64::from(m.message.schema_version))
                    .push_bind(crate::store::data_column(&m.message));
            });
            q.build().execute(&mut *tx).await?;
        }
        // Delivery outcomes: one UPDATE … FROM a VALUES list per chunk, not one statement a row.
        for chunk in batch.marks.chunks(rows_for(7)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "UPDATE outbox SET status = m.column2, attempts = m.column3, next_attempt_at = m.column4, \
                 last_error = m.column5, receipt = coalesce(m.column6, outbox.receipt), \
                 delivered_at = CASE WHEN m.column2 = 'pending' THEN NULL ELSE m.column7 END, \
                 first_failed_at = CASE WHEN m.column5 IS NULL THEN outbox.first_failed_at \
                     ELSE coalesce(outbox.first_failed_at, m.column7) END \
                 FROM (",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(seq_i64(m.id))
                    .push_bind(m.status.as_str())
                    .push_bind(i64::from(m.attempts))
                    .push_bind(m.next_attempt_at)
                    .push_bind(&m.last_error)
                    .push_bind(&m.receipt)
                    .push_bind(m.at);
            });
            // A mark never overrides an administrator's retry that raced it: only a message
            // still pending is changed.
            q.push(") AS m WHERE outbox.id = m.column1 AND outbox.status = 'pending'");
            q.build().execute(&mut *tx).await?;
        }
        for key in &batch.revive {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = 0, delivered_at = NULL, \
                 first_failed_at = NULL \
                 WHERE key = ? AND status = 'dead'",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        for (key, at) in &batch.discard {
            sqlx::query("UPDATE outbox SET status = 'discarded', delivered_at = ? WHERE key = ? AND status = 'dead'")
                .bind(at)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        for c in &batch.cursors {
            // Only a Subscribe (which names the channels) creates a consumer: an acknowledgement
            // racing an administrator's drop must not bring it back.
            let query = match &c.channels {
                Some(channels) => sqlx::query(
                    "INSERT INTO consumers (name, owner, acked, updated_at, channels) VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (name) DO UPDATE SET acked = max(acked, excluded.acked), \
                     updated_at = excluded.updated_at, channels = excluded.channels",
                )
                .bind(&c.name)
                .bind(&c.owner)
                .bind(seq_i64(c.acked))
                .bind(c.at)
                .bind(crate::store::channels_column(channels)),
                None => sqlx::query("UPDATE consumers SET acked = max(acked, ?), updated_at = ? WHERE name = ?")
                    .bind(seq_i64(c.acked))
                    .bind(c.at)
                    .bind(&c.name),
            };
            query.execute(&mut *tx).await?;
        }
        for name in &batch.dropped_consumers {
            sqlx::query("DELETE FROM consumers WHERE name = ?").bind(name).execute(&mut *tx).await?;
        }
        for chunk in batch.idempotency.chunks(rows_for(5)) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO idempotency (key, instance_id, seq, fingerprint, created_at) ");
            q.push_values(chunk, |mut b, (key, row)| {
                b.push_bind(key)
                    .push_bind(&row.instance)
                    .push_bind(seq_i64(row.seq))
                    .push_bind(&row.fingerprint)
                    .push_bind(row.created_at);
            });
            // The writer reuses a key only once it has expired.
            q.push(
                " ON CONFLICT(key) DO UPDATE SET instance_id = excluded.instance_id, seq = excluded.seq, \
                 fingerprint = excluded.fingerprint, created_at = excluded.created_at",
            );
            q.build().execute(&mut *tx).await?;
        }
        if let Some(f) = &batch.calendar_file {
            calendars::insert_file(&mut *tx, f).await?;
        }
        if let Some(job) = &batch.replan {
            calendars::put_replan(&mut *tx, job).await?;
        }
        for v in &batch.catalogs {
            catalogs::insert(&mut *tx, v).await?;
        }
        let n = rows_for(6);
        for chunk in batch.subjects.chunks(n) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO subjects (code, instance_id, workflow, item, grade, created_at) ");
            q.push_values(chunk, |mut b, s| {
                b.push_bind(&s.code)
                    .push_bind(&s.instance)
                    .push_bind(&s.workflow)
                    .push_bind(&s.item)
                    .push_bind(&s.grade)
                    .push_bind(s.created_at);
            });
            q.push(" ON CONFLICT DO NOTHING");
            q.build().execute(&mut *tx).await?;
        }
        // Last, after every row it counts: the counters are part of the same transaction.
        add_figures(&mut tx, &batch.figures, batch.stripe).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn instances_page(
        conn: &mut SqliteConnection,
        workflows: &[&str],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            // `+workflow`: walk the primary key in id order. With the (workflow, state) index
            // SQLite sorted every matching row for each page: quadratic over a million cases.
            QueryBuilder::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE +workflow IN ("));
        let mut sep = q.separated(", ");
        for w in workflows {
            sep.push_bind(*w);
        }
        q.push(") AND id > ").push_bind(after.unwrap_or_default());
        q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        q.build().fetch_all(&mut *conn).await?.iter().map(crate::store::row::instance).collect()
    }

    pub(super) async fn figures_built(conn: &mut SqliteConnection) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM figure_counts_built").fetch_one(&mut *conn).await?;
        Ok(n > 0)
    }

    pub(super) async fn install_figures(
        conn: &mut SqliteConnection,
        rows: &[(CounterKey, i64)],
        instances: u64,
        at: Millis,
    ) -> Result<bool, Error> {
        let mut tx = conn.begin().await?;
        let marked =
            sqlx::query("INSERT INTO figure_counts_built (id, at, instances) VALUES (1, ?, ?) ON CONFLICT DO NOTHING")
                .bind(at)
                .bind(i64::try_from(instances).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if marked == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM figure_counts").execute(&mut *tx).await?;
        add_figures(&mut tx, rows, 0).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn remove_archived(
        conn: &mut SqliteConnection,
        cases: &[crate::store::Removal],
        archive: &str,
        at: Millis,
    ) -> Result<crate::store::Removed, Error> {
        let mut tx = conn.begin().await?;
        let out = crate::store::removal::remove_in!(tx, cases, archive, at, "")?;
        tx.commit().await?;
        Ok(out)
    }

    /// Adds to the statistics counters (creating them at 0).
    pub(super) async fn add_figures(
        conn: &mut SqliteConnection,
        rows: &[(CounterKey, i64)],
        stripe: u32,
    ) -> Result<(), Error> {
        for chunk in rows.chunks(rows_for(9)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO figure_counts (grain, period, side, region, department, office, figure, stripe, n) ",
            );
            q.push_values(chunk, |mut b, (k, n)| {
                b.push_bind(k.grain.as_str())
                    .push_bind(&k.period)
                    .push_bind(k.group.side.as_str())
                    .push_bind(&k.group.region)
                    .push_bind(&k.group.department)
                    .push_bind(&k.group.office)
                    .push_bind(k.figure.as_str())
                    .push_bind(i64::from(stripe))
                    .push_bind(*n);
            });
            q.push(" ON CONFLICT (grain, period, side, region, department, office, figure, stripe) DO UPDATE SET n = n + excluded.n");
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    pub(super) async fn timers_page(
        conn: &mut SqliteConnection,
        from: &TimerFrom,
        before: Millis,
        limit: u32,
        shards: Option<&[u32]>,
    ) -> Result<Vec<TimerRow>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT due_at, instance_id, name FROM timers WHERE due_at < ");
        q.push_bind(before);
        match from {
            TimerFrom::Due(from) => {
                q.push(" AND due_at >= ").push_bind(*from);
            }
            TimerFrom::After(due, id, name) => {
                q.push(" AND (due_at, instance_id, name) > (")
                    .push_bind(*due)
                    .push(", ")
                    .push_bind(id.as_str())
                    .push(", ")
                    .push_bind(name.as_str())
                    .push(")");
            }
        }
        if let Some(shards) = shards {
            q.push(" AND shard IN (");
            let mut list = q.separated(", ");
            for s in shards {
                list.push_bind(i64::from(*s));
            }
            // An empty list holds no shard: `IN ()` is not SQL, `IN (NULL)` matches nothing.
            if shards.is_empty() {
                list.push("NULL");
            }
            q.push(")");
        }
        q.push(" ORDER BY due_at, instance_id, name LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&mut *conn).await?;
        rows.iter().map(crate::store::row::timer).collect()
    }
}

/// Instance ids that rows of `history`, `outbox` or `idempotency` name but that have no
/// instance row: (table, instance id), at most `?` of them.
pub(crate) const ORPHANS: &str = "SELECT t, id FROM ( \
       SELECT DISTINCT 'history' AS t, instance_id AS id FROM history \
       UNION SELECT DISTINCT 'outbox', instance_id FROM outbox \
       UNION SELECT DISTINCT 'idempotency', instance_id FROM idempotency \
     ) WHERE id NOT IN (SELECT id FROM instances) ORDER BY id, t LIMIT ?";

/// Seeds a database that holds no calendar file with `files`, in one transaction.
async fn seed(conn: &mut SqliteConnection, files: &[CalendarFile], at: Millis) -> Result<(), Error> {
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_files").fetch_one(&mut *conn).await?;
    if stored > 0 || files.is_empty() {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    let mut versions: HashMap<&FileKey, u32> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        let version = versions.entry(&file.key).or_insert(0);
        *version += 1;
        let stored = StoredCalendarFile {
            generation: i as u64 + 1,
            version: *version,
            file: file.clone(),
            loaded_by: super::SEED.to_owned(),
            loaded_at: at,
        };
        calendars::insert_file(&mut *tx, &stored).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Catalog versions and the enterprise index: statements shared by the writer's connection and
/// the readers.
pub(crate) mod catalogs {
    use super::*;
    use crate::catalog::{Kind, Version};
    use crate::store::row;

    /// Two imports prepared at once against the same versions: the second's (kind, version) is
    /// taken, and it is refused as a conflict (prepared again on what is stored) rather than
    /// failing as a defect.
    pub(crate) async fn insert<'e, E: sqlx::SqliteExecutor<'e>>(e: E, v: &Version) -> Result<(), Error> {
        let written = sqlx::query(
            "INSERT INTO catalog_versions (kind, version, actor, at, comment, changes, rows) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(v.kind.name())
        .bind(i64::from(v.version))
        .bind(&v.actor)
        .bind(v.at)
        .bind(&v.comment)
        .bind(json(&v.changes)?)
        .bind(json(&v.rows)?)
        .execute(e)
        .await?
        .rows_affected();
        if written == 0 {
            return Err(Error::Conflict(format!(
                "{} version {} was imported by another import first",
                v.kind, v.version
            )));
        }
        Ok(())
    }

    pub(crate) async fn latest<'e, E: sqlx::SqliteExecutor<'e>>(e: E) -> Result<Vec<Version>, Error> {
        let rows = sqlx::query(row::LATEST_CATALOGS).fetch_all(e).await?;
        rows.iter().map(row::catalog_version).collect()
    }

    pub(crate) async fn history<'e, E: sqlx::SqliteExecutor<'e>>(e: E, kind: Kind) -> Result<Vec<Version>, Error> {
        let rows = sqlx::query(&row::catalog_history_sql("?")).bind(kind.name()).fetch_all(e).await?;
        rows.iter().map(row::catalog_version).collect()
    }

    pub(crate) async fn subjects_of<'e, E: sqlx::SqliteExecutor<'e>>(
        e: E,
        code: &str,
    ) -> Result<Vec<crate::store::Subject>, Error> {
        let sql = format!("{}WHERE s.code = ? ORDER BY s.created_at, s.instance_id", row::SUBJECT_COLUMNS);
        let rows = sqlx::query(&sql).bind(code).fetch_all(e).await?;
        rows.iter().map(row::subject).collect()
    }

    pub(crate) async fn subjects_by_item<'e, E: sqlx::SqliteExecutor<'e>>(
        e: E,
        workflow: &str,
        items: &[String],
        states: &[&str],
    ) -> Result<Vec<crate::store::Subject>, Error> {
        if items.is_empty() || states.is_empty() {
            return Ok(Vec::new());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(row::SUBJECT_COLUMNS);
        q.push("WHERE s.workflow = ").push_bind(workflow).push(" AND s.item IN (");
        let mut sep = q.separated(", ");
        for i in items {
            sep.push_bind(i);
        }
        q.push(") AND i.state IN (");
        let mut sep = q.separated(", ");
        for s in states {
            sep.push_bind(*s);
        }
        q.push(") ORDER BY s.code, s.created_at");
        let rows = q.build().fetch_all(e).await?;
        rows.iter().map(row::subject).collect()
    }
}

/// Calendar files and re-plans: statements shared by the writer's connection and the readers.
pub(crate) mod calendars {
    use super::*;

    pub(crate) async fn insert_file<'e, E: sqlx::SqliteExecutor<'e>>(
        e: E,
        f: &StoredCalendarFile,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO calendar_files (generation, key, version, name, text, source, loaded_by, loaded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i64::try_from(f.generation).unwrap_or(i64::MAX))
        .bind(crate::store::row::key_text(&f.file.key))
        .bind(i64::from(f.version))
        .bind(&f.file.name)
        .bind(&f.file.text)
        .bind(&f.file.source)
        .bind(&f.loaded_by)
        .bind(f.loaded_at)
        .execute(e)
        .await?;
        Ok(())
    }

    pub(crate) async fn put_replan<'e, E: sqlx::SqliteExecutor<'e>>(e: E, job: &ReplanJob) -> Result<(), Error> {
        sqlx::query(
            "INSERT OR REPLACE INTO replans (generation, first, last, label, after_instance, after_name, moved, done) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(i64::try_from(job.generation).unwrap_or(i64::MAX))
        .bind(job.first.to_string())
        .bind(job.last.to_string())
        .bind(&job.label)
        .bind(job.after.as_ref().map(|a| a.0.as_str()))
        .bind(job.after.as_ref().map(|a| a.1.as_str()))
        .bind(i64::try_from(job.moved).unwrap_or(i64::MAX))
        .bind(job.done)
        .execute(e)
        .await?;
        Ok(())
    }

    pub(crate) async fn files<'e, E: sqlx::SqliteExecutor<'e>>(e: E) -> Result<Vec<StoredCalendarFile>, Error> {
        let rows = sqlx::query(
            "SELECT generation, version, name, text, loaded_by, loaded_at FROM calendar_files ORDER BY generation",
        )
        .fetch_all(e)
        .await?;
        rows.iter().map(crate::store::row::calendar_file).collect()
    }

    pub(crate) async fn replans<'e, E: sqlx::SqliteExecutor<'e>>(e: E) -> Result<Vec<ReplanJob>, Error> {
        let rows = sqlx::query(
            "SELECT generation, first, last, label, after_instance, after_name, moved, done FROM replans ORDER BY generation",
        )
        .fetch_all(e)
        .await?;
        rows.iter().map(crate::store::row::replan).collect()
    }

    pub(crate) async fn planned<'e, E: sqlx::SqliteExecutor<'e>>(
        e: E,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT instance_id, name FROM timers WHERE plan_first IS NOT NULL AND plan_first <= ");
        q.push_bind(last.to_string()).push(" AND plan_last >= ").push_bind(first.to_string());
        if let Some((instance, name)) = after {
            q.push(" AND (instance_id, name) > (").push_bind(instance).push(", ").push_bind(name).push(")");
        }
        q.push(" ORDER BY instance_id, name LIMIT ").push_bind(i64::from(limit));
        Ok(q.build_query_as::<(String, String)>().fetch_all(e).await?)
    }
}

impl Store for SqliteStore {
    fn beside(&self) -> Self {
        // WAL lets this connection read while the other commits. Its page cache is small: every
        // commit by the other connection empties it anyway (SQLite resets a reader's cache when
        // the WAL has changed), and memory is better spent on the writer's.
        let opts = self.opts.clone().pragma("cache_size", "-2048");
        SqliteStore { conn: None, opts, max_pages: None, path: self.path.clone(), lost: false }
    }

    async fn load_instances(&mut self, ids: &[&str]) -> Result<HashMap<String, InstanceRow>, Error> {
        let result = ops::load_instances(self.conn().await?, ids).await;
        self.after(result).await
    }

    async fn load_archived(&mut self, ids: &[&str]) -> Result<HashMap<String, crate::store::ArchivedRow>, Error> {
        let result = ops::load_archived(self.conn().await?, ids).await;
        self.after(result).await
    }

    async fn load_idempotency(&mut self, keys: &[&str]) -> Result<HashMap<String, IdempotencyRow>, Error> {
        let result = ops::load_idempotency(self.conn().await?, keys).await;
        self.after(result).await
    }

    async fn figures_built(&mut self) -> Result<bool, Error> {
        let result = ops::figures_built(self.conn().await?).await;
        self.after(result).await
    }

    async fn instances_page(
        &mut self,
        workflows: &[&str],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>, Error> {
        let result = ops::instances_page(self.conn().await?, workflows, after, limit).await;
        self.after(result).await
    }

    async fn install_figures(&mut self, rows: &[(CounterKey, i64)], instances: u64, at: Millis) -> Result<bool, Error> {
        let result = ops::install_figures(self.conn().await?, rows, instances, at).await;
        self.after(result).await
    }

    async fn remove_archived(
        &mut self,
        cases: &[crate::store::Removal],
        archive: &str,
        at: Millis,
    ) -> Result<crate::store::Removed, Error> {
        let result = ops::remove_archived(self.conn().await?, cases, archive, at).await;
        self.after(result).await
    }

    async fn commit(&mut self, batch: &Batch) -> Result<(), Error> {
        let result = ops::commit(self.conn().await?, batch).await;
        // Whatever failed — a statement or the COMMIT — the connection's transaction state is
        // not to be trusted: close it, also for errors `after` would keep it for.
        if let Err(e) = &result {
            tracing::warn!(error = %e, "commit failed; the connection is closed and reopened for the next batch");
            self.discard().await;
        }
        result
    }

    async fn prune_idempotency(&mut self, before: Millis, limit: u32) -> Result<u64, Error> {
        self.delete_page(
            "DELETE FROM idempotency WHERE key IN \
             (SELECT key FROM idempotency WHERE created_at < ? LIMIT ?)",
            before,
            limit,
        )
        .await
    }

    async fn prune_outbox(&mut self, before: Millis, limit: u32) -> Result<u64, Error> {
        // Oldest first by id (ids grow with time): the scan stops after `limit` old rows.
        self.delete_page(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox o WHERE status IN ('delivered', 'stream', 'discarded') AND created_at < ? \
              AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.acked < o.id \
                              AND (c.channels = '' OR instr(c.channels, ',' || o.channel || ',') > 0)) \
              ORDER BY id LIMIT ?)",
            before,
            limit,
        )
        .await
    }

    async fn timers_page(
        &mut self,
        from: &TimerFrom,
        before: Millis,
        limit: u32,
        shards: Option<&[u32]>,
    ) -> Result<Vec<TimerRow>, Error> {
        let result = ops::timers_page(self.conn().await?, from, before, limit, shards).await;
        self.after(result).await
    }

    async fn calendar_files(&mut self) -> Result<Vec<StoredCalendarFile>, Error> {
        let result = calendars::files(self.conn().await?).await;
        self.after(result).await
    }

    async fn catalogs(&mut self) -> Result<Vec<crate::catalog::Version>, Error> {
        let result = catalogs::latest(self.conn().await?).await;
        self.after(result).await
    }

    async fn replans(&mut self) -> Result<Vec<ReplanJob>, Error> {
        let result = calendars::replans(self.conn().await?).await;
        self.after(result).await
    }

    async fn planned_timers(
        &mut self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error> {
        let result = calendars::planned(self.conn().await?, first, last, after, limit).await;
        self.after(result).await
    }
}

impl SqliteStore {
    /// Runs a prune: `sql` deletes up to the second parameter's rows older than the first;
    /// answers how many it deleted.
    async fn delete_page(&mut self, sql: &'static str, before: Millis, limit: u32) -> Result<u64, Error> {
        let conn = self.conn().await?;
        let result = sqlx::query(sql)
            .bind(before)
            .bind(i64::from(limit))
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
            .map_err(Error::from);
        self.after(result).await
    }

    /// One instance row, if it exists.
    pub async fn instance(&mut self, id: &str) -> Result<Option<InstanceRow>, Error> {
        Ok(self.load_instances(&[id]).await?.remove(id))
    }
}
