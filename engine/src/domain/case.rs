//! Approval cases (§5–§8, §12): what accepting, completing and revoking a case mean, apart from
//! any transport.
//!
//! [`accept`] checks a [`NewCase`] against the rules — identifiers, the credit bar, the
//! commitment route's scenario and deadline on the working-day calendar, the supervising
//! departments — and gives the command that starts the case. [`complete_approval`] and
//! [`revoke_approval`] give the command and the fan-out ([`super::fanout`]) that the writer
//! derives in the same transaction. The gRPC handlers only translate to and from these.

use chrono::{Datelike, NaiveDate};
use serde_json::json;

use super::credit::CreditGrades;
use super::fanout::{self, Supervisor};
use super::{Refusal, CASE_WORKFLOW};
use crate::calendar::Calendar;
use crate::catalog::{Catalogs, Kind};
use crate::machine::{Command, Instance};
use crate::writer::{Derive, GroupItem, WriteError};

/// How an applicant is identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplicantId {
    /// A Unified Social Credit Code (an organisation).
    CreditCode(String),
    /// A resident identity card number (a person).
    CitizenId(String),
}

/// The applicant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicant {
    /// Name.
    pub name: String,
    /// Identifier, if given.
    pub id: Option<ApplicantId>,
    /// Mobile number for SMS.
    pub mobile: String,
}

/// The three commitment scenarios (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Materials handed in later, by a deadline.
    MaterialDeferral,
    /// Materials verified after the licence.
    MaterialVerification,
    /// Conditions verified after the licence.
    PostApprovalVerification,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::MaterialDeferral => "material_deferral",
            Scenario::MaterialVerification => "material_verification",
            Scenario::PostApprovalVerification => "post_approval_verification",
        }
    }
}

/// The route a case takes. `None` in a field means the caller sent a value that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Ordinary approval.
    Normal,
    /// Approval on the applicant's commitment (告知承诺).
    Commitment,
}

/// A case as the integrated platform hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCase {
    /// Administrative division code (GB/T 2260).
    pub region: String,
    /// The platform's case number.
    pub case_no: String,
    /// The approval department.
    pub approval_department: String,
    /// The approval item code.
    pub approval_item: String,
    /// The handling item code.
    pub handling_item: String,
    /// The applicant, if given.
    pub applicant: Option<Applicant>,
    /// The applicant's credit grade as sent.
    pub credit_grade: String,
    /// The route; `None` when what was sent is not a route.
    pub route: Option<Route>,
    /// The scenario; `None` when none (or an unknown one) was sent.
    pub scenario: Option<Scenario>,
    /// Whether the caller sent a scenario value we do not know (as opposed to none).
    pub unknown_scenario: bool,
    /// A commitment deadline as sent (`YYYY-MM-DD`), or empty.
    pub commitment_deadline: String,
    /// Or a commitment period in working days from today, or 0.
    pub commitment_period_working_days: u32,
    /// The materials deferred.
    pub deferred_materials: Vec<String>,
    /// The supervising departments, in order: task `T1` is the first.
    pub supervisors: Vec<Supervisor>,
}

/// What a case is checked against.
pub struct Policy<'a> {
    /// The configured credit grades.
    pub credit: &'a CreditGrades,
    /// The organisation and catalogs in force.
    pub catalogs: &'a Catalogs,
    /// Whether the caller holds the right to name supervisors other than the linkage
    /// catalog's (`override_linkage`).
    pub may_override: bool,
    /// The region's working-day calendar.
    pub calendar: &'a Calendar,
    /// Today in the region.
    pub today: NaiveDate,
}

/// Most deferred materials and supervising departments a case may list.
const MAX_MATERIALS: usize = 50;
const MAX_SUPERVISORS: usize = 20;
/// Longest commitment period, in working days.
const MAX_PERIOD: u32 = 365;

