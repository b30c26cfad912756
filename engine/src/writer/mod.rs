//! Group commit: the one path every change takes.
//!
//! Callers (gRPC handlers, the timer service) send [`Command`]s through a [`Handle`]. The writer
//! task drains whatever is queued (up to `max_batch`), loads the instances and idempotency keys
//! the batch touches with one query each, runs [`decide`] for every command in order against an
//! in-batch overlay (so two commands to one instance in one batch see each other), and hands the
//! batch to a commit task, which writes all effects in one transaction and only then answers the
//! callers. The writer then updates the timer wheel, wakes the timer service and fills its cache.
//!
//! Pipelined: while batch N commits, the writer decides batch N+1 on top of N — N's instances
//! and request ids are N+1's overlay, and what N+1 must read from the database it reads on a
//! second connection ([`Store::beside`]). N+1 is committed only once N has. If N fails, N+1 was
//! decided on writes that never happened: it is decided again, from the database, before
//! anything of it is written or answered. So the disk does not wait for the decisions nor the
//! decisions for the disk, and no caller can tell.
//!
//! # Important
//! - A caller is answered after its transaction is durable. If the commit fails, every command
//!   of the batch is answered [`WriteError::Unavailable`] and nothing of it is visible.
//! - At most one batch is in flight, and batches commit in the order they were decided.
//! - The writer task is the only writer of the database and the only task that moves the timer
//!   horizon ([`Handle::extend`]); see [`crate::timer`] for why that matters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};

pub mod batch;

use batch::{kind_of, Builder, Built, GroupStep};

use crate::calendar::replan::{CalendarLoad, LoadError, Loaded, Planner};
use crate::calendar::Live;
use crate::clock::{Clock, Millis};
use crate::definition::Registry;
use crate::machine::{Command, CommandKind, Instance, Rejection};
use crate::store::{Batch, ReplanJob, Store};
use crate::telemetry::Metrics;
use crate::timer::{lock, ShardChange, TimerIndex};

/// The answer to a command that was applied (or had been applied before under its request id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The instance after the command.
    pub instance: Instance,
    /// The history entry the command produced (for a duplicate: the first request's).
    pub seq: u64,
    /// True when the request id had been seen with the same payload: nothing new was written.
    pub duplicate: bool,
}

/// Why a command was not applied.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// `decide` refused it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The request id was used before for another request.
    #[error("request id {key} was already used for a different request")]
    KeyReused {
        /// The request id.
        key: String,
    },
    /// Storage failed for a reason that passes; nothing was written. Safe to retry with the
    /// same request id.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Storage refused the batch (a constraint, a statement): a defect, nothing was written,
    /// and a retry will fail the same way.
    #[error("storage refused the write: {0}")]
    Internal(String),
    /// Stored data the batch needed does not decode or does not make sense (an instance row,
    /// a case's recorded supervisors).
    #[error("stored data is damaged: {0}")]
    DataLoss(String),
    /// A start under the number of an archived case ([`crate::store::Store::remove_archived`]).
    #[error("{} was archived into {}", .0.id, .0.archive)]
    Archived(Box<crate::store::ArchivedRow>),
    /// The engine is stopping.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// Another node changed an instance this batch decided on; nothing was written. [`Handle`]
    /// decides the command again (on fresh rows) before a caller sees this.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The batch fired timers of a shard this node no longer holds; nothing was written. The
    /// batch's other commands are decided again ([`Handle`] does it for callers; the timer
    /// service re-fires the timers of shards this node still holds).
    #[error("fenced: {0}")]
    Fenced(String),
    /// A timer fire for a shard this node does not hold: refused before it was decided; the
    /// shard's holder fires it.
    #[error("shard {0} is not held by this node")]
    NotHeld(u32),
    /// The connection failed during COMMIT: the write may have been applied. Safe to retry
    /// with the same request id, which answers the first outcome if it was.
    #[error("commit outcome unknown: {0}")]
    Indeterminate(String),
}

impl WriteError {
    /// Whether the command was refused for the batch's sake, not its own, and deciding it again
    /// on fresh rows will do: another node changed an instance first, or the batch was fenced
    /// for another command's shard.
    pub fn decide_again(&self) -> bool {
        matches!(self, WriteError::Conflict(_) | WriteError::Fenced(_))
    }
}

/// How often a command that met a write conflict is decided again before its caller is told.
/// A conflict needs two nodes changing one instance in the same instant: it seldom repeats.
const CONFLICT_RETRIES: usize = 8;

impl From<crate::store::Error> for WriteError {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as E;
        match e {
            E::Unavailable(m) => WriteError::Unavailable(m),
            E::Corrupt(m) => WriteError::DataLoss(m),
            E::Internal(m) => WriteError::Internal(m),
            E::Open { .. } => WriteError::Unavailable(e.to_string()),
            E::Conflict(m) => WriteError::Conflict(m),
            E::Fenced { .. } => WriteError::Fenced(e.to_string()),
            E::Indeterminate(m) => WriteError::Indeterminate(m),
        }
    }
}

/// Commands a group derives inside the writer from the instance its first command produced:
/// a fan-out decided where the state is authoritative, never from a read that may be stale.
pub type Derive = Arc<dyn Fn(&Instance) -> Result<Vec<GroupItem>, WriteError> + Send + Sync>;

type Reply = oneshot::Sender<Result<Applied, WriteError>>;
type GroupReply = oneshot::Sender<Result<Vec<Option<Applied>>, GroupError>>;

/// One command of an atomic group.
#[derive(Debug, Clone)]
pub struct GroupItem {
    /// The command.
    pub command: Command,
    /// When false, a rejection of this command skips it instead of failing the group (for
    /// "tell every open task" fan-outs where some tasks may already be closed).
    pub required: bool,
}

/// Why a group was not applied: the command that failed, and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("command {index} of the group ({instance}): {error}")]
pub struct GroupError {
    /// Position in the group (derived commands follow the given ones).
    pub index: usize,
    /// The instance that command was for.
    pub instance: String,
    /// The failure.
    pub error: WriteError,
}

/// The instance that names a group: its first command's ("" for an empty group).
fn first_instance(items: &[GroupItem]) -> String {
    items.first().map(|i| i.command.instance.clone()).unwrap_or_default()
}

impl GroupError {
    /// `error` for the group `items` as a whole.
    fn whole(items: &[GroupItem], error: WriteError) -> Self {
        GroupError { index: 0, instance: first_instance(items), error }
    }
}

/// What the writer task is asked to do.
enum Request {
    /// Decided into the next batch.
    Batched(Item),
    /// Served alone, between batches, once every batch before it has landed.
    Alone(Alone),
}

/// What the writer serves between batches, each by its owner ([`Writer::serve_alone`]).
enum Alone {
    /// Load the next page of timers due before the instant into the wheel; answers the number
    /// of timers loaded.
    Extend(Millis, oneshot::Sender<Result<usize, WriteError>>),
    /// Store a calendar file, put the new calendar set in force and start re-planning the
    /// timers it moves ([`crate::calendar::replan`]).
    LoadCalendar(CalendarLoad, oneshot::Sender<Result<Loaded, LoadError>>),
    /// Commit a batch prepared outside the writer (a catalog import), in a transaction of its
    /// own after the requests queued before it.
    Prepared(Box<Prepared>, oneshot::Sender<Result<(), WriteError>>),
    /// The node took shards (load their timers up to the horizon; also sent when another node
    /// armed timers in a held shard) or lost them (drop their timers from the wheel).
    Shards(ShardChange, oneshot::Sender<Result<(), WriteError>>),
    /// Another node loaded a calendar: read the stored files again and put them in force.
    ReloadCalendars(oneshot::Sender<Result<(), WriteError>>),
    /// Another node imported catalogs: read the newest versions again and put them in force.
    ReloadCatalogs(oneshot::Sender<Result<(), WriteError>>),
    /// Remove cases written to an archive ([`crate::archive`]), named by the archive file.
    RemoveArchived(Vec<crate::store::Removal>, String, oneshot::Sender<Result<crate::store::Removed, WriteError>>),
}

