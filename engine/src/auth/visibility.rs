//! The one rule for who sees what: [`Scope::sees`] over [`Seen`], and its SQL form for the
//! listings ([`Scope::limit_cases`], [`Scope::limit_tasks`]).
//!
//! Every read path asks here — GetCase, GetTimeline, QueryCases, ListTasks, GetStatistics,
//! GetEnterpriseProfile, the event stream, spot-check plans and runs, dead letters, the
//! supervision calls that name a task. What a row *is* comes from its workflow, never from the
//! shape of its id: a case number may well begin with `T` (`320700/TZ-2026-0001`).
//!
//! The rule, in words:
//! - a region scope sees everything whose region it covers;
//! - a department sees the cases it approves, and the cases, supervision tasks, spot-check
//!   tasks and spot-check plans of its own department;
//! - an office sees only what is its own: its tasks, its spot-check tasks and plans, and the
//!   cases it has a task in (never a case through its department alone);
//! - anything else (an instance of a generic workflow) is the region's, not a department's;
//! - an outbound message is seen by whoever sees the instance that sent it;
//! - a department or office is itself under each of its names: the token's claim, and the
//!   catalogued code or name it stands for ([`Scope::resolve`]) — a platform whose token names
//!   its department by name sees the cases accepted through the catalogs, which carry codes.

use super::Scope;
use crate::store::{Filter, InstanceRow, ReadStore};

/// What a row is, as far as visibility goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// An approval case: its region, its approving department, and the `(department, office)`
    /// of each of its supervision tasks.
    Case {
        /// The case's region code.
        region: String,
        /// The approving department.
        department: String,
        /// Each task's department and office.
        tasks: Vec<(String, String)>,
    },
    /// One office's work: a supervision task, a spot-check task or a spot-check plan.
    Unit {
        /// Region code.
        region: String,
        /// Department.
        department: String,
        /// Office.
        office: String,
    },
    /// An instance of any other workflow, by its id (ids start with their region).
    Other {
        /// The instance id.
        id: String,
    },
}

impl Seen {
    /// The approval side of a case alone (its figures in the statistics): seen by the regions
    /// and the approving department, never by an office.
    pub fn approval(region: String, department: String) -> Seen {
        Seen::Case { region, department, tasks: Vec::new() }
    }

    /// The figures of a statistics group: a supervision group is its office's work; an
    /// approval group the approval side of its department's cases.
    pub fn figures(group: &crate::domain::figures::Group) -> Seen {
        use crate::domain::figures::Side;
        match group.side {
            Side::Supervision => Seen::Unit {
                region: group.region.clone(),
                department: group.department.clone(),
                office: group.office.clone(),
            },
            Side::Approval => Seen::approval(group.region.clone(), group.department.clone()),
        }
    }

    /// What `row` is; `tasks` are a case's supervision tasks (ignored for any other row).
    pub fn of(row: &InstanceRow, tasks: &[InstanceRow]) -> Seen {
        let var = |r: &InstanceRow, n: &str| r.vars.get(n).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        match row.workflow.as_str() {
            crate::domain::CASE_WORKFLOW => Seen::Case {
                region: var(row, "region"),
                department: var(row, "approval_department"),
                tasks: tasks
                    .iter()
                    .filter(|t| t.workflow == crate::domain::TASK_WORKFLOW)
                    .map(|t| (var(t, "department"), var(t, "office")))
                    .collect(),
            },
            crate::domain::TASK_WORKFLOW
            | crate::domain::spotcheck::TASK_WORKFLOW
            | crate::domain::spotcheck::PLAN_WORKFLOW => Seen::Unit {
                region: var(row, "region"),
                department: var(row, "department"),
                office: var(row, "office"),
            },
            _ => Seen::Other { id: row.id.clone() },
        }
    }

    /// Whether it lies in the regions under `prefix` (a [`super::region_prefix`]).
    pub fn in_region(&self, prefix: &str) -> bool {
        match self {
            Seen::Case { region, .. } | Seen::Unit { region, .. } => region.starts_with(prefix),
            Seen::Other { id } => id.starts_with(prefix),
        }
    }

    /// Whether what this is can never change: a case gains tasks (and so viewers) over its
    /// life; nothing else moves.
    pub fn is_final(&self) -> bool {
        !matches!(self, Seen::Case { .. })
    }
}

/// Reads instance `id` and what it is: a case with its tasks. `None` when there is no such
/// instance.
pub async fn load(reader: &dyn ReadStore, id: &str) -> Result<Option<(InstanceRow, Seen)>, crate::store::Error> {
    let Some(row) = reader.instance(id).await? else { return Ok(None) };
    let tasks = if row.workflow == crate::domain::CASE_WORKFLOW { tasks_of(reader, id).await? } else { Vec::new() };
    let seen = Seen::of(&row, &tasks);
    Ok(Some((row, seen)))
}

