//! The pure core: [`decide`] turns (definition, instance, command, now, calendar) into a
//! [`Transition`] — the new instance row, the timers to arm and cancel, the outbox messages and
//! the history entry — or a [`Rejection`].
//!
//! # Invariant
//! No async, no I/O, no clock: everything time-dependent comes in as `now`. That makes the
//! transition tests, replay ([`replay`]) and `shenguan admin verify` single function calls, and
//! it is why the writer can run `decide` for a whole batch before touching the database.

pub mod replay;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calendar::Calendars;
use crate::clock::Millis;
use crate::definition::expr::{EvalError, Operand, Scope};
use crate::definition::{DataValue, Definition, EmitSpec, Segment, TimerSpec, Type, Value};

/// A timer that is armed on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedTimer {
    /// When it is due (UTC ms).
    pub due: Millis,
    /// The event it raises.
    pub event: String,
    /// For a timer counted in working days: what it was counted from and over, so that a new
    /// calendar can re-plan it. `None` for a timer that counted no working days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// How a working-day timer was computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The instant it was armed (its expression's `now` and `entry`).
    pub armed_at: Millis,
    /// The first date whose working-day status the due time depends on.
    pub first: chrono::NaiveDate,
    /// The last such date.
    pub last: chrono::NaiveDate,
    /// Whether one of those dates is in a provisional year.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
}

/// The durable state of one workflow instance: exactly one row in `instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Instance id (for a case: the case id).
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// The definition version the instance started on and stays on.
    pub version: u32,
    /// Current state.
    pub state: String,
    /// Variables.
    pub vars: BTreeMap<String, Value>,
    /// Armed timers by name.
    pub timers: BTreeMap<String, ArmedTimer>,
    /// Number of history entries; the last entry's sequence number.
    pub seq: u64,
    /// When the instance started.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandKind {
    /// Start a new instance of the newest version of `workflow` (or of `version`).
    Start {
        /// Workflow name.
        workflow: String,
        /// Explicit version, for replay; new instances take the newest.
        version: Option<u32>,
        /// Initial variables, as JSON.
        vars: serde_json::Map<String, serde_json::Value>,
    },
    /// Deliver an event from a caller.
    Event {
        /// Event name.
        name: String,
        /// Event fields, as JSON.
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// A timer fell due.
    Timer {
        /// Timer name.
        name: String,
        /// The due instant it was armed with (a re-armed timer has another).
        due: Millis,
    },
    /// A new calendar was loaded: recompute every working-day timer from its definition's
    /// expression and the instance's variables, as of the instant it was armed.
    Replan {
        /// The calendar that caused it, as people should read it: `national 2027 v2 (notice)`.
        calendar: String,
    },
}

/// One request to change one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The instance.
    pub instance: String,
    /// What to do.
    pub kind: CommandKind,
    /// Who asks (a platform, an office, `timer`).
    pub actor: String,
    /// The caller's request id, recorded in history as given.
    pub request_id: Option<String>,
    /// How the writer recognises this request when it comes again; `None`: it does not.
    pub idempotency: Option<Idempotency>,
}

impl Command {
    /// Makes the command idempotent under its own request id in `scope`, fingerprinted by its
    /// content (for commands built in-process; the API fingerprints what it received).
    #[must_use]
    pub fn keyed(mut self, scope: &str) -> Self {
        self.idempotency =
            self.request_id.as_deref().map(|id| Idempotency::of_command(scope, id, &self.instance, &self.kind));
        self
    }
}

/// The key under which a request is remembered, and what it said.
///
/// Keys live in one namespace per scope (the API method and, where the key is the caller's own,
/// the caller), so one client's ids can never answer another's requests, and a key of the
/// generic service can never block a domain call. They are kept for a retention period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// `scope` + the caller's key, as stored.
    pub key: String,
    /// SHA-256 (hex) of the request as received: the same key with other content is refused.
    pub fingerprint: String,
}

