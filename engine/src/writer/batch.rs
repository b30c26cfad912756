//! The pure half of group commit: turning one batch of commands into the rows of one
//! transaction, with no I/O.
//!
//! A [`Builder`] holds the batch's instances (an overlay over what is committed), the request
//! ids it has seen, and the rows it will write. For each command it checks the request id,
//! runs [`decide`] against the overlay (so two commands to one instance in one batch see each
//! other), and records the transition as history, instance, timer, outbox and idempotency rows
//! plus the timer-wheel operations to apply once the batch has committed. A group is decided
//! member by member on a second overlay and recorded only when every required member was
//! accepted: all or nothing.
//!
//! The [`writer`](super) task does the I/O around it: it loads what the builder says it lacks
//! ([`Builder::unseen`], [`GroupStep::Load`]), commits [`Built::batch`], answers the callers and
//! applies [`Built::wheel_ops`]. Everything here is unit-tested without a database.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Applied, Derive, GroupError, GroupItem, WriteError};
use crate::calendar::Calendars;
use crate::clock::Millis;
use crate::definition::{Definition, Registry, Value};
use crate::machine::{decide, ArmedTimer, Command, CommandKind, Instance, Rejection, Transition};
use crate::store::{shard_of, Batch, IdempotencyRow, InstanceRow, OutboxRow};
use crate::timer::{TimerKey, WheelOp};

/// Rounds of same-batch fires of timers armed already due (see [`Builder::fire_due_now`]).
const IMMEDIATE_ROUNDS: usize = 8;

/// A timer fired by the batch, for metrics once it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// When it was due.
    pub due: Millis,
    /// Its instance's workflow.
    pub workflow: String,
    /// For a deadline (a breach): the responsible party, from the variable its definition
    /// names (`responsible = "…"`), or `unspecified`.
    pub breach_of: Option<String>,
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

/// The outcome of [`Builder::group`].
#[derive(Debug)]
pub enum GroupStep {
    /// Decided: the answer, and whether it is true only once the batch commits.
    Done(Result<Vec<Option<Applied>>, GroupError>, bool),
    /// The group's derived commands name instances the builder has not seen: load them
    /// ([`Builder::insert_loaded`]) and call [`Builder::group`] again. Nothing was recorded.
    Load(Vec<String>),
}

/// One batch being built.
pub struct Builder<'a> {
    registry: &'a Registry,
    calendars: &'a Calendars,
    shards: u32,
    retention: Millis,
    now: Millis,
    /// Instances as the batch so far leaves them (or why one cannot be loaded).
    live: HashMap<String, Result<Instance, WriteError>>,
    /// Ids loaded (present or not): nothing more to read for them.
    looked_up: HashSet<String>,
    /// Archived cases among the ids loaded and not present: a start under one is refused.
    archived: HashMap<String, crate::store::ArchivedRow>,
    known_keys: HashMap<String, IdempotencyRow>,
    new_keys: HashMap<String, IdempotencyRow>,
    batch: Batch,
    timer_rows: HashMap<(String, String), usize>,
    changed: HashMap<String, usize>,
    wheel_ops: Vec<WheelOp>,
    fired: Vec<Fired>,
    /// The statistics counters the batch's transitions move.
    tally: crate::domain::figures::Tally,
    /// Timers armed in this batch whose due time has already come: (due, instance, name).
    due_now: Vec<(Millis, String, String)>,
    counts: Vec<(&'static str, &'static str)>,
    rules: Vec<Option<usize>>,
    /// Groups' first commands decided ahead by [`Builder::derived_ids`], by instance: reused by
    /// [`Builder::group`] when the instance is still as it was then, so that no command is
    /// decided twice (a licence's decision cost a CompleteApproval about 2 % of the writer's
    /// time again; BENCHMARKS.md, issue 23).
    hints: HashMap<String, Hint>,
}

/// A command decided ahead, with the instance's `seq` it was decided on (`None`: absent).
struct Hint {
    base: Option<u64>,
    command: Command,
    transition: Transition,
}