/// The commitment deadline of a material-deferral case: a given working day not in the past,
/// or a period of working days from today. The flag says whether it was counted on a
/// provisional calendar.
fn commitment_deadline(case: &NewCase, policy: &Policy<'_>) -> Result<(NaiveDate, bool), Refusal> {
    let (calendar, today) = (policy.calendar, policy.today);
    match (case.commitment_deadline.is_empty(), case.commitment_period_working_days) {
        (false, 0) => {
            let d = super::date(&case.commitment_deadline).map_err(|e| Refusal::invalid("commitment_deadline", e))?;
            if d < today {
                return Err(Refusal::invalid("commitment_deadline", format!("{d} is in the past (today is {today})")));
            }
            calendar.is_working_day(d).map_err(|e| Refusal::invalid("commitment_deadline", e))?;
            Ok((d, calendar.is_provisional(d.year())))
        }
        (true, n) if n > 0 => {
            if n > MAX_PERIOD {
                return Err(Refusal::invalid(
                    "commitment_period_working_days",
                    format!("{n} is more than {MAX_PERIOD}"),
                ));
            }
            let d = calendar
                .add_working_days(today, n)
                .map_err(|e| Refusal::invalid("commitment_period_working_days", e))?;
            Ok((d, calendar.provisional_between(today, d)))
        }
        (false, _) => {
            Err(Refusal::invalid("commitment_deadline", "give a deadline or a period in working days, not both"))
        }
        (true, _) => Err(Refusal::invalid(
            "commitment_deadline",
            "material deferral needs a deadline or a period in working days",
        )),
    }
}

