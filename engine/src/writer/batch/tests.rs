//! The batch builder on its own: no database, no task, no clock — the rules of one batch.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::machine::Idempotency;

/// A workflow of three states with a deadline, for the writer's own tests.
pub(in crate::writer) const DEF: &str = r#"
name = "t"
version = 1
initial = "open"
terminal = ["done"]

[vars]
owner = "string"
due_at = "instant"

[events]
poke = {}
finish = {}
parent_done = {}
expired = { internal = true }

[[states]]
name = "open"
timers = [{ name = "expiry", at = "due_at", event = "expired", deadline = true, responsible = "owner" }]

[[states]]
name = "late"

[[states]]
name = "done"

[[transitions]]
from = "open"
event = "poke"
to = "open"

[[transitions]]
from = ["open", "late"]
event = "finish"
to = "done"

[[transitions]]
from = ["open", "late"]
event = "parent_done"
to = "done"

[[transitions]]
from = "open"
event = "expired"
to = "late"
"#;

pub(in crate::writer) const NOW: Millis = 1_800_000_000_000;
pub(in crate::writer) const LATER: Millis = NOW + 86_400_000;

struct Fixture {
    registry: Registry,
    calendars: Calendars,
}

fn fixture() -> Fixture {
    Fixture {
        registry: Registry::from_sources(&[("t.toml", DEF)]).expect("definition"),
        calendars: Calendars::embedded().expect("calendars"),
    }
}

impl Fixture {
    fn builder(&self, known: HashMap<String, IdempotencyRow>) -> Builder<'_> {
        let mut b = Builder::new(&self.registry, &self.calendars, 8, 7 * 86_400_000, NOW, known);
        // Nothing is stored: every id the tests use has been "looked up" and is absent.
        let ids = ["a", "b", "c", "a/1", "a/2"];
        b.insert_loaded(&ids, Vec::new(), HashMap::new());
        b
    }
}

pub(in crate::writer) fn start(id: &str, due: Millis) -> Command {
    let vars = json!({"owner": format!("owner of {id}"), "due_at": due});
    let serde_json::Value::Object(vars) = vars else { unreachable!() };
    Command {
        instance: id.into(),
        kind: CommandKind::Start { workflow: "t".into(), version: None, vars },
        actor: "test".into(),
        request_id: None,
        idempotency: None,
    }
}

pub(in crate::writer) fn event(id: &str, name: &str) -> Command {
    Command {
        instance: id.into(),
        kind: CommandKind::Event { name: name.into(), fields: serde_json::Map::new() },
        actor: "test".into(),
        request_id: None,
        idempotency: None,
    }
}

pub(in crate::writer) fn keyed(command: Command, key: &str) -> Command {
    let idempotency = Idempotency::of_command("test", key, &command.instance, &command.kind);
    Command { request_id: Some(key.into()), idempotency: Some(idempotency), ..command }
}

fn required(command: Command) -> GroupItem {
    GroupItem { command, required: true }
}

fn done(step: GroupStep) -> (Result<Vec<Option<Applied>>, GroupError>, bool) {
    match step {
        GroupStep::Done(result, needs_commit) => (result, needs_commit),
        GroupStep::Load(ids) => panic!("unexpected load of {ids:?}"),
    }
}

#[test]
fn two_commands_to_one_instance_in_one_batch_see_each_other_and_write_one_row() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let (first, needs) = b.one(&start("a", LATER));
    assert!(needs);
    assert_eq!(first.expect("start").seq, 1);
    let (second, _) = b.one(&event("a", "finish"));
    let second = second.expect("finish sees the start of the same batch");
    assert_eq!((second.seq, second.instance.state.as_str()), (2, "done"));
    let built = b.finish();
    assert_eq!(built.batch.history.len(), 2);
    assert_eq!(built.batch.instances.len(), 1, "one instance row, the last state");
    assert_eq!(built.batch.instances[0].state, "done");
    // Armed by the start, cancelled by the finish: the timer row ends deleted, and the wheel
    // is told to insert then cancel.
    assert_eq!(built.batch.timers, vec![(("a".to_owned(), "expiry".to_owned()), None)]);
    let key = TimerKey { instance: "a".into(), name: "expiry".into(), due: LATER };
    assert_eq!(built.wheel_ops, vec![WheelOp::Insert(key.clone()), WheelOp::Cancel(key)]);
}

#[test]
fn a_group_is_all_or_nothing_when_a_later_required_member_is_refused() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let items = vec![required(start("a", LATER)), required(start("b", LATER)), required(event("c", "finish"))];
    let (result, needs_commit) = done(b.group(&items, None));
    let error = result.expect_err("c does not exist");
    assert_eq!((error.index, error.instance.as_str()), (2, "c"));
    assert!(matches!(error.error, WriteError::Rejected(Rejection::NotFound { .. })));
    assert!(!needs_commit);
    let built = b.finish();
    assert!(built.batch.is_empty(), "nothing of the refused group is written: {:?}", built.batch);
    assert!(built.wheel_ops.is_empty());
    // And a later command of the same batch does not see the refused group's instances.
    let mut b = f.builder(HashMap::new());
    let _ = b.group(&items, None);
    assert!(b.one(&event("a", "finish")).0.is_err(), "a was never created");
}

