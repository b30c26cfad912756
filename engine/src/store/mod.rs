//! Durable state: instances, history, timers, outbox and idempotency keys.
//!
//! The writer hands a whole [`Batch`] — the effects of many commands — to [`Store::commit`],
//! which writes it in one transaction with multi-row statements (a statement per table, not
//! per row: sqlx's SQLite driver pays a thread hop per statement). Reads for the command path
//! are batched the same way ([`Store::load_instances`], [`Store::load_idempotency`]).
//!
//! # Contract
//! - `commit` returns only once the transaction is durable (SQLite: WAL with synchronous=FULL).
//!   On error nothing of the batch is visible.
//! - [`Store::timers_page`] returns timers in `(due_at, instance_id, name)` order strictly after
//!   the given position: the loader relies on that order being the SQL `ORDER BY`.
//!
//! One implementation today ([`sqlite::SqliteStore`]); the PostgreSQL one implements the same
//! trait.

pub mod backup;
pub mod figures;
pub mod postgres;
pub mod read;
pub(crate) mod removal;
mod row;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;

use crate::calendar::CalendarFile;
use crate::clock::Millis;
use crate::definition::Definition;
use crate::machine::{decode_vars, encode_vars, ArmedTimer, HistoryEntry, Instance, Message, Rejection};

/// Storage errors, by what a caller can do about them: only [`Error::Unavailable`] is worth
/// retrying. Database detail stays in the logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The database cannot be opened or prepared at start.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// The path.
        path: String,
        /// Why, in words.
        message: String,
    },
    /// A read or write failed for a reason that passes (I/O error, disk full, busy or locked
    /// database, lost connection): retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data does not decode, or the database file is damaged: retrying will not help.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database refused a statement (a constraint, a malformed statement): a defect of the
    /// engine, not of the caller's request, and retrying will not help.
    #[error("storage refused the operation: {0}")]
    Internal(String),
    /// Another node changed an instance the batch decided on (optimistic concurrency): nothing
    /// was written; deciding again on fresh rows will do.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The batch fired timers of shards this node no longer holds (fencing): nothing was
    /// written; the shards' new holders fire them.
    #[error("fenced: node {node} no longer holds shard(s) {lost:?}")]
    Fenced {
        /// This node.
        node: String,
        /// The shards whose lease moved on.
        lost: Vec<u32>,
    },
    /// The connection failed during COMMIT: the transaction may or may not have committed.
    /// Retrying a keyed request tells which (its key answers a duplicate if it did).
    #[error("commit outcome unknown: {0}")]
    Indeterminate(String),
}

/// PostgreSQL SQLSTATE classes that pass: connection exceptions (08), insufficient resources
/// (53: disk full, out of memory, too many connections), operator intervention (57P: shutdown,
/// crash recovery).
fn pg_transient(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
}

/// PostgreSQL's serialization failure and deadlock (40001, 40P01): two transactions wrote the
/// same rows at once (two nodes deciding on one instance) and this one was rolled back whole —
/// the same as a write conflict, decided again on fresh rows rather than told to the caller.
fn pg_conflict(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

/// SQLite primary result codes that pass: BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
const SQLITE_TRANSIENT: [i64; 7] = [5, 6, 7, 10, 13, 14, 15];
/// SQLite primary result codes for a damaged file: CORRUPT, NOTADB.
const SQLITE_DAMAGED: [i64; 2] = [11, 26];

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let text = e.to_string();
        match &e {
            E::Database(db) if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() => {
                let code = db.code().unwrap_or_default();
                if pg_conflict(&code) {
                    Error::Conflict(text)
                } else if pg_transient(&code) {
                    Error::Unavailable(text)
                } else if code.starts_with("XX") {
                    Error::Corrupt(text)
                } else {
                    Error::Internal(text)
                }
            }
            E::Database(db) => {
                // SQLite reports extended codes; the primary code is the low byte.
                let primary = db.code().and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff);
                match primary {
                    Some(c) if SQLITE_TRANSIENT.contains(&c) => Error::Unavailable(text),
                    Some(c) if SQLITE_DAMAGED.contains(&c) => Error::Corrupt(text),
                    _ => Error::Internal(text),
                }
            }
            E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                Error::Unavailable(text)
            }
            E::ColumnDecode { .. } | E::Decode(_) | E::TypeNotFound { .. } | E::ColumnNotFound(_) => {
                Error::Corrupt(text)
            }
            _ => Error::Internal(text),
        }
    }
}

