//! Group commit: the one path every change takes.
//!
//! Callers (gRPC handlers, the timer service) send [`Command`]s through a [`Handle`]. The writer
//! task drains whatever is queued (up to `max_batch`), loads the instances and idempotency keys
//! the batch touches with one query each, runs [`decide`] for every command in order against an
//! in-batch overlay (so two commands to one instance in one batch see each other), writes all
//! effects in one transaction, and only then answers the callers, updates the timer wheel and
//! wakes the timer service.
//!
//! # Important
//! - A caller is answered after its transaction is durable. If the commit fails, every command
//!   of the batch is answered [`WriteError::Unavailable`] and nothing of it is visible.
//! - The writer task is the only writer of the database and the only task that moves the timer
//!   horizon ([`Request::Extend`]); see [`crate::timer`] for why that matters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::calendar::Calendars;
use crate::clock::{Clock, Millis};
use crate::definition::{Definition, Registry};
use crate::machine::{decide, Command, CommandKind, Instance, Rejection, Transition};
use crate::store::{shard_of, Batch, IdempotencyRow, InstanceRow, OutboxRow, Store, TimerFrom};
use crate::telemetry::Metrics;
use crate::timer::{lock, Horizon, TimerIndex, TimerKey};

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
    /// The engine is stopping.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl From<crate::store::Error> for WriteError {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as E;
        match e {
            E::Unavailable(m) => WriteError::Unavailable(m),
            E::Corrupt(m) => WriteError::DataLoss(m),
            E::Internal(m) => WriteError::Internal(m),
            E::Open { .. } => WriteError::Unavailable(e.to_string()),
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
pub enum Request {
    /// Apply a command.
    Command(Command, Reply),
    /// Apply several commands all-or-nothing, in one transaction; the optional [`Derive`]
    /// adds commands computed from the first command's result.
    Group(Vec<GroupItem>, Option<Derive>, GroupReply),
    /// Load the next page of timers due before the instant into the wheel; answers the number
    /// of timers loaded.
    Extend(Millis, oneshot::Sender<Result<usize, WriteError>>),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Command(c, _) => f.debug_tuple("Command").field(c).finish(),
            Request::Group(items, derive, _) => {
                f.debug_struct("Group").field("items", items).field("derives", &derive.is_some()).finish()
            }
            Request::Extend(until, _) => f.debug_tuple("Extend").field(until).finish(),
        }
    }
}

/// A cheap, cloneable way to submit commands.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
}

impl Handle {
    /// Submits a command and waits until it is durable (or refused).
    pub async fn submit(&self, command: Command) -> Result<Applied, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Command(command, reply)).await.map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }

    /// Queues a command; the answer arrives on the returned receiver.
    pub async fn send(&self, command: Command) -> Result<oneshot::Receiver<Result<Applied, WriteError>>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Command(command, reply)).await.map_err(|_| WriteError::ShuttingDown)?;
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
        let (reply, rx) = oneshot::channel();
        let gone = GroupError::whole(&items, WriteError::ShuttingDown);
        self.tx.send(Request::Group(items, derive, reply)).await.map_err(|_| gone.clone())?;
        rx.await.map_err(|_| gone)?
    }

    /// Asks the writer to page in timers due before `until`; returns how many were loaded.
    pub async fn extend(&self, until: Millis) -> Result<usize, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Extend(until, reply)).await.map_err(|_| WriteError::ShuttingDown)?;
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
}

/// The writer task's state.
pub struct Writer<S: Store> {
    store: S,
    rx: mpsc::Receiver<Request>,
    registry: Arc<Registry>,
    calendars: Arc<Calendars>,
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
    /// When expired idempotency keys were last pruned (engine time).
    pruned_at: Millis,
}

/// Rounds of same-batch fires of timers armed already due (see `fire_due_now`).
const IMMEDIATE_ROUNDS: usize = 8;

/// Expired idempotency keys are pruned at most this often, a bounded number at a time.
const PRUNE_EVERY: Millis = 60 * 60 * 1000;
const PRUNE_LIMIT: u32 = 10_000;

