//! The engine's behaviour on both backends: the same tests, run once on a SQLite file and once
//! on a PostgreSQL database (a fresh database per test; see `integration_tests::pg`), so the two
//! cannot drift. Each `both!` line makes `<test>::sqlite` and `<test>::postgres`.
//!
//! Then what only PostgreSQL has: two engines (nodes) on one database deciding on the same
//! instances (optimistic concurrency), a node whose lease was taken writing nothing (fencing),
//! and a node refused for a shard count the database was not set up with.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use shenguan::engine::{Config, Engine};
use shenguan::machine::{Command, CommandKind, Rejection};
use shenguan::store::{Database, ReadStore, Table};
use shenguan::writer::{GroupItem, WriteError};

fn t(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).expect("rfc3339").timestamp_millis()
}

/// Where one run of a test keeps its state.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn sqlite() -> Self {
        Backend::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    async fn postgres() -> Option<Self> {
        integration_tests::pg::database().await.map(Backend::Postgres)
    }

    fn database(&self) -> Database {
        match self {
            Backend::Sqlite(dir) => Database::Sqlite(dir.path().join("e.db")),
            Backend::Postgres(url) => Database::Postgres(url.clone()),
        }
    }

    async fn reader(&self) -> Arc<dyn ReadStore> {
        self.database().reader(2).await.expect("reader")
    }

    fn config(&self) -> Config {
        let mut c = Config::with_database(self.database());
        // These tests count every message written over months of virtual time: none is pruned
        // unless a test asks for it.
        c.outbox_retention = i64::MAX;
        c
    }

    async fn start(&self, clock: &VirtualClock, config: impl FnOnce(&mut Config)) -> Engine {
        let mut c = self.config();
        config(&mut c);
        Engine::start(c, context(Arc::new(Registry::embedded().expect("workflows")), clock)).await.expect("starts")
    }
}

fn context(registry: Arc<Registry>, clock: &VirtualClock) -> shenguan::engine::Context {
    shenguan::engine::Context::new(registry, Calendars::embedded().expect("calendars"), Arc::new(clock.clone()))
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::sqlite()).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(b) = super::Backend::postgres().await {
                    super::$name(b).await;
                }
            }
        }
    };
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

async fn verify(b: &Backend, registry: &Registry) -> shenguan::admin::Report {
    shenguan::admin::verify_database(&b.database(), registry, &Calendars::embedded().expect("calendars"))
        .await
        .expect("verify")
}

both!(reminders_and_deadlines_fire_on_the_virtual_clock_and_overdue_ones_fire_at_restart_in_order);
async fn reminders_and_deadlines_fire_on_the_virtual_clock_and_overdue_ones_fire_at_restart_in_order(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = b.start(&clock, |_| {}).await;
    for (id, deadline) in [("a", "2026-09-30"), ("b", "2026-10-02"), ("c", "2026-10-05"), ("d", "2026-09-30")] {
        let applied = engine.submit(case(id, deadline, None)).await.expect("accepted");
        assert_eq!(applied.instance.state, "pending");
    }
    engine.submit(materials("d")).await.expect("materials");

    // Just before 09:00 on the day before a's deadline: nothing fires early.
    clock.advance_to(t("2026-09-29T08:59:59.999+08:00"));
    engine.settle().await;
    let store = b.reader().await;
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
    let engine = b.start(&clock, |c| c.page = 2).await;
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
    let mut sorted = dues.clone();
    sorted.sort_unstable();
    assert_eq!(dues, sorted, "overdue timers fire in due order: {after_restart:?}");
    assert_eq!(store.count(Table::Timers).await.expect("count"), 0);
    assert!(store.count(Table::Outbox).await.expect("count") >= 7, "reminders, overdue notices, licence");
    engine.shutdown().await;
    let report = verify(&b, &Registry::embedded().expect("w")).await;
    assert_eq!(report.instances, 4);
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
}

