//! Data-driven workflow tests: every `workflows/scenarios/*.toml` is a story told in commands
//! and clock moves, with the states, armed timers, variables, outbox messages and history each
//! step must leave. One harness runs them all through the writer's pure batch builder (the
//! code the engine commits with), the shipped definitions and calendars, and the domain's
//! fan-out — no gRPC, no database — so a rule change is a readable diff of a scenario.
//!
//! Timers fire in due order at their due instant when the clock moves past them, as the timer
//! service fires them. The harness fails when a scenario's expectation does not hold, and when a
//! transition of a shipped workflow is taken by no scenario.
//!
//! The scenario format is described in `workflows/scenarios/README.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use shenguan::calendar::Calendars;
use shenguan::clock::{display, Millis};
use shenguan::definition::{Registry, Value};
use shenguan::domain::fanout;
use shenguan::machine::{Command, CommandKind, Instance, Message};
use shenguan::writer::batch::{Builder, Built, GroupStep};
use shenguan::writer::{Derive, GroupItem};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[allow(dead_code)] // for people reading the file
    description: String,
    /// The clock when the story starts (RFC 3339).
    clock: String,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    #[serde(default)]
    #[allow(dead_code)] // for people reading the file
    note: String,
    /// Move the clock to this instant, firing every timer due by then.
    advance: Option<String>,
    start: Option<Start>,
    event: Option<Event>,
    /// The command must be refused, with this text in the refusal.
    error: Option<String>,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    instance: String,
    workflow: String,
    vars: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    instance: String,
    name: String,
    #[serde(default)]
    fields: toml::Table,
    /// A fan-out the domain derives in the same group: `supervision_tasks` (on a licence) or
    /// `revocation_notices` (on a revocation).
    derive: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    instance: String,
    /// False: the instance must not exist.
    exists: Option<bool>,
    state: Option<String>,
    /// Exactly the timers armed: name → due (RFC 3339).
    timers: Option<BTreeMap<String, String>>,
    /// These variables have these values (others are not checked); `""` means unset.
    vars: Option<toml::Table>,
    /// The channels of the messages this step wrote for the instance, in order.
    outbox: Option<Vec<String>>,
    /// Texts that must appear in the bodies of this step's messages for the instance.
    outbox_contains: Option<Vec<String>>,
    /// The number of history entries.
    history: Option<u64>,
}

fn instant(text: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is not an RFC 3339 instant: {e}"))
}

fn json(table: &toml::Table) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::to_value(table).map_err(|e| e.to_string())? {
        serde_json::Value::Object(m) => Ok(m),
        other => Err(format!("not a table: {other}")),
    }
}

/// The world a scenario runs in: the instances as committed, the clock, what was covered.
struct World<'a> {
    registry: &'a Registry,
    calendars: &'a Calendars,
    now: Millis,
    instances: HashMap<String, Instance>,
    /// Messages written by the current step, by instance.
    outbox: Vec<(String, Message)>,
    covered: &'a mut BTreeSet<(String, u32, usize)>,
}

const RETENTION: Millis = 7 * 24 * 3_600_000;

