//! PostgreSQL: the backend for a city that runs several engine nodes on one database.
//!
//! [`PgStore`] is the writer's side ([`Store`]), [`PgReader`] the queries' ([`ReadStore`]); both
//! run on pools of connections opened with `synchronous_commit=on` whatever the server's
//! default, so a commit is answered only once PostgreSQL has it on disk (and on a synchronous
//! standby when the server is configured with one).
//!
//! The command path is the writer's, as on SQLite: one transaction per batch, rows passed as
//! arrays and spread by `UNNEST` (a statement carries a whole batch, with no limit on bound
//! parameters). A batch of commands, timer fires and delivery outcomes is one statement
//! ([`ONE_STATEMENT`]: a data-modifying CTE per table) sent without `BEGIN`, so it is its own
//! transaction and the whole commit one round trip. A batch that also writes what only an
//! administrator, a consumer or a loader writes (dead letters revived or discarded, consumer
//! cursors, calendars, re-plans, catalogs) wraps that statement in a transaction with those
//! statements before it. What several nodes add, all inside the batch's transaction:
//! - **Optimistic concurrency.** History rows are inserted without `ON CONFLICT`: an entry
//!   another node wrote first (its decision was made on a stale instance) is a unique
//!   violation. The batch rolls back as [`Error::Conflict`] and its commands are decided again
//!   on fresh rows.
//! - **Fencing.** A batch that fires timers from the wheel names their shards and the epochs its
//!   node holds them at ([`Batch::fence`]); the statement reads those lease rows `FOR SHARE` and
//!   fails (`shenguan_fenced`, migration 0006) as [`Error::Fenced`] if one has moved on. The
//!   share lock makes a take-over wait for the transaction, so no fire commits after its shard
//!   was taken.
//! - **Commit order of the outbox.** Outbox ids must grow in commit order (a stream consumer's
//!   cursor is an id). A batch with messages takes a transaction-level advisory lock before its
//!   ids are drawn and holds it to its commit, so ids are handed out in commit order across
//!   nodes.
//! - **Notifications.** `pg_notify` (delivered at commit) tells the other nodes that messages were
//!   written (their dispatchers and subscribers wake), that timers were armed in shards this node
//!   does not hold (the holder loads them), or that a calendar was loaded.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder};

use super::{
    row, Batch, DeliveryState, Error, Filter, IdempotencyRow, InstanceRow, ReadStore, ReplanJob, Store,
    StoredCalendarFile, StoredConsumer, StoredMessage, TimerFrom, TimerId, TimerRow,
};
use crate::calendar::CalendarFile;
use crate::clock::Millis;
use crate::machine::HistoryEntry;

/// Migrations of the PostgreSQL schema, embedded at build time.
pub static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| super::embedded_migrator(super::POSTGRES_MIGRATIONS));

/// The channel `pg_notify` uses; the payload says what changed (see [`Notice`]).
pub const CHANNEL: &str = "shenguan";

/// The advisory lock key that orders outbox inserts across nodes ("sgoutbox" in ASCII).
const OUTBOX_LOCK: i64 = 0x7367_6f75_7462_6f78;
/// The advisory lock key held while seeding calendars, so that nodes starting together seed once.
const SEED_LOCK: i64 = 0x7367_7365_6564_0001;

/// How many tables have the name bound.
const TABLE_EXISTS: &str =
    "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1";

const INSTANCE_COLUMNS: &str =
    "id, workflow, version, state, vars::text AS vars, timers, seq, shard, created_at, updated_at";
const HISTORY_COLUMNS: &str =
    "seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled, calendar";
use crate::store::row::CONSUMER_COLUMNS;

/// The columns [`crate::store::row::message`] reads.
const MESSAGE_COLUMNS: &str =
    "id, key, instance_id, seq, channel, recipient, body, template, created_at, destination, status, \
     attempts, next_attempt_at, last_error, receipt, delivered_at, first_failed_at, kind, schema_version, data";

/// What a notification on [`CHANNEL`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Messages were written or revived.
    Outbox,
    /// Dead letters were retried or discarded: dispatchers walk from the start again.
    Rescan,
    /// Timers were armed in these shards by a node that does not hold them.
    Timers(Vec<u32>),
    /// A calendar file was loaded.
    Calendar,
    /// Catalog versions were imported.
    Catalogs,
    /// A stream consumer acknowledged up to an id.
    Acked {
        /// The consumer.
        consumer: String,
        /// Every message up to this id.
        acked: u64,
    },
    /// A Subscribe started a stream for the consumer: its stream elsewhere ends.
    Subscribed {
        /// The consumer.
        consumer: String,
        /// The new stream's token.
        stream: String,
    },
    /// An administrator dropped the consumer: its stream ends.
    Dropped(String),
}

impl Notice {
    /// The payload sent.
    pub fn payload(&self) -> String {
        match self {
            Notice::Outbox => "outbox".to_owned(),
            Notice::Rescan => "rescan".to_owned(),
            Notice::Calendar => "calendar".to_owned(),
            Notice::Catalogs => "catalogs".to_owned(),
            Notice::Timers(shards) => {
                let list: Vec<String> = shards.iter().map(u32::to_string).collect();
                format!("timers:{}", list.join(","))
            }
            // Consumer names hold no ':' (see `check_consumer`); a token may.
            Notice::Acked { consumer, acked } => format!("acked:{acked}:{consumer}"),
            Notice::Subscribed { consumer, stream } => format!("stream:{consumer}:{stream}"),
            Notice::Dropped(consumer) => format!("dropped:{consumer}"),
        }
    }

    /// The notice a payload carries; `None` for one this build does not know (a newer node's).
    pub fn parse(payload: &str) -> Option<Notice> {
        match payload {
            "outbox" => Some(Notice::Outbox),
            "rescan" => Some(Notice::Rescan),
            "calendar" => Some(Notice::Calendar),
            "catalogs" => Some(Notice::Catalogs),
            other => {
                let (kind, rest) = other.split_once(':')?;
                match kind {
                    "timers" => {
                        rest.split(',').map(|s| s.parse().ok()).collect::<Option<Vec<u32>>>().map(Notice::Timers)
                    }
                    "acked" => {
                        let (acked, consumer) = rest.split_once(':')?;
                        Some(Notice::Acked { consumer: consumer.to_owned(), acked: acked.parse().ok()? })
                    }
                    "stream" => {
                        let (consumer, stream) = rest.split_once(':')?;
                        Some(Notice::Subscribed { consumer: consumer.to_owned(), stream: stream.to_owned() })
                    }
                    "dropped" => Some(Notice::Dropped(rest.to_owned())),
                    _ => None,
                }
            }
        }
    }
}

