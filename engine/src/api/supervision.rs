//! `SupervisionService`: supervision platforms list their tasks and report what the offices did.
//! A report that ends a task, or decides a revocation, tells the approval case in the same
//! transaction.

use std::sync::Arc;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{actor, check, date, event, page, request_key, view, Shared};
use crate::domain;
use crate::machine::Command;
use crate::proto::supervision_service_server::SupervisionService;
use crate::proto::{
    AcknowledgeTaskRequest, ListTasksReply, ListTasksRequest, Outcome, ReportInspectionRequest,
    ReportRectificationRequest, ReportResultRequest, TaskReply,
};
use crate::store::Filter;
use crate::writer::GroupItem;

/// The service.
pub struct Supervision {
    shared: Arc<Shared>,
}

impl Supervision {
    /// Over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Supervision { shared }
    }
}

const ACTOR: &str = "supervision-platform";

/// The task id, its case id and the case's region.
fn task_id_field(id: &str) -> Result<(String, String, String), Status> {
    let (case, _) = domain::parse_task_id(id).map_err(|e| invalid("task_id", e))?;
    let (region, _) = domain::parse_case_id(case).map_err(|e| invalid("task_id", e))?;
    Ok((id.to_owned(), case.to_owned(), region.to_owned()))
}

impl Supervision {
    async fn reply(&self, task_id: &str, duplicate: bool) -> Result<Response<TaskReply>, Status> {
        let row = self.shared.reader.instance(task_id).await.map_err(|e| status::read_error(&e))?;
        match row.filter(|r| r.workflow == domain::TASK_WORKFLOW) {
            Some(row) => {
                Ok(Response::new(TaskReply { task: Some(view::task(self.shared.registry(), &row)), duplicate }))
            }
            None => Err(Status::not_found(format!("task {task_id} does not exist"))),
        }
    }

    /// Applies the task's event and, when given, the case's, in one transaction.
    async fn apply(
        &self,
        task_id: &str,
        task_event: Command,
        case_event: Option<Command>,
    ) -> Result<Response<TaskReply>, Status> {
        let mut items = vec![GroupItem { command: task_event, required: true }];
        // The case may have ended already (revoked): then it has nothing more to learn.
        items.extend(case_event.map(|command| GroupItem { command, required: false }));
        match self.shared.engine.handle().submit_group(items).await {
            Ok(answers) => {
                let duplicate = answers.first().and_then(|a| a.as_ref()).is_some_and(|a| a.duplicate);
                self.reply(task_id, duplicate).await
            }
            Err(e) => Err(status::group_error(&e)),
        }
    }

    /// The supervising department of an existing task (for the revocation decision it sends).
    async fn department_of_task(&self, task_id: &str) -> Result<String, Status> {
        let row = self.shared.reader.instance(task_id).await.map_err(|e| status::read_error(&e))?;
        match row.filter(|r| r.workflow == domain::TASK_WORKFLOW) {
            Some(row) => Ok(view::var(&row, "department")),
            None => Err(Status::not_found(format!("task {task_id} does not exist"))),
        }
    }
}

