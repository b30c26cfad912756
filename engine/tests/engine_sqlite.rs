//! The engine on a real SQLite file with the virtual clock: timers firing in order across
//! restarts, idempotent requests, and bad database paths and write failures answered with
//! clear errors and nothing half-written.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use shenguan::engine::{Config, Engine};
use shenguan::machine::{Command, CommandKind, Rejection};
use shenguan::store::sqlite::{SqliteStore, Table};
use shenguan::writer::{GroupItem, WriteError};

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
async fn reminders_and_deadlines_fire_on_the_virtual_clock_and_overdue_ones_fire_at_restart_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("e.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = start(&db, &clock, |_| {}).await.expect("starts");
    for (id, deadline) in [("a", "2026-09-30"), ("b", "2026-10-02"), ("c", "2026-10-05"), ("d", "2026-09-30")] {
        let applied = engine.submit(case(id, deadline, None)).await.expect("accepted");
        assert_eq!(applied.instance.state, "pending");
    }
    engine.submit(materials("d")).await.expect("materials");

    // Just before 09:00 on the day before a's deadline: nothing fires early.
    clock.advance_to(t("2026-09-29T08:59:59.999+08:00"));
    engine.settle().await;
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.instance("a").await.expect("read").expect("a").state, "pending");
    clock.advance_to(t("2026-09-29T09:00:00+08:00"));
    engine.settle().await;
    let a = store.instance("a").await.expect("read").expect("a");
    assert_eq!(a.state, "reminded");
    let history = store.history("a").await.expect("history");
    assert_eq!(history.last().expect("entry").at, t("2026-09-29T09:00:00+08:00"), "fired exactly at its due instant");
    assert_eq!(store.instance("d").await.expect("read").expect("d").state, "licensed");
    engine.shutdown().await;

    // Down for a week: at restart everything overdue fires at once, oldest first.
    clock.advance_to(t("2026-10-07T12:00:00+08:00"));
    let engine = start(&db, &clock, |c| c.page = 2).await.expect("restarts");
    engine.settle().await;
    let mut fired = Vec::new();
    for id in ["a", "b", "c"] {
        let row = store.instance(id).await.expect("read").expect("row");
        assert_eq!(row.state, "overdue", "{id}");
        assert!(row.timers.is_empty());
        for h in store.history(id).await.expect("history") {
            if let CommandKind::Timer { name, due } = h.command {
                fired.push((h.at, due, id, name));
            }
        }
    }
    // b and c each fire a reminder then a deadline after the restart; a only its deadline.
    let after_restart: Vec<_> = fired.iter().filter(|f| f.0 >= t("2026-10-07T12:00:00+08:00")).collect();
    assert_eq!(after_restart.len(), 5, "{fired:?}");
    let dues: Vec<i64> = after_restart.iter().map(|f| f.1).collect();
    let sorted = {
        let mut s = dues.clone();
        s.sort_unstable();
        s
    };
    assert_eq!(dues, sorted, "overdue timers fire in due order: {after_restart:?}");
    assert_eq!(store.count(Table::Timers).await.expect("count"), 0);
    assert!(store.count(Table::Outbox).await.expect("count") >= 7, "reminders, overdue notices, licence");
    let report =
        shenguan::admin::verify_file(&db, &Registry::embedded().expect("w"), &Calendars::embedded().expect("c"))
            .await
            .expect("verify");
    assert_eq!(report.instances, 4);
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
    engine.shutdown().await;
}