/// A case's supervision tasks, in id order.
pub async fn tasks_of(reader: &dyn ReadStore, case_id: &str) -> Result<Vec<InstanceRow>, crate::store::Error> {
    // Case numbers hold no '/', so "<case>/T" prefixes this case's tasks and nothing else's.
    let rows = reader.with_prefix(&format!("{case_id}/T")).await?;
    Ok(rows.into_iter().filter(|t| t.workflow == crate::domain::TASK_WORKFLOW).collect())
}

impl Scope {
    /// Completes the scope with the other names of its department and office from the
    /// organisation catalog (a claim by name gains the code, a claim by code the name). Done
    /// once per call, before any row is judged.
    pub fn resolve(&mut self, catalogs: &crate::catalog::Catalogs) {
        let Some(department) = &self.department else { return };
        let region = self.region.clone();
        let in_scope = |code: &str| region.as_deref().is_none_or(|p| code.starts_with(p));
        let departments = catalogs.department_names(department, in_scope);
        let offices = self.office.as_deref().map(|o| catalogs.office_names(o, Some(&departments))).unwrap_or_default();
        self.aliases = super::Aliases { departments, offices };
    }

    /// The department's names: the claim and what [`Scope::resolve`] added.
    fn departments(&self) -> Vec<String> {
        if self.aliases.departments.is_empty() {
            self.department.iter().cloned().collect()
        } else {
            self.aliases.departments.clone()
        }
    }

    /// The office's names, as [`Scope::departments`]; `None` when the scope has no office.
    fn offices(&self) -> Option<Vec<String>> {
        let office = self.office.as_ref()?;
        Some(if self.aliases.offices.is_empty() { vec![office.clone()] } else { self.aliases.offices.clone() })
    }

    /// Whether `department` (by any of its names) is within this scope's department.
    pub fn has_department(&self, department: &str) -> bool {
        self.department
            .as_deref()
            .is_none_or(|d| d == department || self.aliases.departments.iter().any(|a| a == department))
    }

    fn is_office(&self, office: &str) -> bool {
        self.office.as_deref().is_none_or(|o| o == office || self.aliases.offices.iter().any(|a| a == office))
    }

    /// Whether this scope sees `row`. The rule of this module, written once.
    pub fn sees(&self, row: &Seen) -> bool {
        match row {
            Seen::Case { region, department, tasks } => {
                if !self.has_region(region) {
                    return false;
                }
                match (&self.department, &self.office) {
                    (None, _) => true,
                    (Some(_), None) if self.has_department(department) => true,
                    _ => tasks.iter().any(|(d, o)| self.unit(d, o)),
                }
            }
            Seen::Unit { region, department, office } => self.has_region(region) && self.unit(department, office),
            Seen::Other { id } => {
                self.department.is_none() && self.id_prefix().is_none_or(|p| id.starts_with(p.as_str()))
            }
        }
    }

    fn unit(&self, department: &str, office: &str) -> bool {
        self.has_department(department) && self.is_office(office)
    }

    /// Limits a listing of cases (`domain::CASE_WORKFLOW`) to what [`Scope::sees`] lets
    /// through, in SQL: the same rule, as the store can apply it.
    pub fn limit_cases(&self, filter: &mut Filter) {
        filter.region_prefix = self.id_prefix();
        if self.department.is_some() {
            filter.seen_by = Some((self.departments(), self.offices()));
            filter.task_workflow = crate::domain::TASK_WORKFLOW.to_owned();
        }
    }

    /// Limits a listing of supervision tasks to what [`Scope::sees`] lets through, in SQL. Only
    /// for rows whose id starts with their region (`<region>/<case>/T<n>`): spot-check ids start
    /// with `SC/`, so their listings apply [`Scope::sees`] to each row.
    pub fn limit_tasks(&self, filter: &mut Filter) {
        filter.region_prefix = self.id_prefix();
        if self.department.is_some() {
            filter.vars_in.push(("department".into(), self.departments()));
        }
        if let Some(offices) = self.offices() {
            filter.vars_in.push(("office".into(), offices));
        }
    }

