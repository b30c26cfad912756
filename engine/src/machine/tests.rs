//! Unit tests of `decide`: every transition kind, guards, timers armed and cancelled, rejections.

use super::*;
use crate::definition::{parse, Definition};
use serde_json::json;

const DEF: &str = r#"
name = "m"
version = 1
initial = "open"
terminal = ["closed"]

[vars]
region = "string"
due = "date"
grade = "string?"
done_at = "instant?"
mobile = "string?"

[events]
touch = {}
review = { fields = { grade = "string", score = "int?" } }
close = {}
revoked = { fields = { reason = "string?" } }
remind = { internal = true }
expire = { internal = true }
chase = { internal = true }

[[states]]
name = "open"
timers = [
  { name = "reminder", at = "due - 1 calendar day at 09:00", event = "remind" },
  { name = "expiry", at = "due at end of day", event = "expire" },
]

[[states]]
name = "review"
timers = [{ name = "answer", at = "entry + 3 working days at end of day", event = "expire" }]
emit = [{ channel = "office", type = "entered", data = { case_id = "instance" }, template = "case {instance} entered {state}" }]

[[states]]
name = "closed"

[[transitions]]
from = "open"
event = "touch"
to = "open"
arm = [{ name = "chaser", at = "now + 2 hours", event = "chase" }]

[[transitions]]
from = "open"
event = "remind"
to = "open"
emit = [{ channel = "sms", to = "mobile", type = "reminder", data = { due = "due", mobile = "mobile" }, template = "hand in by {due}" }]

[[transitions]]
from = ["open", "review"]
event = "review"
guard = "event.grade == 'A'"
to = "closed"
set = { grade = "event.grade", done_at = "now" }

[[transitions]]
from = "open"
event = "review"
guard = "event.score is set"
to = "review"
set = { grade = "event.grade" }
cancel = ["chaser"]

[[transitions]]
from = ["open", "review"]
event = "expire"
to = "closed"

[[transitions]]
from = "review"
event = "chase"
to = "review"

[[transitions]]
from = "*"
event = "close"
to = "closed"

[[transitions]]
from = "closed"
event = "revoked"
guard = "event.reason is set"
to = "closed"
emit = [{ channel = "office", type = "told", data = { case_id = "instance", reason = "event.reason" }, template = "{instance}: {event.reason}" }]
"#;

fn def() -> Definition {
    parse("m.toml", DEF).unwrap_or_else(|e| panic!("{e:?}"))
}

fn cals() -> Calendars {
    Calendars::embedded().expect("calendars")
}

fn t(s: &str) -> Millis {
    chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339").timestamp_millis()
}

fn cmd(kind: CommandKind) -> Command {
    Command { instance: "c1".into(), kind, actor: "test".into(), request_id: None, idempotency: None }
}

fn event(name: &str, fields: serde_json::Value) -> Command {
    let serde_json::Value::Object(fields) = fields else { panic!("object") };
    cmd(CommandKind::Event { name: name.into(), fields })
}

fn start(vars: serde_json::Value) -> Command {
    let serde_json::Value::Object(vars) = vars else { panic!("object") };
    cmd(CommandKind::Start { workflow: "m".into(), version: None, vars })
}

/// Runs `steps` from a fresh start, checking each step's outcome, then replays the history.
fn run(steps: &[(Command, Millis)]) -> (Instance, Vec<HistoryEntry>, Vec<Transition>) {
    let (def, cals) = (def(), cals());
    let mut instance: Option<Instance> = None;
    let mut history = Vec::new();
    let mut transitions = Vec::new();
    for (command, now) in steps {
        let tr = decide(&def, instance.as_ref(), command, *now, &cals).unwrap_or_else(|r| panic!("{command:?}: {r}"));
        history.push(tr.history.clone());
        instance = Some(tr.instance.clone());
        transitions.push(tr);
    }
    let instance = instance.expect("started");
    replay::verify(&def, &instance, &history, &any(&cals)).expect("replay reproduces the row");
    (instance, history, transitions)
}