/// Options for connecting.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections of the writer's pool (the writer uses one at a time; a second serves the
    /// prune and the lease keeper without waiting).
    pub writer_connections: u32,
    /// Connections of the queries' pool.
    pub reader_connections: u32,
    /// How long a caller waits for a free connection (or a new one) before the call is
    /// answered as unavailable.
    pub acquire_timeout: Duration,
    /// The calendar files a database with none is seeded with, and when.
    pub calendar_seed: Vec<CalendarFile>,
    /// The instant recorded as the seed's load time.
    pub seeded_at: Millis,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            writer_connections: 3,
            reader_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            calendar_seed: Vec::new(),
            seeded_at: 0,
        }
    }
}

/// The URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(o) => format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_default()
        ),
        Err(_) => "postgres://…".to_owned(),
    }
}

/// Why a connection failed, in the words an operator acts on; never the URL (it may hold a
/// password).
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) => format!("cannot reach the server: {io}"),
        other => other.to_string(),
    }
}

fn open_error(url: &str, message: impl Into<String>) -> Error {
    Error::Open { path: redact(url), message: message.into() }
}

/// Connection options: the URL's, with durability and a name the server's views show.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, Error> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| open_error(url, format!("not a PostgreSQL URL: {e}")))?;
    // Custom plans: a generic plan is made after a few executions with the statistics of the
    // moment — on a new database, those of empty tables, whose best plan is a sequential scan
    // that then stays while the tables grow (intake fell to a sixth of its rate over its first
    // 20,000 cases). A custom plan costs a few tens of microseconds per batch statement.
    Ok(opts
        .application_name("shenguan")
        .options([("synchronous_commit", "on"), ("plan_cache_mode", "force_custom_plan")]))
}

/// A pool of `connections` to `url`. One connection is made first, alone: a pool that cannot
/// connect says only that it timed out, and the operator needs the reason (refused, no such
/// database, password authentication failed).
pub async fn pool(url: &str, connections: u32, acquire_timeout: Duration) -> Result<PgPool, Error> {
    let opts = connect_options(url)?;
    match tokio::time::timeout(acquire_timeout, sqlx::PgConnection::connect_with(&opts)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(open_error(url, describe(&e))),
        Err(_) => return Err(open_error(url, format!("no answer within {acquire_timeout:?}"))),
    }
    PgPoolOptions::new()
        .max_connections(connections.max(1))
        // A ping before every use is a round trip per statement; a broken connection fails its
        // statement instead, which is answered as unavailable and retried like any other.
        .test_before_acquire(false)
        .acquire_timeout(acquire_timeout)
        .connect_with(connect_options(url)?)
        .await
        .map_err(|e| open_error(url, e.to_string()))
}

/// What `shenguan migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Versions applied now.
    pub applied: Vec<i64>,
    /// The schema version after.
    pub version: i64,
}

/// Applies the migrations this build has and the database lacks. Refuses a database whose
/// schema is newer than this build (see [`super::newer_schema`]).
pub async fn migrate(pool: &PgPool, url: &str) -> Result<Migrated, Error> {
    let mut conn = pool.acquire().await.map_err(|e| open_error(url, e.to_string()))?;
    let before = applied_versions(&mut conn).await.map_err(|e| open_error(url, e.to_string()))?;
    super::newer_schema(&before, &MIGRATOR).map_err(|m| open_error(url, m))?;
    // sqlx takes an advisory lock around the run: nodes started together migrate once.
    MIGRATOR.run_direct(&mut *conn).await.map_err(|e| open_error(url, format!("migration failed: {e}")))?;
    let applied = MIGRATOR.iter().map(|m| m.version).filter(|v| !before.contains(v)).collect::<Vec<_>>();
    Ok(Migrated { applied, version: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0) })
}

async fn applied_versions(conn: &mut sqlx::PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(&mut *conn)
        .await
}

