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

pub mod batch;

use batch::{kind_of, Builder, Built, GroupStep};

use crate::calendar::Calendars;
use crate::clock::{Clock, Millis};
use crate::definition::Registry;
use crate::machine::{Command, Instance, Rejection};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::timer::{lock, TimerIndex};

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
    /// Batches committed or attempted, for the logs.
    batches: u64,
}

/// Expired idempotency keys are pruned at most this often, a bounded number at a time.
const PRUNE_EVERY: Millis = 60 * 60 * 1000;
/// Most keys one prune deletes: one statement the next batch waits behind, so kept small.
const PRUNE_LIMIT: u32 = 5_000;
/// With a backlog (a full page pruned), the next page comes this much later — not after the
/// very next batch, which put a large delete in front of every commit. 5,000 keys a second
/// works off any realistic backlog while costing intake a few percent at most.
const PRUNE_BACKLOG_PAUSE: Millis = 1_000;

/// Creates a writer and its handle. Run the writer with [`Writer::run`].
pub fn channel<S: Store>(
    store: S,
    context: &crate::engine::Context,
    timers: Arc<Mutex<TimerIndex>>,
    wake: Arc<Notify>,
    settings: Settings,
) -> (Writer<S>, Handle) {
    let (tx, rx) = mpsc::channel(settings.max_batch.max(1) * 4);
    (
        Writer {
            store,
            rx,
            registry: context.registry.clone(),
            calendars: context.calendars.clone(),
            clock: context.clock.clone(),
            timers,
            wake,
            settings,
            metrics: context.metrics.clone(),
            cache: HashMap::new(),
            pruned_at: Millis::MIN,
            batches: 0,
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
                        let loaded = crate::timer::page_in(&mut self.store, &self.timers, until, self.settings.page)
                            .await
                            .map_err(WriteError::from);
                        if loaded.as_ref().is_ok_and(|n| *n > 0) {
                            self.wake.notify_one();
                        }
                        let _ = reply.send(loaded);
                    }
                }
            }
            if !items.is_empty() {
                self.process(items).await;
            }
        }
    }

    /// Brings the instances `ids` names into the batch: from the cache where it holds them
    /// (taken out, not copied: after a successful commit every instance of the batch goes back
    /// in; if the batch fails they are simply read again next time), the rest with one read.
    async fn load(&mut self, builder: &mut Builder<'_>, ids: &[&str]) -> Result<(), WriteError> {
        let unseen = builder.unseen(ids.iter().copied());
        let (mut cached, mut missing) = (Vec::new(), Vec::new());
        for id in &unseen {
            match self.cache.remove(*id) {
                Some(instance) => cached.push(instance),
                None => missing.push(*id),
            }
        }
        let rows = if missing.is_empty() { HashMap::new() } else { self.store.load_instances(&missing).await? };
        builder.insert_loaded(&unseen, cached, rows);
        Ok(())
    }

    async fn process(&mut self, items: Vec<Item>) {
        use tracing::Instrument;
        self.batches += 1;
        // Instrumented, not entered: a guard held across an await would tag other tasks' events.
        let span = tracing::debug_span!("batch", id = self.batches, requests = items.len());
        self.process_in_span(items).instrument(span).await;
    }

    async fn process_in_span(&mut self, items: Vec<Item>) {
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
        let (registry, calendars) = (self.registry.clone(), self.calendars.clone());
        let mut builder = Builder::new(
            &registry,
            &calendars,
            self.settings.shards,
            self.settings.idempotency_retention,
            now,
            known_keys,
        );
        if let Err(e) = self.load(&mut builder, &ids).await {
            return fail_all(items, e);
        }
        // The instances groups will derive commands for (a licence's new tasks), read for the
        // whole batch in one query instead of one per group. A failure here is not the
        // batch's: each group then asks for its own and meets the error itself.
        let hinted: Vec<String> = items
            .iter()
            .flat_map(|item| match item {
                Item::Group(group, Some(derive), _) => builder.derived_ids(group, Some(derive)),
                _ => Vec::new(),
            })
            .collect();
        if !hinted.is_empty() {
            let hinted: Vec<&str> = hinted.iter().map(String::as_str).collect();
            if let Err(e) = self.load(&mut builder, &hinted).await {
                tracing::debug!(error = %e, "cannot read derived instances ahead; each group reads its own");
            }
        }

        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::One(command, reply) => {
                    let (result, needs_commit) = builder.one(&command);
                    trace_command(&command, &result);
                    pending.push(Pending { owed: Owed::One(reply, result), needs_commit });
                }
                Item::Group(group, derive, reply) => {
                    let (result, needs_commit) = loop {
                        match builder.group(&group, derive.as_ref()) {
                            GroupStep::Done(result, needs_commit) => break (result, needs_commit),
                            GroupStep::Load(more) => {
                                let more: Vec<&str> = more.iter().map(String::as_str).collect();
                                if let Err(error) = self.load(&mut builder, &more).await {
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
                    let first = first_instance(&group);
                    pending.push(Pending { owed: Owed::Group(reply, result, first), needs_commit });
                }
            }
        }
        builder.fire_due_now();
        let built = builder.finish();
        self.commit(built, pending, now).await;
    }

    /// Commits a built batch, then answers its callers, updates the wheel and the cache.
    async fn commit(&mut self, built: Built, pending: Vec<Pending>, now: Millis) {
        let Built { batch, wheel_ops, fired, counts, live, .. } = built;
        let commit_started = std::time::Instant::now();
        let committed = if batch.is_empty() { Ok(()) } else { self.store.commit(&batch).await };
        match committed {
            Ok(()) => {
                if !batch.is_empty() {
                    self.metrics.commit_seconds.observe(commit_started.elapsed().as_secs_f64());
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
                tracing::debug!(commands = batch.history.len(), fired = fired.len(), "batch committed");
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
                for (kind, _) in &counts {
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

    /// Forgets request ids older than the retention, a bounded number at a time, at most once
    /// per [`PRUNE_EVERY`]. Runs after the batch's callers have been answered.
    async fn prune(&mut self, now: Millis) {
        if now.saturating_sub(self.pruned_at) < PRUNE_EVERY {
            return;
        }
        let before = now.saturating_sub(self.settings.idempotency_retention);
        match self.store.prune_idempotency(before, PRUNE_LIMIT).await {
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

fn fail_all(items: Vec<Item>, error: WriteError) {
    tracing::error!(%error, "cannot read the batch's instances");
    for item in items {
        match item {
            Item::One(_, reply) => drop(reply.send(Err(error.clone()))),
            Item::Group(g, _, reply) => drop(reply.send(Err(GroupError::whole(&g, error.clone())))),
        }
    }
}