#[tonic::async_trait]
impl SupervisionService for Supervision {
    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksReply>, Status> {
        let r = request.into_inner();
        let (size, after) = page(r.page.as_ref())?;
        let mut filter = Filter { workflow: "supervision_task".into(), after, limit: Some(size), ..Filter::default() };
        if !r.region_code.is_empty() {
            check("region_code", domain::check_region(&r.region_code))?;
            filter.vars.push(("region".into(), r.region_code.clone()));
        }
        for (field, var, value) in [("department", "department", &r.department), ("office", "office", &r.office)] {
            if !value.is_empty() {
                check(field, domain::check_text(value, 128))?;
                filter.vars.push((var.into(), value.clone()));
            }
        }
        if !r.state.is_empty() {
            let def = self
                .shared
                .registry()
                .latest("supervision_task")
                .ok_or_else(|| Status::internal("no supervision_task workflow"))?;
            if def.state(&r.state).is_none() {
                let states: Vec<&str> = def.states.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid("state", format!("unknown state {:?}; one of {}", r.state, states.join(", "))));
            }
            filter.state = Some(r.state.clone());
        }
        if r.overdue_only {
            filter.any_true = domain::TASK_BREACHES.iter().map(|s| (*s).to_owned()).collect();
        }
        let rows = self.shared.reader.list(&filter).await.map_err(|e| status::read_error(&e))?;
        let full = rows.len() as u32 == size;
        let next_page_token = super::next_token(rows.last().map(|r| r.id.as_str()), full);
        let tasks = rows.iter().map(|row| view::task(self.shared.registry(), row)).collect();
        Ok(Response::new(ListTasksReply { tasks, next_page_token }))
    }

    async fn acknowledge_task(&self, request: Request<AcknowledgeTaskRequest>) -> Result<Response<TaskReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "SupervisionService.AcknowledgeTask", &actor)?;
        let (task_id, _, _) = task_id_field(&request.get_ref().task_id)?;
        self.apply(&task_id, event(&task_id, "acknowledge", json!({}), &actor, key), None).await
    }

    async fn report_inspection(
        &self,
        request: Request<ReportInspectionRequest>,
    ) -> Result<Response<TaskReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "SupervisionService.ReportInspection", &actor)?;
        let r = request.into_inner();
        let (task_id, _, region) = task_id_field(&r.task_id)?;
        let finished = date("finished_on", &r.finished_on)?;
        let calendar = self.shared.calendars().region(&region);
        let today = self.shared.today(calendar);
        if finished > today {
            return Err(invalid("finished_on", format!("{finished} is in the future (today is {today})")));
        }
        // The result deadline is 5 working days on: its year must be in the calendar.
        calendar.add_working_days(finished, 5).map_err(|e| invalid("finished_on", e))?;
        let command = event(&task_id, "report_inspection", json!({"finished_on": finished.to_string()}), &actor, key);
        self.apply(&task_id, command, None).await
    }

    async fn report_result(&self, request: Request<ReportResultRequest>) -> Result<Response<TaskReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "SupervisionService.ReportResult", &actor)?;
        let r = request.into_inner();
        let (task_id, case_id, region) = task_id_field(&r.task_id)?;
        if !r.notes.is_empty() {
            check("notes", domain::check_text(&r.notes, 2000))?;
        }
        let mut fields = json!({});
        if !r.notes.is_empty() {
            fields["notes"] = json!(r.notes);
        }
        let outcome = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Compliant) => "compliant",
            Ok(Outcome::NonCompliant) => "non_compliant",
            Ok(Outcome::Revocation) => "revocation",
            _ => {
                return Err(invalid(
                    "outcome",
                    "must be OUTCOME_COMPLIANT, OUTCOME_NON_COMPLIANT or OUTCOME_REVOCATION",
                ))
            }
        };
        fields["outcome"] = json!(outcome);
        if outcome == "non_compliant" {
            if r.rectification_deadline.is_empty() {
                return Err(invalid("rectification_deadline", "is required for OUTCOME_NON_COMPLIANT"));
            }
            let d = date("rectification_deadline", &r.rectification_deadline)?;
            let calendar = self.shared.calendars().region(&region);
            let today = self.shared.today(calendar);
            if d < today {
                return Err(invalid("rectification_deadline", format!("{d} is in the past (today is {today})")));
            }
            calendar.is_working_day(d).map_err(|e| invalid("rectification_deadline", e))?;
            fields["rectification_deadline"] = json!(d.to_string());
        } else if !r.rectification_deadline.is_empty() {
            return Err(invalid("rectification_deadline", "applies only to OUTCOME_NON_COMPLIANT"));
        }
        let case_event = match outcome {
            "compliant" => {
                Some(event(&case_id, "task_closed", json!({"task": task_id, "outcome": outcome}), &actor, None))
            }
            "revocation" => Some(event(
                &case_id,
                "revocation_decided",
                json!({"task": task_id, "department": self.department_of_task(&task_id).await?, "reason": if r.notes.is_empty() { "supervision found the licence must be revoked" } else { r.notes.as_str() }}),
                &actor,
                None,
            )),
            _ => None,
        };
        self.apply(&task_id, event(&task_id, "report_result", fields, &actor, key), case_event).await
    }

    async fn report_rectification(
        &self,
        request: Request<ReportRectificationRequest>,
    ) -> Result<Response<TaskReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "SupervisionService.ReportRectification", &actor)?;
        let r = request.into_inner();
        let (task_id, case_id, _) = task_id_field(&r.task_id)?;
        let mut fields = json!({"rectified": r.rectified});
        if !r.notes.is_empty() {
            check("notes", domain::check_text(&r.notes, 2000))?;
            fields["notes"] = json!(r.notes);
        }
        let case_event = if r.rectified {
            event(&case_id, "task_closed", json!({"task": task_id, "outcome": "rectified"}), &actor, None)
        } else {
            event(
                &case_id,
                "revocation_decided",
                json!({"task": task_id, "department": self.department_of_task(&task_id).await?, "reason": "the applicant did not comply after rectification"}),
                &actor,
                None,
            )
        };
        self.apply(&task_id, event(&task_id, "report_rectification", fields, &actor, key), Some(case_event)).await
    }
}
