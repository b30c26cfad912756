//! `shenguan archive` against a real `shenguan serve` process: cases closed two years ago are
//! written to a compressed archive and removed while new cases keep arriving; nothing else is
//! touched, the database replays clean, the statistics of the archived period are unchanged,
//! and `archive show` reads a case back. Hostile requests and files are refused and change
//! nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use integration_tests::fixtures;
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::{
    AdvanceClockRequest, ArchivedInstance, CompleteApprovalRequest, ExportArchiveRequest, GetCaseRequest,
    GetStatisticsRequest, GetTimelineRequest, RemovableCase, RemoveArchivedRequest, RevokeApprovalRequest,
};
use shenguan::proto::{Route, Scenario};
use sqlx::Connection;

type Ch = integration_tests::Authed;

struct Server {
    process: integration_tests::ServeProcess,
    token: String,
}

impl Server {
    /// On the SQLite file `db`.
    fn start(db: &Path) -> Server {
        Server::start_with(db, &[])
    }

    /// With `extra` serve arguments; the dev token beside `db`.
    fn start_with(db: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shenguan"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--virtual-clock", "2024-03-04T10:00:00+08:00", "--db"])
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "info,sqlx=warn");
        let process = integration_tests::ServeProcess::spawn(command);
        Server { process, token: integration_tests::ServeProcess::dev_token(db) }
    }

    fn channel(&self) -> Ch {
        let channel = tonic::transport::Channel::from_shared(self.process.url.clone()).expect("url").connect_lazy();
        tonic::service::interceptor::InterceptedService::new(channel, integration_tests::bearer(&self.token))
    }

    fn intake(&self) -> IntakeServiceClient<Ch> {
        IntakeServiceClient::new(self.channel())
    }

    fn admin(&self) -> AdminServiceClient<Ch> {
        AdminServiceClient::new(self.channel())
    }

    /// Moves the sandbox clock from March 2024 to March 2026: the cases of [`old_cases`] are
    /// two years closed.
    async fn two_years_on(&self) {
        let to = AdvanceClockRequest { to: "2026-03-04T10:00:00+08:00".into(), ..Default::default() };
        self.admin().advance_clock(to).await.expect("two years on");
    }

    /// `shenguan ARGS --server URL --token T`.
    async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shenguan"))
            .args(args)
            .args(["--server", &self.process.url, "--token", &self.token])
            .output()
            .await
            .expect("run shenguan")
    }
}

fn shenguan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shenguan")).args(args).env_remove("SHENGUAN_DATABASE").output().expect("run")
}

use integration_tests::{arg as s, output_text as text};

/// Every stored row that names an instance, as (table, instance, detail), and the archived
/// records: what the archive may change and what it must leave.
async fn rows(db: &Path) -> (BTreeSet<(String, String, String)>, BTreeSet<String>) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let mut out = BTreeSet::new();
    for (table, sql) in [
        ("instances", "SELECT id, state || ':' || seq FROM instances"),
        ("history", "SELECT instance_id, CAST(seq AS TEXT) FROM history"),
        ("outbox", "SELECT instance_id, key FROM outbox"),
        ("timers", "SELECT instance_id, name FROM timers"),
        ("subjects", "SELECT instance_id, code FROM subjects"),
    ] {
        let found: Vec<(String, String)> = sqlx::query_as(sql).fetch_all(&mut conn).await.expect(table);
        out.extend(found.into_iter().map(|(id, detail)| (table.to_owned(), id, detail)));
    }
    let archived: Vec<String> =
        sqlx::query_scalar("SELECT id FROM archived").fetch_all(&mut conn).await.expect("archived");
    (out, archived.into_iter().collect())
}

fn case_of(id: &str) -> &str {
    id.split("/T").next().expect("an id")
}

async fn statistics(server: &Server) -> String {
    let request = GetStatisticsRequest { from: "2024-01-01".into(), to: "2024-12-31".into(), ..Default::default() };
    let reply = server.admin().get_statistics(request).await.expect("statistics").into_inner();
    format!("{reply:?}")
}