/// Creates a writer and its handle. Run the writer with [`Writer::run`].
#[allow(clippy::too_many_arguments)]
pub fn channel<S: Store>(
    store: S,
    registry: Arc<Registry>,
    calendars: Arc<Calendars>,
    clock: Arc<dyn Clock>,
    timers: Arc<Mutex<TimerIndex>>,
    wake: Arc<Notify>,
    settings: Settings,
    metrics: Arc<Metrics>,
) -> (Writer<S>, Handle) {
    let (tx, rx) = mpsc::channel(settings.max_batch.max(1) * 4);
    (
        Writer {
            store,
            rx,
            registry,
            calendars,
            clock,
            timers,
            wake,
            settings,
            metrics,
            cache: HashMap::new(),
            pruned_at: Millis::MIN,
        },
        Handle { tx },
    )
}

/// A queued request with its reply.
enum Item {
    One(Command, Reply),
    Group(Vec<GroupItem>, Option<Derive>, GroupReply),
}

/// The reply owed to a request once the batch's fate is known.
enum Owed {
    One(Reply, Result<Applied, WriteError>),
    /// The reply, the answer, and the instance that names the group if its commit fails.
    Group(GroupReply, Result<Vec<Option<Applied>>, GroupError>, String),
}

struct Pending {
    owed: Owed,
    /// Whether the answer is only true once this batch commits.
    needs_commit: bool,
}

enum WheelOp {
    Insert(TimerKey),
    Cancel(TimerKey),
}

/// Everything a batch accumulates before its commit.
#[derive(Default)]
struct Acc {
    live: HashMap<String, Result<Instance, WriteError>>,
    known_keys: HashMap<String, IdempotencyRow>,
    new_keys: HashMap<String, IdempotencyRow>,
    batch: Batch,
    timer_rows: HashMap<(String, String), usize>,
    changed: HashMap<String, usize>,
    wheel_ops: Vec<WheelOp>,
    /// Timers fired in this batch: (due, workflow, responsible department if a deadline).
    fired: Vec<(Millis, String, Option<String>)>,
    /// Timers armed in this batch whose due time has already come: (due, instance, name).
    due_now: Vec<(Millis, String, String)>,
    /// Commands by (kind, result), counted once the batch's fate is known.
    counts: Vec<(&'static str, &'static str)>,
}

fn kind_of(command: &Command) -> &'static str {
    match command.kind {
        CommandKind::Start { .. } => "start",
        CommandKind::Event { .. } => "event",
        CommandKind::Timer { .. } => "timer",
    }
}

/// What a command's request id says before deciding anything.
enum Seen {
    New,
    /// Same request again: the first answer; `true` when the first one is in this batch.
    Duplicate(Applied, bool),
    /// Refused before deciding: the key was used for another request, or what it names is gone
    /// or damaged.
    Refused(WriteError),
}