both!(the_same_request_again_gets_the_first_answer_and_another_payload_is_refused);
async fn the_same_request_again_gets_the_first_answer_and_another_payload_is_refused(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = b.start(&clock, |_| {}).await;
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
    assert_eq!(b.reader().await.count(Table::History).await.expect("count"), 2, "x and y once each");
    engine.shutdown().await;
}

both!(a_running_instance_stays_on_its_version_and_new_ones_take_the_newest);
async fn a_running_instance_stays_on_its_version_and_new_ones_take_the_newest(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let v1 =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/commitment_case.v1.toml"))
            .expect("v1");
    // v2 sends submitted materials to a new `checking` state instead of licensing at once.
    let v2 = v1.replace("version = 1", "version = 2").replacen("from = [\"pending\", \"reminded\"]\nevent = \"materials_submitted\"\nto = \"licensed\"", "from = [\"pending\", \"reminded\"]\nevent = \"materials_submitted\"\nto = \"checking\"", 1)
        + "\n[[states]]\nname = \"checking\"\n\n[[transitions]]\nfrom = \"checking\"\nevent = \"materials_submitted\"\nto = \"licensed\"\n";
    let only_v1 = Arc::new(Registry::from_sources(&[("v1.toml", &v1)]).expect("v1 loads"));
    let engine = Engine::start(b.config(), context(only_v1, &clock)).await.expect("start");
    assert_eq!(engine.submit(case("old", "2026-10-09", None)).await.expect("old").instance.version, 1);
    engine.shutdown().await;

    let both = Arc::new(Registry::from_sources(&[("v1.toml", &v1), ("v2.toml", &v2)]).expect("both load"));
    let engine = Engine::start(b.config(), context(both.clone(), &clock)).await.expect("restart");
    let new = engine.submit(case("new", "2026-10-09", None)).await.expect("new");
    assert_eq!(new.instance.version, 2);
    assert_eq!(engine.submit(materials("old")).await.expect("old").instance.state, "licensed", "v1 rules");
    assert_eq!(engine.submit(materials("new")).await.expect("new").instance.state, "checking", "v2 rules");
    engine.shutdown().await;
    let report = verify(&b, &both).await;
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
    let only_v2 = Registry::from_sources(&[("v2.toml", &v2)]).expect("v2 loads");
    let report = verify(&b, &only_v2).await;
    assert_eq!(
        report.divergent,
        vec![("old".to_owned(), "workflow commitment_case version 1 is not loaded".to_owned())]
    );
}

both!(the_horizon_pages_timers_in_and_they_fire_in_due_order_across_pages);
async fn the_horizon_pages_timers_in_and_they_fire_in_due_order_across_pages(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-01T10:00:00+08:00"));
    // A one-hour horizon and pages of 7: 120 timers over a month never sit in memory at once.
    let engine = b
        .start(&clock, |c| {
            c.horizon = 3_600_000;
            c.page = 7;
            // A tiny instance cache: it fills and is emptied again and again along the way.
            c.cache_instances = 3;
        })
        .await;
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

    // Outbox ids are commit order; the timer behind each message must come in due order.
    let store = b.reader().await;
    let messages = store.outbox_after(0, &[], 1_000).await.expect("outbox");
    let mut dues = Vec::new();
    for m in &messages {
        let history = store.history(&m.instance).await.expect("history");
        let entry = history.iter().find(|h| h.seq == m.seq).expect("the entry that wrote it");
        if let CommandKind::Timer { due, .. } = entry.command {
            dues.push(due);
        }
    }
    assert_eq!(dues.len(), 120, "a reminder and an overdue notice per case");
    assert!(dues.windows(2).all(|w| w[0] <= w[1]), "fired out of due order: {dues:?}");
    assert_eq!(store.count(Table::Timers).await.expect("count"), 0);
}

