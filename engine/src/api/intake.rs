//! `IntakeService`: the integrated government service platform accepts cases, hands in
//! deferred materials, completes or revokes approvals.

use std::sync::Arc;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{actor, check, date, event, object, request_id, request_key, view, Shared};
use crate::domain::{self, fanout, CASE_WORKFLOW, TASK_WORKFLOW};
use crate::machine::{Command, CommandKind, Idempotency};
use crate::proto::intake_service_server::IntakeService;
use crate::proto::{
    AcceptCaseRequest, CaseReply, CompleteApprovalRequest, GetCaseRequest, RevokeApprovalRequest, Route, Scenario,
    SubmitMaterialsRequest,
};
use crate::writer::{Derive, GroupItem};

/// The service.
pub struct Intake {
    shared: Arc<Shared>,
}

impl Intake {
    /// Over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Intake { shared }
    }
}

const ACTOR: &str = "intake-platform";

fn required(command: Command) -> GroupItem {
    GroupItem { command, required: true }
}

/// Reads a case id field, checked.
pub(crate) fn case_id_field(field: &str, id: &str) -> Result<String, Status> {
    domain::parse_case_id(id).map_err(|e| invalid(field, e))?;
    Ok(id.to_owned())
}

impl Intake {
    async fn reply(&self, case_id: &str, duplicate: bool) -> Result<Response<CaseReply>, Status> {
        let reader = &self.shared.reader;
        let row = reader.instance(case_id).await.map_err(|e| status::read_error(&e))?;
        let Some(row) = row.filter(|r| r.workflow == CASE_WORKFLOW) else {
            return Err(Status::not_found(format!("case {case_id} does not exist")));
        };
        let tasks = tasks_of(reader.as_ref(), case_id).await?;
        Ok(Response::new(CaseReply { case: Some(view::case(self.shared.registry(), &row, &tasks)), duplicate }))
    }

    /// The answer to a group that changed the case: the case as committed, or the status of the
    /// command that failed.
    async fn answer(
        &self,
        case_id: &str,
        result: Result<Vec<Option<crate::writer::Applied>>, crate::writer::GroupError>,
    ) -> Result<Response<CaseReply>, Status> {
        match result {
            Ok(answers) => {
                let duplicate = answers.first().and_then(|a| a.as_ref()).is_some_and(|a| a.duplicate);
                self.reply(case_id, duplicate).await
            }
            Err(e) => Err(status::group_error(&e)),
        }
    }