impl<S: Store> Writer<S> {
    /// Serves requests until every [`Handle`] is dropped.
    pub async fn run(mut self) {
        let mut requests = Vec::with_capacity(self.settings.max_batch);
        while let Some(first) = self.rx.recv().await {
            requests.push(first);
            while requests.len() < self.settings.max_batch {
                match self.rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            let mut items = Vec::with_capacity(requests.len());
            for request in requests.drain(..) {
                match request {
                    Request::Command(c, reply) => items.push(Item::One(c, reply)),
                    Request::Group(g, derive, reply) => items.push(Item::Group(g, derive, reply)),
                    Request::Extend(until, reply) => {
                        // Commands queued before the extension are committed first, so the
                        // page read sees them.
                        if !items.is_empty() {
                            self.process(std::mem::take(&mut items)).await;
                        }
                        let loaded = self.extend(until).await;
                        let _ = reply.send(loaded);
                    }
                }
            }
            if !items.is_empty() {
                self.process(items).await;
            }
        }
    }

    async fn extend(&mut self, until: Millis) -> Result<usize, WriteError> {
        let horizon = lock(&self.timers).horizon.clone();
        if horizon.after.is_none() && horizon.due >= until {
            return Ok(0);
        }
        let from = match &horizon.after {
            Some((instance, name)) => TimerFrom::After(horizon.due, instance.clone(), name.clone()),
            None => TimerFrom::Due(horizon.due),
        };
        let rows = self.store.timers_page(&from, until, self.settings.page).await.map_err(WriteError::from)?;
        let full = rows.len() >= self.settings.page as usize;
        let mut index = lock(&self.timers);
        index.horizon = match rows.last() {
            Some(last) if full => Horizon { due: last.due, after: Some((last.instance.clone(), last.name.clone())) },
            _ => Horizon { due: until, after: None },
        };
        let n = rows.len();
        for row in rows {
            let key = TimerKey { instance: row.instance, name: row.name, due: row.due };
            index.wheel.insert(key, row.due);
        }
        drop(index);
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(n)
    }

    fn definition_for(&self, command: &Command, current: Option<&Instance>) -> Result<Arc<Definition>, Rejection> {
        match (current, &command.kind) {
            (Some(instance), _) => self.registry.get(&instance.workflow, instance.version).cloned().ok_or_else(|| {
                Rejection::UnknownWorkflow { workflow: format!("{} version {}", instance.workflow, instance.version) }
            }),
            (None, CommandKind::Start { workflow, version, .. }) => {
                let def = match version {
                    Some(v) => self.registry.get(workflow, *v),
                    None => self.registry.latest(workflow),
                };
                def.cloned().ok_or_else(|| Rejection::UnknownWorkflow { workflow: workflow.clone() })
            }
            (None, _) => Err(Rejection::NotFound { instance: command.instance.clone() }),
        }
    }

    fn decode(&self, row: InstanceRow) -> Result<Instance, WriteError> {
        let id = row.id.clone();
        let corrupt = |message: String| WriteError::DataLoss(format!("instance {id} cannot be loaded: {message}"));
        let def = self
            .registry
            .get(&row.workflow, row.version)
            .ok_or_else(|| corrupt(format!("workflow {} version {} is not loaded", row.workflow, row.version)))?;
        row.decode(def).map_err(|e| corrupt(e.to_string()))
    }

    fn seen(&self, acc: &Acc, command: &Command, now: Millis) -> Seen {
        let Some(idem) = &command.idempotency else { return Seen::New };
        let (row, in_batch) = match acc.new_keys.get(&idem.key) {
            Some(row) => (row, true),
            None => match acc.known_keys.get(&idem.key) {
                // A key past its retention is forgotten, whether or not it was pruned yet.
                Some(row) if row.created_at < now.saturating_sub(self.settings.idempotency_retention) => {
                    return Seen::New
                }
                Some(row) => (row, false),
                None => return Seen::New,
            },
        };
        let reused = || {
            let key = command.request_id.clone().unwrap_or_else(|| idem.key.clone());
            Seen::Refused(WriteError::KeyReused { key })
        };
        if row.fingerprint != idem.fingerprint || row.instance != command.instance {
            return reused();
        }
        match acc.live.get(&command.instance) {
            Some(Ok(instance)) => {
                Seen::Duplicate(Applied { instance: instance.clone(), seq: row.seq, duplicate: true }, in_batch)
            }
            Some(Err(e)) => Seen::Refused(e.clone()),
            None => Seen::Refused(WriteError::DataLoss(format!(
                "request {} was applied to {}, which no longer exists",
                idem.key, command.instance
            ))),
        }
    }

    /// Runs `decide` for one command against the batch so far, without recording anything.
    fn try_decide(
        &self,
        acc: &Acc,
        overlay: &HashMap<String, Instance>,
        command: &Command,
        now: Millis,
    ) -> Result<Transition, WriteError> {
        let current = match overlay.get(&command.instance) {
            Some(instance) => Some(instance),
            None => match acc.live.get(&command.instance) {
                Some(Ok(instance)) => Some(instance),
                Some(Err(e)) => return Err(e.clone()),
                None => None,
            },
        };
        let def = self.definition_for(command, current)?;
        Ok(decide(&def, current, command, now, &self.calendars)?)
    }

    /// Records a decided transition into the batch.
    fn record(&self, acc: &mut Acc, command: &Command, t: Transition, now: Millis) -> Applied {
        if let CommandKind::Timer { name, due } = &command.kind {
            let deadline = self
                .registry
                .get(&t.instance.workflow, t.instance.version)
                .and_then(|d| d.timer(name))
                .is_some_and(|spec| spec.deadline);
            let department = deadline.then(|| {
                ["department", "approval_department"]
                    .iter()
                    .find_map(|v| match t.instance.vars.get(*v) {
                        Some(crate::definition::Value::Str(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "unknown".to_owned())
            });
            acc.fired.push((*due, t.instance.workflow.clone(), department));
        }
        let previous = match acc.live.get(&command.instance) {
            Some(Ok(instance)) => Some(instance.timers.clone()),
            _ => None,
        };
        let shard = shard_of(&command.instance, self.settings.shards);
        let id = command.instance.clone();
        for name in &t.remove {
            if let Some(old) = previous.as_ref().and_then(|timers| timers.get(name)) {
                acc.wheel_ops.push(WheelOp::Cancel(TimerKey {
                    instance: id.clone(),
                    name: name.clone(),
                    due: old.due,
                }));
            }
            set_timer(&mut acc.batch, &mut acc.timer_rows, (id.clone(), name.clone()), None);
        }
        for (name, timer) in &t.arm {
            if let Some(old) = previous.as_ref().and_then(|timers| timers.get(name)) {
                acc.wheel_ops.push(WheelOp::Cancel(TimerKey {
                    instance: id.clone(),
                    name: name.clone(),
                    due: old.due,
                }));
            }
            acc.wheel_ops.push(WheelOp::Insert(TimerKey { instance: id.clone(), name: name.clone(), due: timer.due }));
            if timer.due <= now {
                acc.due_now.push((timer.due, id.clone(), name.clone()));
            }
            set_timer(&mut acc.batch, &mut acc.timer_rows, (id.clone(), name.clone()), Some((timer.clone(), shard)));
        }
        for (i, message) in t.outbox.iter().enumerate() {
            acc.batch.outbox.push(OutboxRow {
                key: format!("{id}:{}:{i}", t.history.seq),
                instance: id.clone(),
                seq: t.history.seq,
                message: message.clone(),
                created_at: now,
            });
        }
        if let Some(idem) = &command.idempotency {
            let row = IdempotencyRow {
                instance: id.clone(),
                seq: t.history.seq,
                fingerprint: idem.fingerprint.clone(),
                created_at: now,
            };
            acc.batch.idempotency.push((idem.key.clone(), row.clone()));
            acc.new_keys.insert(idem.key.clone(), row);
        }
        let row = InstanceRow::of(&t.instance, shard);
        match acc.changed.get(&id) {
            Some(&i) => acc.batch.instances[i] = row,
            None => {
                acc.changed.insert(id.clone(), acc.batch.instances.len());
                acc.batch.instances.push(row);
            }
        }
        let seq = t.history.seq;
        acc.batch.history.push((id.clone(), t.history));
        let applied = Applied { instance: t.instance.clone(), seq, duplicate: false };
        acc.live.insert(id, Ok(t.instance));
        applied
    }

    fn one(&self, acc: &mut Acc, command: &Command, now: Millis) -> (Result<Applied, WriteError>, bool) {
        match self.seen(acc, command, now) {
            Seen::Duplicate(applied, in_batch) => return (Ok(applied), in_batch),
            Seen::Refused(e) => return (Err(e), false),
            Seen::New => {}
        }
        match self.try_decide(acc, &HashMap::new(), command, now) {
            Ok(t) => {
                acc.counts.push((kind_of(command), "applied"));
                (Ok(self.record(acc, command, t, now)), true)
            }
            Err(e) => {
                acc.counts.push((kind_of(command), "rejected"));
                (Err(e), false)
            }
        }
    }

    /// Brings the instances `ids` names into the batch: from the cache where it holds them
    /// (taken out, not copied: after a successful commit every instance of the batch goes back
    /// in; if the batch fails they are simply read again next time), the rest with one read.
    /// Used for the batch's own commands and for those a [`Derive`] adds.
    async fn load(&mut self, acc: &mut Acc, ids: &[&str]) -> Result<(), WriteError> {
        let mut missing: Vec<&str> = ids.iter().copied().filter(|id| !acc.live.contains_key(*id)).collect();
        missing.sort_unstable();
        missing.dedup();
        missing.retain(|id| match self.cache.remove(*id) {
            Some(instance) => {
                acc.live.insert(instance.id.clone(), Ok(instance));
                false
            }
            None => true,
        });
        if missing.is_empty() {
            return Ok(());
        }
        for (id, row) in self.store.load_instances(&missing).await? {
            let decoded = self.decode(row);
            acc.live.insert(id, decoded);
        }
        Ok(())
    }

    async fn group(
        &mut self,
        acc: &mut Acc,
        items: &[GroupItem],
        derive: Option<&Derive>,
        now: Millis,
    ) -> (Result<Vec<Option<Applied>>, GroupError>, bool) {
        let fail = |index: usize, instance: &str, error: WriteError| {
            (Err(GroupError { index, instance: instance.to_owned(), error }), false)
        };
        if let Some(first) = items.first() {
            match self.seen(acc, &first.command, now) {
                Seen::New => {}
                Seen::Refused(error) => return fail(0, &first.command.instance, error),
                Seen::Duplicate(applied, in_batch) => {
                    // The whole group was applied before. The first member answers as it did
                    // then (its history entry); the others are not decided again.
                    let mut answers = vec![Some(applied)];
                    answers.resize(items.len(), None);
                    return (Ok(answers), in_batch);
                }
            }
        }
        // Decide every member on an overlay first; only if all required ones are accepted are
        // the transitions recorded into the batch (as decided: nothing is decided twice).
        let mut overlay: HashMap<String, Instance> = HashMap::new();
        let mut derived: Vec<GroupItem> = Vec::new();
        let mut decided = Vec::with_capacity(items.len());
        for index in 0.. {
            // The given items, then the derived ones.
            let Some(item) = items.get(index).or_else(|| derived.get(index - items.len())) else { break };
            let required = item.required;
            let mut command = item.command.clone();
            if index > 0 {
                command.request_id = None;
                command.idempotency = None;
            }
            match self.try_decide(acc, &overlay, &command, now) {
                Ok(t) => {
                    if index == 0 {
                        if let Some(derive) = derive {
                            let more = match derive(&t.instance) {
                                Ok(more) => more,
                                Err(error) => return fail(0, &command.instance, error),
                            };
                            let ids: Vec<&str> = more.iter().map(|i| i.command.instance.as_str()).collect();
                            if let Err(error) = self.load(acc, &ids).await {
                                return fail(0, &command.instance, error);
                            }
                            derived = more;
                        }
                    }
                    overlay.insert(command.instance.clone(), t.instance.clone());
                    decided.push(Some((command, t)));
                }
                Err(_) if !required => decided.push(None),
                Err(error) => return fail(index, &command.instance, error),
            }
        }
        let answers = decided
            .into_iter()
            .map(|d| {
                d.map(|(command, t)| {
                    acc.counts.push((kind_of(&command), "applied"));
                    self.record(acc, &command, t, now)
                })
            })
            .collect();
        (Ok(answers), true)
    }

    async fn process(&mut self, items: Vec<Item>) {
        let now = self.clock.now();
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
            }
        }
        let known_keys = if keys.is_empty() {
            HashMap::new()
        } else {
            match self.store.load_idempotency(&keys).await {
                Ok(rows) => rows,
                Err(e) => return fail_all(items, e.into()),
            }
        };
        let mut acc = Acc { known_keys, ..Acc::default() };
        if let Err(e) = self.load(&mut acc, &ids).await {
            return fail_all(items, e);
        }

        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::One(command, reply) => {
                    let (result, needs_commit) = self.one(&mut acc, &command, now);
                    pending.push(Pending { owed: Owed::One(reply, result), needs_commit });
                }
                Item::Group(group, derive, reply) => {
                    let (result, needs_commit) = self.group(&mut acc, &group, derive.as_ref(), now).await;
                    let first = first_instance(&group);
                    pending.push(Pending { owed: Owed::Group(reply, result, first), needs_commit });
                }
            }
        }

        self.fire_due_now(&mut acc, now);

        let commit_started = std::time::Instant::now();
        let committed = if acc.batch.is_empty() { Ok(()) } else { self.store.commit(&acc.batch).await };
        match committed {
            Ok(()) => {
                if !acc.batch.is_empty() {
                    self.metrics.commit_seconds.observe(commit_started.elapsed().as_secs_f64());
                    self.metrics.batch_size.observe(acc.batch.history.len() as f64);
                    self.metrics.outbox_written.inc_by(acc.batch.outbox.len() as u64);
                }
                for (kind, result) in &acc.counts {
                    self.metrics.commands.with_label_values(&[*kind, *result]).inc();
                }
                let committed_at = self.clock.now();
                for (due, workflow, department) in &acc.fired {
                    self.metrics.timers_fired.inc();
                    self.metrics.fire_lateness_seconds.observe((committed_at - due).max(0) as f64 / 1000.0);
                    if let Some(department) = department {
                        self.metrics.breaches.with_label_values(&[workflow.as_str(), department.as_str()]).inc();
                    }
                }
                self.update_wheel(acc.wheel_ops);
                if self.settings.cache > 0 {
                    if self.cache.len() + acc.live.len() > self.settings.cache {
                        self.cache.clear();
                    }
                    for (id, instance) in acc.live {
                        if let Ok(instance) = instance {
                            self.cache.insert(id, instance);
                        }
                    }
                }
                for p in pending {
                    match p.owed {
                        Owed::One(reply, result) => drop(reply.send(result)),
                        Owed::Group(reply, result, _) => drop(reply.send(result)),
                    }
                }
                self.prune(now).await;
            }
            Err(e) => {
                tracing::error!(error = %e, requests = pending.len(), "group commit failed; nothing of the batch was written");
                for (kind, _) in &acc.counts {
                    self.metrics.commands.with_label_values(&[*kind, "failed"]).inc();
                }
                let failed = WriteError::from(e);
                for p in pending {
                    match (p.owed, p.needs_commit) {
                        (Owed::One(reply, _), true) => drop(reply.send(Err(failed.clone()))),
                        (Owed::Group(reply, _, instance), true) => {
                            drop(reply.send(Err(GroupError { index: 0, instance, error: failed.clone() })))
                        }
                        (Owed::One(reply, result), false) => drop(reply.send(result)),
                        (Owed::Group(reply, result, _), false) => drop(reply.send(result)),
                    }
                }
            }
        }
    }

