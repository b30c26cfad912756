//! Unit tests of the definition language: what loads, and every kind of error with its file and line.

use super::*;

const BASE: &str = r#"
name = "t"
version = 1
initial = "a"
terminal = ["done"]

[vars]
due = "date"
note = "string?"

[events]
go = { fields = { by = "string" } }
tick = { internal = true }

[[states]]
name = "a"
timers = [{ name = "t1", at = "due at 09:00", event = "tick" }]

[[states]]
name = "done"

[[transitions]]
from = "a"
event = "go"
to = "done"
set = { note = "event.by" }

[[transitions]]
from = "a"
event = "tick"
to = "a"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match parse("t.toml", text) {
        Ok(_) => Vec::new(),
        Err(diags) => diags.iter().map(ToString::to_string).collect(),
    }
}

#[track_caller]
fn assert_error(text: &str, want: &str) {
    let errors = errors_of(text);
    assert!(errors.iter().any(|e| e.contains(want)), "wanted {want:?} in {errors:#?}");
}

#[test]
fn base_and_shipped_definitions_load() {
    assert_eq!(errors_of(BASE), Vec::<String>::new());
    let registry = Registry::embedded().expect("shipped workflows are valid");
    let def = registry.latest("commitment_case").expect("shipped");
    assert_eq!(def.initial, "pending");
    assert_eq!(def.state("pending").expect("state").timers.len(), 2);
    assert_eq!(def.region_var(), Some("region"));
}

#[test]
fn each_kind_of_error_names_file_line_and_problem() {
    // Unknown state in `to`, on the line of its [[transitions]] header.
    assert_error(&BASE.replace("to = \"done\"", "to = \"finished\""), "t.toml:25: unknown state `finished` in `to`");
    assert_error(
        &BASE.replace("from = \"a\"\nevent = \"go\"", "from = \"b\"\nevent = \"go\""),
        "unknown state `b` in `from`",
    );
    assert_error(&BASE.replace("event = \"go\"", "event = \"went\""), "unknown event `went`");
    assert_error(
        &BASE.replace("initial = \"a\"", "initial = \"zz\""),
        "t.toml:4: initial state `zz` is not a declared state",
    );
    // Unreachable and dead-end states.
    let unreachable = format!(
        "{BASE}\n[[states]]\nname = \"island\"\n\n[[transitions]]\nfrom = \"island\"\nevent = \"go\"\nto = \"done\"\n"
    );
    assert_error(&unreachable, "t.toml:33: state `island` is unreachable from the initial state `a`");
    let dead_end = format!("{BASE}\n[[states]]\nname = \"stuck\"\n\n[[transitions]]\nfrom = \"a\"\nevent = \"go\"\nguard = \"note is set\"\nto = \"stuck\"\n");
    assert_error(&dead_end, "state `stuck` is not terminal but has no transition out");
    // The unguarded `go` comes first, so the guarded one after it can never be taken.
    assert_error(&dead_end, "is never taken");
    // A timer whose event its state does not handle.
    assert_error(
        &BASE.replace("event = \"tick\"\nto = \"a\"", "event = \"go\"\nto = \"a\"\nguard = \"note is set\""),
        "timer `t1` of state `a` fires `tick`, but no transition from `a` handles `tick`",
    );
    assert_error(&BASE.replace("event = \"tick\" }]", "event = \"tock\" }]"), "timer `t1` fires unknown event `tock`");
    assert_error(&BASE.replace("event = \"tick\" }]", "event = \"go\" }]"), "requires fields a timer cannot supply");
    // Duplicates.
    assert_error(&BASE.replace("name = \"done\"", "name = \"a\""), "duplicate state `a`");
    let dup = format!("{BASE}\n[[transitions]]\nfrom = \"a\"\nevent = \"go\"\nto = \"done\"\n");
    assert_error(&dup, "duplicate transition from `a` on `go`");
    assert_error(&BASE.replace("timers = [{ name = \"t1\", at = \"due at 09:00\", event = \"tick\" }]", "timers = [{ name = \"t1\", at = \"due at 09:00\", event = \"tick\" }, { name = \"t1\", at = \"due at 10:00\", event = \"tick\" }]"), "duplicate timer `t1`");
    // Expressions, set, templates, cancel.
    assert_error(&BASE.replace("due at 09:00", "due + 1 hour"), "hours and minutes need an instant");
    assert_error(&BASE.replace("due at 09:00", "deadline at 09:00"), "unknown variable `deadline`");
    assert_error(
        &BASE.replace("set = { note = \"event.by\" }", "set = { nope = \"event.by\" }"),
        "`set`: unknown variable `nope`",
    );
    assert_error(
        &BASE.replace("set = { note = \"event.by\" }", "set = { note = \"due\" }"),
        "is of type date, but the variable is of type string",
    );
    assert_error(
        &BASE.replace("set = { note = \"event.by\" }", "guard = \"due == 'x'\""),
        "cannot compare date with string",
    );
    assert_error(
        &BASE.replace(
            "set = { note = \"event.by\" }",
            "emit = [{ channel = \"sms\", type = \"note\", template = \"hi {missing}\" }]",
        ),
        "template placeholder {missing}: unknown variable `missing`",
    );
    // A record's type and data: hostile or mistaken declarations are refused with the field.
    let emit = |e: &str| BASE.replace("set = { note = \"event.by\" }", &format!("emit = [{e}]"));
    assert_error(&emit("{ channel = \"sms\", template = \"hi\" }"), "missing field `type`");
    assert_error(&emit("{ channel = \"sms\", type = \"a b\", template = \"hi\" }"), "message type \"a b\"");
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", schema_version = 0, template = \"hi\" }"),
        "schema_version starts at 1",
    );
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", data = { x = \"missing\" }, template = \"hi\" }"),
        "data field `x`: unknown variable `missing`",
    );
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", data = { type = \"note\" }, template = \"hi\" }"),
        "data field \"type\" must be a name (and not `type` or `schema_version`)",
    );
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", data = { x = \"objects(note)\" }, template = \"hi\" }"),
        "data field `x`: write `objects(VAR: field, …)`",
    );
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", data = { x = \"objects(due: a)\" }, template = \"hi\" }"),
        "must be a text variable holding a JSON array",
    );
    assert_error(
        &emit("{ channel = \"sms\", type = \"n\", data = { x = \"objects(note: a b)\" }, template = \"hi\" }"),
        "must be names",
    );
    assert_error(
        &BASE.replace("set = { note = \"event.by\" }", "cancel = [\"t9\"]"),
        "`cancel`: no timer is named `t9`",
    );
    assert_error(
        &BASE.replace("terminal = [\"done\"]", "terminal = [\"done\", \"a\"]"),
        "terminal state `a` cannot have timers",
    );
    assert_error(&BASE.replace("terminal = [\"done\"]", "terminal = []"), "no terminal state");
    // An ended instance takes notices only: back to itself, changing nothing.
    let notice = |body: &str| format!("{BASE}\n[[transitions]]\nfrom = \"done\"\nevent = \"go\"\n{body}\n");
    assert_eq!(errors_of(&notice("to = \"done\"")), Vec::<String>::new());
    for body in [
        "to = \"a\"",
        "to = \"done\"\nset = { note = \"event.by\" }",
        "to = \"done\"\narm = [{ name = \"t2\", at = \"now + 1 hour\", event = \"tick\" }]",
        "to = \"done\"\ncancel = [\"t1\"]",
    ] {
        assert_error(&notice(body), "terminal state `done` can only take notices");
    }
    assert_error(&BASE.replace("due = \"date\"", "due = \"datetime\""), "unknown type \"datetime\"");
    assert_error(&BASE.replace("version = 1", "version = 0"), "t.toml:3: version must be a whole number from 1");
    // TOML syntax and unknown keys: the parser's own message, with the line.
    assert_error(&BASE.replace("initial = \"a\"", "initial = "), "t.toml:4:");
    assert_error(&BASE.replace("initial = \"a\"", "initial = \"a\"\nstart = \"a\""), "unknown field `start`");
    // Several problems in one file are all reported.
    let many = BASE.replace("to = \"done\"", "to = \"x\"").replace("initial = \"a\"", "initial = \"y\"");
    assert!(errors_of(&many).len() >= 2, "{:?}", errors_of(&many));
}