impl World<'_> {
    /// Runs one batch at the current clock: `f` adds commands to a builder that holds every
    /// instance; then timers armed already due fire, as the writer does; then it "commits".
    fn batch<T>(&mut self, f: impl FnOnce(&mut Builder<'_>) -> T) -> T {
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut builder = Builder::new(self.registry, self.calendars, 8, RETENTION, self.now, HashMap::new());
        builder.insert_loaded(&ids, self.instances.values().cloned().collect(), HashMap::new());
        let out = f(&mut builder);
        builder.fire_due_now();
        self.commit(builder.finish());
        out
    }

    fn commit(&mut self, built: Built) {
        for ((id, _), rule) in built.batch.history.iter().zip(&built.rules) {
            if let (Some(rule), Some(Ok(instance))) = (rule, built.live.get(id)) {
                self.covered.insert((instance.workflow.clone(), instance.version, *rule));
            }
        }
        for row in built.batch.outbox {
            self.outbox.push((row.instance, row.message));
        }
        for (id, instance) in built.live {
            if let Ok(instance) = instance {
                self.instances.insert(id, instance);
            }
        }
    }

    /// Fires every timer due by `until`, earliest first, each at its due instant.
    fn advance(&mut self, until: Millis) -> Result<(), String> {
        if until < self.now {
            return Err(format!("the clock cannot go back from {} to {}", display(self.now), display(until)));
        }
        loop {
            let next = self
                .instances
                .values()
                .flat_map(|i| i.timers.iter().map(move |(name, t)| (t.due, i.id.clone(), name.clone())))
                .filter(|(due, _, _)| *due <= until)
                .min();
            let Some((due, instance, name)) = next else { break };
            self.now = self.now.max(due);
            let command = Command {
                instance: instance.clone(),
                kind: CommandKind::Timer { name: name.clone(), due },
                actor: "timer".into(),
                request_id: None,
                idempotency: None,
            };
            let (result, _) = self.batch(|b| b.one(&command));
            result.map_err(|e| format!("timer {name} of {instance} due {} did not fire: {e}", display(due)))?;
        }
        self.now = until;
        Ok(())
    }

    fn command(&mut self, command: Command, derive: Option<Derive>) -> Result<(), String> {
        let items = vec![GroupItem { command, required: true }];
        let result = self.batch(|b| loop {
            match b.group(&items, derive.as_ref()) {
                GroupStep::Done(result, _) => break result,
                // Instances the harness does not hold do not exist.
                GroupStep::Load(ids) => {
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    b.insert_loaded(&ids, Vec::new(), HashMap::new());
                }
            }
        });
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    fn check(&self, e: &Expect) -> Result<(), String> {
        let instance = self.instances.get(&e.instance);
        if e.exists == Some(false) {
            return match instance {
                None => Ok(()),
                Some(i) => Err(format!("{} exists (state {})", e.instance, i.state)),
            };
        }
        let i = instance.ok_or_else(|| format!("{} does not exist", e.instance))?;
        let mut problems = Vec::new();
        if let Some(state) = &e.state {
            if &i.state != state {
                problems.push(format!("state is {}, expected {state}", i.state));
            }
        }
        if let Some(timers) = &e.timers {
            let mut want = BTreeMap::new();
            for (name, at) in timers {
                want.insert(name.clone(), instant(at)?);
            }
            let have: BTreeMap<String, Millis> = i.timers.iter().map(|(n, t)| (n.clone(), t.due)).collect();
            if have != want {
                let show = |m: &BTreeMap<String, Millis>| {
                    m.iter().map(|(n, at)| format!("{n} = {}", display(*at))).collect::<Vec<_>>().join(", ")
                };
                problems.push(format!("timers are [{}], expected [{}]", show(&have), show(&want)));
            }
        }
        if let Some(vars) = &e.vars {
            for (name, want) in json(vars)? {
                // An instant is compared as an instant, whatever offset the scenario writes.
                if let (Some(Value::Instant(at)), Some(text)) = (i.vars.get(&name), want.as_str()) {
                    if *at != instant(text)? {
                        problems.push(format!("{name} is {}, expected {text}", display(*at)));
                    }
                    continue;
                }
                let have = i.vars.get(&name).map_or(serde_json::Value::String(String::new()), Value::to_json);
                if have != want {
                    problems.push(format!("{name} is {have}, expected {want}"));
                }
            }
        }
        let messages: Vec<&Message> = self.outbox.iter().filter(|(id, _)| id == &e.instance).map(|(_, m)| m).collect();
        if let Some(channels) = &e.outbox {
            let have: Vec<&str> = messages.iter().map(|m| m.channel.as_str()).collect();
            if &have != channels {
                problems.push(format!("messages on {have:?}, expected {channels:?}"));
            }
        }
        for text in e.outbox_contains.iter().flatten() {
            if !messages.iter().any(|m| m.body.contains(text.as_str())) {
                let bodies: Vec<&str> = messages.iter().map(|m| m.body.as_str()).collect();
                problems.push(format!("no message says {text:?}; messages: {bodies:?}"));
            }
        }
        if let Some(history) = e.history {
            if i.seq != history {
                problems.push(format!("history has {} entries, expected {history}", i.seq));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", e.instance, problems.join("; ")))
        }
    }
}

fn derive(name: &str) -> Result<Derive, String> {
    match name {
        "supervision_tasks" => Ok(Arc::new(|case: &Instance| fanout::supervision_tasks(case, "scenario"))),
        "revocation_notices" => Ok(Arc::new(|case: &Instance| fanout::revocation_notices(case, "scenario"))),
        other => Err(format!("unknown derive {other:?}: supervision_tasks or revocation_notices")),
    }
}

fn step(world: &mut World<'_>, s: &Step) -> Result<(), String> {
    world.outbox.clear();
    if let Some(at) = &s.advance {
        world.advance(instant(at)?)?;
    }
    let command = match (&s.start, &s.event) {
        (Some(_), Some(_)) => return Err("a step has a start or an event, not both".into()),
        (Some(st), None) => Some((
            Command {
                instance: st.instance.clone(),
                kind: CommandKind::Start { workflow: st.workflow.clone(), version: None, vars: json(&st.vars)? },
                actor: "scenario".into(),
                request_id: None,
                idempotency: None,
            },
            None,
        )),
        (None, Some(ev)) => Some((
            Command {
                instance: ev.instance.clone(),
                kind: CommandKind::Event { name: ev.name.clone(), fields: json(&ev.fields)? },
                actor: "scenario".into(),
                request_id: None,
                idempotency: None,
            },
            ev.derive.as_deref().map(derive).transpose()?,
        )),
        (None, None) => None,
    };
    if let Some((command, derive)) = command {
        match (world.command(command, derive), &s.error) {
            (Ok(()), None) => {}
            (Ok(()), Some(want)) => return Err(format!("the command was applied; expected a refusal saying {want:?}")),
            (Err(e), None) => return Err(format!("the command was refused: {e}")),
            (Err(e), Some(want)) if !e.contains(want.as_str()) => {
                return Err(format!("refused with {e:?}, expected a refusal saying {want:?}"))
            }
            (Err(_), Some(_)) => {}
        }
    }
    let problems: Vec<String> = s.expect.iter().filter_map(|e| world.check(e).err()).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n    "))
    }
}

fn run(
    path: &Path,
    registry: &Registry,
    calendars: &Calendars,
    covered: &mut BTreeSet<(String, u32, usize)>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let scenario: Scenario = toml::from_str(&text).map_err(|e| e.to_string())?;
    let mut world = World {
        registry,
        calendars,
        now: instant(&scenario.clock)?,
        instances: HashMap::new(),
        outbox: Vec::new(),
        covered,
    };
    for (n, s) in scenario.steps.iter().enumerate() {
        step(&mut world, s).map_err(|e| format!("step {} ({}):\n    {e}", n + 1, s.note))?;
    }
    Ok(())
}

/// Transitions of `registry`'s definitions that no entry of `covered` took, as `file:line`.
fn uncovered(registry: &Registry, covered: &BTreeSet<(String, u32, usize)>) -> Vec<String> {
    let mut out = Vec::new();
    for def in registry.all() {
        for t in &def.transitions {
            if !covered.contains(&(def.name.clone(), def.version, t.line)) {
                out.push(format!("{}:{} ({} on {} → {})", def.file, t.line, t.from.join("|"), t.event, t.to));
            }
        }
    }
    out
}

fn workflows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows")
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = workflows().join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_holds_and_every_shipped_transition_is_taken() {
    let registry = Registry::from_dir(&workflows()).expect("the shipped workflows load");
    let calendars = Calendars::embedded().expect("calendars");
    let mut covered = BTreeSet::new();
    let files = scenario_files();
    assert!(!files.is_empty(), "no scenarios found");
    let mut failures = Vec::new();
    for path in &files {
        if let Err(e) = run(path, &registry, &calendars, &mut covered) {
            failures.push(format!("{}: {e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), files.len(), failures.join("\n"));
    let missing = uncovered(&registry, &covered);
    assert!(missing.is_empty(), "transitions no scenario takes:\n  {}", missing.join("\n  "));
}

#[test]
fn the_coverage_check_names_a_transition_no_scenario_takes() {
    let registry = Registry::from_dir(&workflows()).expect("the shipped workflows load");
    let calendars = Calendars::embedded().expect("calendars");
    let mut covered = BTreeSet::new();
    let bench = scenario_files().into_iter().find(|p| p.ends_with("bench_case.toml")).expect("bench scenario");
    run(&bench, &registry, &calendars, &mut covered).expect("bench scenario holds");
    let missing = uncovered(&registry, &covered);
    assert!(missing.iter().any(|m| m.contains("approval_case") && m.contains("→ revoked")), "{missing:?}");
    assert!(!missing.iter().any(|m| m.contains("bench_case")), "{missing:?}");
}

#[test]
fn a_wrong_expectation_fails_its_scenario_with_the_difference() {
    let registry = Registry::from_dir(&workflows()).expect("the shipped workflows load");
    let calendars = Calendars::embedded().expect("calendars");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wrong.toml");
    let text = std::fs::read_to_string(workflows().join("scenarios/bench_case.toml")).expect("bench scenario");
    // The first expected state, changed.
    let wrong = text.replacen("state = \"pending\"", "state = \"licensed\"", 1);
    assert_ne!(wrong, text, "the bench scenario expects a pending state");
    std::fs::write(&path, wrong).expect("write");
    let e = run(&path, &registry, &calendars, &mut BTreeSet::new()).expect_err("must fail");
    assert!(e.contains("state is pending, expected licensed"), "{e}");
}