    /// Validates an `AcceptCase` and builds the case's initial variables.
    fn accept_vars(&self, r: &AcceptCaseRequest) -> Result<(String, serde_json::Value), Status> {
        check("region_code", domain::check_region(&r.region_code))?;
        check("case_no", domain::check_case_no(&r.case_no))?;
        check("approval_department", domain::check_text(&r.approval_department, 128))?;
        check("approval_item_code", domain::check_text(&r.approval_item_code, 64))?;
        check("handling_item_code", domain::check_text(&r.handling_item_code, 64))?;
        let applicant = r.applicant.as_ref().ok_or_else(|| invalid("applicant", "is required"))?;
        check("applicant.name", domain::check_text(&applicant.name, 200))?;
        let calendar = self.shared.calendars().region(&r.region_code);
        let today = self.shared.today(calendar);
        let code = match &applicant.id {
            Some(crate::proto::applicant::Id::CreditCode(c)) => {
                check("applicant.credit_code", domain::check_uscc(c))?;
                c.clone()
            }
            Some(crate::proto::applicant::Id::CitizenId(c)) => {
                check("applicant.citizen_id", domain::check_citizen_id(c, today))?;
                c.to_ascii_uppercase()
            }
            None => {
                return Err(invalid(
                    "applicant.credit_code",
                    "a Unified Social Credit Code or a citizen ID number is required",
                ))
            }
        };
        check("applicant.mobile", domain::check_mobile(&applicant.mobile))?;
        let grade = self.shared.credit.parse(&r.credit_grade).map_err(|e| invalid("credit_grade", e))?;

        let route = match Route::try_from(r.route) {
            Ok(Route::Normal) => "normal",
            Ok(Route::Commitment) => "commitment",
            _ => return Err(invalid("route", "must be ROUTE_NORMAL or ROUTE_COMMITMENT")),
        };
        let scenario = match (route, Scenario::try_from(r.scenario)) {
            ("normal", Ok(Scenario::Unspecified)) => None,
            ("normal", _) => return Err(invalid("scenario", "applies only to the commitment route")),
            (_, Ok(Scenario::MaterialDeferral)) => Some("material_deferral"),
            (_, Ok(Scenario::MaterialVerification)) => Some("material_verification"),
            (_, Ok(Scenario::PostApprovalVerification)) => Some("post_approval_verification"),
            _ => return Err(invalid("scenario", "the commitment route needs a scenario: material deferral, material verification or post-approval verification")),
        };

        let deadline = if scenario == Some("material_deferral") {
            let deadline = match (r.commitment_deadline.is_empty(), r.commitment_period_working_days) {
                (false, 0) => {
                    let d = date("commitment_deadline", &r.commitment_deadline)?;
                    if d < today {
                        return Err(invalid("commitment_deadline", format!("{d} is in the past (today is {today})")));
                    }
                    calendar.is_working_day(d).map_err(|e| invalid("commitment_deadline", e))?;
                    d
                }
                (true, n) if n > 0 => {
                    if n > 365 {
                        return Err(invalid("commitment_period_working_days", format!("{n} is more than 365")));
                    }
                    calendar.add_working_days(today, n).map_err(|e| invalid("commitment_period_working_days", e))?
                }
                (false, _) => {
                    return Err(invalid("commitment_deadline", "give a deadline or a period in working days, not both"))
                }
                (true, _) => {
                    return Err(invalid(
                        "commitment_deadline",
                        "material deferral needs a deadline or a period in working days",
                    ))
                }
            };
            if r.deferred_materials.is_empty() {
                return Err(invalid("deferred_materials", "material deferral needs the list of deferred materials"));
            }
            Some(deadline)
        } else {
            if !r.commitment_deadline.is_empty() || r.commitment_period_working_days != 0 {
                return Err(invalid("commitment_deadline", "applies only to the material-deferral scenario"));
            }
            if !r.deferred_materials.is_empty() {
                return Err(invalid("deferred_materials", "applies only to the material-deferral scenario"));
            }
            None
        };
        if r.deferred_materials.len() > 50 {
            return Err(invalid("deferred_materials", format!("{} items; at most 50", r.deferred_materials.len())));
        }
        for (i, m) in r.deferred_materials.iter().enumerate() {
            check(&format!("deferred_materials[{i}]"), domain::check_text(m, 200))?;
        }
        if r.supervisors.is_empty() {
            return Err(invalid(
                "supervisors",
                "at least one supervising department is required (no case may fall through)",
            ));
        }
        if r.supervisors.len() > 20 {
            return Err(invalid("supervisors", format!("{} departments; at most 20", r.supervisors.len())));
        }
        let mut supervisors = Vec::new();
        for (i, s) in r.supervisors.iter().enumerate() {
            check(&format!("supervisors[{i}].department"), domain::check_text(&s.department, 128))?;
            check(&format!("supervisors[{i}].office"), domain::check_text(&s.office, 128))?;
            if !s.office_admin_mobile.is_empty() {
                check(&format!("supervisors[{i}].office_admin_mobile"), domain::check_mobile(&s.office_admin_mobile))?;
            }
            supervisors.push(fanout::Supervisor {
                department: s.department.clone(),
                office: s.office.clone(),
                office_admin_mobile: s.office_admin_mobile.clone(),
            });
        }
        if route == "commitment" && self.shared.credit.is_barred(grade) {
            return Err(Status::failed_precondition(format!(
                "credit_grade: an applicant graded {grade:?} may not take the commitment route (§7, §12); accept the case on the normal route"
            )));
        }
        let display: Vec<String> = r.supervisors.iter().map(|s| format!("{}/{}", s.department, s.office)).collect();
        let mut vars = json!({
            "region": r.region_code,
            "case_no": r.case_no,
            "approval_department": r.approval_department,
            "approval_item": r.approval_item_code,
            "handling_item": r.handling_item_code,
            "applicant_name": applicant.name,
            "applicant_code": code,
            "applicant_mobile": applicant.mobile,
            "route": route,
            "credit_grade": grade,
            "supervisors": display.join("; "),
            "supervisors_json": serde_json::to_string(&supervisors)
                .map_err(|e| Status::internal(format!("cannot record the supervisors: {e}")))?,
            "task_count": r.supervisors.len(),
        });
        if let Some(s) = scenario {
            vars["scenario"] = json!(s);
        }
        if let Some(d) = deadline {
            vars["commitment_deadline"] = json!(d.to_string());
            vars["deferred_materials"] = json!(r.deferred_materials.join(", "));
        }
        Ok((domain::case_id(&r.region_code, &r.case_no), vars))
    }
}

/// The supervision tasks of a case, read for an answer (never to decide anything).
pub(crate) async fn tasks_of(
    reader: &dyn crate::store::ReadStore,
    case_id: &str,
) -> Result<Vec<crate::store::InstanceRow>, Status> {
    let rows = reader.with_prefix(&format!("{case_id}/T")).await.map_err(|e| status::read_error(&e))?;
    Ok(rows.into_iter().filter(|r| r.workflow == TASK_WORKFLOW).collect())
}