/// Accepts 40 cases on 2024-03-04, licenses 10 of them (each gets a supervision task), then
/// revokes 30: the 10 licensed (their tasks close as revoked) and 20 unlicensed. Answers the
/// ids of the 30 revoked cases and of the 10 left open.
async fn old_cases(server: &Server) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut intake = server.intake();
    let (mut revoked, mut open) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..40 {
        let request = fixtures::accept(&format!("OLD-{i:03}"), Route::Normal, Scenario::Unspecified);
        let id = intake.accept_case(request).await.expect("accepted").into_inner().case.expect("case").case_id;
        if i < 10 {
            let complete = CompleteApprovalRequest {
                case_id: id.clone(),
                license_no: format!("JY1320700{i:07}"),
                approval_opinion: "同意".into(),
                document_refs: vec![],
            };
            intake.complete_approval(complete).await.expect("licensed");
        }
        if i < 30 {
            let revoke = RevokeApprovalRequest {
                case_id: id.clone(),
                reason: "申请人以欺骗手段取得许可".into(),
                basis: "《行政许可法》第六十九条".into(),
            };
            intake.revoke_approval(revoke).await.expect("revoked");
            revoked.insert(id);
        } else {
            open.insert(id);
        }
    }
    (revoked, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_cases_are_archived_under_load_and_nothing_else_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("live.db");
    let server = Server::start(&db);
    let (revoked, open) = old_cases(&server).await;
    let stats_before = statistics(&server).await;
    assert!(stats_before.contains("count: 30"), "the revocations are counted: {stats_before}");
    server.two_years_on().await;

    // New cases accepted by 8 callers until told to stop; each id recorded once acknowledged.
    let load = integration_tests::AcceptLoad::start(server.intake(), 8, "NEW", "2026-04-30");
    load.wait_for(100).await;
    let (before_rows, _) = rows(&db).await;

    let archive = dir.path().join("2024.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&archive)]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("30 cases (40 instances)"), "{}", text(&o));
    assert!(text(&o).contains("30 cases removed"), "{}", text(&o));
    let during = load.acked().len();
    load.wait_for(during + 100).await;
    let acked = load.stop().await;

    // Exactly the revoked cases and their tasks are gone, with all they had; every other row is
    // as it was, and every case acknowledged under load is there.
    let (after_rows, archived) = rows(&db).await;
    assert_eq!(archived, revoked);
    let gone: BTreeSet<_> = before_rows.difference(&after_rows).cloned().collect();
    assert!(gone.iter().all(|(_, id, _)| revoked.contains(case_of(id))), "only archived cases lost rows");
    let kept_old: BTreeSet<_> = before_rows.iter().filter(|(_, id, _)| !revoked.contains(case_of(id))).collect();
    assert!(kept_old.iter().all(|row| after_rows.contains(*row)), "nothing else changed");
    assert!(before_rows.iter().any(|(t, id, _)| t == "instances" && id.contains("/T")), "tasks were archived too");
    assert!(after_rows.iter().all(|(_, id, _)| !revoked.contains(case_of(id))), "nothing of an archived case left");
    let ids: BTreeSet<String> =
        after_rows.iter().filter(|(t, _, _)| t == "instances").map(|(_, id, _)| id.clone()).collect();
    assert!(open.iter().all(|id| ids.contains(id)), "open cases stay");
    assert!(acked.iter().all(|id| ids.contains(id)), "every case acknowledged under load is stored");

    // The statistics of 2024 still count what was archived.
    assert_eq!(statistics(&server).await, stats_before);

    // Asking for an archived case says where it went; its number stays taken.
    let gone_case = revoked.iter().next().expect("a case").clone();
    let e = server.intake().get_case(GetCaseRequest { case_id: gone_case.clone() }).await.expect_err("archived");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("archived") && e.message().contains("2024.jsonl.gz"), "{}", e.message());
    let e = server.admin().get_timeline(GetTimelineRequest { case_id: gone_case.clone() }).await.expect_err("gone");
    assert!(e.message().contains("archive show"), "{}", e.message());
    let number = format!("OLD-{:03}", 0);
    let again = fixtures::accept(&number, Route::Normal, Scenario::Unspecified);
    let e = server.intake().accept_case(again).await.expect_err("an archived number");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{}", e.message());
    assert!(e.message().contains("archived") && e.message().contains("2024.jsonl.gz"), "{}", e.message());

    // The archive reads back: the list, one licensed-then-revoked case with its task.
    let o = shenguan(&["archive", "show", s(&archive)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("30 cases"), "{}", text(&o));
    let has_task = |id: &&String| before_rows.iter().any(|(t, i, _)| t == "instances" && *i == format!("{id}/T1"));
    let licensed = revoked.iter().find(has_task).expect("a licensed case");
    let o = shenguan(&["archive", "show", s(&archive), licensed]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&o);
    assert!(shown.contains(&format!("{licensed}/T1")) && shown.contains("→ revoked"), "{shown}");
    assert!(shown.contains("event complete_approval") || shown.contains("licensed"), "{shown}");
    let o = shenguan(&["archive", "show", s(&archive), licensed, "--json"]);
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(record["instances"].as_array().map(Vec::len), Some(2), "the case and its task");
    let o = shenguan(&["archive", "show", s(&archive), "320700/NOT-THERE"]);
    assert!(!o.status.success() && text(&o).contains("is not in"), "{}", text(&o));

    // A second run finds nothing more; the archive file is never written over.
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&archive)]).await;
    assert!(!o.status.success() && text(&o).contains("exists"), "{}", text(&o));
    let second = dir.path().join("again.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&second)]).await;
    assert!(o.status.success() && text(&o).contains("0 cases"), "{}", text(&o));

    // The database replays clean.
    drop(server);
    let o = shenguan(&["admin", "verify", "--db", s(&db)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 divergent"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_and_files_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("live.db");
    let server = Server::start(&db);
    let (_, open) = old_cases(&server).await;
    server.two_years_on().await;
    let (before_rows, _) = rows(&db).await;
    let mut admin = server.admin();

    for (before, limit) in [("2024-13-01", 0), ("", 0), ("2027-01-01", 0), ("2025-01-01", 5_000)] {
        let e = admin
            .export_archive(ExportArchiveRequest { before: before.into(), after: String::new(), limit })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{before} {limit}: {}", e.message());
    }
    let page = admin
        .export_archive(ExportArchiveRequest { before: "2025-01-01".into(), after: String::new(), limit: 1000 })
        .await
        .expect("export")
        .into_inner();
    assert_eq!(page.cases.len(), 30);
    let first = &page.cases[0];
    let removable = |instances: Vec<ArchivedInstance>| RemovableCase { case_id: first.case_id.clone(), instances };
    let remove = |archive: &str, cases: Vec<RemovableCase>| RemoveArchivedRequest {
        archive: archive.into(),
        before: "2025-01-01".into(),
        cases,
    };

    // Not an instance of the case; no name; a control character; nothing named.
    let foreign = vec![ArchivedInstance { id: "320700/OTHER".into(), seq: 1 }];
    for request in [
        remove("a.gz", vec![removable(foreign)]),
        remove("", vec![removable(first.instances.clone())]),
        remove("a\n.gz", vec![removable(first.instances.clone())]),
        remove("a.gz", vec![removable(Vec::new())]),
    ] {
        let e = admin.remove_archived(request).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    }
    // A stale history length, a task left out, a case still open: kept, said so.
    let mut stale = first.instances.clone();
    stale[0].seq -= 1;
    let open_id = open.iter().next().expect("an open case").clone();
    let open_case =
        RemovableCase { case_id: open_id.clone(), instances: vec![ArchivedInstance { id: open_id, seq: 1 }] };
    let reply = admin
        .remove_archived(remove("a.gz", vec![removable(stale), open_case.clone()]))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(reply.removed, 0);
    let changed: BTreeSet<String> = reply.changed.into_iter().collect();
    assert_eq!(changed, BTreeSet::from([first.case_id.clone(), open_case.case_id.clone()]));
    if let Some(with_task) = page.cases.iter().find(|c| c.instances.len() > 1) {
        let case_only =
            RemovableCase { case_id: with_task.case_id.clone(), instances: with_task.instances[..1].to_vec() };
        let reply = admin.remove_archived(remove("a.gz", vec![case_only])).await.expect("answered").into_inner();
        assert_eq!((reply.removed, reply.changed.len()), (0, 1), "a task left out keeps the case");
    } else {
        panic!("the licensed cases have tasks");
    }
    assert_eq!(rows(&db).await.0, before_rows, "nothing was removed");

    // Archive files that are not one: garbage, a cut-off file, an empty file.
    let garbage = dir.path().join("garbage.gz");
    std::fs::write(&garbage, vec![0x1fu8; 4096]).expect("write");
    let o = shenguan(&["archive", "show", s(&garbage)]);
    assert!(!o.status.success() && text(&o).contains("not a readable shenguan archive"), "{}", text(&o));
    let whole = dir.path().join("whole.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&whole), "--keep"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(rows(&db).await.0, before_rows, "--keep removes nothing");
    let bytes = std::fs::read(&whole).expect("read");
    let cut = dir.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let o = shenguan(&["archive", "show", s(&cut)]);
    assert!(!o.status.success(), "{}", text(&o));
    let empty = dir.path().join("empty.gz");
    std::fs::write(&empty, b"").expect("write");
    let o = shenguan(&["archive", "show", s(&empty)]);
    assert!(!o.status.success(), "{}", text(&o));

    // A stream consumer that has not read the cases' messages holds them back, as retention
    // would; dropped, it holds nothing.
    let mut events = shenguan::proto::events_service_client::EventsServiceClient::new(server.channel());
    let subscribe = shenguan::proto::SubscribeRequest { consumer: "slow-reader".into(), ..Default::default() };
    let mut stream = events.subscribe(subscribe).await.expect("subscribed").into_inner();
    stream.message().await.expect("an event").expect("one");
    drop(stream);
    let export = ExportArchiveRequest { before: "2025-01-01".into(), after: String::new(), limit: 1000 };
    let page = admin.export_archive(export.clone()).await.expect("export").into_inner();
    assert!(!page.held_back.is_empty(), "unread messages hold their cases back");
    assert!(page.held_back.iter().all(|h| h.reason.contains("slow-reader")), "{:?}", page.held_back);
    assert_eq!(page.cases.len() + page.held_back.len(), 30);
    admin.drop_consumer(shenguan::proto::DropConsumerRequest { name: "slow-reader".into() }).await.expect("dropped");
    let page = admin.export_archive(export).await.expect("export").into_inner();
    assert_eq!((page.cases.len(), page.held_back.len()), (30, 0));
}

/// The same on PostgreSQL: the removal's statements, the archived record and counts, verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_cases_are_archived_on_postgresql_and_the_database_verifies_clean() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(&dir.path().join("shenguan.db"), &["--database", &url]);
    let (revoked, open) = old_cases(&server).await;
    let stats_before = statistics(&server).await;
    server.two_years_on().await;
    let archive = dir.path().join("pg.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&archive)]).await;
    assert!(o.status.success() && text(&o).contains("30 cases removed"), "{}", text(&o));
    assert_eq!(statistics(&server).await, stats_before);
    for id in &revoked {
        let e = server.intake().get_case(GetCaseRequest { case_id: id.clone() }).await.expect_err("archived");
        assert!(e.message().contains("was archived"), "{}", e.message());
    }
    for id in &open {
        server.intake().get_case(GetCaseRequest { case_id: id.clone() }).await.expect("still there");
    }
    drop(server);
    let o = shenguan(&["admin", "verify", "--db", &url]);
    assert!(o.status.success() && text(&o).contains("0 divergent"), "{}", text(&o));
}

/// An archive onto a full disk fails, leaves no file (not even the partial one) and removes
/// nothing; with room, the same run archives every closed case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_onto_a_full_disk_fails_whole_and_removes_nothing() {
    let Some(fs) = integration_tests::Tmpfs::mount_or_skip(4, "") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("live.db");
    let server = Server::start(&db);
    let (revoked, _) = old_cases(&server).await;
    server.two_years_on().await;
    let (before_rows, _) = rows(&db).await;
    let target = fs.path().join("full.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&target)]).await;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "the error says the disk is full: {}", text(&o));
    let left: Vec<_> = std::fs::read_dir(fs.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
    assert_eq!(rows(&db).await, (before_rows, BTreeSet::new()), "nothing removed");

    let room = dir.path().join("room.jsonl.gz");
    let o = server.cli(&["archive", "--before", "2025-01-01", "--out", s(&room)]).await;
    assert!(o.status.success() && text(&o).contains("30 cases removed"), "{}", text(&o));
    assert_eq!(rows(&db).await.1, revoked);
}
