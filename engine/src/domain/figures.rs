//! The assessment figures (DOMAIN.md §21), written once: which figures a case or a supervision
//! task counts in, under which group (region, department, office) and on which day.
//!
//! Two paths use [`counted`], and nothing else decides what a figure is:
//! - the writer keeps counters: for every transition it takes the figures of the instance before
//!   and after and records the difference ([`Tally`]), in the transaction of the transition
//!   itself, so a counter is exactly as durable as the rows it counts;
//! - GetStatistics with ids asks of every row in the period which figures it counts in.
//!
//! A figure's day is the day the instance started (a case accepted, a task created), in China
//! Standard Time — never the region calendar's time zone, which a calendar file may change
//! after the counter was written. Counters are kept per day and per month ([`Grain`]), so that a
//! year asks twelve month rows per figure and only the partial months at its ends ask days.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, NaiveDate};

use crate::clock::Millis;
use crate::definition::Value;
use crate::machine::Instance;
use crate::store::InstanceRow;

/// Which side of the linkage a figure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Supervision tasks, per (region, department, office).
    Supervision,
    /// Approval cases, per (region, approving department); no office.
    Approval,
}

impl Side {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Supervision => "supervision",
            Side::Approval => "approval",
        }
    }

    /// From its stored word.
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "supervision" => Some(Side::Supervision),
            "approval" => Some(Side::Approval),
            _ => None,
        }
    }
}

/// Who a figure is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group {
    /// Supervision or approval.
    pub side: Side,
    /// Region code.
    pub region: String,
    /// The supervising department (a task) or the approving department (a case).
    pub department: String,
    /// The supervising office; empty for a case.
    pub office: String,
}

/// The figures, as GetStatistics names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Figure {
    /// Supervision tasks created.
    Tasks,
    /// Viewed within the viewing deadline.
    ViewedInTime,
    /// Viewed after it.
    ViewedLate,
    /// Not viewed, the deadline passed.
    ViewOverdue,
    /// Result fed back within the result deadline.
    ResultsInTime,
    /// Fed back after it.
    ResultsLate,
    /// No result, the deadline passed.
    ResultOverdue,
    /// Results that ordered rectification.
    RectificationsOrdered,
    /// Rectified.
    Rectified,
    /// Rectification failed.
    RectificationFailed,
    /// Revocations the supervision decided (directly or after a failed rectification).
    RevocationsDecided,
    /// Cases accepted.
    Cases,
    /// Cases on the commitment route.
    Commitments,
    /// Commitments fulfilled.
    CommitmentsFulfilled,
    /// Commitments whose deadline passed unfulfilled.
    CommitmentsOverdue,
    /// Commitment cases revoked.
    CommitmentsRevoked,
    /// Cases revoked.
    Revoked,
}

impl Figure {
    /// Every figure, in reply order.
    pub const ALL: [Figure; 17] = [
        Figure::Tasks,
        Figure::ViewedInTime,
        Figure::ViewedLate,
        Figure::ViewOverdue,
        Figure::ResultsInTime,
        Figure::ResultsLate,
        Figure::ResultOverdue,
        Figure::RectificationsOrdered,
        Figure::Rectified,
        Figure::RectificationFailed,
        Figure::RevocationsDecided,
        Figure::Cases,
        Figure::Commitments,
        Figure::CommitmentsFulfilled,
        Figure::CommitmentsOverdue,
        Figure::CommitmentsRevoked,
        Figure::Revoked,
    ];