impl Idempotency {
    /// The key `id` in `scope`, for a request whose received bytes are `request`.
    pub fn new(scope: &str, id: &str, request: &[u8]) -> Self {
        // The unit separator cannot occur in a scope: scopes and ids are checked text.
        Idempotency { key: format!("{scope}\u{1f}{id}"), fingerprint: sha256_hex(request) }
    }

    /// The key `id` in `scope` for a command built in-process (tests, tools) rather than
    /// received: fingerprinted by its instance and content. The API fingerprints the bytes it
    /// received instead, so that what it derives (a deadline from today) cannot change a retry.
    pub fn of_command(scope: &str, id: &str, instance: &str, kind: &CommandKind) -> Self {
        // `Debug` of plain data cannot fail, unlike serialising; the maps in `kind` are ordered.
        Self::new(scope, id, format!("{instance}\u{0}{kind:?}").as_bytes())
    }
}

/// SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A message to another system, written to the outbox with the transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Delivery channel.
    pub channel: String,
    /// Recipient, when the definition names one.
    pub recipient: Option<String>,
    /// Rendered text.
    pub body: String,
    /// The name configured templates know it by (the definition's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The record's type (absent on messages written before records were typed).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The version of the type's schema (0 when untyped).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schema_version: u32,
    /// The record's typed fields, as the emit declares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Message {
    /// An untyped message (tests, and rows written before records were typed).
    pub fn text(channel: &str, recipient: Option<String>, body: &str) -> Message {
        Message {
            channel: channel.to_owned(),
            recipient,
            body: body.to_owned(),
            template: None,
            kind: None,
            schema_version: 0,
            data: None,
        }
    }

    /// The record as every receiver gets it: `{type, schema_version, data}` (null for an
    /// untyped message).
    pub fn envelope(&self) -> serde_json::Value {
        serde_json::json!({
            "type": self.kind,
            "schema_version": self.schema_version,
            "data": self.data,
        })
    }
}

/// One entry of an instance's append-only history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// 1-based position in the instance's history.
    pub seq: u64,
    /// When it was applied.
    pub at: Millis,
    /// Who caused it.
    pub actor: String,
    /// The caller's idempotency key.
    pub request_id: Option<String>,
    /// The command as received (replay feeds it back to `decide`).
    pub command: CommandKind,
    /// State before (`None` for a start).
    pub from: Option<String>,
    /// State after.
    pub to: String,
    /// Timers armed: name → due.
    pub armed: BTreeMap<String, Millis>,
    /// Timers cancelled without firing: name → the due they had.
    pub cancelled: BTreeMap<String, Millis>,
    /// Number of outbox messages written.
    pub messages: u32,
    /// Whether a transition was taken (a timer armed by a transition may fire in a state that
    /// does not handle it; it is recorded and consumed, and the state stays).
    pub handled: bool,
    /// The calendar set it was computed with ([`Calendars::generation`]); replay uses the same.
    #[serde(default)]
    pub calendar: u64,
}

/// The result of a successful [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The instance row after the command.
    pub instance: Instance,
    /// The history entry to append.
    pub history: HistoryEntry,
    /// Timers to insert (replacing a timer of the same name).
    pub arm: Vec<(String, ArmedTimer)>,
    /// Timers to delete, by name (cancelled, or the one that fired).
    pub remove: Vec<String>,
    /// Messages for the outbox.
    pub outbox: Vec<Message>,
    /// The definition's transition that was taken, by its line in the file (`None` for a start,
    /// or a timer with nowhere to go). Not stored: for coverage and diagnostics.
    pub rule: Option<usize>,
}

