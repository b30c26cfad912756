//! Credit-graded spot checks (双随机、一公开, DOMAIN.md §12): plans and draws. Pure: the
//! runner that reads plans and writes draws is [`crate::timer::spotcheck`].
//!
//! A plan is an instance of `spot_check_plan` whose cron timer counts runs as they fall due.
//! The runner draws each run not yet drawn: the population (enterprises licensed on a
//! handling item linked to the plan's supervision item, in the plan's region, each with the
//! credit grade of its latest case), a fresh random seed, the targets — per credit grade, the
//! configured sampling ratio of that grade's enterprises — and for each target its inspectors,
//! drawn from the office's inspectors. The whole draw (seed, population, ratios, targets) goes
//! into the plan's history with the `run_drawn` event, in the transaction that starts one
//! `spot_check_task` per target, so any draw can be done again from its record ([`draw`]) and
//! compared.
//!
//! The draw is a pure function of the seed and its inputs. It uses ChaCha20 (whose stream
//! `rand_chacha` keeps stable across releases) and its own integer and fraction sampling, not
//! `rand`'s distributions, whose values may change between versions.

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::credit::CreditGrades;
use super::Refusal;
use crate::catalog::{Catalogs, Kind};
use crate::machine::{Command, CommandKind};

/// The plan workflow.
pub const PLAN_WORKFLOW: &str = "spot_check_plan";
/// The inspection workflow.
pub const TASK_WORKFLOW: &str = "spot_check_task";
/// The name of the draw algorithm, recorded with every draw.
pub const ALGORITHM: &str = "chacha20-fisher-yates-v1";
/// Default sampling ratios: fewer checks for good standing, more for dishonesty (§12).
pub const DEFAULT_RATIOS: &str = "A=0.05,B=0.1,C=0.2,D=0.5,dishonest=1";
/// The case states whose applicant holds a licence.
pub const LICENSED_STATES: [&str; 3] = ["licensed", "closed", "revocation_pending"];

/// The sampling ratio per credit grade.
pub type Ratios = BTreeMap<String, f64>;

/// Reads `A=0.05,B=0.1,…`: every grade must be configured, every ratio in 0..=1; grades not
/// named are never drawn.
pub fn parse_ratios(text: &str, credit: &CreditGrades) -> Result<Ratios, String> {
    let mut out = Ratios::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (grade, ratio) = part.split_once('=').ok_or_else(|| format!("{part:?} is not GRADE=RATIO"))?;
        let grade = credit.parse(grade)?.to_owned();
        let ratio: f64 = ratio.trim().parse().map_err(|_| format!("{part:?}: {ratio:?} is not a number"))?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!("{part:?}: a ratio is from 0 to 1"));
        }
        if out.insert(grade.clone(), ratio).is_some() {
            return Err(format!("grade {grade} is given twice"));
        }
    }
    if out.is_empty() {
        return Err("no ratio given".into());
    }
    Ok(out)
}

/// The text form of ratios, as a plan stores them.
pub fn ratios_text(ratios: &Ratios) -> String {
    ratios.iter().map(|(g, r)| format!("{g}={r}")).collect::<Vec<_>>().join(",")
}

/// A plan as an administrator asks for it.
#[derive(Debug, Clone)]
pub struct NewPlan {
    /// The plan's code, unique in its region.
    pub code: String,
    /// The region whose enterprises are drawn.
    pub region: String,
    /// A name for people.
    pub name: String,
    /// The supervising office whose inspectors are drawn (its department is the plan's).
    pub office: String,
    /// The supervision item: enterprises licensed on handling items linked to it are drawn.
    pub supervision_item: String,
    /// The cron schedule.
    pub schedule: String,
    /// Move a run on a day off to the next working day.
    pub working_days_only: bool,
    /// `GRADE=RATIO,…`; empty: the defaults.
    pub ratios: String,
    /// Inspectors per target (default 2).
    pub inspectors_per_target: u32,
}

/// The id of a plan.
pub fn plan_id(region: &str, code: &str) -> String {
    format!("SC/{region}/{code}")
}

