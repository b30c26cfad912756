//! The workflow definition language: TOML files in, validated [`Definition`]s out.
//!
//! Owns parsing (`workflows/*.toml`), validation with `file:line` diagnostics, the versioned
//! [`Registry`], and drawing a definition as a Mermaid diagram ([`render`]). The language
//! reference is `workflows/README.md`; the expression sub-languages are in [`expr`].
//!
//! # Contract
//! A [`Definition`] can only be built by loading and validating text, so `decide` never meets
//! an unknown state, an unknown variable or an expression that does not type-check. Every
//! problem in a file is reported, not only the first.

pub mod expr;
pub mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

use expr::{Env, Guard, TimeExpr, ValueExpr};

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

/// A timer: armed on entry to its state (or by a transition), fires its event when due.
#[derive(Debug, Clone)]
pub struct TimerSpec {
    /// Unique per instance: arming a name that is armed replaces it.
    pub name: String,
    /// When it is due.
    pub at: TimeExpr,
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
    state_index: HashMap<String, usize>,
    by_state_event: HashMap<(String, String), Vec<usize>>,
}

impl Definition {
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

// ---------------------------------------------------------------------------------------------
// Raw TOML shape.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDef {
    name: Spanned<String>,
    version: Spanned<i64>,
    #[serde(default)]
    description: String,
    initial: Spanned<String>,
    #[serde(default)]
    terminal: Vec<Spanned<String>>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    events: BTreeMap<String, Spanned<RawEvent>>,
    #[serde(default)]
    states: Vec<Spanned<RawState>>,
    #[serde(default)]
    transitions: Vec<Spanned<RawTransition>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    timers: Vec<Spanned<RawTimer>>,
    #[serde(default)]
    emit: Vec<RawEmit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimer {
    name: String,
    at: String,
    event: String,
    #[serde(default)]
    deadline: bool,
    #[serde(default)]
    responsible: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmit {
    channel: String,
    #[serde(default)]
    to: Option<String>,
    template: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    from: OneOrMany,
    event: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    guard: Option<String>,
    #[serde(default)]
    set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    emit: Vec<RawEmit>,
    #[serde(default)]
    arm: Vec<RawTimer>,
    #[serde(default)]
    cancel: Vec<String>,
}

struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(text.match_indices('\n').map(|(i, _)| i).collect())
    }

    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Diags<'a> {
    file: &'a str,
    lines: Lines,
    out: Vec<Diagnostic>,
}

impl Diags<'_> {
    fn at(&mut self, offset: usize, message: impl Into<String>) {
        let line = self.lines.of(offset);
        self.out.push(Diagnostic { file: self.file.to_owned(), line, message: message.into() });
    }
}

/// Parses and validates one definition file.
pub fn parse(file: &str, text: &str) -> Result<Definition, Vec<Diagnostic>> {
    let lines = Lines::new(text);
    let raw: RawDef = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map_or(0, |s| lines.of(s.start));
            let message = e.message().to_owned();
            return Err(vec![Diagnostic { file: file.to_owned(), line, message }]);
        }
    };
    let mut d = Diags { file, lines, out: Vec::new() };
    let def = build(&raw, &mut d);
    if d.out.is_empty() {
        if let Some(def) = def {
            return Ok(def);
        }
    }
    d.out.sort_by_key(|x| x.line);
    Err(d.out)
}

fn parse_template(src: &str, env: &Env<'_>) -> Result<Template, String> {
    let mut segs = Vec::new();
    let mut text = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed `{{{name}` in template")),
                    }
                }
                if !text.is_empty() {
                    segs.push(Segment::Text(std::mem::take(&mut text)));
                }
                let name = name.trim();
                segs.push(match name {
                    "instance" | "case_id" => Segment::InstanceId,
                    "state" => Segment::State,
                    _ => {
                        let g = expr::parse_guard(&format!("{name} is set"), env)
                            .map_err(|e| format!("template placeholder {{{name}}}: {e}"))?;
                        match g {
                            Guard::IsSet(o) => Segment::Value(o),
                            _ => return Err(format!("template placeholder {{{name}}} must be a name")),
                        }
                    }
                });
            }
            '}' => return Err("a lone `}` in a template must be written `}}`".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        segs.push(Segment::Text(text));
    }
    Ok(Template(segs))
}