/// Why a command was refused. Nothing is written for a rejected command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A start for an id that exists.
    #[error("instance {instance} already exists")]
    AlreadyExists {
        /// The id.
        instance: String,
    },
    /// An event or timer for an id that does not exist.
    #[error("instance {instance} does not exist")]
    NotFound {
        /// The id.
        instance: String,
    },
    /// No such workflow (or version).
    #[error("unknown workflow {workflow}")]
    UnknownWorkflow {
        /// The name (and version, if one was asked for).
        workflow: String,
    },
    /// The workflow declares no such event.
    #[error("workflow {workflow} has no event {event}")]
    UnknownEvent {
        /// Workflow name.
        workflow: String,
        /// Event name.
        event: String,
    },
    /// The event is raised by the engine only.
    #[error("event {event} is raised by the engine's timers and cannot be sent")]
    InternalEvent {
        /// Event name.
        event: String,
    },
    /// A variable or field is missing, unknown or of the wrong type.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The current state does not accept the event.
    #[error("event {event} is not allowed in state {state}")]
    InvalidTransition {
        /// The current state.
        state: String,
        /// The event.
        event: String,
    },
    /// Transitions exist for the event, but no guard holds.
    #[error("event {event} in state {state}: no transition's guard holds")]
    GuardRejected {
        /// The current state.
        state: String,
        /// The event.
        event: String,
    },
    /// The timer is no longer armed with that due time (cancelled, re-armed or fired already).
    #[error("timer {name} is no longer armed for that instant")]
    StaleTimer {
        /// Timer name.
        name: String,
    },
    /// A re-plan found nothing to change.
    #[error("no working-day timer of {instance} changes")]
    NothingToReplan {
        /// The instance.
        instance: String,
    },
    /// A deadline could not be computed.
    #[error("cannot compute timer {timer}: {source}")]
    Deadline {
        /// The timer.
        timer: String,
        /// Why.
        #[source]
        source: EvalError,
    },
    /// A domain rule outside the definition refuses it (a fan-out that cannot be made).
    #[error("{message}")]
    Refused {
        /// Why, for the caller.
        message: String,
    },
    /// A variable could not be set.
    #[error("cannot set {var}: {source}")]
    Set {
        /// The variable.
        var: String,
        /// Why.
        #[source]
        source: EvalError,
    },
}

fn decode(
    what: &str,
    types: impl Fn(&str) -> Option<Type>,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, Value>, Rejection> {
    let mut out = BTreeMap::new();
    for (key, value) in json {
        let Some(ty) = types(key) else {
            return Err(Rejection::InvalidInput { field: key.clone(), message: format!("unknown {what}") });
        };
        if value.is_null() {
            continue;
        }
        let v =
            Value::from_json(ty, value).map_err(|message| Rejection::InvalidInput { field: key.clone(), message })?;
        out.insert(key.clone(), v);
    }
    Ok(out)
}

/// Decodes a stored variables object against a definition (used by the store).
pub fn decode_vars(
    def: &Definition,
    json: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, Value>, Rejection> {
    decode("variable", |k| def.vars.get(k).map(|v| v.ty), json)
}

/// Encodes variables as a JSON object.
pub fn encode_vars(vars: &BTreeMap<String, Value>) -> serde_json::Map<String, serde_json::Value> {
    vars.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
}

fn render(emit: &EmitSpec, scope: &Scope<'_>, instance: &str, state: &str) -> Message {
    let get = |o: &Operand| -> Option<Value> {
        match o {
            Operand::Var(n) => scope.vars.get(n).cloned(),
            Operand::EventField(n) => scope.event.get(n).cloned(),
            Operand::Now => Some(Value::Instant(scope.now)),
            Operand::Entry => Some(Value::Instant(scope.entry)),
            Operand::Literal(v) => Some(v.clone()),
        }
    };
    let mut body = String::new();
    for seg in &emit.template.0 {
        match seg {
            Segment::Text(t) => body.push_str(t),
            Segment::InstanceId => body.push_str(instance),
            Segment::State => body.push_str(state),
            Segment::Value(o) => {
                if let Some(v) = get(o) {
                    body.push_str(&v.to_string());
                }
            }
        }
    }
    let data = emit
        .data
        .iter()
        .map(|(name, field)| {
            let value = match field {
                DataValue::InstanceId => serde_json::Value::String(instance.to_owned()),
                DataValue::Value { operand, .. } => get(operand).map_or(serde_json::Value::Null, |v| data_json(&v)),
                DataValue::Objects { operand, fields } => objects(get(operand), fields),
            };
            (name.clone(), value)
        })
        .collect();
    Message {
        channel: emit.channel.clone(),
        recipient: emit.to.as_ref().and_then(get).map(|v| v.to_string()),
        body,
        template: emit.name.clone(),
        kind: Some(emit.kind.clone()),
        schema_version: emit.schema_version,
        data: Some(data),
    }
}

/// A value as a record's data carries it: dates `YYYY-MM-DD`, instants RFC 3339 in China
/// Standard Time (`2026-10-09T09:00:00+08:00`), the rest as JSON.
fn data_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Instant(ms) => serde_json::Value::String(
            crate::clock::to_datetime(*ms)
                .with_timezone(&crate::calendar::DEFAULT_TZ)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        ),
        other => other.to_json(),
    }
}