/// A finished batch.
#[derive(Debug, Default)]
pub struct Built {
    /// The rows to commit in one transaction.
    pub batch: Batch,
    /// Timer-wheel changes to apply after the commit.
    pub wheel_ops: Vec<WheelOp>,
    /// Timers fired.
    pub fired: Vec<Fired>,
    /// Commands by (kind, result), counted once the batch's fate is known.
    pub counts: Vec<(&'static str, &'static str)>,
    /// Every instance the batch read or changed, as the batch leaves them (for the cache).
    pub live: HashMap<String, Result<Instance, WriteError>>,
    /// For each entry of `batch.history`: the line of the definition's transition it took.
    pub rules: Vec<Option<usize>>,
}

/// The command's kind as metrics and logs name it.
pub(crate) fn kind_of(command: &Command) -> &'static str {
    match command.kind {
        CommandKind::Start { .. } => "start",
        CommandKind::Event { .. } => "event",
        CommandKind::Timer { .. } => "timer",
        CommandKind::Replan { .. } => "replan",
    }
}

impl<'a> Builder<'a> {
    /// An empty batch at engine time `now`, knowing the stored request ids `known_keys`
    /// (those of the batch's commands; ids older than `retention` are forgotten).
    pub fn new(
        registry: &'a Registry,
        calendars: &'a Calendars,
        shards: u32,
        retention: Millis,
        now: Millis,
        known_keys: HashMap<String, IdempotencyRow>,
    ) -> Self {
        Builder {
            registry,
            calendars,
            shards,
            retention,
            now,
            live: HashMap::new(),
            looked_up: HashSet::new(),
            archived: HashMap::new(),
            known_keys,
            new_keys: HashMap::new(),
            batch: Batch::default(),
            timer_rows: HashMap::new(),
            changed: HashMap::new(),
            wheel_ops: Vec::new(),
            fired: Vec::new(),
            tally: Default::default(),
            due_now: Vec::new(),
            counts: Vec::new(),
            rules: Vec::new(),
            hints: HashMap::new(),
        }
    }

    /// Adds stored request ids to those the batch knows (for commands added after it was
    /// created). A request id the batch itself recorded stays the batch's.
    pub fn know_keys(&mut self, rows: HashMap<String, IdempotencyRow>) {
        self.known_keys.extend(rows);
    }