fn build_emit(raw: &RawEmit, env: &Env<'_>) -> Result<EmitSpec, String> {
    if raw.channel.is_empty() || !is_ident(&raw.channel) {
        return Err(format!("channel {:?} must be a name such as `sms`", raw.channel));
    }
    let template = parse_template(&raw.template, env)?;
    let to = match &raw.to {
        None => None,
        Some(src) => match expr::parse_guard(&format!("{src} is set"), env).map_err(|e| format!("`to`: {e}"))? {
            Guard::IsSet(o) => Some(o),
            _ => return Err("`to` must be a variable or an event field".into()),
        },
    };
    Ok(EmitSpec { channel: raw.channel.clone(), to, template })
}

fn build_timer(raw: &RawTimer, env: &Env<'_>) -> Result<TimerSpec, String> {
    if !is_ident(&raw.name) {
        return Err(format!("timer name {:?} must be an identifier", raw.name));
    }
    let at = expr::parse_time(&raw.at, env).map_err(|e| format!("timer `{}`: at = {:?}: {e}", raw.name, raw.at))?;
    if let Some(var) = &raw.responsible {
        if !raw.deadline {
            return Err(format!("timer `{}`: `responsible` applies only to a deadline (deadline = true)", raw.name));
        }
        match env.vars.get(var) {
            Some(Type::Str) => {}
            Some(other) => {
                return Err(format!("timer `{}`: responsible = {var:?} is a {other}, not a string variable", raw.name))
            }
            None => return Err(format!("timer `{}`: responsible = {var:?} is not a declared variable", raw.name)),
        }
    }
    Ok(TimerSpec {
        name: raw.name.clone(),
        at,
        event: raw.event.clone(),
        deadline: raw.deadline,
        responsible: raw.responsible.clone(),
    })
}