/// An instance row as stored; variables stay JSON until a definition types them. (Serialised
/// as an archive's instance, [`crate::archive::InstanceRecord`].)
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceRow {
    /// Id.
    pub id: String,
    /// Workflow.
    pub workflow: String,
    /// Definition version.
    pub version: u32,
    /// State.
    pub state: String,
    /// Variables as a JSON object.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Armed timers.
    pub timers: std::collections::BTreeMap<String, ArmedTimer>,
    /// History length.
    pub seq: u64,
    /// Shard.
    pub shard: u32,
    /// Start instant.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

impl InstanceRow {
    /// The row that stores `instance`, in shard `shard`.
    pub fn of(instance: &Instance, shard: u32) -> Self {
        InstanceRow {
            id: instance.id.clone(),
            workflow: instance.workflow.clone(),
            version: instance.version,
            state: instance.state.clone(),
            vars: encode_vars(&instance.vars),
            timers: instance.timers.clone(),
            seq: instance.seq,
            shard,
            created_at: instance.created_at,
            updated_at: instance.updated_at,
        }
    }

    /// The instance this row stores, its variables typed by the definition it runs on.
    pub fn decode(self, def: &Definition) -> Result<Instance, Rejection> {
        let vars = decode_vars(def, &self.vars)?;
        Ok(Instance {
            id: self.id,
            workflow: self.workflow,
            version: self.version,
            state: self.state,
            vars,
            timers: self.timers,
            seq: self.seq,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A timer's identity: (instance, timer name).
pub type TimerId = (String, String);

/// A stored timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRow {
    /// Due instant.
    pub due: Millis,
    /// Instance.
    pub instance: String,
    /// Timer name.
    pub name: String,
}

/// A message in the outbox as stored, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its position in the outbox: ids grow in commit order, so a consumer's cursor is an id.
    pub id: u64,
    /// The key receivers deduplicate on (`instance:seq:index`).
    pub key: String,
    /// The instance whose transition wrote it.
    pub instance: String,
    /// The history entry (of the instance) whose transition wrote it.
    pub seq: u64,
    /// Channel, recipient, text.
    pub message: Message,
    /// When it was written (engine time).
    pub created_at: Millis,
    /// The push destination it is routed to; `None`: only the stream serves it.
    pub destination: Option<String>,
    /// Its delivery state.
    pub status: DeliveryState,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt may be made (wall-clock ms; 0: at once).
    pub next_attempt_at: Millis,
    /// The last failed attempt's reason.
    pub last_error: Option<String>,
    /// The receiver's answer to the successful delivery.
    pub receipt: Option<String>,
    /// When it was delivered or became a dead letter (wall-clock ms).
    pub delivered_at: Option<Millis>,
    /// When its first attempt failed (wall-clock ms): its age as a dead-letter candidate is
    /// counted from here, in real time, whatever the engine's clock.
    pub first_failed_at: Option<Millis>,
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Routed to a destination, not delivered yet (retries included).
    Pending,
    /// The destination accepted it.
    Delivered,
    /// Given up after the attempts or the age allowed, or refused for good by the receiver;
    /// kept until an administrator retries it.
    Dead,
    /// Not pushed anywhere: served to stream subscribers only.
    Stream,
    /// A dead letter an administrator gave up on: never sent, pruned like a delivered one, and
    /// no longer holding its case's later messages.
    Discarded,
}

impl DeliveryState {
    /// The word stored in the database and shown in timelines.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
            DeliveryState::Stream => "stream",
            DeliveryState::Discarded => "discarded",
        }
    }

    /// The state a stored word names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "dead" => DeliveryState::Dead,
            "stream" => DeliveryState::Stream,
            "discarded" => DeliveryState::Discarded,
            _ => return None,
        })
    }
}

/// What one delivery attempt learned about a message, for the writer to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMark {
    /// The message.
    pub id: u64,
    /// `Pending` (to retry), `Delivered` or `Dead`.
    pub status: DeliveryState,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// When to try again (wall-clock ms), for `Pending`.
    pub next_attempt_at: Millis,
    /// Why the attempt failed.
    pub last_error: Option<String>,
    /// The receiver's answer, for `Delivered`.
    pub receipt: Option<String>,
    /// When (wall-clock ms).
    pub at: Millis,
}

/// A stream consumer's acknowledged position, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerCursor {
    /// The consumer's name.
    pub name: String,
    /// The subject it belongs to.
    pub owner: String,
    /// Every message with an id up to this one is acknowledged (never moves back).
    pub acked: u64,
    /// When (engine time).
    pub at: Millis,
    /// The channels it wants (every channel when empty), recorded at each Subscribe; `None`
    /// keeps what is recorded (an acknowledgement).
    pub channels: Option<Vec<String>>,
    /// From a Subscribe: the token of the stream it starts, told to every node in the same
    /// transaction so that a stream for this consumer elsewhere ends (never stored).
    pub stream: Option<String>,
}