#[test]
fn an_optional_member_that_is_refused_is_skipped() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let items = vec![required(start("a", LATER)), GroupItem { command: event("c", "finish"), required: false }];
    let (result, needs_commit) = done(b.group(&items, None));
    let answers = result.expect("the group applies");
    assert!(answers[0].is_some() && answers[1].is_none());
    assert!(needs_commit);
    assert_eq!(b.finish().batch.history.len(), 1);
}

#[test]
fn a_retried_group_answers_the_first_application_and_writes_nothing_new() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let items = vec![required(keyed(start("a", LATER), "r-1")), required(start("b", LATER))];
    let (first, _) = done(b.group(&items, None));
    let first = first.expect("first");
    // The same group again in the same batch: a duplicate, true only once the batch commits.
    let (again, needs_commit) = done(b.group(&items, None));
    let again = again.expect("retry");
    assert!(needs_commit, "the first application is in this very batch");
    let (a0, r0) = (first[0].as_ref().expect("a"), again[0].as_ref().expect("a"));
    assert_eq!((r0.seq, r0.duplicate), (a0.seq, true));
    assert!(again[1].is_none(), "the other members are not decided again");
    let built = b.finish();
    assert_eq!(built.batch.history.len(), 2, "a and b once each");
    assert_eq!(built.batch.idempotency.len(), 1);

    // In a later batch the stored key answers the same way, without needing a commit.
    let (key, row) = built.batch.idempotency[0].clone();
    let mut b = f.builder(HashMap::from([(key, row)]));
    let a = match built.live.get("a") {
        Some(Ok(instance)) => instance.clone(),
        other => panic!("a is live: {other:?}"),
    };
    b.insert_loaded(&["a"], vec![a], HashMap::new());
    let (later, needs_commit) = done(b.group(&items, None));
    assert!(!needs_commit);
    assert!(later.expect("retry").first().and_then(Option::as_ref).is_some_and(|a| a.duplicate));
    assert!(b.finish().batch.is_empty());

    // The same request id with another request is refused, naming the id.
    let other = vec![required(keyed(start("a", LATER + 1), "r-1"))];
    let mut b = f.builder(HashMap::from([built.batch.idempotency[0].clone()]));
    let (refused, _) = done(b.group(&other, None));
    assert_eq!(refused.expect_err("reused").error, WriteError::KeyReused { key: "r-1".into() });
}

#[test]
fn a_derived_fan_out_asks_for_what_it_lacks_then_applies_in_the_same_group() {
    let f = fixture();
    let mut b = Builder::new(&f.registry, &f.calendars, 8, 7 * 86_400_000, NOW, HashMap::new());
    b.insert_loaded(&["a"], Vec::new(), HashMap::new());
    // The parent finishing tells its children, which the batch has not loaded yet.
    let derive: Derive = Arc::new(|parent: &Instance| {
        Ok((1..=2)
            .map(|n| GroupItem { command: event(&format!("{}/{n}", parent.id), "parent_done"), required: false })
            .collect())
    });
    let items = vec![required(start("a", LATER))];
    match b.group(&items, Some(&derive)) {
        GroupStep::Load(ids) => assert_eq!(ids, vec!["a/1".to_owned(), "a/2".to_owned()]),
        GroupStep::Done(result, _) => panic!("should ask to load the children first: {result:?}"),
    }
    assert!(b.is_empty(), "nothing recorded before the load");
    // a/1 exists (an open child), a/2 does not: it is skipped.
    let mut child = Builder::new(&f.registry, &f.calendars, 8, 0, NOW, HashMap::new());
    child.insert_loaded(&["a/1"], Vec::new(), HashMap::new());
    let Ok(c1) = child.one(&start("a/1", LATER)).0 else { panic!("child") };
    b.insert_loaded(&["a/1", "a/2"], vec![c1.instance], HashMap::new());
    let (result, _) = done(b.group(&items, Some(&derive)));
    let answers = result.expect("group");
    // One answer per member, the derived ones after the given one: a/2 does not exist, skipped.
    assert_eq!(answers.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, true, false]);
    let built = b.finish();
    let states: Vec<(&str, &str)> = built.batch.instances.iter().map(|r| (r.id.as_str(), r.state.as_str())).collect();
    assert_eq!(states, vec![("a", "open"), ("a/1", "done")]);
}