/// A derived fan-out that first makes sure the instance is a case: a command sent under a case
/// id never fans out from anything else.
fn on_case(
    f: impl Fn(&crate::machine::Instance) -> Result<Vec<GroupItem>, crate::writer::WriteError> + Send + Sync + 'static,
) -> Derive {
    std::sync::Arc::new(move |case| {
        if case.workflow != CASE_WORKFLOW {
            return Err(crate::machine::Rejection::NotFound { instance: case.id.clone() }.into());
        }
        f(case)
    })
}

#[tonic::async_trait]
impl IntakeService for Intake {
    async fn accept_case(&self, request: Request<AcceptCaseRequest>) -> Result<Response<CaseReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        // Recorded as sent; the call is keyed on its case number instead (below).
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        let (case_id, vars) = self.accept_vars(&r)?;
        // The case number is the natural idempotency key: one case per number and region, for
        // every caller. The fingerprint is of the request as received, so a retry on a later
        // day (when "10 working days from today" would give another deadline) is the same.
        let idempotency = Idempotency::new("IntakeService.AcceptCase", &case_id, &prost::Message::encode_to_vec(&r));
        let start = Command {
            instance: case_id.clone(),
            kind: CommandKind::Start { workflow: CASE_WORKFLOW.into(), version: None, vars: object(vars) },
            actor: actor.clone(),
            request_id,
            idempotency: Some(idempotency),
        };
        let items = vec![required(start), required(event(&case_id, "route", json!({}), &actor, None))];
        self.answer(&case_id, self.shared.engine.handle().submit_group(items).await).await
    }

    async fn submit_materials(&self, request: Request<SubmitMaterialsRequest>) -> Result<Response<CaseReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "IntakeService.SubmitMaterials", &actor)?;
        let case_id = case_id_field("case_id", &request.get_ref().case_id)?;
        let command = event(&case_id, "submit_materials", json!({}), &actor, key);
        match self.shared.engine.submit(command).await {
            Ok(applied) => self.reply(&case_id, applied.duplicate).await,
            Err(e) => Err(status::write_error("case", &case_id, &e)),
        }
    }

    async fn complete_approval(
        &self,
        request: Request<CompleteApprovalRequest>,
    ) -> Result<Response<CaseReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "IntakeService.CompleteApproval", &actor)?;
        let r = request.into_inner();
        let case_id = case_id_field("case_id", &r.case_id)?;
        check("license_no", domain::check_text(&r.license_no, 64))?;
        check("approval_opinion", domain::check_text(&r.approval_opinion, 2000))?;
        if r.document_refs.len() > 50 {
            return Err(invalid("document_refs", format!("{} references; at most 50", r.document_refs.len())));
        }
        for (i, d) in r.document_refs.iter().enumerate() {
            check(&format!("document_refs[{i}]"), domain::check_text(d, 256))?;
        }
        let licence = event(
            &case_id,
            "complete_approval",
            json!({"license_no": r.license_no, "approval_opinion": r.approval_opinion, "documents": r.document_refs.join(", ")}),
            &actor,
            key,
        );
        // The tasks come from the licensed case as the writer holds it, in the same transaction.
        let task_actor = actor.clone();
        let derive = on_case(move |case| fanout::supervision_tasks(case, &task_actor));
        self.answer(&case_id, self.shared.engine.handle().submit_derived(vec![required(licence)], Some(derive)).await)
            .await
    }

    async fn revoke_approval(&self, request: Request<RevokeApprovalRequest>) -> Result<Response<CaseReply>, Status> {
        let actor = actor(&request, ACTOR)?;
        let key = request_key(&request, "IntakeService.RevokeApproval", &actor)?;
        let r = request.into_inner();
        let case_id = case_id_field("case_id", &r.case_id)?;
        check("reason", domain::check_text(&r.reason, 2000))?;
        check("basis", domain::check_text(&r.basis, 2000))?;
        let revoke = event(&case_id, "revoke_approval", json!({"reason": r.reason, "basis": r.basis}), &actor, key);
        // Every task of the case as the writer holds it is told, in the same transaction: a
        // licence queued just before this revocation cannot leave a task open.
        let task_actor = actor.clone();
        let derive = on_case(move |case| fanout::revocation_notices(case, &task_actor));
        self.answer(&case_id, self.shared.engine.handle().submit_derived(vec![required(revoke)], Some(derive)).await)
            .await
    }

    async fn get_case(&self, request: Request<GetCaseRequest>) -> Result<Response<CaseReply>, Status> {
        let case_id = case_id_field("case_id", &request.get_ref().case_id)?;
        self.reply(&case_id, false).await
    }
}