/// A text variable holding a JSON array of objects, as an array of objects with exactly
/// `fields` (each a string; `""` for one an object lacks). Text that is not such an array is
/// damaged data: sent as an empty list rather than failing the transition.
fn objects(value: Option<Value>, fields: &[String]) -> serde_json::Value {
    let Some(Value::Str(text)) = value else { return serde_json::Value::Array(Vec::new()) };
    let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    let project = |item: &serde_json::Value| {
        let object: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|f| {
                let v = item.get(f).and_then(serde_json::Value::as_str).unwrap_or_default();
                (f.clone(), serde_json::Value::String(v.to_owned()))
            })
            .collect();
        serde_json::Value::Object(object)
    };
    serde_json::Value::Array(items.iter().map(project).collect())
}

fn arm(timer: &TimerSpec, scope: &Scope<'_>) -> Result<ArmedTimer, Rejection> {
    let planned = timer.at.plan(scope).map_err(|source| Rejection::Deadline { timer: timer.name.clone(), source })?;
    let plan =
        planned.days.map(|(first, last)| Plan { armed_at: scope.entry, first, last, provisional: planned.provisional });
    Ok(ArmedTimer { due: planned.due, event: timer.event.clone(), plan })
}

/// Applies `command` to `instance` (None when it does not exist yet).
///
/// `def` must be the definition the instance runs on (for a start: the one to start on).
pub fn decide(
    def: &Definition,
    instance: Option<&Instance>,
    command: &Command,
    now: Millis,
    calendars: &Calendars,
) -> Result<Transition, Rejection> {
    match (&command.kind, instance) {
        (CommandKind::Start { vars, .. }, None) => start(def, command, vars, now, calendars),
        (CommandKind::Start { .. }, Some(_)) => Err(Rejection::AlreadyExists { instance: command.instance.clone() }),
        (_, None) => Err(Rejection::NotFound { instance: command.instance.clone() }),
        (CommandKind::Event { name, fields }, Some(instance)) => {
            let spec = def
                .events
                .get(name)
                .ok_or_else(|| Rejection::UnknownEvent { workflow: def.name.clone(), event: name.clone() })?;
            if spec.internal {
                return Err(Rejection::InternalEvent { event: name.clone() });
            }
            let fields = decode("field", |k| spec.fields.get(k).copied(), fields)?;
            if let Some(missing) = spec.required.iter().find(|f| !fields.contains_key(*f)) {
                return Err(Rejection::InvalidInput { field: missing.clone(), message: "required".into() });
            }
            apply(def, instance, command, name, &fields, None, now, calendars)
        }
        (CommandKind::Replan { .. }, Some(instance)) => replan(def, instance, command, now, calendars),
        (CommandKind::Timer { name, due }, Some(instance)) => {
            let armed = instance
                .timers
                .get(name)
                .filter(|t| t.due == *due)
                .ok_or_else(|| Rejection::StaleTimer { name: name.clone() })?;
            let event = armed.event.clone();
            apply(def, instance, command, &event, &BTreeMap::new(), Some(name), now, calendars)
        }
    }
}

