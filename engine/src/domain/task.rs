//! Supervision tasks (§9–§11): what the supervision platforms' reports mean, apart from any
//! transport.
//!
//! Each function checks a report and gives the task's command; a report that ends a task or
//! decides a revocation also gives the [`Derive`] that tells the approval case, computed inside
//! the writer from the task as it stands after the report (its case, its department), in the
//! same transaction. The case may have ended already (revoked): then the case event is skipped.

use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::json;

use super::{Refusal, TASK_WORKFLOW};
use crate::calendar::Calendar;
use crate::definition::Value;
use crate::machine::{Command, Instance, Rejection};
use crate::writer::{Derive, GroupItem, WriteError};

/// Working days an office has to feed back the result after the inspection (§10).
pub const RESULT_WORKING_DAYS: u32 = 5;

/// What an inspection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The licensee meets its commitment.
    Compliant,
    /// It does not: rectification by a deadline.
    NonCompliant,
    /// The licence must be revoked.
    Revocation,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Compliant => "compliant",
            Outcome::NonCompliant => "non_compliant",
            Outcome::Revocation => "revocation",
        }
    }
}

/// A report of an inspection's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultReport {
    /// The outcome; `None` when what was sent is not one.
    pub outcome: Option<Outcome>,
    /// Notes (may be empty).
    pub notes: String,
    /// For a non-compliant outcome: the rectification deadline as sent (`YYYY-MM-DD`).
    pub rectification_deadline: String,
}

/// The office looked at the approval record.
pub fn acknowledge(task_id: &str, actor: &str) -> Command {
    super::event(task_id, "acknowledge", serde_json::Map::new(), actor)
}

/// The inspection finished on `finished_on`, which may not be in the future; the result is
/// due [`RESULT_WORKING_DAYS`] working days on, so that day must be in the calendar.
pub fn report_inspection(
    task_id: &str,
    finished_on: &str,
    calendar: &Calendar,
    today: NaiveDate,
    actor: &str,
) -> Result<Command, Refusal> {
    let finished = super::date(finished_on).map_err(|e| Refusal::invalid("finished_on", e))?;
    if finished > today {
        return Err(Refusal::invalid("finished_on", format!("{finished} is in the future (today is {today})")));
    }
    calendar.add_working_days(finished, RESULT_WORKING_DAYS).map_err(|e| Refusal::invalid("finished_on", e))?;
    Ok(super::event(task_id, "report_inspection", super::object(json!({"finished_on": finished.to_string()})), actor))
}

/// The result of an inspection: the task's event and, for a compliant result or a revocation,
/// what the case learns.
pub fn report_result(
    task_id: &str,
    report: &ResultReport,
    calendar: &Calendar,
    today: NaiveDate,
    actor: &str,
) -> Result<(Command, Option<Derive>), Refusal> {
    if !report.notes.is_empty() {
        super::check("notes", super::check_text(&report.notes, 2000))?;
    }
    let outcome = report.outcome.ok_or_else(|| {
        Refusal::invalid("outcome", "must be OUTCOME_COMPLIANT, OUTCOME_NON_COMPLIANT or OUTCOME_REVOCATION")
    })?;
    let mut fields = json!({"outcome": outcome.name()});
    if !report.notes.is_empty() {
        fields["notes"] = json!(report.notes);
    }
    if outcome == Outcome::NonCompliant {
        if report.rectification_deadline.is_empty() {
            return Err(Refusal::invalid("rectification_deadline", "is required for OUTCOME_NON_COMPLIANT"));
        }
        let d =
            super::date(&report.rectification_deadline).map_err(|e| Refusal::invalid("rectification_deadline", e))?;
        if d < today {
            return Err(Refusal::invalid("rectification_deadline", format!("{d} is in the past (today is {today})")));
        }
        // The deadline's year must be in the calendar (its timer is computed on it).
        calendar.is_working_day(d).map_err(|e| Refusal::invalid("rectification_deadline", e))?;
        fields["rectification_deadline"] = json!(d.to_string());
    } else if !report.rectification_deadline.is_empty() {
        return Err(Refusal::invalid("rectification_deadline", "applies only to OUTCOME_NON_COMPLIANT"));
    }
    let command = super::event(task_id, "report_result", super::object(fields), actor);
    let tell = match outcome {
        Outcome::Compliant => Some(task_closed(outcome.name(), actor)),
        Outcome::Revocation => {
            let reason = if report.notes.is_empty() {
                "supervision found the licence must be revoked".to_owned()
            } else {
                report.notes.clone()
            };
            Some(revocation_decided(reason, actor))
        }
        Outcome::NonCompliant => None,
    };
    Ok((command, tell))
}

