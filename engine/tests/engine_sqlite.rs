//! The engine on a real SQLite file: what only SQLite has — bad database paths, a capped
//! file that fills up, its prune plans, its connection reopened after a failure. The behaviour
//! both backends share is in `integration-tests/tests/backends.rs`.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use shenguan::engine::{Config, Engine};
use shenguan::machine::{Command, CommandKind};
use shenguan::store::sqlite::{SqliteStore, Table};
use shenguan::writer::WriteError;

fn t(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339").timestamp_millis()
}

async fn start(
    db: &Path,
    clock: &VirtualClock,
    config: impl FnOnce(&mut Config),
) -> Result<Engine, shenguan::engine::Error> {
    let mut c = Config::new(db);
    // These tests count every message written over months of virtual time: none is pruned
    // unless a test asks for it.
    c.outbox_retention = i64::MAX;
    config(&mut c);
    Engine::start(
        c,
        shenguan::engine::Context::new(
            Arc::new(Registry::embedded().expect("workflows")),
            Calendars::embedded().expect("calendars"),
            Arc::new(clock.clone()),
        ),
    )
    .await
}

fn case(id: &str, deadline: &str, request: Option<&str>) -> Command {
    let serde_json::Value::Object(vars) =
        json!({"region": "320700", "commitment_deadline": deadline, "applicant_mobile": "13800000000"})
    else {
        unreachable!()
    };
    Command {
        instance: id.into(),
        kind: CommandKind::Start { workflow: "commitment_case".into(), version: None, vars },
        actor: "test".into(),
        request_id: request.map(str::to_owned),
        idempotency: None,
    }
    .keyed("test")
}

fn materials(id: &str) -> Command {
    Command {
        instance: id.into(),
        kind: CommandKind::Event { name: "materials_submitted".into(), fields: serde_json::Map::new() },
        actor: "test".into(),
        request_id: None,
        idempotency: None,
    }
}

#[tokio::test]
async fn bad_database_paths_fail_at_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = VirtualClock::new(0);
    let err = |r: Result<Engine, shenguan::engine::Error>| match r {
        Ok(_) => panic!("should not start"),
        Err(e) => e.to_string(),
    };

    let missing = err(start(&dir.path().join("no/such/dir/x.db"), &clock, |_| {}).await);
    assert!(missing.contains("does not exist"), "{missing}");

    let corrupt_path = dir.path().join("corrupt.db");
    std::fs::write(&corrupt_path, vec![0x5a; 8192]).expect("write");
    let corrupt = err(start(&corrupt_path, &clock, |_| {}).await);
    assert!(corrupt.contains("not a SQLite database"), "{corrupt}");
    assert_eq!(std::fs::read(&corrupt_path).expect("read"), vec![0x5a; 8192], "a foreign file is left untouched");

    let is_dir = err(start(dir.path(), &clock, |_| {}).await);
    assert!(is_dir.contains("is a directory"), "{is_dir}");

    // /proc refuses new files even to root, so this is a read-only directory for everyone.
    let read_only = err(start(Path::new("/proc/shenguan-test.db"), &clock, |_| {}).await);
    assert!(read_only.contains("cannot open database /proc/shenguan-test.db"), "{read_only}");

    let no_file = SqliteStore::open_read_only(&dir.path().join("absent.db")).await.expect_err("no file");
    assert!(no_file.to_string().contains("no such database file"), "{no_file}");
    assert!(!dir.path().join("absent.db").exists(), "read-only open never creates a file");
}