/// A stream consumer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConsumer {
    /// Its name.
    pub name: String,
    /// The subject it belongs to.
    pub owner: String,
    /// Its acknowledged position.
    pub acked: u64,
    /// The channels it wants (every channel when empty): retention keeps what it has not
    /// acknowledged of these.
    pub channels: Vec<String>,
    /// When it last subscribed or acknowledged (engine time).
    pub updated_at: Millis,
}

/// The stored form of a message's typed data: JSON text, or NULL for an untyped message.
pub fn data_column(m: &crate::machine::Message) -> Option<String> {
    // Serialised in place: cloning the record into a `Value` first cost a copy of every field
    // of every message written. A map with string keys always serialises (as `Value`'s
    // `Display`, which this replaces, assumes too).
    m.data.as_ref().map(|d| serde_json::to_string(d).unwrap_or_default())
}

/// The stored form of a consumer's channels: `",a,b,"`, or `""` for every channel (channel
/// names hold no comma), so that one `instr`/`position` tells whether it wants a channel.
pub fn channels_column(channels: &[String]) -> String {
    if channels.is_empty() {
        String::new()
    } else {
        format!(",{},", channels.join(","))
    }
}

/// The channels of a stored `channels` column.
pub fn channels_of_column(column: &str) -> Vec<String> {
    column.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

/// Where a page of timers starts, in `(due_at, instance_id, name)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerFrom {
    /// Every timer with `due_at >= the given instant`.
    Due(Millis),
    /// Every timer strictly after `(due, instance, name)`.
    After(Millis, String, String),
}

/// A stored idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// The instance the first request changed.
    pub instance: String,
    /// The history entry it produced.
    pub seq: u64,
    /// Fingerprint of the first request.
    pub fingerprint: String,
    /// When the first request was applied (engine time): the key expires from then.
    pub created_at: Millis,
}

/// An outbox message to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Deduplication key for receivers: `instance:seq:index`.
    pub key: String,
    /// Instance.
    pub instance: String,
    /// History entry that produced it.
    pub seq: u64,
    /// The message.
    pub message: Message,
    /// When.
    pub created_at: Millis,
    /// The push destination its channel is routed to (set by the writer from its routes);
    /// `None`: stream only.
    pub destination: Option<String>,
}

/// Everything one group commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// Final rows of every instance the batch changed (one per instance).
    pub instances: Vec<InstanceRow>,
    /// History entries to append.
    pub history: Vec<(String, HistoryEntry)>,
    /// Net timer changes: `Some` upserts the row, `None` deletes it.
    pub timers: Vec<(TimerId, Option<(ArmedTimer, u32)>)>,
    /// Outbox messages.
    pub outbox: Vec<OutboxRow>,
    /// Idempotency keys to record (replacing an expired row under the same key).
    pub idempotency: Vec<(String, IdempotencyRow)>,
    /// A calendar file loaded in this batch.
    pub calendar_file: Option<StoredCalendarFile>,
    /// A re-plan's progress to record (inserted or replaced).
    pub replan: Option<ReplanJob>,
    /// Delivery outcomes to record.
    pub marks: Vec<OutboxMark>,
    /// Dead letters (by key) to make pending again, attempts reset.
    pub revive: Vec<String>,
    /// Dead letters (by key) an administrator discarded, with when (wall ms).
    pub discard: Vec<(String, Millis)>,
    /// Stream consumers' positions to record.
    pub cursors: Vec<ConsumerCursor>,
    /// Stream consumers to forget (an administrator dropped them): what only they held is
    /// pruned when its retention has passed.
    pub dropped_consumers: Vec<String>,
    /// The leases the batch's timer fires depend on: checked in its transaction (several
    /// nodes only).
    pub fence: Option<Fence>,
    /// Shards in which the batch arms timers that another node holds: told at commit, so that
    /// the holder loads them (several nodes only).
    pub notify_shards: Vec<u32>,
    /// Catalog versions imported in this batch.
    pub catalogs: Vec<crate::catalog::Version>,
    /// Who instances started in this batch concern (the enterprise index).
    pub subjects: Vec<SubjectRow>,
    /// Net changes to the statistics counters (in key order, none zero).
    pub figures: Vec<(crate::domain::figures::CounterKey, i64)>,
    /// The counters' stripe this batch adds to: 0 on one node; with several, one the node
    /// alone writes (the lowest shard it holds), so that two nodes never wait on one counter.
    pub stripe: u32,
}