both!(a_retried_group_answers_its_first_seq_and_writes_nothing);
/// A group sent again under its request id answers as it did the first time — its history
/// entry, not whatever the instance has reached since — and writes nothing.
async fn a_retried_group_answers_its_first_seq_and_writes_nothing(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = b.start(&clock, |_| {}).await;
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
    assert_eq!(b.reader().await.history("g1").await.expect("history").len(), 2, "the retry wrote nothing");
}

both!(delivered_and_stream_messages_are_pruned_after_their_retention_and_pending_ones_kept);
/// Messages past their retention are pruned by the writer if delivered or stream-only; one still
/// waiting for its push destination is kept. Request ids likewise.
async fn delivered_and_stream_messages_are_pruned_after_their_retention_and_pending_ones_kept(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let day = 24 * 3_600_000;
    let engine = b
        .start(&clock, |c| {
            c.outbox_retention = day;
            c.idempotency_retention = day;
            c.routes = [("supervision".to_owned(), "platform".to_owned())].into();
        })
        .await;
    // o1 is reminded (an SMS: stream only), o2 licensed (the supervision record: pushed, pending).
    engine.submit(case("o1", "2026-10-20", Some("req-o1"))).await.expect("o1");
    let store = b.reader().await;
    assert_eq!(store.count(Table::Idempotency).await.expect("count"), 1);
    engine.submit(case("o2", "2026-10-30", None)).await.expect("o2");
    engine.submit(materials("o2")).await.expect("licensed");
    clock.advance_to(t("2026-10-19T09:00:00+08:00"));
    engine.settle().await;
    assert_eq!(store.count(Table::Outbox).await.expect("count"), 2);
    // A day and an hour later: the reminder is past its retention, o1's deadline not yet due.
    clock.advance(day + 3_600_000);
    engine.settle().await;
    engine.submit(case("o3", "2026-12-30", None)).await.expect("applied");
    // The prune runs after a batch's callers are answered: once a later command is answered,
    // it is done.
    engine.submit(materials("o3")).await.expect("applied");
    let left: Vec<(String, &str)> = store
        .outbox_after(0, &[], 100)
        .await
        .expect("rows")
        .into_iter()
        .map(|m| (m.instance, m.status.as_str()))
        .collect();
    assert_eq!(
        left,
        vec![("o2".to_owned(), "pending"), ("o3".to_owned(), "pending")],
        "the old SMS is pruned; the undelivered record and the new one stay"
    );
    assert_eq!(store.count(Table::Idempotency).await.expect("count"), 0, "the request id past its retention");
    engine.shutdown().await;
}

both!(two_outcomes_of_one_message_in_one_batch_leave_the_latest);
/// A dispatcher may hand the writer two outcomes of one message at once — a failed attempt to
/// retry, then the attempt that gave up. The message must end as the latter: a dead letter, not
/// a pending message nobody will try again (PostgreSQL kept the earlier one).
async fn two_outcomes_of_one_message_in_one_batch_leave_the_latest(b: Backend) {
    use shenguan::store::{DeliveryState, OutboxMark};
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let engine = b.start(&clock, |c| c.routes = [("supervision".to_owned(), "platform".to_owned())].into()).await;
    engine.submit(case("m1", "2026-10-30", None)).await.expect("accepted");
    engine.submit(materials("m1")).await.expect("licensed: a supervision record for the platform");
    let store = b.reader().await;
    let message = store.outbox_pending("platform", 0, 10).await.expect("pending").pop().expect("one message");
    let mark = |attempts: u32, status: DeliveryState| OutboxMark {
        id: message.id,
        status,
        attempts,
        next_attempt_at: if status == DeliveryState::Pending { 1 } else { 0 },
        last_error: Some(format!("attempt {attempts} failed")),
        receipt: None,
        at: 1_000 + i64::from(attempts),
    };
    let marks = vec![mark(1, DeliveryState::Pending), mark(2, DeliveryState::Dead)];
    engine.handle().outbound(shenguan::writer::Outbound::Marks(marks)).await.expect("recorded");
    let stored = store.message(&message.key).await.expect("read").expect("message");
    assert_eq!((stored.status, stored.attempts), (DeliveryState::Dead, 2), "{stored:?}");
    assert_eq!(stored.last_error.as_deref(), Some("attempt 2 failed"));
    engine.shutdown().await;
}