    /// Fires, in this batch's transaction and in due order, the timers it armed with a due time
    /// already come (a reminder for tomorrow's deadline armed after its 09:00): "at once", so
    /// the caller's answer shows the fired state and nothing waits for the timer service. A
    /// chain of such fires is followed a bounded number of rounds; anything left is in the
    /// wheel, which fires it next.
    fn fire_due_now(&self, acc: &mut Acc, now: Millis) {
        for _ in 0..IMMEDIATE_ROUNDS {
            if acc.due_now.is_empty() {
                return;
            }
            let mut due = std::mem::take(&mut acc.due_now);
            due.sort();
            for (at, instance, name) in due {
                let command = Command {
                    instance,
                    kind: CommandKind::Timer { name, due: at },
                    actor: "timer".to_owned(),
                    request_id: None,
                    idempotency: None,
                };
                // A refusal (the timer was cancelled again in this batch) leaves nothing to do.
                let _ = self.one(acc, &command, now);
            }
        }
    }

    /// Forgets request ids older than the retention, a bounded number at a time, at most once
    /// per [`PRUNE_EVERY`]. Runs after the batch's callers have been answered.
    async fn prune(&mut self, now: Millis) {
        if now.saturating_sub(self.pruned_at) < PRUNE_EVERY {
            return;
        }
        let before = now.saturating_sub(self.settings.idempotency_retention);
        match self.store.prune_idempotency(before, PRUNE_LIMIT).await {
            Ok(n) => {
                // A full page means more may be waiting: come back after the next batch.
                if n < u64::from(PRUNE_LIMIT) {
                    self.pruned_at = now;
                }
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

    fn update_wheel(&self, ops: Vec<WheelOp>) {
        if ops.is_empty() {
            return;
        }
        let mut index = lock(&self.timers);
        let mut inserted = false;
        for op in ops {
            match op {
                WheelOp::Cancel(key) => {
                    index.wheel.cancel(&key);
                }
                WheelOp::Insert(key) => {
                    if index.horizon.contains(key.due, &key.instance, &key.name) {
                        let due = key.due;
                        index.wheel.insert(key, due);
                        inserted = true;
                    }
                }
            }
        }
        drop(index);
        if inserted {
            self.wake.notify_one();
        }
    }
}

fn set_timer(
    batch: &mut Batch,
    index: &mut HashMap<(String, String), usize>,
    key: (String, String),
    value: Option<(crate::machine::ArmedTimer, u32)>,
) {
    match index.get(&key) {
        Some(&i) => batch.timers[i].1 = value,
        None => {
            index.insert(key.clone(), batch.timers.len());
            batch.timers.push((key, value));
        }
    }
}

fn fail_all(items: Vec<Item>, error: WriteError) {
    tracing::error!(%error, "cannot read the batch's instances");
    for item in items {
        match item {
            Item::One(_, reply) => drop(reply.send(Err(error.clone()))),
            Item::Group(g, _, reply) => drop(reply.send(Err(GroupError::whole(&g, error.clone())))),
        }
    }
}
