//! Validation: a parsed [`RawDef`] becomes a [`Definition`], or every problem in the file is
//! reported as `file:line: message` — unknown states, events and variables, expressions that do
//! not type-check, unreachable states, dead ends, timers whose event nothing handles, and more.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::expr::Operand;
use super::expr::{self, Env, ValueExpr};
use super::raw::{OneOrMany, RawDef, RawEmit, RawFlag, RawTimer};
use super::schedule::{self, CronSpec};
use super::template::parse_template;
use super::*;

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

fn build_emit(raw: &RawEmit, env: &Env<'_>, optional: &dyn Fn(&expr::Operand) -> bool) -> Result<EmitSpec, String> {
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
    if let Some(name) = &raw.name {
        if !is_ident(name) {
            return Err(format!("message name {name:?} must be a name such as `commitment_reminder`"));
        }
    }
    if !is_ident(&raw.kind) {
        return Err(format!("message type {:?} must be a name such as `approval_record`", raw.kind));
    }
    let schema_version = raw.schema_version.unwrap_or(1);
    if schema_version == 0 {
        return Err(format!("message type {}: schema_version starts at 1", raw.kind));
    }
    let mut data = Vec::new();
    for (field, src) in &raw.data {
        if !is_ident(field) || matches!(field.as_str(), "type" | "schema_version") {
            return Err(format!("data field {field:?} must be a name (and not `type` or `schema_version`)"));
        }
        let value = data_value(src, env, optional).map_err(|e| format!("data field `{field}`: {e}"))?;
        data.push((field.clone(), value));
    }
    Ok(EmitSpec {
        channel: raw.channel.clone(),
        to,
        template,
        name: raw.name.clone(),
        kind: raw.kind.clone(),
        schema_version,
        data,
    })
}

/// One `data` field's source: `instance`, `objects(VAR: a, b, …)`, or an operand.
fn data_value(src: &str, env: &Env<'_>, optional: &dyn Fn(&expr::Operand) -> bool) -> Result<DataValue, String> {
    let src = src.trim();
    if src == "instance" {
        return Ok(DataValue::InstanceId);
    }
    if let Some(inner) = src.strip_prefix("objects(").and_then(|r| r.strip_suffix(')')) {
        let (var, fields) =
            inner.split_once(':').ok_or("write `objects(VAR: field, …)`: the variable and each object's fields")?;
        let (operand, ty) = expr::parse_operand(var.trim(), env)?;
        if ty != Type::Str {
            return Err(format!("`{}` must be a text variable holding a JSON array", var.trim()));
        }
        let fields: Vec<String> = fields.split(',').map(|f| f.trim().to_owned()).collect();
        if fields.iter().any(|f| !is_ident(f)) {
            return Err(format!("the fields of `{src}` must be names"));
        }
        return Ok(DataValue::Objects { operand, fields });
    }
    let (operand, ty) = expr::parse_operand(src, env)?;
    let nullable = optional(&operand);
    Ok(DataValue::Value { operand, ty, nullable })
}

fn cron_spec(name: &str, cron: &str, flag: Option<&RawFlag>, env: &Env<'_>) -> Result<CronSpec, String> {
    let schedule = match cron.strip_prefix('\'').and_then(|c| c.strip_suffix('\'')) {
        Some(literal) => {
            schedule::parse(literal).map_err(|e| format!("timer `{name}`: cron = {cron:?}: {e}"))?;
            Operand::Literal(Value::Str(literal.to_owned()))
        }
        None => match env.vars.get(cron) {
            Some(Type::Str) => Operand::Var(cron.to_owned()),
            Some(other) => return Err(format!("timer `{name}`: cron = {cron:?} is a {other} variable, not a string")),
            None => {
                return Err(format!(
                    "timer `{name}`: cron = {cron:?} is neither a quoted schedule ('0 9 * * MON') nor a declared string variable"
                ))
            }
        },
    };
    let working_days_only = match flag {
        None => Operand::Literal(Value::Bool(false)),
        Some(RawFlag::Literal(b)) => Operand::Literal(Value::Bool(*b)),
        Some(RawFlag::Var(v)) => match env.vars.get(v.as_str()) {
            Some(Type::Bool) => Operand::Var(v.clone()),
            _ => return Err(format!("timer `{name}`: working_days_only = {v:?} is not a declared bool variable")),
        },
    };
    Ok(CronSpec { schedule, working_days_only, text: format!("cron {cron}") })
}

fn build_timer(raw: &RawTimer, env: &Env<'_>) -> Result<TimerSpec, String> {
    if !is_ident(&raw.name) {
        return Err(format!("timer name {:?} must be an identifier", raw.name));
    }
    let at = match (&raw.at, &raw.cron) {
        (Some(at), None) => {
            if raw.working_days_only.is_some() {
                return Err(format!("timer `{}`: `working_days_only` applies only to a `cron` timer", raw.name));
            }
            When::At(expr::parse_time(at, env).map_err(|e| format!("timer `{}`: at = {at:?}: {e}", raw.name))?)
        }
        (None, Some(cron)) => {
            if raw.deadline {
                return Err(format!("timer `{}`: a `cron` timer recurs and cannot be a deadline", raw.name));
            }
            When::Cron(cron_spec(&raw.name, cron, raw.working_days_only.as_ref(), env)?)
        }
        _ => return Err(format!("timer `{}`: give `at` (once) or `cron` (a schedule), one of the two", raw.name)),
    };
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
            let optional = |o: &Operand| matches!(o, Operand::Var(v) if vars.get(v).is_none_or(|s| s.optional));
            match build_emit(e, &Env { vars: &var_types, event: Some(&no_fields), allow_entry: false }, &optional) {
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
                // An ended instance may still be told something (a notice): it stays where it
                // is, changes nothing and only emits.
                Some(_) if terminal.contains(f) => {
                    if f != rt.to.get_ref() || !rt.set.is_empty() || !rt.arm.is_empty() || !rt.cancel.is_empty() {
                        d.at(
                            at,
                            format!(
                                "terminal state `{f}` can only take notices: a transition back to `{f}` that sets, \
                                 arms and cancels nothing"
                            ),
                        );
                    }
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
        let optional = |o: &Operand| match o {
            Operand::Var(v) => vars.get(v).is_none_or(|s| s.optional),
            Operand::EventField(f) => event_spec.is_none_or(|e| !e.required.contains(f)),
            Operand::Literal(_) | Operand::Now | Operand::Entry => false,
        };
        for e in &rt.emit {
            match build_emit(e, &env, &optional) {
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
    let index = raw.index.as_ref().map(|spanned| {
        let r = spanned.get_ref();
        for (what, var) in [("subject", Some(&r.subject)), ("item", r.item.as_ref()), ("grade", r.grade.as_ref())] {
            let Some(var) = var else { continue };
            if vars.get(var).map(|v| v.ty) != Some(Type::Str) {
                d.at(spanned.span().start, format!("`index`: {what} = {var:?} is not a declared string variable"));
            }
        }
        IndexSpec { subject: r.subject.clone(), item: r.item.clone(), grade: r.grade.clone() }
    });
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
        index,
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
