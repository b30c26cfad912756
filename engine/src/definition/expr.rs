//! The three small expression languages of a definition, parsed once at load and evaluated by
//! `decide`:
//!
//! - **time** (`at` of a timer): `BASE (± N UNIT)* [at HH:MM | at end of day]`, where BASE is
//!   `entry` (when the state was entered), `now`, or a `date`/`instant` variable, and UNIT is
//!   `calendar day(s)`, `working day(s)`, `hour(s)` or `minute(s)`. Working days move an instant
//!   to its date in the region's time zone first; a date must end with `at …` to become an instant.
//! - **guard** (`guard` of a transition): comparisons (`== != < <= > >=`), `in [..]`, `is set`,
//!   `is not set`, `!`, `&&`, `||` and parentheses over variables, `event.FIELD`, `now`, and
//!   literals (`'text'`, integers, `true`, `false`, `YYYY-MM-DD` dates).
//! - **value** (right-hand side of `set`): a literal, `event.FIELD`, a variable, or a time expression.
//!
//! Everything is type-checked against the declared variables and event fields at load, so a
//! loaded definition cannot meet an unknown name or a type error at run time.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, NaiveTime};

use super::{Type, Value};
use crate::calendar::{self, Calendar};
use crate::clock::{self, Millis};

/// Where a name in an expression is looked up.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A literal value.
    Literal(Value),
    /// An instance variable.
    Var(String),
    /// A field of the event being applied.
    EventField(String),
    /// The instant the command is applied.
    Now,
    /// The instant the current state was entered (time expressions of timers only).
    Entry,
}

/// Unit of an offset in a time expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Plain days on the calendar.
    CalendarDays,
    /// Working days of the instance's region calendar.
    WorkingDays,
    /// Hours (instants only).
    Hours,
    /// Minutes (instants only).
    Minutes,
}

/// The time of day a time expression ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// `at HH:MM` in the region's time zone.
    Time(NaiveTime),
    /// `at end of day`: the last millisecond of the date.
    EndOfDay,
}

/// A parsed, type-checked time expression.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeExpr {
    /// Where counting starts.
    pub base: Operand,
    /// Offsets applied left to right.
    pub offsets: Vec<(i64, Unit)>,
    /// Optional final time of day.
    pub at: Option<At>,
    /// Source text, for history and diagrams.
    pub text: String,
}

/// A parsed guard.
#[derive(Debug, Clone, PartialEq)]
pub enum Guard {
    /// Both hold.
    And(Box<Guard>, Box<Guard>),
    /// Either holds.
    Or(Box<Guard>, Box<Guard>),
    /// Negation.
    Not(Box<Guard>),
    /// A comparison.
    Cmp(Operand, CmpOp, Operand),
    /// Membership in a literal list.
    In(Operand, Vec<Value>),
    /// The operand has a value.
    IsSet(Operand),
    /// A boolean operand on its own.
    Truthy(Operand),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The right-hand side of a `set`.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueExpr {
    /// Copy an operand (literal, variable, event field, now).
    Operand(Operand),
    /// Compute an instant.
    Time(TimeExpr),
    /// An integer variable plus a constant (`open_tasks - 1`).
    IntAdd(Operand, i64),
}

/// Evaluation failures that only data can cause (the types were checked at load).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EvalError {
    /// A variable or field the expression needs has no value.
    #[error("{0} has no value")]
    Unset(String),
    /// The calendar cannot answer.
    #[error(transparent)]
    Calendar(#[from] calendar::Error),
    /// A cron schedule does not parse or never fires again.
    #[error("{0}")]
    Schedule(String),
}

/// What an expression can see when it is evaluated.
pub struct Scope<'a> {
    /// Instance variables.
    pub vars: &'a BTreeMap<String, Value>,
    /// Fields of the event being applied.
    pub event: &'a BTreeMap<String, Value>,
    /// The instant of the command.
    pub now: Millis,
    /// The instant the state being entered was entered (equals `now` on entry).
    pub entry: Millis,
    /// The instance's region calendar.
    pub calendar: &'a Calendar,
}