    /// As stored (the reply's field name).
    pub fn as_str(self) -> &'static str {
        match self {
            Figure::Tasks => "tasks",
            Figure::ViewedInTime => "viewed_in_time",
            Figure::ViewedLate => "viewed_late",
            Figure::ViewOverdue => "view_overdue",
            Figure::ResultsInTime => "results_in_time",
            Figure::ResultsLate => "results_late",
            Figure::ResultOverdue => "result_overdue",
            Figure::RectificationsOrdered => "rectifications_ordered",
            Figure::Rectified => "rectified",
            Figure::RectificationFailed => "rectification_failed",
            Figure::RevocationsDecided => "revocations_decided",
            Figure::Cases => "cases",
            Figure::Commitments => "commitments",
            Figure::CommitmentsFulfilled => "commitments_fulfilled",
            Figure::CommitmentsOverdue => "commitments_overdue",
            Figure::CommitmentsRevoked => "commitments_revoked",
            Figure::Revoked => "revoked",
        }
    }

    /// From its stored word.
    pub fn parse(s: &str) -> Option<Figure> {
        Figure::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// What the figure rule reads of an instance: its workflow, state, variables as text and
/// start. Both the typed instance (the writer) and the stored row (a listing) answer it.
pub trait Facts {
    /// The workflow.
    fn workflow(&self) -> &str;
    /// The current state.
    fn state(&self) -> &str;
    /// A variable as text (`true`/`false` for a boolean); `None` when unset.
    fn text(&self, var: &str) -> Option<Cow<'_, str>>;
    /// When it started.
    fn created_at(&self) -> Millis;
}

impl Facts for Instance {
    fn workflow(&self) -> &str {
        &self.workflow
    }
    fn state(&self) -> &str {
        &self.state
    }
    fn text(&self, var: &str) -> Option<Cow<'_, str>> {
        match self.vars.get(var)? {
            Value::Str(s) => Some(Cow::Borrowed(s)),
            other => Some(Cow::Owned(other.to_string())),
        }
    }
    fn created_at(&self) -> Millis {
        self.created_at
    }
}

impl Facts for InstanceRow {
    fn workflow(&self) -> &str {
        &self.workflow
    }
    fn state(&self) -> &str {
        &self.state
    }
    fn text(&self, var: &str) -> Option<Cow<'_, str>> {
        match self.vars.get(var)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
            other => Some(Cow::Owned(other.to_string())),
        }
    }
    fn created_at(&self) -> Millis {
        self.created_at
    }
}

/// The figures one instance counts in, under its group and on its day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Who they count for.
    pub group: Group,
    /// The day the instance started (China Standard Time).
    pub day: NaiveDate,
    /// The figures.
    pub figures: Vec<Figure>,
}

/// The day an instant falls on, in China Standard Time.
pub fn day_of(at: Millis) -> NaiveDate {
    crate::clock::to_datetime(at).with_timezone(&crate::calendar::DEFAULT_TZ).date_naive()
}

/// The first instant of `day` in China Standard Time (`None` out of range).
pub fn start_of(day: NaiveDate) -> Option<Millis> {
    use chrono::TimeZone;
    let local = day.and_time(chrono::NaiveTime::MIN);
    crate::calendar::DEFAULT_TZ.from_local_datetime(&local).earliest().map(|t| t.timestamp_millis())
}

/// The rule: which figures `row` counts in. `None` for anything but a case or a supervision
/// task (spot-check tasks are not assessed here).
pub fn counted(row: &impl Facts) -> Option<Counted> {
    let text = |var: &str| row.text(var).unwrap_or_default();
    let is = |var: &str, value: &str| row.text(var).is_some_and(|v| v == value);
    let has = |var: &str| row.text(var).is_some();
    let flag = |var: &str| is(var, "true");
    let day = day_of(row.created_at());
    let mut figures = Vec::new();
    let mut when = |cond: bool, figure: Figure| {
        if cond {
            figures.push(figure);
        }
    };
    let group = match row.workflow() {
        super::TASK_WORKFLOW => {
            let viewed = has("viewed_at");
            let result = has("result");
            when(true, Figure::Tasks);
            when(viewed && !flag("ack_late"), Figure::ViewedInTime);
            when(viewed && flag("ack_late"), Figure::ViewedLate);
            when(!viewed && flag("ack_breached"), Figure::ViewOverdue);
            when(result && !flag("result_late"), Figure::ResultsInTime);
            when(result && flag("result_late"), Figure::ResultsLate);
            when(!result && flag("result_breached"), Figure::ResultOverdue);
            when(is("result", "non_compliant"), Figure::RectificationsOrdered);
            when(is("rectified", "true"), Figure::Rectified);
            when(is("rectified", "false"), Figure::RectificationFailed);
            when(is("result", "revocation") || is("rectified", "false"), Figure::RevocationsDecided);
            Group {
                side: Side::Supervision,
                region: text("region").into_owned(),
                department: text("department").into_owned(),
                office: text("office").into_owned(),
            }
        }
        super::CASE_WORKFLOW => {
            let commitment = is("route", super::ROUTE_COMMITMENT);
            let revoked = row.state() == "revoked";
            when(true, Figure::Cases);
            when(commitment, Figure::Commitments);
            when(is("commitment_outcome", "fulfilled"), Figure::CommitmentsFulfilled);
            when(flag("deadline_breached"), Figure::CommitmentsOverdue);
            when(commitment && revoked, Figure::CommitmentsRevoked);
            when(revoked, Figure::Revoked);
            Group {
                side: Side::Approval,
                region: text("region").into_owned(),
                department: text("approval_department").into_owned(),
                office: String::new(),
            }
        }
        _ => return None,
    };
    Some(Counted { group, day, figures })
}

