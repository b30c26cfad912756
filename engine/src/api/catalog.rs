//! The AdminService RPCs of the catalogs, the enterprise profile and spot checks (issue 13),
//! and SupervisionService.ReportSpotCheckResult: proto ↔ [`crate::catalog`] and
//! [`crate::domain::spotcheck`]. `admin.rs` and `supervision.rs` delegate here.

use std::collections::BTreeMap;

use serde_json::json;
use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, view, Shared};
use crate::auth::{Right, Seen};
use crate::catalog::submit::{CatalogImport, ImportError};
use crate::catalog::{Kind, Version};
use crate::domain::{self, spotcheck, CASE_WORKFLOW};
use crate::machine::CommandKind;
use crate::proto;
use crate::store::InstanceRow;

/// Largest catalog file accepted (the request as a whole is capped by the server too).
const MAX_FILE: usize = 16 * 1024 * 1024;
/// Most files in one import.
const MAX_FILES: usize = 20;

fn kind(field: &str, text: &str) -> Result<Kind, Status> {
    Kind::parse(text).filter(|k| k.name() == text).ok_or_else(|| {
        invalid(
            field,
            format!(
                "{text:?} is not a catalog kind: {}",
                crate::catalog::KINDS.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn version_view(v: &Version) -> proto::CatalogVersion {
    proto::CatalogVersion {
        kind: v.kind.name().into(),
        version: v.version,
        imported_by: v.actor.clone(),
        imported_at: Some(view::instant(v.at)),
        comment: v.comment.clone(),
        rows: u32::try_from(v.rows.len()).unwrap_or(u32::MAX),
        added: v.changes.added.clone(),
        removed: v.changes.removed.clone(),
        changed: v
            .changes
            .changed
            .iter()
            .map(|(key, fields)| proto::CatalogRowChange {
                key: key.clone(),
                fields: fields
                    .iter()
                    .map(|(f, (old, new))| proto::CatalogFieldChange {
                        field: f.clone(),
                        old_value: old.clone(),
                        new_value: new.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// ImportCatalogs.
pub(super) async fn import_catalogs(
    shared: &Shared,
    request: Request<proto::ImportCatalogsRequest>,
) -> Result<Response<proto::ImportCatalogsReply>, Status> {
    let who = authorize(shared, &request, Right::ManageCatalogs)?;
    let r = request.into_inner();
    if r.files.is_empty() {
        return Err(invalid("files", "give at least one catalog file"));
    }
    if r.files.len() > MAX_FILES {
        return Err(invalid("files", format!("{} files; at most {MAX_FILES} in one import", r.files.len())));
    }
    domain::check("comment", if r.comment.is_empty() { Ok(()) } else { domain::check_text(&r.comment, 500) })
        .map_err(|e| status::refusal(&e))?;
    let mut files = Vec::new();
    for (i, f) in r.files.into_iter().enumerate() {
        let field = format!("files[{i}]");
        if f.name.is_empty() || f.name.len() > 255 || domain::check_text(&f.name, 255).is_err() {
            return Err(invalid(&format!("{field}.name"), "a file name of 1 to 255 visible characters"));
        }
        if f.content.len() > MAX_FILE {
            return Err(invalid(&format!("{field}.content"), format!("{} bytes; at most {MAX_FILE}", f.content.len())));
        }
        let content = String::from_utf8(f.content)
            .map_err(|e| invalid(&format!("{field}.content"), format!("is not UTF-8 text: {e}")))?;
        let kind = if f.kind.is_empty() { None } else { Some(kind(&format!("{field}.kind"), &f.kind)?) };
        files.push(crate::catalog::ImportFile { name: f.name, kind, content });
    }
    // Whoever replaces catalogs must hold every region they hold now (the import checks the
    // stored ones and its own again, in case another node imported meanwhile).
    if let Some(prefix) = who.scope().id_prefix() {
        if let Some(code) = shared.context().catalogs.current().region_outside(&prefix) {
            return Err(who.outside(shared, || format!("the catalogs of region {code}")));
        }
    }
    let import = CatalogImport {
        files,
        actor: who.caller.principal.subject.clone(),
        comment: r.comment,
        dry_run: r.dry_run,
        region_scope: who.scope().id_prefix(),
    };
    let context = shared.context();
    let now = context.clock.now();
    match crate::catalog::submit::import(
        shared.reader.as_ref(),
        &shared.engine.handle(),
        &context.catalogs,
        now,
        import,
    )
    .await
    {
        Ok(imported) => Ok(Response::new(proto::ImportCatalogsReply {
            versions: imported.versions.iter().map(version_view).collect(),
            unchanged: imported.unchanged.iter().map(|k| k.name().to_owned()).collect(),
            dry_run: r.dry_run,
        })),
        Err(e @ ImportError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
        Err(ImportError::OutsideScope(code)) => Err(who.outside(shared, || format!("the catalogs of region {code}"))),
        Err(ImportError::Write(e)) => Err(status::write_error("catalog", "import", &e)),
    }
}

fn csv_of(kind: Kind, rows: &[crate::catalog::Row]) -> Result<Vec<u8>, Status> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let internal = |e: csv::Error| Status::internal(format!("cannot write CSV: {e}"));
    w.write_record(kind.fields().iter().map(|f| f.name)).map_err(internal)?;
    for row in rows {
        w.write_record(kind.fields().iter().map(|f| row.get(f.name).map_or("", String::as_str))).map_err(internal)?;
    }
    w.into_inner().map_err(|e| Status::internal(format!("cannot write CSV: {e}")))
}

/// ExportCatalog.
pub(super) async fn export_catalog(
    shared: &Shared,
    request: Request<proto::ExportCatalogRequest>,
) -> Result<Response<proto::ExportCatalogReply>, Status> {
    authorize(shared, &request, Right::ReadCatalogs)?;
    let r = request.into_inner();
    let kind = kind("kind", &r.kind)?;
    let format = match r.format.as_str() {
        "" | "csv" => "csv",
        "json" => "json",
        other => return Err(invalid("format", format!("{other:?}: csv or json"))),
    };
    let version = if r.version == 0 {
        let catalogs = shared.context().catalogs.current();
        catalogs.current(kind).map(|v| (**v).clone())
    } else {
        let all = shared.reader.catalog_history(kind).await.map_err(|e| status::read_error(&e))?;
        Some(
            all.into_iter()
                .find(|v| v.version == r.version)
                .ok_or_else(|| status::not_found("catalog version", &format!("{kind} v{}", r.version)))?,
        )
    };
    let (number, rows) = version.map_or((0, Vec::new()), |v| (v.version, v.rows));
    let content = if format == "csv" {
        csv_of(kind, &rows)?
    } else {
        let mut text = serde_json::to_string_pretty(&rows).map_err(|e| Status::internal(e.to_string()))?;
        text.push('\n');
        text.into_bytes()
    };
    Ok(Response::new(proto::ExportCatalogReply {
        kind: kind.name().into(),
        version: number,
        format: format.into(),
        content,
    }))
}

/// CatalogHistory.
pub(super) async fn catalog_history(
    shared: &Shared,
    request: Request<proto::CatalogHistoryRequest>,
) -> Result<Response<proto::CatalogHistoryReply>, Status> {
    authorize(shared, &request, Right::ReadCatalogs)?;
    let kind = kind("kind", &request.get_ref().kind)?;
    let versions = shared.reader.catalog_history(kind).await.map_err(|e| status::read_error(&e))?;
    Ok(Response::new(proto::CatalogHistoryReply { versions: versions.iter().map(version_view).collect() }))
}

/// ListLinkageProblems.
pub(super) async fn linkage_problems(
    shared: &Shared,
    request: Request<proto::ListLinkageProblemsRequest>,
) -> Result<Response<proto::ListLinkageProblemsReply>, Status> {
    let who = authorize(shared, &request, Right::ReadCatalogs)?;
    let region = request.into_inner().region_code;
    let prefix = if region.is_empty() {
        who.scope().id_prefix()
    } else {
        domain::check_region(&region).map_err(|e| invalid("region_code", e))?;
        who.require_region(shared, &region, "region", &region)?;
        crate::auth::region_prefix(&region)
    };
    let filter = crate::store::Filter {
        workflow: CASE_WORKFLOW.into(),
        any_true: vec!["unlinked".into()],
        region_prefix: prefix,
        ..crate::store::Filter::default()
    };
    let rows = shared.reader.list(&filter).await.map_err(|e| status::read_error(&e))?;
    // A case that ended (revoked before its licence) needs no supervisor any more.
    let mut problems: Vec<proto::LinkageProblem> = rows
        .iter()
        .filter(|r| !matches!(r.state.as_str(), "revoked" | "closed"))
        .map(|r| proto::LinkageProblem {
            kind: "unlinked_case".into(),
            case_id: r.id.clone(),
            handling_item: view::var(r, "handling_item"),
            approval_item: view::var(r, "approval_item"),
            state: r.state.clone(),
            since: Some(view::instant(r.created_at)),
            detail: format!(
                "accepted without a supervising department; escalated to the region administrator ({})",
                view::var(r, "region_admin_mobile")
            ),
        })
        .collect();
    let catalogs = shared.context().catalogs.current();
    for h in catalogs.rows(Kind::HandlingItems) {
        let code = h.get("code").cloned().unwrap_or_default();
        if catalogs.links(&code).is_empty() {
            problems.push(proto::LinkageProblem {
                kind: "unlinked_item".into(),
                handling_item: code.clone(),
                approval_item: h.get("approval_item").cloned().unwrap_or_default(),
                detail: format!(
                    "no supervising department is linked to {code} (linkage v{}): its cases will be flagged and escalated",
                    catalogs.version(Kind::Linkage)
                ),
                ..proto::LinkageProblem::default()
            });
        }
    }
    Ok(Response::new(proto::ListLinkageProblemsReply { problems }))
}

/// RelinkCase: the case's supervisors again from the linkage catalog in force.
pub(super) async fn relink_case(
    shared: &Shared,
    request: Request<proto::RelinkCaseRequest>,
) -> Result<Response<proto::CaseReply>, Status> {
    let who = authorize(shared, &request, Right::ManageCatalogs)?;
    let case_id = super::intake::scoped_case_id(shared, &who, "case_id", &request.get_ref().case_id)?;
    let row = shared.reader.instance(&case_id).await.map_err(|e| status::read_error(&e))?;
    let Some(row) = row.filter(|r| r.workflow == CASE_WORKFLOW) else {
        return Err(super::intake::case_not_found(shared, &case_id).await);
    };
    let catalogs = shared.context().catalogs.current();
    let handling = view::var(&row, "handling_item");
    let supervisors = domain::case::linked_supervisors(&catalogs, &handling);
    if supervisors.is_empty() {
        return Err(Status::failed_precondition(format!(
            "case {case_id}: handling item {handling} is still not in the linkage catalog (linkage v{}); import a linkage first",
            catalogs.version(Kind::Linkage)
        )));
    }
    let mut fields = json!({});
    domain::fanout::record_supervisors(&mut fields, &supervisors).map_err(|e| status::refusal(&e))?;
    fields["catalog_versions"] = json!(catalogs.versions_text(&domain::case::CASE_CATALOGS));
    let command = domain::event(&case_id, "relink", domain::object(fields), &who.actor());
    let applied = shared.engine.submit(command).await.map_err(|e| status::write_error("case", &case_id, &e))?;
    let tasks = super::intake::tasks_of(shared.reader.as_ref(), &case_id).await?;
    let row = InstanceRow::of(&applied.instance, 0);
    Ok(Response::new(proto::CaseReply {
        case: Some(view::case(shared.registry(), &row, &tasks)),
        duplicate: applied.duplicate,
    }))
}

fn instance_view(shared: &Shared, row: &InstanceRow) -> proto::ProfileInstance {
    proto::ProfileInstance {
        instance_id: row.id.clone(),
        workflow: row.workflow.clone(),
        state: row.state.clone(),
        created_at: Some(view::instant(row.created_at)),
        variables: view::variables(shared.registry(), row),
    }
}

/// What a history entry of an instance means for the enterprise's profile, if anything.
fn event_kind(workflow: &str, command: &CommandKind, deadline: bool) -> Option<&'static str> {
    match command {
        CommandKind::Start { .. } if workflow == CASE_WORKFLOW => Some("accepted"),
        CommandKind::Start { .. } if workflow == spotcheck::TASK_WORKFLOW => Some("spot_check_drawn"),
        CommandKind::Timer { .. } if deadline => Some("breach"),
        CommandKind::Event { name, .. } => match (workflow, name.as_str()) {
            (CASE_WORKFLOW, "complete_approval") => Some("licensed"),
            (CASE_WORKFLOW, "submit_materials") => Some("materials"),
            (CASE_WORKFLOW, "revoke_approval") => Some("revocation"),
            (CASE_WORKFLOW, "revocation_decided") => Some("revocation_decided"),
            (domain::TASK_WORKFLOW, "acknowledge") => Some("viewed"),
            (domain::TASK_WORKFLOW, "report_inspection") => Some("inspection"),
            (domain::TASK_WORKFLOW, "report_result") => Some("result"),
            (domain::TASK_WORKFLOW, "report_rectification") => Some("rectification"),
            (spotcheck::TASK_WORKFLOW, "report_result") => Some("spot_check_result"),
            _ => None,
        },
        _ => None,
    }
}

fn fields_text(command: &CommandKind) -> String {
    match command {
        CommandKind::Event { fields, .. } => fields
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect::<Vec<_>>()
            .join(", "),
        CommandKind::Timer { name, .. } => format!("{name} passed"),
        _ => String::new(),
    }
}

/// GetEnterpriseProfile.
pub(super) async fn enterprise_profile(
    shared: &Shared,
    request: Request<proto::GetEnterpriseProfileRequest>,
) -> Result<Response<proto::EnterpriseProfile>, Status> {
    let who = authorize(shared, &request, Right::ReadEnterprise)?;
    let code = request.into_inner().credit_code.trim().to_ascii_uppercase();
    if domain::check_uscc(&code).is_err() && domain::check_citizen_id(&code, chrono::NaiveDate::MAX).is_err() {
        domain::check_uscc(&code).map_err(|e| invalid("credit_code", e))?;
    }
    let subjects = shared.reader.subjects_of(&code).await.map_err(|e| status::read_error(&e))?;
    let registry = shared.registry();
    let mut profile = proto::EnterpriseProfile { credit_code: code.clone(), ..proto::EnterpriseProfile::default() };
    let mut events: Vec<proto::ProfileEvent> = Vec::new();
    let mut latest_case: Option<(i64, String, String)> = None;
    for s in &subjects {
        // Only what the caller sees, by the rule every read path uses.
        let loaded = crate::auth::visibility::load(shared.reader.as_ref(), &s.row.instance)
            .await
            .map_err(|e| status::read_error(&e))?;
        let Some((row, _)) = loaded.filter(|(_, seen)| who.scope().sees(seen)) else { continue };
        if row.workflow == CASE_WORKFLOW {
            if profile.name.is_empty() || latest_case.as_ref().is_some_and(|(at, _, _)| *at <= row.created_at) {
                profile.name = view::var(&row, "applicant_name");
            }
            if latest_case.as_ref().is_none_or(|(at, _, _)| *at <= row.created_at) {
                latest_case = Some((row.created_at, row.id.clone(), view::var(&row, "credit_grade")));
            }
            profile.cases.push(instance_view(shared, &row));
        } else {
            profile.tasks.push(instance_view(shared, &row));
        }
        for d in view::deadlines(registry, &row).into_iter().filter(|d| d.is_deadline) {
            profile.open_deadlines.push(proto::OpenDeadline { instance_id: row.id.clone(), deadline: Some(d) });
        }
        let history = shared.reader.history(&row.id).await.map_err(|e| status::read_error(&e))?;
        let def = registry.get(&row.workflow, row.version);
        for h in &history {
            let deadline = match &h.command {
                CommandKind::Timer { name, .. } => def.and_then(|d| d.timer(name)).is_some_and(|t| t.deadline),
                _ => false,
            };
            if let Some(kind) = event_kind(&row.workflow, &h.command, deadline) {
                events.push(proto::ProfileEvent {
                    at: Some(view::instant(h.at)),
                    instance_id: row.id.clone(),
                    kind: kind.into(),
                    detail: fields_text(&h.command),
                });
            }
        }
        let outbox = shared.reader.outbox_of(&row.id).await.map_err(|e| status::read_error(&e))?;
        profile
            .credit_records
            .extend(outbox.iter().filter(|m| m.message.channel == "credit").map(view::outbound_message));
    }
    if profile.cases.is_empty() && profile.tasks.is_empty() {
        return Err(status::not_found("enterprise", &code));
    }
    if let Some((_, case, grade)) = latest_case {
        profile.credit_grade = grade;
        profile.credit_grade_case = case;
    }
    if profile.name.is_empty() {
        profile.name =
            profile.tasks.first().and_then(|t| t.variables.get("applicant_name").cloned()).unwrap_or_default();
    }
    events.sort_by_key(|e| e.at.as_ref().map_or(0, |a| a.unix_millis));
    profile.events = events;
    profile
        .open_deadlines
        .sort_by_key(|d| d.deadline.as_ref().and_then(|d| d.due.as_ref()).map_or(0, |i| i.unix_millis));
    Ok(Response::new(profile))
}

fn plan_view(row: &InstanceRow) -> proto::SpotCheckPlan {
    let int = |n: &str| {
        row.vars.get(n).and_then(serde_json::Value::as_u64).map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
    };
    proto::SpotCheckPlan {
        plan_id: row.id.clone(),
        state: row.state.clone(),
        name: view::var(row, "plan_name"),
        region_code: view::var(row, "region"),
        department: view::var(row, "department"),
        office: view::var(row, "office"),
        supervision_item: view::var(row, "supervision_item"),
        schedule: view::var(row, "schedule"),
        working_days_only: view::flag(row, "working_days_only"),
        ratios: view::var(row, "ratios"),
        inspectors_per_target: int("inspectors_per_target"),
        runs: int("runs"),
        drawn: int("drawn"),
        next_run: row.timers.get("run").map(|t| view::instant(t.due)),
    }
}

async fn plan_row(shared: &Shared, who: &super::Authorized, id: &str) -> Result<InstanceRow, Status> {
    let parts: Vec<&str> = id.splitn(3, '/').collect();
    let [sc, region, code] = parts.as_slice() else {
        return Err(invalid("plan_id", format!("{id:?} is not a plan id such as \"SC/320700/FOOD-2027\"")));
    };
    if *sc != "SC" || domain::check_region(region).is_err() || domain::check_case_no(code).is_err() {
        return Err(invalid("plan_id", format!("{id:?} is not a plan id such as \"SC/320700/FOOD-2027\"")));
    }
    who.require_region(shared, region, "spot-check plan", id)?;
    let row = shared
        .reader
        .instance(id)
        .await
        .map_err(|e| status::read_error(&e))?
        .filter(|r| r.workflow == spotcheck::PLAN_WORKFLOW)
        .ok_or_else(|| status::not_found("spot-check plan", id))?;
    who.require(shared, who.scope().sees(&Seen::of(&row, &[])), || format!("spot-check plan {id}"))?;
    Ok(row)
}

/// CreateSpotCheckPlan.
pub(super) async fn create_plan(
    shared: &Shared,
    request: Request<proto::CreateSpotCheckPlanRequest>,
) -> Result<Response<proto::SpotCheckPlan>, Status> {
    let who = authorize(shared, &request, Right::ManageSpotChecks)?;
    let r = request.into_inner();
    if crate::auth::region_prefix(&r.region_code).is_some() {
        who.require_region(shared, &r.region_code, "region", &r.region_code)?;
    }
    let new = spotcheck::NewPlan {
        code: r.code,
        region: r.region_code,
        name: r.name,
        office: r.office,
        supervision_item: r.supervision_item,
        schedule: r.schedule,
        working_days_only: r.working_days_only,
        ratios: r.ratios,
        inspectors_per_target: r.inspectors_per_target,
    };
    let catalogs = shared.context().catalogs.current();
    let command = spotcheck::plan(&new, &catalogs, &shared.credit, &who.actor()).map_err(|e| status::refusal(&e))?;
    // A department administrator plans for their own department only.
    let office_dept = catalogs.field(Kind::Offices, &new.office, "department").unwrap_or_default();
    who.require(shared, who.scope().has_department(office_dept), || format!("office {}", new.office))?;
    let id = command.instance.clone();
    let applied = shared.engine.submit(command).await.map_err(|e| status::write_error("spot-check plan", &id, &e))?;
    Ok(Response::new(plan_view(&InstanceRow::of(&applied.instance, 0))))
}

/// ListSpotCheckPlans.
pub(super) async fn list_plans(
    shared: &Shared,
    request: Request<proto::ListSpotCheckPlansRequest>,
) -> Result<Response<proto::ListSpotCheckPlansReply>, Status> {
    let who = authorize(shared, &request, Right::ReadSpotChecks)?;
    let region = request.into_inner().region_code;
    if !region.is_empty() {
        domain::check_region(&region).map_err(|e| invalid("region_code", e))?;
    }
    // Plans are few, and their ids (`SC/<region>/…`) do not start with their region: the rule
    // is applied to each row rather than as the SQL prefix that suits cases and tasks.
    let filter = crate::store::Filter { workflow: spotcheck::PLAN_WORKFLOW.into(), ..crate::store::Filter::default() };
    let rows = shared.reader.list(&filter).await.map_err(|e| status::read_error(&e))?;
    // None when no region was asked: every plan the scope covers.
    let asked = crate::auth::region_prefix(&region);
    let plans = rows
        .iter()
        .filter(|r| {
            let code = view::var(r, "region");
            who.scope().sees(&Seen::of(r, &[])) && asked.as_ref().is_none_or(|p| code.starts_with(p.as_str()))
        })
        .map(plan_view)
        .collect();
    Ok(Response::new(proto::ListSpotCheckPlansReply { plans }))
}

/// EndSpotCheckPlan.
pub(super) async fn end_plan(
    shared: &Shared,
    request: Request<proto::EndSpotCheckPlanRequest>,
) -> Result<Response<proto::SpotCheckPlan>, Status> {
    let who = authorize(shared, &request, Right::ManageSpotChecks)?;
    let r = request.into_inner();
    let row = plan_row(shared, &who, &r.plan_id).await?;
    domain::check("reason", domain::check_text(&r.reason, 500)).map_err(|e| status::refusal(&e))?;
    let command = domain::event(&row.id, "end", domain::object(json!({"reason": r.reason})), &who.actor());
    let applied =
        shared.engine.submit(command).await.map_err(|e| status::write_error("spot-check plan", &row.id, &e))?;
    Ok(Response::new(plan_view(&InstanceRow::of(&applied.instance, 0))))
}

/// ListSpotCheckRuns.
pub(super) async fn list_runs(
    shared: &Shared,
    request: Request<proto::ListSpotCheckRunsRequest>,
) -> Result<Response<proto::ListSpotCheckRunsReply>, Status> {
    let who = authorize(shared, &request, Right::ReadSpotChecks)?;
    let include_records = request.get_ref().include_records;
    let row = plan_row(shared, &who, &request.get_ref().plan_id).await?;
    let history = shared.reader.history(&row.id).await.map_err(|e| status::read_error(&e))?;
    let tasks: BTreeMap<String, InstanceRow> = shared
        .reader
        .with_prefix(&format!("{}/R", row.id))
        .await
        .map_err(|e| status::read_error(&e))?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut runs = Vec::new();
    for run in spotcheck::runs(&history) {
        let mut by_grade: BTreeMap<String, u32> = BTreeMap::new();
        for m in &run.record.population {
            *by_grade.entry(m.grade.clone()).or_default() += 1;
        }
        let targets = run
            .record
            .selected
            .iter()
            .map(|t| {
                let task = tasks.get(&t.task);
                proto::SpotCheckTarget {
                    credit_code: t.code.clone(),
                    credit_grade: t.grade.clone(),
                    applicant_name: task.map(|r| view::var(r, "applicant_name")).unwrap_or_default(),
                    inspectors: t.inspectors.clone(),
                    task_id: t.task.clone(),
                    state: task.map(|r| r.state.clone()).unwrap_or_default(),
                    result: task.map(|r| view::var(r, "result")).unwrap_or_default(),
                    findings: task.map(|r| view::var(r, "findings")).unwrap_or_default(),
                }
            })
            .collect();
        runs.push(proto::SpotCheckRun {
            run: u32::try_from(run.run).unwrap_or(0),
            due_at: run.due_at.map(view::instant),
            drawn_at: Some(view::instant(run.drawn_at)),
            seed: run.record.seed.clone(),
            algorithm: run.record.algorithm.clone(),
            ratios: run.record.ratios.clone().into_iter().collect(),
            population_by_grade: by_grade.into_iter().collect(),
            targets,
            verified: spotcheck::verify(&run.record).unwrap_or(false),
            record_json: if include_records {
                serde_json::to_string(&run.record).unwrap_or_default()
            } else {
                String::new()
            },
        });
    }
    Ok(Response::new(proto::ListSpotCheckRunsReply { plan: Some(plan_view(&row)), runs }))
}

/// SupervisionService.ReportSpotCheckResult.
pub(super) async fn report_spot_check_result(
    shared: &Shared,
    request: Request<proto::ReportSpotCheckResultRequest>,
) -> Result<Response<proto::SpotCheckTarget>, Status> {
    let who = authorize(shared, &request, Right::Supervise)?;
    let key = super::request_key(&request, "SupervisionService.ReportSpotCheckResult", who.caller())?;
    let r = request.into_inner();
    // No id that long was ever made: it is not looked up.
    let found = if r.task_id.len() > 200 {
        None
    } else {
        shared.reader.instance(&r.task_id).await.map_err(|e| status::read_error(&e))?
    };
    let row = found
        .filter(|t| t.workflow == spotcheck::TASK_WORKFLOW)
        .ok_or_else(|| status::not_found("spot-check task", &r.task_id))?;
    who.require(shared, who.scope().sees(&Seen::of(&row, &[])), || format!("spot-check task {}", row.id))?;
    if !matches!(r.outcome.as_str(), "compliant" | "non_compliant") {
        return Err(invalid("outcome", format!("{:?}: compliant or non_compliant", r.outcome)));
    }
    let mut fields = json!({"outcome": r.outcome});
    if !r.findings.is_empty() {
        domain::check("findings", domain::check_text(&r.findings, 2000)).map_err(|e| status::refusal(&e))?;
        fields["findings"] = json!(r.findings);
    }
    let command = super::keyed(domain::event(&row.id, "report_result", domain::object(fields), &who.actor()), key);
    let applied =
        shared.engine.submit(command).await.map_err(|e| status::write_error("spot-check task", &row.id, &e))?;
    let t = InstanceRow::of(&applied.instance, 0);
    Ok(Response::new(proto::SpotCheckTarget {
        credit_code: view::var(&t, "applicant_code"),
        credit_grade: view::var(&t, "credit_grade"),
        applicant_name: view::var(&t, "applicant_name"),
        inspectors: view::var(&t, "inspectors").split(", ").filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        task_id: t.id.clone(),
        state: t.state.clone(),
        result: view::var(&t, "result"),
        findings: view::var(&t, "findings"),
    }))
}
