//! The workflow definition language: TOML files in, validated [`Definition`]s out.
//!
//! Owns the language's types (this file: [`Definition`] and its parts), the raw TOML shape
//! (`raw`), validation with `file:line` diagnostics ([`parse`], in `validate`), message
//! templates (`template`), the versioned [`Registry`] ([`registry`]), and drawing a definition
//! as a Mermaid diagram ([`render`]). The language reference is `workflows/README.md`; the
//! expression sub-languages are in [`expr`].
//!
//! # Contract
//! A [`Definition`] can only be built by loading and validating text, so `decide` never meets
//! an unknown state, an unknown variable or an expression that does not type-check. Every
//! problem in a file is reported, not only the first.

pub mod expr;
mod raw;
pub mod registry;
pub mod render;
pub mod schedule;
pub mod schema;
pub mod template;
mod validate;

pub use registry::{embedded, Registry};
pub use validate::parse;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::NaiveDate;

use expr::{Guard, TimeExpr, ValueExpr};

/// The type of a variable or event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// Text.
    Str,
    /// A 64-bit integer.
    Int,
    /// true / false.
    Bool,
    /// A calendar date (no time zone).
    Date,
    /// An instant (UTC milliseconds).
    Instant,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Str => "string",
            Type::Int => "int",
            Type::Bool => "bool",
            Type::Date => "date",
            Type::Instant => "instant",
        })
    }
}

impl Type {
    fn parse(s: &str) -> Option<(Type, bool)> {
        let (name, optional) = match s.strip_suffix('?') {
            Some(n) => (n, true),
            None => (s, false),
        };
        let t = match name {
            "string" => Type::Str,
            "int" => Type::Int,
            "bool" => Type::Bool,
            "date" => Type::Date,
            "instant" => Type::Instant,
            _ => return None,
        };
        Some((t, optional))
    }
}

/// A value of a variable or event field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A date.
    Date(NaiveDate),
    /// An instant, UTC milliseconds.
    Instant(i64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Date(d) => write!(f, "{d}"),
            Value::Instant(i) => f.write_str(&crate::clock::display(*i)),
        }
    }
}

impl Value {
    /// The value's type.
    pub fn ty(&self) -> Type {
        match self {
            Value::Str(_) => Type::Str,
            Value::Int(_) => Type::Int,
            Value::Bool(_) => Type::Bool,
            Value::Date(_) => Type::Date,
            Value::Instant(_) => Type::Instant,
        }
    }

    /// JSON form: strings, numbers and booleans as themselves, dates as `YYYY-MM-DD`, instants
    /// as RFC 3339 UTC with milliseconds.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Int(n) => serde_json::Value::from(*n),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Date(d) => serde_json::Value::String(d.to_string()),
            Value::Instant(i) => serde_json::Value::String(
                crate::clock::to_datetime(*i).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
        }
    }

    /// Reads the JSON form of a value of type `ty`. The message says what was expected.
    pub fn from_json(ty: Type, json: &serde_json::Value) -> Result<Value, String> {
        let got = || match json {
            serde_json::Value::Null => "null".to_owned(),
            serde_json::Value::String(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
            other => other.to_string(),
        };
        match (ty, json) {
            (Type::Str, serde_json::Value::String(s)) => Ok(Value::Str(s.clone())),
            (Type::Int, serde_json::Value::Number(n)) => {
                n.as_i64().map(Value::Int).ok_or_else(|| format!("expected an integer, got {}", got()))
            }
            (Type::Bool, serde_json::Value::Bool(b)) => Ok(Value::Bool(*b)),
            (Type::Date, serde_json::Value::String(s)) => crate::calendar::parse_date(s)
                .map(Value::Date)
                .ok_or_else(|| format!("expected a date YYYY-MM-DD, got {}", got())),
            (Type::Instant, serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| Value::Instant(t.timestamp_millis()))
                .map_err(|_| format!("expected an RFC 3339 instant, got {}", got())),
            (Type::Instant, serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Value::Instant)
                .ok_or_else(|| format!("expected milliseconds since the epoch, got {}", got())),
            _ => Err(format!("expected {ty}, got {}", got())),
        }
    }
}