impl Scope<'_> {
    fn get(&self, operand: &Operand) -> Result<Option<Value>, EvalError> {
        Ok(match operand {
            Operand::Literal(v) => Some(v.clone()),
            Operand::Var(name) => self.vars.get(name).cloned(),
            Operand::EventField(name) => self.event.get(name).cloned(),
            Operand::Now => Some(Value::Instant(self.now)),
            Operand::Entry => Some(Value::Instant(self.entry)),
        })
    }

    pub(crate) fn require(&self, operand: &Operand) -> Result<Value, EvalError> {
        self.get(operand)?.ok_or_else(|| EvalError::Unset(operand_text(operand)))
    }
}

fn operand_text(operand: &Operand) -> String {
    match operand {
        Operand::Literal(v) => v.to_string(),
        Operand::Var(n) => n.clone(),
        Operand::EventField(n) => format!("event.{n}"),
        Operand::Now => "now".into(),
        Operand::Entry => "entry".into(),
    }
}

/// An instant computed from an expression, and what on the calendar it depended on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The instant.
    pub due: Millis,
    /// The dates whose working-day status the computation read (`None`: it counted no
    /// working days). A new calendar that changes none of them leaves the instant as it is.
    pub days: Option<(NaiveDate, NaiveDate)>,
    /// Whether one of those dates is in a provisional year.
    pub provisional: bool,
}

impl TimeExpr {
    /// Computes the instant the expression names.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Millis, EvalError> {
        self.plan(scope).map(|p| p.due)
    }

    /// Computes the instant the expression names, with the dates it depended on.
    pub fn plan(&self, scope: &Scope<'_>) -> Result<Planned, EvalError> {
        let mut days: Option<(NaiveDate, NaiveDate)> = None;
        let mut working = |from: NaiveDate, n: i64| -> Result<NaiveDate, EvalError> {
            let to = add_working(scope.calendar, from, n)?;
            // The n-th working day after `from` depends on the days in (from, to] only.
            if let Some(first) = from.succ_opt().filter(|_| to > from) {
                days = Some(match days {
                    None => (first, to),
                    Some((a, b)) => (a.min(first), b.max(to)),
                });
            }
            Ok(to)
        };
        enum T {
            Instant(Millis),
            Date(NaiveDate),
        }
        let mut t = match scope.require(&self.base)? {
            Value::Instant(i) => T::Instant(i),
            Value::Date(d) => T::Date(d),
            // Types were checked at load; a mismatch here means the stored variables do not
            // match their declaration, which the store refuses on write.
            _ => return Err(EvalError::Unset(operand_text(&self.base))),
        };
        for (n, unit) in &self.offsets {
            t = match (t, unit) {
                (T::Instant(i), Unit::Hours) => T::Instant(i.saturating_add(n.saturating_mul(3_600_000))),
                (T::Instant(i), Unit::Minutes) => T::Instant(i.saturating_add(n.saturating_mul(60_000))),
                (T::Instant(i), Unit::CalendarDays) => T::Instant(i.saturating_add(n.saturating_mul(86_400_000))),
                (T::Date(d), Unit::CalendarDays) => {
                    T::Date(d.checked_add_signed(Duration::days(*n)).ok_or(calendar::Error::OutOfRange)?)
                }
                (T::Instant(i), Unit::WorkingDays) => {
                    let date = scope.calendar.local_date(clock::to_datetime(i));
                    T::Date(working(date, *n)?)
                }
                (T::Date(d), Unit::WorkingDays) => T::Date(working(d, *n)?),
                // Hours on a date are refused at load.
                (T::Date(d), _) => T::Date(d),
            };
        }
        let instant = match (t, self.at) {
            (T::Instant(i), None) => i,
            (T::Instant(i), Some(at)) => {
                let date = scope.calendar.local_date(clock::to_datetime(i));
                at_on(scope.calendar, date, at)?
            }
            (T::Date(d), Some(at)) => at_on(scope.calendar, d, at)?,
            // Refused at load: a date needs `at`.
            (T::Date(d), None) => at_on(scope.calendar, d, At::EndOfDay)?,
        };
        let provisional = days.is_some_and(|(a, b)| scope.calendar.provisional_between(a, b));
        Ok(Planned { due: instant, days, provisional })
    }
}