both!(a_schema_newer_than_this_build_is_refused_with_what_to_do);
/// A database migrated by a newer release is not touched: the node says so and does not start.
async fn a_schema_newer_than_this_build_is_refused_with_what_to_do(b: Backend) {
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    b.start(&clock, |_| {}).await.shutdown().await;
    let insert = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                  VALUES (99999, 'from the future', true, x'00', 1)";
    match &b {
        Backend::Sqlite(_) => {
            use sqlx::{ConnectOptions, Connection};
            let Database::Sqlite(path) = b.database() else { unreachable!() };
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.expect("open");
            sqlx::query(insert).execute(&mut conn).await.expect("insert");
            conn.close().await.expect("close");
        }
        Backend::Postgres(url) => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(&insert.replace("x'00'", "'\\x00'::bytea")).execute(&mut conn).await.expect("insert");
            conn.close().await.expect("close");
        }
    }
    let refused = Engine::start(b.config(), context(Arc::new(Registry::embedded().expect("w")), &clock)).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("schema is at version 99999, newer than this shenguan"), "{message}");
    assert!(message.contains("restore a backup"), "{message}");
    let migrate = shenguan::store::migrate(&b.database()).await.expect_err("migrate refuses too").to_string();
    assert!(migrate.contains("newer than this shenguan"), "{migrate}");
}

// ---- PostgreSQL only: several nodes on one database. ----------------------------------------

async fn node(url: &str, name: &str, clock: &VirtualClock, tick: std::time::Duration) -> Engine {
    let mut c = Config::with_database(Database::Postgres(url.to_owned()));
    c.outbox_retention = i64::MAX;
    c.cluster = Some(shenguan::cluster::Settings { node: name.to_owned(), lease: tick.saturating_mul(10), tick });
    Engine::start(c, context(Arc::new(Registry::embedded().expect("w")), clock)).await.expect("node starts")
}