/// One problem in a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or embedded name).
    pub file: String,
    /// 1-based line; 0 when the problem has no single place.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// Loading errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more definitions are invalid; every problem is listed.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A declared variable.
#[derive(Debug, Clone)]
pub struct VarSpec {
    /// Its type.
    pub ty: Type,
    /// Whether it may be absent when an instance starts.
    pub optional: bool,
}

/// A declared event.
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// Field types.
    pub fields: BTreeMap<String, Type>,
    /// Fields that must be present.
    pub required: BTreeSet<String>,
    /// Raised only by the engine (timers); callers may not send it.
    pub internal: bool,
}

/// When a timer is due.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// Once, at the instant a time expression names (`at = …`).
    At(TimeExpr),
    /// At the next occurrence of a cron schedule (`cron = …`); re-armed when it fires.
    Cron(schedule::CronSpec),
}

impl When {
    /// The due instant, with the dates it read.
    pub fn plan(&self, scope: &expr::Scope<'_>) -> Result<expr::Planned, expr::EvalError> {
        match self {
            When::At(t) => t.plan(scope),
            When::Cron(c) => c.plan(scope),
        }
    }

    /// Source text.
    pub fn text(&self) -> &str {
        match self {
            When::At(t) => &t.text,
            When::Cron(c) => &c.text,
        }
    }
}

/// A timer: armed on entry to its state (or by a transition), fires its event when due.
#[derive(Debug, Clone)]
pub struct TimerSpec {
    /// Unique per instance: arming a name that is armed replaces it.
    pub name: String,
    /// When it is due.
    pub at: When,
    /// The event it raises.
    pub event: String,
    /// Whether it is a deadline: its firing is a breach (timelines and statistics say so).
    pub deadline: bool,
    /// For a deadline: the text variable naming who is responsible for meeting it (a
    /// department); breaches are counted against its value.
    pub responsible: Option<String>,
}

/// An outbox message template.
#[derive(Debug, Clone)]
pub struct EmitSpec {
    /// Where it goes (`sms`, `supervision`, `credit`, …): the dispatcher routes on it.
    pub channel: String,
    /// The recipient, if the template names one.
    pub to: Option<expr::Operand>,
    /// The body, with `{placeholders}` filled at decide time.
    pub template: Template,
    /// The name configured templates know it by.
    pub name: Option<String>,
    /// The record's type: what a receiver dispatches on.
    pub kind: String,
    /// The version of the type's schema.
    pub schema_version: u32,
    /// The record's typed fields, in name order.
    pub data: Vec<(String, DataValue)>,
}

/// A field of a message's typed data (`data = { … }` of an emit).
#[derive(Debug, Clone, PartialEq)]
pub enum DataValue {
    /// A value of its type (dates `YYYY-MM-DD`, instants RFC 3339 in China Standard Time);
    /// `null` when absent, which only a `nullable` one may be.
    Value {
        /// Where it comes from.
        operand: expr::Operand,
        /// Its type.
        ty: Type,
        /// Whether it may be absent (an optional variable or event field).
        nullable: bool,
    },
    /// The instance id.
    InstanceId,
    /// A text variable holding a JSON array of objects, sent as that array, each object with
    /// exactly these text fields (`""` for one it lacks).
    Objects {
        /// The variable.
        operand: expr::Operand,
        /// The fields of each object.
        fields: Vec<String>,
    },
}

/// A parsed message template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(pub Vec<Segment>);

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Text as written.
    Text(String),
    /// A value filled in at decide time.
    Value(expr::Operand),
    /// The instance id.
    InstanceId,
    /// The state entered.
    State,
}

/// A state.
#[derive(Debug, Clone)]
pub struct StateSpec {
    /// Its name.
    pub name: String,
    /// Whether it ends the instance.
    pub terminal: bool,
    /// Timers armed on entry and cancelled on exit.
    pub timers: Vec<TimerSpec>,
    /// Messages emitted on entry.
    pub emit: Vec<EmitSpec>,
    /// Free text for people.
    pub description: String,
}