    /// Decides the commands added from now on at `now` (never earlier than before): a batch
    /// that goes on gathering while the one before it commits decides its later commands when
    /// they arrived, as the next batch would have.
    pub fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    /// The ids among `ids` not loaded yet, each once.
    pub fn unseen<'i>(&self, ids: impl IntoIterator<Item = &'i str>) -> Vec<&'i str> {
        let mut out: Vec<&str> = ids.into_iter().filter(|id| !self.looked_up.contains(*id)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Records that `ids` were loaded: `instances` holds those that exist (from a cache),
    /// `rows` those read from the store (decoded here); the rest do not exist.
    pub fn insert_loaded(&mut self, ids: &[&str], instances: Vec<Instance>, rows: HashMap<String, InstanceRow>) {
        for instance in instances {
            self.live.insert(instance.id.clone(), Ok(instance));
        }
        for (id, row) in rows {
            let decoded = self.decode(row);
            self.live.insert(id, decoded);
        }
        self.looked_up.extend(ids.iter().map(|id| (*id).to_owned()));
    }

    /// Records which of the ids loaded and not present are archived cases.
    pub fn insert_archived(&mut self, archived: HashMap<String, crate::store::ArchivedRow>) {
        self.archived.extend(archived);
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

    fn seen(&self, command: &Command) -> Seen {
        let Some(idem) = &command.idempotency else { return Seen::New };
        let (row, in_batch) = match self.new_keys.get(&idem.key) {
            Some(row) => (row, true),
            None => match self.known_keys.get(&idem.key) {
                // A key past its retention is forgotten, whether or not it was pruned yet.
                Some(row) if row.created_at < self.now.saturating_sub(self.retention) => return Seen::New,
                Some(row) => (row, false),
                None => return Seen::New,
            },
        };
        if row.fingerprint != idem.fingerprint || row.instance != command.instance {
            let key = command.request_id.clone().unwrap_or_else(|| idem.key.clone());
            return Seen::Refused(WriteError::KeyReused { key });
        }
        match self.live.get(&command.instance) {
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

    /// Runs `decide` for one command against the batch so far (and `overlay`, a group's
    /// members decided before it), without recording anything.
    fn try_decide(&self, overlay: &HashMap<String, Instance>, command: &Command) -> Result<Transition, WriteError> {
        let current = match overlay.get(&command.instance) {
            Some(instance) => Some(instance),
            None => match self.live.get(&command.instance) {
                Some(Ok(instance)) => Some(instance),
                Some(Err(e)) => return Err(e.clone()),
                None => None,
            },
        };
        if let (None, CommandKind::Start { .. }) = (current, &command.kind) {
            if let Some(archived) = self.archived.get(&command.instance) {
                return Err(WriteError::Archived(Box::new(archived.clone())));
            }
        }
        let def = self.definition_for(command, current)?;
        Ok(decide(&def, current, command, self.now, self.calendars)?)
    }

    /// The responsible party of a fired timer if it is a deadline, from its definition.
    fn breach_of(&self, instance: &Instance, timer: &str) -> Option<String> {
        let def = self.registry.get(&instance.workflow, instance.version)?;
        let spec = def.timer(timer).filter(|spec| spec.deadline)?;
        let named = spec.responsible.as_deref().and_then(|var| match instance.vars.get(var) {
            Some(Value::Str(s)) => Some(s.clone()),
            _ => None,
        });
        Some(named.unwrap_or_else(|| "unspecified".to_owned()))
    }

    /// Records a decided transition into the batch.
    fn record(&mut self, command: &Command, t: Transition) -> Applied {
        let now = self.now;
        if let CommandKind::Timer { name, due } = &command.kind {
            let breach_of = self.breach_of(&t.instance, name);
            self.fired.push(Fired { due: *due, workflow: t.instance.workflow.clone(), breach_of });
        }
        let before = match self.live.get(&command.instance) {
            Some(Ok(instance)) => Some(instance),
            _ => None,
        };
        // `before` is what the store holds (or an earlier transition of this batch): with
        // several nodes a stale one cannot commit, its history entry would conflict.
        self.tally.change(before, Some(&t.instance));
        let previous = before.map(|instance| instance.timers.clone());
        let shard = shard_of(&command.instance, self.shards);
        let id = command.instance.clone();
        let cancel_old = |ops: &mut Vec<WheelOp>, name: &str| {
            if let Some(old) = previous.as_ref().and_then(|timers| timers.get(name)) {
                ops.push(WheelOp::Cancel(TimerKey { instance: id.clone(), name: name.to_owned(), due: old.due }));
            }
        };
        for name in &t.remove {
            cancel_old(&mut self.wheel_ops, name);
            self.set_timer((id.clone(), name.clone()), None);
        }
        for (name, timer) in &t.arm {
            cancel_old(&mut self.wheel_ops, name);
            self.wheel_ops.push(WheelOp::Insert(TimerKey { instance: id.clone(), name: name.clone(), due: timer.due }));
            if timer.due <= now {
                self.due_now.push((timer.due, id.clone(), name.clone()));
            }
            self.set_timer((id.clone(), name.clone()), Some((timer.clone(), shard)));
        }
        for (i, message) in t.outbox.iter().enumerate() {
            self.batch.outbox.push(OutboxRow {
                key: format!("{id}:{}:{i}", t.history.seq),
                instance: id.clone(),
                seq: t.history.seq,
                message: message.clone(),
                created_at: now,
                // Routed by the writer task, which knows the configuration.
                destination: None,
            });
        }
        if let Some(idem) = &command.idempotency {
            let row = IdempotencyRow {
                instance: id.clone(),
                seq: t.history.seq,
                fingerprint: idem.fingerprint.clone(),
                created_at: now,
            };
            self.batch.idempotency.push((idem.key.clone(), row.clone()));
            self.new_keys.insert(idem.key.clone(), row);
        }
        let row = InstanceRow::of(&t.instance, shard);
        match self.changed.get(&id) {
            Some(&i) => self.batch.instances[i] = row,
            None => {
                self.changed.insert(id.clone(), self.batch.instances.len());
                self.batch.instances.push(row);
            }
        }
        if t.history.from.is_none() {
            self.index(&t.instance, now);
        }
        let seq = t.history.seq;
        self.rules.push(t.rule);
        self.batch.history.push((id.clone(), t.history));
        let applied = Applied { instance: t.instance.clone(), seq, duplicate: false };
        self.live.insert(id, Ok(t.instance));
        applied
    }

    /// Adds a started instance to the enterprise index, if its workflow declares one and the
    /// subject variable is set.
    fn index(&mut self, instance: &crate::machine::Instance, now: Millis) {
        // The registry outlives the builder: the spec is borrowed from it, not from `self`.
        let registry = self.registry;
        let Some(spec) = registry.get(&instance.workflow, instance.version).and_then(|d| d.index.as_ref()) else {
            return;
        };
        let var = |name: &str| match instance.vars.get(name) {
            Some(crate::definition::Value::Str(s)) => Some(s.as_str()),
            _ => None,
        };
        let text = |name: Option<&String>| name.and_then(|n| var(n)).unwrap_or_default().to_owned();
        let Some(code) = spec.code(var) else { return };
        self.batch.subjects.push(crate::store::SubjectRow {
            code,
            instance: instance.id.clone(),
            workflow: instance.workflow.clone(),
            item: text(spec.item.as_ref()),
            grade: text(spec.grade.as_ref()),
            created_at: now,
        });
    }

    fn set_timer(&mut self, key: (String, String), value: Option<(ArmedTimer, u32)>) {
        match self.timer_rows.get(&key) {
            Some(&i) => self.batch.timers[i].1 = value,
            None => {
                self.timer_rows.insert(key.clone(), self.batch.timers.len());
                self.batch.timers.push((key, value));
            }
        }
    }

    /// Decides and records one command. Answers it, and whether the answer is true only once
    /// the batch commits (false for a refusal, or a duplicate of a committed request).
    pub fn one(&mut self, command: &Command) -> (Result<Applied, WriteError>, bool) {
        match self.seen(command) {
            Seen::Duplicate(applied, in_batch) => return (Ok(applied), in_batch),
            Seen::Refused(e) => return (Err(e), false),
            Seen::New => {}
        }
        match self.try_decide(&HashMap::new(), command) {
            Ok(t) => {
                self.counts.push((kind_of(command), "applied"));
                (Ok(self.record(command, t)), true)
            }
            Err(e) => {
                // A re-plan that finds nothing to move is not a refusal of anything asked.
                let result = match e {
                    WriteError::Rejected(Rejection::NothingToReplan { .. }) => "unchanged",
                    _ => "rejected",
                };
                self.counts.push((kind_of(command), result));
                (Err(e), false)
            }
        }
    }

    /// The instances a group's derived commands would name if it were decided now and that are
    /// not loaded yet. A hint, so that the task reads them for the whole batch at once rather
    /// than group by group; [`Builder::group`] still asks for anything the hint missed (an
    /// earlier command of the batch may change what a group derives). Nothing is recorded.
    pub fn derived_ids(&mut self, items: &[GroupItem], derive: Option<&Derive>) -> Vec<String> {
        let (Some(first), Some(derive)) = (items.first(), derive) else { return Vec::new() };
        let Ok(t) = self.try_decide(&HashMap::new(), &first.command) else { return Vec::new() };
        let Ok(more) = derive(&t.instance) else { return Vec::new() };
        let ids =
            self.unseen(more.iter().map(|i| i.command.instance.as_str())).into_iter().map(str::to_owned).collect();
        let hint = Hint { base: self.base_of(&first.command.instance), command: first.command.clone(), transition: t };
        self.hints.insert(first.command.instance.clone(), hint);
        ids
    }

    /// The `seq` of the instance `id` as the batch holds it now (`None`: absent or unreadable).
    fn base_of(&self, id: &str) -> Option<u64> {
        match self.live.get(id) {
            Some(Ok(instance)) => Some(instance.seq),
            _ => None,
        }
    }

    /// The decision of a group's first command, from its hint if the hint is for this command
    /// on the instance as it is now (decisions are a function of the instance, the command, the
    /// batch's instant and calendars — the last two are the batch's own), else decided now.
    fn decide_first(&mut self, command: &Command) -> Result<Transition, WriteError> {
        if let Some(hint) = self.hints.remove(&command.instance) {
            if hint.command == *command && hint.base == self.base_of(&command.instance) {
                return Ok(hint.transition);
            }
        }
        self.try_decide(&HashMap::new(), command)
    }

    /// Decides a group all or nothing: every member on an overlay first, in order (each sees
    /// the ones before it), then `derive`'s commands from the first member's result; only if
    /// every required member was accepted are the transitions recorded (as decided: nothing is
    /// decided twice). Only the first member's request id counts, for the whole group.
    pub fn group(&mut self, items: &[GroupItem], derive: Option<&Derive>) -> GroupStep {
        let fail = |index: usize, instance: &str, error: WriteError| {
            GroupStep::Done(Err(GroupError { index, instance: instance.to_owned(), error }), false)
        };
        if let Some(first) = items.first() {
            match self.seen(&first.command) {
                Seen::New => {}
                Seen::Refused(error) => return fail(0, &first.command.instance, error),
                Seen::Duplicate(applied, in_batch) => {
                    // The whole group was applied before. The first member answers as it did
                    // then (its history entry); the others are not decided again.
                    let mut answers = vec![Some(applied)];
                    answers.resize(items.len(), None);
                    return GroupStep::Done(Ok(answers), in_batch);
                }
            }
        }
        let mut overlay: HashMap<String, Instance> = HashMap::new();
        let mut derived: Vec<GroupItem> = Vec::new();
        let mut decided = Vec::with_capacity(items.len());
        for index in 0.. {
            // The given items, then the derived ones.
            let Some(item) = items.get(index).or_else(|| derived.get(index - items.len())) else { break };
            let mut command = item.command.clone();
            if index > 0 {
                command.request_id = None;
                command.idempotency = None;
            }
            let decided_now =
                if index == 0 { self.decide_first(&command) } else { self.try_decide(&overlay, &command) };
            match decided_now {
                Ok(t) => {
                    if let (0, Some(derive)) = (index, derive) {
                        derived = match derive(&t.instance) {
                            Ok(more) => more,
                            Err(error) => return fail(0, &command.instance, error),
                        };
                        let missing = self.unseen(derived.iter().map(|i| i.command.instance.as_str()));
                        if !missing.is_empty() {
                            return GroupStep::Load(missing.into_iter().map(str::to_owned).collect());
                        }
                    }
                    overlay.insert(command.instance.clone(), t.instance.clone());
                    decided.push(Some((command, t)));
                }
                Err(_) if !item.required => decided.push(None),
                Err(error) => return fail(index, &command.instance, error),
            }
        }
        let answers = decided
            .into_iter()
            .map(|d| {
                d.map(|(command, t)| {
                    self.counts.push((kind_of(&command), "applied"));
                    self.record(&command, t)
                })
            })
            .collect();
        GroupStep::Done(Ok(answers), true)
    }

    /// Records a re-plan's progress in the batch: it advances only if the batch commits.
    pub fn record_replan(&mut self, job: crate::store::ReplanJob) {
        self.batch.replan = Some(job);
    }

    /// Fires, in this batch and in due order, the timers it armed with a due time already come
    /// (a reminder for tomorrow's deadline armed after its 09:00, or a deadline a new calendar
    /// moved into the past): "at once", so the caller's answer shows the fired state and
    /// nothing waits for the timer service. A chain of such fires is followed a bounded number
    /// of rounds; anything left is in the wheel, which fires it next.
    pub fn fire_due_now(&mut self) {
        for _ in 0..IMMEDIATE_ROUNDS {
            if self.due_now.is_empty() {
                return;
            }
            let mut due = std::mem::take(&mut self.due_now);
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
                let _ = self.one(&command);
            }
        }
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The batch as built.
    pub fn finish(mut self) -> Built {
        self.batch.figures = self.tally.rows();
        Built {
            batch: self.batch,
            wheel_ops: self.wheel_ops,
            fired: self.fired,
            counts: self.counts,
            live: self.live,
            rules: self.rules,
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
