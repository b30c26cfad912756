//! `IntakeService`: the integrated government service platform accepts cases, hands in
//! deferred materials, completes or revokes approvals.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, keyed, request_id, request_key, view, Authorized, Shared};
use crate::auth::{Right, Seen};
use crate::domain::fanout::Supervisor;
use crate::domain::{self, case, CASE_WORKFLOW, TASK_WORKFLOW};
use crate::machine::{Command, Idempotency};
use crate::proto::intake_service_server::IntakeService;
use crate::proto::{
    AcceptCaseRequest, CaseReply, CompleteApprovalRequest, GetCaseRequest, RevokeApprovalRequest, Route, Scenario,
    SubmitMaterialsRequest,
};
use crate::store::InstanceRow;
use crate::writer::{Applied, Derive, GroupItem};

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

/// Reads a case id field, checked, and checks that its region is in the caller's scope.
pub(crate) fn scoped_case_id(shared: &Shared, who: &Authorized, field: &str, id: &str) -> Result<String, Status> {
    let (region, _) = domain::parse_case_id(id).map_err(|e| invalid(field, e))?;
    tracing::Span::current().record("instance", id);
    who.require_region(shared, region, "case", id)?;
    Ok(id.to_owned())
}

/// What to tell a caller who asks for a case that is not stored: where it went if it was
/// archived (NOT_FOUND either way).
pub(crate) async fn case_not_found(shared: &Shared, case_id: &str) -> Status {
    match shared.reader.archived(case_id).await {
        Ok(Some(a)) => status::told(Status::not_found(status::archived_text(&a))),
        Ok(None) => status::not_found("case", case_id),
        Err(e) => status::read_error(&e),
    }
}

/// Whether a case (and its tasks) is in the caller's scope: PERMISSION_DENIED if not.
pub(crate) fn require_case(
    shared: &Shared,
    who: &Authorized,
    case: &InstanceRow,
    tasks: &[InstanceRow],
) -> Result<(), Status> {
    who.require(shared, who.scope().sees(&Seen::of(case, tasks)), || format!("case {}", case.id))
}

impl Intake {
    /// The answer to an AcceptCase already applied under its case number: the case (a
    /// duplicate) for the same request, ALREADY_EXISTS for another; `None` if none was.
    async fn replayed(&self, r: &AcceptCaseRequest, received: &[u8]) -> Result<Option<Response<CaseReply>>, Status> {
        if domain::check_region(&r.region_code).is_err() || domain::check_case_no(&r.case_no).is_err() {
            return Ok(None);
        }
        let case_id = domain::case_id(&r.region_code, &r.case_no);
        let idempotency = Idempotency::new("IntakeService.AcceptCase", &case_id, received);
        let stored = self.shared.reader.idempotency(&idempotency.key).await.map_err(|e| status::read_error(&e))?;
        let Some(stored) = stored.filter(|s| s.instance == case_id) else { return Ok(None) };
        tracing::Span::current().record("instance", case_id.as_str());
        if stored.fingerprint != idempotency.fingerprint {
            let reused = crate::writer::WriteError::KeyReused { key: idempotency.key };
            return Err(status::write_error("case", &case_id, &reused));
        }
        self.reply(&case_id, true).await.map(Some)
    }

    async fn reply(&self, case_id: &str, duplicate: bool) -> Result<Response<CaseReply>, Status> {
        self.reply_to(None, case_id, duplicate).await
    }

    /// The case as committed; with `who`, only if it is in their scope.
    async fn reply_to(
        &self,
        who: Option<&Authorized>,
        case_id: &str,
        duplicate: bool,
    ) -> Result<Response<CaseReply>, Status> {
        let reader = &self.shared.reader;
        let row = reader.instance(case_id).await.map_err(|e| status::read_error(&e))?;
        let Some(row) = row.filter(|r| r.workflow == CASE_WORKFLOW) else {
            return Err(case_not_found(&self.shared, case_id).await);
        };
        let tasks = tasks_of(reader.as_ref(), case_id).await?;
        if let Some(who) = who {
            require_case(&self.shared, who, &row, &tasks)?;
        }
        Ok(Response::new(CaseReply { case: Some(view::case(self.shared.registry(), &row, &tasks)), duplicate }))
    }

