//! Domain → proto: cases, tasks, deadlines and timeline entries as callers see them.

use std::collections::HashMap;

use crate::clock::{self, Millis};
use crate::definition::{Registry, Type, Value};
use crate::domain::{CASE_BREACH, TASK_BREACHES};
use crate::machine::{CommandKind, HistoryEntry};
use crate::proto;
use crate::store::InstanceRow;

/// An instant with its Asia/Shanghai rendering.
pub fn instant(at: Millis) -> proto::Instant {
    proto::Instant { unix_millis: at, shanghai: clock::display(at) }
}

/// A variable as text ("" when unset).
pub fn var(row: &InstanceRow, name: &str) -> String {
    match row.vars.get(name) {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Whether a boolean variable is true.
pub fn flag(row: &InstanceRow, name: &str) -> bool {
    matches!(row.vars.get(name), Some(serde_json::Value::Bool(true)))
}

/// Every variable as text; instants in Asia/Shanghai, as every instant the API shows.
/// Every variable of an instance as text (instants in Asia/Shanghai).
pub fn variables(registry: &Registry, row: &InstanceRow) -> HashMap<String, String> {
    let def = registry.get(&row.workflow, row.version);
    row.vars
        .iter()
        .map(|(k, v)| {
            // Stored as the definition's JSON form; decoded by the same function the engine
            // uses, so a stored value that does not decode shows as stored, not as a default.
            let text = match def.and_then(|d| d.vars.get(k)) {
                Some(spec) if spec.ty == Type::Instant => match Value::from_json(Type::Instant, v) {
                    Ok(Value::Instant(ms)) => clock::display(ms),
                    _ => var(row, k),
                },
                _ => var(row, k),
            };
            (k.clone(), text)
        })
        .collect()
}

/// Whether a task is overdue: one of its deadlines was missed.
pub fn task_overdue(row: &InstanceRow) -> bool {
    TASK_BREACHES.iter().any(|f| flag(row, f))
}

/// Whether a case is overdue: its commitment deadline, or a deadline of one of its tasks, was
/// missed. The one definition, also used by `QueryCases` with `overdue_only` (in SQL, built
/// from the same flags in `store::read`).
pub fn case_overdue(row: &InstanceRow, tasks: &[InstanceRow]) -> bool {
    flag(row, CASE_BREACH) || tasks.iter().any(task_overdue)
}

fn is_deadline(registry: &Registry, row: &InstanceRow, timer: &str) -> bool {
    registry.get(&row.workflow, row.version).and_then(|d| d.timer(timer)).is_some_and(|t| t.deadline)
}

/// The timers armed on an instance, soonest first.
pub fn deadlines(registry: &Registry, row: &InstanceRow) -> Vec<proto::Deadline> {
    let mut out: Vec<proto::Deadline> = row
        .timers
        .iter()
        .map(|(name, t)| proto::Deadline {
            name: name.clone(),
            due: Some(instant(t.due)),
            is_deadline: is_deadline(registry, row, name),
            provisional: t.plan.as_ref().is_some_and(|p| p.provisional),
        })
        .collect();
    out.sort_by_key(|d| d.due.as_ref().map_or(0, |i| i.unix_millis));
    out
}

/// A task as callers see it.
pub fn task(registry: &Registry, row: &InstanceRow) -> proto::Task {
    proto::Task {
        task_id: row.id.clone(),
        case_id: var(row, "case_id"),
        department: var(row, "department"),
        office: var(row, "office"),
        state: row.state.clone(),
        deadlines: deadlines(registry, row),
        overdue: task_overdue(row),
        created_at: Some(instant(row.created_at)),
        updated_at: Some(instant(row.updated_at)),
        version: row.seq,
        variables: variables(registry, row),
        workflow: row.workflow.clone(),
        workflow_version: row.version,
    }
}

/// A case as callers see it, with its tasks.
pub fn case(registry: &Registry, row: &InstanceRow, task_rows: &[InstanceRow]) -> proto::Case {
    let tasks: Vec<proto::Task> = task_rows.iter().map(|t| task(registry, t)).collect();
    proto::Case {
        case_id: row.id.clone(),
        case_no: var(row, "case_no"),
        region_code: var(row, "region"),
        state: row.state.clone(),
        route: var(row, "route"),
        scenario: var(row, "scenario"),
        approval_department: var(row, "approval_department"),
        applicant_name: var(row, "applicant_name"),
        applicant_code: var(row, "applicant_code"),
        credit_grade: var(row, "credit_grade"),
        commitment_deadline: var(row, "commitment_deadline"),
        commitment_deadline_provisional: flag(row, crate::domain::COMMITMENT_PROVISIONAL),
        license_no: var(row, "license_no"),
        deadlines: deadlines(registry, row),
        overdue: case_overdue(row, task_rows),
        accepted_at: Some(instant(row.created_at)),
        updated_at: Some(instant(row.updated_at)),
        unlinked: flag(row, "unlinked"),
        catalog_versions: var(row, "catalog_versions"),
        linkage_override: var(row, "linkage_override"),
        version: row.seq,
        tasks,
        variables: variables(registry, row),
        workflow: row.workflow.clone(),
        workflow_version: row.version,
    }
}

/// A definition as drawn: its states and transitions, each timer's transition marked.
pub fn workflow(def: &crate::definition::Definition) -> proto::Workflow {
    proto::Workflow {
        name: def.name.clone(),
        version: def.version,
        description: def.description.clone(),
        initial: def.initial.clone(),
        states: def
            .states
            .iter()
            .map(|s| proto::WorkflowState {
                name: s.name.clone(),
                description: s.description.clone(),
                terminal: s.terminal,
                timers: s.timers.iter().map(|t| t.name.clone()).collect(),
            })
            .collect(),
        transitions: def
            .transitions
            .iter()
            .map(|t| {
                // The same reading as `shenguan workflow graph`: a transition is a timer's when a
                // state it leaves arms a timer that sends its event.
                let timer = t
                    .from
                    .iter()
                    .filter_map(|from| def.state(from))
                    .flat_map(|s| &s.timers)
                    .find(|timer| timer.event == t.event)
                    .map(|timer| timer.name.clone())
                    .unwrap_or_default();
                proto::WorkflowTransition {
                    event: t.event.clone(),
                    from: t.from.clone(),
                    to: t.to.clone(),
                    guard: t.guard_text.clone().unwrap_or_default(),
                    timer,
                }
            })
            .collect(),
    }
}

/// One instance's history as timeline entries.
pub fn timeline(
    registry: &Registry,
    row: &InstanceRow,
    history: &[HistoryEntry],
    outbox: &[crate::store::StoredMessage],
) -> Vec<proto::TimelineEntry> {
    use proto::DeadlineStatus;
    history
        .iter()
        .map(|h| {
            let mut changes = Vec::new();
            if let CommandKind::Timer { name, due } = &h.command {
                let status =
                    if is_deadline(registry, row, name) { DeadlineStatus::Breached } else { DeadlineStatus::Fired };
                changes.push(proto::DeadlineChange {
                    name: name.clone(),
                    due: Some(instant(*due)),
                    status: status as i32,
                    provisional: false,
                });
            }
            let replanned = matches!(h.command, CommandKind::Replan { .. });
            for (name, due) in h.cancelled.iter().filter(|_| !replanned) {
                // Cancelled by a caller's action before it fell due: the deadline was met.
                let met = matches!(h.command, CommandKind::Event { .. }) && h.at <= *due;
                let status = if met && is_deadline(registry, row, name) {
                    DeadlineStatus::Met
                } else {
                    DeadlineStatus::Cancelled
                };
                changes.push(proto::DeadlineChange {
                    name: name.clone(),
                    due: Some(instant(*due)),
                    status: status as i32,
                    provisional: false,
                });
            }
            for (name, due) in &h.armed {
                let still = row.timers.get(name).filter(|t| t.due == *due);
                changes.push(proto::DeadlineChange {
                    name: name.clone(),
                    due: Some(instant(*due)),
                    status: DeadlineStatus::Armed as i32,
                    provisional: still.and_then(|t| t.plan.as_ref()).is_some_and(|p| p.provisional),
                });
            }
            let who = crate::auth::Attribution::decode(&h.actor);
            let principal = (!who.role.is_empty()).then(|| proto::Principal {
                subject: who.sub.clone(),
                role: who.role.clone(),
                region_code: who.region.clone(),
                department: who.department.clone(),
                office: who.office.clone(),
                on_behalf_of: who.on_behalf_of.clone(),
                via: who.via.clone(),
            });
            let request_id = h.request_id.clone().unwrap_or_else(|| who.request_id.clone());
            proto::TimelineEntry {
                at: Some(instant(h.at)),
                instance_id: row.id.clone(),
                seq: h.seq,
                actor: who.sub,
                event: crate::store::read::event_name(h),
                from_state: h.from.clone().unwrap_or_default(),
                to_state: h.to.clone(),
                deadlines: changes,
                request_id,
                messages: h.messages,
                note: note(h),
                principal,
                outbound: outbox.iter().filter(|m| m.seq == h.seq).map(outbound_message).collect(),
            }
        })
        .collect()
}

/// A stored message as the API shows it.
pub fn outbound_message(m: &crate::store::StoredMessage) -> proto::OutboundMessage {
    proto::OutboundMessage {
        key: m.key.clone(),
        channel: m.message.channel.clone(),
        recipient: m.message.recipient.clone().unwrap_or_default(),
        text: m.message.body.clone(),
        state: m.status.as_str().to_owned(),
        attempts: m.attempts,
        destination: m.destination.clone().unwrap_or_default(),
        last_error: m.last_error.clone().unwrap_or_default(),
        receipt: m.receipt.clone().unwrap_or_default(),
        delivered_at_ms: m.delivered_at.unwrap_or(0),
        r#type: m.message.kind.clone().unwrap_or_default(),
        schema_version: m.message.schema_version,
        data_json: crate::store::data_column(&m.message).unwrap_or_default(),
    }
}

/// Words for an entry that is not a plain event: a re-plan says what moved, from and to.
pub fn note(h: &HistoryEntry) -> String {
    let CommandKind::Replan { calendar } = &h.command else { return String::new() };
    let parts: Vec<String> = h
        .armed
        .iter()
        .map(|(name, new)| match h.cancelled.get(name) {
            Some(old) if old != new => format!(
                "deadline re-planned: {name} {} → {} (calendar {calendar})",
                clock::display(*old),
                clock::display(*new)
            ),
            _ => format!("deadline confirmed: {name} {} (calendar {calendar})", clock::display(*new)),
        })
        .collect();
    parts.join("; ")
}