#[tokio::test]
async fn a_full_disk_is_unavailable_at_run_time_and_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("full.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    // The cap is raised to the size the migrations left: any growth fails like a full disk.
    let engine = start(&db, &clock, |c| c.max_db_pages = Some(1)).await.expect("starts");
    let mut accepted = 0;
    let mut failure = None;
    for i in 0..2_000 {
        match engine.submit(case(&format!("case-{i:04}"), "2026-10-09", None)).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                failure = Some((i, e));
                break;
            }
        }
    }
    let Some((failed_at, error)) = failure else { panic!("the capped database never filled up") };
    assert!(matches!(&error, WriteError::Unavailable(m) if m.contains("full")), "{error:?}");
    // The engine is still answering (with the same clear error), not panicking.
    let again = engine.submit(case("one-more", "2026-10-09", None)).await;
    assert!(matches!(again, Err(WriteError::Unavailable(_))), "{again:?}");
    engine.shutdown().await;

    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.count(Table::Instances).await.expect("count"), accepted);
    assert_eq!(store.count(Table::History).await.expect("count"), accepted, "no history without its instance");
    assert_eq!(store.count(Table::Timers).await.expect("count"), accepted * 2, "no timer without its instance");
    assert!(store.instance(&format!("case-{failed_at:04}")).await.expect("read").is_none());
    let report =
        shenguan::admin::verify_file(&db, &Registry::embedded().expect("w"), &Calendars::embedded().expect("c"))
            .await
            .expect("verify");
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
}

/// Request ids past their retention are deleted by the writer, through the `created_at` index
/// (a prune that scanned the table would stall every commit behind it).
#[tokio::test]
async fn expired_request_ids_are_pruned_through_an_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let day = 24 * 3_600_000;
    let engine = start(&db, &clock, |c| c.idempotency_retention = day).await.expect("starts");
    for id in ["p1", "p2", "p3"] {
        engine.submit(case(id, "2026-10-30", Some(&format!("req-{id}")))).await.expect("applied");
    }
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.count(Table::Idempotency).await.expect("count"), 3);
    clock.advance(2 * day);
    engine.submit(case("p4", "2026-10-30", Some("req-p4"))).await.expect("applied");
    // The prune runs after a batch's callers are answered; the writer is one task, so once a
    // later command is answered, that prune is done.
    engine.submit(materials("p4")).await.expect("applied");
    assert_eq!(store.count(Table::Idempotency).await.expect("count"), 1, "only the key still in its retention");
    engine.shutdown().await;

    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db).read_only(true).connect().await.expect("open");
    let rows = sqlx::query("EXPLAIN QUERY PLAN SELECT key FROM idempotency WHERE created_at < 0 LIMIT 10")
        .fetch_all(&mut conn)
        .await
        .expect("plan");
    let plan: Vec<String> =
        rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, "detail").expect("detail")).collect();
    assert!(plan.iter().any(|d| d.contains("idempotency_created")), "{plan:?}");
}