/// 300 cases `<prefix>NNN` started at once on both nodes, each under the request id
/// `request(i, node)`; every answer.
async fn race(
    a: &Engine,
    b: &Engine,
    prefix: &'static str,
    request: fn(usize, &str) -> String,
) -> Vec<Result<shenguan::writer::Applied, WriteError>> {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        for (h, side) in [(a.handle(), "a"), (b.handle(), "b")] {
            calls.spawn(async move {
                h.submit(case(&format!("{prefix}{i:03}"), "2026-10-09", Some(&request(i, side)))).await
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(r) = calls.join_next().await {
        answers.push(r.expect("task"));
    }
    answers
}

/// Two nodes create the same cases at the same instant, each under its own request id: for
/// every case exactly one start is applied and the other is refused as a duplicate — never a
/// storage error, never two histories.
#[tokio::test]
async fn two_nodes_deciding_on_the_same_instances_never_both_win() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let tick = std::time::Duration::from_millis(200);
    let (a, b) = (node(&url, "a", &clock, tick).await, node(&url, "b", &clock, tick).await);
    let (mut applied, mut refused) = (0, 0);
    for r in race(&a, &b, "race", |i, side| format!("{side}-{i}")).await {
        match r {
            Ok(_) => applied += 1,
            Err(WriteError::Rejected(Rejection::AlreadyExists { .. })) => refused += 1,
            Err(other) => panic!("a racing start must be applied or refused as existing, not {other:?}"),
        }
    }
    assert_eq!((applied, refused), (300, 300));
    let store = Backend::Postgres(url.clone()).reader().await;
    assert_eq!(store.count(Table::History).await.expect("count"), 300, "one history entry per case");
    a.shutdown().await;
    b.shutdown().await;
}

/// The same request (one request id, one content) sent to two nodes at the same instant: one
/// applies it and the other answers it as a duplicate — never ALREADY_EXISTS, which a client
/// would read as "different content". (The other node may have read no key yet and the
/// instance already made.)
#[tokio::test]
async fn the_same_request_on_two_nodes_at_once_gets_the_first_answer_on_both() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let tick = std::time::Duration::from_millis(200);
    let (a, b) = (node(&url, "a", &clock, tick).await, node(&url, "b", &clock, tick).await);
    let (mut first, mut duplicate) = (0, 0);
    for r in race(&a, &b, "same", |i, _| format!("req-{i}")).await {
        match r {
            Ok(applied) if applied.duplicate => duplicate += 1,
            Ok(_) => first += 1,
            Err(other) => panic!("an identical request must get the first answer, not {other:?}"),
        }
    }
    assert_eq!((first, duplicate), (300, 300));
    let store = Backend::Postgres(url.clone()).reader().await;
    assert_eq!(store.count(Table::History).await.expect("count"), 300, "one history entry per case");
    a.shutdown().await;
    b.shutdown().await;
}

/// A node whose shard leases were taken (it was frozen, or cut off) and that has not noticed yet
/// fires its due timers into a fence: nothing is written. The new holder fires each once.
#[tokio::test]
async fn a_node_whose_lease_was_taken_writes_nothing_and_the_new_holder_fires_once() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    // A keeper that never ticks again after start: the node cannot notice the take-over itself.
    let a = node(&url, "a", &clock, std::time::Duration::from_secs(3600)).await;
    assert_eq!(a.ownership().expect("cluster").held().len(), 64, "alone, it holds every shard");
    for i in 0..20 {
        a.submit(case(&format!("f{i:02}"), "2026-09-30", None)).await.expect("accepted");
    }
    // Another party takes every lease (as a node would after they expired).
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE shard_leases SET owner = 'thief', epoch = epoch + 1, expires_at = 0")
        .execute(&mut conn)
        .await
        .expect("take");
    clock.advance_to(t("2026-09-29T09:00:00+08:00"));
    a.settle().await;
    let store = Backend::Postgres(url.clone()).reader().await;
    assert_eq!(store.count(Table::History).await.expect("count"), 20, "the fenced node fired nothing");
    assert!(a.context().metrics.fenced.get() >= 1, "the fires met the fence");
    // The thief's leases have expired (expires_at = 0): a new node takes them and fires.
    let b = node(&url, "b", &clock, std::time::Duration::from_millis(100)).await;
    // a still looks alive for a moment (its heartbeat is recent): b takes half at first, and
    // the rest once a's heartbeat is older than the lease time.
    let ob = b.ownership().expect("cluster");
    let mut changed = ob.subscribe();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while ob.held().len() < 64 {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), changed.changed()).await;
        }
    })
    .await
    .expect("b holds every shard");
    // The keeper loads a shard's timers just after taking it; loading them again here makes
    // sure they are in the wheel before settling.
    b.handle().shards(ob.held(), Vec::new()).await.expect("load");
    b.settle().await;
    let mut reminded = 0;
    for i in 0..20 {
        let id = format!("f{i:02}");
        let fires = store
            .history(&id)
            .await
            .expect("history")
            .iter()
            .filter(|h| matches!(h.command, CommandKind::Timer { .. }))
            .count();
        assert_eq!(fires, 1, "{id} fired once");
        reminded += usize::from(store.instance(&id).await.expect("read").expect("row").state == "reminded");
    }
    assert_eq!(reminded, 20);
    a.shutdown().await;
    b.shutdown().await;
}