fn add_working(calendar: &Calendar, date: NaiveDate, n: i64) -> Result<NaiveDate, calendar::Error> {
    let n = u32::try_from(n).map_err(|_| calendar::Error::OutOfRange)?;
    calendar.add_working_days(date, n)
}

fn at_on(calendar: &Calendar, date: NaiveDate, at: At) -> Result<Millis, calendar::Error> {
    let instant = match at {
        At::Time(t) => calendar.at_time(date, t)?,
        At::EndOfDay => calendar.end_of_day(date)?,
    };
    Ok(clock::from_datetime(instant))
}

impl Guard {
    /// Whether the guard holds. An unset operand makes a comparison false (not an error), so a
    /// guard such as `grade == 'A'` simply does not match an instance with no grade.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        Ok(match self {
            Guard::And(a, b) => a.eval(scope)? && b.eval(scope)?,
            Guard::Or(a, b) => a.eval(scope)? || b.eval(scope)?,
            Guard::Not(g) => !g.eval(scope)?,
            Guard::IsSet(o) => scope.get(o)?.is_some(),
            Guard::Truthy(o) => matches!(scope.get(o)?, Some(Value::Bool(true))),
            Guard::In(o, list) => match scope.get(o)? {
                Some(v) => list.contains(&v),
                None => false,
            },
            Guard::Cmp(a, op, b) => {
                let (Some(a), Some(b)) = (scope.get(a)?, scope.get(b)?) else {
                    return Ok(false);
                };
                let ord = compare(&a, &b, scope.calendar);
                match (op, ord) {
                    (CmpOp::Eq, o) => o == Some(std::cmp::Ordering::Equal),
                    (CmpOp::Ne, o) => o != Some(std::cmp::Ordering::Equal),
                    (_, None) => false,
                    (CmpOp::Lt, Some(o)) => o.is_lt(),
                    (CmpOp::Le, Some(o)) => o.is_le(),
                    (CmpOp::Gt, Some(o)) => o.is_gt(),
                    (CmpOp::Ge, Some(o)) => o.is_ge(),
                }
            }
        })
    }
}

/// Orders two values. A date compared with an instant stands for the whole day in the region's
/// time zone: an instant is "<=" a date when it falls on or before that day.
fn compare(a: &Value, b: &Value, calendar: &Calendar) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
        (Value::Instant(a), Value::Instant(b)) => Some(a.cmp(b)),
        (Value::Instant(i), Value::Date(d)) => Some(calendar.local_date(clock::to_datetime(*i)).cmp(d)),
        (Value::Date(d), Value::Instant(i)) => Some(d.cmp(&calendar.local_date(clock::to_datetime(*i)))),
        _ => None,
    }
}