#[test]
fn the_ids_a_group_will_derive_are_known_ahead_and_nothing_is_recorded() {
    let f = fixture();
    let mut b = Builder::new(&f.registry, &f.calendars, 8, 7 * 86_400_000, NOW, HashMap::new());
    b.insert_loaded(&["a", "a/1"], Vec::new(), HashMap::new());
    let derive: Derive = Arc::new(|parent: &Instance| {
        Ok((1..=3)
            .map(|n| GroupItem { command: event(&format!("{}/{n}", parent.id), "parent_done"), required: false })
            .collect())
    });
    let items = vec![required(start("a", LATER))];
    assert_eq!(b.derived_ids(&items, Some(&derive)), vec!["a/2".to_owned(), "a/3".to_owned()], "a/1 is loaded");
    assert!(b.derived_ids(&items, None).is_empty());
    assert!(b.is_empty(), "a hint records nothing");
    b.insert_loaded(&["a/2", "a/3"], Vec::new(), HashMap::new());
    assert!(matches!(b.group(&items, Some(&derive)), GroupStep::Done(Ok(_), true)), "no further load needed");
}

/// A group's first command decided ahead (to learn what it derives) is not decided again when
/// the group's turn comes — unless the batch changed its instance in between: a stale decision
/// would apply a command the instance no longer allows.
#[test]
fn a_decision_taken_ahead_is_reused_only_on_the_instance_it_was_taken_on() {
    let f = fixture();
    let derive: Derive = Arc::new(|parent: &Instance| {
        Ok(vec![GroupItem { command: event(&format!("{}/1", parent.id), "parent_done"), required: false }])
    });
    let open_a = || {
        let mut earlier = Builder::new(&f.registry, &f.calendars, 8, 0, NOW, HashMap::new());
        earlier.insert_loaded(&["a"], Vec::new(), HashMap::new());
        let Ok(a) = earlier.one(&start("a", LATER)).0 else { panic!("start") };
        a.instance
    };
    let items = vec![required(event("a", "finish"))];

    // Nothing in between: the hint's decision is the group's.
    let mut b = Builder::new(&f.registry, &f.calendars, 8, 7 * 86_400_000, NOW, HashMap::new());
    b.insert_loaded(&["a", "a/1"], vec![open_a()], HashMap::new());
    assert!(b.derived_ids(&items, Some(&derive)).is_empty(), "a/1 is loaded (absent)");
    let (result, _) = done(b.group(&items, Some(&derive)));
    assert_eq!(result.expect("group")[0].as_ref().expect("applied").instance.state, "done");

    // The batch finished `a` before the group's turn: decided again, and refused.
    let mut b = Builder::new(&f.registry, &f.calendars, 8, 7 * 86_400_000, NOW, HashMap::new());
    b.insert_loaded(&["a", "a/1"], vec![open_a()], HashMap::new());
    b.derived_ids(&items, Some(&derive));
    let (first, _) = b.one(&event("a", "finish"));
    assert_eq!(first.expect("finished").instance.state, "done");
    let (result, _) = done(b.group(&items, Some(&derive)));
    let refused = result.expect_err("a done case cannot finish again");
    assert!(matches!(refused.error, WriteError::Rejected(_)), "{refused:?}");
}

#[test]
fn a_derive_that_fails_refuses_the_group() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let derive: Derive = Arc::new(|_: &Instance| Err(WriteError::DataLoss("damaged".into())));
    let (result, _) = done(b.group(&[required(start("a", LATER))], Some(&derive)));
    assert_eq!(result.expect_err("refused").error, WriteError::DataLoss("damaged".into()));
    assert!(b.finish().batch.is_empty());
}

#[test]
fn a_timer_armed_already_due_fires_in_the_same_batch_and_names_the_responsible_party() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let (started, _) = b.one(&start("a", NOW - 1));
    assert_eq!(started.expect("start").instance.state, "open");
    b.fire_due_now();
    let built = b.finish();
    assert_eq!(built.batch.instances[0].state, "late", "the deadline fired in the batch");
    assert_eq!(built.fired, vec![Fired { due: NOW - 1, workflow: "t".into(), breach_of: Some("owner of a".into()) }]);
    assert_eq!(built.batch.timers, vec![(("a".to_owned(), "expiry".to_owned()), None)], "its row is deleted");
}

#[test]
fn a_damaged_row_is_data_loss_for_its_commands_only() {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    let row = InstanceRow { workflow: "gone".into(), ..InstanceRow::of(&fake_instance("b"), 0) };
    b.insert_loaded(&["b"], Vec::new(), HashMap::from([("b".to_owned(), row)]));
    assert!(matches!(b.one(&event("b", "finish")).0, Err(WriteError::DataLoss(_))));
    assert!(b.one(&start("a", LATER)).0.is_ok(), "the rest of the batch goes on");
}

fn fake_instance(id: &str) -> Instance {
    let f = fixture();
    let mut b = f.builder(HashMap::new());
    b.one(&start(id, LATER)).0.expect("start").instance
}