/// The history entry of `command` applied at `now` to the existing `instance`, leaving it in
/// `to`: handled, with no timers armed or cancelled and no messages until the caller says so.
fn entry(command: &Command, instance: &Instance, to: &str, now: Millis, calendars: &Calendars) -> HistoryEntry {
    HistoryEntry {
        seq: instance.seq + 1,
        at: now,
        actor: command.actor.clone(),
        request_id: command.request_id.clone(),
        command: command.kind.clone(),
        from: Some(instance.state.clone()),
        to: to.to_owned(),
        armed: BTreeMap::new(),
        cancelled: BTreeMap::new(),
        messages: 0,
        handled: true,
        calendar: calendars.generation(),
    }
}

fn is_cron(spec: &TimerSpec) -> bool {
    matches!(spec.at, crate::definition::When::Cron(_))
}

/// The spec a timer of `state` named `name` was armed from: the state's own, or a
/// transition's `arm`.
fn timer_spec<'a>(def: &'a Definition, state: &str, name: &str) -> Option<&'a TimerSpec> {
    def.state(state)
        .and_then(|s| s.timers.iter().find(|t| t.name == name))
        .or_else(|| def.transitions.iter().flat_map(|t| t.arm.iter()).find(|t| t.name == name))
}

fn replan(
    def: &Definition,
    instance: &Instance,
    command: &Command,
    now: Millis,
    calendars: &Calendars,
) -> Result<Transition, Rejection> {
    let calendar = calendar_of(def, &instance.vars, calendars);
    let empty = BTreeMap::new();
    let mut next = instance.clone();
    let (mut armed, mut cancelled, mut arm_rows) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (name, timer) in &instance.timers {
        let Some(plan) = &timer.plan else { continue };
        let Some(spec) = timer_spec(def, &instance.state, name) else { continue };
        let scope = Scope { vars: &instance.vars, event: &empty, now: plan.armed_at, entry: plan.armed_at, calendar };
        // A timer whose expression cannot be evaluated again (it read an event's field, or the
        // policy now refuses its year) keeps the due it has.
        let Ok(new) = arm(spec, &scope) else { continue };
        if new != *timer {
            cancelled.insert(name.clone(), timer.due);
            armed.insert(name.clone(), new.due);
            next.timers.insert(name.clone(), new.clone());
            arm_rows.push((name.clone(), new));
        }
    }
    if arm_rows.is_empty() {
        return Err(Rejection::NothingToReplan { instance: instance.id.clone() });
    }
    next.seq += 1;
    next.updated_at = now;
    let history = HistoryEntry { armed, cancelled, ..entry(command, instance, &instance.state, now, calendars) };
    Ok(Transition { instance: next, history, arm: arm_rows, remove: Vec::new(), outbox: Vec::new(), rule: None })
}

fn calendar_of<'a>(
    def: &Definition,
    vars: &BTreeMap<String, Value>,
    calendars: &'a Calendars,
) -> &'a crate::calendar::Calendar {
    match def.region_var().and_then(|v| vars.get(v)) {
        Some(Value::Str(code)) => calendars.region(code),
        _ => calendars.national(),
    }
}

