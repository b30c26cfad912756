//! Identity and authorisation: who is calling, what each role may do, and where.
//!
//! INVARIANT: every domain call is authorised here and nowhere else. A handler asks
//! [`Principal::authorize`] for the [`Right`] its RPC needs and gets a [`Grant`]: the role that
//! allowed it and the [`Scope`] (regions, department, office) it may touch. Objects outside the
//! scope are `PERMISSION_DENIED` when named, and left out of lists and statistics.
//!
//! # Layout
//! - this file: roles, rights, scopes, principals and the attribution written into history.
//! - [`verify`]: bearer JWTs — key sets from PEM files or a JWKS file (reloaded when they
//!   change), the dev-mode HS256 key, a cache of verified tokens.
//! - [`visibility`]: the one rule for who sees which case, task, plan or message.
//! - [`layer`]: the interceptor in front of every domain service: token or client certificate
//!   → principal, on-behalf-of, the rate limit per principal.
//!
//! # Regions
//! A region code names its parent by its digits: `320703` (a district) is under `320700` (its
//! city), which is under `320000` (the province). A scope on `320700` is every code starting
//! `3207`; `000000` is the whole country (for a national auditor).

pub mod layer;
pub mod verify;
pub mod visibility;

pub use visibility::Seen;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A role, as named in the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs the engine: every right, everywhere (the clock, the generic service, calendars).
    EngineAdmin,
    /// Region administrator: reads everything of their region and the regions under it.
    RegionAdmin,
    /// Auditor: reads, never writes, in their region (`000000`: everywhere).
    Auditor,
    /// Department administrator: reads their department's cases and tasks in their region.
    DepartmentAdmin,
    /// Office administrator: reads their office's tasks in their region.
    OfficeAdmin,
    /// A service account of the integrated government service platform: intake in its region.
    Platform,
    /// A supervision platform or office: lists and reports its department's (office's) tasks.
    Supervisor,
}

impl Role {
    /// Every role, widest first: when several of a principal's roles grant a right, the first
    /// one here decides the scope.
    pub const ALL: [Role; 7] = [
        Role::EngineAdmin,
        Role::RegionAdmin,
        Role::Auditor,
        Role::DepartmentAdmin,
        Role::OfficeAdmin,
        Role::Platform,
        Role::Supervisor,
    ];

