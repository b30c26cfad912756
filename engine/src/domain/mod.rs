//! What approval and supervision mean, apart from any transport. The gRPC handlers translate
//! proto ↔ these types and [`Refusal`] → status, and nothing else.
//!
//! - [`case`]: accepting a case (the credit bar, the route and scenario, the commitment
//!   deadline on the working-day calendar, the supervising departments), completing and
//!   revoking an approval.
//! - [`task`]: the supervision platforms' reports, and what each tells the case.
//! - [`fanout`]: the case ↔ task fan-out that the writer derives from a case's own variables.
//! - [`figures`]: the assessment figures (§21) a case or a task counts in, for the counters
//!   the writer keeps and the statistics read.
//! - [`credit`]: the closed set of credit grades and which of them bar the commitment route.
//! - [`spotcheck`]: credit-graded spot checks — plans, reproducible draws, the runner.
//! - [`ids`]: identifiers (USCC, citizen ID, region, case and task ids) and text checks.

pub mod case;
pub mod credit;
pub mod fanout;
pub mod figures;
pub mod ids;
pub mod spotcheck;
pub mod task;

pub use ids::*;

use crate::machine::{Command, CommandKind};

/// Why the domain refuses a request, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A field is malformed or breaks a rule about its own value.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the caller named it (`applicant.citizen_id`, `supervisors[2].office`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The request is well formed but the rules do not allow it (a barred credit grade on the
    /// commitment route).
    #[error("{0}")]
    Precondition(String),
    /// A defect of ours.
    #[error("internal: {0}")]
    Internal(String),
}

impl Refusal {
    /// `field` is invalid: `message`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Refusal::Invalid { field: field.to_owned(), message: message.to_string() }
    }
}

/// A field check from [`ids`], naming the field when it fails.
pub fn check(field: &str, result: Result<(), String>) -> Result<(), Refusal> {
    result.map_err(|message| Refusal::invalid(field, message))
}

/// A command delivering event `name` with `fields` to `instance`.
pub fn event(instance: &str, name: &str, fields: serde_json::Map<String, serde_json::Value>, actor: &str) -> Command {
    Command {
        instance: instance.to_owned(),
        kind: CommandKind::Event { name: name.to_owned(), fields },
        actor: actor.to_owned(),
        request_id: None,
        idempotency: None,
    }
}

/// A command starting `instance` of the newest version of `workflow` with `vars`.
pub fn start(instance: &str, workflow: &str, vars: serde_json::Map<String, serde_json::Value>, actor: &str) -> Command {
    Command {
        instance: instance.to_owned(),
        kind: CommandKind::Start { workflow: workflow.to_owned(), version: None, vars },
        actor: actor.to_owned(),
        request_id: None,
        idempotency: None,
    }
}

/// The fields of a `json!` object literal (anything else is no fields).
pub fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The years a date may name: wide enough for any birth date or deadline, narrow enough that a
/// day more or less never leaves the calendar type's range.
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2199;

/// A date as sent: `YYYY-MM-DD`, in the years [`YEARS`].
pub fn date(text: &str) -> Result<chrono::NaiveDate, String> {
    use chrono::Datelike;
    let d = crate::calendar::parse_date(text).ok_or_else(|| format!("{text:?} is not a date YYYY-MM-DD"))?;
    if !YEARS.contains(&d.year()) {
        return Err(format!("{text} is out of range: years {} to {}", YEARS.start(), YEARS.end()));
    }
    Ok(d)
}

/// The workflow of an approval case.
pub const CASE_WORKFLOW: &str = "approval_case";
/// The workflow of a supervision task.
pub const TASK_WORKFLOW: &str = "supervision_task";
/// Workflows that only the domain services may start or signal: the generic `EngineService`
/// must not, since it would skip their validation and fan-out.
pub const DOMAIN_WORKFLOWS: [&str; 4] =
    [CASE_WORKFLOW, TASK_WORKFLOW, spotcheck::PLAN_WORKFLOW, spotcheck::TASK_WORKFLOW];

/// The breach flags of a supervision task.
pub const TASK_BREACHES: [&str; 3] = ["ack_breached", "result_breached", "rectification_breached"];
/// The breach flag of the task deadline a caller names: "view", "result" or "rectification".
pub fn task_breach(deadline: &str) -> Option<&'static str> {
    let i = ["view", "result", "rectification"].iter().position(|d| *d == deadline)?;
    Some(TASK_BREACHES[i])
}

/// A case's route as its `route` variable says it: the normal route…
pub const ROUTE_NORMAL: &str = "normal";
/// …and the commitment route (告知承诺制).
pub const ROUTE_COMMITMENT: &str = "commitment";
/// Every route, by the names QueryCases filters with.
pub const ROUTES: [&str; 2] = [ROUTE_NORMAL, ROUTE_COMMITMENT];

/// The states of a case waiting for the materials it committed to (the reminder and the
/// commitment deadline run in them).
pub const COMMITMENT_WAITING: [&str; 2] = ["commitment_pending", "reminded"];
/// The breach flag of a case (its commitment deadline).
pub const CASE_BREACH: &str = "deadline_breached";
/// Set on a case whose commitment deadline was counted on a provisional calendar.
pub const COMMITMENT_PROVISIONAL: &str = "commitment_deadline_provisional";