/// Checks a new case and gives its id and the command that starts it. Every field is checked
/// before anything is decided; the first problem is the answer, naming its field.
pub fn accept(case: &NewCase, policy: &Policy<'_>, actor: &str) -> Result<(String, Command), Refusal> {
    super::check("region_code", super::check_region(&case.region))?;
    super::check("case_no", super::check_case_no(&case.case_no))?;
    if !(policy.catalogs.in_force() && case.approval_department.is_empty()) {
        super::check("approval_department", super::check_text(&case.approval_department, 128))?;
    }
    super::check("approval_item_code", super::check_text(&case.approval_item, 64))?;
    super::check("handling_item_code", super::check_text(&case.handling_item, 64))?;
    let applicant = case.applicant.as_ref().ok_or_else(|| Refusal::invalid("applicant", "is required"))?;
    super::check("applicant.name", super::check_text(&applicant.name, 200))?;
    let code = match &applicant.id {
        Some(ApplicantId::CreditCode(c)) => {
            super::check("applicant.credit_code", super::check_uscc(c))?;
            c.clone()
        }
        Some(ApplicantId::CitizenId(c)) => {
            super::check("applicant.citizen_id", super::check_citizen_id(c, policy.today))?;
            c.to_ascii_uppercase()
        }
        None => {
            return Err(Refusal::invalid(
                "applicant.credit_code",
                "a Unified Social Credit Code or a citizen ID number is required",
            ))
        }
    };
    let applicant_mobile = super::mobile(&applicant.mobile).map_err(|e| Refusal::invalid("applicant.mobile", e))?;
    let grade = policy.credit.parse(&case.credit_grade).map_err(|e| Refusal::invalid("credit_grade", e))?;

    let route = case.route.ok_or_else(|| Refusal::invalid("route", "must be ROUTE_NORMAL or ROUTE_COMMITMENT"))?;
    let scenario = match (route, case.scenario, case.unknown_scenario) {
        (Route::Normal, None, false) => None,
        (Route::Normal, _, _) => return Err(Refusal::invalid("scenario", "applies only to the commitment route")),
        (Route::Commitment, Some(s), _) => Some(s),
        (Route::Commitment, None, _) => return Err(Refusal::invalid("scenario", "the commitment route needs a scenario: material deferral, material verification or post-approval verification")),
    };

    let routed =
        if policy.catalogs.in_force() { Some(route_by_catalogs(case, policy, route, scenario, actor)?) } else { None };
    let defaulted;
    let case = match routed.as_ref().and_then(|r| r.default_period) {
        Some(days) if case.commitment_deadline.is_empty() && case.commitment_period_working_days == 0 => {
            defaulted = NewCase { commitment_period_working_days: days, ..case.clone() };
            &defaulted
        }
        _ => case,
    };
    let deadline = if scenario == Some(Scenario::MaterialDeferral) {
        let deadline = commitment_deadline(case, policy)?;
        if case.deferred_materials.is_empty() {
            return Err(Refusal::invalid(
                "deferred_materials",
                "material deferral needs the list of deferred materials",
            ));
        }
        Some(deadline)
    } else {
        if !case.commitment_deadline.is_empty() || case.commitment_period_working_days != 0 {
            return Err(Refusal::invalid("commitment_deadline", "applies only to the material-deferral scenario"));
        }
        if !case.deferred_materials.is_empty() {
            return Err(Refusal::invalid("deferred_materials", "applies only to the material-deferral scenario"));
        }
        None
    };
    if case.deferred_materials.len() > MAX_MATERIALS {
        return Err(Refusal::invalid(
            "deferred_materials",
            format!("{} items; at most {MAX_MATERIALS}", case.deferred_materials.len()),
        ));
    }
    for (i, m) in case.deferred_materials.iter().enumerate() {
        super::check(&format!("deferred_materials[{i}]"), super::check_text(m, 200))?;
    }
    if case.supervisors.is_empty() && routed.is_none() {
        return Err(Refusal::invalid(
            "supervisors",
            "at least one supervising department is required (no case may fall through)",
        ));
    }
    if case.supervisors.len() > MAX_SUPERVISORS {
        return Err(Refusal::invalid(
            "supervisors",
            format!("{} departments; at most {MAX_SUPERVISORS}", case.supervisors.len()),
        ));
    }
    for (i, s) in case.supervisors.iter().enumerate() {
        super::check(&format!("supervisors[{i}].department"), super::check_text(&s.department, 128))?;
        super::check(&format!("supervisors[{i}].office"), super::check_text(&s.office, 128))?;
        if !s.office_admin_mobile.is_empty() {
            super::check(
                &format!("supervisors[{i}].office_admin_mobile"),
                super::check_mobile(&s.office_admin_mobile),
            )?;
        }
    }
    require_mobiles(routed.as_ref().map_or(&case.supervisors, |r| &r.supervisors), routed.is_some())?;
    if route == Route::Commitment && policy.credit.is_barred(grade) {
        return Err(Refusal::Precondition(format!(
            "credit_grade: an applicant graded {grade:?} may not take the commitment route (§7, §12); accept the case on the normal route"
        )));
    }
    let approval_department =
        routed.as_ref().map_or(case.approval_department.as_str(), |r| r.approval_department.as_str());
    let mut vars = json!({
        "region": case.region,
        "case_no": case.case_no,
        "approval_department": approval_department,
        "approval_item": case.approval_item,
        "handling_item": case.handling_item,
        "applicant_name": applicant.name,
        "applicant_code": code,
        "applicant_mobile": applicant_mobile,
        "route": if route == Route::Normal { super::ROUTE_NORMAL } else { super::ROUTE_COMMITMENT },
        "credit_grade": grade,
    });
    match &routed {
        None => fanout::record_supervisors(&mut vars, &case.supervisors)?,
        Some(r) => {
            fanout::record_supervisors(&mut vars, &r.supervisors)?;
            vars["catalog_versions"] = json!(r.versions);
            if r.supervisors.is_empty() {
                vars["unlinked"] = json!(true);
            }
            if let Some(o) = &r.override_note {
                vars["linkage_override"] = json!(o);
            }
            if let Some(m) = &r.region_admin_mobile {
                vars["region_admin_mobile"] = json!(m);
            }
        }
    }
    if let Some(s) = scenario {
        vars["scenario"] = json!(s.name());
    }
    if let Some((d, provisional)) = deadline {
        vars["commitment_deadline"] = json!(d.to_string());
        if provisional {
            vars[super::COMMITMENT_PROVISIONAL] = json!(true);
        }
        vars["deferred_materials"] = json!(case.deferred_materials.join(", "));
    }
    let id = super::case_id(&case.region, &case.case_no);
    let serde_json::Value::Object(vars) = vars else {
        return Err(Refusal::Internal("case variables are not an object".into()));
    };
    let start = super::start(&id, CASE_WORKFLOW, vars, actor);
    Ok((id, start))
}

