//! What approval and supervision mean, apart from any transport: identifiers and text checked
//! at the edge ([`ids`]), the closed set of credit grades and which of them bar the commitment
//! route ([`credit`]), and the case ↔ task fan-out that the writer decides from a case's own
//! variables ([`fanout`]).

pub mod credit;
pub mod fanout;
pub mod ids;

pub use ids::*;

/// The workflow of an approval case.
pub const CASE_WORKFLOW: &str = "approval_case";
/// The workflow of a supervision task.
pub const TASK_WORKFLOW: &str = "supervision_task";
/// Workflows that only the domain services may start or signal: the generic `EngineService`
/// must not, since it would skip their validation and fan-out.
pub const DOMAIN_WORKFLOWS: [&str; 2] = [CASE_WORKFLOW, TASK_WORKFLOW];

/// The breach flags of a supervision task.
pub const TASK_BREACHES: [&str; 3] = ["ack_breached", "result_breached", "rectification_breached"];
/// The breach flag of a case (its commitment deadline).
pub const CASE_BREACH: &str = "deadline_breached";