/// A batch prepared outside the writer, with what must still hold when its turn comes and what
/// follows its commit.
pub struct Prepared {
    /// What to write.
    pub batch: Batch,
    /// Asked after every request queued before has been committed, just before this commits:
    /// a reason refuses the batch as a [`WriteError::Conflict`] (prepare it again).
    pub still_valid: Box<dyn FnOnce() -> Result<(), String> + Send>,
    /// Run with the batch once it is durable, before the next batch is decided (puts what it
    /// stored in force).
    pub then: Box<dyn FnOnce(&Batch) + Send>,
}

/// A change to the outbox or the stream's cursors, from the delivery side. Delivery never
/// writes the database itself: only the writer does, so these ride in the next batch.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Delivery outcomes (delivered, retry later, dead).
    Marks(Vec<crate::store::OutboxMark>),
    /// Make dead letters (by key) pending again, their attempts reset.
    Revive(Vec<String>),
    /// Give dead letters (by key) up for good: `discarded`, their cases' later messages free.
    Discard(Vec<String>),
    /// A stream consumer's acknowledged position.
    Cursor(crate::store::ConsumerCursor),
    /// Forget a stream consumer (by name).
    DropConsumer(String),
}

/// A cheap, cloneable way to submit commands.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    /// The newest calendar generation whose re-plan (if any) has finished.
    replanned: tokio::sync::watch::Receiver<u64>,
}