/// A batch of fires meets the fence because one of its shards was taken: the fires of the
/// shards the node still holds are not lost with it — the node lets go of the lost shard at
/// once and fires the rest again — and the lost shard's timer is left to its new holder.
#[tokio::test]
async fn a_fenced_batch_fires_again_what_the_node_still_holds() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    // A keeper that never ticks again after start: only the fence can tell the node.
    let a = node(&url, "a", &clock, std::time::Duration::from_secs(3600)).await;
    let ids: Vec<String> = (0..20).map(|i| format!("g{i:02}")).collect();
    for id in &ids {
        a.submit(case(id, "2026-09-30", None)).await.expect("accepted");
    }
    let stolen = shenguan::store::shard_of("g00", 64);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("UPDATE shard_leases SET owner = 'thief', epoch = epoch + 1 WHERE shard = $1")
        .bind(i64::from(stolen))
        .execute(&mut conn)
        .await
        .expect("take one");
    clock.advance_to(t("2026-09-29T09:00:00+08:00"));
    a.settle().await;
    assert!(a.context().metrics.fenced.get() >= 1, "the first batch met the fence");
    let store = Backend::Postgres(url.clone()).reader().await;
    for id in &ids {
        let state = store.instance(id).await.expect("read").expect("row").state;
        let expected = if shenguan::store::shard_of(id, 64) == stolen { "pending" } else { "reminded" };
        assert_eq!(state, expected, "{id} (shard {})", shenguan::store::shard_of(id, 64));
    }
    assert!(!a.ownership().expect("cluster").holds(stolen), "the node let go of the stolen shard");
    a.shutdown().await;
}

/// Every node must spread instances the same way: one started with another shard count than the
/// database was set up with is refused, with the count to use.
#[tokio::test]
async fn a_node_with_another_shard_count_is_refused() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    node(&url, "a", &clock, std::time::Duration::from_millis(200)).await.shutdown().await;
    let mut c = Config::with_database(Database::Postgres(url.clone()));
    c.shards = 16;
    let refused = Engine::start(c, context(Arc::new(Registry::embedded().expect("w")), &clock)).await;
    let message = refused.err().expect("refused").to_string();
    assert!(message.contains("set up with 64 shards and this node with 16"), "{message}");
    assert!(message.contains("--shards 64"), "{message}");
}

/// Two nodes share the shards fairly, and one leaving gracefully hands its shards over at once.
#[tokio::test]
async fn nodes_share_the_shards_and_a_leaving_node_hands_them_over() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let tick = std::time::Duration::from_millis(100);
    let a = node(&url, "a", &clock, tick).await;
    let b = node(&url, "b", &clock, tick).await;
    let (oa, ob) = (a.ownership().expect("a"), b.ownership().expect("b"));
    let mut seen = ob.subscribe();
    // The join settles within a few ticks: a hands back half, b takes it.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !(oa.held().len() == 32 && ob.held().len() == 32) {
            let _ = tokio::time::timeout(tick, seen.changed()).await;
        }
    })
    .await
    .expect("a fair split within 10 s");
    assert!(oa.held().iter().all(|s| !ob.holds(*s)), "no shard held twice");
    a.shutdown().await;
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while ob.held().len() < 64 {
            let _ = tokio::time::timeout(tick, seen.changed()).await;
        }
    })
    .await
    .expect("b takes every shard soon after a leaves (not after the lease time)");
    b.shutdown().await;
}