    /// Whether this scope has no limit at all (then nothing need be read to decide).
    pub fn is_everywhere(&self) -> bool {
        self.id_prefix().is_none() && self.department.is_none() && self.office.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(region: &str, department: Option<&str>, office: Option<&str>) -> Scope {
        Scope {
            region: Some(region.to_owned()),
            department: department.map(str::to_owned),
            office: office.map(str::to_owned),
            aliases: crate::auth::Aliases::default(),
        }
    }

    fn case(region: &str, department: &str, tasks: &[(&str, &str)]) -> Seen {
        Seen::Case {
            region: region.into(),
            department: department.into(),
            tasks: tasks.iter().map(|(d, o)| ((*d).to_owned(), (*o).to_owned())).collect(),
        }
    }

    fn unit(region: &str, department: &str, office: &str) -> Seen {
        Seen::Unit { region: region.into(), department: department.into(), office: office.into() }
    }

    #[test]
    fn the_rule_written_out() {
        let licensed = case("320700", "审批局", &[("市场监管局", "食品处")]);
        let own = case("320700", "市场监管局", &[]);
        let task = unit("320700", "市场监管局", "食品处");
        let other_task = unit("320700", "卫健委", "医疗处");
        let generic = Seen::Other { id: "320700-batch-1".into() };

        let everywhere = Scope::everywhere();
        let city = scope("3207", None, None);
        let other_city = scope("3208", None, None);
        let dept = scope("3207", Some("市场监管局"), None);
        let office = scope("3207", Some("市场监管局"), Some("食品处"));
        let other_office = scope("3207", Some("市场监管局"), Some("药品处"));

        //                    licensed own    task   other  generic
        let table: [(&Scope, [bool; 5]); 6] = [
            (&everywhere, [true, true, true, true, true]),
            (&city, [true, true, true, true, true]),
            (&other_city, [false, false, false, false, false]),
            (&dept, [true, true, true, false, false]),
            (&office, [true, false, true, false, false]),
            (&other_office, [false, false, false, false, false]),
        ];
        for (scope, expect) in table {
            let got = [&licensed, &own, &task, &other_task, &generic].map(|row| scope.sees(row));
            assert_eq!(got, expect, "{scope}");
        }
        assert!(scope("", None, None).sees(&Seen::Other { id: "anything".into() }));
        assert!(scope("3207", None, None).sees(&Seen::Other { id: "320703/x".into() }));
        assert!(!dept.sees(&Seen::approval("320700".into(), "审批局".into())));
        assert!(!office.sees(&Seen::approval("320700".into(), "市场监管局".into())));
    }

    #[test]
    fn a_department_claimed_by_name_sees_what_carries_its_code_and_the_other_way_round() {
        let imported = crate::catalog::import::import(
            &crate::catalog::Catalogs::default(),
            &crate::catalog::example_files(),
            "test",
            "",
            0,
        )
        .expect("the example imports");
        let catalogs = crate::catalog::Catalogs::new(imported.versions);
        let coded = case("320700", "SPJ-320700", &[("SJJ-320700", "SJJ-FOOD")]);
        let named = case("320700", "连云港市行政审批局", &[("连云港市市场监督管理局", "食品生产监督管理处")]);
        let task = unit("320700", "SJJ-320700", "SJJ-FOOD");
        for (department, office) in [
            ("连云港市市场监督管理局", None),
            ("SJJ-320700", None),
            ("连云港市市场监督管理局", Some("食品生产监督管理处")),
            ("SJJ-320700", Some("SJJ-FOOD")),
        ] {
            let mut s = scope("3207", Some(department), office);
            assert!(!s.sees(&coded) || department == "SJJ-320700", "unresolved, a name does not match a code");
            s.resolve(&catalogs);
            assert!(s.sees(&coded) && s.sees(&named) && s.sees(&task), "{s}");
            let mut filter = Filter::default();
            s.limit_tasks(&mut filter);
            assert!(filter.vars_in[0].1.contains(&"SJJ-320700".to_owned()), "{:?}", filter.vars_in);
            assert!(filter.vars_in[0].1.contains(&"连云港市市场监督管理局".to_owned()), "{:?}", filter.vars_in);
        }
        // Another department, under any name, still sees nothing of these.
        let mut fire = scope("3207", Some("连云港市消防救援支队"), None);
        fire.resolve(&catalogs);
        assert!(!fire.sees(&coded) && !fire.sees(&named) && !fire.sees(&task));
        // The approving department by name sees its coded case.
        let mut approver = scope("3207", Some("连云港市行政审批局"), None);
        approver.resolve(&catalogs);
        assert!(approver.sees(&coded));
    }

    #[test]
    fn a_row_is_what_its_workflow_says_whatever_its_id() {
        let mut row = InstanceRow {
            id: "320700/TZ-2026-0001".into(),
            workflow: crate::domain::CASE_WORKFLOW.into(),
            ..InstanceRow::default()
        };
        row.vars.insert("region".into(), "320700".into());
        row.vars.insert("approval_department".into(), "审批局".into());
        assert_eq!(Seen::of(&row, &[]), case("320700", "审批局", &[]));
        row.workflow = "something_else".into();
        assert_eq!(Seen::of(&row, &[]), Seen::Other { id: "320700/TZ-2026-0001".into() });
    }
}
