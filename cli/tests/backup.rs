//! `shenguan backup` and `shenguan restore` against a real `shenguan serve` process: a backup
//! taken under load holds every case acknowledged before it began and restores to a database
//! that replays clean; a restore under a running server, of a newer schema or of a file that is
//! not a database changes nothing; a second server on one file is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::fixtures;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use sqlx::Connection;

struct Server {
    process: integration_tests::ServeProcess,
    token: String,
}

impl Server {
    fn kill(self) {
        drop(self.process);
    }
}

fn serve_command(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shenguan"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--virtual-clock", "2026-09-28T10:00:00+08:00", "--db"])
        .arg(db)
        .env("RUST_LOG", "info,sqlx=warn");
    command
}

/// `shenguan serve` in sandbox mode on a port the OS picks; answers once it serves.
fn serve(db: &Path) -> Server {
    serve_with(db, &[])
}

/// [`serve`] with more `serve` arguments.
fn serve_with(db: &Path, extra: &[&str]) -> Server {
    let mut command = serve_command(db);
    command.args(extra);
    let process = integration_tests::ServeProcess::spawn(command);
    Server { process, token: integration_tests::ServeProcess::dev_token(db) }
}

fn shenguan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shenguan")).args(args).env_remove("SHENGUAN_DATABASE").output().expect("run")
}

use integration_tests::{arg as s, output_text as text};

async fn ids(db: &Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM instances").fetch_all(&mut conn).await.expect("ids");
    ids.into_iter().collect()
}

/// Accepts `n` cases on `server`, 16 at a time; answers their ids once all are acknowledged.
async fn accept(server: &Server, prefix: &str, n: usize) -> BTreeSet<String> {
    let client = intake(server);
    let mut calls = tokio::task::JoinSet::new();
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let mut client = client.clone();
        let request = fixtures::deferral(&format!("{prefix}-{i:05}"), "2026-10-30");
        calls.spawn(async move { client.accept_case(request).await });
        while calls.len() >= 16 || (i + 1 == n && !calls.is_empty()) {
            let answer = calls.join_next().await.expect("a call").expect("task").expect("accepted");
            ids.insert(answer.into_inner().case.expect("case").case_id);
        }
    }
    ids
}

type Intake = IntakeServiceClient<integration_tests::Authed>;

fn intake(server: &Server) -> Intake {
    let channel = tonic::transport::Channel::from_shared(server.process.url.clone()).expect("url").connect_lazy();
    IntakeServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        channel,
        integration_tests::bearer(&server.token),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_case_acknowledged_before_it_and_restores_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    let server = serve(&live);
    let client = intake(&server);

    // Cases accepted 16 at a time until told to stop; each id recorded once acknowledged.
    let load = integration_tests::AcceptLoad::start(client, 16, "BK", "2026-10-30");
    load.wait_for(500).await;

    let before: BTreeSet<String> = load.acked().into_iter().collect();
    let backup = dir.path().join("backup.db");
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["backup", "--db", s(&live), "--out", s(&backup)])
        .output()
        .await
        .expect("run backup");
    let after = load.acked().len();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("backed up "), "{}", String::from_utf8_lossy(&o.stdout));
    // The load goes on past the backup: the server was not held up by it.
    load.wait_for(after + 200).await;
    load.stop().await;

    let in_backup = ids(&backup).await;
    let missing: Vec<&String> = before.difference(&in_backup).collect();
    assert!(missing.is_empty(), "{} acknowledged before the backup are not in it: {missing:?}", missing.len());

    // A restore under the running server is refused and changes nothing.
    let live_before = ids(&live).await;
    let o = shenguan(&["restore", s(&backup), "--db", s(&live)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("a server has") && text(&o).contains("open"), "{}", text(&o));
    assert_eq!(ids(&live).await, live_before, "the live database is untouched");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("replaced"))
        .collect();
    assert!(aside.is_empty(), "nothing was moved aside");

    // Into a new file: restored, replayed, clean.
    let restored = dir.path().join("restored.db");
    let o = shenguan(&["restore", s(&backup), "--db", s(&restored)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("verified {} instances", in_backup.len())), "{}", text(&o));
    assert!(text(&o).contains(": 0 divergent"), "{}", text(&o));
    assert_eq!(ids(&restored).await, in_backup);
    server.kill();

    // Over the stopped server's database: the old one is moved aside with its WAL, not lost.
    let o = shenguan(&["restore", s(&backup), "--db", s(&live)]);
    assert!(o.status.success(), "{}", text(&o));
    let moved = text(&o)
        .lines()
        .find_map(|l| l.strip_prefix("the database it replaced was moved to ").map(PathBuf::from))
        .unwrap_or_else(|| panic!("{}", text(&o)));
    assert_eq!(ids(&moved).await, live_before, "the old database, its WAL with it");
    assert_eq!(ids(&live).await, in_backup);
}