#[test]
fn start_arms_the_initial_state_timers() {
    let (instance, history, trs) = run(&[(
        start(json!({"region": "320700", "due": "2026-10-09", "mobile": "13800000000"})),
        t("2026-09-28T10:00:00+08:00"),
    )]);
    assert_eq!(instance.state, "open");
    assert_eq!(instance.seq, 1);
    assert_eq!(instance.timers["reminder"].due, t("2026-10-08T09:00:00+08:00"));
    assert_eq!(instance.timers["expiry"].due, t("2026-10-09T23:59:59.999+08:00"));
    assert_eq!(history[0].from, None);
    assert_eq!(trs[0].arm.len(), 2);
    assert!(trs[0].remove.is_empty());
}

#[test]
fn a_self_transition_keeps_state_timers_and_a_timer_event_emits() {
    let t0 = t("2026-09-28T10:00:00+08:00");
    let remind_at = t("2026-10-08T09:00:00+08:00");
    let (instance, history, trs) = run(&[
        (start(json!({"region": "320700", "due": "2026-10-09", "mobile": "13800000000"})), t0),
        (cmd(CommandKind::Timer { name: "reminder".into(), due: remind_at }), remind_at + 3),
    ]);
    assert_eq!(instance.state, "open");
    assert!(instance.timers.contains_key("expiry"), "internal transition keeps the other timer");
    assert!(!instance.timers.contains_key("reminder"), "the fired timer is consumed");
    assert_eq!(trs[1].remove, vec!["reminder".to_owned()]);
    assert_eq!(
        trs[1].outbox,
        vec![Message {
            template: None,
            channel: "sms".into(),
            recipient: Some("13800000000".into()),
            body: "hand in by 2026-10-09".into(),
            kind: Some("reminder".into()),
            schema_version: 1,
            data: serde_json::json!({"due": "2026-10-09", "mobile": "13800000000"}).as_object().cloned(),
        }]
    );
    assert!(history[1].cancelled.is_empty());
}

#[test]
fn leaving_a_state_cancels_its_timers_and_entering_arms_the_next() {
    let t0 = t("2026-09-28T10:00:00+08:00");
    // Entered on 2026-09-30: 3 working days run past National Day to the make-up Saturday.
    let t1 = t("2026-09-30T11:00:00+08:00");
    let (instance, history, trs) = run(&[
        (start(json!({"region": "320700", "due": "2026-10-09"})), t0),
        (event("touch", json!({})), t0 + 1),
        (event("review", json!({"grade": "B", "score": 70})), t1),
    ]);
    assert_eq!(instance.state, "review");
    assert_eq!(instance.vars["grade"], Value::Str("B".into()));
    assert_eq!(instance.timers.keys().collect::<Vec<_>>(), vec!["answer"]);
    assert_eq!(instance.timers["answer"].due, t("2026-10-10T23:59:59.999+08:00"));
    let cancelled: Vec<&String> = history[2].cancelled.keys().collect();
    assert_eq!(cancelled, vec!["chaser", "expiry", "reminder"]);
    assert_eq!(trs[2].outbox[0].body, "case c1 entered review");
    assert_eq!(history[1].armed["chaser"], t0 + 1 + 2 * 3_600_000);
}