#[tokio::test]
async fn the_same_request_again_gets_the_first_answer_and_another_payload_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("i.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = start(&db, &clock, |_| {}).await.expect("starts");
    let first = engine.submit(case("x", "2026-10-09", Some("req-1"))).await.expect("accepted");
    assert!(!first.duplicate);
    let again = engine.submit(case("x", "2026-10-09", Some("req-1"))).await.expect("same answer");
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
    assert_eq!(again.instance, first.instance);
    let changed = engine.submit(case("x", "2026-10-10", Some("req-1"))).await;
    assert_eq!(changed, Err(WriteError::KeyReused { key: "req-1".into() }));
    // Without a request id, a second start of the same id is refused by the state machine.
    let dup = engine.submit(case("x", "2026-10-09", None)).await;
    assert_eq!(dup, Err(WriteError::Rejected(Rejection::AlreadyExists { instance: "x".into() })));
    // Both in one batch: submitted concurrently, they are group-committed together.
    let (p, q) = tokio::join!(
        engine.submit(case("y", "2026-10-09", Some("req-2"))),
        engine.submit(case("y", "2026-10-09", Some("req-2")))
    );
    let (p, q) = (p.expect("first"), q.expect("second"));
    assert_eq!(p.duplicate as u8 + q.duplicate as u8, 1, "exactly one of the two was applied");
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.count(Table::History).await.expect("count"), 2, "x and y once each");
    engine.shutdown().await;
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

#[tokio::test]
async fn a_running_instance_stays_on_its_version_and_new_ones_take_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("v.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let v1 =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/commitment_case.v1.toml"))
            .expect("v1");
    // v2 sends submitted materials to a new `checking` state instead of licensing at once.
    let v2 = v1.replace("version = 1", "version = 2").replacen("from = [\"pending\", \"reminded\"]\nevent = \"materials_submitted\"\nto = \"licensed\"", "from = [\"pending\", \"reminded\"]\nevent = \"materials_submitted\"\nto = \"checking\"", 1)
        + "\n[[states]]\nname = \"checking\"\n\n[[transitions]]\nfrom = \"checking\"\nevent = \"materials_submitted\"\nto = \"licensed\"\n";
    let calendars = Calendars::embedded().expect("calendars");
    let only_v1 = Arc::new(Registry::from_sources(&[("v1.toml", &v1)]).expect("v1 loads"));
    let engine = Engine::start(
        Config::new(&db),
        shenguan::engine::Context::new(only_v1, calendars.clone(), Arc::new(clock.clone())),
    )
    .await
    .expect("start");
    assert_eq!(engine.submit(case("old", "2026-10-09", None)).await.expect("old").instance.version, 1);
    engine.shutdown().await;

    let both = Arc::new(Registry::from_sources(&[("v1.toml", &v1), ("v2.toml", &v2)]).expect("both load"));
    let engine = Engine::start(
        Config::new(&db),
        shenguan::engine::Context::new(both.clone(), calendars.clone(), Arc::new(clock.clone())),
    )
    .await
    .expect("restart");
    let new = engine.submit(case("new", "2026-10-09", None)).await.expect("new");
    assert_eq!(new.instance.version, 2);
    assert_eq!(engine.submit(materials("old")).await.expect("old").instance.state, "licensed", "v1 rules");
    assert_eq!(engine.submit(materials("new")).await.expect("new").instance.state, "checking", "v2 rules");
    engine.shutdown().await;
    let report = shenguan::admin::verify_file(&db, &both, &calendars).await.expect("verify");
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
    let only_v2 = Registry::from_sources(&[("v2.toml", &v2)]).expect("v2 loads");
    let report = shenguan::admin::verify_file(&db, &only_v2, &calendars).await.expect("verify");
    assert_eq!(
        report.divergent,
        vec![("old".to_owned(), "workflow commitment_case version 1 is not loaded".to_owned())]
    );
}

#[tokio::test]
async fn the_horizon_pages_timers_in_and_they_fire_in_due_order_across_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("h.db");
    let clock = VirtualClock::new(t("2026-09-01T10:00:00+08:00"));
    // A one-hour horizon and pages of 7: 120 timers over a month never sit in memory at once.
    let engine = start(&db, &clock, |c| {
        c.horizon = 3_600_000;
        c.page = 7;
        // A tiny instance cache: it fills and is emptied again and again along the way.
        c.cache_instances = 3;
    })
    .await
    .expect("starts");
    for i in 0..60u32 {
        let deadline = format!("2026-09-{:02}", 3 + i % 27);
        engine.submit(case(&format!("h{i:02}"), &deadline, None)).await.expect("accepted");
    }
    let mut most_in_memory = 0;
    for _ in 0..90 {
        clock.advance(8 * 3_600_000);
        engine.settle().await;
        most_in_memory = most_in_memory.max(engine.timers_in_memory());
    }
    assert!(most_in_memory <= 14, "the wheel held {most_in_memory} timers; the horizon should bound it");
    engine.shutdown().await;

    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db).read_only(true).connect().await.expect("open");
    // Outbox ids are commit order; the timer behind each message must come in due order.
    let dues: Vec<i64> = sqlx::query_scalar(
        "SELECT json_extract(h.command, '$.due') FROM outbox o JOIN history h ON h.instance_id = o.instance_id AND h.seq = o.seq \
         WHERE json_extract(h.command, '$.kind') = 'timer' ORDER BY o.id",
    )
    .fetch_all(&mut conn)
    .await
    .expect("query");
    assert_eq!(dues.len(), 120, "a reminder and an overdue notice per case");
    assert!(dues.windows(2).all(|w| w[0] <= w[1]), "fired out of due order: {dues:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM timers").fetch_one(&mut conn).await.expect("count");
    assert_eq!(left, 0);
}