impl ValueExpr {
    /// The value to store; `None` when the source has no value (the variable becomes unset).
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Option<Value>, EvalError> {
        match self {
            ValueExpr::Operand(o) => scope.get(o),
            ValueExpr::Time(t) => t.eval(scope).map(|i| Some(Value::Instant(i))),
            ValueExpr::IntAdd(o, n) => match scope.require(o)? {
                Value::Int(v) => Ok(Some(Value::Int(v.saturating_add(*n)))),
                _ => Err(EvalError::Unset(operand_text(o))),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing and type checking.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Str(String),
    Date(NaiveDate),
    Time(NaiveTime),
    Sym(&'static str),
}

/// Most tokens in one expression. Expressions are written by people (a deadline, a guard); a
/// bound keeps the parser's recursion (nested `(` and `!`) and the depth of the tree it builds
/// (which evaluation and drop walk recursively) far from the stack's limit. Found by fuzzing:
/// 6,000 nested parentheses overflowed the stack.
const MAX_TOKENS: usize = 256;

/// The tokens of an expression, at most [`MAX_TOKENS`].
fn tokens(src: &str) -> Result<Vec<Tok>, String> {
    let toks = tokenize(src)?;
    if toks.len() > MAX_TOKENS {
        return Err(format!("the expression has {} tokens; at most {MAX_TOKENS}", toks.len()));
    }
    Ok(toks)
}

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let start = i + 1;
            let mut j = start;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            if j == chars.len() {
                return Err("unterminated string literal".into());
            }
            out.push(Tok::Str(chars[start..j].iter().collect()));
            i = j + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '-' || chars[i] == ':') {
                // A '-' continues only a date (YYYY-MM-DD: after 4 or 7 characters), never "3-1".
                let in_date = i - start == 4 && chars[start..i].iter().all(char::is_ascii_digit) || i - start == 7;
                if chars[i] == '-' && !in_date {
                    break;
                }
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.contains(':') {
                let t = NaiveTime::parse_from_str(&word, "%H:%M")
                    .map_err(|_| format!("{word:?} is not a time of day HH:MM"))?;
                out.push(Tok::Time(t));
            } else if word.contains('-') {
                let d = NaiveDate::parse_from_str(&word, "%Y-%m-%d")
                    .map_err(|_| format!("{word:?} is not a date YYYY-MM-DD"))?;
                out.push(Tok::Date(d));
            } else {
                out.push(Tok::Int(word.parse().map_err(|_| format!("{word:?} is too large"))?));
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let sym = ["==", "!=", "<=", ">=", "&&", "||"].into_iter().find(|s| *s == two);
            if let Some(s) = sym {
                out.push(Tok::Sym(s));
                i += 2;
            } else {
                let s = ["<", ">", "!", "(", ")", "[", "]", ",", "+", "-"].into_iter().find(|s| s.starts_with(c));
                match s {
                    Some(s) => out.push(Tok::Sym(s)),
                    None => return Err(format!("unexpected character {c:?}")),
                }
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The names an expression may use, with their types.
pub struct Env<'a> {
    /// Declared variables.
    pub vars: &'a BTreeMap<String, Type>,
    /// Fields of the triggering event, when the expression runs on a transition.
    pub event: Option<&'a BTreeMap<String, Type>>,
    /// Whether `entry` is meaningful (timer expressions).
    pub allow_entry: bool,
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    env: &'a Env<'a>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(x)) if x == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<(), String> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(format!("expected `{w}`{}", self.found()))
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            None => " at the end".into(),
            Some(t) => format!(", found {}", tok_text(t)),
        }
    }

    fn done(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {} after the end of the expression", tok_text(t))),
        }
    }

    /// An operand and its static type.
    fn operand(&mut self) -> Result<(Operand, Type), String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok((Operand::Literal(Value::Str(s)), Type::Str)),
            Some(Tok::Int(n)) => Ok((Operand::Literal(Value::Int(n)), Type::Int)),
            Some(Tok::Date(d)) => Ok((Operand::Literal(Value::Date(d)), Type::Date)),
            Some(Tok::Sym("-")) => match self.next() {
                Some(Tok::Int(n)) => Ok((Operand::Literal(Value::Int(-n)), Type::Int)),
                _ => Err("`-` must be followed by a number".into()),
            },
            Some(Tok::Ident(word)) => self.name(&word),
            Some(t) => Err(format!("expected a value, found {}", tok_text(&t))),
            None => Err("expected a value at the end".into()),
        }
    }

    fn name(&mut self, word: &str) -> Result<(Operand, Type), String> {
        match word {
            "true" => Ok((Operand::Literal(Value::Bool(true)), Type::Bool)),
            "false" => Ok((Operand::Literal(Value::Bool(false)), Type::Bool)),
            "now" => Ok((Operand::Now, Type::Instant)),
            "entry" if self.env.allow_entry => Ok((Operand::Entry, Type::Instant)),
            "entry" => Err("`entry` is only meaningful in a timer's `at`".into()),
            _ => {
                if let Some(field) = word.strip_prefix("event.") {
                    let Some(fields) = self.env.event else {
                        return Err(format!("`{word}`: there is no event here"));
                    };
                    return match fields.get(field) {
                        Some(t) => Ok((Operand::EventField(field.to_owned()), *t)),
                        None => Err(format!("unknown event field `{field}`")),
                    };
                }
                match self.env.vars.get(word) {
                    Some(t) => Ok((Operand::Var(word.to_owned()), *t)),
                    None => Err(format!("unknown variable `{word}`")),
                }
            }
        }
    }

    fn time(&mut self, text: &str) -> Result<TimeExpr, String> {
        let (base, ty) = self.operand()?;
        if !matches!(ty, Type::Date | Type::Instant) {
            return Err(format!("`{}` is of type {ty}, not date or instant", operand_text(&base)));
        }
        let mut is_date = ty == Type::Date;
        let mut offsets = Vec::new();
        loop {
            let sign = if self.eat_sym("+") {
                1
            } else if self.eat_sym("-") {
                -1
            } else {
                break;
            };
            let n = match self.next() {
                Some(Tok::Int(n)) => n,
                other => {
                    return Err(format!(
                        "expected a number of days, hours or minutes, found {}",
                        other.as_ref().map_or("the end".into(), tok_text)
                    ))
                }
            };
            let unit = match self.next() {
                Some(Tok::Ident(w)) if w == "calendar" => {
                    self.day_word()?;
                    Unit::CalendarDays
                }
                Some(Tok::Ident(w)) if w == "working" => {
                    self.day_word()?;
                    Unit::WorkingDays
                }
                Some(Tok::Ident(w)) if w == "day" || w == "days" => Unit::CalendarDays,
                Some(Tok::Ident(w)) if w == "hour" || w == "hours" => Unit::Hours,
                Some(Tok::Ident(w)) if w == "minute" || w == "minutes" => Unit::Minutes,
                other => {
                    return Err(format!(
                        "expected a unit (calendar days, working days, hours, minutes), found {}",
                        other.as_ref().map_or("the end".into(), tok_text)
                    ))
                }
            };
            if unit == Unit::WorkingDays {
                if sign < 0 {
                    return Err("working days can only be added (`+ N working days`)".into());
                }
                is_date = true;
            }
            if is_date && matches!(unit, Unit::Hours | Unit::Minutes) {
                return Err("hours and minutes need an instant; a date has none (add `at HH:MM` first)".into());
            }
            offsets.push((sign * n, unit));
        }
        let at = if self.eat_word("at") {
            if self.eat_word("end") {
                self.expect_word("of")?;
                self.expect_word("day")?;
                Some(At::EndOfDay)
            } else {
                match self.next() {
                    Some(Tok::Time(t)) => Some(At::Time(t)),
                    other => {
                        return Err(format!(
                            "expected `HH:MM` or `end of day` after `at`, found {}",
                            other.as_ref().map_or("the end".into(), tok_text)
                        ))
                    }
                }
            }
        } else {
            None
        };
        if is_date && at.is_none() {
            return Err("this is a date; say which instant of it: `at HH:MM` or `at end of day`".into());
        }
        Ok(TimeExpr { base, offsets, at, text: text.trim().to_owned() })
    }

    fn day_word(&mut self) -> Result<(), String> {
        if self.eat_word("day") || self.eat_word("days") {
            Ok(())
        } else {
            Err(format!("expected `days`{}", self.found()))
        }
    }

    fn guard_or(&mut self) -> Result<Guard, String> {
        let mut left = self.guard_and()?;
        while self.eat_sym("||") {
            left = Guard::Or(Box::new(left), Box::new(self.guard_and()?));
        }
        Ok(left)
    }

    fn guard_and(&mut self) -> Result<Guard, String> {
        let mut left = self.guard_not()?;
        while self.eat_sym("&&") {
            left = Guard::And(Box::new(left), Box::new(self.guard_not()?));
        }
        Ok(left)
    }

    fn guard_not(&mut self) -> Result<Guard, String> {
        if self.eat_sym("!") {
            return Ok(Guard::Not(Box::new(self.guard_not()?)));
        }
        if self.eat_sym("(") {
            let g = self.guard_or()?;
            if !self.eat_sym(")") {
                return Err(format!("expected `)`{}", self.found()));
            }
            return Ok(g);
        }
        self.guard_cmp()
    }

    fn guard_cmp(&mut self) -> Result<Guard, String> {
        let (left, lt) = self.operand()?;
        if self.eat_word("is") {
            let negate = self.eat_word("not");
            self.expect_word("set")?;
            let g = Guard::IsSet(left);
            return Ok(if negate { Guard::Not(Box::new(g)) } else { g });
        }
        if self.eat_word("in") {
            if !self.eat_sym("[") {
                return Err(format!("expected `[` after `in`{}", self.found()));
            }
            let mut list = Vec::new();
            while !self.eat_sym("]") {
                let (item, it) = self.operand()?;
                let Operand::Literal(v) = item else {
                    return Err("a list after `in` holds literals only".into());
                };
                check_comparable(lt, it)?;
                list.push(v);
                if !self.eat_sym(",") && !matches!(self.peek(), Some(Tok::Sym("]"))) {
                    return Err(format!("expected `,` or `]`{}", self.found()));
                }
            }
            return Ok(Guard::In(left, list));
        }
        let op = match self.peek() {
            Some(Tok::Sym("==")) => CmpOp::Eq,
            Some(Tok::Sym("!=")) => CmpOp::Ne,
            Some(Tok::Sym("<")) => CmpOp::Lt,
            Some(Tok::Sym("<=")) => CmpOp::Le,
            Some(Tok::Sym(">")) => CmpOp::Gt,
            Some(Tok::Sym(">=")) => CmpOp::Ge,
            _ => {
                if lt != Type::Bool {
                    return Err(format!("`{}` is of type {lt}; compare it with something", operand_text(&left)));
                }
                return Ok(Guard::Truthy(left));
            }
        };
        self.pos += 1;
        let (right, rt) = self.operand()?;
        check_comparable(lt, rt)?;
        Ok(Guard::Cmp(left, op, right))
    }
}

