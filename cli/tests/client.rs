//! The CLI as a gRPC client against a real `shenguan serve` process in sandbox mode: a person's
//! tour from the README — accept a case from a JSON file, advance the clock, see the reminder,
//! the deadline and the supervision task — with exit codes scripts can rely on.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

struct Server {
    child: Child,
    url: String,
    /// The dev-mode admin token the server wrote beside its database.
    token: std::path::PathBuf,
}

fn dev_token(db: &Path) -> std::path::PathBuf {
    let mut name = db.file_name().expect("file name").to_os_string();
    name.push(".dev-token");
    db.with_file_name(name)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `shenguan serve` on a port the OS picks and reads the address from its log.
fn serve(db: &Path) -> Server {
    serve_at(db, "2026-09-28T10:00:00+08:00")
}

/// Like [`serve`], with the virtual clock at `start`.
fn serve_at(db: &Path, start: &str) -> Server {
    spawn_serve(db, &["--virtual-clock", start])
}

/// `shenguan serve` on a port the OS picks, on `db`, with `extra` arguments; the address read
/// from its log (`http://…` whatever `extra` says: the caller knows whether it serves TLS).
fn spawn_serve(db: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--db")
        .arg(db)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("the server logs its address before anything else fails").expect("read");
        if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("serving gRPC")) {
            break format!("http://{}", addr.trim());
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url, token: dev_token(db) }
}