/// A transition.
#[derive(Debug, Clone)]
pub struct TransitionSpec {
    /// Source states (`*` in the file expands to every non-terminal state).
    pub from: Vec<String>,
    /// The event that triggers it.
    pub event: String,
    /// The state entered.
    pub to: String,
    /// Taken only when this holds; among several transitions for one (state, event), the first
    /// whose guard holds wins.
    pub guard: Option<Guard>,
    /// The guard's source text.
    pub guard_text: Option<String>,
    /// Variables set, evaluated against the variables before the transition.
    pub set: Vec<(String, ValueExpr)>,
    /// Messages emitted.
    pub emit: Vec<EmitSpec>,
    /// Timers armed (beyond the target state's own).
    pub arm: Vec<TimerSpec>,
    /// Timers cancelled by name.
    pub cancel: Vec<String>,
    /// Line in the file, for diagnostics and diagrams.
    pub line: usize,
}

/// The string variables the writer indexes when an instance starts (`index = { … }`): the
/// enterprise profile and the spot checks find instances through them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The credit code or citizen ID of whom the instance concerns.
    pub subject: String,
    /// The handling item it is about.
    pub item: Option<String>,
    /// The credit grade it was decided on.
    pub grade: Option<String>,
}

impl IndexSpec {
    /// The code an instance is indexed under, given its text variables: the subject variable,
    /// when set and not empty.
    pub fn code<'a>(&self, text: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
        text(&self.subject).filter(|s| !s.is_empty()).map(str::to_owned)
    }
}

/// A validated workflow definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Workflow name.
    pub name: String,
    /// Version; a running instance stays on the version it started with.
    pub version: u32,
    /// Free text.
    pub description: String,
    /// The file it was loaded from.
    pub file: String,
    /// The state an instance starts in.
    pub initial: String,
    /// Declared variables.
    pub vars: BTreeMap<String, VarSpec>,
    /// Declared events.
    pub events: BTreeMap<String, EventSpec>,
    /// States in file order.
    pub states: Vec<StateSpec>,
    /// Transitions in file order.
    pub transitions: Vec<TransitionSpec>,
    /// Which variables say whom an instance concerns (the enterprise index), if any.
    pub index: Option<IndexSpec>,
    state_index: HashMap<String, usize>,
    by_state_event: HashMap<(String, String), Vec<usize>>,
}

impl Definition {
    /// Every message its states (on entry) and transitions emit.
    pub fn emits(&self) -> impl Iterator<Item = &EmitSpec> {
        let states = self.states.iter().flat_map(|s| &s.emit);
        states.chain(self.transitions.iter().flat_map(|t| &t.emit))
    }

    /// Every channel its states and transitions emit on.
    pub fn channels(&self) -> std::collections::BTreeSet<&str> {
        self.emits().map(|e| e.channel.as_str()).collect()
    }

    /// A state by name.
    pub fn state(&self, name: &str) -> Option<&StateSpec> {
        self.state_index.get(name).map(|&i| &self.states[i])
    }

    /// Transitions that may handle `event` in `state`, in the order their guards are tried.
    pub fn candidates(&self, state: &str, event: &str) -> impl Iterator<Item = &TransitionSpec> {
        self.by_state_event
            .get(&(state.to_owned(), event.to_owned()))
            .into_iter()
            .flatten()
            .map(|&i| &self.transitions[i])
    }

    /// A timer spec by name (state timers first, then timers armed by transitions).
    pub fn timer(&self, name: &str) -> Option<&TimerSpec> {
        self.states
            .iter()
            .flat_map(|s| s.timers.iter())
            .chain(self.transitions.iter().flat_map(|t| t.arm.iter()))
            .find(|t| t.name == name)
    }

    /// The variable holding the instance's region code, if the workflow declares `region`.
    pub fn region_var(&self) -> Option<&str> {
        self.vars.get("region").filter(|v| v.ty == Type::Str).map(|_| "region")
    }
}

#[cfg(test)]
mod tests;