/// What the catalogs decide about a case.
struct Routed {
    /// The approving department of the item.
    approval_department: String,
    /// The supervisors: the linkage catalog's, or the request's under an override; empty
    /// for an unlinked item.
    supervisors: Vec<Supervisor>,
    /// The commitment catalog's default period, for a deferral that names none.
    default_period: Option<u32>,
    /// Who overrode the linkage, and what it said.
    override_note: Option<String>,
    /// The region administrator's mobile, for escalations.
    region_admin_mobile: Option<String>,
    /// `kind=version,…` of the catalogs read.
    versions: String,
}

/// Every supervisor must have an office administrator's mobile: the new-task SMS goes there,
/// and a task nobody is told of is a task that falls through (§9). A number the request does
/// not give may come from the organisation catalog (`offices.admin_mobile`); with neither, the
/// case is refused here rather than its SMS dying at send.
fn require_mobiles(supervisors: &[Supervisor], catalogued: bool) -> Result<(), Refusal> {
    for (i, s) in supervisors.iter().enumerate() {
        if s.office_admin_mobile.trim().is_empty() {
            let whence = if catalogued {
                format!("and the organisation catalog (offices) has none for office {}", s.office)
            } else {
                "and no organisation catalog is in force to supply one".to_owned()
            };
            return Err(Refusal::invalid(
                &format!("supervisors[{i}].office_admin_mobile"),
                format!(
                    "required: the office administrator of {}/{} is told of the task by SMS; the request gives no number {whence}",
                    s.department, s.office
                ),
            ));
        }
    }
    Ok(())
}

/// The kinds a case is decided on.
pub const CASE_CATALOGS: [Kind; 6] =
    [Kind::ApprovalItems, Kind::HandlingItems, Kind::Commitment, Kind::Linkage, Kind::Offices, Kind::Regions];

/// The linkage catalog's supervisors of a handling item, each with its office administrator's
/// mobile from the organisation.
pub fn linked_supervisors(catalogs: &Catalogs, handling_item: &str) -> Vec<Supervisor> {
    let mut out: Vec<Supervisor> = Vec::new();
    for link in catalogs.links(handling_item) {
        if out.iter().any(|s| s.department == link.department && s.office == link.office) {
            continue;
        }
        out.push(Supervisor {
            department: link.department.clone(),
            office: link.office.clone(),
            office_admin_mobile: catalogs
                .field(Kind::Offices, &link.office, "admin_mobile")
                .unwrap_or_default()
                .to_owned(),
        });
    }
    out
}

