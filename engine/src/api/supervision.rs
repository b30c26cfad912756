//! `SupervisionService`: supervision platforms list their tasks and report what the offices did.
//! A report that ends a task, or decides a revocation, tells the approval case in the same
//! transaction.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, check, keyed, page, request_key, view, Authorized, Shared};
use crate::auth::{Right, Seen};
use crate::domain::{self, task};
use crate::machine::Command;
use crate::proto::supervision_service_server::SupervisionService;
use crate::proto::{
    AcknowledgeTaskRequest, ListTasksReply, ListTasksRequest, Outcome, ReportInspectionRequest,
    ReportRectificationRequest, ReportResultRequest, TaskReply,
};
use crate::store::Filter;
use crate::writer::{Derive, GroupItem};

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

/// The task id and its case's region.
fn task_id_field(id: &str) -> Result<(String, String), Status> {
    let (case, _) = domain::parse_task_id(id).map_err(|e| invalid("task_id", e))?;
    let (region, _) = domain::parse_case_id(case).map_err(|e| invalid("task_id", e))?;
    tracing::Span::current().record("instance", id);
    Ok((id.to_owned(), region.to_owned()))
}

impl Supervision {
    /// Checks the task id, and that the task is the caller's: its region, department and
    /// office in scope (NOT_FOUND if there is no such task).
    async fn scoped_task(&self, who: &Authorized, id: &str) -> Result<(String, String), Status> {
        let (task_id, region) = task_id_field(id)?;
        who.require_region(&self.shared, &region, "task", &task_id)?;
        if !who.scope().is_everywhere() {
            let row = self.shared.reader.instance(&task_id).await.map_err(|e| status::read_error(&e))?;
            let row = row.filter(|r| r.workflow == domain::TASK_WORKFLOW);
            let Some(row) = row else { return Err(status::not_found("task", &task_id)) };
            who.require(&self.shared, who.scope().sees(&Seen::of(&row, &[])), || format!("task {task_id}"))?;
        }
        Ok((task_id, region))
    }

    async fn reply(&self, task_id: &str, duplicate: bool) -> Result<Response<TaskReply>, Status> {
        let row = self.shared.reader.instance(task_id).await.map_err(|e| status::read_error(&e))?;
        match row.filter(|r| r.workflow == domain::TASK_WORKFLOW) {
            Some(row) => {
                Ok(Response::new(TaskReply { task: Some(view::task(self.shared.registry(), &row)), duplicate }))
            }
            None => Err(status::not_found("task", task_id)),
        }
    }

    /// Applies the task's event and, when given, what it tells the case, in one transaction.
    async fn apply(
        &self,
        task_id: &str,
        command: Command,
        tell_case: Option<Derive>,
    ) -> Result<Response<TaskReply>, Status> {
        let items = vec![GroupItem { command, required: true }];
        match self.shared.engine.handle().submit_derived(items, tell_case).await {
            Ok(answers) => {
                let duplicate = answers.first().and_then(|a| a.as_ref()).is_some_and(|a| a.duplicate);
                self.reply(task_id, duplicate).await
            }
            Err(e) => Err(status::group_error(&e)),
        }
    }
}