#[test]
fn versions_are_kept_side_by_side() {
    let v2 = BASE.replace("version = 1", "version = 2");
    let registry = Registry::from_sources(&[("v1.toml", BASE), ("v2.toml", &v2)]).expect("loads");
    assert_eq!(registry.latest("t").expect("t").version, 2);
    assert_eq!(registry.get("t", 1).expect("v1").file, "v1.toml");
    assert!(registry.get("t", 3).is_none());
    let err = Registry::from_sources(&[("v1.toml", BASE), ("again.toml", BASE)]).expect_err("duplicate");
    assert!(err.to_string().contains("again.toml: workflow `t` version 1 is already defined in v1.toml"), "{err}");
}

#[test]
fn mermaid_draws_every_transition_and_timer() {
    let registry = Registry::embedded().expect("shipped");
    let text = render::mermaid(registry.latest("commitment_case").expect("shipped"));
    assert!(text.contains("stateDiagram-v2\n    [*] --> pending\n"), "{text}");
    assert!(
        text.contains("    pending --> reminded: remind ⏰ reminder @ commitment_deadline - 1 calendar day at 09∶00\n"),
        "{text}"
    );
    assert!(text.contains("    reminded --> licensed: materials_submitted\n"), "{text}");
    assert!(text.contains("    overdue --> revoked: revoke\n"), "{text}");
    assert!(text.contains("    licensed --> [*]\n"), "{text}");
}

#[test]
fn a_deadline_names_a_declared_string_variable_as_responsible() {
    let timer = r#"timers = [{ name = "t1", at = "due at 09:00", event = "tick" }]"#;
    let with = |attrs: &str| {
        BASE.replace(timer, &format!(r#"timers = [{{ name = "t1", at = "due at 09:00", event = "tick"{attrs} }}]"#))
    };
    let def = parse("t.toml", &with(r#", deadline = true, responsible = "note""#)).expect("valid");
    assert_eq!(def.timer("t1").and_then(|t| t.responsible.as_deref()), Some("note"));
    assert_error(
        &with(r#", deadline = true, responsible = "nobody""#),
        "responsible = \"nobody\" is not a declared variable",
    );
    assert_error(&with(r#", deadline = true, responsible = "due""#), "is a date, not a string variable");
    assert_error(&with(r#", responsible = "note""#), "`responsible` applies only to a deadline");
}
