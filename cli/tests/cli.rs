//! The `shenguan` binary as a person runs it: exact output of the calendar commands, exit codes
//! and one-line errors, definition validation with file:line, Mermaid output, and
//! `admin verify` catching a tampered database.

use std::path::Path;
use std::process::{Command, Output};

fn shenguan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shenguan")).args(args).output().expect("run shenguan")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn calendar_commands_print_only_the_answer() {
    let o = shenguan(&["calendar", "add-working-days", "2026-09-30", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "2026-10-10\n");
    assert_eq!(stdout(&shenguan(&["calendar", "is-working-day", "2026-10-10"])), "true\n");
    assert_eq!(stdout(&shenguan(&["calendar", "is-working-day", "2026-10-11"])), "false\n");
    assert_eq!(
        stdout(&shenguan(&["calendar", "add-working-days", "2026-09-30", "3", "--region", "320700"])),
        "2026-10-10\n"
    );

    let show = stdout(&shenguan(&["calendar", "show", "2026"]));
    assert!(show.contains("国务院办公厅关于2026年部分节假日安排的通知"), "{show}");
    assert!(show.contains("  2026-10-10 Sat for 国庆节"), "{show}");
    assert!(show.contains("  2026-02-17 Tue 春节"), "{show}");
}

#[test]
fn calendar_errors_are_one_clear_line_and_exit_non_zero() {
    let o = shenguan(&["calendar", "add-working-days", "2100-12-30", "5"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "error: year 2101 is not loaded in the working-day calendar of national\n");
    assert!(stdout(&o).is_empty());

    let o = shenguan(&["calendar", "is-working-day", "10/10/2026"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "error: \"10/10/2026\" is not a date; expected YYYY-MM-DD\n");

    let o = shenguan(&["calendar", "add-working-days", "2026-09-30", "-3"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn workflow_validate_reports_every_problem_with_file_and_line() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/commitment_case.v1.toml");
    let o = shenguan(&["workflow", "validate", shipped.to_str().expect("path")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: commitment_case v1"), "{}", stdout(&o));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&shipped).expect("read").replace("to = \"reminded\"", "to = \"remindd\"");
    std::fs::write(&bad, text).expect("write");
    let o = shenguan(&["workflow", "validate", bad.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("bad.toml:56: unknown state `remindd` in `to`"), "{err}");
    assert!(err.contains("state `reminded` is unreachable"), "{err}");
    assert!(err.ends_with("problem(s)\n"), "{err}");

    let o = shenguan(&["workflow", "validate", "/no/such/file.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: /no/such/file.toml: "), "{}", stderr(&o));
}

#[test]
fn workflow_graph_prints_mermaid() {
    let o = shenguan(&["workflow", "graph", "commitment_case"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("stateDiagram-v2\n    [*] --> pending\n"), "{text}");
    assert!(
        text.contains("pending --> overdue: deadline_passed ⏰ deadline @ commitment_deadline at end of day"),
        "{text}"
    );
    let o = shenguan(&["workflow", "graph", "commitment_case", "--version", "9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "no workflow commitment_case version 9; known: approval_case v1, bench_case v1, commitment_case v1, spot_check_plan v1, spot_check_task v1, supervision_task v1"
        ),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn admin_verify_is_clean_on_an_engine_database_and_catches_tampering() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("v.db");
    let clock = shenguan::clock::VirtualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-09-28T10:00:00+08:00").expect("t").timestamp_millis(),
    );
    let engine = shenguan::engine::Engine::start(
        shenguan::engine::Config::new(&db),
        shenguan::engine::Context::new(
            Arc::new(shenguan::definition::Registry::embedded().expect("w")),
            shenguan::calendar::Calendars::embedded().expect("c"),
            Arc::new(clock.clone()),
        ),
    )
    .await
    .expect("start");
    for i in 0..20 {
        let serde_json::Value::Object(vars) =
            serde_json::json!({"region": "320700", "commitment_deadline": "2026-09-30"})
        else {
            unreachable!()
        };
        let command = shenguan::machine::Command {
            instance: format!("c{i}"),
            kind: shenguan::machine::CommandKind::Start { workflow: "commitment_case".into(), version: None, vars },
            actor: "test".into(),
            request_id: None,
            idempotency: None,
        };
        engine.submit(command).await.expect("accepted");
    }
    clock.advance(3 * 24 * 3_600_000);
    engine.settle().await;
    engine.shutdown().await;

    let o = shenguan(&["admin", "verify", "--db", db.to_str().expect("path")]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("verified 20 instances (60 history entries): 0 divergent"), "{}", stdout(&o));

    // Someone edits a row by hand: verify names the instance and the field.
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await.expect("open");
        sqlx::query("UPDATE instances SET state = 'licensed' WHERE id = 'c7'")
            .execute(&mut conn)
            .await
            .expect("update");
    }
    let o = shenguan(&["admin", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(
            "DIVERGENT c7: stored instance differs from replay: state: stored licensed, replay gives overdue"
        ),
        "{}",
        stdout(&o)
    );

    // Someone deletes an instance row (and its timers) but leaves its history: verify notices.
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await.expect("open");
        for sql in ["DELETE FROM instances WHERE id = 'c3'", "DELETE FROM timers WHERE instance_id = 'c3'"] {
            sqlx::query(sql).execute(&mut conn).await.expect("delete");
        }
    }
    let o = shenguan(&["admin", "verify", "--db", db.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("DIVERGENT c3: history rows name this instance, which has no instance row"),
        "{}",
        stdout(&o)
    );

    let o = shenguan(&["admin", "verify", "--db", dir.path().join("none.db").to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no such database file"), "{}", stderr(&o));
}

#[test]
fn serve_refuses_a_barred_credit_grade_that_is_not_a_grade() {
    let o = shenguan(&["serve", "--credit-grade", "A", "--credit-grade", "B", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let last = stderr(&o).lines().last().unwrap_or("").to_owned();
    assert!(
        last.starts_with("error: credit grades: barred credit grade \"D\" is not one of the grades (A, B)"),
        "{last}"
    );
}

#[test]
fn serve_refuses_a_bad_database_path_with_one_line() {
    let o = shenguan(&["serve", "--db", "/no/such/dir/x.db", "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o)
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("error: cannot open database /no/such/dir/x.db: directory /no/such/dir does not exist"),
        "{}",
        stderr(&o)
    );
}

/// A PostgreSQL URL that is malformed, or names a server that does not answer, is refused at
/// start with the reason in one line — and the password in the URL is never printed.
#[test]
fn serve_refuses_a_bad_or_unreachable_postgresql_url_without_printing_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let url = format!("postgres://shenguan:hunter2-secret@127.0.0.1:{port}/cases");
    let db = dir.path().join("x.db");
    let o = shenguan(&["serve", "--database", &url, "--db", db.to_str().expect("path"), "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1));
    let line = last_line(&o);
    assert!(
        line.starts_with(&format!(
            "error: cannot open database postgres://shenguan@127.0.0.1:{port}/cases: cannot reach the server"
        )),
        "{line}"
    );
    for o in [
        &o,
        &shenguan(&["migrate", "--database", "postgres://shenguan:hunter2-secret@[::1/cases"]),
        &shenguan(&["admin", "verify", "--database", &url]),
    ] {
        assert_ne!(o.status.code(), Some(0));
        let all = format!("{}{}", stdout(o), stderr(o));
        assert!(!all.contains("hunter2"), "the password was printed: {all}");
        assert!(last_line(o).starts_with("error: cannot open database postgres://"), "{all}");
    }
    let o = shenguan(&["serve", "--database", &url, "--shards", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = shenguan(&[
        "serve",
        "--database",
        &url,
        "--lease",
        "1s",
        "--lease-tick",
        "2s",
        "--db",
        db.to_str().expect("path"),
    ]);
    assert!(last_line(&o).contains("--lease-tick (2s) must be shorter than --lease (1s)"), "{}", stderr(&o));
}

fn last_line(o: &Output) -> String {
    stderr(o).lines().last().unwrap_or("").to_owned()
}

#[test]
fn a_production_server_refuses_to_start_without_keys_or_issuer_and_says_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let db = db.to_str().expect("path");
    let o = shenguan(&["serve", "--production", "--db", db, "--listen", "127.0.0.1:0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(last_line(&o).starts_with("error: --production needs token keys: give --jwt-keys"), "{}", stderr(&o));
    assert!(!dir.path().join("p.db.dev-key").exists(), "a production start made a dev key");

    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    let keys = keys.to_str().expect("path");
    let o = shenguan(&["serve", "--production", "--jwt-keys", keys, "--db", db, "--listen", "127.0.0.1:0"]);
    assert!(last_line(&o).starts_with("error: --production needs --issuer"), "{}", stderr(&o));

    // A private key where the public one belongs, and a file that is no key at all.
    std::fs::write(dir.path().join("keys/idp.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        .expect("write");
    let args =
        ["serve", "--production", "--jwt-keys", keys, "--issuer", "https://idp", "--db", db, "--listen", "127.0.0.1:0"];
    let o = shenguan(&args);
    assert!(last_line(&o).contains("is a private key; give the public key"), "{}", stderr(&o));
    std::fs::write(dir.path().join("keys/idp.pem"), "garbage").expect("write");
    let o = shenguan(&args);
    assert!(last_line(&o).contains("is not a PEM RSA or EC (P-256) public key"), "{}", stderr(&o));
}

#[test]
fn hostile_security_files_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let db = db.to_str().expect("path");
    let jwks = dir.path().join("jwks.json");
    for (text, says) in
        [("{not json", "is not a JWKS"), (r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, "symmetric (oct) key")]
    {
        std::fs::write(&jwks, text).expect("write");
        let o = shenguan(&[
            "serve",
            "--jwks",
            jwks.to_str().expect("p"),
            "--issuer",
            "i",
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert!(last_line(&o).contains("jwks.json") && last_line(&o).contains(says), "{text}: {}", stderr(&o));
    }
    let accounts = dir.path().join("accounts.toml");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not used before the accounts are read").expect("write");
    for (text, says) in [
        (
            "[[account]]\nfingerprint = \"zz\"\nsubject = \"s\"\nroles = [\"platform\"]\n",
            "is not a SHA-256 fingerprint",
        ),
        (
            &format!("[[account]]\nfingerprint = \"{}\"\nsubject = \"s\"\nroles = [\"root\"]\n", "ab".repeat(32)),
            "unknown role \"root\"",
        ),
        ("[[account]]\nfingerprint = 1\n", "invalid type"),
        ("account = \"x\"\nextra = 1\n", "accounts.toml"),
    ] {
        std::fs::write(&accounts, text).expect("write");
        let o = shenguan(&[
            "serve",
            "--service-accounts",
            accounts.to_str().expect("p"),
            "--db",
            db,
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert!(last_line(&o).contains(says), "{text}: {}", stderr(&o));
    }
}

#[test]
fn token_issue_mints_for_a_dev_server_and_refuses_unknown_roles_and_missing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("t.db");
    let db_s = db.to_str().expect("path");
    let o = shenguan(&["token", "issue", "--role", "platform", "--region", "320700", "--db", db_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(last_line(&o).contains("no dev key at") && last_line(&o).contains("t.db.dev-key"), "{}", stderr(&o));
    std::fs::write(dir.path().join("t.db.dev-key"), "ab".repeat(32)).expect("write");
    let o = shenguan(&["token", "issue", "--role", "platform", "--region", "320700", "--db", db_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o);
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    let o = shenguan(&["token", "issue", "--role", "root", "--db", db_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(last_line(&o).contains("unknown role \"root\"; one of engine_admin"), "{}", stderr(&o));
    std::fs::write(dir.path().join("t.db.dev-key"), "short").expect("write");
    let o = shenguan(&["token", "issue", "--role", "platform", "--db", db_s]);
    assert!(last_line(&o).contains("is not a dev key"), "{}", stderr(&o));
}

#[test]
fn serve_refuses_a_bad_outbound_configuration_before_it_opens_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("o.db");
    let db = db.to_str().expect("path");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("path").to_owned()
    };
    let short = write("short.secret", "too short");
    let hook = |secret: &str| {
        format!("[[destination]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\nchannels = [\"sms\"]\nsecret_file = {secret:?}\n")
    };
    let cases = [
        (write("syntax.toml", "[[destination]\n"), "syntax.toml: TOML parse error at line 1"),
        (write("nosecret.toml", &hook("/no/such.secret")), "destination hook: /no/such.secret: No such file"),
        (write("short.toml", &hook(&short)), "the secret must be at least 16 bytes"),
        (write("twice.toml", &format!("{}{}", hook(&short), hook(&short))), "named twice"),
        (write("huge.toml", &"#".repeat(2 << 20)), "larger than 1 MiB"),
    ];
    for (file, expected) in cases {
        let o = shenguan(&["serve", "--db", db, "--listen", "127.0.0.1:0", "--outbound", &file]);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{file}: {}", stderr(&o));
    }
    assert!(!dir.path().join("o.db").exists(), "no database is created for a refused configuration");
}