fn cli(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(args)
        .env("SHENGUAN_SERVER", &server.url)
        .env("SHENGUAN_TOKEN_FILE", &server.token)
        .env_remove("SHENGUAN_TOKEN")
        .output()
        .expect("run cli")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn the_readme_tour_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(&dir.path().join("tour.db"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/case-material-deferral.json");
    let example = example.to_str().expect("path");

    let o = cli(&server, &["case", "accept", "-f", example]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("state                commitment_pending"), "{}", text(&o));
    let o = cli(&server, &["case", "accept", "-f", example]);
    assert!(text(&o).contains("already applied before"), "idempotent: {}", text(&o));

    let o = cli(&server, &["clock", "advance", "--to", "2026-10-08T09:00:00+08:00"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2026-10-08 09:00:00 +08:00\n");
    let o = cli(&server, &["case", "timeline", "320700/SP-2026-0001"]);
    let timeline = text(&o);
    assert!(timeline.contains("timer:material_reminder  commitment_pending → reminded"), "{timeline}");
    assert!(timeline.contains("2026-10-08 09:00:00 +08:00"), "{timeline}");
    // The reminder's SMS, listed under the steps with its recipient and delivery state.
    let sms = timeline.lines().find(|l| l.contains("sms → ")).unwrap_or_else(|| panic!("{timeline}"));
    assert!(sms.contains("stream") && sms.contains("SP-2026-0001"), "no push destination configured: {sms}");

    let o = cli(&server, &["clock", "advance", "--by", "2d"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&server, &["case", "show", "320700/SP-2026-0001", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(json["case"]["state"], "overdue");
    assert_eq!(json["case"]["overdue"], true);

    let o = cli(&server, &["case", "materials", "320700/SP-2026-0001"]);
    assert!(o.status.success(), "late materials are accepted: {}", text(&o));
    let o = cli(&server, &["case", "complete", "320700/SP-2026-0001", "--license-no", "JY13207000000001"]);
    assert!(text(&o).contains("320700/SP-2026-0001/T1  pushed"), "{}", text(&o));
    let o = cli(&server, &["task", "list", "--state", "pushed"]);
    assert!(text(&o).contains("view_deadline 2026-10-14 23:59:59 +08:00"), "{}", text(&o));
    let o = cli(&server, &["task", "ack", "320700/SP-2026-0001/T1"]);
    assert!(text(&o).contains("viewed"), "{}", text(&o));
    let o = cli(&server, &["task", "report", "inspection", "320700/SP-2026-0001/T1", "--finished-on", "2026-10-10"]);
    assert!(text(&o).contains("inspected"), "{}", text(&o));
    let o = cli(&server, &["task", "report", "result", "320700/SP-2026-0001/T1", "--outcome", "compliant"]);
    assert!(text(&o).contains("closed_compliant"), "{}", text(&o));
    let o = cli(&server, &["stats", "--region", "320700", "--from", "2026-09-01", "--to", "2026-10-31", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(stats["approval"][0]["commitments_overdue"]["count"], 1);
    let o = cli(&server, &["stats", "--region", "320700", "--from", "2026-09-01", "--to", "2026-10-31", "--ids"]);
    assert!(text(&o).contains("commitments_overdue: 320700/SP-2026-0001\n"), "{}", text(&o));
    let o =
        cli(&server, &["stats", "--region", "320700", "--from", "2026-09-01", "--to", "2026-10-31", "--ids", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(stats["approval"][0]["commitments_overdue"]["ids"][0], "320700/SP-2026-0001");

    // Failures: one line on stderr, and an exit code per kind.
    let o = cli(&server, &["case", "show", "320700/NOPE"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "error: NOT_FOUND: case 320700/NOPE does not exist\n");
    let o = cli(&server, &["case", "materials", "320700/SP-2026-0001"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .starts_with("error: FAILED_PRECONDITION: case 320700/SP-2026-0001 is in state closed"),
        "{}",
        text(&o)
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        std::fs::read_to_string(Path::new(example))
            .expect("read")
            .replace("91110000600037341L", "91110000600037341M")
            .replace("SP-2026-0001", "SP-2026-0009"),
    )
    .expect("write");
    let o = cli(&server, &["case", "accept", "-f", bad.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("INVALID_ARGUMENT: applicant.credit_code: check character is wrong (expected L)"),
        "{}",
        text(&o)
    );
    let o = cli(&server, &["case", "accept", "-f", dir.path().join("missing.json").to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(1));
    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["case", "show", "320700/X", "--server", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(7), "server unreachable: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("error: cannot reach the server at http://127.0.0.1:1"),
        "{}",
        text(&o)
    );
}

#[test]
fn advance_clock_is_refused_on_the_system_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_serve(&dir.path().join("sys.db"), &[]);
    let o = cli(&server, &["clock", "advance", "--by", "1d"]);
    assert_eq!(o.status.code(), Some(6));
    assert!(text(&o).contains("only a server started with --virtual-clock can be advanced"), "{}", text(&o));
}

#[test]
fn the_demo_runs_every_branch_and_prints_a_summary_and_a_timeline() {
    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["demo", "--cases", "120", "--seed", "7"])
        .output()
        .expect("demo");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Cases accepted: 120"), "{out}");
    for state in ["closed", "revoked", "overdue"] {
        assert!(out.contains(&format!("  {state} ")), "no case ended {state}: {out}");
    }
    assert!(out.contains("Statistics for 320700, 2026-09-01 to 2026-10-31"), "{out}");
    assert!(out.contains("Timeline of 320700/LYG-2026-"), "{out}");
    assert!(out.contains("BREACHED"), "{out}");
    // Typed records arrive at the receivers: the approval record with its supervisors as objects.
    assert!(out.contains("Typed records received"), "{out}");
    for kind in ["approval_record", "task_pushed", "commitment_reminder", "credit_record", "licence_revoked"] {
        assert!(out.lines().any(|l| l.starts_with(kind)), "no {kind} received: {out}");
    }
    assert!(out.contains(r#""supervisors":[{"department":"#), "{out}");
    // December: the catalog, the unlinked item escalated, four weekly spot-check runs verified.
    assert!(out.contains("linkage               v1"), "{out}");
    assert!(out.contains("unlinked_case 320700/FS-2026-0001 (FOOD-SALE-NEW)"), "{out}");
    for run in 1..=4 {
        assert!(out.contains(&format!("run {run} due 2026-12-")), "run {run}: {out}");
    }
    assert_eq!(out.matches("verified: the draw repeats from its record").count(), 4, "{out}");
}

/// The year-end procedure of ops/calendars/README.md, as an operator types it: status, a dry
/// run, the load, verify.
#[test]
fn the_year_end_procedure_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("year-end.db");
    let server = serve_at(&db, "2026-12-29T10:00:00+08:00");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/case-material-deferral.json");
    let notice = Path::new(env!("CARGO_MANIFEST_DIR")).join("../integration-tests/tests/data/2027-made-up.toml");
    let notice = notice.to_str().expect("path");
    // A licensed case: its task's view deadline counts into the provisional 2027.
    let mut case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).expect("example")).expect("json");
    case["route"] = "normal".into();
    for field in ["scenario", "commitment_deadline", "deferred_materials"] {
        case.as_object_mut().expect("object").remove(field);
    }
    let file = dir.path().join("normal.json");
    std::fs::write(&file, case.to_string()).expect("write");
    let o = cli(&server, &["case", "accept", "-f", file.to_str().expect("path")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&server, &["case", "complete", "320700/SP-2026-0001", "--license-no", "JY1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2027-01-04 23:59:59 +08:00 (PROVISIONAL)"), "{}", text(&o));

    let o = cli(&server, &["calendar", "status"]);
    let status = text(&o);
    assert!(o.status.success(), "{status}");
    assert!(status.contains("2027  provisional"), "{status}");
    assert!(status.contains("WARNING: 2027 has no official calendar"), "{status}");

    let o = cli(&server, &["calendar", "load", notice, "--dry-run"]);
    let dry = text(&o);
    assert!(o.status.success(), "{dry}");
    assert!(dry.contains("would load national 2027 v1"), "{dry}");
    assert!(dry.contains("1 armed timers there, 1 would move"), "{dry}");

    let o = cli(&server, &["calendar", "load", notice, "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("every deadline there is re-planned"), "{}", text(&o));
    let o = cli(&server, &["case", "timeline", "320700/SP-2026-0001"]);
    assert!(
        text(&o).contains("deadline re-planned: view_deadline 2027-01-04 23:59:59 +08:00 → 2027-01-02 23:59:59 +08:00"),
        "{}",
        text(&o)
    );
    let o = cli(&server, &["calendar", "status"]);
    assert!(text(&o).contains("2027  official"), "{}", text(&o));

    // A file that does not fit: one line naming the file and line, exit code of INVALID_ARGUMENT.
    let bad = dir.path().join("2028.toml");
    std::fs::write(&bad, "year = 2028\nsource = \"x\"\nworkdays = [{ date = 2028-01-03 }]\n").expect("write");
    let o = cli(&server, &["calendar", "load", bad.to_str().expect("path")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("2028.toml:3: make-up working day 2028-01-03 is a Mon"), "{}", text(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["admin", "verify", "--db"])
        .arg(&db)
        .output()
        .expect("verify");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(": 0 divergent"), "{}", text(&o));
}

/// The README's catalog commands: import a directory, a bad file refused with every row named
/// (exit 3, nothing imported), history and export, a catalogued case, its enterprise's profile,
/// and a spot-check plan with a run.
#[test]
fn catalogs_enterprises_and_spot_checks_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_at(&dir.path().join("catalog.db"), "2026-09-13T10:00:00+08:00");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples");
    let catalog = examples.join("catalog");

    let o = cli(&server, &["catalog", "import", catalog.to_str().expect("path"), "--comment", "first"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("linkage") && text(&o).contains("v1"), "{}", text(&o));

    let bad = dir.path().join("offices.csv");
    std::fs::write(&bad, "code,department,name,admin_name,admin_mobile\nX-1,NOPE,Office,Someone,12\n").expect("write");
    let o = cli(&server, &["catalog", "import", bad.to_str().expect("path")]);
    assert_eq!(o.status.code(), Some(3), "INVALID_ARGUMENT: {}", text(&o));
    assert!(text(&o).contains("offices.csv:2: department: NOPE is not in departments"), "{}", text(&o));
    assert!(text(&o).contains("offices.csv:2: admin_mobile:"), "{}", text(&o));
    let o = cli(&server, &["catalog", "export", "offices"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        std::fs::read_to_string(catalog.join("offices.csv")).expect("example"),
        "nothing was imported"
    );

    let update = examples.join("catalog-update.json");
    let o = cli(&server, &["catalog", "import", update.to_str().expect("path"), "--comment", "link FOOD-SALE-NEW"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&server, &["catalog", "history", "linkage"]);
    assert!(text(&o).contains("v2  + FOOD-SALE-NEW|SJJ-FOOD"), "{}", text(&o));

    // A catalogued case: no supervisors in the request.
    let case = examples.join("case-catalogued.json");
    let o = cli(&server, &["case", "accept", "-f", case.to_str().expect("path")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("supervisors          SJJ-320700/SJJ-FOOD; XF-320700/XF-INSP"), "{}", text(&o));
    assert!(text(&o).contains("catalogs             approval_items=1,"), "{}", text(&o));
    let o = cli(&server, &["case", "complete", "320700/SP-2026-0101", "--license-no", "SC1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&server, &["enterprise", "show", "91110000600037341L"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("credit grade: C"), "{}", text(&o));
    assert!(text(&o).contains("320700/SP-2026-0101/T1") && text(&o).contains("320700/SP-2026-0101/T2"), "{}", text(&o));
    let o = cli(&server, &["enterprise", "show", "91110000600037341X"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let o = cli(
        &server,
        &[
            "spotcheck",
            "create",
            "FOOD",
            "--region",
            "320700",
            "--name",
            "Food producers",
            "--office",
            "SJJ-FOOD",
            "--item",
            "SJ-FOOD-PROD",
            "--schedule",
            "0 9 * * MON",
            "--working-days-only",
            "--ratios",
            "C=1",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2026-09-14 09:00:00"), "the first run: {}", text(&o));
    let o = cli(&server, &["clock", "advance", "--to", "2026-09-14T10:00:00+08:00"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&server, &["spotcheck", "runs", "SC/320700/FOOD"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("run 1 due 2026-09-14 09:00:00"), "{}", text(&o));
    assert!(text(&o).contains("verified"), "{}", text(&o));
    assert!(text(&o).contains("91110000600037341L"), "grade C at ratio 1 is always drawn: {}", text(&o));
}

/// The database (with its WAL), the dev key and the dev token hold personal data and
/// credentials: a dev server creates them readable by their owner only, and makes a token file
/// an older version left world-readable private again.
#[cfg(unix)]
#[test]
fn the_database_dev_key_and_dev_token_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("private.db");
    std::fs::write(dev_token(&db), "old").expect("an old token");
    std::fs::set_permissions(dev_token(&db), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let server = serve(&db);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/examples/case-material-deferral.json");
    let o = cli(&server, &["case", "accept", "-f", example.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    for name in ["private.db", "private.db-wal", "private.db.dev-key", "private.db.dev-token"] {
        let mode = std::fs::metadata(dir.path().join(name)).expect(name).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
    }
}

/// `tls dev-cert` makes a CA and a server certificate a TLS server starts with; a client
/// trusting the CA reaches it over https, and a plaintext client pointed at it is told, in a
/// sentence and with exit 7, that the server speaks TLS — every time.
#[test]
fn dev_certificates_serve_tls_and_a_plaintext_client_is_told_the_server_speaks_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["tls", "dev-cert"])
        .arg(&certs)
        .args(["--name", "localhost", "--name", "127.0.0.1", "--client", "zwfw"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    for f in ["ca.pem", "ca.key", "server.pem", "server.key", "client-zwfw.pem", "client-zwfw.key"] {
        assert!(certs.join(f).is_file(), "{f} written");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("server.key")).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a private key is the owner's only");
    }
    let again =
        Command::new(env!("CARGO_BIN_EXE_shenguan")).args(["tls", "dev-cert"]).arg(&certs).output().expect("run");
    assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));

    let db = dir.path().join("tls.db");
    let cert = certs.join("server.pem");
    let key = certs.join("server.key");
    let server = spawn_serve(
        &db,
        &[
            "--virtual-clock",
            "2026-09-28T10:00:00+08:00",
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let port = server.url.rsplit(':').next().expect("a port").to_owned();
    let token = server.token.clone();
    let client = |server: String, ca: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shenguan"));
        c.args(["case", "list"]).env("SHENGUAN_SERVER", server).env("SHENGUAN_TOKEN_FILE", &token);
        if ca {
            c.arg("--ca-cert").arg(certs.join("ca.pem"));
        }
        c.output().expect("run")
    };
    let o = client(format!("https://localhost:{port}"), true);
    assert!(o.status.success(), "over TLS with the dev CA: {}", text(&o));
    for _ in 0..5 {
        let o = client(format!("http://127.0.0.1:{port}"), false);
        assert_eq!(o.status.code(), Some(7), "{}", text(&o));
        assert!(text(&o).contains("speaks TLS: use --server https://127.0.0.1"), "{}", text(&o));
    }
}

/// A client command run where there is no dev token says where it looked and how to pass one,
/// and exits 8.
#[test]
fn a_client_without_a_token_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(&dir.path().join("t.db"));
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["case", "list"])
        .env("SHENGUAN_SERVER", &server.url)
        .env_remove("SHENGUAN_TOKEN")
        .env_remove("SHENGUAN_TOKEN_FILE")
        .current_dir(elsewhere.path())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(8), "{}", text(&o));
    let said = text(&o);
    assert!(said.contains("UNAUTHENTICATED"), "{said}");
    assert!(said.contains("no dev token at") && said.contains("shenguan.db.dev-token"), "{said}");
    assert!(said.contains("--token-file"), "{said}");
}
