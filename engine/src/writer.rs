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
use crate::machine::{decide, decode_vars, encode_vars, Command, CommandKind, Instance, Rejection};
use crate::store::{fnv1a, shard_of, Batch, IdempotencyRow, InstanceRow, OutboxRow, Store, TimerFrom};
use crate::timer::{Horizon, TimerIndex, TimerKey};

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
    /// Storage failed; nothing was written. Safe to retry with the same request id.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored instance cannot be read back.
    #[error("instance {instance} cannot be loaded: {message}")]
    Corrupt {
        /// The instance.
        instance: String,
        /// Why.
        message: String,
    },
    /// The engine is stopping.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

type Reply = oneshot::Sender<Result<Applied, WriteError>>;

/// What the writer task is asked to do.
#[derive(Debug)]
pub enum Request {
    /// Apply a command.
    Command(Command, Reply),
    /// Load the next page of timers due before the instant into the wheel; answers the number
    /// of timers loaded.
    Extend(Millis, oneshot::Sender<Result<usize, WriteError>>),
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
}

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
) -> (Writer<S>, Handle) {
    let (tx, rx) = mpsc::channel(settings.max_batch.max(1) * 4);
    (Writer { store, rx, registry, calendars, clock, timers, wake, settings }, Handle { tx })
}

/// A reply waiting for the batch's commit.
struct Pending {
    reply: Reply,
    result: Result<Applied, WriteError>,
    /// Whether the answer is only true once this batch commits.
    needs_commit: bool,
}

enum WheelOp {
    Insert(TimerKey),
    Cancel(TimerKey),
}

fn fingerprint(command: &Command) -> String {
    let text = serde_json::to_string(&command.kind).unwrap_or_default();
    format!("{:016x}", fnv1a(format!("{}\u{0}{text}", command.instance).as_bytes()))
}