/// One row of the enterprise index: an instance that concerns an enterprise or a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRow {
    /// The Unified Social Credit Code or citizen ID number.
    pub code: String,
    /// The instance.
    pub instance: String,
    /// Its workflow.
    pub workflow: String,
    /// The handling item it is about, or "".
    pub item: String,
    /// The credit grade when it started, or "".
    pub grade: String,
    /// When it started.
    pub created_at: Millis,
}

/// An instance that concerns an enterprise, with its state now (a spot check's population
/// and the enterprise profile read these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The index row.
    pub row: SubjectRow,
    /// The instance's state.
    pub state: String,
}

/// A closed case to remove now that it is in an archive file: the case and its tasks, each with
/// the history length it had when it was written there ([`Store::remove_archived`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The case id (its tasks are `<case>/T…`).
    pub case: String,
    /// (instance, history length) of the case and of every task it had when archived.
    pub instances: Vec<(String, u64)>,
    /// (code, instance) of its rows in the enterprise index.
    pub subjects: Vec<(String, String)>,
    /// (instance, instant) of each of its history entries: a request id it recorded was
    /// recorded at that instant, so its row is found by `created_at` without a scan.
    pub keyed_at: Vec<(String, Millis)>,
    /// The case's final state.
    pub state: String,
    /// When the case started.
    pub created_at: Millis,
    /// The last change of the case or of one of its tasks.
    pub closed_at: Millis,
    /// What the case and its tasks count in the statistics (day counters only): recorded in
    /// `archived_counts`, the counters themselves unchanged.
    pub figures: Vec<(crate::domain::figures::CounterKey, i64)>,
}

impl Removal {
    /// Whether what is stored is still what was archived: the same instances (no task more or
    /// less) at the same history lengths, and no message of theirs waiting for delivery or an
    /// administrator (`undelivered`). Otherwise the case changed since: it stays.
    pub fn unchanged(&self, stored: &[(String, i64)], undelivered: i64) -> bool {
        let mut archived: Vec<(&str, i64)> =
            self.instances.iter().map(|(id, seq)| (id.as_str(), *seq as i64)).collect();
        let mut now: Vec<(&str, i64)> = stored.iter().map(|(id, seq)| (id.as_str(), *seq)).collect();
        archived.sort_unstable();
        now.sort_unstable();
        undelivered == 0 && archived == now
    }

    /// The ids of the case and its tasks.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|(id, _)| id.as_str())
    }
}

/// What [`Store::remove_archived`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Cases removed (and recorded as archived).
    pub removed: Vec<String>,
    /// Cases that changed since they were archived, or are gone: left as they are.
    pub changed: Vec<String>,
}

/// A case that was archived and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRow {
    /// The case id.
    pub id: String,
    /// Its final state.
    pub state: String,
    /// The case and its tasks.
    pub instances: u32,
    /// When it started.
    pub created_at: Millis,
    /// The last change of the case or a task.
    pub closed_at: Millis,
    /// The archive file's name.
    pub archive: String,
    /// When it was removed (wall-clock ms).
    pub archived_at: Millis,
}

/// The leases a batch depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The node that holds them.
    pub node: String,
    /// (shard, epoch the node took it at).
    pub shards: Vec<(u32, u64)>,
}

impl Batch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.history.is_empty()
            && self.timers.is_empty()
            && self.calendar_file.is_none()
            && self.replan.is_none()
            && self.marks.is_empty()
            && self.revive.is_empty()
            && self.discard.is_empty()
            && self.cursors.is_empty()
            && self.dropped_consumers.is_empty()
            && self.catalogs.is_empty()
    }
}

/// A calendar file as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCalendarFile {
    /// Its place in load order; the calendar set of generation g is every file up to g.
    pub generation: u64,
    /// 1, 2, … among the files with the same key.
    pub version: u32,
    /// The file.
    pub file: CalendarFile,
    /// Who loaded it (`seed` for the files a new database starts with).
    pub loaded_by: String,
    /// When (engine time).
    pub loaded_at: Millis,
}

/// Who the seed files are recorded as loaded by.
pub const SEED: &str = "seed";