#[tonic::async_trait]
impl SupervisionService for Supervision {
    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksReply>, Status> {
        let who = authorize(&self.shared, &request, Right::ReadTasks)?;
        let r = request.into_inner();
        let (size, after) = page(r.page.as_ref())?;
        let mut filter =
            Filter { workflow: domain::TASK_WORKFLOW.into(), after, limit: Some(size), ..Filter::default() };
        // Filtered to the caller's scope, never refused: a request outside it lists nothing.
        who.scope().limit_tasks(&mut filter);
        if !r.region_code.is_empty() {
            check("region_code", domain::check_region(&r.region_code))?;
            filter.in_region(&r.region_code);
        }
        // Asked by code or by name, found by either.
        let catalogs = self.shared.context().catalogs.current();
        let mut departments = None;
        if !r.department.is_empty() {
            check("department", domain::check_text(&r.department, 128))?;
            let names = catalogs.department_names(&r.department, |region| who.scope().has_region(region));
            filter.vars_in.push(("department".into(), names.clone()));
            departments = Some(names);
        }
        if !r.office.is_empty() {
            check("office", domain::check_text(&r.office, 128))?;
            filter.vars_in.push(("office".into(), catalogs.office_names(&r.office, departments.as_deref())));
        }
        if !r.state.is_empty() {
            let def = self
                .shared
                .registry()
                .latest(domain::TASK_WORKFLOW)
                .ok_or_else(|| status::missing_workflow(domain::TASK_WORKFLOW))?;
            if def.state(&r.state).is_none() {
                let states: Vec<&str> = def.states.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid("state", format!("unknown state {:?}; one of {}", r.state, states.join(", "))));
            }
            filter.state = Some(r.state.clone());
        }
        if r.overdue_only {
            filter.any_true = domain::TASK_BREACHES.iter().map(|s| (*s).to_owned()).collect();
        }
        if !r.missed.is_empty() {
            let flag = domain::task_breach(&r.missed).ok_or_else(|| {
                invalid("missed", format!("{:?} is not a task deadline: view, result or rectification", r.missed))
            })?;
            // Narrower than `overdue_only` (any of the three), so it replaces it.
            filter.any_true = vec![flag.to_owned()];
        }
        let rows = self.shared.reader.list(&filter).await.map_err(|e| status::read_error(&e))?;
        let full = rows.len() as u32 == size;
        let next_page_token = super::next_token(rows.last().map(|r| r.id.as_str()), full);
        let tasks = rows.iter().map(|row| view::task(self.shared.registry(), row)).collect();
        Ok(Response::new(ListTasksReply { tasks, next_page_token }))
    }

    async fn acknowledge_task(&self, request: Request<AcknowledgeTaskRequest>) -> Result<Response<TaskReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Supervise)?;
        let actor = who.actor();
        let key = request_key(&request, "SupervisionService.AcknowledgeTask", who.caller())?;
        let (task_id, _) = self.scoped_task(&who, &request.get_ref().task_id).await?;
        self.apply(&task_id, keyed(task::acknowledge(&task_id, &actor), key), None).await
    }

    async fn report_inspection(
        &self,
        request: Request<ReportInspectionRequest>,
    ) -> Result<Response<TaskReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Supervise)?;
        let actor = who.actor();
        let key = request_key(&request, "SupervisionService.ReportInspection", who.caller())?;
        let r = request.into_inner();
        let (task_id, region) = self.scoped_task(&who, &r.task_id).await?;
        let calendars = self.shared.calendars();
        let calendar = calendars.region(&region);
        let today = self.shared.today(calendar);
        let command = task::report_inspection(&task_id, &r.finished_on, calendar, today, &actor)
            .map_err(|e| status::refusal(&e))?;
        self.apply(&task_id, keyed(command, key), None).await
    }

    async fn report_result(&self, request: Request<ReportResultRequest>) -> Result<Response<TaskReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Supervise)?;
        let actor = who.actor();
        let key = request_key(&request, "SupervisionService.ReportResult", who.caller())?;
        let r = request.into_inner();
        let (task_id, region) = self.scoped_task(&who, &r.task_id).await?;
        let outcome = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Compliant) => Some(task::Outcome::Compliant),
            Ok(Outcome::NonCompliant) => Some(task::Outcome::NonCompliant),
            Ok(Outcome::Revocation) => Some(task::Outcome::Revocation),
            _ => None,
        };
        let report = task::ResultReport { outcome, notes: r.notes, rectification_deadline: r.rectification_deadline };
        let calendars = self.shared.calendars();
        let calendar = calendars.region(&region);
        let today = self.shared.today(calendar);
        let (command, tell_case) =
            task::report_result(&task_id, &report, calendar, today, &actor).map_err(|e| status::refusal(&e))?;
        self.apply(&task_id, keyed(command, key), tell_case).await
    }

    async fn report_rectification(
        &self,
        request: Request<ReportRectificationRequest>,
    ) -> Result<Response<TaskReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Supervise)?;
        let actor = who.actor();
        let key = request_key(&request, "SupervisionService.ReportRectification", who.caller())?;
        let r = request.into_inner();
        let (task_id, _) = self.scoped_task(&who, &r.task_id).await?;
        let (command, tell_case) =
            task::report_rectification(&task_id, r.rectified, &r.notes, &actor).map_err(|e| status::refusal(&e))?;
        self.apply(&task_id, keyed(command, key), Some(tell_case)).await
    }

    async fn report_spot_check_result(
        &self,
        request: Request<crate::proto::ReportSpotCheckResultRequest>,
    ) -> Result<Response<crate::proto::SpotCheckTarget>, Status> {
        super::catalog::report_spot_check_result(&self.shared, request).await
    }
}