fn lock(timers: &Mutex<TimerIndex>) -> std::sync::MutexGuard<'_, TimerIndex> {
    // A panic while holding the lock cannot leave the wheel half-updated in a way that loses
    // timers (the database is the truth), so a poisoned lock is still usable.
    timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            let mut commands = Vec::with_capacity(requests.len());
            for request in requests.drain(..) {
                match request {
                    Request::Command(c, reply) => commands.push((c, reply)),
                    Request::Extend(until, reply) => {
                        // Commands queued before the extension are committed first, so the
                        // page read sees them.
                        if !commands.is_empty() {
                            self.process(std::mem::take(&mut commands)).await;
                        }
                        let loaded = self.extend(until).await;
                        let _ = reply.send(loaded);
                    }
                }
            }
            if !commands.is_empty() {
                self.process(commands).await;
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
        let rows = self
            .store
            .timers_page(&from, until, self.settings.page)
            .await
            .map_err(|e| WriteError::Unavailable(e.to_string()))?;
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
        let corrupt = |message: String| WriteError::Corrupt { instance: row.id.clone(), message };
        let def = self
            .registry
            .get(&row.workflow, row.version)
            .ok_or_else(|| corrupt(format!("workflow {} version {} is not loaded", row.workflow, row.version)))?;
        let vars = decode_vars(def, &row.vars).map_err(|e| corrupt(e.to_string()))?;
        Ok(Instance {
            id: row.id,
            workflow: row.workflow,
            version: row.version,
            state: row.state,
            vars,
            timers: row.timers,
            seq: row.seq,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    #[allow(clippy::too_many_lines)]
    async fn process(&mut self, commands: Vec<(Command, Reply)>) {
        let now = self.clock.now();
        let ids: Vec<&str> = {
            let mut ids: Vec<&str> = commands.iter().map(|(c, _)| c.instance.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let keys: Vec<&str> = commands.iter().filter_map(|(c, _)| c.request_id.as_deref()).collect();
        let loaded = match self.store.load_instances(&ids).await {
            Ok(rows) => rows,
            Err(e) => return fail_all(commands, &e.to_string()),
        };
        let known_keys = if keys.is_empty() {
            HashMap::new()
        } else {
            match self.store.load_idempotency(&keys).await {
                Ok(rows) => rows,
                Err(e) => return fail_all(commands, &e.to_string()),
            }
        };

        let mut live: HashMap<String, Result<Instance, WriteError>> = HashMap::with_capacity(loaded.len());
        for (id, row) in loaded {
            let decoded = self.decode(row);
            live.insert(id, decoded);
        }
        let mut new_keys: HashMap<String, IdempotencyRow> = HashMap::new();
        let mut batch = Batch::default();
        let mut timer_rows: HashMap<(String, String), usize> = HashMap::new();
        let mut changed: HashMap<String, usize> = HashMap::new();
        let mut wheel_ops = Vec::new();
        let mut pending = Vec::with_capacity(commands.len());

        for (command, reply) in commands {
            let current = match live.get(&command.instance) {
                Some(Ok(instance)) => Some(instance),
                Some(Err(e)) => {
                    pending.push(Pending { reply, result: Err(e.clone()), needs_commit: false });
                    continue;
                }
                None => None,
            };
            let print = command.request_id.as_ref().map(|_| fingerprint(&command));
            if let (Some(key), Some(print)) = (&command.request_id, &print) {
                let (seen, in_batch) = match new_keys.get(key) {
                    Some(row) => (Some(row), true),
                    None => (known_keys.get(key), false),
                };
                if let Some(row) = seen {
                    let result = match current {
                        Some(instance) if row.fingerprint == *print && row.instance == command.instance => {
                            Ok(Applied { instance: instance.clone(), seq: row.seq, duplicate: true })
                        }
                        _ => Err(WriteError::KeyReused { key: key.clone() }),
                    };
                    pending.push(Pending { reply, result, needs_commit: in_batch });
                    continue;
                }
            }
            let def = match self.definition_for(&command, current) {
                Ok(def) => def,
                Err(r) => {
                    pending.push(Pending { reply, result: Err(r.into()), needs_commit: false });
                    continue;
                }
            };
            let t = match decide(&def, current, &command, now, &self.calendars) {
                Ok(t) => t,
                Err(r) => {
                    pending.push(Pending { reply, result: Err(r.into()), needs_commit: false });
                    continue;
                }
            };
            let shard = shard_of(&command.instance, self.settings.shards);
            let id = command.instance.clone();
            for name in &t.remove {
                if let Some(old) = current.and_then(|i| i.timers.get(name)) {
                    wheel_ops.push(WheelOp::Cancel(TimerKey {
                        instance: id.clone(),
                        name: name.clone(),
                        due: old.due,
                    }));
                }
                set_timer(&mut batch, &mut timer_rows, (id.clone(), name.clone()), None);
            }
            for (name, timer) in &t.arm {
                if let Some(old) = current.and_then(|i| i.timers.get(name)) {
                    wheel_ops.push(WheelOp::Cancel(TimerKey {
                        instance: id.clone(),
                        name: name.clone(),
                        due: old.due,
                    }));
                }
                wheel_ops.push(WheelOp::Insert(TimerKey { instance: id.clone(), name: name.clone(), due: timer.due }));
                set_timer(&mut batch, &mut timer_rows, (id.clone(), name.clone()), Some((timer.clone(), shard)));
            }
            for (i, message) in t.outbox.iter().enumerate() {
                batch.outbox.push(OutboxRow {
                    key: format!("{id}:{}:{i}", t.history.seq),
                    instance: id.clone(),
                    seq: t.history.seq,
                    message: message.clone(),
                    created_at: now,
                });
            }
            if let (Some(key), Some(print)) = (&command.request_id, print) {
                let row = IdempotencyRow { instance: id.clone(), seq: t.history.seq, fingerprint: print };
                batch.idempotency.push((key.clone(), row.clone(), now));
                new_keys.insert(key.clone(), row);
            }
            let row = InstanceRow {
                id: id.clone(),
                workflow: t.instance.workflow.clone(),
                version: t.instance.version,
                state: t.instance.state.clone(),
                vars: encode_vars(&t.instance.vars),
                timers: t.instance.timers.clone(),
                seq: t.instance.seq,
                shard,
                created_at: t.instance.created_at,
                updated_at: t.instance.updated_at,
            };
            match changed.get(&id) {
                Some(&i) => batch.instances[i] = row,
                None => {
                    changed.insert(id.clone(), batch.instances.len());
                    batch.instances.push(row);
                }
            }
            batch.history.push((id.clone(), t.history.clone()));
            let seq = t.history.seq;
            pending.push(Pending {
                reply,
                result: Ok(Applied { instance: t.instance.clone(), seq, duplicate: false }),
                needs_commit: true,
            });
            live.insert(id, Ok(t.instance));
        }

        let committed = if batch.is_empty() { Ok(()) } else { self.store.commit(&batch).await };
        match committed {
            Ok(()) => {
                if !wheel_ops.is_empty() {
                    let mut index = lock(&self.timers);
                    let mut inserted = false;
                    for op in wheel_ops {
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
                for p in pending {
                    let _ = p.reply.send(p.result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = pending.len(), "group commit failed; nothing of the batch was written");
                for p in pending {
                    let result = if p.needs_commit { Err(WriteError::Unavailable(e.to_string())) } else { p.result };
                    let _ = p.reply.send(result);
                }
            }
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

fn fail_all(commands: Vec<(Command, Reply)>, message: &str) {
    tracing::error!(error = message, "cannot read the batch's instances");
    for (_, reply) in commands {
        let _ = reply.send(Err(WriteError::Unavailable(message.to_owned())));
    }
}