/// A re-plan of the working-day timers that depend on a day in `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplanJob {
    /// The calendar generation whose load started it.
    pub generation: u64,
    /// First date of the range.
    pub first: chrono::NaiveDate,
    /// Last date.
    pub last: chrono::NaiveDate,
    /// The calendar, as history entries name it.
    pub label: String,
    /// The last timer (instance, name) re-planned; `None` before the first batch.
    pub after: Option<TimerId>,
    /// Instances whose timers moved or were confirmed so far.
    pub moved: u64,
    /// Whether every timer has been seen.
    pub done: bool,
}

/// The storage operations the engine needs.
pub trait Store: Send + 'static {
    /// Another handle on the same database, on a connection of its own, for the command path's
    /// reads ([`load_instances`](Self::load_instances), [`load_idempotency`](Self::load_idempotency))
    /// while a commit runs on this one: the writer decides the next batch meanwhile. It sees
    /// what is committed, nothing of the commit in progress.
    fn beside(&self) -> Self
    where
        Self: Sized;
    /// Rows of the given instances that exist.
    fn load_instances(
        &mut self,
        ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, InstanceRow>, Error>> + Send;
    /// The archived cases among `ids` ([`remove_archived`](Self::remove_archived) recorded
    /// them): their numbers stay taken.
    fn load_archived(
        &mut self,
        ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, ArchivedRow>, Error>> + Send;
    /// Stored idempotency keys among `keys`.
    fn load_idempotency(
        &mut self,
        keys: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, IdempotencyRow>, Error>> + Send;
    /// Writes a batch in one durable transaction.
    fn commit(&mut self, batch: &Batch) -> impl Future<Output = Result<(), Error>> + Send;
    /// Deletes up to `limit` idempotency keys created before `before`; answers how many.
    fn prune_idempotency(&mut self, before: Millis, limit: u32) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Deletes up to `limit` delivered or stream-only outbox messages written before `before`,
    /// oldest first; answers how many. Pending messages and dead letters are kept, and so is
    /// every message a registered consumer that wants its channel has not acknowledged.
    fn prune_outbox(&mut self, before: Millis, limit: u32) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Up to `limit` timers from `from` with `due_at < before`, in key order; only those of
    /// `shards` when given.
    fn timers_page(
        &mut self,
        from: &TimerFrom,
        before: Millis,
        limit: u32,
        shards: Option<&[u32]>,
    ) -> impl Future<Output = Result<Vec<TimerRow>, Error>> + Send;
    /// Every calendar file, in generation order.
    fn calendar_files(&mut self) -> impl Future<Output = Result<Vec<StoredCalendarFile>, Error>> + Send;
    /// The newest stored version of every catalog kind.
    fn catalogs(&mut self) -> impl Future<Output = Result<Vec<crate::catalog::Version>, Error>> + Send;
    /// Re-plans not yet done, oldest first.
    fn replans(&mut self) -> impl Future<Output = Result<Vec<ReplanJob>, Error>> + Send;
    /// Up to `limit` working-day timers depending on a day in `first..=last`, strictly after
    /// `after` in (instance, name) order.
    fn planned_timers(
        &mut self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TimerId>, Error>> + Send;
    /// Whether the statistics counters hold every instance (built once, then kept by commits).
    fn figures_built(&mut self) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Up to `limit` instances of `workflows` with an id after `after`, in id order (the
    /// counters' first count).
    fn instances_page(
        &mut self,
        workflows: &[&str],
        after: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<InstanceRow>, Error>> + Send;
    /// Installs the counters' first count (of `instances` instances) unless another node did
    /// first; answers whether this one was installed.
    fn install_figures(
        &mut self,
        rows: &[(crate::domain::figures::CounterKey, i64)],
        instances: u64,
        at: Millis,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Removes archived cases, each whole — its instances, their history, timers, messages,
    /// request ids and enterprise-index rows — and records it in `archived`, in one transaction; a case that
    /// changed since ([`Removal::unchanged`]) is left as it is. The statistics counters stay.
    fn remove_archived(
        &mut self,
        cases: &[Removal],
        archive: &str,
        at: Millis,
    ) -> impl Future<Output = Result<Removed, Error>> + Send;
}

/// A filter on an instance listing.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Workflow name.
    pub workflow: String,
    /// Exact state.
    pub state: Option<String>,
    /// One of these states (empty: any).
    pub states_in: Vec<String>,
    /// Variable at most this text, compared as text: (variable, bound); for `YYYY-MM-DD`
    /// dates, on or before. An instance without the variable does not match.
    pub vars_at_most: Vec<(String, String)>,
    /// Variable equals text: (variable, value).
    pub vars: Vec<(String, String)>,
    /// Variable equals one of these texts (none: nothing matches).
    pub vars_in: Vec<(String, Vec<String>)>,
    /// Any of these boolean variables is true…
    pub any_true: Vec<String>,
    /// …or any of these boolean variables of one of its children (`<id>/T…` of workflow
    /// `task_workflow`) is true.
    pub any_task_true: Vec<String>,
    /// The children's workflow, for `any_task_true`.
    pub task_workflow: String,
    /// Created at or after.
    pub created_from: Option<Millis>,
    /// Created before.
    pub created_before: Option<Millis>,
    /// Only instances with a provisional deadline: a timer of its own or of a child computed on
    /// a provisional calendar, or a variable `provisional_var` that is true.
    pub provisional: bool,
    /// The variable that marks a deadline computed outside the timers as provisional.
    pub provisional_var: Option<String>,
    /// Only ids starting with this (a case or task id starts with its region code: the caller's
    /// region scope).
    pub region_prefix: Option<String>,
    /// Only cases a department sees: approved by it, or with a child (`task_workflow`) of
    /// that department — and, with an office, only through a child of that office. Each is
    /// given by all its names (a code and a name).
    pub seen_by: Option<(Vec<String>, Option<Vec<String>>)>,
    /// Ids strictly after this one (paging).
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

impl Filter {
    /// Only the instances of one region: the variable, and the range of ids it implies (a case
    /// id, and so its tasks' ids, start with `<region>/`), so that a listing reads that region's
    /// part of the primary key instead of the whole workflow. A scope already narrower, or
    /// disjoint, stays: the variable alone then decides.
    pub fn in_region(&mut self, region: &str) {
        self.vars.push(("region".into(), region.to_owned()));
        let prefix = format!("{region}/");
        if self.region_prefix.as_deref().is_none_or(|scope| prefix.starts_with(scope)) {
            self.region_prefix = Some(prefix);
        }
    }
}

/// The read side of storage: what the API's queries and `admin verify` need, and all they may
/// use. It sees committed state only. A second backend implements this and [`Store`]; nothing
/// above the store names a backend.
#[async_trait::async_trait]
pub trait ReadStore: Send + Sync {
    /// One instance.
    async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, Error>;
    /// Instances whose id starts with `prefix`, in id order.
    async fn with_prefix(&self, prefix: &str) -> Result<Vec<InstanceRow>, Error>;
    /// One instance's history, ascending.
    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, Error>;
    /// Instances matching `filter`, in id order.
    async fn list(&self, filter: &Filter) -> Result<Vec<InstanceRow>, Error>;
    /// Messages not yet delivered, per destination.
    async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, Error>;
    /// Up to `limit` pending messages routed to `destination` with an id after `after`, in id
    /// order (the dispatcher's walk).
    async fn outbox_pending(&self, destination: &str, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error>;
    /// Up to `limit` messages with an id after `after`, in id order, of the given channels
    /// (every channel when empty): the stream's walk. A caller that filters further still
    /// moves on by the last id answered.
    async fn outbox_after(&self, after: u64, channels: &[String], limit: u32) -> Result<Vec<StoredMessage>, Error>;
    /// Up to `limit` dead letters with an id after `after`, in id order.
    async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error>;
    /// The instances with a dead letter routed to `destination` (what a destination that holds
    /// a case behind its dead letter must not send past).
    async fn dead_instances(&self, destination: &str) -> Result<Vec<String>, Error>;
    /// One message by its key.
    async fn message(&self, key: &str) -> Result<Option<StoredMessage>, Error>;
    /// A stored idempotency key (expired or not: the writer decides what expiry means).
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRow>, Error>;
    /// A stream consumer.
    async fn consumer(&self, name: &str) -> Result<Option<StoredConsumer>, Error>;
    /// Every stream consumer, by name.
    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error>;
    /// The newest message's id (0 when the outbox is empty): a consumer's lag is this minus
    /// its acknowledged position.
    async fn outbox_last_id(&self) -> Result<u64, Error>;
    /// The messages an instance's transitions wrote, in history order.
    async fn outbox_of(&self, instance: &str) -> Result<Vec<StoredMessage>, Error>;
    /// Timers armed in the database.
    async fn timers_pending(&self) -> Result<u64, Error>;
    /// Instance ids in order, strictly after `after`, at most `limit`.
    async fn instance_ids(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, Error>;
    /// Every stored timer in key order (verify; unbounded).
    async fn all_timers(&self) -> Result<Vec<TimerRow>, Error>;
    /// (table, instance id) for rows of history, outbox or idempotency that name an instance
    /// with no instance row, at most `limit`.
    async fn orphans(&self, limit: u32) -> Result<Vec<(String, String)>, Error>;
    /// Every calendar file, in generation order.
    async fn calendar_files(&self) -> Result<Vec<StoredCalendarFile>, Error>;
    /// The newest version of each catalog kind: the catalogs in force.
    async fn catalogs(&self) -> Result<Vec<crate::catalog::Version>, Error>;
    /// Every version of a catalog kind, oldest first.
    async fn catalog_history(&self, kind: crate::catalog::Kind) -> Result<Vec<crate::catalog::Version>, Error>;
    /// The instances that concern an enterprise, oldest first.
    async fn subjects_of(&self, code: &str) -> Result<Vec<Subject>, Error>;
    /// The instances of `workflow` about any of `items`, in any of `states`.
    async fn subjects_by_item(&self, workflow: &str, items: &[String], states: &[&str]) -> Result<Vec<Subject>, Error>;
    /// Every re-plan, oldest first.
    async fn replans(&self) -> Result<Vec<ReplanJob>, Error>;
    /// Like [`Store::planned_timers`].
    async fn planned_timers(
        &self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error>;
    /// Armed timers computed on a provisional calendar.
    async fn provisional_timers(&self) -> Result<u64, Error>;
    /// Rows of a table (tests and reports).
    async fn count(&self, table: Table) -> Result<u64, Error>;
    /// Whether the statistics counters have been built (`false` also for a database from
    /// before they existed).
    async fn figures_built(&self) -> Result<bool, Error>;
    /// The statistics counters summed per group and figure over a period.
    async fn figure_counts(&self, query: &figures::CounterQuery) -> Result<Vec<figures::Summed>, Error>;
    /// The record of an archived case, if it was archived.
    async fn archived(&self, id: &str) -> Result<Option<ArchivedRow>, Error>;
    /// What archived cases counted, summed over all days: ((side, region, department, office,
    /// figure), n).
    async fn archived_counts(&self) -> Result<Vec<([String; 5], i64)>, Error>;
}

/// Tables that [`ReadStore::count`] can count.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    /// `instances`
    Instances,
    /// `history`
    History,
    /// `timers`
    Timers,
    /// `outbox`
    Outbox,
    /// `idempotency`
    Idempotency,
}

impl Table {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Instances => "instances",
            Table::History => "history",
            Table::Timers => "timers",
            Table::Outbox => "outbox",
            Table::Idempotency => "idempotency",
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/embedded_migrations.rs"));

/// A migrator over migrations embedded by the build (`build.rs`): what sqlx's `migrate!` would
/// build from the same directory, checksums included, so databases migrated by earlier builds
/// (which used the macro) open unchanged.
pub(crate) fn embedded_migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use std::borrow::Cow;
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            sqlx::migrate::Migration::new(
                version,
                Cow::Borrowed(description),
                sqlx::migrate::MigrationType::Simple,
                Cow::Borrowed(sql),
                // sqlx's own rule for a migration that must run outside a transaction.
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect::<Vec<_>>();
    sqlx::migrate::Migrator { migrations: Cow::Owned(migrations), ..sqlx::migrate::Migrator::DEFAULT }
}

/// Refuses a database whose schema has migrations this build does not know: it was migrated by
/// a newer shenguan, and this one would misread it. `applied` are the versions recorded in the
/// database.
pub fn newer_schema(applied: &[i64], known: &sqlx::migrate::Migrator) -> Result<(), String> {
    let newest = known.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.iter().copied().filter(|v| !known.iter().any(|m| m.version == *v)).max() {
        Some(v) => Err(format!(
            "the database schema is at version {v}, newer than this shenguan knows (up to {newest}): \
             it was migrated by a newer release. Run that release (or newer), or restore a backup taken \
             before the upgrade; this node will not start on it"
        )),
        None => Ok(()),
    }
}

/// Applies the migrations this build has to `database` (creating a SQLite file if missing);
/// refuses a schema newer than this build.
pub async fn migrate(database: &Database) -> Result<postgres::Migrated, Error> {
    match database {
        Database::Sqlite(path) => {
            let before = sqlite::SqliteStore::applied_versions(path).await?;
            sqlite::SqliteStore::open(path, &sqlite::Options::default()).await?;
            let applied = sqlite::MIGRATOR.iter().map(|m| m.version).filter(|v| !before.contains(v)).collect();
            Ok(postgres::Migrated { applied, version: sqlite::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0) })
        }
        Database::Postgres(url) => {
            let pool = postgres::pool(url, 1, std::time::Duration::from_secs(10)).await?;
            postgres::migrate(&pool, url).await
        }
    }
}

/// Where the state lives: a SQLite file (the embedded default) or a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://user:password@host:port/database`).
    Postgres(String),
}

impl Database {
    /// `postgres://…` or `postgresql://…` is a server; anything else a SQLite file path
    /// (`sqlite:` prefix allowed).
    pub fn parse(text: &str) -> Database {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Database::Postgres(text.to_owned())
        } else {
            Database::Sqlite(text.strip_prefix("sqlite:").unwrap_or(text).into())
        }
    }

    /// For messages and logs: the path, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => postgres::redact(url),
        }
    }

    /// A read side for queries, with up to `connections` connections.
    pub async fn reader(&self, connections: u32) -> Result<std::sync::Arc<dyn ReadStore>, Error> {
        Ok(match self {
            Database::Sqlite(path) => std::sync::Arc::new(read::Reader::open_existing_with(path, connections).await?),
            Database::Postgres(url) => std::sync::Arc::new(postgres::PgReader::open(url, connections.max(2)).await?),
        })
    }
}

/// The shard of an instance: a stable hash (FNV-1a) of its id modulo `shards`.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    (fnv1a(id.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// FNV-1a 64: stable across builds and platforms, which `std`'s hasher does not promise;
/// used for shards (not for fingerprints, where a collision would answer one request with
/// another's result: those are SHA-256).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::Error;
    use sqlx::{ConnectOptions, Connection, Row};

    async fn memory() -> sqlx::SqliteConnection {
        sqlx::sqlite::SqliteConnectOptions::new().in_memory(true).connect().await.expect("in-memory SQLite")
    }

    /// The embedded migrations are what sqlx reads from the directory — same versions,
    /// descriptions, kinds and checksums — so a database migrated by a build that embedded them
    /// with `migrate!` is recognised, and a migration file added later is embedded.
    #[tokio::test]
    async fn the_embedded_migrations_are_the_directorys() {
        for (dir, embedded) in [("sqlite", &*super::sqlite::MIGRATOR), ("postgres", &*super::postgres::MIGRATOR)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations").join(dir);
            let read = sqlx::migrate::Migrator::new(path).await.expect("read the migrations directory");
            let shape = |m: &sqlx::migrate::Migrator| {
                m.iter()
                    .map(|m| (m.version, m.description.to_string(), m.migration_type, m.checksum.to_vec(), m.no_tx))
                    .collect::<Vec<_>>()
            };
            assert!(embedded.iter().count() >= 7, "{dir}: migrations embedded");
            assert_eq!(shape(embedded), shape(&read), "{dir}");
        }
    }

    #[tokio::test]
    async fn a_constraint_is_internal_not_retryable() {
        let mut conn = memory().await;
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)").execute(&mut conn).await.expect("create");
        sqlx::query("INSERT INTO t VALUES ('a')").execute(&mut conn).await.expect("insert");
        let e = sqlx::query("INSERT INTO t VALUES ('a')").execute(&mut conn).await.expect_err("duplicate");
        assert!(matches!(Error::from(e), Error::Internal(_)));
        let e = sqlx::query("SELECT * FROM no_such_table").execute(&mut conn).await.expect_err("no table");
        assert!(matches!(Error::from(e), Error::Internal(_)));
    }

    #[tokio::test]
    async fn a_value_that_does_not_decode_is_corrupt() {
        let mut conn = memory().await;
        let row = sqlx::query("SELECT 'not a number' AS n").fetch_one(&mut conn).await.expect("select");
        let e = row.try_get::<i64, _>("n").expect_err("text is no integer");
        assert!(matches!(Error::from(e), Error::Corrupt(_)));
    }

    #[tokio::test]
    async fn a_foreign_file_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![b'x'; 8192]).expect("write");
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.expect("lazy open");
        let e = sqlx::query("SELECT count(*) FROM sqlite_master").execute(&mut conn).await.expect_err("not a db");
        assert!(matches!(Error::from(e), Error::Corrupt(_)), "not a database");
    }

    #[tokio::test]
    async fn a_locked_database_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("busy.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut a = opts.connect().await.expect("a");
        let mut b = opts.connect().await.expect("b");
        sqlx::query("CREATE TABLE t (k INTEGER)").execute(&mut a).await.expect("create");
        let mut tx = a.begin().await.expect("begin");
        sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await.expect("write lock held");
        let e = sqlx::query("INSERT INTO t VALUES (2)").execute(&mut b).await.expect_err("busy");
        assert!(matches!(Error::from(e), Error::Unavailable(_)));
        tx.rollback().await.expect("rollback");
    }
}