#[allow(clippy::too_many_lines)]
fn build(raw: &RawDef, d: &mut Diags<'_>) -> Option<Definition> {
    let name = raw.name.get_ref().clone();
    if !is_ident(&name) {
        d.at(raw.name.span().start, format!("workflow name {name:?} must be an identifier (letters, digits, _)"));
    }
    let version = match u32::try_from(*raw.version.get_ref()) {
        Ok(v) if v >= 1 => v,
        _ => {
            d.at(raw.version.span().start, "version must be a whole number from 1");
            1
        }
    };

    let mut vars = BTreeMap::new();
    for (var, ty) in &raw.vars {
        if !is_ident(var) || var == "now" || var == "entry" || var == "event" {
            d.at(ty.span().start, format!("variable name {var:?} is not allowed"));
        }
        match Type::parse(ty.get_ref()) {
            Some((ty, optional)) => {
                vars.insert(var.clone(), VarSpec { ty, optional });
            }
            None => d.at(
                ty.span().start,
                format!(
                    "variable `{var}`: unknown type {:?} (string, int, bool, date, instant, with `?` if optional)",
                    ty.get_ref()
                ),
            ),
        }
    }
    let var_types: BTreeMap<String, Type> = vars.iter().map(|(k, v)| (k.clone(), v.ty)).collect();

    let mut events = BTreeMap::new();
    for (event, spec) in &raw.events {
        let at = spec.span().start;
        if !is_ident(event) {
            d.at(at, format!("event name {event:?} must be an identifier"));
        }
        let mut fields = BTreeMap::new();
        let mut required = BTreeSet::new();
        for (field, ty) in &spec.get_ref().fields {
            match Type::parse(ty) {
                Some((t, optional)) => {
                    fields.insert(field.clone(), t);
                    if !optional {
                        required.insert(field.clone());
                    }
                }
                None => d.at(at, format!("event `{event}`, field `{field}`: unknown type {ty:?}")),
            }
        }
        events.insert(event.clone(), EventSpec { fields, required, internal: spec.get_ref().internal });
    }

    // States.
    let terminal: BTreeSet<String> = raw.terminal.iter().map(|t| t.get_ref().clone()).collect();
    let mut states = Vec::new();
    let mut state_index = HashMap::new();
    let mut state_lines = HashMap::new();
    let no_fields = BTreeMap::new();
    let state_env = Env { vars: &var_types, event: None, allow_entry: true };
    for spanned in &raw.states {
        let rs = spanned.get_ref();
        let at = spanned.span().start;
        if !is_ident(&rs.name) {
            d.at(at, format!("state name {:?} must be an identifier", rs.name));
        }
        if state_index.contains_key(&rs.name) {
            d.at(at, format!("duplicate state `{}`", rs.name));
            continue;
        }
        let is_terminal = terminal.contains(&rs.name);
        let mut timers = Vec::new();
        let mut timer_names = BTreeSet::new();
        for t in &rs.timers {
            let tat = t.span().start;
            if !timer_names.insert(t.get_ref().name.clone()) {
                d.at(tat, format!("duplicate timer `{}` in state `{}`", t.get_ref().name, rs.name));
            }
            if is_terminal {
                d.at(tat, format!("terminal state `{}` cannot have timers", rs.name));
            }
            match build_timer(t.get_ref(), &state_env) {
                Ok(spec) => timers.push((tat, spec)),
                Err(e) => d.at(tat, e),
            }
        }
        let mut emit = Vec::new();
        for e in &rs.emit {
            match build_emit(e, &Env { vars: &var_types, event: Some(&no_fields), allow_entry: false }) {
                Ok(spec) => emit.push(spec),
                Err(msg) => d.at(at, format!("state `{}`: {msg}", rs.name)),
            }
        }
        state_index.insert(rs.name.clone(), states.len());
        state_lines.insert(rs.name.clone(), at);
        states.push((rs.name.clone(), is_terminal, timers, emit, rs.description.clone()));
    }
    if !state_index.contains_key(raw.initial.get_ref()) {
        d.at(raw.initial.span().start, format!("initial state `{}` is not a declared state", raw.initial.get_ref()));
    }
    for t in &raw.terminal {
        if !state_index.contains_key(t.get_ref()) {
            d.at(t.span().start, format!("terminal state `{}` is not a declared state", t.get_ref()));
        }
    }
    let non_terminal: Vec<String> = states.iter().filter(|s| !s.1).map(|s| s.0.clone()).collect();

    // Transitions.
    let mut transitions = Vec::new();
    let mut by_state_event: HashMap<(String, String), Vec<usize>> = HashMap::new();
    let mut seen_guards: HashMap<(String, String), Vec<Option<String>>> = HashMap::new();
    for spanned in &raw.transitions {
        let rt = spanned.get_ref();
        let at = spanned.span().start;
        let line = d.lines.of(at);
        let event_spec = events.get(rt.event.get_ref());
        if event_spec.is_none() {
            d.at(rt.event.span().start, format!("unknown event `{}` (declare it under [events])", rt.event.get_ref()));
        }
        let from: Vec<String> = match &rt.from {
            OneOrMany::One(s) if s == "*" => non_terminal.clone(),
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        for f in &from {
            match state_index.get(f) {
                None => d.at(at, format!("unknown state `{f}` in `from`")),
                Some(_) if terminal.contains(f) => {
                    d.at(at, format!("terminal state `{f}` cannot have outgoing transitions"))
                }
                Some(_) => {}
            }
        }
        if !state_index.contains_key(rt.to.get_ref()) {
            d.at(rt.to.span().start, format!("unknown state `{}` in `to`", rt.to.get_ref()));
        }
        let fields = event_spec.map_or(&no_fields, |e| &e.fields);
        let env = Env { vars: &var_types, event: Some(fields), allow_entry: false };
        let guard = match &rt.guard {
            None => None,
            Some(src) => match expr::parse_guard(src, &env) {
                Ok(g) => Some(g),
                Err(e) => {
                    d.at(at, format!("guard {src:?}: {e}"));
                    None
                }
            },
        };
        let mut set = Vec::new();
        for (var, value) in &rt.set {
            let Some(spec) = vars.get(var) else {
                d.at(at, format!("`set`: unknown variable `{var}`"));
                continue;
            };
            let parsed = match value {
                toml::Value::String(s) => expr::parse_value(s, spec.ty, &env),
                toml::Value::Integer(n) if spec.ty == Type::Int => {
                    Ok(ValueExpr::Operand(expr::Operand::Literal(Value::Int(*n))))
                }
                toml::Value::Boolean(b) if spec.ty == Type::Bool => {
                    Ok(ValueExpr::Operand(expr::Operand::Literal(Value::Bool(*b))))
                }
                other => Err(format!("{other} is not a {}", spec.ty)),
            };
            match parsed {
                Ok(v) => set.push((var.clone(), v)),
                Err(e) => d.at(at, format!("`set {var}`: {e}")),
            }
        }
        let mut emit = Vec::new();
        for e in &rt.emit {
            match build_emit(e, &env) {
                Ok(spec) => emit.push(spec),
                Err(msg) => d.at(at, msg),
            }
        }
        let timer_env = Env { vars: &var_types, event: Some(fields), allow_entry: true };
        let mut arm = Vec::new();
        for t in &rt.arm {
            match build_timer(t, &timer_env) {
                Ok(spec) => arm.push(spec),
                Err(e) => d.at(at, e),
            }
        }
        for f in &from {
            let key = (f.clone(), rt.event.get_ref().clone());
            let guards = seen_guards.entry(key.clone()).or_default();
            if guards.contains(&rt.guard) {
                d.at(
                    at,
                    format!(
                        "duplicate transition from `{f}` on `{}`{}",
                        rt.event,
                        rt.guard.as_ref().map_or(String::new(), |g| format!(" with guard {g:?}"))
                    ),
                );
            } else if guards.contains(&None) {
                d.at(
                    at,
                    format!(
                        "transition from `{f}` on `{}` is never taken: an earlier one without a guard always wins",
                        rt.event
                    ),
                );
            }
            guards.push(rt.guard.clone());
            by_state_event.entry(key).or_default().push(transitions.len());
        }
        transitions.push(TransitionSpec {
            from,
            event: rt.event.get_ref().clone(),
            to: rt.to.get_ref().clone(),
            guard,
            guard_text: rt.guard.clone(),
            set,
            emit,
            arm,
            cancel: rt.cancel.clone(),
            line,
        });
    }

    // Timers: events must exist, carry no required fields, and be handled where they can fire.
    let handled_anywhere: BTreeSet<&str> = transitions.iter().map(|t| t.event.as_str()).collect();
    let mut all_timer_names: BTreeSet<String> = BTreeSet::new();
    for (state, _, timers, _, _) in &states {
        for (tat, timer) in timers {
            all_timer_names.insert(timer.name.clone());
            check_timer_event(d, *tat, &events, timer);
            if events.contains_key(&timer.event) && !by_state_event.contains_key(&(state.clone(), timer.event.clone()))
            {
                d.at(
                    *tat,
                    format!(
                        "timer `{}` of state `{state}` fires `{}`, but no transition from `{state}` handles `{}`",
                        timer.name, timer.event, timer.event
                    ),
                );
            }
        }
    }
    for (t, spanned) in transitions.iter().zip(&raw.transitions) {
        for timer in &t.arm {
            all_timer_names.insert(timer.name.clone());
            check_timer_event(d, spanned.span().start, &events, timer);
            if events.contains_key(&timer.event) && !handled_anywhere.contains(timer.event.as_str()) {
                d.at(
                    spanned.span().start,
                    format!(
                        "timer `{}` fires `{}`, but no transition handles `{}`",
                        timer.name, timer.event, timer.event
                    ),
                );
            }
        }
    }
    for (t, spanned) in transitions.iter().zip(&raw.transitions) {
        for c in &t.cancel {
            if !all_timer_names.contains(c) {
                d.at(spanned.span().start, format!("`cancel`: no timer is named `{c}`"));
            }
        }
    }

    // Reachability and ways out.
    if let Some(&start) = state_index.get(raw.initial.get_ref()) {
        let mut seen = vec![false; states.len()];
        let mut queue = VecDeque::from([start]);
        seen[start] = true;
        while let Some(i) = queue.pop_front() {
            for t in transitions.iter().filter(|t| t.from.contains(&states[i].0)) {
                if let Some(&j) = state_index.get(&t.to) {
                    if !seen[j] {
                        seen[j] = true;
                        queue.push_back(j);
                    }
                }
            }
        }
        for (i, s) in states.iter().enumerate() {
            if !seen[i] {
                d.at(
                    state_lines[&s.0],
                    format!("state `{}` is unreachable from the initial state `{}`", s.0, raw.initial.get_ref()),
                );
            }
        }
    }
    for (name, is_terminal, _, _, _) in &states {
        if !is_terminal && !transitions.iter().any(|t| t.from.contains(name)) {
            d.at(
                state_lines[name],
                format!("state `{name}` is not terminal but has no transition out (add one, or list it in `terminal`)"),
            );
        }
    }
    if terminal.is_empty() {
        d.at(0, "no terminal state: list the states that end an instance in `terminal`");
    }

    let states = states
        .into_iter()
        .map(|(name, terminal, timers, emit, description)| StateSpec {
            name,
            terminal,
            timers: timers.into_iter().map(|(_, t)| t).collect(),
            emit,
            description,
        })
        .collect();
    Some(Definition {
        name,
        version,
        description: raw.description.clone(),
        file: d.file.to_owned(),
        initial: raw.initial.get_ref().clone(),
        vars,
        events,
        states,
        transitions,
        state_index,
        by_state_event,
    })
}

fn check_timer_event(d: &mut Diags<'_>, at: usize, events: &BTreeMap<String, EventSpec>, timer: &TimerSpec) {
    match events.get(&timer.event) {
        None => d.at(at, format!("timer `{}` fires unknown event `{}`", timer.name, timer.event)),
        Some(e) if !e.required.is_empty() => {
            d.at(
                at,
                format!("timer `{}` fires `{}`, which requires fields a timer cannot supply", timer.name, timer.event),
            );
        }
        Some(_) => {}
    }
}

/// Every loaded definition, by name and version.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    defs: BTreeMap<String, BTreeMap<u32, Arc<Definition>>>,
}