/// How fine a counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    /// One day: the period is `YYYY-MM-DD`.
    Day,
    /// One month: `YYYY-MM`.
    Month,
}

impl Grain {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Month => "month",
        }
    }

    /// The period `day` falls in, as stored.
    pub fn period(self, day: NaiveDate) -> String {
        match self {
            Grain::Day => day.format("%Y-%m-%d").to_string(),
            Grain::Month => day.format("%Y-%m").to_string(),
        }
    }
}

/// One counter: a figure of a group in a period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// Day or month.
    pub grain: Grain,
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// Who it counts for.
    pub group: Group,
    /// Which figure.
    pub figure: Figure,
}

/// Net changes to the counters, summed over any number of instances and transitions.
#[derive(Debug, Default)]
pub struct Tally {
    by_day: HashMap<(Group, NaiveDate, Figure), i64>,
}

impl Tally {
    /// Counts `after` in and `before` out: one transition of one instance (`before` is `None`
    /// for a start, `after` for a removal).
    pub fn change(&mut self, before: Option<&impl Facts>, after: Option<&impl Facts>) {
        if let Some(c) = before.and_then(counted) {
            self.add(c, -1);
        }
        if let Some(c) = after.and_then(counted) {
            self.add(c, 1);
        }
    }

    fn add(&mut self, c: Counted, n: i64) {
        for figure in c.figures {
            *self.by_day.entry((c.group.clone(), c.day, figure)).or_default() += n;
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.by_day.values().all(|n| *n == 0)
    }

    /// The counters to add to, day and month rows, in key order (so that two transactions
    /// touching the same counters lock them in the same order), with no zero.
    pub fn rows(&self) -> Vec<(CounterKey, i64)> {
        let mut out: BTreeMap<CounterKey, i64> = BTreeMap::new();
        for ((group, day, figure), n) in &self.by_day {
            if *n == 0 {
                continue;
            }
            for grain in [Grain::Day, Grain::Month] {
                let key = CounterKey { grain, period: grain.period(*day), group: group.clone(), figure: *figure };
                *out.entry(key).or_default() += n;
            }
        }
        out.into_iter().filter(|(_, n)| *n != 0).collect()
    }
}

/// The counters that cover `from..=to` with the fewest rows: whole months as month rows, the
/// partial months at either end as day rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    /// Month rows, `(first, last)` inclusive (`YYYY-MM`).
    pub months: Option<(String, String)>,
    /// Day rows, each `(first, last)` inclusive (`YYYY-MM-DD`).
    pub days: Vec<(String, String)>,
}