    /// The name in tokens and in history.
    pub fn name(self) -> &'static str {
        match self {
            Role::EngineAdmin => "engine_admin",
            Role::RegionAdmin => "region_admin",
            Role::Auditor => "auditor",
            Role::DepartmentAdmin => "department_admin",
            Role::OfficeAdmin => "office_admin",
            Role::Platform => "platform",
            Role::Supervisor => "supervisor",
        }
    }

    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether the role carries `right`. The table the role × RPC test walks.
    pub fn grants(self, right: Right) -> bool {
        use Right::*;
        if right == ReadWorkflows {
            // A definition says how every case runs, not what any case holds: every role reads it.
            return true;
        }
        match self {
            Role::EngineAdmin => true,
            // Administrators read what auditors read; department administrators also plan spot
            // checks for their department; region administrators also keep the organisation
            // and catalogs of the region (§1, §15) and may settle a disputed linkage.
            Role::RegionAdmin => {
                Role::DepartmentAdmin.grants(right) || matches!(right, ManageCatalogs | OverrideLinkage)
            }
            Role::DepartmentAdmin => Role::Auditor.grants(right) || right == ManageSpotChecks,
            Role::Auditor | Role::OfficeAdmin => matches!(
                right,
                ReadCases | ReadTasks | Statistics | CalendarStatus | ReadCatalogs | ReadEnterprise | ReadSpotChecks
            ),
            Role::Platform => matches!(right, Intake | ReadCases | Subscribe | ReadCatalogs),
            Role::Supervisor => matches!(right, Supervise | ReadTasks | Subscribe | ReadSpotChecks),
        }
    }

    /// What a token of this role must also say, beyond the subject.
    fn needs(self) -> (bool, bool, bool) {
        // (region, department, office)
        match self {
            Role::EngineAdmin => (false, false, false),
            Role::RegionAdmin | Role::Auditor | Role::Platform => (true, false, false),
            Role::DepartmentAdmin | Role::Supervisor => (true, true, false),
            Role::OfficeAdmin => (true, true, true),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Accept a case, hand in materials, complete or revoke an approval.
    Intake,
    /// Read cases: GetCase, QueryCases, GetTimeline.
    ReadCases,
    /// List tasks.
    ReadTasks,
    /// Acknowledge a task, report inspection, result, rectification.
    Supervise,
    /// Timeliness statistics.
    Statistics,
    /// Which calendars are loaded.
    CalendarStatus,
    /// Load a calendar file.
    LoadCalendar,
    /// Move the sandbox clock.
    AdvanceClock,
    /// The generic EngineService (any workflow, any signal).
    Engine,
    /// Name another person as the one acting (`x-shenguan-on-behalf-of`).
    ActOnBehalf,
    /// Take the outbox as a stream (EventsService): Subscribe and Ack.
    Subscribe,
    /// See and retry dead letters.
    DeadLetters,
    /// List and drop stream consumers (what retention keeps for them).
    Consumers,
    /// Read the organisation and the catalogs, their versions and linkage problems.
    ReadCatalogs,
    /// Import catalogs and relink cases.
    ManageCatalogs,
    /// Accept a case whose supervisors differ from the linkage catalog (recorded on the case).
    OverrideLinkage,
    /// Read an enterprise's profile.
    ReadEnterprise,
    /// Create and end spot-check plans.
    ManageSpotChecks,
    /// Read spot-check plans, runs and results (for publication).
    ReadSpotChecks,
    /// Read workflow definitions (their states and transitions; no case data).
    ReadWorkflows,
    /// Export closed cases to an archive and remove them.
    Archive,
}

impl Right {
    /// The name in a denial.
    pub fn name(self) -> &'static str {
        match self {
            Right::Intake => "intake",
            Right::ReadCases => "read_cases",
            Right::ReadTasks => "read_tasks",
            Right::Supervise => "supervise",
            Right::Statistics => "statistics",
            Right::CalendarStatus => "calendar_status",
            Right::LoadCalendar => "load_calendar",
            Right::AdvanceClock => "advance_clock",
            Right::Engine => "engine",
            Right::ActOnBehalf => "act_on_behalf",
            Right::Subscribe => "subscribe",
            Right::DeadLetters => "dead_letters",
            Right::Consumers => "consumers",
            Right::ReadCatalogs => "read_catalogs",
            Right::ManageCatalogs => "manage_catalogs",
            Right::OverrideLinkage => "override_linkage",
            Right::ReadEnterprise => "read_enterprise",
            Right::ManageSpotChecks => "manage_spot_checks",
            Right::ReadSpotChecks => "read_spot_checks",
            Right::ReadWorkflows => "read_workflows",
            Right::Archive => "archive",
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A bearer JWT signed by a configured key.
    Token,
    /// A bearer JWT signed by the dev-mode key.
    DevToken,
    /// A client certificate pinned in the service-account file.
    Certificate,
    /// Authentication is off (benchmarks and embedding only; `serve` cannot select it).
    Open,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who (the token's `sub`).
    pub subject: String,
    /// The roles the token names that this engine knows.
    pub roles: Vec<Role>,
    /// Region code (`region` claim), or empty.
    pub region: String,
    /// Department (`department` claim), or empty.
    pub department: String,
    /// Office (`office` claim), or empty.
    pub office: String,
    /// May name another person as the one acting.
    pub on_behalf: bool,
    /// How this was proved.
    pub via: Via,
}

impl Principal {
    /// The caller when authentication is off: an engine administrator.
    pub fn open() -> Principal {
        Principal {
            subject: "anonymous".into(),
            roles: vec![Role::EngineAdmin],
            region: String::new(),
            department: String::new(),
            office: String::new(),
            on_behalf: false,
            via: Via::Open,
        }
    }

    /// The role that grants `right` and the scope it gives, or why not.
    pub fn authorize(&self, right: Right) -> Result<Grant, Denied> {
        if right == Right::ActOnBehalf {
            return if self.on_behalf {
                Ok(Grant { role: self.roles.first().copied().unwrap_or(Role::Platform), scope: Scope::everywhere() })
            } else {
                Err(Denied::Missing { right, roles: self.role_names() })
            };
        }
        let mut unusable = None;
        for role in Role::ALL {
            if !self.roles.contains(&role) || !role.grants(right) {
                continue;
            }
            match self.scope_of(role) {
                Ok(scope) => return Ok(Grant { role, scope }),
                Err(why) => unusable = Some(why),
            }
        }
        Err(unusable.unwrap_or(Denied::Missing { right, roles: self.role_names() }))
    }

    fn role_names(&self) -> String {
        if self.roles.is_empty() {
            return "none".into();
        }
        self.roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
    }

    fn scope_of(&self, role: Role) -> Result<Scope, Denied> {
        let (region, department, office) = role.needs();
        if !region {
            return Ok(Scope::everywhere());
        }
        let Some(prefix) = region_prefix(&self.region) else {
            return Err(Denied::Claim { role, claim: "region" });
        };
        if department && self.department.is_empty() {
            return Err(Denied::Claim { role, claim: "department" });
        }
        if office && self.office.is_empty() {
            return Err(Denied::Claim { role, claim: "office" });
        }
        // A supervisor with an office claim speaks for that office only.
        let office = office || (role == Role::Supervisor && !self.office.is_empty());
        Ok(Scope {
            region: Some(prefix),
            department: department.then(|| self.department.clone()),
            office: office.then(|| self.office.clone()),
            aliases: Aliases::default(),
        })
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// None of the caller's roles carries the right.
    #[error("the right {} is missing (roles: {roles})", right.name())]
    Missing {
        /// The right the RPC needs.
        right: Right,
        /// The caller's roles.
        roles: String,
    },
    /// A role that would grant it needs a claim the token lacks.
    #[error("role {role} needs a valid {claim} claim in the token")]
    Claim {
        /// The role.
        role: Role,
        /// The claim.
        claim: &'static str,
    },
    /// The object is outside the caller's scope.
    #[error("{what} is outside the caller's scope ({scope})")]
    Scope {
        /// The object ("case 320800/X").
        what: String,
        /// The scope, in words.
        scope: String,
    },
    /// The object belongs to another subject (a stream consumer).
    #[error("{what} belongs to another subject")]
    Owner {
        /// The object ("consumer sup-320700").
        what: String,
    },
}

/// Where a grant applies. `None` in a field: no limit on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// Region codes starting with this (`""`: every region).
    pub region: Option<String>,
    /// This department only.
    pub department: Option<String>,
    /// This office (of `department`) only.
    pub office: Option<String>,
    /// The other names the organisation catalog knows the department and the office by
    /// (see [`Scope::resolve`]).
    pub aliases: Aliases,
}

/// A scope's department and office under every name they are known by: the claim, and its
/// catalogued code or name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Aliases {
    /// The department's names (the claim first); empty until resolved.
    pub departments: Vec<String>,
    /// The office's names (the claim first); empty until resolved.
    pub offices: Vec<String>,
}

impl Scope {
    /// No limit.
    pub fn everywhere() -> Scope {
        Scope::default()
    }

    /// Whether the region code is in scope.
    pub fn has_region(&self, code: &str) -> bool {
        self.region.as_deref().is_none_or(|p| code.starts_with(p))
    }

    /// What every case and task id in scope starts with (ids start with their region code);
    /// `None` when every region is.
    pub fn id_prefix(&self) -> Option<String> {
        self.region.clone().filter(|p| !p.is_empty())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.region.as_deref() {
            None | Some("") => f.write_str("every region")?,
            Some(p) => write!(f, "regions {p}*")?,
        }
        if let Some(d) = &self.department {
            write!(f, ", department {d}")?;
        }
        if let Some(o) = &self.office {
            write!(f, ", office {o}")?;
        }
        Ok(())
    }
}

/// The prefix every region under `code` starts with: `320700` → `3207`, `320000` → `32`,
/// `000000` → `` (everywhere). `None` unless six digits.
pub fn region_prefix(code: &str) -> Option<String> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut prefix = code;
    while let Some(rest) = prefix.strip_suffix("00") {
        prefix = rest;
    }
    Some(prefix.to_owned())
}

/// A right granted: by which role, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role that carries the right.
    pub role: Role,
    /// Where it applies.
    pub scope: Scope,
}