#[test]
fn guards_pick_the_first_transition_that_holds() {
    let t0 = t("2026-09-28T10:00:00+08:00");
    let (instance, history, trs) = run(&[
        (start(json!({"region": "320700", "due": "2026-10-09"})), t0),
        (event("review", json!({"grade": "A", "score": 99})), t0 + 5),
    ]);
    assert_eq!(instance.state, "closed", "the A-grade transition comes first");
    assert_eq!(instance.vars["done_at"], Value::Instant(t0 + 5));
    assert!(instance.timers.is_empty(), "a terminal state cancels every timer");
    assert_eq!(history[1].cancelled.len(), 2);
    assert_eq!(trs[1].remove.len(), 2);

    let (def, cals) = (def(), cals());
    let open = decide(&def, None, &start(json!({"region": "320700", "due": "2026-10-09"})), t0, &cals)
        .expect("start")
        .instance;
    let r = decide(&def, Some(&open), &event("review", json!({"grade": "C"})), t0, &cals);
    assert_eq!(r, Err(Rejection::GuardRejected { state: "open".into(), event: "review".into() }));
}

/// An instance started at `t0`, and the same instance closed.
fn open_and_closed(def: &Definition, cals: &Calendars, t0: Millis) -> (Instance, Instance) {
    let open =
        decide(def, None, &start(json!({"region": "320700", "due": "2026-10-09"})), t0, cals).expect("start").instance;
    let closed = decide(def, Some(&open), &event("close", json!({})), t0, cals).expect("close").instance;
    (open, closed)
}

#[test]
fn an_ended_instance_takes_a_notice_stays_where_it_is_and_only_emits() {
    let (def, cals) = (def(), cals());
    let t0 = t("2026-09-28T10:00:00+08:00");
    let (open, closed) = open_and_closed(&def, &cals, t0);
    let told = decide(&def, Some(&closed), &event("revoked", json!({"reason": "撤销"})), t0, &cals).expect("notice");
    assert_eq!(told.instance.state, "closed");
    assert_eq!(told.instance.vars, closed.vars, "a notice changes nothing");
    assert!(told.instance.timers.is_empty() && told.arm.is_empty());
    assert_eq!(told.outbox.len(), 1);
    assert_eq!(told.outbox[0].body, "c1: 撤销");
    // Without what its guard asks, the ended instance refuses, as it refuses every other event.
    assert_eq!(
        decide(&def, Some(&closed), &event("revoked", json!({})), t0, &cals).map(|t| t.instance.state),
        Err(Rejection::GuardRejected { state: "closed".into(), event: "revoked".into() })
    );
    // An open instance has no such transition.
    assert!(matches!(
        decide(&def, Some(&open), &event("revoked", json!({"reason": "x"})), t0, &cals),
        Err(Rejection::InvalidTransition { .. })
    ));
}

#[test]
fn refusals_name_the_state_the_event_or_the_field() {
    let (def, cals) = (def(), cals());
    let t0 = t("2026-09-28T10:00:00+08:00");
    let (open, closed) = open_and_closed(&def, &cals, t0);
    let cases: Vec<(Option<&Instance>, Command, Rejection)> = vec![
        (
            Some(&closed),
            event("touch", json!({})),
            Rejection::InvalidTransition { state: "closed".into(), event: "touch".into() },
        ),
        (Some(&open), event("nope", json!({})), Rejection::UnknownEvent { workflow: "m".into(), event: "nope".into() }),
        (Some(&open), event("remind", json!({})), Rejection::InternalEvent { event: "remind".into() }),
        (
            Some(&open),
            event("review", json!({})),
            Rejection::InvalidInput { field: "grade".into(), message: "required".into() },
        ),
        (
            Some(&open),
            event("review", json!({"grade": 5})),
            Rejection::InvalidInput { field: "grade".into(), message: "expected string, got 5".into() },
        ),
        (
            Some(&open),
            event("review", json!({"grade": "A", "x": 1})),
            Rejection::InvalidInput { field: "x".into(), message: "unknown field".into() },
        ),
        (None, event("touch", json!({})), Rejection::NotFound { instance: "c1".into() }),
        (Some(&open), start(json!({})), Rejection::AlreadyExists { instance: "c1".into() }),
        (
            None,
            start(json!({"region": "320700"})),
            Rejection::InvalidInput { field: "due".into(), message: "required".into() },
        ),
        (
            None,
            start(json!({"region": "320700", "due": "10/09/2026"})),
            Rejection::InvalidInput {
                field: "due".into(),
                message: "expected a date YYYY-MM-DD, got \"10/09/2026\"".into(),
            },
        ),
        (
            Some(&open),
            cmd(CommandKind::Timer { name: "reminder".into(), due: 1 }),
            Rejection::StaleTimer { name: "reminder".into() },
        ),
        (
            Some(&closed),
            cmd(CommandKind::Timer { name: "expiry".into(), due: open.timers["expiry"].due }),
            Rejection::StaleTimer { name: "expiry".into() },
        ),
    ];
    for (instance, command, want) in cases {
        assert_eq!(decide(&def, instance, &command, t0, &cals), Err(want.clone()), "{command:?}");
    }
    // A deadline in a year with no notice is refused under the `refuse` policy, naming the year.
    let r = decide(
        &def,
        Some(&open),
        &event("review", json!({"grade": "B", "score": 1})),
        t("2026-12-30T10:00:00+08:00"),
        &cals.clone().with_policy(crate::calendar::Policy::Refuse),
    );
    assert!(matches!(&r, Err(Rejection::Deadline { timer, .. }) if timer == "answer"), "{r:?}");
    assert!(r.expect_err("refused").to_string().contains("year 2027 is not loaded"));
}