    /// The answer to a group that changed the case: the case as committed, or the status of the
    /// command that failed. With `whole`, a first application is answered from the instances
    /// the group committed — they are the case and every task it has (a new case has none; a
    /// licence creates them all) — without reading them back; a duplicate is read back.
    async fn answer(
        &self,
        case_id: &str,
        result: Result<Vec<Option<Applied>>, crate::writer::GroupError>,
        whole: bool,
    ) -> Result<Response<CaseReply>, Status> {
        match result {
            Ok(answers) => {
                let duplicate = answers.first().and_then(|a| a.as_ref()).is_some_and(|a| a.duplicate);
                if whole && !duplicate {
                    if let Some(reply) = self.committed(case_id, &answers) {
                        return Ok(Response::new(reply));
                    }
                }
                self.reply(case_id, duplicate).await
            }
            Err(e) => Err(status::group_error(&e)),
        }
    }

    /// The case and its tasks as the group's answers hold them, in the order a read gives.
    /// `None` when a timer of theirs was already due: the writer fired it in the same batch,
    /// after the group's answers were taken, so only a read shows the result.
    fn committed(&self, case_id: &str, answers: &[Option<Applied>]) -> Option<CaseReply> {
        let applied: Vec<&Applied> = answers.iter().flatten().collect();
        let now = self.shared.context().clock.now();
        if applied.iter().any(|a| a.instance.timers.values().any(|t| t.due <= now)) {
            return None;
        }
        let case = applied.iter().rev().find(|a| a.instance.id == case_id && a.instance.workflow == CASE_WORKFLOW)?;
        let mut tasks: Vec<InstanceRow> = applied
            .iter()
            .filter(|a| a.instance.workflow == TASK_WORKFLOW)
            .map(|a| InstanceRow::of(&a.instance, 0))
            .collect();
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        tasks.dedup_by(|a, b| a.id == b.id);
        let view = view::case(self.shared.registry(), &InstanceRow::of(&case.instance, 0), &tasks);
        Some(CaseReply { case: Some(view), duplicate: false })
    }

    /// Answers a derived group: the case as committed.
    async fn derived(
        &self,
        case_id: &str,
        command: Command,
        derive: Derive,
        whole: bool,
    ) -> Result<Response<CaseReply>, Status> {
        let items = vec![GroupItem { command, required: true }];
        self.answer(case_id, self.shared.engine.handle().submit_derived(items, Some(derive)).await, whole).await
    }
}

/// An `AcceptCaseRequest` as the domain's [`case::NewCase`].
/// The domain's view of an AcceptCase request (no checks yet: [`case::accept`] makes them).
pub fn new_case(r: &AcceptCaseRequest) -> case::NewCase {
    use crate::proto::applicant::Id;
    let applicant = r.applicant.as_ref().map(|a| case::Applicant {
        name: a.name.clone(),
        id: a.id.as_ref().map(|id| match id {
            Id::CreditCode(c) => case::ApplicantId::CreditCode(c.clone()),
            Id::CitizenId(c) => case::ApplicantId::CitizenId(c.clone()),
        }),
        mobile: a.mobile.clone(),
    });
    let route = match Route::try_from(r.route) {
        Ok(Route::Normal) => Some(case::Route::Normal),
        Ok(Route::Commitment) => Some(case::Route::Commitment),
        _ => None,
    };
    let scenario = match Scenario::try_from(r.scenario) {
        Ok(Scenario::MaterialDeferral) => Some(case::Scenario::MaterialDeferral),
        Ok(Scenario::MaterialVerification) => Some(case::Scenario::MaterialVerification),
        Ok(Scenario::PostApprovalVerification) => Some(case::Scenario::PostApprovalVerification),
        _ => None,
    };
    case::NewCase {
        region: r.region_code.clone(),
        case_no: r.case_no.clone(),
        approval_department: r.approval_department.clone(),
        approval_item: r.approval_item_code.clone(),
        handling_item: r.handling_item_code.clone(),
        applicant,
        credit_grade: r.credit_grade.clone(),
        route,
        scenario,
        unknown_scenario: scenario.is_none() && r.scenario != Scenario::Unspecified as i32,
        commitment_deadline: r.commitment_deadline.clone(),
        commitment_period_working_days: r.commitment_period_working_days,
        deferred_materials: r.deferred_materials.clone(),
        supervisors: r
            .supervisors
            .iter()
            .map(|s| Supervisor {
                department: s.department.clone(),
                office: s.office.clone(),
                office_admin_mobile: s.office_admin_mobile.clone(),
            })
            .collect(),
    }
}

/// The supervision tasks of a case, read for an answer (never to decide anything).
pub(crate) async fn tasks_of(
    reader: &dyn crate::store::ReadStore,
    case_id: &str,
) -> Result<Vec<crate::store::InstanceRow>, Status> {
    crate::auth::visibility::tasks_of(reader, case_id).await.map_err(|e| status::read_error(&e))
}