/// A catalog imported through one node is in force on the other at once (a notification), and
/// two nodes importing the same catalog at the same moment make one version, never two
/// versions numbered alike: the second is checked again on what the first stored, and changes
/// nothing.
#[tokio::test]
async fn a_catalog_imported_on_one_node_is_in_force_on_every_node() {
    let Some(url) = integration_tests::pg::database().await else { return };
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let tick = std::time::Duration::from_millis(200);
    let (a, b) = (node(&url, "a", &clock, tick).await, node(&url, "b", &clock, tick).await);
    let files = shenguan::catalog::example_files();
    let import = |by: &str| shenguan::catalog::submit::CatalogImport {
        files: files.clone(),
        actor: by.to_owned(),
        comment: String::new(),
        dry_run: false,
        region_scope: None,
    };
    let reader = Backend::Postgres(url.clone()).reader().await;
    let submit = |n: &Engine, by: &str| {
        let (handle, live, now) = (n.handle(), n.context().catalogs.clone(), n.context().clock.now());
        let (reader, import) = (reader.clone(), import(by));
        async move { shenguan::catalog::submit::import(reader.as_ref(), &handle, &live, now, import).await }
    };
    let (ra, rb) = tokio::join!(submit(&a, "a"), submit(&b, "b"));
    let mut imported = 0;
    for r in [ra, rb] {
        match r {
            Ok(i) if i.versions.len() == 10 => imported += 1,
            Ok(i) => assert_eq!(i.unchanged.len(), 10, "the second sees the first's rows: {i:?}"),
            Err(shenguan::catalog::submit::ImportError::Write(WriteError::Conflict(_))) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(imported, 1, "one import made the versions");
    let history = Backend::Postgres(url.clone())
        .reader()
        .await
        .catalog_history(shenguan::catalog::Kind::Linkage)
        .await
        .expect("history");
    assert_eq!(history.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
    // Both nodes have it in force: the importer at once, the other by the notification.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for n in [&a, &b] {
        while n.context().catalogs.current().version(shenguan::catalog::Kind::Linkage) != 1 {
            assert!(std::time::Instant::now() < deadline, "the other node never put the import in force");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

both!(a_timer_fire_refused_for_another_reason_than_staleness_is_logged_and_counted);
/// A fire whose transition cannot be taken — here the next state's deadline cannot be computed
/// — is refused by the machine and dropped: it must not vanish from sight. It is counted by
/// reason (and logged); the other instance's fire, which can be taken, is not.
async fn a_timer_fire_refused_for_another_reason_than_staleness_is_logged_and_counted(b: Backend) {
    const WORKFLOW: &str = r#"
name = "chained"
version = 1
description = "A timer whose transition enters a state with a timer of its own"
initial = "waiting"
terminal = ["done"]

[vars]
at = "instant"
then = "instant?"

[events]
finish = {}
tick = { internal = true }

[[states]]
name = "waiting"
timers = [{ name = "t", at = "at", event = "tick" }]

[[states]]
name = "next"
timers = [{ name = "u", at = "then", event = "finish" }]

[[states]]
name = "done"

[[transitions]]
from = "waiting"
event = "tick"
to = "next"

[[transitions]]
from = ["waiting", "next"]
event = "finish"
to = "done"
"#;
    let clock = VirtualClock::new(t("2026-09-28T10:00:00+08:00"));
    let registry = Arc::new(Registry::from_sources(&[("chained.toml", WORKFLOW)]).expect("loads"));
    let engine = Engine::start(b.config(), context(registry, &clock)).await.expect("start");
    for (id, vars) in [
        ("c-ok", json!({"at": "2026-09-28T10:01:00+08:00", "then": "2026-09-29T10:00:00+08:00"})),
        ("c-bad", json!({"at": "2026-09-28T10:01:00+08:00"})),
    ] {
        let serde_json::Value::Object(vars) = vars else { unreachable!() };
        let start = Command {
            instance: id.into(),
            kind: CommandKind::Start { workflow: "chained".into(), version: None, vars },
            actor: "test".into(),
            request_id: None,
            idempotency: None,
        };
        engine.submit(start).await.expect("started");
    }
    clock.advance_to(t("2026-09-28T10:02:00+08:00"));
    engine.settle().await;
    let store = b.reader().await;
    assert_eq!(store.instance("c-ok").await.expect("read").expect("row").state, "next");
    assert_eq!(store.instance("c-bad").await.expect("read").expect("row").state, "waiting");
    let metrics = engine.context().metrics.render();
    let rejected: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("shenguan_timer_fires_rejected_total")).collect();
    assert_eq!(rejected, ["shenguan_timer_fires_rejected_total{reason=\"Deadline\"} 1"], "the refused fire is counted");
    engine.shutdown().await;
}

/// A batch on PostgreSQL is one statement with no transaction around it. One that PostgreSQL
/// refuses — a history entry another node wrote first, a shard lease that moved on — writes
/// nothing of itself: not the instances, messages and keys beside the refused row.
#[tokio::test]
async fn a_batch_refused_in_its_one_statement_writes_nothing_of_itself() {
    use shenguan::machine::{HistoryEntry, Message};
    use shenguan::store::postgres::PgStore;
    use shenguan::store::{Batch, Error, Fence, IdempotencyRow, InstanceRow, OutboxRow, Store};
    use sqlx::Connection;
    let Some(url) = integration_tests::pg::database().await else { return };
    let mut store = PgStore::open(&url, &Default::default()).await.expect("open");
    let reader = Backend::Postgres(url.clone()).reader().await;
    let instance = |id: &str| InstanceRow {
        id: id.into(),
        workflow: "commitment_case".into(),
        version: 1,
        state: "pending".into(),
        seq: 1,
        shard: 5,
        ..InstanceRow::default()
    };
    let entry = |id: &str| {
        let command = CommandKind::Event { name: "materials_submitted".into(), fields: serde_json::Map::new() };
        let entry = HistoryEntry {
            seq: 1,
            at: 1,
            actor: "测试".into(),
            request_id: Some(format!("req-{id}")),
            command,
            from: None,
            to: "pending".into(),
            armed: Default::default(),
            cancelled: Default::default(),
            messages: 1,
            handled: true,
            calendar: 0,
        };
        (id.to_owned(), entry)
    };
    let message = |id: &str| OutboxRow {
        key: format!("{id}:1:0"),
        instance: id.into(),
        seq: 1,
        message: Message::text("sms", None, "您的承诺事项即将到期"),
        destination: None,
        created_at: 1,
    };
    let key = |id: &str| {
        let row = IdempotencyRow { instance: id.into(), seq: 1, fingerprint: "0123".into(), created_at: 1 };
        (format!("req-{id}"), row)
    };
    let case = |id: &str| Batch {
        instances: vec![instance(id)],
        history: vec![entry(id)],
        outbox: vec![message(id)],
        idempotency: vec![key(id)],
        ..Batch::default()
    };
    let counts = || async {
        let mut n = vec![];
        for t in [Table::Instances, Table::History, Table::Outbox, Table::Idempotency] {
            n.push(reader.count(t).await.expect("count"));
        }
        n
    };
    store.commit(&case("x")).await.expect("the first batch commits");
    assert_eq!(counts().await, [1, 1, 1, 1]);

    // y's rows and x's entry and message again, as a node that decided on a stale x would
    // send them: whichever of the two the statement meets first, it is a conflict.
    let mut stale = case("y");
    stale.history.push(entry("x"));
    stale.outbox.push(message("x"));
    let e = store.commit(&stale).await.expect_err("x's entry exists");
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    assert_eq!(counts().await, [1, 1, 1, 1], "nothing of y was written");

    // The node holds shard 5 at epoch 2 and 6 at epoch 1; its fence names epoch 1 for both.
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(
        "INSERT INTO shard_leases (shard, owner, epoch, expires_at) VALUES (5, 'n1', 2, 0), (6, 'n1', 1, 0) \
         ON CONFLICT (shard) DO UPDATE SET owner = excluded.owner, epoch = excluded.epoch",
    )
    .execute(&mut conn)
    .await
    .expect("leases");
    let mut fenced = case("z");
    fenced.fence = Some(Fence { node: "n1".into(), shards: vec![(5, 1), (6, 1)] });
    let e = store.commit(&fenced).await.expect_err("shard 5 moved on");
    match e {
        Error::Fenced { node, lost } => assert_eq!((node.as_str(), lost.as_slice()), ("n1", &[5][..])),
        other => panic!("{other:?}"),
    }
    assert_eq!(counts().await, [1, 1, 1, 1], "nothing of z was written");

    fenced.fence = Some(Fence { node: "n1".into(), shards: vec![(5, 2), (6, 1)] });
    store.commit(&fenced).await.expect("the epochs it holds");
    assert_eq!(counts().await, [2, 2, 2, 2]);
}
