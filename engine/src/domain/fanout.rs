//! The case ↔ task fan-out (§9, §10), decided inside the writer from the case's own variables.
//!
//! Licensing a case creates one supervision task per supervising department; revoking it
//! tells every task. Both are computed from the case *as the writer holds it* — after the
//! licensing or revocation transition, in the same batch — through [`crate::writer::Derive`],
//! never from a read of the database that a command queued but not yet committed could make
//! stale. Tasks are `<case_id>/T1` … `T<task_count>`.
//!
//! A variable the fan-out needs that is missing or does not parse is damaged data: an error
//! for the caller and the log (`DATA_LOSS`), never a case licensed with no tasks.

use serde::Deserialize;
use serde_json::json;

use super::task_id;
use crate::definition::Value;
use crate::machine::Instance;
use crate::writer::{GroupItem, WriteError};

/// One supervising department and office, as the case stores them (`supervisors_json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Supervisor {
    /// The supervising department.
    pub department: String,
    /// Its office responsible for the task.
    pub office: String,
    /// The office administrator's mobile, for the SMS ("" when not given).
    #[serde(default)]
    pub office_admin_mobile: String,
}

fn damaged(case: &Instance, message: impl std::fmt::Display) -> WriteError {
    WriteError::DataLoss(format!("case {}: {message}", case.id))
}

fn text<'a>(case: &'a Instance, name: &str) -> Result<&'a str, WriteError> {
    match case.vars.get(name) {
        Some(Value::Str(s)) => Ok(s),
        Some(other) => Err(damaged(case, format!("variable {name} is {other:?}, not text"))),
        None => Err(damaged(case, format!("variable {name} is missing"))),
    }
}

fn optional_text<'a>(case: &'a Instance, name: &str) -> Option<&'a str> {
    match case.vars.get(name) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    }
}

/// Records a new case's supervisors in its variables: `supervisors_json` (the list the
/// fan-out reads), `supervisors` (for people) and `task_count`.
pub fn record_supervisors(vars: &mut serde_json::Value, list: &[Supervisor]) -> Result<(), super::Refusal> {
    // Stored as sent: a mobile checked at intake or import, normalised by the same rule.
    let list: Vec<Supervisor> = list
        .iter()
        .map(|s| Supervisor {
            office_admin_mobile: super::mobile(&s.office_admin_mobile)
                .unwrap_or_else(|_| s.office_admin_mobile.clone()),
            ..s.clone()
        })
        .collect();
    let list = list.as_slice();
    let display: Vec<String> = list.iter().map(|s| format!("{}/{}", s.department, s.office)).collect();
    vars["supervisors"] = json!(display.join("; "));
    vars["supervisors_json"] = json!(serde_json::to_string(list)
        .map_err(|e| super::Refusal::Internal(format!("cannot record the supervisors: {e}")))?);
    vars["task_count"] = json!(list.len());
    Ok(())
}

/// The number of supervision tasks the case has (or will have when licensed).
pub fn task_count(case: &Instance) -> Result<usize, WriteError> {
    match case.vars.get("task_count") {
        Some(Value::Int(n)) => usize::try_from(*n).map_err(|_| damaged(case, format!("task_count is {n}"))),
        other => Err(damaged(case, format!("task_count is {other:?}"))),
    }
}

/// The case's supervisors, checked against its task count.
pub fn supervisors(case: &Instance) -> Result<Vec<Supervisor>, WriteError> {
    let list: Vec<Supervisor> = serde_json::from_str(text(case, "supervisors_json")?)
        .map_err(|e| damaged(case, format!("supervisors_json does not parse: {e}")))?;
    let count = task_count(case)?;
    if list.is_empty() || list.len() != count {
        return Err(damaged(case, format!("{} supervisors recorded for {count} tasks", list.len())));
    }
    Ok(list)
}

/// The commands that start the supervision tasks of a case just licensed: one per
/// supervisor, each required (the licence and its tasks commit together or not at all).
pub fn supervision_tasks(case: &Instance, actor: &str) -> Result<Vec<GroupItem>, WriteError> {
    if matches!(case.vars.get("unlinked"), Some(Value::Bool(true))) {
        let item = optional_text(case, "handling_item").unwrap_or_default();
        return Err(crate::machine::Rejection::Refused {
            message: format!(
                "no supervising department: handling item {item} is not in the linkage catalog. \
                 Link it (catalog import), then AdminService.RelinkCase; a licence now would fall through (§4)"
            ),
        }
        .into());
    }
    let mut out = Vec::new();
    for (i, s) in supervisors(case)?.into_iter().enumerate() {
        let mut vars = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| vars.insert(name.to_owned(), value);
        for name in [
            "region",
            "case_no",
            "approval_department",
            "applicant_name",
            "applicant_code",
            "route",
            "credit_grade",
            "license_no",
        ] {
            put(name, json!(text(case, name)?));
        }
        put("case_id", json!(case.id));
        put("task_no", json!(i + 1));
        put("department", json!(s.department));
        put("office", json!(s.office));
        if !s.office_admin_mobile.is_empty() {
            put("office_admin_mobile", json!(s.office_admin_mobile));
        }
        if let Some(scenario) = optional_text(case, "scenario") {
            put("scenario", json!(scenario));
        }
        out.push(GroupItem {
            command: super::start(&task_id(&case.id, i + 1), super::TASK_WORKFLOW, vars, actor),
            required: true,
        });
    }
    Ok(out)
}

/// The commands that tell every task of a revoked case: the one that asked for the revocation
/// closes as revoked, the others are cancelled. Tasks that do not exist (the case was never
/// licensed) refuse, and are skipped.
///
/// Each notice carries the revocation's reason and basis: with them the task tells its
/// department's platform that the licence was revoked (`licence_revoked`) — a task already
/// closed (compliant or rectified) too, and stays closed; one revoked or cancelled already
/// refuses.
pub fn revocation_notices(case: &Instance, actor: &str) -> Result<Vec<GroupItem>, WriteError> {
    let mut fields = serde_json::Map::new();
    for (field, var) in [("reason", "revoke_reason"), ("basis", "revoke_basis")] {
        fields.insert(field.to_owned(), json!(optional_text(case, var).unwrap_or("未说明")));
    }
    let mut out = Vec::new();
    for n in 1..=task_count(case)? {
        let task = task_id(&case.id, n);
        for event in ["approval_revoked", "case_revoked"] {
            out.push(GroupItem { command: super::event(&task, event, fields.clone(), actor), required: false });
        }
    }
    Ok(out)
}