/// Who did something, as history keeps it: written by the server from the verified principal,
/// never from what the caller claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Attribution {
    /// The principal's subject.
    pub sub: String,
    /// The role that allowed the act.
    pub role: String,
    /// The principal's region, department and office claims.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[allow(missing_docs)]
    pub department: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[allow(missing_docs)]
    pub office: String,
    /// The person a service account acted for (`x-shenguan-on-behalf-of`), when it may.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub on_behalf_of: String,
    /// How the principal was proved (`token`, `dev_token`, `certificate`, `open`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub via: String,
    /// The call's request id (the caller's `x-request-id`, else one the server made).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

impl Attribution {
    /// The actor text history stores: compact JSON (always starts with `{`).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.sub.clone())
    }

    /// What history holds: the JSON this writes, or a plain name (entries written before
    /// attribution, and the engine's own acts such as `timer`).
    pub fn decode(actor: &str) -> Attribution {
        if actor.starts_with('{') {
            if let Ok(a) = serde_json::from_str(actor) {
                return a;
            }
        }
        Attribution { sub: actor.to_owned(), ..Attribution::default() }
    }
}

impl Grant {
    /// The attribution of an act under this grant.
    pub fn attribution(&self, principal: &Principal, on_behalf_of: &str, request_id: &str) -> Attribution {
        let via = serde_json::to_value(principal.via).ok().and_then(|v| v.as_str().map(str::to_owned));
        Attribution {
            sub: principal.subject.clone(),
            role: self.role.name().to_owned(),
            region: principal.region.clone(),
            department: principal.department.clone(),
            office: principal.office.clone(),
            on_behalf_of: on_behalf_of.to_owned(),
            via: via.unwrap_or_default(),
            request_id: request_id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(roles: &[Role], region: &str, department: &str, office: &str) -> Principal {
        Principal {
            subject: "s".into(),
            roles: roles.to_vec(),
            region: region.into(),
            department: department.into(),
            office: office.into(),
            on_behalf: false,
            via: Via::Token,
        }
    }

    #[test]
    fn region_prefixes_follow_the_code_hierarchy() {
        assert_eq!(region_prefix("320703").as_deref(), Some("320703"));
        assert_eq!(region_prefix("320700").as_deref(), Some("3207"));
        assert_eq!(region_prefix("320000").as_deref(), Some("32"));
        assert_eq!(region_prefix("000000").as_deref(), Some(""));
        for bad in ["", "3207", "32070a", "3207000", "三二〇七〇〇"] {
            assert_eq!(region_prefix(bad), None, "{bad}");
        }
        let city = who(&[Role::RegionAdmin], "320700", "", "").authorize(Right::ReadCases).expect("granted");
        assert!(city.scope.has_region("320703") && city.scope.has_region("320700"));
        assert!(!city.scope.has_region("320800") && !city.scope.has_region("330700"));
    }

    #[test]
    fn a_role_without_its_claims_grants_nothing_and_says_which_claim() {
        let e = who(&[Role::Platform], "", "", "").authorize(Right::Intake).expect_err("no region");
        assert_eq!(e.to_string(), "role platform needs a valid region claim in the token");
        let e = who(&[Role::OfficeAdmin], "320700", "市场监管局", "").authorize(Right::ReadTasks).expect_err("office");
        assert!(e.to_string().contains("office claim"), "{e}");
        let e = who(&[Role::Auditor], "320700", "", "").authorize(Right::Intake).expect_err("read only");
        assert_eq!(e.to_string(), "the right intake is missing (roles: auditor)");
    }

    #[test]
    fn attribution_round_trips_and_old_plain_actors_read_as_subjects() {
        let p = who(&[Role::Platform], "320700", "", "");
        let grant = p.authorize(Right::Intake).expect("granted");
        let a = grant.attribution(&p, "张三", "r-1");
        let text = a.encode();
        assert!(text.starts_with('{'));
        assert_eq!(Attribution::decode(&text), a);
        assert_eq!(a.via, "token");
        assert_eq!(Attribution::decode("timer").sub, "timer");
        assert_eq!(Attribution::decode("{not json").sub, "{not json");
    }
}