#[tokio::test]
async fn bad_backups_and_restores_are_refused_with_what_to_do_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    let server = serve(&live);

    // A second server on the same file.
    let o = serve_command(&live).output().expect("second server");
    assert!(!o.status.success(), "a second server on one file must not start");
    assert!(String::from_utf8_lossy(&o.stderr).contains("a server has"), "{}", String::from_utf8_lossy(&o.stderr));

    // Over an existing file, of a missing database, of PostgreSQL.
    let taken = dir.path().join("taken.db");
    std::fs::write(&taken, "已有的文件").expect("write");
    let o = shenguan(&["backup", "--db", s(&live), "--out", s(&taken)]);
    assert!(!o.status.success() && text(&o).contains("never overwrites"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&taken).expect("read"), "已有的文件");
    let o = shenguan(&["backup", "--db", s(&dir.path().join("none.db")), "--out", s(&dir.path().join("b1.db"))]);
    assert!(!o.status.success() && text(&o).contains("no such file"), "{}", text(&o));
    let o = shenguan(&["backup", "--db", "postgres://u@127.0.0.1:1/x", "--out", s(&dir.path().join("b2.db"))]);
    assert!(!o.status.success() && text(&o).contains("pg_dump"), "{}", text(&o));
    for never in ["b1.db", "b2.db", "b1.db.partial"] {
        assert!(!dir.path().join(never).exists(), "{never} was written");
    }

    // A file that is not a database, and one that is not shenguan's.
    let target = dir.path().join("target.db");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).expect("write");
    let o = shenguan(&["restore", s(&garbage), "--db", s(&target)]);
    assert!(!o.status.success() && text(&o).contains("not a usable shenguan database"), "{}", text(&o));
    let foreign = dir.path().join("foreign.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", foreign.display())).await.expect("create");
    sqlx::query("CREATE TABLE t (x)").execute(&mut conn).await.expect("table");
    conn.close().await.expect("close");
    let o = shenguan(&["restore", s(&foreign), "--db", s(&target)]);
    assert!(!o.status.success() && text(&o).contains("no shenguan schema"), "{}", text(&o));
    assert!(!target.exists(), "nothing was restored");

    // A backup made by a newer release.
    let backup = dir.path().join("backup.db");
    let o = shenguan(&["backup", "--db", s(&live), "--out", s(&backup)]);
    assert!(o.status.success(), "{}", text(&o));
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", backup.display())).await.expect("open");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("a newer migration");
    conn.close().await.expect("close");
    let o = shenguan(&["restore", s(&backup), "--db", s(&target)]);
    assert!(!o.status.success() && text(&o).contains("newer than this shenguan knows"), "{}", text(&o));
    assert!(!target.exists(), "nothing was restored");
    drop(server);
}

/// The runbook's PostgreSQL procedure, as written there: `pg_dump` while a node serves,
/// `pg_restore` into an empty database, `admin verify` clean with every case in it.
#[tokio::test]
async fn the_runbooks_postgresql_procedure_restores_every_case() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let Some(bin) = integration_tests::pg::bin_dir() else {
        integration_tests::pg::skip("no pg_dump beside the server");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_with(&dir.path().join("node.db"), &["--database", &url, "--node", "node-a"]);
    let accepted = accept(&server, "PG", 200).await;

    let o = shenguan(&["backup", "--db", &url, "--out", s(&dir.path().join("x.db"))]);
    assert!(!o.status.success() && text(&o).contains("pg_dump"), "{}", text(&o));

    let dump = dir.path().join("shenguan.dump");
    let o = Command::new(bin.join("pg_dump"))
        .args(["--format=custom", "--file", s(&dump), &url])
        .output()
        .expect("pg_dump");
    assert!(o.status.success(), "{}", text(&o));
    drop(server);
    let restored = integration_tests::pg::database().await.expect("a second database");
    let o = Command::new(bin.join("pg_restore"))
        .args(["--no-owner", "--dbname", &restored, s(&dump)])
        .output()
        .expect("pg_restore");
    assert!(o.status.success(), "{}", text(&o));
    let o = shenguan(&["admin", "verify", "--database", &restored]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("verified {} instances", accepted.len())), "{}", text(&o));
    assert!(text(&o).contains(": 0 divergent"), "{}", text(&o));
}

/// A backup onto a file system that fills up half-way: the error says so, no file that looks
/// like a backup is left (nor the partial one), and the database backed up is untouched.
#[tokio::test]
async fn a_backup_onto_a_full_disk_fails_whole_and_leaves_nothing() {
    let Some(fs) = integration_tests::Tmpfs::mount_or_skip(256, "") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live.db");
    let server = serve(&live);
    // More than the 256 KiB the backup may fill.
    let accepted = accept(&server, "FULL", 300).await;
    let target = fs.path().join("backup.db");
    let o = shenguan(&["backup", "--db", s(&live), "--out", s(&target)]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("full"), "the error says the disk is full: {}", text(&o));
    let left: Vec<_> = std::fs::read_dir(fs.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
    assert!(ids(&live).await.is_superset(&accepted), "the database backed up is untouched");
    // With room, the same backup is whole.
    let o = shenguan(&["backup", "--db", s(&live), "--out", s(&dir.path().join("room.db"))]);
    assert!(o.status.success(), "{}", text(&o));
    drop(server);
}