#[tonic::async_trait]
impl IntakeService for Intake {
    async fn accept_case(&self, request: Request<AcceptCaseRequest>) -> Result<Response<CaseReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Intake)?;
        let actor = who.actor();
        // Recorded as sent; the call is keyed on its case number instead (below).
        let request_id = request_id(&request)?;
        let r = request.into_inner();
        // A malformed (or missing) code is INVALID_ARGUMENT from the domain's check below, not a
        // denial.
        if crate::auth::region_prefix(&r.region_code).is_some() {
            who.require_region(&self.shared, &r.region_code, "region", &r.region_code)?;
        }
        let fingerprint = prost::Message::encode_to_vec(&r);
        let calendars = self.shared.calendars();
        let calendar = calendars.region(&r.region_code);
        let catalogs = self.shared.context().catalogs.current();
        let may_override = who.caller.principal.authorize(Right::OverrideLinkage).is_ok();
        let policy = case::Policy {
            credit: &self.shared.credit,
            catalogs: &catalogs,
            may_override,
            calendar,
            today: self.shared.today(calendar),
        };
        let (case_id, start) = match case::accept(&new_case(&r), &policy, &actor) {
            Ok(accepted) => accepted,
            // A refusal may rest on today or on the catalogs in force: a replay of a request
            // applied before keeps its first answer whatever they say now. (An accepted replay
            // meets its key in the writer; only refusals need the key read here.)
            Err(refusal) => {
                return match self.replayed(&r, &fingerprint).await? {
                    Some(reply) => Ok(reply),
                    None => Err(status::refusal(&refusal)),
                }
            }
        };
        tracing::Span::current().record("instance", case_id.as_str());
        // An archived case's number stays taken: the writer refuses the start, in the batch
        // that would commit it (`WriteError::Archived`).
        // The case number is the natural idempotency key: one case per number and region, for
        // every caller. The fingerprint is of the request as received, so a retry on a later
        // day (when "10 working days from today" would give another deadline) is the same.
        let idempotency = Idempotency::new("IntakeService.AcceptCase", &case_id, &fingerprint);
        let start = Command { request_id, idempotency: Some(idempotency), ..start };
        self.answer(&case_id, self.shared.engine.handle().submit_group(case::acceptance(start)).await, true).await
    }

    async fn submit_materials(&self, request: Request<SubmitMaterialsRequest>) -> Result<Response<CaseReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Intake)?;
        let actor = who.actor();
        let key = request_key(&request, "IntakeService.SubmitMaterials", who.caller())?;
        let case_id = scoped_case_id(&self.shared, &who, "case_id", &request.get_ref().case_id)?;
        let command = keyed(domain::event(&case_id, "submit_materials", serde_json::Map::new(), &actor), key);
        match self.shared.engine.submit(command).await {
            Ok(applied) => self.reply(&case_id, applied.duplicate).await,
            Err(e) => Err(status::write_error("case", &case_id, &e)),
        }
    }

    async fn complete_approval(
        &self,
        request: Request<CompleteApprovalRequest>,
    ) -> Result<Response<CaseReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Intake)?;
        let actor = who.actor();
        let key = request_key(&request, "IntakeService.CompleteApproval", who.caller())?;
        let r = request.into_inner();
        let case_id = scoped_case_id(&self.shared, &who, "case_id", &r.case_id)?;
        let licence = case::Licence {
            license_no: r.license_no,
            approval_opinion: r.approval_opinion,
            document_refs: r.document_refs,
        };
        // The tasks come from the licensed case as the writer holds it, in the same transaction.
        let (command, derive) = case::complete_approval(&case_id, &licence, &actor).map_err(|e| status::refusal(&e))?;
        self.derived(&case_id, keyed(command, key), derive, true).await
    }

    async fn revoke_approval(&self, request: Request<RevokeApprovalRequest>) -> Result<Response<CaseReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Intake)?;
        let actor = who.actor();
        let key = request_key(&request, "IntakeService.RevokeApproval", who.caller())?;
        let r = request.into_inner();
        let case_id = scoped_case_id(&self.shared, &who, "case_id", &r.case_id)?;
        let (command, derive) =
            case::revoke_approval(&case_id, &r.reason, &r.basis, &actor).map_err(|e| status::refusal(&e))?;
        // Tasks that had already ended are not in the group: read the case back.
        self.derived(&case_id, keyed(command, key), derive, false).await
    }

    async fn get_case(&self, request: Request<GetCaseRequest>) -> Result<Response<CaseReply>, Status> {
        let who = authorize(&self.shared, &request, Right::ReadCases)?;
        let case_id = scoped_case_id(&self.shared, &who, "case_id", &request.get_ref().case_id)?;
        self.reply_to(Some(&who), &case_id, false).await
    }
}