/// The writer's side.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects, migrates, and seeds the calendars of a database that has none.
    pub async fn open(url: &str, options: &Options) -> Result<Self, Error> {
        let pool = pool(url, options.writer_connections, options.acquire_timeout).await?;
        migrate(&pool, url).await?;
        seed(&pool, &options.calendar_seed, options.seeded_at).await.map_err(|e| open_error(url, e.to_string()))?;
        Ok(PgStore { pool })
    }

    /// The pool (the lease keeper and the listener share its server).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn seed(pool: &PgPool, files: &[CalendarFile], at: Millis) -> Result<(), Error> {
    if files.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SEED_LOCK).execute(&mut *tx).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM calendar_files").fetch_one(&mut *tx).await?;
    if stored > 0 {
        return Ok(());
    }
    let mut versions: HashMap<&crate::calendar::FileKey, u32> = HashMap::new();
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
        insert_file(&mut tx, &stored).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("cannot serialise a row: {e}")))
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn insert_file(tx: &mut sqlx::PgConnection, f: &StoredCalendarFile) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO calendar_files (generation, key, version, name, text, source, loaded_by, loaded_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(i(f.generation))
    .bind(row::key_text(&f.file.key))
    .bind(i64::from(f.version))
    .bind(&f.file.name)
    .bind(&f.file.text)
    .bind(&f.file.source)
    .bind(&f.loaded_by)
    .bind(f.loaded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn put_replan(tx: &mut sqlx::PgConnection, job: &ReplanJob) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO replans (generation, first, last, label, after_instance, after_name, moved, done) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (generation) DO UPDATE SET after_instance = excluded.after_instance, \
         after_name = excluded.after_name, moved = excluded.moved, done = excluded.done",
    )
    .bind(i(job.generation))
    .bind(job.first.to_string())
    .bind(job.last.to_string())
    .bind(&job.label)
    .bind(job.after.as_ref().map(|a| a.0.as_str()))
    .bind(job.after.as_ref().map(|a| a.1.as_str()))
    .bind(i(job.moved))
    .bind(job.done)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The tables every busy batch writes, in one statement: each a data-modifying CTE over arrays,
/// the fence checked and the notifications sent by the statement's own query. Without a
/// transaction around it, the statement is its own: one round trip a batch.
///
/// - The fence's lease rows are read `FOR SHARE` by the main query, which runs before the
///   CTEs nobody reads; `shenguan_fenced` (migration 0006) fails the statement, and so the
///   batch, if one has moved on.
/// - History is inserted without `ON CONFLICT`: an entry another node wrote first is a unique
///   violation on `history_pkey` (or on `outbox_key_key`, its messages' keys, if that CTE meets
///   it first), which fails the statement ([`translate`] makes it a conflict).
/// - The outbox lock is taken by a one-row subquery joined to the messages, so only a batch with
///   messages takes it, and before the ids are drawn: the sort by ordinality sits between the
///   two, and PostgreSQL evaluates the id's default above a sort.
const ONE_STATEMENT: &str = "\
WITH fence AS (
    SELECT l.shard FROM shard_leases l JOIN UNNEST($2::bigint[], $3::bigint[]) AS f(shard, epoch)
    ON l.shard = f.shard AND l.epoch = f.epoch WHERE l.owner = $1 FOR SHARE OF l
), history_rows AS (
    INSERT INTO history (instance_id, seq, at, actor, request_id, command, from_state, to_state, armed,
        cancelled, messages, handled, calendar)
    SELECT * FROM UNNEST($4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[],
        $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], $15::bool[], $16::bigint[])
), instance_rows AS (
    INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at)
    SELECT id, workflow, version, state, vars::jsonb, timers, seq, shard, created_at, updated_at
    FROM UNNEST($17::text[], $18::text[], $19::bigint[], $20::text[], $21::text[], $22::text[], $23::bigint[],
        $24::bigint[], $25::bigint[], $26::bigint[])
        AS u(id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at)
    ON CONFLICT (id) DO UPDATE SET state = excluded.state, vars = excluded.vars, timers = excluded.timers,
        seq = excluded.seq, updated_at = excluded.updated_at
), timers_gone AS (
    DELETE FROM timers t USING UNNEST($27::text[], $28::text[]) AS d(instance_id, name)
    WHERE t.instance_id = d.instance_id AND t.name = d.name
), timer_rows AS (
    INSERT INTO timers (instance_id, name, due_at, event, shard, plan_first, plan_last, provisional)
    SELECT * FROM UNNEST($29::text[], $30::text[], $31::bigint[], $32::text[], $33::bigint[], $34::text[],
        $35::text[], $36::bool[])
    ON CONFLICT (instance_id, name) DO UPDATE SET due_at = excluded.due_at, event = excluded.event,
        shard = excluded.shard, plan_first = excluded.plan_first, plan_last = excluded.plan_last,
        provisional = excluded.provisional
), marks AS (
    UPDATE outbox SET status = m.status, attempts = m.attempts, next_attempt_at = m.next,
        last_error = m.error, receipt = coalesce(m.receipt, outbox.receipt),
        delivered_at = CASE WHEN m.status = 'pending' THEN NULL ELSE m.at END,
        first_failed_at = CASE WHEN m.error IS NULL THEN outbox.first_failed_at
            ELSE coalesce(outbox.first_failed_at, m.at) END
    FROM UNNEST($37::bigint[], $38::text[], $39::bigint[], $40::bigint[], $41::text[], $42::text[], $43::bigint[])
        AS m(id, status, attempts, next, error, receipt, at)
    WHERE outbox.id = m.id AND outbox.status = 'pending'
), key_rows AS (
    INSERT INTO idempotency (key, instance_id, seq, fingerprint, created_at)
    SELECT * FROM UNNEST($44::text[], $45::text[], $46::bigint[], $47::text[], $48::bigint[])
    ON CONFLICT (key) DO UPDATE SET instance_id = excluded.instance_id, seq = excluded.seq,
        fingerprint = excluded.fingerprint, created_at = excluded.created_at
), subject_rows AS (
    INSERT INTO subjects (code, instance_id, workflow, item, grade, created_at)
    SELECT * FROM UNNEST($49::text[], $50::text[], $51::text[], $52::text[], $53::text[], $54::bigint[])
    ON CONFLICT DO NOTHING
), figure_rows AS (
    INSERT INTO figure_counts (grain, period, side, region, department, office, figure, stripe, n)
    SELECT grain, period, side, region, department, office, figure, $63, n
    FROM UNNEST($55::text[], $56::text[], $57::text[], $58::text[], $59::text[], $60::text[], $61::text[],
        $62::bigint[]) WITH ORDINALITY AS u(grain, period, side, region, department, office, figure, n, o)
    ORDER BY o
    ON CONFLICT (grain, period, side, region, department, office, figure, stripe)
    DO UPDATE SET n = figure_counts.n + excluded.n
), message_rows AS (
    INSERT INTO outbox (key, instance_id, seq, channel, recipient, body, created_at, next_attempt_at,
        destination, status, template, kind, schema_version, data)
    SELECT key, instance_id, seq, channel, recipient, body, created_at, 0, destination, status, template,
        kind, schema_version, data
    FROM UNNEST($64::text[], $65::text[], $66::bigint[], $67::text[], $68::text[], $69::text[], $70::bigint[],
        $71::text[], $72::text[], $73::text[], $74::text[], $75::bigint[], $76::text[]) WITH ORDINALITY
        AS u(key, instance_id, seq, channel, recipient, body, created_at, destination, status, template,
        kind, schema_version, data, n)
    CROSS JOIN (SELECT pg_advisory_xact_lock($77) WHERE cardinality($64::text[]) > 0) AS held
    ORDER BY n
)
SELECT shenguan_fenced(ARRAY(SELECT s FROM UNNEST($2::bigint[]) AS s EXCEPT SELECT shard FROM fence)),
    ARRAY(SELECT pg_notify($78, p)::text FROM UNNEST($79::text[]) AS p)";

/// The SQLSTATE `shenguan_fenced` raises (migration 0006).
const FENCED: &str = "SG001";

/// Whether the batch writes anything beyond [`ONE_STATEMENT`]'s tables: those (an
/// administrator's or a consumer's requests, calendars, catalogs) take statements of their own
/// in a transaction around it.
fn beyond_one_statement(batch: &Batch) -> bool {
    !batch.revive.is_empty()
        || !batch.discard.is_empty()
        || !batch.cursors.is_empty()
        || !batch.dropped_consumers.is_empty()
        || batch.calendar_file.is_some()
        || batch.replan.is_some()
        || !batch.catalogs.is_empty()
}

async fn commit(pool: &PgPool, batch: &Batch) -> Result<(), Error> {
    let mut conn = pool.acquire().await?;
    if !beyond_one_statement(batch) {
        // The statement is its own transaction: an error PostgreSQL answers means it did not
        // commit; a connection lost before the answer leaves the outcome unknown.
        return one_statement(&mut conn, batch, true).await;
    }
    let mut tx = conn.begin().await?;
    the_rest(&mut tx, batch).await?;
    one_statement(&mut tx, batch, false).await?;
    tx.commit().await.map_err(|e| match Error::from(e) {
        Error::Unavailable(m) => Error::Indeterminate(m),
        other => other,
    })?;
    Ok(())
}