fn route_by_catalogs(
    case: &NewCase,
    policy: &Policy<'_>,
    route: Route,
    scenario: Option<Scenario>,
    actor: &str,
) -> Result<Routed, Refusal> {
    let catalogs = policy.catalogs;
    let item = catalogs.get(Kind::ApprovalItems, &case.approval_item).ok_or_else(|| {
        Refusal::invalid(
            "approval_item_code",
            format!(
                "{:?} is not in the approval item catalog (approval_items v{})",
                case.approval_item,
                catalogs.version(Kind::ApprovalItems)
            ),
        )
    })?;
    let handling = catalogs.get(Kind::HandlingItems, &case.handling_item).ok_or_else(|| {
        Refusal::invalid(
            "handling_item_code",
            format!(
                "{:?} is not in the handling item catalog (handling_items v{})",
                case.handling_item,
                catalogs.version(Kind::HandlingItems)
            ),
        )
    })?;
    let of = handling.get("approval_item").map(String::as_str).unwrap_or_default();
    if of != case.approval_item {
        return Err(Refusal::invalid(
            "handling_item_code",
            format!("{} is a handling item of {of}, not of {}", case.handling_item, case.approval_item),
        ));
    }
    let department = item.get("department").cloned().unwrap_or_default();
    if !case.approval_department.trim().is_empty() && case.approval_department != department {
        return Err(Refusal::invalid(
            "approval_department",
            format!("{} is approved by {department}, not {}", case.approval_item, case.approval_department),
        ));
    }
    let mut default_period = None;
    if let (Route::Commitment, Some(s)) = (route, scenario) {
        let Some(row) = catalogs.get(Kind::Commitment, &case.approval_item) else {
            return Err(Refusal::Precondition(format!(
                "route: {} is not in the commitment catalog (commitment v{}); accept it on the normal route",
                case.approval_item,
                catalogs.version(Kind::Commitment)
            )));
        };
        let allowed = crate::catalog::import::scenarios(row.get("scenarios").map_or("", String::as_str));
        if !allowed.contains(&s.name()) {
            return Err(Refusal::Precondition(format!(
                "scenario: the commitment catalog allows {} only {} for {}",
                case.approval_item,
                allowed.join(", "),
                s.name()
            )));
        }
        default_period = row.get("period_working_days").and_then(|d| d.parse().ok());
    }
    let linked = linked_supervisors(catalogs, &case.handling_item);
    let key = |list: &[Supervisor]| {
        let mut k: Vec<(String, String)> = list.iter().map(|s| (s.department.clone(), s.office.clone())).collect();
        k.sort();
        k
    };
    let show = |list: &[Supervisor]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.iter().map(|s| format!("{}/{}", s.department, s.office)).collect::<Vec<_>>().join("; ")
        }
    };
    let mut override_note = None;
    let supervisors = if case.supervisors.is_empty() || key(&case.supervisors) == key(&linked) {
        linked
    } else if policy.may_override {
        override_note = Some(format!(
            "by {}: the linkage catalog (linkage v{}) names {}; the request named {}",
            crate::auth::Attribution::decode(actor).sub,
            catalogs.version(Kind::Linkage),
            show(&linked),
            show(&case.supervisors)
        ));
        // The organisation's office administrator, where it knows the office.
        case.supervisors
            .iter()
            .map(|s| Supervisor {
                office_admin_mobile: catalogs
                    .field(Kind::Offices, &s.office, "admin_mobile")
                    .map_or_else(|| s.office_admin_mobile.clone(), str::to_owned),
                ..s.clone()
            })
            .collect()
    } else {
        return Err(Refusal::Precondition(format!(
            "supervisors: the linkage catalog (linkage v{}) names {} for {}, the request {}; leave them out, or hold the right override_linkage",
            catalogs.version(Kind::Linkage),
            show(&linked),
            case.handling_item,
            show(&case.supervisors)
        )));
    };
    Ok(Routed {
        approval_department: department,
        supervisors,
        default_period,
        override_note,
        region_admin_mobile: catalogs.region_admin(&case.region).and_then(|r| r.get("admin_mobile")).cloned(),
        versions: catalogs.versions_text(&CASE_CATALOGS),
    })
}

/// The commands of an acceptance: the start, then routing it (normal or commitment), in one
/// group.
pub fn acceptance(start: Command) -> Vec<GroupItem> {
    let route = super::event(&start.instance, "route", serde_json::Map::new(), &start.actor);
    vec![GroupItem { command: start, required: true }, GroupItem { command: route, required: true }]
}

/// A licence: its number, the opinion and the documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Licence {
    /// Licence number.
    pub license_no: String,
    /// The approval opinion.
    pub approval_opinion: String,
    /// References to the approval documents.
    pub document_refs: Vec<String>,
}

/// Completing an approval: the licence event, and the fan-out that starts one supervision task
/// per supervising department from the case as the writer holds it (§9).
pub fn complete_approval(case_id: &str, licence: &Licence, actor: &str) -> Result<(Command, Derive), Refusal> {
    super::check("license_no", super::check_text(&licence.license_no, 64))?;
    super::check("approval_opinion", super::check_text(&licence.approval_opinion, 2000))?;
    if licence.document_refs.len() > MAX_MATERIALS {
        return Err(Refusal::invalid(
            "document_refs",
            format!("{} references; at most {MAX_MATERIALS}", licence.document_refs.len()),
        ));
    }
    for (i, d) in licence.document_refs.iter().enumerate() {
        super::check(&format!("document_refs[{i}]"), super::check_text(d, 256))?;
    }
    let fields = json!({
        "license_no": licence.license_no,
        "approval_opinion": licence.approval_opinion,
        "documents": licence.document_refs.join(", "),
    });
    let command = super::event(case_id, "complete_approval", super::object(fields), actor);
    let actor = actor.to_owned();
    Ok((command, on_case(move |case| fanout::supervision_tasks(case, &actor))))
}