/// The ratios a plan stores (written by [`ratios_text`] from checked ones); what does not read
/// is left out.
pub fn read_ratios(text: &str) -> Ratios {
    text.split(',')
        .filter_map(|p| p.split_once('='))
        .filter_map(|(g, r)| r.parse().ok().map(|r| (g.to_owned(), r)))
        .collect()
}

/// Checks a plan against the catalogs and gives the command that starts it.
pub fn plan(new: &NewPlan, catalogs: &Catalogs, credit: &CreditGrades, actor: &str) -> Result<Command, Refusal> {
    super::check("region", super::check_region(&new.region))?;
    super::check("code", super::check_case_no(&new.code))?;
    super::check("name", super::check_text(&new.name, 200))?;
    super::check("schedule", crate::definition::schedule::parse(&new.schedule).map(|_| ()))?;
    let ratios = parse_ratios(if new.ratios.trim().is_empty() { DEFAULT_RATIOS } else { &new.ratios }, credit)
        .map_err(|e| Refusal::invalid("ratios", e))?;
    let per = if new.inspectors_per_target == 0 { 2 } else { new.inspectors_per_target };
    if per > 10 {
        return Err(Refusal::invalid("inspectors_per_target", "at most 10"));
    }
    let item = catalogs.get(Kind::SupervisionItems, &new.supervision_item).ok_or_else(|| {
        Refusal::invalid(
            "supervision_item",
            format!("{:?} is not in the supervision item catalog", new.supervision_item),
        )
    })?;
    let office = catalogs
        .get(Kind::Offices, &new.office)
        .ok_or_else(|| Refusal::invalid("office", format!("{:?} is not in the organisation", new.office)))?;
    let department = office.get("department").cloned().unwrap_or_default();
    if item.get("department") != Some(&department) {
        return Err(Refusal::Precondition(format!(
            "office: {} belongs to {department}; {} is supervised by {}",
            new.office,
            new.supervision_item,
            item.get("department").map_or("", String::as_str)
        )));
    }
    let inspectors = catalogs.inspectors(&new.office).len();
    if inspectors < per as usize {
        return Err(Refusal::Precondition(format!(
            "inspectors_per_target: {} has {inspectors} inspector(s) in the organisation, fewer than {per}",
            new.office
        )));
    }
    let vars = json!({
        "region": new.region,
        "plan_name": new.name,
        "department": department,
        "office": new.office,
        "supervision_item": new.supervision_item,
        "schedule": new.schedule.trim(),
        "working_days_only": new.working_days_only,
        "ratios": ratios_text(&ratios),
        "inspectors_per_target": per,
        "created_by": crate::auth::Attribution::decode(actor).sub,
        "runs": 0,
        "drawn": 0,
    });
    Ok(super::start(&plan_id(&new.region, &new.code), PLAN_WORKFLOW, super::object(vars), actor))
}

/// One enterprise of a population.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its credit code.
    pub code: String,
    /// Its credit grade (of its latest licensed case).
    pub grade: String,
    /// That case.
    pub case: String,
}

/// One enterprise drawn, with its inspectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its credit code.
    pub code: String,
    /// Its credit grade.
    pub grade: String,
    /// The case it was drawn through.
    pub case: String,
    /// The inspectors drawn for it (codes).
    pub inspectors: Vec<String>,
    /// The inspection task.
    #[serde(default)]
    pub task: String,
}

/// A draw as recorded in the plan's history: everything needed to do it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawRecord {
    /// The algorithm.
    pub algorithm: String,
    /// The seed (decimal, as text: JSON numbers lose 64-bit precision).
    pub seed: String,
    /// The ratios used.
    pub ratios: Ratios,
    /// The population, by code.
    pub population: Vec<Member>,
    /// The office's inspectors, by code.
    pub inspectors: Vec<String>,
    /// Inspectors per target.
    pub per_target: usize,
    /// The targets, by code.
    pub selected: Vec<Target>,
}