/// A backlog of expired request ids (after downtime, a shorter retention, an upgrade) is
/// worked off a page at a time, paced — not a page after every batch, which added a large
/// delete to every commit and cut intake tenfold on the 10M-case benchmark.
#[tokio::test]
async fn a_backlog_of_expired_request_ids_is_pruned_at_a_bounded_pace() {
    use sqlx::{ConnectOptions, Connection, QueryBuilder};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("backlog.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let day = 24 * 3_600_000;
    start(&db, &clock, |_| {}).await.expect("creates the schema").shutdown().await;
    {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await.expect("open");
        let mut tx = conn.begin().await.expect("begin");
        for chunk in (0..25_000).collect::<Vec<u32>>().chunks(5_000) {
            let mut q = QueryBuilder::new("INSERT INTO idempotency (key, instance_id, seq, fingerprint, created_at) ");
            q.push_values(chunk, |mut b, i| {
                b.push_bind(format!("old-{i}")).push_bind(format!("gone-{i}")).push_bind(1).push_bind("f").push_bind(0);
            });
            q.build().execute(&mut *tx).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    let engine = start(&db, &clock, |c| c.idempotency_retention = day).await.expect("starts");
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    // Three batches at one instant; each prune runs after its batch is answered, and the writer
    // is one task, so once the third is answered the first two prunes are done.
    for id in ["b1", "b2", "b3"] {
        engine.submit(case(id, "2026-10-30", None)).await.expect("applied");
    }
    let left = store.count(Table::Idempotency).await.expect("count");
    assert_eq!(left, 20_000, "one page of 5,000 at once, then a pause");
    clock.advance(1_000);
    for id in ["b4", "b5"] {
        engine.submit(case(id, "2026-10-30", None)).await.expect("applied");
    }
    assert_eq!(store.count(Table::Idempotency).await.expect("count"), 15_000, "the next page a second later");
    engine.shutdown().await;
}

/// After a failed write the store reopens its database — and only reopens it: if the file has
/// gone (removed under a running server), the next operation is UNAVAILABLE and no empty,
/// unmigrated database appears in its place.
#[tokio::test]
async fn a_reopen_after_a_failure_never_creates_a_database() {
    use shenguan::machine::Message;
    use shenguan::store::{Batch, OutboxRow, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("gone.db");
    let mut store = SqliteStore::open(&db, &Default::default()).await.expect("open");
    let row = |body: &str| OutboxRow {
        key: "same-key".into(),
        instance: "x".into(),
        seq: 1,
        message: Message::text("sms", None, body),
        destination: None,
        created_at: 0,
    };
    // Two messages under one deduplication key: the database refuses the batch.
    let batch = Batch { outbox: vec![row("a"), row("b")], ..Batch::default() };
    let e = store.commit(&batch).await.expect_err("unique key");
    assert!(matches!(e, shenguan::store::Error::Internal(_)), "{e:?}");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let e = store.load_instances(&["x"]).await.expect_err("no database");
    assert!(matches!(e, shenguan::store::Error::Unavailable(_)), "{e:?}");
    assert!(!db.exists(), "the reopen created an empty database");
}

/// Catalog imports are checked outside the writer, which only commits the versions. Two
/// imports at once make one version per kind; an import checked against catalogs that
/// changed before its turn is refused as a conflict and, checked again, changes nothing.
#[tokio::test]
async fn catalog_imports_checked_outside_the_writer_never_overwrite_one_another() {
    use shenguan::catalog::submit::{self, CatalogImport};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("catalogs.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = start(&db, &clock, |_| {}).await.expect("start");
    let reader = shenguan::store::Database::Sqlite(db.clone()).reader(2).await.expect("reader");
    let live = engine.context().catalogs.clone();
    let import = |by: &str| CatalogImport {
        files: shenguan::catalog::example_files(),
        actor: by.to_owned(),
        comment: String::new(),
        dry_run: false,
        region_scope: None,
    };
    let kind = shenguan::catalog::Kind::Linkage;

    // Prepared against the empty catalogs, not yet submitted.
    let (stale, prepared) =
        submit::prepare(reader.as_ref(), &live, 0, Arc::new(import("late"))).await.expect("checked");
    assert_eq!(stale.versions.len(), 10);
    let prepared = prepared.expect("a batch to commit");

    let handle = engine.handle();
    let (a, b) = tokio::join!(
        submit::import(reader.as_ref(), &handle, &live, 0, import("a")),
        submit::import(reader.as_ref(), &handle, &live, 0, import("b")),
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    let made: Vec<usize> = [&a, &b].iter().map(|i| i.versions.len()).collect();
    assert!(made == [10, 0] || made == [0, 10], "one import made the versions: {made:?}");
    assert_eq!(live.current().version(kind), 1, "in force once answered");

    let refused = handle.prepared(prepared).await.expect_err("checked against catalogs that changed");
    assert!(matches!(refused, WriteError::Conflict(_)), "{refused:?}");
    let again = submit::import(reader.as_ref(), &handle, &live, 0, import("late")).await.expect("again");
    assert_eq!((again.versions.len(), again.unchanged.len()), (0, 10), "{again:?}");
    let history = reader.catalog_history(kind).await.expect("history");
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    engine.shutdown().await;
}