#[test]
fn a_transition_armed_timer_firing_where_nothing_handles_it_is_consumed_and_recorded() {
    let t0 = t("2026-09-28T10:00:00+08:00");
    let (def, cals) = (def(), cals());
    let s = decide(&def, None, &start(json!({"region": "320700", "due": "2026-10-09"})), t0, &cals).expect("start");
    let touched = decide(&def, Some(&s.instance), &event("touch", json!({})), t0, &cals).expect("touch");
    let due = touched.instance.timers["chaser"].due;
    let fired =
        decide(&def, Some(&touched.instance), &cmd(CommandKind::Timer { name: "chaser".into(), due }), due, &cals)
            .expect("fired");
    assert_eq!(fired.instance.state, "open");
    assert!(!fired.history.handled);
    assert_eq!(fired.remove, vec!["chaser".to_owned()]);
    assert!(!fired.instance.timers.contains_key("chaser"));
    let history = [s.history, touched.history, fired.history];
    replay::verify(&def, &fired.instance, &history, &any(&cals)).expect("replays");
}

#[test]
fn replay_catches_a_tampered_row_or_history() {
    let t0 = t("2026-09-28T10:00:00+08:00");
    let (instance, history, _) =
        run(&[(start(json!({"region": "320700", "due": "2026-10-09"})), t0), (event("touch", json!({})), t0 + 1)]);
    let (def, cals) = (def(), cals());
    let mut bad = instance.clone();
    bad.state = "closed".into();
    assert!(matches!(
        replay::verify(&def, &bad, &history, &any(&cals)),
        Err(replay::Divergence::Row { field: "state", .. })
    ));
    let mut bad = instance.clone();
    bad.timers.clear();
    assert!(matches!(
        replay::verify(&def, &bad, &history, &any(&cals)),
        Err(replay::Divergence::Row { field: "timers", .. })
    ));
    let mut tampered = history.clone();
    tampered[1].to = "review".into();
    assert!(matches!(
        replay::verify(&def, &instance, &tampered, &any(&cals)),
        Err(replay::Divergence::Entry { seq: 2, .. })
    ));
    assert!(matches!(
        replay::verify(&def, &instance, &history[1..], &any(&cals)),
        Err(replay::Divergence::Malformed { .. })
    ));
}

/// Every generation answered by `cals` (these tests compute with one calendar set).
fn any(cals: &Calendars) -> impl Fn(u64) -> Option<std::sync::Arc<Calendars>> + '_ {
    move |_| Some(std::sync::Arc::new(cals.clone()))
}