/// A group sent again under its request id answers as it did the first time — its history
/// entry, not whatever the instance has reached since — and writes nothing.
#[tokio::test]
async fn a_retried_group_answers_its_first_seq_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("g.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = start(&db, &clock, |_| {}).await.expect("starts");
    let group = || vec![GroupItem { command: case("g1", "2026-10-09", Some("req-g1")), required: true }];
    let first = engine.handle().submit_group(group()).await.expect("applied");
    let first = first[0].clone().expect("answer");
    assert_eq!((first.seq, first.duplicate), (1, false));
    engine.submit(materials("g1")).await.expect("materials");
    let again = engine.handle().submit_group(group()).await.expect("duplicate");
    let again = again[0].clone().expect("answer");
    assert_eq!((again.seq, again.duplicate), (1, true), "the first answer's entry, not the instance's latest");
    assert_eq!(again.instance.state, "licensed", "the instance as it is now");
    engine.shutdown().await;
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.history("g1").await.expect("history").len(), 2, "the retry wrote nothing");
}

/// Messages past their retention are pruned by the writer if delivered or stream-only; one still
/// waiting for its push destination is kept.
#[tokio::test]
async fn delivered_and_stream_messages_are_pruned_after_their_retention_and_pending_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("o.db");
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let day = 24 * 3_600_000;
    let engine = start(&db, &clock, |c| {
        c.outbox_retention = day;
        c.idempotency_retention = day;
        c.routes = [("supervision".to_owned(), "platform".to_owned())].into();
    })
    .await
    .expect("starts");
    // o1 is reminded (an SMS: stream only), o2 licensed (the supervision record: pushed, pending).
    engine.submit(case("o1", "2026-10-20", None)).await.expect("o1");
    engine.submit(case("o2", "2026-10-30", None)).await.expect("o2");
    engine.submit(materials("o2")).await.expect("licensed");
    clock.advance_to(t("2026-10-19T09:00:00+08:00"));
    engine.settle().await;
    let mut store = SqliteStore::open_read_only(&db).await.expect("read");
    assert_eq!(store.count(Table::Outbox).await.expect("count"), 2);
    // A day and an hour later: the reminder is past its retention, o1's deadline not yet due.
    clock.advance(day + 3_600_000);
    engine.settle().await;
    engine.submit(case("o3", "2026-12-30", None)).await.expect("applied");
    // The prune runs after a batch's callers are answered: once a later command is answered,
    // it is done.
    engine.submit(materials("o3")).await.expect("applied");
    use sqlx::ConnectOptions;
    let mut conn =
        sqlx::sqlite::SqliteConnectOptions::new().filename(&db).read_only(true).connect().await.expect("open");
    let left: Vec<(String, String)> =
        sqlx::query_as("SELECT instance_id, status FROM outbox ORDER BY id").fetch_all(&mut conn).await.expect("rows");
    assert_eq!(
        left,
        vec![("o2".to_owned(), "pending".to_owned()), ("o3".to_owned(), "pending".to_owned())],
        "the old SMS is pruned; the undelivered record and the new one stay"
    );
    engine.shutdown().await;
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
        message: Message { channel: "sms".into(), recipient: None, body: body.into(), template: None },
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
