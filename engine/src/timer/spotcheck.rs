//! The spot-check runner: draws the runs of credit-graded spot-check plans as they fall due
//! (DOMAIN.md §12), beside the timer service.
//!
//! A plan's cron timer counts its runs in the plan's history; [`Runner::run_due`] reads the
//! active plans, and for each run counted but not drawn reads the population, draws it with
//! [`crate::domain::spotcheck::draw`] (pure) and writes the draw with one `spot_check_task` per
//! target in one atomic group. [`draw_due`] calls it every few seconds in the background.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::cluster::ownership::Ownership;
use crate::domain::spotcheck::{
    draw, read_ratios, DrawRecord, Member, ALGORITHM, LICENSED_STATES, PLAN_WORKFLOW, TASK_WORKFLOW,
};

use crate::store::{Filter, ReadStore};
use crate::writer::{GroupItem, Handle};

/// How often the spot-check runner looks for runs that fell due. Runs are days apart; a few
/// seconds late is nothing, and the look is one indexed query.
const SPOT_CHECK_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Draws spot-check runs as they fall due — with several nodes, on the holder of shard 0 only
/// (a second drawer would only be refused by the plan's guard).
pub async fn draw_due(runner: Runner, ownership: Option<Arc<Ownership>>) {
    let mut tick = tokio::time::interval(SPOT_CHECK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if ownership.as_ref().is_some_and(|o| !o.holds(0)) {
            continue;
        }
        if let Err(e) = runner.run_due().await {
            tracing::warn!(error = %e, "cannot draw the spot-check runs due; retrying");
        }
    }
}

/// Why a run could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading failed.
    #[error("reading the population: {0}")]
    Read(#[from] crate::store::Error),
    /// A stored plan does not make sense.
    #[error("plan {plan}: {message}")]
    Damaged {
        /// The plan.
        plan: String,
        /// What.
        message: String,
    },
    /// Writing failed.
    #[error("plan {plan}: {error}")]
    Write {
        /// The plan.
        plan: String,
        /// Why.
        error: crate::writer::WriteError,
    },
}

/// Draws the runs that fell due: the engine runs it in the background (on the node that holds
/// shard 0), and the sandbox's AdvanceClock after the clock moved.
#[derive(Clone)]
pub struct Runner {
    /// The committed state.
    pub reader: Arc<dyn ReadStore>,
    /// Where draws are written.
    pub writer: Handle,
    /// The catalogs in force.
    pub catalogs: Arc<crate::catalog::Live>,
    /// Serialises runs on this node: two at once would draw the same run twice (the second is
    /// refused by the plan's guard, but its seed would be wasted work).
    pub lock: Arc<tokio::sync::Mutex<()>>,
    /// Counts draws.
    pub metrics: Arc<crate::telemetry::Metrics>,
}