fn below(rng: &mut rand_chacha::ChaCha20Rng, n: usize) -> usize {
    let n = n as u64;
    // Rejection sampling: no bias for any n.
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return usize::try_from(x % n).unwrap_or(0);
        }
    }
}

fn fraction(rng: &mut rand_chacha::ChaCha20Rng) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let x = (rng.next_u64() >> 11) as f64;
    x / (1u64 << 53) as f64
}

/// The first `k` of a partial Fisher–Yates shuffle of `0..n`.
fn choose(rng: &mut rand_chacha::ChaCha20Rng, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + below(rng, n - i);
        idx.swap(i, j);
    }
    idx.truncate(k.min(n));
    idx
}

/// Draws targets and inspectors. `population` and `inspectors` are taken in code order, so
/// the draw depends only on their content and the seed. Per grade with `n` enterprises and
/// ratio `r`, `floor(r·n)` are drawn, plus one more with probability `frac(r·n)`: on average
/// exactly `r·n`.
pub fn draw(
    seed: u64,
    population: &[Member],
    ratios: &Ratios,
    inspectors: &[String],
    per_target: usize,
) -> Vec<Target> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut by_grade: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    let mut sorted: Vec<&Member> = population.iter().collect();
    sorted.sort_by(|a, b| a.code.cmp(&b.code));
    for m in sorted {
        by_grade.entry(m.grade.as_str()).or_default().push(m);
    }
    let mut inspectors: Vec<&String> = inspectors.iter().collect();
    inspectors.sort();
    let mut out = Vec::new();
    for (grade, members) in by_grade {
        let ratio = ratios.get(grade).copied().unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss)]
        let expected = ratio * members.len() as f64;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let mut k = expected.floor() as usize;
        if fraction(&mut rng) < expected - expected.floor() {
            k += 1;
        }
        for i in choose(&mut rng, members.len(), k) {
            let m = members[i];
            out.push(Target {
                code: m.code.clone(),
                grade: m.grade.clone(),
                case: m.case.clone(),
                inspectors: Vec::new(),
                task: String::new(),
            });
        }
    }
    out.sort_by(|a, b| a.code.cmp(&b.code));
    for t in &mut out {
        let mut chosen: Vec<String> =
            choose(&mut rng, inspectors.len(), per_target).into_iter().map(|i| inspectors[i].clone()).collect();
        chosen.sort();
        t.inspectors = chosen;
    }
    out
}

/// Does a recorded draw again and says whether it gives the same targets.
pub fn verify(record: &DrawRecord) -> Result<bool, String> {
    let seed: u64 = record.seed.parse().map_err(|_| format!("seed {:?} is not a number", record.seed))?;
    if record.algorithm != ALGORITHM {
        return Err(format!("unknown algorithm {}", record.algorithm));
    }
    let again = draw(seed, &record.population, &record.ratios, &record.inspectors, record.per_target);
    let strip = |t: &[Target]| t.iter().map(|t| (t.code.clone(), t.inspectors.clone())).collect::<Vec<_>>();
    Ok(strip(&again) == strip(&record.selected))
}

/// One run of a plan, read back from its history for publication and audit.
#[derive(Debug, Clone)]
pub struct Run {
    /// 1, 2, …
    pub run: i64,
    /// The instant it was scheduled for.
    pub due_at: Option<i64>,
    /// When it was drawn.
    pub drawn_at: i64,
    /// The draw.
    pub record: DrawRecord,
}