fn check_comparable(a: Type, b: Type) -> Result<(), String> {
    let time = |t| matches!(t, Type::Date | Type::Instant);
    if a == b || (time(a) && time(b)) {
        Ok(())
    } else {
        Err(format!("cannot compare {a} with {b}"))
    }
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Int(n) => format!("`{n}`"),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Date(d) => format!("`{d}`"),
        Tok::Time(t) => format!("`{}`", t.format("%H:%M")),
        Tok::Sym(s) => format!("`{s}`"),
    }
}

/// Parses a timer's `at`.
pub fn parse_time(src: &str, env: &Env<'_>) -> Result<TimeExpr, String> {
    let mut p = Parser { toks: tokens(src)?, pos: 0, env };
    let t = p.time(src)?;
    p.done()?;
    Ok(t)
}

/// Parses a lone operand (a variable, an event field, a literal, `now`) and answers its type.
pub fn parse_operand(src: &str, env: &Env<'_>) -> Result<(Operand, Type), String> {
    let mut p = Parser { toks: tokens(src)?, pos: 0, env };
    let parsed = p.operand()?;
    p.done()?;
    Ok(parsed)
}

/// Parses a transition's `guard`.
pub fn parse_guard(src: &str, env: &Env<'_>) -> Result<Guard, String> {
    let mut p = Parser { toks: tokens(src)?, pos: 0, env };
    if p.peek().is_none() {
        return Err("empty guard".into());
    }
    let g = p.guard_or()?;
    p.done()?;
    Ok(g)
}