/// The definitions shipped in the binary (`workflows/*.toml` at build time), as (name, text).
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_workflows.rs"));
}

impl Registry {
    /// Parses and validates every source; all problems of all files are reported together.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Self, Error> {
        let mut registry = Registry::default();
        let mut diags = Vec::new();
        for (file, text) in sources {
            match parse(file, text) {
                Ok(def) => {
                    let versions = registry.defs.entry(def.name.clone()).or_default();
                    if let Some(other) = versions.get(&def.version) {
                        diags.push(Diagnostic {
                            file: (*file).to_owned(),
                            line: 0,
                            message: format!(
                                "workflow `{}` version {} is already defined in {}",
                                def.name, def.version, other.file
                            ),
                        });
                    } else {
                        versions.insert(def.version, Arc::new(def));
                    }
                }
                Err(mut d) => diags.append(&mut d),
            }
        }
        if diags.is_empty() {
            Ok(registry)
        } else {
            Err(Error::Invalid(diags))
        }
    }

    /// Loads the given files.
    pub fn from_files(paths: &[&Path]) -> Result<Self, Error> {
        let mut texts = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            texts.push((path.display().to_string(), text));
        }
        let sources: Vec<(&str, &str)> = texts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        Self::from_sources(&sources)
    }

    /// Loads every `*.toml` directly in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io { path: dir.display().to_string(), source };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        Self::from_files(&refs)
    }

    /// The definitions compiled into the binary.
    pub fn embedded() -> Result<Self, Error> {
        Self::from_sources(embedded::WORKFLOWS)
    }

    /// The newest version of `name`: what a new instance starts on.
    pub fn latest(&self, name: &str) -> Option<&Arc<Definition>> {
        self.defs.get(name).and_then(|v| v.values().next_back())
    }

    /// A specific version.
    pub fn get(&self, name: &str, version: u32) -> Option<&Arc<Definition>> {
        self.defs.get(name).and_then(|v| v.get(&version))
    }

    /// Every definition, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.defs.values().flat_map(BTreeMap::values)
    }
}

#[cfg(test)]
mod tests;