/// The runs of a plan, from its history: each `run_due` timer firing and each `run_drawn`.
pub fn runs(history: &[crate::machine::HistoryEntry]) -> Vec<Run> {
    // The instant each run was scheduled for (not when the firing was applied).
    let dues: Vec<i64> = history
        .iter()
        .filter(|h| h.handled)
        .filter_map(|h| match &h.command {
            CommandKind::Timer { name, due } if name == "run" => Some(*due),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for h in history {
        let CommandKind::Event { name, fields } = &h.command else { continue };
        if name != "run_drawn" {
            continue;
        }
        let run = fields.get("run").and_then(serde_json::Value::as_i64).unwrap_or(0);
        let Some(record) =
            fields.get("draw").and_then(serde_json::Value::as_str).and_then(|d| serde_json::from_str(d).ok())
        else {
            continue;
        };
        let due_at = usize::try_from(run - 1).ok().and_then(|i| dues.get(i)).copied();
        out.push(Run { run, due_at, drawn_at: h.at, record });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(per_grade: &[(&str, usize)]) -> Vec<Member> {
        let mut out = Vec::new();
        for (g, n) in per_grade {
            for i in 0..*n {
                out.push(Member { code: format!("{g}-{i:05}"), grade: (*g).to_owned(), case: format!("c/{g}{i}") });
            }
        }
        out
    }

    #[test]
    fn a_draw_is_a_function_of_its_seed_and_inputs() {
        let p = population(&[("A", 40), ("C", 10)]);
        let ratios: Ratios = [("A".to_owned(), 0.1), ("C".to_owned(), 0.5)].into();
        let inspectors: Vec<String> = (1..=5).map(|i| format!("I{i}")).collect();
        let a = draw(7, &p, &ratios, &inspectors, 2);
        let mut shuffled = p.clone();
        shuffled.reverse();
        assert_eq!(a, draw(7, &shuffled, &ratios, &inspectors, 2), "input order does not matter");
        assert_ne!(a, draw(8, &p, &ratios, &inspectors, 2), "another seed, another draw");
        assert!(a.iter().all(|t| t.inspectors.len() == 2 && t.inspectors[0] != t.inspectors[1]));
        let record = DrawRecord {
            algorithm: ALGORITHM.into(),
            seed: "7".into(),
            ratios: ratios.clone(),
            population: p.clone(),
            inspectors: inspectors.clone(),
            per_target: 2,
            selected: a.clone(),
        };
        assert_eq!(verify(&record), Ok(true));
        let mut forged = record;
        forged.selected.pop();
        assert_eq!(verify(&forged), Ok(false), "a record that was tampered with does not verify");
    }

    #[test]
    fn sampling_ratios_hold_over_many_draws() {
        // 1,000 draws of 37 A, 23 C and 5 dishonest enterprises at 5%, 20% and 100%.
        let p = population(&[("A", 37), ("C", 23), ("dishonest", 5)]);
        let ratios: Ratios = [("A".to_owned(), 0.05), ("C".to_owned(), 0.2), ("dishonest".to_owned(), 1.0)].into();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_member: BTreeMap<String, usize> = BTreeMap::new();
        let draws = 1000;
        for seed in 0..draws {
            for t in draw(seed, &p, &ratios, &[], 0) {
                *counts.entry(t.grade).or_default() += 1;
                *per_member.entry(t.code).or_default() += 1;
            }
        }
        for (grade, n, r) in [("A", 37.0, 0.05), ("C", 23.0, 0.2)] {
            #[allow(clippy::cast_precision_loss)]
            let got = counts[grade] as f64 / (draws as f64 * n);
            // Standard error of the mean ratio is below 0.005 here; four of them is generous.
            assert!((got - r).abs() < 0.02, "grade {grade}: {got} vs {r}");
        }
        assert_eq!(counts["dishonest"], 5 * usize::try_from(draws).expect("n"), "ratio 1 draws every one");
        // Every A enterprise is drawn about equally often (expected 50 of 1,000).
        for i in 0..37 {
            let n = per_member.get(&format!("A-{i:05}")).copied().unwrap_or(0);
            assert!((20..=90).contains(&n), "A-{i:05} drawn {n} times");
        }
    }

    #[test]
    fn ratios_are_checked_against_the_configured_grades() {
        let credit = CreditGrades::default();
        assert!(parse_ratios(DEFAULT_RATIOS, &credit).is_ok());
        assert!(parse_ratios("A=2", &credit).is_err());
        assert!(parse_ratios("AAA=0.1", &credit).is_err());
        assert!(parse_ratios("A=0.1,a=0.2", &credit).is_err());
        assert!(parse_ratios("", &credit).is_err());
        assert!(parse_ratios("A=x", &credit).is_err());
    }
}