/// See [`Cover`]; `from <= to`.
pub fn cover(from: NaiveDate, to: NaiveDate) -> Cover {
    let day = |d: NaiveDate| Grain::Day.period(d);
    let first_of = |d: NaiveDate| d.with_day(1).unwrap_or(d);
    let next_month = |d: NaiveDate| {
        let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
        NaiveDate::from_ymd_opt(y, m, 1)
    };
    // The first whole month starts on or after `from`; the last one ends on or before `to`.
    let first_whole = if from.day() == 1 { Some(from) } else { next_month(from) };
    let after_last_whole = to.succ_opt().map(first_of);
    match (first_whole, after_last_whole) {
        (Some(start), Some(end)) if start < end => {
            let last = end.pred_opt().unwrap_or(end);
            let mut days = Vec::new();
            if from < start {
                days.push((day(from), day(start.pred_opt().unwrap_or(start))));
            }
            if end <= to {
                days.push((day(end), day(to)));
            }
            Cover { months: Some((Grain::Month.period(start), Grain::Month.period(last))), days }
        }
        _ => Cover { months: None, days: vec![(day(from), day(to))] },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    fn row(workflow: &str, state: &str, vars: serde_json::Value, created_at: Millis) -> InstanceRow {
        InstanceRow {
            id: "x".into(),
            workflow: workflow.into(),
            state: state.into(),
            vars: vars.as_object().cloned().unwrap_or_default(),
            created_at,
            ..InstanceRow::default()
        }
    }

    // 2026-09-01T00:30+08:00 is 2026-08-31 in UTC: the figure's day is China's.
    const SEPT_1_0030_CST: Millis = 1_788_193_800_000;

    #[test]
    fn a_task_counts_in_the_figures_its_variables_say_on_the_day_it_was_created_in_china() {
        let t = row(
            crate::domain::TASK_WORKFLOW,
            "closed",
            serde_json::json!({"region": "320700", "department": "市场监管局", "office": "食品处",
                "viewed_at": 1, "ack_late": true, "result": "non_compliant", "rectified": false,
                "result_late": true}),
            SEPT_1_0030_CST,
        );
        let c = counted(&t).expect("a task counts");
        assert_eq!(c.day, date("2026-09-01"));
        assert_eq!(c.group.office, "食品处");
        assert_eq!(
            c.figures,
            [
                Figure::Tasks,
                Figure::ViewedLate,
                Figure::ResultsLate,
                Figure::RectificationsOrdered,
                Figure::RectificationFailed,
                Figure::RevocationsDecided
            ]
        );
        assert!(counted(&row("other", "s", serde_json::json!({}), 0)).is_none());
    }

    #[test]
    fn a_case_counts_by_its_approving_department_with_no_office() {
        let c = row(
            crate::domain::CASE_WORKFLOW,
            "revoked",
            serde_json::json!({"region": "320700", "approval_department": "审批局", "route": "commitment",
                "deadline_breached": true}),
            SEPT_1_0030_CST,
        );
        let c = counted(&c).expect("a case counts");
        assert_eq!(c.group.side, Side::Approval);
        assert_eq!((c.group.department.as_str(), c.group.office.as_str()), ("审批局", ""));
        assert_eq!(
            c.figures,
            [
                Figure::Cases,
                Figure::Commitments,
                Figure::CommitmentsOverdue,
                Figure::CommitmentsRevoked,
                Figure::Revoked
            ]
        );
    }

    #[test]
    fn a_transition_moves_counters_and_an_unchanged_figure_writes_nothing() {
        let vars = serde_json::json!({"region": "320700", "department": "d", "office": "o"});
        let before = row(crate::domain::TASK_WORKFLOW, "open", vars.clone(), SEPT_1_0030_CST);
        let mut after = before.clone();
        after.vars.insert("viewed_at".into(), serde_json::json!(5));
        let mut tally = Tally::default();
        tally.change(None::<&InstanceRow>, Some(&before));
        tally.change(Some(&before), Some(&after));
        let rows: Vec<(Grain, String, &str, i64)> =
            tally.rows().iter().map(|(k, n)| (k.grain, k.period.clone(), k.figure.as_str(), *n)).collect();
        assert_eq!(
            rows,
            [
                (Grain::Day, "2026-09-01".into(), "tasks", 1),
                (Grain::Day, "2026-09-01".into(), "viewed_in_time", 1),
                (Grain::Month, "2026-09".into(), "tasks", 1),
                (Grain::Month, "2026-09".into(), "viewed_in_time", 1),
            ]
        );
        let mut same = Tally::default();
        same.change(Some(&after), Some(&after));
        assert!(same.is_empty() && same.rows().is_empty());
        for f in Figure::ALL {
            assert_eq!(Figure::parse(f.as_str()), Some(f));
        }
    }

    #[test]
    fn a_period_is_covered_by_whole_months_and_the_days_at_its_ends() {
        let c = |a: &str, b: &str| cover(date(a), date(b));
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(c("2026-01-01", "2026-12-31"), Cover { months: Some(s("2026-01", "2026-12")), days: vec![] });
        assert_eq!(
            c("2026-01-15", "2026-03-10"),
            Cover {
                months: Some(s("2026-02", "2026-02")),
                days: vec![s("2026-01-15", "2026-01-31"), s("2026-03-01", "2026-03-10")]
            }
        );
        assert_eq!(c("2026-09-03", "2026-09-20"), Cover { months: None, days: vec![s("2026-09-03", "2026-09-20")] });
        assert_eq!(c("2026-09-03", "2026-10-20"), Cover { months: None, days: vec![s("2026-09-03", "2026-10-20")] });
        assert_eq!(c("2025-12-01", "2026-01-31"), Cover { months: Some(s("2025-12", "2026-01")), days: vec![] });
        assert_eq!(c("2026-02-28", "2026-02-28"), Cover { months: None, days: vec![s("2026-02-28", "2026-02-28")] });
    }
}
