//! The one place errors become gRPC statuses. Messages say what to do; database detail stays
//! in the logs.

use tonic::{Code, Status};

use crate::machine::Rejection;

/// Every status a call is answered with passes here: at debug level the call's span (method,
/// request id, instance) then shows why it failed.
pub(crate) fn told(status: Status) -> Status {
    tracing::debug!(code = ?status.code(), message = status.message(), "answered with an error");
    status
}
use crate::writer::{GroupError, WriteError};

/// `InvalidArgument` naming the field.
fn invalid_status(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}

/// `NotFound` for an instance of kind `what` ("case", "task").
fn not_found_status(what: &str, id: &str) -> Status {
    Status::not_found(format!("{what} {id} does not exist"))
}

/// `Internal`: a workflow the services need is not loaded (a deployment defect).
pub fn missing_workflow(name: &str) -> Status {
    tracing::error!(workflow = name, "a workflow the services need is not loaded");
    Status::internal(format!("no {name} workflow is loaded"))
}

/// `FailedPrecondition`: the call needs a server started with `--virtual-clock`.
pub fn not_a_sandbox() -> Status {
    Status::failed_precondition(
        "this server runs on the system clock; only a server started with --virtual-clock can be advanced",
    )
}

/// The status for a request the domain refused.
fn refusal_status(r: &crate::domain::Refusal) -> Status {
    use crate::domain::Refusal;
    match r {
        Refusal::Invalid { field, message } => invalid_status(field, message),
        Refusal::Precondition(message) => Status::failed_precondition(message.clone()),
        Refusal::Internal(message) => {
            tracing::error!(%message, "domain defect");
            Status::internal("the engine could not prepare this request; nothing was written")
        }
    }
}

/// Where an archived case went, for a person.
pub(crate) fn archived_text(a: &crate::store::ArchivedRow) -> String {
    let day = crate::clock::to_datetime(a.archived_at).with_timezone(&crate::calendar::DEFAULT_TZ).date_naive();
    format!(
        "case {id} ({state}) was archived on {day} into {file}; read it with `shenguan archive show {file} {id}`",
        id = a.id,
        state = a.state,
        file = a.archive
    )
}

/// The status for a write that failed, for an instance of kind `what` ("case", "task").
fn write_error_status(what: &str, id: &str, error: &WriteError) -> Status {
    match error {
        WriteError::Rejected(r) => rejection(what, id, r),
        // Its number stays taken: the timeline is in the archive.
        WriteError::Archived(a) => Status::already_exists(archived_text(a)),
        WriteError::KeyReused { .. } => {
            Status::already_exists(format!("{what} {id} was already submitted with different content"))
        }
        WriteError::Unavailable(_) | WriteError::ShuttingDown | WriteError::Fenced(_) | WriteError::NotHeld(_) => {
            tracing::warn!(%error, "write failed");
            Status::unavailable("storage is unavailable; nothing was written; retry later")
        }
        WriteError::Indeterminate(_) => {
            tracing::warn!(%error, "write outcome unknown");
            Status::unavailable(format!(
                "storage failed while committing {what} {id}: the write may have been applied; retry with the same \
                 x-request-id (or the same request) to get its outcome"
            ))
        }
        WriteError::Conflict(_) => {
            // The writer retried already; what is left is contention on one instance.
            tracing::warn!(%error, "write conflict persisted");
            Status::aborted(format!(
                "{what} {id} was being changed by another call at the same time; nothing was written; retry"
            ))
        }
        WriteError::DataLoss(_) => {
            tracing::error!(%error, "stored data cannot be read");
            Status::data_loss(format!("{what} {id} cannot be read back; an operator must look at it"))
        }
        WriteError::Internal(_) => {
            tracing::error!(%error, "storage refused a write");
            Status::internal(
                "the engine could not store this request; nothing was written; an operator must look at the log",
            )
        }
    }
}