/// What a failed batch statement means: the fence or another node's history entry refuse the
/// batch (it is decided again); a connection lost while the statement was its own transaction
/// leaves its outcome unknown.
fn translate(e: sqlx::Error, batch: &Batch, autocommit: bool) -> Error {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().unwrap_or_default();
        if code == FENCED {
            let detail = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|d| d.detail());
            let lost = detail.unwrap_or_default().split(',').filter_map(|s| s.parse().ok()).collect();
            let node = batch.fence.as_ref().map(|f| f.node.clone()).unwrap_or_default();
            return Error::Fenced { node, lost };
        }
        // Another node wrote an entry this batch decided too: its history row, or the messages
        // keyed by it (`instance:seq:index`), whichever of the statement's CTEs meets it first.
        if code == "23505" && matches!(db.constraint(), Some("history_pkey" | "outbox_key_key")) {
            return Error::Conflict(format!("an entry of this batch was written by another node first: {e}"));
        }
        return Error::from(e);
    }
    match Error::from(e) {
        Error::Unavailable(m) if autocommit => Error::Indeterminate(m),
        other => other,
    }
}

/// Writes what a batch holds beyond [`ONE_STATEMENT`]'s tables, in the transaction `tx`
/// around it.
async fn the_rest(tx: &mut sqlx::PgConnection, batch: &Batch) -> Result<(), Error> {
    if !batch.revive.is_empty() {
        sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = 0, delivered_at = NULL, \
             first_failed_at = NULL WHERE key = ANY($1::text[]) AND status = 'dead'",
        )
        .bind(&batch.revive)
        .execute(&mut *tx)
        .await?;
    }
    for (key, at) in &batch.discard {
        sqlx::query("UPDATE outbox SET status = 'discarded', delivered_at = $1 WHERE key = $2 AND status = 'dead'")
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
                "INSERT INTO consumers (name, owner, acked, updated_at, channels) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET acked = greatest(consumers.acked, excluded.acked), \
                 updated_at = excluded.updated_at, channels = excluded.channels",
            )
            .bind(&c.name)
            .bind(&c.owner)
            .bind(i(c.acked))
            .bind(c.at)
            .bind(super::channels_column(channels)),
            None => sqlx::query("UPDATE consumers SET acked = greatest(acked, $1), updated_at = $2 WHERE name = $3")
                .bind(i(c.acked))
                .bind(c.at)
                .bind(&c.name),
        };
        query.execute(&mut *tx).await?;
        // Told in the transaction: a node hears of it only once it is durable.
        let notice = match &c.stream {
            Some(stream) => Notice::Subscribed { consumer: c.name.clone(), stream: stream.clone() },
            None => Notice::Acked { consumer: c.name.clone(), acked: c.acked },
        };
        notify(tx, &notice).await?;
    }
    for name in &batch.dropped_consumers {
        notify(tx, &Notice::Dropped(name.clone())).await?;
    }
    if !batch.dropped_consumers.is_empty() {
        sqlx::query("DELETE FROM consumers WHERE name = ANY($1::text[])")
            .bind(&batch.dropped_consumers)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(f) = &batch.calendar_file {
        insert_file(tx, f).await?;
        notify(tx, &Notice::Calendar).await?;
    }
    if let Some(job) = &batch.replan {
        put_replan(tx, job).await?;
    }
    for v in &batch.catalogs {
        // Two nodes importing at once: the second's (kind, version) is taken, and its import
        // is refused as a conflict rather than overwriting the first.
        let written = sqlx::query(
            "INSERT INTO catalog_versions (kind, version, actor, at, comment, changes, rows) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(v.kind.name())
        .bind(i64::from(v.version))
        .bind(&v.actor)
        .bind(v.at)
        .bind(&v.comment)
        .bind(json(&v.changes)?)
        .bind(json(&v.rows)?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if written == 0 {
            return Err(Error::Conflict(format!(
                "{} version {} was imported by another node first",
                v.kind, v.version
            )));
        }
    }
    if !batch.catalogs.is_empty() {
        notify(tx, &Notice::Catalogs).await?;
    }
    Ok(())
}

/// Writes the batch's [`ONE_STATEMENT`] tables and sends its notifications; `autocommit` says
/// whether the statement is its own transaction (see [`translate`]).
async fn one_statement(conn: &mut sqlx::PgConnection, batch: &Batch, autocommit: bool) -> Result<(), Error> {
    let (node, fence_shards, fence_epochs) = match &batch.fence {
        Some(f) => (
            f.node.as_str(),
            f.shards.iter().map(|(s, _)| i64::from(*s)).collect::<Vec<_>>(),
            f.shards.iter().map(|(_, e)| i(*e)).collect::<Vec<_>>(),
        ),
        None => ("", vec![], vec![]),
    };

    let h = &batch.history;
    let mut h_ids = Vec::with_capacity(h.len());
    let (mut h_seq, mut h_at, mut h_actor, mut h_request, mut h_command) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut h_from, mut h_to, mut h_armed, mut h_cancelled, mut h_messages, mut h_handled, mut h_calendar) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (id, e) in h {
        h_ids.push(id.as_str());
        h_seq.push(i(e.seq));
        h_at.push(e.at);
        h_actor.push(e.actor.as_str());
        h_request.push(e.request_id.as_deref());
        h_command.push(json(&e.command)?);
        h_from.push(e.from.as_deref());
        h_to.push(e.to.as_str());
        h_armed.push(json(&e.armed)?);
        h_cancelled.push(json(&e.cancelled)?);
        h_messages.push(i64::from(e.messages));
        h_handled.push(e.handled);
        h_calendar.push(i(e.calendar));
    }

    let r = &batch.instances;
    let r_ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
    let r_workflows: Vec<&str> = r.iter().map(|r| r.workflow.as_str()).collect();
    let r_versions: Vec<i64> = r.iter().map(|r| i64::from(r.version)).collect();
    let r_states: Vec<&str> = r.iter().map(|r| r.state.as_str()).collect();
    let r_vars = r.iter().map(|r| json(&r.vars)).collect::<Result<Vec<_>, _>>()?;
    let r_timers = r.iter().map(|r| json(&r.timers)).collect::<Result<Vec<_>, _>>()?;
    let r_seqs: Vec<i64> = r.iter().map(|r| i(r.seq)).collect();
    let r_shards: Vec<i64> = r.iter().map(|r| i64::from(r.shard)).collect();
    let r_created: Vec<i64> = r.iter().map(|r| r.created_at).collect();
    let r_updated: Vec<i64> = r.iter().map(|r| r.updated_at).collect();

    let (deleted, upserted): (Vec<_>, Vec<_>) = batch.timers.iter().partition(|(_, v)| v.is_none());
    let d_ids: Vec<&str> = deleted.iter().map(|((i, _), _)| i.as_str()).collect();
    let d_names: Vec<&str> = deleted.iter().map(|((_, n), _)| n.as_str()).collect();
    let mut t_ids = vec![];
    let (mut t_names, mut t_dues, mut t_events, mut t_shards, mut t_firsts, mut t_lasts, mut t_provisional) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((id, name), value) in &upserted {
        let Some((timer, shard)) = value else { continue };
        let plan = timer.plan.as_ref();
        t_ids.push(id.as_str());
        t_names.push(name.as_str());
        t_dues.push(timer.due);
        t_events.push(timer.event.as_str());
        t_shards.push(i64::from(*shard));
        t_firsts.push(plan.map(|p| p.first.to_string()));
        t_lasts.push(plan.map(|p| p.last.to_string()));
        t_provisional.push(plan.is_some_and(|p| p.provisional));
    }

    // A mark never overrides an administrator's retry that raced it: only a message still
    // pending is changed.
    let m = &batch.marks;
    let m_ids: Vec<i64> = m.iter().map(|m| i(m.id)).collect();
    let m_status: Vec<&str> = m.iter().map(|m| m.status.as_str()).collect();
    let m_attempts: Vec<i64> = m.iter().map(|m| i64::from(m.attempts)).collect();
    let m_next: Vec<i64> = m.iter().map(|m| m.next_attempt_at).collect();
    let m_errors: Vec<Option<&str>> = m.iter().map(|m| m.last_error.as_deref()).collect();
    let m_receipts: Vec<Option<&str>> = m.iter().map(|m| m.receipt.as_deref()).collect();
    let m_at: Vec<i64> = m.iter().map(|m| m.at).collect();

    // The writer reuses a key only once it has expired.
    let k = &batch.idempotency;
    let k_keys: Vec<&str> = k.iter().map(|(key, _)| key.as_str()).collect();
    let k_ids: Vec<&str> = k.iter().map(|(_, r)| r.instance.as_str()).collect();
    let k_seqs: Vec<i64> = k.iter().map(|(_, r)| i(r.seq)).collect();
    let k_prints: Vec<&str> = k.iter().map(|(_, r)| r.fingerprint.as_str()).collect();
    let k_created: Vec<i64> = k.iter().map(|(_, r)| r.created_at).collect();

    let s = &batch.subjects;
    let s_codes: Vec<&str> = s.iter().map(|s| s.code.as_str()).collect();
    let s_ids: Vec<&str> = s.iter().map(|s| s.instance.as_str()).collect();
    let s_workflows: Vec<&str> = s.iter().map(|s| s.workflow.as_str()).collect();
    let s_items: Vec<&str> = s.iter().map(|s| s.item.as_str()).collect();
    let s_grades: Vec<&str> = s.iter().map(|s| s.grade.as_str()).collect();
    let s_created: Vec<i64> = s.iter().map(|s| s.created_at).collect();

    // Counters are added in key order: two transactions that meet on a counter (only when two
    // nodes share a stripe) wait, never deadlock.
    let f = &batch.figures;
    let f_grains: Vec<&str> = f.iter().map(|(k, _)| k.grain.as_str()).collect();
    let f_periods: Vec<&str> = f.iter().map(|(k, _)| k.period.as_str()).collect();
    let f_sides: Vec<&str> = f.iter().map(|(k, _)| k.group.side.as_str()).collect();
    let f_regions: Vec<&str> = f.iter().map(|(k, _)| k.group.region.as_str()).collect();
    let f_departments: Vec<&str> = f.iter().map(|(k, _)| k.group.department.as_str()).collect();
    let f_offices: Vec<&str> = f.iter().map(|(k, _)| k.group.office.as_str()).collect();
    let f_figures: Vec<&str> = f.iter().map(|(k, _)| k.figure.as_str()).collect();
    let f_n: Vec<i64> = f.iter().map(|(_, n)| *n).collect();

    // Outbox ids are handed out in commit order: under a lock held to the commit.
    let o = &batch.outbox;
    let o_keys: Vec<&str> = o.iter().map(|m| m.key.as_str()).collect();
    let o_ids: Vec<&str> = o.iter().map(|m| m.instance.as_str()).collect();
    let o_seqs: Vec<i64> = o.iter().map(|m| i(m.seq)).collect();
    let o_channels: Vec<&str> = o.iter().map(|m| m.message.channel.as_str()).collect();
    let o_recipients: Vec<Option<&str>> = o.iter().map(|m| m.message.recipient.as_deref()).collect();
    let o_bodies: Vec<&str> = o.iter().map(|m| m.message.body.as_str()).collect();
    let o_created: Vec<i64> = o.iter().map(|m| m.created_at).collect();
    let o_destinations: Vec<Option<&str>> = o.iter().map(|m| m.destination.as_deref()).collect();
    let o_status: Vec<&str> = o
        .iter()
        .map(|m| if m.destination.is_some() { DeliveryState::Pending } else { DeliveryState::Stream }.as_str())
        .collect();
    let o_templates: Vec<Option<&str>> = o.iter().map(|m| m.message.template.as_deref()).collect();
    let o_kinds: Vec<Option<&str>> = o.iter().map(|m| m.message.kind.as_deref()).collect();
    let o_versions: Vec<i64> = o.iter().map(|m| i64::from(m.message.schema_version)).collect();
    let o_data: Vec<Option<String>> = o.iter().map(|m| super::data_column(&m.message)).collect();

    // Told in the transaction: a node hears of it only once it is durable.
    let mut notices = vec![];
    if !batch.notify_shards.is_empty() {
        notices.push(Notice::Timers(batch.notify_shards.clone()).payload());
    }
    if !batch.outbox.is_empty() || !batch.revive.is_empty() {
        notices.push(Notice::Outbox.payload());
    }
    if !batch.revive.is_empty() || !batch.discard.is_empty() {
        notices.push(Notice::Rescan.payload());
    }

    sqlx::query(ONE_STATEMENT)
        .bind(node)
        .bind(&fence_shards)
        .bind(&fence_epochs)
        .bind(&h_ids)
        .bind(&h_seq)
        .bind(&h_at)
        .bind(&h_actor)
        .bind(&h_request)
        .bind(&h_command)
        .bind(&h_from)
        .bind(&h_to)
        .bind(&h_armed)
        .bind(&h_cancelled)
        .bind(&h_messages)
        .bind(&h_handled)
        .bind(&h_calendar)
        .bind(&r_ids)
        .bind(&r_workflows)
        .bind(&r_versions)
        .bind(&r_states)
        .bind(&r_vars)
        .bind(&r_timers)
        .bind(&r_seqs)
        .bind(&r_shards)
        .bind(&r_created)
        .bind(&r_updated)
        .bind(&d_ids)
        .bind(&d_names)
        .bind(&t_ids)
        .bind(&t_names)
        .bind(&t_dues)
        .bind(&t_events)
        .bind(&t_shards)
        .bind(&t_firsts)
        .bind(&t_lasts)
        .bind(&t_provisional)
        .bind(&m_ids)
        .bind(&m_status)
        .bind(&m_attempts)
        .bind(&m_next)
        .bind(&m_errors)
        .bind(&m_receipts)
        .bind(&m_at)
        .bind(&k_keys)
        .bind(&k_ids)
        .bind(&k_seqs)
        .bind(&k_prints)
        .bind(&k_created)
        .bind(&s_codes)
        .bind(&s_ids)
        .bind(&s_workflows)
        .bind(&s_items)
        .bind(&s_grades)
        .bind(&s_created)
        .bind(&f_grains)
        .bind(&f_periods)
        .bind(&f_sides)
        .bind(&f_regions)
        .bind(&f_departments)
        .bind(&f_offices)
        .bind(&f_figures)
        .bind(&f_n)
        .bind(i64::from(batch.stripe))
        .bind(&o_keys)
        .bind(&o_ids)
        .bind(&o_seqs)
        .bind(&o_channels)
        .bind(&o_recipients)
        .bind(&o_bodies)
        .bind(&o_created)
        .bind(&o_destinations)
        .bind(&o_status)
        .bind(&o_templates)
        .bind(&o_kinds)
        .bind(&o_versions)
        .bind(&o_data)
        .bind(OUTBOX_LOCK)
        .bind(CHANNEL)
        .bind(&notices)
        .execute(&mut *conn)
        .await
        .map_err(|e| translate(e, batch, autocommit))?;
    Ok(())
}

/// Sends `notice` to every node now, outside any transaction.
pub(crate) async fn notify_now(pool: &PgPool, notice: &Notice) -> Result<(), Error> {
    let mut conn = pool.acquire().await?;
    notify(&mut conn, notice).await
}

async fn notify(tx: &mut sqlx::PgConnection, notice: &Notice) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(notice.payload()).execute(&mut *tx).await?;
    Ok(())
}