/// Revoking an approval: the revocation event, and the fan-out that tells every task of the
/// case as the writer holds it (§11), so a licence queued just before cannot leave a task open.
pub fn revoke_approval(case_id: &str, reason: &str, basis: &str, actor: &str) -> Result<(Command, Derive), Refusal> {
    super::check("reason", super::check_text(reason, 2000))?;
    super::check("basis", super::check_text(basis, 2000))?;
    let command =
        super::event(case_id, "revoke_approval", super::object(json!({"reason": reason, "basis": basis})), actor);
    let actor = actor.to_owned();
    Ok((command, on_case(move |case| fanout::revocation_notices(case, &actor))))
}

/// A derived fan-out that first makes sure the instance is a case: a command sent under a case
/// id never fans out from anything else.
fn on_case(f: impl Fn(&Instance) -> Result<Vec<GroupItem>, WriteError> + Send + Sync + 'static) -> Derive {
    std::sync::Arc::new(move |case| {
        if case.workflow != CASE_WORKFLOW {
            return Err(crate::machine::Rejection::NotFound { instance: case.id.clone() }.into());
        }
        f(case)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Calendars;
    use crate::definition::Value;
    use crate::machine::CommandKind;

    fn case(route: Route, scenario: Option<Scenario>) -> NewCase {
        NewCase {
            region: "320700".into(),
            case_no: "A-1".into(),
            approval_department: "Market Regulation".into(),
            approval_item: "item".into(),
            handling_item: "handling".into(),
            applicant: Some(Applicant {
                name: "Lianyungang Harbour Foods Co.".into(),
                id: Some(ApplicantId::CreditCode("91110000600037341L".into())),
                mobile: "13800138000".into(),
            }),
            credit_grade: "A".into(),
            route: Some(route),
            scenario,
            unknown_scenario: false,
            commitment_deadline: String::new(),
            commitment_period_working_days: 0,
            deferred_materials: Vec::new(),
            supervisors: vec![
                Supervisor {
                    department: "Fire".into(),
                    office: "Inspections".into(),
                    office_admin_mobile: "13900139001".into(),
                },
                Supervisor {
                    department: "Health".into(),
                    office: "Food".into(),
                    office_admin_mobile: "13900139000".into(),
                },
            ],
        }
    }

    fn accept_on(c: &NewCase, today: &str) -> Result<(String, Command), Refusal> {
        let calendars = Calendars::embedded().expect("calendars");
        let credit = CreditGrades::default();
        let catalogs = Catalogs::default();
        let policy = Policy {
            credit: &credit,
            catalogs: &catalogs,
            may_override: false,
            calendar: calendars.region("320700"),
            today: crate::calendar::parse_date(today).expect("date"),
        };
        accept(c, &policy, "test")
    }

    fn vars(command: &Command) -> &serde_json::Map<String, serde_json::Value> {
        match &command.kind {
            CommandKind::Start { vars, workflow, .. } if workflow == CASE_WORKFLOW => vars,
            other => panic!("not a case start: {other:?}"),
        }
    }

    #[test]
    fn a_supervisor_nobody_can_tell_of_the_task_is_refused_at_intake() {
        let mut c = case(Route::Normal, None);
        c.supervisors[1].office_admin_mobile = String::new();
        match accept_on(&c, "2026-09-28") {
            Err(Refusal::Invalid { field, message }) => {
                assert_eq!(field, "supervisors[1].office_admin_mobile");
                assert!(message.contains("Health/Food") && message.contains("SMS"), "{message}");
            }
            other => panic!("accepted a supervisor with no mobile: {other:?}"),
        }
    }

    #[test]
    fn a_normal_case_records_its_supervisors_as_the_fan_out_reads_them() {
        let (id, start) = accept_on(&case(Route::Normal, None), "2026-09-28").expect("valid");
        assert_eq!(id, "320700/A-1");
        let v = vars(&start);
        assert_eq!(v["route"], "normal");
        assert_eq!(v["task_count"], 2);
        assert!(!v.contains_key("scenario"));
        // The fan-out reads back exactly the list given.
        let instance = Instance {
            id: id.clone(),
            workflow: CASE_WORKFLOW.into(),
            version: 1,
            state: "licensed".into(),
            vars: v
                .iter()
                .map(|(k, x)| {
                    let value = match x {
                        serde_json::Value::Number(n) => Value::Int(n.as_i64().expect("int")),
                        other => Value::Str(other.as_str().expect("text").to_owned()),
                    };
                    (k.clone(), value)
                })
                .collect(),
            timers: Default::default(),
            seq: 2,
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(fanout::supervisors(&instance).expect("list"), case(Route::Normal, None).supervisors);
        let group = acceptance(start);
        assert_eq!(group.len(), 2, "the start and its routing, together");
        assert!(group.iter().all(|i| i.required));
    }

    #[test]
    fn a_barred_grade_may_not_take_the_commitment_route_but_may_take_the_normal_one() {
        let mut c = case(Route::Commitment, Some(Scenario::MaterialVerification));
        c.credit_grade = " ＤＩＳＨＯＮＥＳＴ ".into();
        assert!(matches!(accept_on(&c, "2026-09-28"), Err(Refusal::Precondition(m)) if m.contains("dishonest")));
        c.route = Some(Route::Normal);
        c.scenario = None;
        let (_, start) = accept_on(&c, "2026-09-28").expect("normal route is open to every grade");
        assert_eq!(vars(&start)["credit_grade"], "dishonest", "stored in the configured spelling");
    }

    #[test]
    fn a_commitment_period_is_counted_in_working_days_across_national_day() {
        let mut c = case(Route::Commitment, Some(Scenario::MaterialDeferral));
        c.commitment_period_working_days = 3;
        c.deferred_materials = vec!["fire safety certificate".into()];
        let (_, start) = accept_on(&c, "2026-09-30").expect("valid");
        assert_eq!(
            vars(&start)["commitment_deadline"],
            "2026-10-10",
            "1–7 October are holidays; 10 October is a make-up day"
        );
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let deferral = || {
            let mut c = case(Route::Commitment, Some(Scenario::MaterialDeferral));
            c.deferred_materials = vec!["m".into()];
            c
        };
        let cases: Vec<(NewCase, &str)> = vec![
            (
                {
                    let mut c = deferral();
                    c.commitment_deadline = "2026-09-01".into();
                    c
                },
                "commitment_deadline",
            ),
            (
                {
                    let mut c = deferral();
                    c.commitment_deadline = "2026-10-01".into();
                    c.commitment_period_working_days = 2;
                    c
                },
                "commitment_deadline",
            ),
            (
                {
                    let mut c = deferral();
                    c.commitment_period_working_days = 366;
                    c
                },
                "commitment_period_working_days",
            ),
            (
                {
                    let mut c = deferral();
                    c.commitment_period_working_days = 2;
                    c.deferred_materials.clear();
                    c
                },
                "deferred_materials",
            ),
            (case(Route::Commitment, None), "scenario"),
            (case(Route::Normal, Some(Scenario::MaterialDeferral)), "scenario"),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.unknown_scenario = true;
                    c
                },
                "scenario",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.route = None;
                    c
                },
                "route",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.supervisors.clear();
                    c
                },
                "supervisors",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.supervisors[1].office = "\u{202e}".into();
                    c
                },
                "supervisors[1].office",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.credit_grade = "AAA".into();
                    c
                },
                "credit_grade",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.applicant = None;
                    c
                },
                "applicant",
            ),
            (
                {
                    let mut c = case(Route::Normal, None);
                    c.region = "999999".into();
                    c
                },
                "region_code",
            ),
        ];
        for (c, field) in cases {
            match accept_on(&c, "2026-09-28") {
                Err(Refusal::Invalid { field: f, .. }) => assert_eq!(f, field, "{c:?}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn completing_and_revoking_check_their_fields() {
        let licence = Licence { license_no: "L-1".into(), approval_opinion: "ok".into(), document_refs: vec![] };
        assert!(complete_approval("320700/A-1", &licence, "t").is_ok());
        let long = Licence { document_refs: vec!["d".into(); 51], ..licence.clone() };
        assert!(
            matches!(complete_approval("320700/A-1", &long, "t"), Err(Refusal::Invalid { field, .. }) if field == "document_refs")
        );
        assert!(
            matches!(revoke_approval("320700/A-1", "", "b", "t"), Err(Refusal::Invalid { field, .. }) if field == "reason")
        );
    }
}