/// The status for a rejected command.
pub fn rejection(what: &str, id: &str, r: &Rejection) -> Status {
    match r {
        Rejection::AlreadyExists { .. } => Status::already_exists(format!("{what} {id} already exists")),
        Rejection::NotFound { .. } => Status::not_found(format!("{what} {id} does not exist")),
        Rejection::InvalidTransition { state, event } => {
            Status::failed_precondition(format!("{what} {id} is in state {state}; {event} is not allowed there"))
        }
        Rejection::GuardRejected { state, event } => Status::failed_precondition(format!(
            "{what} {id} is in state {state}; {event} does not apply to it as given"
        )),
        Rejection::InvalidInput { field, message } => invalid_status(field, message),
        Rejection::UnknownEvent { event, .. } => Status::invalid_argument(format!("unknown event {event}")),
        Rejection::InternalEvent { event } => {
            Status::permission_denied(format!("{event} is raised by the engine's timers only"))
        }
        Rejection::Deadline { .. } | Rejection::Set { .. } => Status::failed_precondition(format!("{what} {id}: {r}")),
        Rejection::StaleTimer { .. } => Status::aborted(r.to_string()),
        Rejection::NothingToReplan { .. } => Status::failed_precondition(r.to_string()),
        Rejection::Refused { message } => Status::failed_precondition(format!("{what} {id}: {message}")),
        Rejection::UnknownWorkflow { .. } => Status::new(Code::Internal, r.to_string()),
    }
}

/// The status for a failed group: the failing command's instance is named.
pub fn group_error(error: &GroupError) -> Status {
    let what = if crate::domain::parse_task_id(&error.instance).is_ok() { "task" } else { "case" };
    write_error(what, &error.instance, &error.error)
}

/// The status for a read that failed.
fn read_error_status(error: &crate::store::Error) -> Status {
    use crate::store::Error as E;
    match error {
        E::Unavailable(_) | E::Open { .. } | E::Conflict(_) | E::Fenced { .. } | E::Indeterminate(_) => {
            tracing::warn!(%error, "read failed");
            Status::unavailable("storage is unavailable; retry later")
        }
        E::Corrupt(_) => {
            tracing::error!(%error, "stored data cannot be read");
            Status::data_loss("stored data cannot be read back; an operator must look at it")
        }
        E::Internal(_) => {
            tracing::error!(%error, "read refused");
            Status::internal("the engine could not answer this query; an operator must look at the log")
        }
    }
}

/// See `invalid_status`; the refusal is logged at debug level inside the call's span.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    told(invalid_status(field, message))
}

/// See `not_found_status`; the refusal is logged at debug level inside the call's span.
pub fn not_found(what: &str, id: &str) -> Status {
    told(not_found_status(what, id))
}

/// See `refusal_status`; the refusal is logged at debug level inside the call's span.
pub fn refusal(r: &crate::domain::Refusal) -> Status {
    told(refusal_status(r))
}

/// See `write_error_status`; the refusal is logged at debug level inside the call's span.
pub fn write_error(what: &str, id: &str, error: &WriteError) -> Status {
    told(write_error_status(what, id, error))
}

/// See `read_error_status`; the refusal is logged at debug level inside the call's span.
pub fn read_error(error: &crate::store::Error) -> Status {
    told(read_error_status(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A COMMIT lost on the way may have been applied: the caller is told so, and how to learn
    /// which, never "nothing was written".
    #[test]
    fn an_unknown_commit_outcome_says_it_may_have_been_applied() {
        let s = write_error("case", "320700/X", &WriteError::Indeterminate("connection reset".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("may have been applied"), "{}", s.message());
        assert!(s.message().contains("x-request-id"), "{}", s.message());
        assert!(!s.message().contains("nothing was written"), "{}", s.message());
        let s = write_error("case", "320700/X", &WriteError::Unavailable("disk full".into()));
        assert!(s.message().contains("nothing was written"), "{}", s.message());
    }
}