fn start(
    def: &Definition,
    command: &Command,
    vars: &serde_json::Map<String, serde_json::Value>,
    now: Millis,
    calendars: &Calendars,
) -> Result<Transition, Rejection> {
    let vars = decode_vars(def, vars)?;
    if let Some((missing, _)) = def.vars.iter().find(|(k, v)| !v.optional && !vars.contains_key(*k)) {
        return Err(Rejection::InvalidInput { field: missing.clone(), message: "required".into() });
    }
    let calendar = calendar_of(def, &vars, calendars);
    let empty = BTreeMap::new();
    let scope = Scope { vars: &vars, event: &empty, now, entry: now, calendar };
    let initial = def.state(&def.initial).ok_or_else(|| Rejection::UnknownWorkflow { workflow: def.name.clone() })?;
    let mut timers = BTreeMap::new();
    let mut armed = BTreeMap::new();
    let mut arm_rows = Vec::new();
    for t in &initial.timers {
        let a = arm(t, &scope)?;
        armed.insert(t.name.clone(), a.due);
        arm_rows.push((t.name.clone(), a.clone()));
        timers.insert(t.name.clone(), a);
    }
    let outbox: Vec<Message> =
        initial.emit.iter().map(|e| render(e, &scope, &command.instance, &def.initial)).collect();
    let instance = Instance {
        id: command.instance.clone(),
        workflow: def.name.clone(),
        version: def.version,
        state: def.initial.clone(),
        vars,
        timers,
        seq: 1,
        created_at: now,
        updated_at: now,
    };
    let history = HistoryEntry {
        seq: 1,
        at: now,
        actor: command.actor.clone(),
        request_id: command.request_id.clone(),
        command: CommandKind::Start {
            workflow: def.name.clone(),
            version: Some(def.version),
            vars: encode_vars(&instance.vars),
        },
        from: None,
        to: def.initial.clone(),
        armed,
        cancelled: BTreeMap::new(),
        messages: u32::try_from(outbox.len()).unwrap_or(u32::MAX),
        handled: true,
        calendar: calendars.generation(),
    };
    Ok(Transition { instance, history, arm: arm_rows, remove: Vec::new(), outbox, rule: None })
}