/// Parses the right-hand side of `set` for a variable of type `target`.
pub fn parse_value(src: &str, target: Type, env: &Env<'_>) -> Result<ValueExpr, String> {
    let toks = tokens(src)?;
    let mut p = Parser { toks, pos: 0, env };
    // A lone operand is a copy; anything longer is a time expression.
    if p.toks.len() == 1 || (p.toks.len() == 2 && p.toks[0] == Tok::Sym("-")) {
        let (operand, ty) = p.operand()?;
        p.done()?;
        if ty != target {
            return Err(format!("`{}` is of type {ty}, but the variable is of type {target}", src.trim()));
        }
        return Ok(ValueExpr::Operand(operand));
    }
    if target == Type::Int {
        let (operand, ty) = p.operand()?;
        let sign = if p.eat_sym("+") {
            1
        } else if p.eat_sym("-") {
            -1
        } else {
            return Err(format!("expected `+ N` or `- N`{}", p.found()));
        };
        let n = match p.next() {
            Some(Tok::Int(n)) => n,
            _ => return Err("expected a whole number after `+` or `-`".into()),
        };
        p.done()?;
        if ty != Type::Int {
            return Err(format!("`{}` is of type {ty}, not int", operand_text(&operand)));
        }
        return Ok(ValueExpr::IntAdd(operand, sign * n));
    }
    if target != Type::Instant {
        return Err(format!("a computed time can only be stored in an instant variable, not in one of type {target}"));
    }
    let t = p.time(src)?;
    p.done()?;
    Ok(ValueExpr::Time(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_vars() -> BTreeMap<String, Type> {
        [
            ("commitment_deadline", Type::Date),
            ("inspection_finished", Type::Instant),
            ("grade", Type::Str),
            ("count", Type::Int),
            ("urgent", Type::Bool),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_owned(), t))
        .collect()
    }

    fn at(s: &str) -> Millis {
        clock::from_datetime(chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&chrono::Utc))
    }

    #[test]
    fn the_required_deadline_shapes_parse_and_evaluate() {
        let vars = env_vars();
        let env = Env { vars: &vars, event: None, allow_entry: true };
        let cals = crate::calendar::Calendars::embedded().expect("calendars");
        let mut values = BTreeMap::new();
        values.insert(
            "commitment_deadline".to_owned(),
            Value::Date(NaiveDate::from_ymd_opt(2026, 10, 12).expect("date")),
        );
        values.insert("inspection_finished".to_owned(), Value::Instant(at("2026-09-29T10:00:00+08:00")));
        let none = BTreeMap::new();
        let scope = Scope {
            vars: &values,
            event: &none,
            now: at("2026-09-30T16:00:00+08:00"),
            entry: at("2026-09-30T16:00:00+08:00"),
            calendar: cals.national(),
        };
        let cases = [
            // 09:00 on the calendar day before commitment_deadline
            ("commitment_deadline - 1 calendar day at 09:00", "2026-10-11T09:00:00+08:00"),
            // end of the 3rd working day after entry: National Day, then the make-up Saturday
            ("entry + 3 working days at end of day", "2026-10-10T23:59:59.999+08:00"),
            // end of the 5th working day after inspection_finished
            ("inspection_finished + 5 working days at end of day", "2026-10-12T23:59:59.999+08:00"),
            ("commitment_deadline at end of day", "2026-10-12T23:59:59.999+08:00"),
            ("now + 2 hours + 30 minutes", "2026-09-30T18:30:00+08:00"),
            ("now + 1 day at 08:30", "2026-10-01T08:30:00+08:00"),
        ];
        for (src, want) in cases {
            let e = parse_time(src, &env).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(e.eval(&scope).expect("evaluates"), at(want), "{src}");
        }
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let vars = env_vars();
        let env = Env { vars: &vars, event: None, allow_entry: true };
        let cases = [
            ("commitment_deadline - 1 calendar day", "this is a date"),
            ("deadline + 1 day at 09:00", "unknown variable `deadline`"),
            ("grade + 1 day", "is of type string, not date"),
            ("entry - 2 working days at 09:00", "can only be added"),
            ("entry + 2 fortnights", "expected a unit"),
            ("commitment_deadline + 1 hour", "hours and minutes need an instant"),
            ("entry at 25:00", "not a time of day"),
            ("entry + 1 day at noon", "expected `HH:MM` or `end of day`"),
            ("entry +", "expected a number"),
            ("entry entry", "unexpected `entry`"),
            ("'unterminated", "unterminated"),
            ("entry # 1", "unexpected character"),
        ];
        for (src, want) in cases {
            let err = parse_time(src, &env).expect_err(src);
            assert!(err.contains(want), "{src}: {err}");
        }
        let no_entry = Env { vars: &vars, event: None, allow_entry: false };
        assert!(parse_time("entry + 1 day", &no_entry).expect_err("no entry").contains("only meaningful"));
    }

    /// Regression (fuzzing, `expressions` target): thousands of nested parentheses or `!`
    /// overflowed the stack and killed the process; a long `&&` chain builds a tree as deep.
    #[test]
    fn deeply_nested_or_very_long_expressions_are_an_error_not_a_stack_overflow() {
        let vars = env_vars();
        let env = Env { vars: &vars, event: None, allow_entry: true };
        let deep = format!("{}grade == 'x'{}", "(".repeat(100_000), ")".repeat(100_000));
        let nots = format!("{}grade == 'x'", "!".repeat(100_000));
        let chain = vec!["grade == 'x'"; 20_000].join(" && ");
        for src in [&deep, &nots, &chain] {
            let e = parse_guard(src, &env).expect_err("too long");
            assert!(e.contains("at most 256"), "{e}");
        }
        assert!(parse_time(&"entry + 1 day ".repeat(1_000), &env).expect_err("long").contains("at most 256"));
        assert!(parse_value(&"1 + ".repeat(1_000), Type::Int, &env).is_err());
        // Within the bound, nesting still works.
        let ok = format!("{}grade == 'x'{}", "(".repeat(50), ")".repeat(50));
        assert!(parse_guard(&ok, &env).is_ok());
    }

    #[test]
    fn guards_type_check_and_evaluate() {
        let vars = env_vars();
        let fields: BTreeMap<String, Type> =
            [("compliant".to_owned(), Type::Bool), ("grade".to_owned(), Type::Str)].into_iter().collect();
        let env = Env { vars: &vars, event: Some(&fields), allow_entry: false };
        let cals = crate::calendar::Calendars::embedded().expect("calendars");
        let mut values = BTreeMap::new();
        values.insert("grade".to_owned(), Value::Str("A".into()));
        values.insert("count".to_owned(), Value::Int(3));
        values.insert(
            "commitment_deadline".to_owned(),
            Value::Date(NaiveDate::from_ymd_opt(2026, 10, 12).expect("date")),
        );
        let mut event = BTreeMap::new();
        event.insert("compliant".to_owned(), Value::Bool(false));
        let scope = Scope {
            vars: &values,
            event: &event,
            now: at("2026-10-12T23:00:00+08:00"),
            entry: 0,
            calendar: cals.national(),
        };
        let cases = [
            ("grade == 'A'", true),
            ("grade != 'A'", false),
            ("grade in ['B', 'A']", true),
            ("count >= 3 && count < 4", true),
            ("count > -1", true),
            ("!event.compliant", true),
            ("event.compliant || urgent", false),
            ("urgent is not set", true),
            ("grade is set && (count == 2 || count == 3)", true),
            ("now <= commitment_deadline", true), // same day: still in time
            ("inspection_finished < now", false), // unset: comparison is false
            ("commitment_deadline == 2026-10-12", true),
        ];
        for (src, want) in cases {
            let g = parse_guard(src, &env).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(g.eval(&scope).expect("evaluates"), want, "{src}");
        }
        for (src, want) in [
            ("grade == 1", "cannot compare string with int"),
            ("grade", "compare it with something"),
            ("event.nope", "unknown event field"),
            ("(grade == 'A'", "expected `)`"),
            ("", "empty guard"),
            ("grade in [grade]", "literals only"),
            ("count == 3 count", "unexpected"),
        ] {
            let err = parse_guard(src, &env).expect_err(src);
            assert!(err.contains(want), "{src}: {err}");
        }
    }

    #[test]
    fn values_copy_or_compute() {
        let vars = env_vars();
        let fields: BTreeMap<String, Type> = [("grade".to_owned(), Type::Str)].into_iter().collect();
        let env = Env { vars: &vars, event: Some(&fields), allow_entry: false };
        assert_eq!(
            parse_value("event.grade", Type::Str, &env),
            Ok(ValueExpr::Operand(Operand::EventField("grade".into())))
        );
        assert_eq!(parse_value("-5", Type::Int, &env), Ok(ValueExpr::Operand(Operand::Literal(Value::Int(-5)))));
        assert!(matches!(
            parse_value("now + 3 working days at end of day", Type::Instant, &env),
            Ok(ValueExpr::Time(_))
        ));
        assert!(parse_value("now", Type::Str, &env).expect_err("type").contains("is of type instant"));
        assert!(parse_value("now + 1 day", Type::Str, &env).expect_err("type").contains("instant variable"));
        assert_eq!(parse_value("count - 1", Type::Int, &env), Ok(ValueExpr::IntAdd(Operand::Var("count".into()), -1)));
        assert!(parse_value("grade + 1", Type::Int, &env).expect_err("type").contains("not int"));
        assert!(parse_value("count * 2", Type::Int, &env).is_err());
    }
}