fn text(row: &crate::store::InstanceRow, name: &str) -> String {
    match row.vars.get(name) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn int(row: &crate::store::InstanceRow, name: &str) -> i64 {
    row.vars.get(name).and_then(serde_json::Value::as_i64).unwrap_or(0)
}

/// What became of one run.
enum Drawn {
    /// Drawn now.
    Yes,
    /// Drawn before (by another node, or before a restart).
    Already,
    /// Cannot be drawn now (escalated); tried again later.
    Refused,
}

impl Runner {
    /// Draws every run due and not drawn, oldest first per plan; answers how many. A plan whose
    /// draw fails is left for the next round (logged and counted) and the other plans are
    /// drawn all the same; the first failure is answered once every plan was tried.
    pub async fn run_due(&self) -> Result<usize, RunError> {
        let _guard = self.lock.lock().await;
        let filter = Filter { workflow: PLAN_WORKFLOW.into(), state: Some("active".into()), ..Filter::default() };
        let plans = self.reader.list(&filter).await?;
        let mut drawn = 0;
        let mut first_failure = None;
        for plan in plans {
            let (runs, done) = (int(&plan, "runs"), int(&plan, "drawn"));
            // Runs in order: a run that cannot be drawn holds back the later ones of its plan.
            for run in done + 1..=runs {
                match self.draw_run(&plan, run).await {
                    Ok(Drawn::Yes) => {
                        drawn += 1;
                        self.metrics.spot_check_draws.with_label_values(&["drawn"]).inc();
                    }
                    Ok(Drawn::Already) => {}
                    Ok(Drawn::Refused) => {
                        self.metrics.spot_check_draws.with_label_values(&["refused"]).inc();
                        break;
                    }
                    Err(e) => {
                        self.metrics.spot_check_draws.with_label_values(&["failed"]).inc();
                        tracing::warn!(plan = %plan.id, run, error = %e, "spot-check draw failed; will try again");
                        first_failure.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(drawn),
        }
    }

    /// The population of a plan now: licensed enterprises of its supervision item in its region.
    pub async fn population(&self, plan: &crate::store::InstanceRow) -> Result<Vec<Member>, RunError> {
        let catalogs = self.catalogs.current();
        let items: Vec<String> = catalogs.handling_items_of(&text(plan, "supervision_item")).into_iter().collect();
        let rows = self.reader.subjects_by_item(crate::domain::CASE_WORKFLOW, &items, &LICENSED_STATES).await?;
        let prefix = crate::auth::region_prefix(&text(plan, "region")).unwrap_or_default();
        // The latest case of each enterprise gives its grade.
        let mut latest: BTreeMap<String, crate::store::Subject> = BTreeMap::new();
        for s in rows.into_iter().filter(|s| s.row.instance.starts_with(&prefix)) {
            match latest.get(&s.row.code) {
                Some(old) if (old.row.created_at, &old.row.instance) >= (s.row.created_at, &s.row.instance) => {}
                _ => {
                    latest.insert(s.row.code.clone(), s);
                }
            }
        }
        Ok(latest
            .into_values()
            .map(|s| Member { code: s.row.code, grade: s.row.grade, case: s.row.instance })
            .collect())
    }

    /// Refuses run `run` of `plan` for `reason`: escalated once (the plan's guard), drawn later.
    async fn refuse_run(&self, plan: &crate::store::InstanceRow, run: i64, reason: String) -> Result<Drawn, RunError> {
        tracing::warn!(plan = %plan.id, run, %reason, "spot-check run cannot be drawn; escalated to the office");
        let fields = json!({"run": run, "reason": reason});
        let command = crate::domain::event(&plan.id, "run_refused", crate::domain::object(fields), "spot-check");
        match self.writer.submit(command).await {
            // Escalated now, or before (the guard refuses a second escalation of the run).
            Ok(_) | Err(crate::writer::WriteError::Rejected(_)) => Ok(Drawn::Refused),
            Err(error) => Err(RunError::Write { plan: plan.id.clone(), error }),
        }
    }

    async fn draw_run(&self, plan: &crate::store::InstanceRow, run: i64) -> Result<Drawn, RunError> {
        let damaged = |message: String| RunError::Damaged { plan: plan.id.clone(), message };
        let population = self.population(plan).await?;
        let ratios = read_ratios(&text(plan, "ratios"));
        if ratios.is_empty() {
            return Err(damaged(format!("ratios {:?} do not read", text(plan, "ratios"))));
        }
        let catalogs = self.catalogs.current();
        let office = text(plan, "office");
        let inspectors: Vec<String> =
            catalogs.inspectors(&office).into_iter().filter_map(|r| r.get("code").cloned()).collect();
        let per_target = usize::try_from(int(plan, "inspectors_per_target")).unwrap_or(2);
        // Every target needs its inspectors: a draw with too few is not written at all.
        if inspectors.len() < per_target.max(1) {
            let reason = format!(
                "office {office} has {} inspector(s) in the organisation catalog; {} are needed per target",
                inspectors.len(),
                per_target.max(1)
            );
            return self.refuse_run(plan, run, reason).await;
        }
        let seed: u64 = rand::random();
        let mut selected = draw(seed, &population, &ratios, &inspectors, per_target);
        let mut items = Vec::new();
        for (n, t) in selected.iter_mut().enumerate() {
            t.task = format!("{}/R{run}/{}", plan.id, n + 1);
            let name = match self.reader.instance(&t.case).await? {
                Some(case) => text(&case, "applicant_name"),
                None => String::new(),
            };
            let vars = json!({
                "region": text(plan, "region"),
                "plan_id": plan.id,
                "run": run,
                "supervision_item": text(plan, "supervision_item"),
                "department": text(plan, "department"),
                "office": office,
                "inspectors": t.inspectors.join(", "),
                "applicant_code": t.code,
                "applicant_name": if name.is_empty() { t.code.clone() } else { name },
                "credit_grade": t.grade,
            });
            items.push(GroupItem {
                command: crate::domain::start(&t.task, TASK_WORKFLOW, crate::domain::object(vars), "spot-check"),
                required: true,
            });
        }
        let record = DrawRecord {
            algorithm: ALGORITHM.into(),
            seed: seed.to_string(),
            ratios,
            population,
            inspectors,
            per_target,
            selected,
        };
        let draw = serde_json::to_string(&record).map_err(|e| damaged(format!("cannot record the draw: {e}")))?;
        let fields = json!({
            "run": run,
            "seed": record.seed,
            "population": record.population.len(),
            "selected": record.selected.len(),
            "draw": draw,
        });
        items.insert(
            0,
            GroupItem {
                command: crate::domain::event(&plan.id, "run_drawn", crate::domain::object(fields), "spot-check"),
                required: true,
            },
        );
        match self.writer.submit_group(items).await {
            Ok(_) => {
                tracing::info!(plan = %plan.id, run, population = record.population.len(), selected = record.selected.len(), "spot-check run drawn");
                Ok(Drawn::Yes)
            }
            // Drawn already (by another node, or before a restart): the plan's guard says so.
            Err(e) if matches!(e.error, crate::writer::WriteError::Rejected(_)) && e.index == 0 => Ok(Drawn::Already),
            Err(e) => Err(RunError::Write { plan: plan.id.clone(), error: e.error }),
        }
    }
}