#[allow(clippy::too_many_arguments)]
fn apply(
    def: &Definition,
    instance: &Instance,
    command: &Command,
    event: &str,
    fields: &BTreeMap<String, Value>,
    fired: Option<&String>,
    now: Millis,
    calendars: &Calendars,
) -> Result<Transition, Rejection> {
    let calendar = calendar_of(def, &instance.vars, calendars);
    let scope = Scope { vars: &instance.vars, event: fields, now, entry: now, calendar };
    let current = def.state(&instance.state);
    // A cron timer that fired: its schedule goes on (see below).
    let recurring = fired.and_then(|n| timer_spec(def, &instance.state, n)).filter(|s| is_cron(s));
    let mut candidates = def.candidates(&instance.state, event).peekable();
    let mut chosen = None;
    let any = candidates.peek().is_some();
    // A terminal state's only transitions are notices (validated: back to itself, changing
    // nothing): an ended instance takes those and nothing else.
    for t in candidates {
        let holds = match &t.guard {
            None => true,
            Some(g) => g.eval(&scope).map_err(|source| Rejection::Set { var: "guard".into(), source })?,
        };
        if holds {
            chosen = Some(t);
            break;
        }
    }

    let mut next = instance.clone();
    next.seq += 1;
    next.updated_at = now;
    let mut remove = Vec::new();
    let mut cancelled = BTreeMap::new();
    if let Some(name) = fired {
        next.timers.remove(name);
        remove.push(name.clone());
    }

    let Some(t) = chosen else {
        if fired.is_none() {
            return Err(if any {
                Rejection::GuardRejected { state: instance.state.clone(), event: event.to_owned() }
            } else {
                Rejection::InvalidTransition { state: instance.state.clone(), event: event.to_owned() }
            });
        }
        // A timer with nowhere to go is consumed and recorded; the state stays. A schedule
        // keeps running: it is armed for its next occurrence.
        let mut armed = BTreeMap::new();
        let mut arm_rows = Vec::new();
        if let Some(spec) = recurring {
            let a = arm(spec, &scope)?;
            armed.insert(spec.name.clone(), a.due);
            next.timers.insert(spec.name.clone(), a.clone());
            arm_rows.push((spec.name.clone(), a));
            remove.retain(|n| n != &spec.name);
        }
        let history = HistoryEntry {
            cancelled,
            armed,
            handled: false,
            ..entry(command, instance, &instance.state, now, calendars)
        };
        return Ok(Transition { instance: next, history, arm: arm_rows, remove, outbox: Vec::new(), rule: None });
    };

    // Variables are all computed from the values before the transition.
    for (var, value) in &t.set {
        match value.eval(&scope).map_err(|source| Rejection::Set { var: var.clone(), source })? {
            Some(v) => next.vars.insert(var.clone(), v),
            None => next.vars.remove(var),
        };
    }
    next.state = t.to.clone();
    let calendar = calendar_of(def, &next.vars, calendars);
    let scope = Scope { vars: &next.vars, event: fields, now, entry: now, calendar };
    let target = def.state(&t.to);
    let changes_state = t.to != instance.state;

    let mut timers = std::mem::take(&mut next.timers);
    let mut cancel = |timers: &mut BTreeMap<String, ArmedTimer>, name: &str| {
        if let Some(timer) = timers.remove(name) {
            cancelled.insert(name.to_owned(), timer.due);
            remove.push(name.to_owned());
        }
    };
    if changes_state {
        for timer in current.map(|s| s.timers.as_slice()).unwrap_or_default() {
            cancel(&mut timers, &timer.name);
        }
    }
    for name in &t.cancel {
        cancel(&mut timers, name);
    }
    if target.is_some_and(|s| s.terminal) {
        let names: Vec<String> = timers.keys().cloned().collect();
        for name in names {
            cancel(&mut timers, &name);
        }
    }

    let mut armed = BTreeMap::new();
    let mut arm_rows = Vec::new();
    let entering: &[TimerSpec] =
        if changes_state { target.map(|s| s.timers.as_slice()).unwrap_or_default() } else { &[] };
    let mut put = |timers: &mut BTreeMap<String, ArmedTimer>, spec: &TimerSpec, scope: &Scope<'_>| {
        let a = arm(spec, scope)?;
        // Re-arming a name replaces it: the old due is gone, so it is not "cancelled".
        cancelled.remove(&spec.name);
        armed.insert(spec.name.clone(), a.due);
        arm_rows.retain(|(n, _): &(String, ArmedTimer)| n != &spec.name);
        arm_rows.push((spec.name.clone(), a.clone()));
        timers.insert(spec.name.clone(), a);
        Ok::<(), Rejection>(())
    };
    for spec in entering.iter().chain(&t.arm) {
        put(&mut timers, spec, &scope)?;
    }
    // A cron timer that fired is armed again for its next occurrence — unless the transition
    // armed it itself, cancelled it, left the state it belongs to, or ended the instance.
    if let Some(spec) = recurring {
        let of_old_state = current.is_some_and(|s| s.timers.iter().any(|x| x.name == spec.name));
        let stays = !(t.cancel.contains(&spec.name) || (changes_state && of_old_state));
        if stays && !timers.contains_key(&spec.name) && !target.is_some_and(|s| s.terminal) {
            // The occurrence after the one that fired, not after now: a firing that came late
            // (the server was down, the clock jumped) must not skip the occurrences in between.
            // Each of them is then already due, and fires in its turn.
            let fired_due = fired.and_then(|n| instance.timers.get(n)).map_or(now, |a| a.due);
            let from = Scope { now: fired_due.min(now), ..scope };
            put(&mut timers, spec, &from)?;
        }
    }
    // A row re-armed under the same name is replaced by the insert, not deleted.
    remove.retain(|n| !armed.contains_key(n));

    let mut outbox: Vec<Message> = t.emit.iter().map(|e| render(e, &scope, &instance.id, &t.to)).collect();
    if changes_state {
        if let Some(s) = target {
            outbox.extend(s.emit.iter().map(|e| render(e, &scope, &instance.id, &t.to)));
        }
    }
    next.timers = timers;
    let history = HistoryEntry {
        armed,
        cancelled,
        messages: u32::try_from(outbox.len()).unwrap_or(u32::MAX),
        ..entry(command, instance, &t.to, now, calendars)
    };
    Ok(Transition { instance: next, history, arm: arm_rows, remove, outbox, rule: Some(t.line) })
}

#[cfg(test)]
mod tests;
