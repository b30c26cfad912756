//! `EngineService`: the generic surface — start any loaded workflow, send it events. Answers
//! from the committed transition itself, with no read-back.
//!
//! The domain workflows (approval cases, supervision tasks) are not reachable here: their
//! rules (validation, credit bar, task fan-out) live in `IntakeService` and
//! `SupervisionService`, and a generic start or signal would skip them. Ids shaped like a case
//! or task id are refused too, so that no generic instance can pose as a case's task.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, keyed, Key, Shared};
use crate::auth::Right;
use crate::domain;
use crate::machine::{Command, CommandKind};
use crate::proto::engine_service_server::EngineService;
use crate::proto::{InstanceReply, SignalRequest, StartRequest};
use crate::writer::Applied;

/// The service.
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Engine { shared }
    }

    /// Submits a command and answers from the committed transition.
    async fn submit(&self, command: Command) -> Result<Response<InstanceReply>, Status> {
        let id = command.instance.clone();
        self.shared.engine.submit(command).await.map(reply).map_err(|e| status::write_error("instance", &id, &e))
    }
}

const MAX_JSON: usize = 64 * 1024;

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 {
        return Err(invalid(field, "must be 1 to 128 characters"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':')) {
        return Err(invalid(field, "may hold only letters, digits and - _ . / :"));
    }
    if id.starts_with("SC/") {
        return Err(invalid(
            field,
            format!("{id:?} is shaped like a spot-check plan or inspection id; those are reached through AdminService and SupervisionService"),
        ));
    }
    if domain::parse_case_id(id).is_ok() || domain::parse_task_id(id).is_ok() {
        return Err(invalid(
            field,
            format!("{id:?} is shaped like a case or task id; approval cases and supervision tasks are reached through IntakeService and SupervisionService"),
        ));
    }
    Ok(())
}

fn object(field: &str, text: &str) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    if text.is_empty() {
        return Ok(serde_json::Map::new());
    }
    if text.len() > MAX_JSON {
        return Err(invalid(field, format!("is {} bytes; at most {MAX_JSON}", text.len())));
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid(field, "must be a JSON object")),
        Err(e) => Err(invalid(field, format!("is not JSON: {e}"))),
    }
}

fn reply(a: Applied) -> Response<InstanceReply> {
    Response::new(InstanceReply {
        instance_id: a.instance.id,
        workflow: a.instance.workflow,
        version: a.instance.version,
        state: a.instance.state,
        seq: a.seq,
        duplicate: a.duplicate,
    })
}

#[tonic::async_trait]
impl EngineService for Engine {
    async fn start(&self, request: Request<StartRequest>) -> Result<Response<InstanceReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Engine)?;
        let actor = who.actor();
        let r = request.into_inner();
        check_id("instance_id", &r.instance_id)?;
        tracing::Span::current().record("instance", r.instance_id.as_str());
        if domain::DOMAIN_WORKFLOWS.contains(&r.workflow.as_str()) {
            return Err(invalid(
                "workflow",
                format!(
                    "{} is started only through its domain service: IntakeService.AcceptCase (cases), CompleteApproval (tasks), AdminService.CreateSpotCheckPlan (plans; their runs start the inspections)",
                    r.workflow
                ),
            ));
        }
        if self.shared.registry().latest(&r.workflow).is_none() {
            return Err(invalid("workflow", format!("no workflow named {:?} is loaded", r.workflow)));
        }
        let vars = object("vars_json", &r.vars_json)?;
        let key = Key::parse("request_id", &r.request_id, "EngineService.Start", who.caller(), &r)?;
        let command = Command {
            instance: r.instance_id.clone(),
            kind: CommandKind::Start { workflow: r.workflow, version: None, vars },
            actor,
            request_id: None,
            idempotency: None,
        };
        self.submit(keyed(command, key)).await
    }

    async fn signal(&self, request: Request<SignalRequest>) -> Result<Response<InstanceReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Engine)?;
        let actor = who.actor();
        let r = request.into_inner();
        check_id("instance_id", &r.instance_id)?;
        tracing::Span::current().record("instance", r.instance_id.as_str());
        crate::domain::check_text(&r.event, 64).map_err(|e| invalid("event", e))?;
        let fields = object("fields_json", &r.fields_json)?;
        let key = Key::parse("request_id", &r.request_id, "EngineService.Signal", who.caller(), &r)?;
        let command = Command {
            instance: r.instance_id.clone(),
            kind: CommandKind::Event { name: r.event, fields },
            actor,
            request_id: None,
            idempotency: None,
        };
        self.submit(keyed(command, key)).await
    }
}