impl Handle {
    /// Submits a command and waits until it is durable (or refused). A write conflict (another
    /// node changed the instance meanwhile) is decided again here, on fresh rows.
    pub async fn submit(&self, command: Command) -> Result<Applied, WriteError> {
        let mut tries = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            self.tx
                .send(Request::Batched(Item::One(command.clone(), reply)))
                .await
                .map_err(|_| WriteError::ShuttingDown)?;
            match rx.await.map_err(|_| WriteError::ShuttingDown)? {
                Err(e) if e.decide_again() && tries < CONFLICT_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// Queues a command; the answer arrives on the returned receiver.
    pub async fn send(&self, command: Command) -> Result<oneshot::Receiver<Result<Applied, WriteError>>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Batched(Item::One(command, reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        Ok(rx)
    }

    /// Applies `items` atomically: all required ones apply (in order, each seeing the ones
    /// before it) and commit in one transaction, or nothing is written. Only the first item's
    /// request id is honoured, for the whole group. Answers one entry per item: `None` for a
    /// non-required item that was skipped.
    pub async fn submit_group(&self, items: Vec<GroupItem>) -> Result<Vec<Option<Applied>>, GroupError> {
        self.submit_derived(items, None).await
    }

    /// Like [`submit_group`](Self::submit_group), and once the first item is decided, `derive`
    /// adds the commands that follow from its result (applied after the given ones, in the
    /// same transaction). A duplicate of the first item's request derives nothing.
    pub async fn submit_derived(
        &self,
        items: Vec<GroupItem>,
        derive: Option<Derive>,
    ) -> Result<Vec<Option<Applied>>, GroupError> {
        let gone = GroupError::whole(&items, WriteError::ShuttingDown);
        let mut tries = 0;
        loop {
            let (reply, rx) = oneshot::channel();
            let request = Request::Batched(Item::Group(items.clone(), derive.clone(), reply));
            self.tx.send(request).await.map_err(|_| gone.clone())?;
            match rx.await.map_err(|_| gone.clone())? {
                Err(e) if e.error.decide_again() && tries < CONFLICT_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// Tells the writer which shards' timers to load and drop; answers once the wheel has them.
    pub async fn shards(&self, load: Vec<u32>, drop: Vec<u32>) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        let change = ShardChange { load, drop };
        self.tx.send(Request::Alone(Alone::Shards(change, reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Reads the stored calendars again and puts them in force (another node loaded one).
    pub async fn reload_calendars(&self) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Alone(Alone::ReloadCalendars(reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Reads the stored catalogs again and puts them in force.
    pub async fn reload_catalogs(&self) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Alone(Alone::ReloadCatalogs(reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Commits a prepared batch in a transaction of its own; answers once it is durable and
    /// its `then` has run.
    pub async fn prepared(&self, prepared: Prepared) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Alone(Alone::Prepared(Box::new(prepared), reply)))
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Removes cases written to the archive file `archive`, each whole and only if unchanged
    /// since ([`crate::store::Store::remove_archived`]): one transaction between two batches, so
    /// keep `cases` short ([`crate::archive::REMOVE_CHUNK`]).
    pub async fn remove_archived(
        &self,
        cases: Vec<crate::store::Removal>,
        archive: String,
    ) -> Result<crate::store::Removed, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Alone(Alone::RemoveArchived(cases, archive, reply)))
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Stores a calendar file and puts it in force; the re-plan it starts runs in the writer's
    /// following batches.
    pub async fn load_calendar(&self, load: CalendarLoad) -> Result<Loaded, LoadError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Alone(Alone::LoadCalendar(load, reply))).await.map_err(|_| LoadError::ShuttingDown)?;
        rx.await.map_err(|_| LoadError::ShuttingDown)?
    }

    /// Records a change from the delivery side; answers once it is durable.
    pub async fn outbound(&self, change: Outbound) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Batched(Item::Outbound(change, reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Waits until every re-plan up to calendar generation `generation` has finished.
    pub async fn replanned(&self, generation: u64) -> Result<(), WriteError> {
        let mut rx = self.replanned.clone();
        rx.wait_for(|done| *done >= generation).await.map(|_| ()).map_err(|_| WriteError::ShuttingDown)
    }

    /// Asks the writer to page in timers due before `until`; returns how many were loaded.
    pub async fn extend(&self, until: Millis) -> Result<usize, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Alone(Alone::Extend(until, reply))).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most commands per transaction.
    pub max_batch: usize,
    /// Number of shards instances are spread over.
    pub shards: u32,
    /// Most timers read per horizon page.
    pub page: u32,
    /// Most instances kept in the writer's cache of committed instances (0: no cache).
    pub cache: usize,
    /// How long a request id is remembered (ms); older ones are forgotten and pruned.
    pub idempotency_retention: Millis,
    /// Most working-day timers re-planned per batch while a re-plan runs.
    pub replan_page: u32,
    /// Channel → push destination; a message on a channel not named here is stream only.
    pub routes: Arc<HashMap<String, String>>,
    /// Configured texts by message name or type: what such a message says, filled when it is
    /// written — so that the timeline and the stream show the text that is sent.
    pub texts: Arc<std::collections::BTreeMap<String, String>>,
    /// How long delivered and stream-only messages are kept (ms).
    pub outbox_retention: Millis,
    /// How far ahead of the clock the timer service keeps timers in the wheel (ms). With
    /// several nodes, a timer armed in another node's shard is told to its holder only if due
    /// within twice this: nodes' clocks must agree within a horizon (the system clock does).
    pub horizon: Millis,
    /// The shards this node holds when several nodes share the database; `None`: the only
    /// node (every shard is its own, no fencing).
    pub ownership: Option<Arc<crate::cluster::ownership::Ownership>>,
}

/// The writer task's state.
pub struct Writer<S: Store> {
    /// The writer's connection. Shared with the task that commits a batch while the writer
    /// decides the next; everything else takes it only once that batch has landed
    /// ([`Writer::settle`]), so the lock never waits on anything but a commit.
    store: Arc<tokio::sync::Mutex<S>>,
    /// A second connection for the next batch's reads while a commit holds `store`.
    beside: S,
    rx: mpsc::Receiver<Request>,
    registry: Arc<Registry>,
    calendars: Arc<Live>,
    /// The catalogs in force.
    catalogs: Arc<crate::catalog::Live>,
    /// The calendar files stored and the re-plans to run.
    planner: Planner,
    clock: Arc<dyn Clock>,
    timers: Arc<Mutex<TimerIndex>>,
    wake: Arc<Notify>,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Committed instances, so that a batch need not read them again. Coherent because this
    /// task is the database's only writer: an entry is replaced only after the commit that
    /// changed it. Bounded by `settings.cache`: when full, it is emptied (memory stays bounded
    /// and the database stays the truth).
    cache: HashMap<String, Instance>,
    /// The batch being committed, if any: the next batch is decided on top of it.
    flight: Option<Flight>,
    /// Requests received while deciding a batch that are served after it (those served alone,
    /// and whatever came after them).
    deferred: std::collections::VecDeque<Request>,
    /// Every handle is gone: once what was received is served, the writer ends.
    closed: bool,
    /// When expired idempotency keys were last pruned (engine time).
    pruned_at: Millis,
    /// Batches committed or attempted, for the logs.
    batches: u64,
    /// Bumped after every commit that wrote messages: wakes dispatchers and subscribers.
    published: Arc<tokio::sync::watch::Sender<u64>>,
    /// A commit failed in a way that may have committed after all (a connection lost during
    /// COMMIT): the timers it armed may be stored but not in the wheel. The held shards are
    /// loaded again before the next batch.
    reload_wheel: bool,
    /// Frees committed batches off the writer's path.
    retirer: Retirer,
}

/// A batch whose commit runs while the writer decides the next one (pipelining).
///
/// The next batch is decided against this one's instances and request ids as an overlay, as if
/// it had committed. It is committed only after this one has: if this one fails, the next one
/// was decided on writes that never happened and is decided again from the database
/// ([`Writer::process`]). Its callers are answered by the commit task itself, as soon as the
/// outcome is known; the rest of landing (wheel, cache, metrics) is the writer's.
struct Flight {
    task: tokio::task::JoinHandle<Box<Landed>>,
    /// The task's end, once seen while deciding the next batch.
    joined: Option<Result<Box<Landed>, tokio::task::JoinError>>,
    /// The instances as the batch leaves them. The next batch takes out those it uses; what is
    /// left goes to the cache once the batch has committed.
    live: HashMap<String, Result<Instance, WriteError>>,
    /// The request ids the batch records.
    keys: HashMap<String, crate::store::IdempotencyRow>,
    wheel_ops: Vec<crate::timer::WheelOp>,
    fired: Vec<batch::Fired>,
    counts: Vec<(&'static str, &'static str)>,
    /// Engine time the batch was decided at.
    now: Millis,
    /// The re-plan page the batch carries, if any.
    replanned: Option<ReplanJob>,
    /// Requests answered by the batch, for the logs.
    requests: usize,
}

/// What the commit task gives back.
struct Landed {
    batch: Batch,
    outcome: Result<(), crate::store::Error>,
    took: std::time::Duration,
}

/// What deciding a batch has gathered so far besides the builder's rows.
#[derive(Default)]
struct Acc {
    pending: Vec<Pending>,
    /// Refusals of keyed requests whose key was not stored when the batch read the keys:
    /// (index in `pending`, key, fingerprint). See `recheck_refusals`.
    refused_keyed: Vec<(usize, String, String)>,
    outbound: Vec<Outbound>,
    /// (shard, epoch) of the wheel's fires in this batch: checked in the transaction.
    fence: Vec<(u32, u64)>,
}

/// A batch decided and not yet committed.
struct Decided {
    built: Built,
    pending: Vec<Pending>,
    now: Millis,
    replanned: Option<ReplanJob>,
}

impl Decided {
    /// The batch's requests as they were given, to decide them again.
    fn into_items(self) -> Vec<Item> {
        self.pending.into_iter().map(Pending::into_item).collect()
    }
}

/// How long the writer must have had nothing to do before it runs a batch of re-planning alone.
const REPLAN_QUIET: std::time::Duration = std::time::Duration::from_millis(2);

/// Expired idempotency keys are pruned at most this often, a bounded number at a time.
const PRUNE_EVERY: Millis = 60 * 60 * 1000;
/// Most keys one prune deletes: one statement the next batch waits behind, so kept small.
const PRUNE_LIMIT: u32 = 5_000;

/// Instances read per page when the statistics counters are first built.
const FIGURES_PAGE: u32 = 2_000;
/// With a backlog (a full page pruned), the next page comes this much later — not after the
/// very next batch, which put a large delete in front of every commit. 5,000 keys a second
/// works off any realistic backlog while costing intake a few percent at most.
const PRUNE_BACKLOG_PAUSE: Millis = 1_000;

/// Creates a writer and its handle. Run the writer with [`Writer::run`].
pub fn channel<S: Store>(
    store: S,
    context: &crate::context::Context,
    timers: Arc<Mutex<TimerIndex>>,
    wake: Arc<Notify>,
    settings: Settings,
) -> (Writer<S>, Handle) {
    let (tx, rx) = mpsc::channel(settings.max_batch.max(1) * 4);
    let (planner, replanned_rx) = Planner::new(context.calendars.clone());
    let beside = store.beside();
    (
        Writer {
            store: Arc::new(tokio::sync::Mutex::new(store)),
            beside,
            rx,
            registry: context.registry.clone(),
            calendars: context.calendars.clone(),
            catalogs: context.catalogs.clone(),
            planner,
            clock: context.clock.clone(),
            timers,
            wake,
            settings,
            metrics: context.metrics.clone(),
            cache: HashMap::new(),
            flight: None,
            deferred: std::collections::VecDeque::new(),
            closed: false,
            pruned_at: Millis::MIN,
            batches: 0,
            published: context.published.clone(),
            reload_wheel: false,
            retirer: Retirer::start(),
        },
        Handle { tx, replanned: replanned_rx },
    )
}

/// A request decided into a batch, with its reply.
enum Item {
    /// Apply a command.
    One(Command, Reply),
    /// Apply several commands all-or-nothing, in one transaction; the optional [`Derive`]
    /// adds commands computed from the first command's result.
    Group(Vec<GroupItem>, Option<Derive>, GroupReply),
    /// Record what delivery learned, in the batch's transaction.
    Outbound(Outbound, oneshot::Sender<Result<(), WriteError>>),
}

/// The reply owed to a request once the batch's fate is known, with the request as it was
/// given: kept until the batch is committed, because if the batch before it fails, it is
/// decided again.
enum Owed {
    One(Reply, Result<Applied, WriteError>, Command),
    Group(GroupReply, Result<Vec<Option<Applied>>, GroupError>, Vec<GroupItem>, Option<Derive>),
    /// A change from the delivery side: answered once durable.
    Outbound(oneshot::Sender<Result<(), WriteError>>, Outbound),
}

struct Pending {
    owed: Owed,
    /// Whether the answer is only true once this batch commits.
    needs_commit: bool,
}

impl Pending {
    fn into_item(self) -> Item {
        match self.owed {
            Owed::One(reply, _, command) => Item::One(command, reply),
            Owed::Group(reply, _, items, derive) => Item::Group(items, derive, reply),
            Owed::Outbound(reply, change) => Item::Outbound(change, reply),
        }
    }
}

/// The connection a batch's reads go to ([`Writer::reads`]).
enum Reads<'a, S> {
    Own(tokio::sync::MutexGuard<'a, S>),
    Beside(&'a mut S),
}

impl<S> std::ops::Deref for Reads<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        match self {
            Reads::Own(guard) => guard,
            Reads::Beside(store) => store,
        }
    }
}

impl<S> std::ops::DerefMut for Reads<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        match self {
            Reads::Own(guard) => guard,
            Reads::Beside(store) => store,
        }
    }
}

/// What the writer's loop waits for next.
enum Next {
    Request(Option<Request>),
    Landed(Result<Box<Landed>, tokio::task::JoinError>),
}

impl<S: Store> Writer<S> {
    /// Reads the calendars the database holds, puts them in force, and picks up unfinished
    /// re-plans. Call before [`run`](Self::run).
    pub async fn prepare(&mut self) -> Result<(), crate::store::Error> {
        {
            let mut store = self.store.lock().await;
            self.planner.prepare(&mut *store, true).await?;
        }
        self.prepare_catalogs().await?;
        self.prepare_figures().await
    }

    /// Counts the instances a database held before it had statistics counters (once; from then
    /// on every commit keeps them). Before the writer runs: nothing commits while it counts.
    async fn prepare_figures(&mut self) -> Result<(), crate::store::Error> {
        use crate::domain::figures::Tally;
        let mut store = self.store.lock().await;
        if store.figures_built().await? {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let workflows = [crate::domain::CASE_WORKFLOW, crate::domain::TASK_WORKFLOW];
        let mut tally = Tally::default();
        let mut after: Option<String> = None;
        let mut counted = 0u64;
        loop {
            let page = store.instances_page(&workflows, after.as_deref(), FIGURES_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            counted += page.len() as u64;
            for row in &page {
                tally.change(None::<&crate::store::InstanceRow>, Some(row));
            }
        }
        let rows = tally.rows();
        if store.install_figures(&rows, counted, self.clock.now()).await? {
            tracing::info!(
                instances = counted,
                counters = rows.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "statistics counters built from the stored cases and tasks"
            );
        }
        Ok(())
    }

    /// Puts the stored catalogs in force.
    async fn prepare_catalogs(&mut self) -> Result<(), crate::store::Error> {
        let versions = self.store.lock().await.catalogs().await?;
        self.catalogs.replace(crate::catalog::Catalogs::new(versions));
        Ok(())
    }

    /// Serves requests until every [`Handle`] is dropped.
    pub async fn run(mut self) {
        loop {
            let next = if let Some(r) = self.deferred.pop_front() {
                Next::Request(Some(r))
            } else if self.closed {
                break;
            } else if let Some(flight) = self.flight.as_mut() {
                match flight.joined.take() {
                    Some(joined) => Next::Landed(joined),
                    // A batch is committing: land it once it has, or decide the next meanwhile.
                    None => tokio::select! {
                        biased;
                        joined = &mut flight.task => Next::Landed(joined),
                        r = self.rx.recv() => Next::Request(r),
                    },
                }
            } else if !self.planner.running() {
                Next::Request(self.rx.recv().await)
            } else if let Some(until) = self.planner.paused_until() {
                // A re-plan page failed: requests are served meanwhile, the page waits.
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(r) => Next::Request(r),
                    Err(_) => {
                        self.planner.resume();
                        continue;
                    }
                }
            } else {
                // A batch of re-planning alone only after a quiet moment: callers between two
                // requests must not find a full page in front of them.
                match tokio::time::timeout(REPLAN_QUIET, self.rx.recv()).await {
                    Ok(r) => Next::Request(r),
                    Err(_) => {
                        self.process(Vec::new()).await;
                        continue;
                    }
                }
            };
            let first = match next {
                Next::Landed(joined) => {
                    if let Some(flight) = self.flight.take() {
                        self.land(flight, joined).await;
                    }
                    continue;
                }
                Next::Request(Some(r)) => r,
                Next::Request(None) => break,
            };
            match first {
                Request::Alone(alone) => self.serve_alone(alone).await,
                Request::Batched(item) => {
                    let mut items = vec![item];
                    let room = self.room();
                    self.drain(&mut items, room);
                    self.process(items).await;
                }
            }
        }
        // Every handle is gone; the last batch's outcome is still owed to the logs and the wheel.
        self.settle().await;
    }

    /// Serves a request that runs between batches, each by its owner: timer paging and shard
    /// changes by [`crate::timer`], calendar loads by the [`Planner`], prepared batches (catalog
    /// imports, [`crate::catalog::submit`]) committed as given, archived cases removed by the
    /// store ([`crate::archive`]). Every batch before it has landed
    /// first.
    async fn serve_alone(&mut self, alone: Alone) {
        self.settle().await;
        let wheel = crate::timer::Paging { timers: &self.timers, wake: &self.wake, page: self.settings.page };
        match alone {
            Alone::Extend(until, reply) => {
                let held = self.settings.ownership.as_ref().map(|o| o.held());
                let mut store = self.store.lock().await;
                let _ = reply.send(wheel.extend(&mut *store, until, held.as_deref()).await.map_err(WriteError::from));
            }
            Alone::Shards(change, reply) => {
                let own = self.settings.ownership.as_deref();
                let mut store = self.store.lock().await;
                let _ = reply.send(
                    wheel
                        .change_shards(&mut *store, &change, self.settings.shards, own)
                        .await
                        .map_err(WriteError::from),
                );
            }
            Alone::LoadCalendar(load, reply) => {
                let mut store = self.store.lock().await;
                let _ = reply.send(self.planner.load(&mut *store, load, self.clock.now()).await);
            }
            Alone::ReloadCalendars(reply) => {
                let mut store = self.store.lock().await;
                let _ = reply.send(self.planner.prepare(&mut *store, false).await.map_err(WriteError::from));
            }
            Alone::ReloadCatalogs(reply) => {
                let _ = reply.send(self.prepare_catalogs().await.map_err(WriteError::from));
            }
            Alone::Prepared(prepared, reply) => {
                let _ = reply.send(self.commit_prepared(prepared).await);
            }
            Alone::RemoveArchived(cases, archive, reply) => {
                // Out of the cache first: a case removed must be read (and not found) again.
                for id in cases.iter().flat_map(crate::store::Removal::ids) {
                    self.cache.remove(id);
                }
                let at = chrono::Utc::now().timestamp_millis();
                let mut store = self.store.lock().await;
                let _ = reply.send(store.remove_archived(&cases, &archive, at).await.map_err(WriteError::from));
            }
        }
    }

    /// Commits a batch prepared outside, if it still holds (see [`Prepared`]).
    async fn commit_prepared(&mut self, prepared: Box<Prepared>) -> Result<(), WriteError> {
        let Prepared { batch, still_valid, then } = *prepared;
        still_valid().map_err(WriteError::Conflict)?;
        self.store.lock().await.commit(&batch).await?;
        then(&batch);
        Ok(())
    }

    /// The connection the batch being decided reads on: while a batch commits, the one beside;
    /// otherwise the writer's own, whose page cache is warm.
    async fn reads(&mut self) -> Reads<'_, S> {
        match self.flight {
            Some(_) => Reads::Beside(&mut self.beside),
            None => Reads::Own(self.store.lock().await),
        }
    }

    /// Stored idempotency keys among `keys`, with those the batch in flight records over them.
    async fn read_keys(&mut self, keys: &[&str]) -> Result<HashMap<String, crate::store::IdempotencyRow>, WriteError> {
        let mut stored = self.reads().await.load_idempotency(keys).await?;
        if let Some(flight) = &self.flight {
            for key in keys {
                if let Some(row) = flight.keys.get(*key) {
                    stored.insert((*key).to_owned(), row.clone());
                }
            }
        }
        Ok(stored)
    }

    /// With several nodes, a batch's reads are not one snapshot: the idempotency keys are read
    /// first, the instances after (and a group's derived instances later still). Two identical
    /// requests sent to two nodes at once can then meet like this: this node read no key, the
    /// other node committed the request, and this node read the instances it left — a case that
    /// exists, a task already created — and refused. The refusal is about the request's own
    /// first application: its key is read again, and a request now found applied with the same
    /// content is decided again (as a conflict), where it is answered as the duplicate it is.
    async fn recheck_refusals(&mut self, pending: &mut [Pending], refused: &[(usize, String, String)]) {
        let keys: Vec<&str> = refused.iter().map(|(_, k, _)| k.as_str()).collect();
        let stored = match self.read_keys(&keys).await {
            Ok(rows) => rows,
            // The refusal stands; a retry by the caller meets the key.
            Err(e) => return tracing::debug!(error = %e, "cannot read the keys of refused requests again"),
        };
        for (index, key, fingerprint) in refused {
            if stored.get(key).is_none_or(|row| row.fingerprint != *fingerprint) {
                continue;
            }
            let again = WriteError::Conflict(format!("request {key} was applied by another node meanwhile"));
            tracing::debug!(%key, "a refusal met the same request applied by another node; deciding again");
            self.metrics.conflicts.inc();
            match &mut pending[*index].owed {
                Owed::One(_, result, _) => *result = Err(again),
                Owed::Group(_, result, items, _) => *result = Err(GroupError::whole(items, again)),
                Owed::Outbound(..) => {}
            }
        }
    }

    /// Adds the next page of the running re-plan to the batch: one `Replan` command per
    /// instance the [`Planner`] names. Answers the job as it stands once the batch commits, or
    /// `None` when no re-plan runs or the page could not be read. Only with no batch in flight
    /// (the page is read on the writer's connection).
    async fn replan_page(&mut self, builder: &mut Builder<'_>, commands: usize) -> Option<ReplanJob> {
        let mut page = {
            let mut store = self.store.lock().await;
            self.planner.next_page(&mut *store, commands, self.settings.replan_page).await?
        };
        let instances: Vec<&str> = page.instances.iter().map(String::as_str).collect();
        if let Err(e) = self.load(builder, &instances).await {
            tracing::warn!(error = %e, calendar = %page.job.label, "cannot read the instances to re-plan; will try again");
            self.planner.pause();
            return None;
        }
        let moved = page.instances.iter().filter(|i| builder.one(&page.command(i)).0.is_ok()).count();
        page.job.moved += moved as u64;
        builder.record_replan(page.job.clone());
        Some(page.job)
    }

    /// Brings the instances `ids` names into the batch: as the batch in flight leaves them,
    /// else from the cache, else with one read. Taken out, not copied: once this batch commits
    /// every instance of it goes to the cache; if it fails they are simply read again.
    async fn load(&mut self, builder: &mut Builder<'_>, ids: &[&str]) -> Result<(), WriteError> {
        let unseen = builder.unseen(ids.iter().copied());
        let (mut cached, mut missing) = (Vec::new(), Vec::new());
        for id in &unseen {
            let in_flight = self.flight.as_mut().and_then(|f| f.live.remove(*id));
            match in_flight {
                Some(Ok(instance)) => cached.push(instance),
                // Not readable when the batch in flight read it: reading again tells the same
                // or better.
                Some(Err(_)) | None => match self.cache.remove(*id) {
                    Some(instance) => cached.push(instance),
                    None => missing.push(*id),
                },
            }
        }
        let (rows, archived) = if missing.is_empty() {
            (HashMap::new(), HashMap::new())
        } else {
            let mut reads = self.reads().await;
            let rows = reads.load_instances(&missing).await?;
            // An archived case's number stays taken: its timeline is in the archive, and a
            // second case under it would make the two indistinguishable there. Read here, in
            // the batch that would start it, so that no archiving slips between the read and
            // the commit: archiving removes cases between batches.
            let absent: Vec<&str> = missing.iter().copied().filter(|id| !rows.contains_key(*id)).collect();
            let archived = if absent.is_empty() { HashMap::new() } else { reads.load_archived(&absent).await? };
            (rows, archived)
        };
        builder.insert_loaded(&unseen, cached, rows);
        builder.insert_archived(archived);
        Ok(())
    }

    /// Decides a batch and commits it. With a batch in flight, this one is decided on top of
    /// it, and committed once that one has; if that one failed, this one is decided again.
    async fn process(&mut self, items: Vec<Item>) {
        use tracing::Instrument;
        if self.planner.running() || self.reload_wheel {
            // Both read timers on the writer's connection.
            self.settle().await;
        }
        if self.reload_wheel {
            let held = self.settings.ownership.as_ref().map(|o| o.held()).unwrap_or_default();
            let wheel = crate::timer::Paging { timers: &self.timers, wake: &self.wake, page: self.settings.page };
            let mut store = self.store.lock().await;
            match wheel.reload(&mut *store, &held).await {
                Ok(_) => self.reload_wheel = false,
                Err(e) => tracing::debug!(error = %e, "cannot reload the wheel yet"),
            }
        }
        let mut items = items;
        loop {
            self.batches += 1;
            // Instrumented, not entered: a guard held across an await would tag other tasks' events.
            let span = tracing::debug_span!("batch", id = self.batches, requests = items.len());
            let decided = self.decide(items).instrument(span.clone()).await;
            if self.settle().await {
                self.launch(decided, span);
                // A task spawned from a worker waits in that worker's own next-task slot, where
                // no other worker can take it, until the spawner yields. Yield now, so that the
                // commit starts at once rather than after the next batch's first decisions.
                tokio::task::yield_now().await;
                return;
            }
            // (A re-plan page is added only with no batch in flight: this batch carries none.)
            tracing::debug!(parent: &span, "the batch before failed; deciding this one again on what is stored");
            items = decided.into_items();
            if items.is_empty() {
                return;
            }
        }
    }

    /// Decides `items` into a batch — and, while the batch before it commits, every request
    /// that arrives meanwhile (up to `max_batch`): the batch is as large as without pipelining,
    /// and only its last requests are decided after the commit before it has ended.
    async fn decide(&mut self, items: Vec<Item>) -> Decided {
        let mut now = self.clock.now();
        let (registry, calendars) = (self.registry.clone(), self.calendars.current());
        let mut builder = Builder::new(
            &registry,
            &calendars,
            self.settings.shards,
            self.settings.idempotency_retention,
            now,
            HashMap::new(),
        );
        let mut acc = Acc::default();
        self.decide_more(&mut builder, &mut acc, items).await;
        while acc.pending.len() < self.room() {
            let Some(flight) = self.flight.as_mut() else { break };
            if flight.joined.is_some() {
                break;
            }
            let next = match self.deferred.pop_front() {
                Some(r) => Next::Request(Some(r)),
                None => tokio::select! {
                    biased;
                    joined = &mut flight.task => Next::Landed(joined),
                    r = self.rx.recv() => Next::Request(r),
                },
            };
            let first = match next {
                Next::Landed(joined) => {
                    flight.joined = Some(joined);
                    break;
                }
                Next::Request(None) => {
                    self.closed = true;
                    break;
                }
                Next::Request(Some(r)) => r,
            };
            let mut items = Vec::new();
            let stop = match first {
                Request::Batched(item) => {
                    items.push(item);
                    let room = self.room().saturating_sub(acc.pending.len());
                    self.drain(&mut items, room)
                }
                alone => {
                    self.deferred.push_front(alone);
                    true
                }
            };
            // Commands decided later in a batch are decided at a later instant, as they would
            // have been in the next batch.
            now = now.max(self.clock.now());
            builder.advance(now);
            self.decide_more(&mut builder, &mut acc, items).await;
            if stop {
                break;
            }
        }
        let Acc { mut pending, refused_keyed, outbound, mut fence } = acc;
        if self.settings.ownership.is_some() && !refused_keyed.is_empty() {
            self.recheck_refusals(&mut pending, &refused_keyed).await;
        }
        let replanned = if self.flight.is_none() { self.replan_page(&mut builder, pending.len()).await } else { None };
        builder.fire_due_now();
        let mut built = builder.finish();
        for change in outbound {
            match change {
                Outbound::Marks(marks) => built.batch.marks.extend(marks),
                Outbound::Revive(keys) => built.batch.revive.extend(keys),
                Outbound::Discard(keys) => {
                    let at = chrono::Utc::now().timestamp_millis();
                    built.batch.discard.extend(keys.into_iter().map(|k| (k, at)));
                }
                Outbound::Cursor(cursor) => built.batch.cursors.push(cursor),
                Outbound::DropConsumer(name) => built.batch.dropped_consumers.push(name),
            }
        }
        built.batch.marks = latest_marks(std::mem::take(&mut built.batch.marks));
        // The batch's instances by id, once (only when configured texts need their variables).
        let vars: HashMap<&str, &serde_json::Map<String, serde_json::Value>> = if self.settings.texts.is_empty() {
            HashMap::new()
        } else {
            built.batch.instances.iter().map(|i| (i.id.as_str(), &i.vars)).collect()
        };
        for row in &mut built.batch.outbox {
            row.destination = self.settings.routes.get(&row.message.channel).cloned();
            if !self.settings.texts.is_empty() {
                let vars = vars.get(row.instance.as_str()).copied();
                crate::outbound::texts::apply(&self.settings.texts, &mut row.message, &row.instance, vars);
            }
        }
        if let Some(own) = &self.settings.ownership {
            // Shards are held by one node at a time: the lowest one held names a stripe no live
            // node shares. A node holding none shares the one past the last shard.
            built.batch.stripe = own.held().into_iter().min().unwrap_or(own.shards());
            if !fence.is_empty() {
                fence.sort_unstable();
                fence.dedup();
                built.batch.fence = Some(crate::store::Fence { node: own.node().to_owned(), shards: fence });
            }
            // Only timers a holder's wheel may already cover need telling: one due beyond every
            // node's horizon is paged in by its holder when the horizon reaches it. Telling about
            // every timer cut every batch of the holders short (a rescan runs between batches).
            let soon = now.saturating_add(self.settings.horizon.saturating_mul(2));
            let mut others: Vec<u32> = built
                .batch
                .timers
                .iter()
                .filter_map(|(_, armed)| armed.as_ref().filter(|(t, _)| t.due <= soon).map(|(_, shard)| *shard))
                .filter(|shard| !own.holds(*shard))
                .collect();
            others.sort_unstable();
            others.dedup();
            built.batch.notify_shards = others;
            // Another node's shard: its holder loads the timer when told at commit.
            built.wheel_ops.retain(|op| match op {
                crate::timer::WheelOp::Insert(key) => own.holds_instance(&key.instance),
                crate::timer::WheelOp::Cancel(_) => true,
            });
        }
        Decided { built, pending, now, replanned }
    }

    /// Adds queued requests to `items` — those put back first, then the queue's — until it
    /// holds `room`, stopping before the first one served alone. That one is put back first in
    /// line, to be served after this batch: what was queued before it is committed first (a
    /// page of timers read sees it; commands sent under a calendar or catalogs are decided on
    /// them). Answers whether it stopped there.
    fn drain(&mut self, items: &mut Vec<Item>, room: usize) -> bool {
        while items.len() < room {
            let request = match self.deferred.pop_front() {
                Some(r) => r,
                None => match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => return false,
                },
            };
            match request {
                Request::Batched(item) => items.push(item),
                alone => {
                    self.deferred.push_front(alone);
                    return true;
                }
            }
        }
        false
    }

    /// How many requests the batch being decided may hold: `max_batch`, less the requests of
    /// the batch in flight (at least one). Two batches are in memory at once only within the
    /// bound one batch had without pipelining: a burst (10,000 deadlines due at one instant)
    /// does not double the writer's peak.
    fn room(&self) -> usize {
        let in_flight = self.flight.as_ref().map_or(0, |f| f.requests);
        self.settings.max_batch.saturating_sub(in_flight).max(1)
    }

    /// Decides `items` into the batch `builder` is building: reads their request ids and
    /// instances (one query each), then decides each in order. If the reads fail, `items` are
    /// answered with the error and the batch goes on without them.
    async fn decide_more(&mut self, builder: &mut Builder<'_>, acc: &mut Acc, items: Vec<Item>) {
        let mut ids: Vec<&str> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        for item in &items {
            match item {
                Item::One(c, _) => {
                    ids.push(&c.instance);
                    keys.extend(c.idempotency.as_ref().map(|i| i.key.as_str()));
                }
                Item::Group(g, _, _) => {
                    ids.extend(g.iter().map(|i| i.command.instance.as_str()));
                    keys.extend(g.first().and_then(|i| i.command.idempotency.as_ref()).map(|i| i.key.as_str()));
                }
                Item::Outbound(..) => {}
            }
        }
        if !keys.is_empty() {
            match self.read_keys(&keys).await {
                Ok(rows) => builder.know_keys(rows),
                Err(e) => return fail_all(items, e),
            }
        }
        if let Err(e) = self.load(builder, &ids).await {
            return fail_all(items, e);
        }
        // The instances groups will derive commands for (a licence's new tasks), read for the
        // whole batch in one query instead of one per group. A failure here is not the
        // batch's: each group then asks for its own and meets the error itself.
        let mut hinted: Vec<String> = Vec::new();
        for item in &items {
            if let Item::Group(group, Some(derive), _) = item {
                hinted.extend(builder.derived_ids(group, Some(derive)));
            }
        }
        if !hinted.is_empty() {
            let hinted: Vec<&str> = hinted.iter().map(String::as_str).collect();
            if let Err(e) = self.load(builder, &hinted).await {
                tracing::debug!(error = %e, "cannot read derived instances ahead; each group reads its own");
            }
        }
        for item in items {
            match item {
                Item::One(command, reply)
                    if matches!(command.kind, CommandKind::Timer { .. }) && self.settings.ownership.is_some() =>
                {
                    let shard = crate::store::shard_of(&command.instance, self.settings.shards);
                    match self.settings.ownership.as_ref().and_then(|o| o.epoch(shard)) {
                        Some(epoch) => acc.fence.push((shard, epoch)),
                        None => {
                            self.metrics.fenced.inc();
                            let _ = reply.send(Err(WriteError::NotHeld(shard)));
                            continue;
                        }
                    }
                    let (result, needs_commit) = builder.one(&command);
                    trace_command(&command, &result);
                    acc.pending.push(Pending { owed: Owed::One(reply, result, command), needs_commit });
                }
                Item::Outbound(change, reply) => {
                    acc.outbound.push(change.clone());
                    acc.pending.push(Pending { owed: Owed::Outbound(reply, change), needs_commit: true });
                }
                Item::One(command, reply) => {
                    let (result, needs_commit) = builder.one(&command);
                    trace_command(&command, &result);
                    if let (Err(WriteError::Rejected(_)), Some(idem)) = (&result, &command.idempotency) {
                        acc.refused_keyed.push((acc.pending.len(), idem.key.clone(), idem.fingerprint.clone()));
                    }
                    acc.pending.push(Pending { owed: Owed::One(reply, result, command), needs_commit });
                }
                Item::Group(group, derive, reply) => {
                    let (result, needs_commit) = loop {
                        match builder.group(&group, derive.as_ref()) {
                            GroupStep::Done(result, needs_commit) => break (result, needs_commit),
                            GroupStep::Load(more) => {
                                let more: Vec<&str> = more.iter().map(String::as_str).collect();
                                if let Err(error) = self.load(builder, &more).await {
                                    break (Err(GroupError::whole(&group, error)), false);
                                }
                            }
                        }
                    };
                    for (i, item) in group.iter().enumerate() {
                        let outcome = match &result {
                            Ok(_) => "applied",
                            Err(e) if e.index == i => "refused",
                            Err(_) => "not applied",
                        };
                        tracing::debug!(instance = %item.command.instance, kind = kind_of(&item.command), outcome, "group command");
                    }
                    let key = group.first().and_then(|i| i.command.idempotency.as_ref());
                    if let (Err(GroupError { error: WriteError::Rejected(_), .. }), Some(idem)) = (&result, key) {
                        acc.refused_keyed.push((acc.pending.len(), idem.key.clone(), idem.fingerprint.clone()));
                    }
                    acc.pending.push(Pending { owed: Owed::Group(reply, result, group, derive), needs_commit });
                }
            }
        }
    }

    /// Starts committing a decided batch; the batch before it has landed.
    fn launch(&mut self, decided: Decided, span: tracing::Span) {
        use tracing::Instrument;
        let Decided { built, pending, now, replanned } = decided;
        let Built { batch, wheel_ops, fired, counts, live, .. } = built;
        let keys = batch.idempotency.iter().cloned().collect();
        let requests = pending.len();
        let task = tokio::spawn(commit_and_answer(self.store.clone(), batch, pending).instrument(span));
        self.flight =
            Some(Flight { task, joined: None, live, keys, wheel_ops, fired, counts, now, replanned, requests });
    }

    /// Waits for the batch in flight, if any, and lands it. Answers whether it committed (true
    /// when there was none).
    async fn settle(&mut self) -> bool {
        let Some(mut flight) = self.flight.take() else { return true };
        let joined = match flight.joined.take() {
            Some(joined) => joined,
            None => (&mut flight.task).await,
        };
        self.land(flight, joined).await
    }

    /// After a batch's commit (whose callers the commit task has answered): the metrics, the
    /// wheel, the cache, the logs. Answers whether the batch committed.
    async fn land(&mut self, flight: Flight, joined: Result<Box<Landed>, tokio::task::JoinError>) -> bool {
        let Flight { live, wheel_ops, fired, counts, now, replanned, requests, .. } = flight;
        let Landed { batch, outcome, took } = match joined {
            Ok(landed) => *landed,
            // The commit task died (a panic): its callers were told the engine is stopping (their
            // replies were dropped), and whether it committed is unknown.
            Err(e) => Landed {
                batch: Batch::default(),
                outcome: Err(crate::store::Error::Indeterminate(format!("the commit task failed: {e}"))),
                took: std::time::Duration::ZERO,
            },
        };
        match outcome {
            Ok(()) => {
                if !batch.is_empty() {
                    self.metrics.commit_seconds.observe(took.as_secs_f64());
                    self.metrics.batch_size.observe(batch.history.len() as f64);
                    self.metrics.outbox_written.inc_by(batch.outbox.len() as u64);
                }
                for (kind, result) in &counts {
                    self.metrics.commands.with_label_values(&[*kind, *result]).inc();
                }
                let committed_at = self.clock.now();
                if !fired.is_empty() {
                    self.metrics.last_fire_commit_ms.set(committed_at);
                }
                for f in &fired {
                    self.metrics.timers_fired.inc();
                    self.metrics.fire_lateness_seconds.observe((committed_at - f.due).max(0) as f64 / 1000.0);
                    if let Some(responsible) = &f.breach_of {
                        self.metrics.breaches.with_label_values(&[f.workflow.as_str(), responsible.as_str()]).inc();
                    }
                }
                if !wheel_ops.is_empty() && lock(&self.timers).apply(wheel_ops) {
                    self.wake.notify_one();
                }
                if self.settings.cache > 0 {
                    if self.cache.len() + live.len() > self.settings.cache {
                        self.cache.clear();
                    }
                    for (id, instance) in live {
                        if let Ok(instance) = instance {
                            self.cache.insert(id, instance);
                        }
                    }
                }
                if !batch.outbox.is_empty() || !batch.revive.is_empty() {
                    self.published.send_modify(|n| *n = n.wrapping_add(1));
                }
                tracing::debug!(commands = batch.history.len(), fired = fired.len(), "batch committed");
                if let Some(job) = replanned {
                    self.metrics.replanned.inc_by(self.planner.page_committed(job));
                }
                self.prune(now).await;
                if !batch.history.is_empty() {
                    self.retirer.retire(batch);
                }
                true
            }
            Err(e) => {
                match &e {
                    // Expected between nodes and decided again: counted, not paged.
                    crate::store::Error::Conflict(_) => {
                        self.metrics.conflicts.inc();
                        tracing::debug!(error = %e, requests, "group commit refused; nothing of the batch was written; deciding again");
                    }
                    crate::store::Error::Fenced { lost, .. } => {
                        self.metrics.fenced.inc();
                        // Let go of the lost shards now rather than at the keeper's next tick:
                        // the batch's other fires and commands are decided again at once, and
                        // must not meet the same fence. The keeper tells the new holder.
                        if let Some(own) = &self.settings.ownership {
                            own.taken(lost);
                            crate::timer::drop_shards(&self.timers, lost, self.settings.shards);
                        }
                        tracing::debug!(error = %e, requests, "group commit refused; nothing of the batch was written; deciding again");
                    }
                    _ => {
                        // Lost during COMMIT, the transaction may have committed: its timers
                        // would then be stored but not in the wheel.
                        if self.settings.ownership.is_some() {
                            self.reload_wheel = true;
                        }
                        if matches!(e, crate::store::Error::Indeterminate(_)) {
                            tracing::error!(error = %e, requests, "group commit's outcome is unknown; callers are told to retry with their request id");
                        } else {
                            tracing::error!(error = %e, requests, "group commit failed; nothing of the batch was written");
                        }
                    }
                }
                for (kind, _) in &counts {
                    self.metrics.commands.with_label_values(&[*kind, "failed"]).inc();
                }
                // The batch failed (a full disk): the re-plan waits instead of retrying at once.
                if replanned.is_some() {
                    self.planner.pause();
                }
                false
            }
        }
    }

    /// Forgets request ids older than the retention and delivered messages older than theirs,
    /// a bounded number at a time, at most once per [`PRUNE_EVERY`]. Runs after the batch's callers have been answered.
    async fn prune(&mut self, now: Millis) {
        if now.saturating_sub(self.pruned_at) < PRUNE_EVERY {
            return;
        }
        let before = now.saturating_sub(self.settings.idempotency_retention);
        let outbox_before = now.saturating_sub(self.settings.outbox_retention);
        let mut store = self.store.lock().await;
        let pruned = match store.prune_idempotency(before, PRUNE_LIMIT).await {
            Ok(keys) => store.prune_outbox(outbox_before, PRUNE_LIMIT).await.map(|messages| {
                if messages > 0 {
                    tracing::debug!(pruned = messages, "pruned delivered messages past their retention");
                }
                keys.max(messages)
            }),
            Err(e) => Err(e),
        };
        match pruned {
            Ok(n) => {
                // A full page means more may be waiting: come back after a short pause.
                self.pruned_at = if n < u64::from(PRUNE_LIMIT) {
                    now
                } else {
                    now.saturating_sub(PRUNE_EVERY).saturating_add(PRUNE_BACKLOG_PAUSE)
                };
                if n > 0 {
                    tracing::debug!(pruned = n, "forgot expired request ids");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune expired request ids; will try again");
                self.pruned_at = now;
            }
        }
    }
}

/// The commit task: commits `batch` and answers its callers as soon as the outcome is known.
async fn commit_and_answer<S: Store>(
    store: Arc<tokio::sync::Mutex<S>>,
    batch: Batch,
    pending: Vec<Pending>,
) -> Box<Landed> {
    let started = std::time::Instant::now();
    let outcome = if batch.is_empty() { Ok(()) } else { store.lock().await.commit(&batch).await };
    let took = started.elapsed();
    answer(pending, outcome.as_ref().map_err(|e| WriteError::from(e.clone())));
    Box::new(Landed { batch, outcome, took })
}

/// Answers a batch's callers: what was decided if the batch committed (or if the answer did not
/// need it to), else why it did not.
fn answer(pending: Vec<Pending>, outcome: Result<&(), WriteError>) {
    for p in pending {
        match (p.owed, &outcome) {
            (Owed::One(reply, result, _), Ok(_)) => drop(reply.send(result)),
            (Owed::Group(reply, result, ..), Ok(_)) => drop(reply.send(result)),
            (Owed::Outbound(reply, _), Ok(_)) => drop(reply.send(Ok(()))),
            (Owed::Outbound(reply, _), Err(failed)) => drop(reply.send(Err(failed.clone()))),
            (Owed::One(reply, result, _), Err(failed)) => {
                drop(reply.send(if p.needs_commit { Err(failed.clone()) } else { result }))
            }
            (Owed::Group(reply, result, items, _), Err(failed)) => {
                drop(reply.send(if p.needs_commit { Err(GroupError::whole(&items, failed.clone())) } else { result }))
            }
        }
    }
}

/// Frees committed batches off the writer's path, on a thread of its own. Dropping a batch's
/// rows — their strings, maps and JSON — took the writer about 5 % of its time under W6
/// (BENCHMARKS.md, issue 23): time the next batch waited for. One thread and a short queue:
/// when the queue is full (or the thread could not start) the writer drops the batch itself,
/// so memory stays bounded and no batch waits.
struct Retirer(Option<std::sync::mpsc::SyncSender<Batch>>);

impl Retirer {
    /// Batches waiting to be dropped, at most.
    const QUEUE: usize = 4;

    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(Self::QUEUE);
        let spawned = std::thread::Builder::new().name("shenguan-retire".into()).spawn(move || {
            // Ends when the writer, the only sender, is gone.
            for batch in rx {
                drop(batch);
            }
        });
        match spawned {
            Ok(_) => Retirer(Some(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that frees committed batches; the writer frees them");
                Retirer(None)
            }
        }
    }

    fn retire(&self, batch: Batch) {
        if let Some(tx) = &self.0 {
            // Full or gone: dropped here, as before.
            let _ = tx.try_send(batch);
        }
    }
}

/// One debug line per command, inside the batch's span: instance, kind, outcome.
fn trace_command(command: &Command, result: &Result<Applied, WriteError>) {
    match result {
        Ok(a) => {
            tracing::debug!(instance = %command.instance, kind = kind_of(command), seq = a.seq, duplicate = a.duplicate, "command applied")
        }
        Err(e) => {
            tracing::debug!(instance = %command.instance, kind = kind_of(command), error = %e, "command refused")
        }
    }
}

/// One mark per message, the latest (the most attempts; of equals, the last given): a batch can
/// carry two outcomes of one message (a retry that failed, then the attempt that gave up), and
/// `UPDATE … FROM` with two rows for one target applies one of them — which one, neither
/// PostgreSQL nor SQLite promises. PostgreSQL kept the earlier one: a dead letter stayed
/// pending, never to be tried again.
fn latest_marks(marks: Vec<crate::store::OutboxMark>) -> Vec<crate::store::OutboxMark> {
    let mut at: HashMap<u64, usize> = HashMap::with_capacity(marks.len());
    let mut out: Vec<crate::store::OutboxMark> = Vec::with_capacity(marks.len());
    for mark in marks {
        match at.get(&mark.id) {
            Some(&i) if out[i].attempts > mark.attempts => {}
            Some(&i) => out[i] = mark,
            None => {
                at.insert(mark.id, out.len());
                out.push(mark);
            }
        }
    }
    out
}

fn fail_all(items: Vec<Item>, error: WriteError) {
    tracing::error!(%error, "cannot read the batch's instances");
    for item in items {
        match item {
            Item::One(_, reply) => drop(reply.send(Err(error.clone()))),
            Item::Group(g, _, reply) => drop(reply.send(Err(GroupError::whole(&g, error.clone())))),
            Item::Outbound(_, reply) => drop(reply.send(Err(error.clone()))),
        }
    }
}

#[cfg(test)]
mod pipeline_tests;

#[cfg(test)]
mod handle_tests {
    use super::*;

    /// A writer stand-in that answers each command with the next of `answers`.
    fn handle_answering(answers: Vec<Result<(), WriteError>>) -> (Handle, tokio::task::JoinHandle<usize>) {
        let (tx, mut rx) = mpsc::channel(4);
        let (_replanned, replanned_rx) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(async move {
            let mut answers = answers.into_iter();
            let mut seen = 0;
            while let Some(request) = rx.recv().await {
                seen += 1;
                let answer = answers.next().unwrap_or(Err(WriteError::ShuttingDown));
                if let Request::Batched(Item::One(command, reply)) = request {
                    let instance = crate::machine::Instance {
                        id: command.instance.clone(),
                        workflow: "w".into(),
                        version: 1,
                        state: "s".into(),
                        vars: std::collections::BTreeMap::new(),
                        timers: std::collections::BTreeMap::new(),
                        seq: 1,
                        created_at: 0,
                        updated_at: 0,
                    };
                    let _ = reply.send(answer.map(|()| Applied { instance, seq: 1, duplicate: false }));
                }
            }
            seen
        });
        (Handle { tx, replanned: replanned_rx }, task)
    }

    fn command() -> Command {
        Command {
            instance: "i".into(),
            kind: CommandKind::Event { name: "e".into(), fields: serde_json::Map::new() },
            actor: "test".into(),
            request_id: None,
            idempotency: None,
        }
    }

    /// A caller's command that shared a batch with a fire of a shard this node had lost is not
    /// the fence's business: it is decided again, like a conflict, and the caller is answered.
    #[tokio::test]
    async fn a_command_in_a_fenced_batch_is_decided_again() {
        let (handle, task) = handle_answering(vec![
            Err(WriteError::Fenced("shard 7".into())),
            Err(WriteError::Conflict("x".into())),
            Ok(()),
        ]);
        let applied = handle.submit(command()).await.expect("decided again until applied");
        assert_eq!(applied.instance.id, "i");
        drop(handle);
        assert_eq!(task.await.expect("task"), 3);
    }

    /// A refusal or a storage error is the caller's answer at once.
    #[tokio::test]
    async fn other_errors_are_answered_at_once() {
        let (handle, task) = handle_answering(vec![Err(WriteError::Indeterminate("lost".into())), Ok(())]);
        let e = handle.submit(command()).await.expect_err("told");
        assert!(matches!(e, WriteError::Indeterminate(_)), "{e:?}");
        drop(handle);
        assert_eq!(task.await.expect("task"), 1);
    }
}