impl Store for PgStore {
    fn beside(&self) -> Self {
        // The pool has connections enough for a commit and the next batch's reads.
        self.clone()
    }

    async fn load_instances(&mut self, ids: &[&str]) -> Result<HashMap<String, InstanceRow>, Error> {
        let rows = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ANY($1::text[])"))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| row::instance(r).map(|i| (i.id.clone(), i))).collect()
    }

    async fn load_archived(&mut self, ids: &[&str]) -> Result<HashMap<String, super::ArchivedRow>, Error> {
        let rows = sqlx::query(&format!("SELECT {} FROM archived WHERE id = ANY($1::text[])", row::ARCHIVED_COLUMNS))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| row::archived(r).map(|a| (a.id.clone(), a))).collect()
    }

    async fn load_idempotency(&mut self, keys: &[&str]) -> Result<HashMap<String, IdempotencyRow>, Error> {
        let rows =
            sqlx::query(&format!("SELECT {} FROM idempotency WHERE key = ANY($1::text[])", row::IDEMPOTENCY_COLUMNS))
                .bind(keys)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row::idempotency).collect()
    }

    async fn commit(&mut self, batch: &Batch) -> Result<(), Error> {
        commit(&self.pool, batch).await
    }

    async fn figures_built(&mut self) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM figure_counts_built").fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    async fn instances_page(
        &mut self,
        workflows: &[&str],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE workflow = ANY($1::text[]) AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(workflows)
        .bind(after.unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row::instance).collect()
    }

    async fn install_figures(
        &mut self,
        rows: &[(crate::domain::figures::CounterKey, i64)],
        instances: u64,
        at: Millis,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        // Two nodes counting at once: the second waits here for the first's commit, then
        // finds the row and installs nothing.
        let marked = sqlx::query(
            "INSERT INTO figure_counts_built (id, at, instances) VALUES (1, $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(at)
        .bind(i64::try_from(instances).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM figure_counts").execute(&mut *tx).await?;
        for chunk in rows.chunks(10_000) {
            // The batch statement's counter upsert, with nothing else in the batch.
            let counters = Batch { figures: chunk.to_vec(), ..Batch::default() };
            one_statement(&mut tx, &counters, false).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_archived(
        &mut self,
        cases: &[crate::store::Removal],
        archive: &str,
        at: Millis,
    ) -> Result<crate::store::Removed, Error> {
        let mut tx = self.pool.begin().await?;
        // Locked: another node's batch that read one of these rows commits before or fails after.
        let out = super::removal::remove_in!(tx, cases, archive, at, " FOR UPDATE")?;
        tx.commit().await?;
        Ok(out)
    }

    async fn prune_idempotency(&mut self, before: Millis, limit: u32) -> Result<u64, Error> {
        let sql = "DELETE FROM idempotency WHERE key IN \
                   (SELECT key FROM idempotency WHERE created_at < $1 LIMIT $2)";
        Ok(sqlx::query(sql).bind(before).bind(i64::from(limit)).execute(&self.pool).await?.rows_affected())
    }

    async fn prune_outbox(&mut self, before: Millis, limit: u32) -> Result<u64, Error> {
        let sql = "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox o WHERE status IN ('delivered', 'stream', 'discarded') \
                   AND created_at < $1 \
                   AND NOT EXISTS (SELECT 1 FROM consumers c WHERE c.acked < o.id \
                                   AND (c.channels = '' OR position(',' || o.channel || ',' in c.channels) > 0)) \
                   ORDER BY id LIMIT $2)";
        Ok(sqlx::query(sql).bind(before).bind(i64::from(limit)).execute(&self.pool).await?.rows_affected())
    }

    async fn timers_page(
        &mut self,
        from: &TimerFrom,
        before: Millis,
        limit: u32,
        shards: Option<&[u32]>,
    ) -> Result<Vec<TimerRow>, Error> {
        let mut q: QueryBuilder<Postgres> =
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
                    .push_bind(id.clone())
                    .push(", ")
                    .push_bind(name.clone())
                    .push(")");
            }
        }
        if let Some(shards) = shards {
            let shards: Vec<i64> = shards.iter().map(|s| i64::from(*s)).collect();
            q.push(" AND shard = ANY(").push_bind(shards).push("::bigint[])");
        }
        q.push(" ORDER BY due_at, instance_id, name LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row::timer).collect()
    }

    async fn calendar_files(&mut self) -> Result<Vec<StoredCalendarFile>, Error> {
        files(&self.pool).await
    }

    async fn catalogs(&mut self) -> Result<Vec<crate::catalog::Version>, Error> {
        latest_catalogs(&self.pool).await
    }

    async fn replans(&mut self) -> Result<Vec<ReplanJob>, Error> {
        replans(&self.pool).await
    }

    async fn planned_timers(
        &mut self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error> {
        planned(&self.pool, first, last, after, limit).await
    }
}

/// The newest version of each catalog kind.
async fn latest_catalogs(pool: &PgPool) -> Result<Vec<crate::catalog::Version>, Error> {
    let rows = sqlx::query(row::LATEST_CATALOGS).fetch_all(pool).await?;
    rows.iter().map(row::catalog_version).collect()
}

async fn files(pool: &PgPool) -> Result<Vec<StoredCalendarFile>, Error> {
    let rows = sqlx::query(
        "SELECT generation, version, name, text, loaded_by, loaded_at FROM calendar_files ORDER BY generation",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(row::calendar_file).collect()
}

async fn replans(pool: &PgPool) -> Result<Vec<ReplanJob>, Error> {
    let rows = sqlx::query(
        "SELECT generation, first, last, label, after_instance, after_name, moved, done FROM replans ORDER BY generation",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(row::replan).collect()
}

async fn planned(
    pool: &PgPool,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
    after: Option<&TimerId>,
    limit: u32,
) -> Result<Vec<TimerId>, Error> {
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT instance_id, name FROM timers WHERE plan_first IS NOT NULL AND plan_first <= ");
    q.push_bind(last.to_string()).push(" AND plan_last >= ").push_bind(first.to_string());
    if let Some((instance, name)) = after {
        q.push(" AND (instance_id, name) > (").push_bind(instance.clone()).push(", ").push_bind(name.clone()).push(")");
    }
    q.push(" ORDER BY instance_id, name LIMIT ").push_bind(i64::from(limit));
    Ok(q.build_query_as::<(String, String)>().fetch_all(pool).await?)
}

/// The queries' side, on its own pool.
#[derive(Debug, Clone)]
pub struct PgReader {
    pool: PgPool,
}

impl PgReader {
    /// Connects a pool of `connections` for queries. Refuses a database without the schema.
    pub async fn open(url: &str, connections: u32) -> Result<Self, Error> {
        let pool = pool(url, connections, Duration::from_secs(5)).await?;
        let has: bool = sqlx::query_scalar("SELECT to_regclass('instances') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .map_err(|e| open_error(url, e.to_string()))?;
        if !has {
            return Err(open_error(url, "not a shenguan database (no instances table): run `shenguan migrate`"));
        }
        Ok(PgReader { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait::async_trait]
impl ReadStore for PgReader {
    async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        let r = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row::instance).transpose()
    }

    async fn with_prefix(&self, prefix: &str) -> Result<Vec<InstanceRow>, Error> {
        let rows =
            sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id >= $1 AND id < $2 ORDER BY id"))
                .bind(prefix)
                .bind(format!("{prefix}\u{10FFFF}"))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row::instance).collect()
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, Error> {
        let rows = sqlx::query(&format!("SELECT {HISTORY_COLUMNS} FROM history WHERE instance_id = $1 ORDER BY seq"))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row::history).collect()
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<InstanceRow>, Error> {
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE workflow = "));
        q.push_bind(filter.workflow.clone());
        if let Some(state) = &filter.state {
            q.push(" AND state = ").push_bind(state.clone());
        }
        for (var, value) in &filter.vars {
            q.push(" AND vars ->> ").push_bind(var.clone()).push(" = ").push_bind(value.clone());
        }
        for (var, values) in &filter.vars_in {
            q.push(" AND vars ->> ").push_bind(var.clone()).push(" = ANY(").push_bind(values.clone()).push("::text[])");
        }
        if !filter.states_in.is_empty() {
            q.push(" AND state = ANY(").push_bind(filter.states_in.clone()).push("::text[])");
        }
        for (var, bound) in &filter.vars_at_most {
            // COLLATE "C": compared byte by byte, as SQLite compares text.
            q.push(" AND (vars ->> ")
                .push_bind(var.clone())
                .push(") COLLATE \"C\" <= ")
                .push_bind(bound.clone())
                .push(" COLLATE \"C\"");
        }
        if !filter.any_true.is_empty() || !filter.any_task_true.is_empty() {
            q.push(" AND (false");
            for var in &filter.any_true {
                q.push(" OR (vars -> ").push_bind(var.clone()).push(") = 'true'::jsonb");
            }
            if !filter.any_task_true.is_empty() {
                q.push(" OR EXISTS (SELECT 1 FROM instances t WHERE t.id > instances.id || '/T' AND t.id < instances.id || '/U' AND t.workflow = ")
                    .push_bind(filter.task_workflow.clone())
                    .push(" AND (false");
                for var in &filter.any_task_true {
                    q.push(" OR (t.vars -> ").push_bind(var.clone()).push(") = 'true'::jsonb");
                }
                q.push("))");
            }
            q.push(")");
        }
        if filter.provisional {
            q.push(
                " AND (EXISTS (SELECT 1 FROM timers p WHERE p.provisional AND (p.instance_id = instances.id \
                 OR (p.instance_id > instances.id || '/T' AND p.instance_id < instances.id || '/U')))",
            );
            if let Some(var) = &filter.provisional_var {
                q.push(" OR (vars -> ").push_bind(var.clone()).push(") = 'true'::jsonb");
            }
            q.push(")");
        }
        if let Some(prefix) = filter.region_prefix.as_deref().filter(|p| !p.is_empty()) {
            q.push(" AND id >= ")
                .push_bind(prefix.to_owned())
                .push(" AND id < ")
                .push_bind(format!("{prefix}\u{10FFFF}"));
        }
        if let Some((departments, offices)) = &filter.seen_by {
            q.push(" AND (");
            if offices.is_none() {
                q.push("vars ->> 'approval_department' = ANY(").push_bind(departments.clone()).push("::text[]) OR ");
            }
            q.push("EXISTS (SELECT 1 FROM instances s WHERE s.id > instances.id || '/T' AND s.id < instances.id || '/U' AND s.workflow = ")
                .push_bind(filter.task_workflow.clone())
                .push(" AND s.vars ->> 'department' = ANY(")
                .push_bind(departments.clone())
                .push("::text[])");
            if let Some(offices) = offices {
                q.push(" AND s.vars ->> 'office' = ANY(").push_bind(offices.clone()).push("::text[])");
            }
            q.push("))");
        }
        if let Some(from) = filter.created_from {
            q.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(before) = filter.created_before {
            q.push(" AND created_at < ").push_bind(before);
        }
        if let Some(after) = &filter.after {
            q.push(" AND id > ").push_bind(after.clone());
        }
        q.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows: Vec<PgRow> = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row::instance).collect()
    }

    async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, Error> {
        let rows: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT destination, count(*) FROM outbox WHERE status = 'pending' GROUP BY destination")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(d, n)| (d.unwrap_or_default(), u64::try_from(n).unwrap_or(0))).collect())
    }

    async fn outbox_pending(&self, destination: &str, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE destination = $1 AND status = 'pending' AND id > $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(destination)
        .bind(i(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row::message).collect()
    }

    async fn outbox_after(&self, after: u64, channels: &[String], limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id > "));
        q.push_bind(i(after));
        if !channels.is_empty() {
            q.push(" AND channel = ANY(").push_bind(channels.to_vec()).push("::text[])");
        }
        q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(row::message).collect()
    }

    async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE status = 'dead' AND id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(i(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row::message).collect()
    }

    async fn dead_instances(&self, destination: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar("SELECT DISTINCT instance_id FROM outbox WHERE status = 'dead' AND destination = $1")
            .bind(destination)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn message(&self, key: &str) -> Result<Option<StoredMessage>, Error> {
        let r = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row::message).transpose()
    }

    async fn idempotency(&self, key: &str) -> Result<Option<crate::store::IdempotencyRow>, Error> {
        let r = sqlx::query(&format!("SELECT {} FROM idempotency WHERE key = $1", row::IDEMPOTENCY_COLUMNS))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(row::idempotency).transpose()?.map(|(_, row)| row))
    }

    async fn consumer(&self, name: &str) -> Result<Option<StoredConsumer>, Error> {
        let row = sqlx::query(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row::consumer).transpose()
    }

    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error> {
        let rows = sqlx::query(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row::consumer).collect()
    }

    async fn outbox_last_id(&self) -> Result<u64, Error> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&self.pool).await?;
        Ok(id.and_then(|i| u64::try_from(i).ok()).unwrap_or(0))
    }

    async fn outbox_of(&self, instance: &str) -> Result<Vec<StoredMessage>, Error> {
        let rows =
            sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE instance_id = $1 ORDER BY seq, id"))
                .bind(instance)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(row::message).collect()
    }

    async fn timers_pending(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM timers").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn instance_ids(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar("SELECT id FROM instances WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn all_timers(&self) -> Result<Vec<TimerRow>, Error> {
        let rows = sqlx::query("SELECT instance_id, name, due_at FROM timers ORDER BY due_at, instance_id, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row::timer).collect()
    }

    async fn orphans(&self, limit: u32) -> Result<Vec<(String, String)>, Error> {
        Ok(sqlx::query_as::<_, (String, String)>(
            "SELECT t, id FROM ( \
               SELECT DISTINCT 'history' AS t, instance_id AS id FROM history \
               UNION SELECT DISTINCT 'outbox', instance_id FROM outbox \
               UNION SELECT DISTINCT 'idempotency', instance_id FROM idempotency \
             ) o WHERE NOT EXISTS (SELECT 1 FROM instances WHERE instances.id = o.id) ORDER BY id, t LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn calendar_files(&self) -> Result<Vec<StoredCalendarFile>, Error> {
        files(&self.pool).await
    }

    async fn catalogs(&self) -> Result<Vec<crate::catalog::Version>, Error> {
        latest_catalogs(&self.pool).await
    }

    async fn catalog_history(&self, kind: crate::catalog::Kind) -> Result<Vec<crate::catalog::Version>, Error> {
        let rows = sqlx::query(&row::catalog_history_sql("$1")).bind(kind.name()).fetch_all(&self.pool).await?;
        rows.iter().map(row::catalog_version).collect()
    }

    async fn subjects_of(&self, code: &str) -> Result<Vec<super::Subject>, Error> {
        let sql = format!("{}WHERE s.code = $1 ORDER BY s.created_at, s.instance_id", row::SUBJECT_COLUMNS);
        let rows = sqlx::query(&sql).bind(code).fetch_all(&self.pool).await?;
        rows.iter().map(row::subject).collect()
    }

    async fn subjects_by_item(
        &self,
        workflow: &str,
        items: &[String],
        states: &[&str],
    ) -> Result<Vec<super::Subject>, Error> {
        let sql = format!(
            "{}WHERE s.workflow = $1 AND s.item = ANY($2) AND i.state = ANY($3) ORDER BY s.code, s.created_at",
            row::SUBJECT_COLUMNS
        );
        let rows = sqlx::query(&sql).bind(workflow).bind(items).bind(states).fetch_all(&self.pool).await?;
        rows.iter().map(row::subject).collect()
    }

    async fn replans(&self) -> Result<Vec<ReplanJob>, Error> {
        replans(&self.pool).await
    }

    async fn planned_timers(
        &self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error> {
        planned(&self.pool, first, last, after, limit).await
    }

    async fn provisional_timers(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM timers WHERE provisional").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn figures_built(&self) -> Result<bool, Error> {
        // A database from before the counters has no such table: not built.
        let tables: i64 = sqlx::query_scalar(TABLE_EXISTS).bind("figure_counts_built").fetch_one(&self.pool).await?;
        if tables == 0 {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM figure_counts_built").fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    async fn archived_counts(&self) -> Result<Vec<([String; 5], i64)>, Error> {
        // A database from before archiving (verify does not migrate) has archived nothing.
        let tables: i64 = sqlx::query_scalar(TABLE_EXISTS).bind("archived_counts").fetch_one(&self.pool).await?;
        if tables == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String, String, i64)> =
            sqlx::query_as(super::removal::COUNTS).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(a, b, c, d, e, n)| ([a, b, c, d, e], n)).collect())
    }

    async fn archived(&self, id: &str) -> Result<Option<super::ArchivedRow>, Error> {
        let row = sqlx::query(super::row::ARCHIVED).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(super::row::archived).transpose()
    }

    async fn figure_counts(&self, query: &super::figures::CounterQuery) -> Result<Vec<super::figures::Summed>, Error> {
        let mut q: sqlx::QueryBuilder<sqlx::Postgres> = sqlx::QueryBuilder::new("");
        super::figures::build(&mut q, query);
        q.build().fetch_all(&self.pool).await?.iter().map(super::figures::decode).collect()
    }

    async fn count(&self, table: super::Table) -> Result<u64, Error> {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name())).fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::Notice;

    #[test]
    fn notices_read_back_and_unknown_ones_are_ignored() {
        for n in [
            Notice::Outbox,
            Notice::Rescan,
            Notice::Calendar,
            Notice::Catalogs,
            Notice::Timers(vec![0, 7, 63]),
            Notice::Acked { consumer: "监管平台-1".into(), acked: 42 },
            Notice::Subscribed { consumer: "p.2".into(), stream: "a:b.7".into() },
            Notice::Dropped("p_3".into()),
        ] {
            assert_eq!(Notice::parse(&n.payload()), Some(n));
        }
        assert_eq!(Notice::parse("timers:1,x"), None);
        assert_eq!(Notice::parse("something new"), None);
        assert_eq!(Notice::parse("acked:x:c"), None);
        assert_eq!(Notice::parse("stream:no-token"), None);
    }
}