/// The rectification report: rectified closes the task (and tells the case); not rectified
/// asks the approval department to revoke.
pub fn report_rectification(
    task_id: &str,
    rectified: bool,
    notes: &str,
    actor: &str,
) -> Result<(Command, Derive), Refusal> {
    let mut fields = json!({"rectified": rectified});
    if !notes.is_empty() {
        super::check("notes", super::check_text(notes, 2000))?;
        fields["notes"] = json!(notes);
    }
    let command = super::event(task_id, "report_rectification", super::object(fields), actor);
    let tell = if rectified {
        task_closed("rectified", actor)
    } else {
        revocation_decided("the applicant did not comply after rectification".to_owned(), actor)
    };
    Ok((command, tell))
}

fn text(task: &Instance, name: &str) -> Result<String, WriteError> {
    match task.vars.get(name) {
        Some(Value::Str(s)) => Ok(s.clone()),
        _ => Err(WriteError::DataLoss(format!("task {}: variable {name} is missing or not text", task.id))),
    }
}

/// A fan-out from a task to its case; refuses if the instance is not a task.
fn to_case(
    f: impl Fn(&Instance, String) -> serde_json::Value + Send + Sync + 'static,
    event: &'static str,
    actor: &str,
) -> Derive {
    let actor = actor.to_owned();
    Arc::new(move |task: &Instance| {
        if task.workflow != TASK_WORKFLOW {
            return Err(Rejection::NotFound { instance: task.id.clone() }.into());
        }
        let case_id = text(task, "case_id")?;
        let fields = f(task, text(task, "department")?);
        let command = super::event(&case_id, event, super::object(fields), &actor);
        // The case may have ended (revoked) already: then it has nothing more to learn.
        Ok(vec![GroupItem { command, required: false }])
    })
}

fn task_closed(outcome: &'static str, actor: &str) -> Derive {
    to_case(move |task, _| json!({"task": task.id, "outcome": outcome}), "task_closed", actor)
}

fn revocation_decided(reason: String, actor: &str) -> Derive {
    to_case(
        move |task, department| json!({"task": task.id, "department": department, "reason": reason}),
        "revocation_decided",
        actor,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Calendars;
    use crate::machine::CommandKind;

    fn task(department: &str) -> Instance {
        Instance {
            id: "320700/A-1/T2".into(),
            workflow: TASK_WORKFLOW.into(),
            version: 1,
            state: "revocation_requested".into(),
            vars: [("case_id", "320700/A-1"), ("department", department)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::Str(v.to_owned())))
                .collect(),
            timers: Default::default(),
            seq: 5,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn result(outcome: Option<Outcome>, deadline: &str) -> Result<(Command, Option<Derive>), Refusal> {
        let calendars = Calendars::embedded().expect("calendars");
        let today = crate::calendar::parse_date("2026-09-28").expect("date");
        let report = ResultReport { outcome, notes: String::new(), rectification_deadline: deadline.into() };
        report_result("320700/A-1/T2", &report, calendars.region("320700"), today, "t")
    }

    #[test]
    fn a_revocation_tells_the_case_with_the_department_the_task_holds() {
        let (command, tell) = result(Some(Outcome::Revocation), "").expect("valid");
        assert_eq!(command.instance, "320700/A-1/T2");
        let told = tell.expect("the case is told")(&task("Fire")).expect("derive");
        assert_eq!(told.len(), 1);
        assert!(!told[0].required, "a case that has ended is skipped, not an error");
        assert_eq!(told[0].command.instance, "320700/A-1");
        match &told[0].command.kind {
            CommandKind::Event { name, fields } => {
                assert_eq!(name, "revocation_decided");
                assert_eq!(fields["department"], "Fire");
            }
            other => panic!("{other:?}"),
        }
        // Derived from anything but a task, it refuses.
        let mut not_a_task = task("Fire");
        not_a_task.workflow = "approval_case".into();
        assert!(result(Some(Outcome::Revocation), "").expect("valid").1.expect("tell")(&not_a_task).is_err());
    }

    #[test]
    fn a_non_compliant_result_needs_a_deadline_not_in_the_past_in_a_calendar_year() {
        assert!(result(Some(Outcome::NonCompliant), "").is_err());
        assert!(result(Some(Outcome::NonCompliant), "2026-09-01").is_err(), "in the past");
        assert!(result(Some(Outcome::NonCompliant), "2150-10-13").is_err(), "a year the calendar does not have");
        let (_, tell) = result(Some(Outcome::NonCompliant), "2026-10-12").expect("valid");
        assert!(tell.is_none(), "the case learns nothing until the rectification");
        assert!(result(Some(Outcome::Compliant), "2026-10-12").is_err(), "a deadline only for non-compliance");
        assert!(matches!(result(None, ""), Err(Refusal::Invalid { field, .. }) if field == "outcome"));
    }

    #[test]
    fn an_inspection_may_not_finish_in_the_future() {
        let calendars = Calendars::embedded().expect("calendars");
        let today = crate::calendar::parse_date("2026-09-28").expect("date");
        let cal = calendars.region("320700");
        assert!(report_inspection("x/T1", "2026-09-28", cal, today, "t").is_ok());
        assert!(report_inspection("x/T1", "2026-09-29", cal, today, "t").is_err());
        assert!(report_inspection("x/T1", "28/09/2026", cal, today, "t").is_err());
    }
}
