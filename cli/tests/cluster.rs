//! Three `shenguan serve` processes on one PostgreSQL database, each with its own virtual clock
//! (the tests move all three together), under the faults a city's deployment meets:
//! (a) the deadlines of 10,000 cases fire exactly once across the nodes;
//! (b) a node SIGKILLed under intake and timer load: its shards move within the lease time,
//!     every acknowledged call is there, no deadline lost or recorded twice;
//! (c) PostgreSQL restarted under load: calls are answered UNAVAILABLE while it is down, the
//!     nodes recover by themselves, nothing acknowledged is lost;
//! (d) a node frozen with SIGSTOP past its lease and resumed writes nothing with its stale
//!     epoch;
//! (e) a rolling restart of all three under load loses nothing;
//! (f) delivery and the stream across nodes: a dead letter retried on any node is delivered by
//!     shard 0's holder; a holder frozen past its lease sends nothing more from its window; a
//!     stream consumer's Ack, take-over and drop on one node reach its stream on another; a
//!     quiet stream outlives the connection idle timeout.
//!
//! Leases are judged on the database's clock, in real time: the tests that move leases wait for
//! them by polling the lease table, never by sleeping a fixed time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::fixtures;
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::{self as pb, AdvanceClockRequest, Route, Scenario};
use sqlx::PgPool;
use tonic::transport::Channel;

const START: &str = "2026-09-28T10:00:00+08:00";
/// Lease time and tick of the test nodes: short, so that a dead node's shards move in seconds.
const LEASE: &str = "2s";
const TICK: &str = "200ms";

type Authed = integration_tests::Authed;

struct Node {
    name: String,
    child: Child,
    port: u16,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {}", self.name);
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: a graceful stop (the node hands its leases back); waits for the exit.
    fn terminate(&mut self) {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The shared folder (dev key and token) and the database of a cluster.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    pool: PgPool,
    nodes: Vec<Node>,
    /// The instant every node's clock reads.
    now: String,
}

/// Starts `serve` for node `name`; `port` 0 picks one. Answers once it serves.
fn spawn(dir: &Path, url: &str, name: &str, clock: &str, port: u16) -> Node {
    spawn_with(dir, url, name, clock, port, &[])
}

/// [`spawn`] with more `serve` arguments.
fn spawn_with(dir: &Path, url: &str, name: &str, clock: &str, port: u16, extra: &[String]) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--virtual-clock", clock])
        .args(extra)
        .args(["--db", &dir.join("shenguan.db").display().to_string()])
        .args(["--database", url, "--node", name, "--lease", LEASE, "--lease-tick", TICK])
        .env("RUST_LOG", "info,sqlx=warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let port = loop {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            _ => panic!("{name} exited before serving"),
        };
        if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("serving gRPC")) {
            let addr: std::net::SocketAddr = addr.trim().parse().expect("an address");
            break addr.port();
        }
    };
    let tag = name.to_owned();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[{tag}] {line}");
            }
        }
    });
    Node { name: name.to_owned(), child, port }
}

impl Cluster {
    async fn start(url: String, n: usize) -> Cluster {
        Cluster::start_with(url, n, |_| Vec::new()).await
    }

    /// [`Cluster::start`], each node with the `serve` arguments `extra` gives for the folder.
    async fn start_with(url: String, n: usize, extra: impl Fn(&Path) -> Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = PgPool::connect(&url).await.expect("connect");
        let args = extra(dir.path());
        let mut nodes = Vec::new();
        for i in 1..=n {
            // One at a time: the first makes the dev key the others read.
            nodes.push(spawn_with(dir.path(), &url, &format!("n{i}"), START, 0, &args));
        }
        Cluster { dir, url, pool, nodes, now: START.to_owned() }
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shenguan.db.dev-token")).expect("dev token").trim().to_owned()
    }

    fn channel(&self, node: &Node) -> Authed {
        let channel = Channel::from_shared(node.url()).expect("url").connect_lazy();
        tonic::service::interceptor::InterceptedService::new(channel, integration_tests::bearer(&self.token()))
    }

    fn intake(&self) -> Vec<IntakeServiceClient<Authed>> {
        self.nodes.iter().map(|n| IntakeServiceClient::new(self.channel(n))).collect()
    }

    /// Moves the clocks of the nodes at `which` to `to`, together.
    async fn advance(&mut self, which: &[usize], to: &str) {
        let mut calls = tokio::task::JoinSet::new();
        for &i in which {
            let mut admin = AdminServiceClient::new(self.channel(&self.nodes[i]));
            let to = to.to_owned();
            calls.spawn(async move { admin.advance_clock(AdvanceClockRequest { by_millis: 0, to }).await });
        }
        while let Some(r) = calls.join_next().await {
            r.expect("task").expect("advance");
        }
        self.now = to.to_owned();
    }

    /// Waits (polling the lease table) until `pred` holds of shard → owner, or panics after
    /// `limit`; answers how long it took.
    async fn until_leases(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&[(i64, Option<String>)]) -> bool,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
                "SELECT shard, owner FROM shard_leases \
                 WHERE expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint ORDER BY shard",
            )
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
            if pred(&rows) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "{what}: not within {limit:?}; leases: {rows:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node holds a share and together they hold all 64.
    async fn balanced(&self, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        self.until_leases(Duration::from_secs(30), "a balanced cluster", |rows| {
            rows.len() == 64
                && rows.iter().all(|(_, o)| o.as_ref().is_some_and(|o| names.contains(o)))
                && names.iter().all(|n| rows.iter().any(|(_, o)| o.as_deref() == Some(n.as_str())))
        })
        .await;
    }

    /// Waits until no stored timer is due before `instant` (the nodes that hold them have fired
    /// them); answers how long it took.
    async fn fired_before(&self, instant: &str, limit: Duration) -> Duration {
        let at = chrono::DateTime::parse_from_rfc3339(instant).expect("instant").timestamp_millis();
        let started = Instant::now();
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM timers WHERE due_at <= $1")
                .bind(at)
                .fetch_one(&self.pool)
                .await
                .unwrap_or(i64::MAX);
            if left == 0 {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "{left} timers due before {instant} not fired within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Timer fires recorded more than once: (instance, timer, times). Must be empty.
    async fn doubled_fires(&self) -> Vec<(String, String, i64)> {
        sqlx::query_as(
            "SELECT instance_id, (command::jsonb) ->> 'name', count(*) FROM history \
             WHERE (command::jsonb) ->> 'kind' = 'timer' \
             GROUP BY instance_id, (command::jsonb) ->> 'name', (command::jsonb) ->> 'due' HAVING count(*) > 1",
        )
        .fetch_all(&self.pool)
        .await
        .expect("query")
    }

    async fn fires(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM history WHERE (command::jsonb) ->> 'kind' = 'timer'")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// The acknowledged cases that are not stored. Must be empty.
    async fn missing(&self, acked: &[String]) -> Vec<String> {
        let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM instances WHERE id = ANY($1)")
            .bind(acked)
            .fetch_all(&self.pool)
            .await
            .expect("query");
        let stored: std::collections::HashSet<String> = stored.into_iter().collect();
        acked.iter().filter(|id| !stored.contains(*id)).cloned().collect()
    }
}

/// How a call failed: the server's answer, or the client's transport (a node that is gone or
/// going away: refused connections, streams reset by its GOAWAY — tonic reports those as
/// UNKNOWN, CANCELLED or INTERNAL "h2 protocol error" on the client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Failure {
    /// The connection failed or was reset: the call was not acknowledged.
    Transport,
    /// The client gave up waiting.
    Timeout,
    /// The server answered with this code.
    Answered(tonic::Code),
}

impl Failure {
    fn of(status: &tonic::Status) -> Failure {
        let m = status.message();
        // The client's own words for a connection that failed; a server's answer never says these.
        let transport = ["transport error", "h2 protocol error", "operation was canceled", "tcp connect error"];
        if status.code() == tonic::Code::DeadlineExceeded && m.contains("no answer") {
            Failure::Timeout
        } else if transport.iter().any(|t| m.starts_with(t)) {
            Failure::Transport
        } else {
            Failure::Answered(status.code())
        }
    }

    /// What a caller may see from a node that is stopping, killed, or whose database is down:
    /// a transport failure or UNAVAILABLE, never another answer.
    fn allowed(self) -> bool {
        matches!(self, Failure::Transport | Failure::Timeout | Failure::Answered(tonic::Code::Unavailable))
    }
}

/// Accepts cases round-robin over `clients` until `stop`, `in_flight` at a time; answers the
/// acknowledged case ids and the failures by gRPC code.
async fn intake(
    clients: Arc<Mutex<Vec<IntakeServiceClient<Authed>>>>,
    prefix: String,
    deadline: &'static str,
    in_flight: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<String>, HashMap<Failure, usize>) {
    let mut acked = Vec::new();
    let mut failed: HashMap<Failure, usize> = HashMap::new();
    let mut calls = tokio::task::JoinSet::new();
    let mut n = 0usize;
    loop {
        while calls.len() < in_flight && !*stop.borrow() {
            let mut client = {
                let clients = clients.lock().expect("clients");
                clients[n % clients.len()].clone()
            };
            let request = fixtures::deferral(&format!("{prefix}-{n}"), deadline);
            n += 1;
            calls.spawn(async move {
                tokio::time::timeout(Duration::from_secs(30), client.accept_case(request))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 30 s")))
            });
        }
        match calls.join_next().await {
            Some(Ok(Ok(r))) => acked.push(r.into_inner().case.map(|c| c.case_id).unwrap_or_default()),
            Some(Ok(Err(status))) => {
                let kind = Failure::of(&status);
                if !failed.contains_key(&kind) {
                    eprintln!("intake: first {kind:?}: {:?} {}", status.code(), status.message());
                }
                *failed.entry(kind).or_default() += 1;
            }
            Some(Err(e)) => panic!("intake task: {e}"),
            None => return (acked, failed),
        }
    }
}

/// Accepts `n` cases with `deadline`, spread over the nodes, 48 at a time; answers their ids.
/// A healthy cluster answers every call.
async fn accept(cluster: &Cluster, prefix: &str, n: usize, deadline: &str) -> Vec<String> {
    let clients = cluster.intake();
    let mut calls = tokio::task::JoinSet::new();
    let mut acked = Vec::with_capacity(n);
    let mut next = 0;
    while acked.len() < n {
        while calls.len() < 48 && next < n {
            let mut client = clients[next % clients.len()].clone();
            let request = fixtures::deferral(&format!("{prefix}-{next}"), deadline);
            next += 1;
            calls.spawn(async move { client.accept_case(request).await });
        }
        match calls.join_next().await {
            Some(r) => acked.push(
                r.expect("task")
                    .expect("a healthy cluster answers every call")
                    .into_inner()
                    .case
                    .map(|c| c.case_id)
                    .unwrap_or_default(),
            ),
            None => break,
        }
    }
    acked
}

async fn database() -> Option<String> {
    integration_tests::pg::database().await
}

/// One cluster at a time: three debug-built nodes each are all two cores can run without
/// starving the lease keepers (which would move leases for no fault of the test's).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// (a) 10,000 cases accepted through three nodes, all due at the same instant: every deadline
/// and every reminder fires exactly once, whichever node holds its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadlines_of_ten_thousand_cases_fire_exactly_once_across_three_nodes() {
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let mut cluster = Cluster::start(url, 3).await;
    cluster.balanced(&["n1", "n2", "n3"]).await;
    let acked = accept(&cluster, "A", 10_000, "2026-10-09").await;
    assert!(acked.len() >= 10_000);
    cluster.advance(&[0, 1, 2], "2026-10-12T09:00:00+08:00").await;
    cluster.fired_before("2026-10-12T09:00:00+08:00", Duration::from_secs(60)).await;
    assert!(cluster.missing(&acked).await.is_empty());
    assert_eq!(cluster.doubled_fires().await, vec![], "no timer fired twice");
    // In due order per case, whatever the leases did: the reminder, then the deadline.
    let fires = cluster.fires().await;
    assert!(fires >= 2 * acked.len() as i64, "a reminder and a deadline per case at least: {fires} fires");
}

/// Identical requests sent to two nodes at the same instant — AcceptCase (keyed by its case
/// number) and CompleteApproval (keyed by one `x-request-id`) — both get the first answer: one
/// applied, one a duplicate. Never ALREADY_EXISTS ("already exists", "different content"), which
/// a client following the README takes for another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_on_two_nodes_at_once_both_get_the_first_answer() {
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let cluster = Cluster::start(url, 2).await;
    cluster.balanced(&["n1", "n2"]).await;
    let clients = cluster.intake();
    let n = 200;
    let mut answers: Vec<Result<bool, tonic::Status>> = Vec::new();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        for client in &clients {
            let mut client = client.clone();
            let request = fixtures::accept(&format!("SAME-{i}"), Route::Normal, Scenario::Unspecified);
            calls.spawn(async move { client.accept_case(request).await.map(|r| r.into_inner().duplicate) });
        }
    }
    while let Some(r) = calls.join_next().await {
        answers.push(r.expect("task"));
    }
    for i in 0..n {
        for client in &clients {
            let mut client = client.clone();
            let mut request = tonic::Request::new(pb::CompleteApprovalRequest {
                case_id: format!("320700/SAME-{i}"),
                license_no: format!("JY-SAME-{i}"),
                approval_opinion: "准予许可".into(),
                ..Default::default()
            });
            request.metadata_mut().insert("x-request-id", format!("licence-{i}").parse().expect("ascii"));
            calls.spawn(async move { client.complete_approval(request).await.map(|r| r.into_inner().duplicate) });
        }
    }
    while let Some(r) = calls.join_next().await {
        answers.push(r.expect("task"));
    }
    let wrong: Vec<String> = answers.iter().filter_map(|a| a.as_ref().err()).map(|s| format!("{s:?}")).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} identical requests refused: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(3)]
    );
    let duplicates = answers.iter().filter(|a| matches!(a, Ok(true))).count();
    assert_eq!(duplicates, 2 * n, "one applied and one duplicate per pair");
}

/// A dead letter retried on a node that does not deliver (only shard 0's holder does) is
/// delivered at once: the retry is told to the holder's dispatcher through the database (it
/// waited until shard 0 moved). And the holder's case held behind it goes on in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_on_any_node_is_delivered_by_shard_zeros_holder() {
    use integration_tests::receiver::{Answer, Receiver};
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refuse = refusing.clone();
    let hook = Receiver::start(move |r, _| {
        if r.json()["type"] == "approval_record" && refuse.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(422)
        } else {
            Answer::Ok
        }
    })
    .await
    .expect("receiver");
    let hook_url = hook.url();
    let cluster = Cluster::start_with(url, 2, |dir| webhook_to(dir, &hook_url, "max_attempts = 2\n", "")).await;
    cluster.balanced(&["n1", "n2"]).await;
    let mut intake = cluster.intake().remove(0);
    intake.accept_case(fixtures::accept("DL-1", Route::Normal, Scenario::Unspecified)).await.expect("accept");
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: "320700/DL-1".into(),
            license_no: "JY-DL-1".into(),
            approval_opinion: "准予许可".into(),
            ..Default::default()
        })
        .await
        .expect("licence");
    let holder: String = sqlx::query_scalar("SELECT owner FROM shard_leases WHERE shard = 0")
        .fetch_one(&cluster.pool)
        .await
        .expect("shard 0");
    let other = cluster.nodes.iter().find(|n| n.name != holder).expect("another node");
    let mut admin = AdminServiceClient::new(cluster.channel(other));
    let started = Instant::now();
    let dead = loop {
        let d = admin.list_dead_letters(pb::ListDeadLettersRequest::default()).await.expect("list").into_inner();
        if let Some(d) = d.dead_letters.into_iter().next() {
            break d;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    let key = dead.message.expect("message").key;
    admin.retry_dead_letter(pb::RetryDeadLetterRequest { key: key.clone() }).await.expect("retry");
    // Well inside the lease: shard 0 does not move in this test.
    let accepted =
        hook.wait_accepted(1, Duration::from_secs(20)).await.expect("delivered after the retry on another node");
    assert_eq!(accepted[0].key, key);
    let still: String = sqlx::query_scalar("SELECT owner FROM shard_leases WHERE shard = 0")
        .fetch_one(&cluster.pool)
        .await
        .expect("shard 0");
    assert_eq!(still, holder, "delivered by the holder, not after a hand-over");
}

/// Accepts and licenses case `name` through `intake`: its licence writes messages (the
/// approval record, the supervision tasks pushed).
async fn license(intake: &mut IntakeServiceClient<Authed>, name: &str) {
    intake.accept_case(fixtures::accept(name, Route::Normal, Scenario::Unspecified)).await.expect("accept");
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: format!("320700/{name}"),
            license_no: format!("JY-{name}"),
            approval_opinion: "准予许可".into(),
            ..Default::default()
        })
        .await
        .expect("licence");
}

/// A node frozen while it holds shard 0, with messages in its delivery window, sends none of
/// them once it is resumed: the other node took shard 0 and delivered everything meanwhile, and
/// the resumed node, whose lease surely expired while it was frozen, stops before its keeper
/// learns that the lease moved (before the fix it went on sending its window: every one a
/// duplicate, and out of order with the new holder's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_shard_zero_sends_nothing_more_from_its_window() {
    use integration_tests::receiver::{Answer, Receiver};
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    // The first request ever hangs (until the sender's timeout): the holder's one delivery
    // slot is taken, and everything after it waits in its window.
    let hook = Receiver::start(|_, _| Answer::Ok).await.expect("receiver");
    let hung = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = hung.clone();
    hook.set_script(
        move |_, _| {
            if first.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Answer::Ok
            } else {
                Answer::Hang
            }
        },
    );
    let hook_url = hook.url();
    let cluster = Cluster::start_with(url, 2, |dir| webhook_to(dir, &hook_url, "", "concurrency = 1\n")).await;
    cluster.balanced(&["n1", "n2"]).await;
    let holder: String = sqlx::query_scalar("SELECT owner FROM shard_leases WHERE shard = 0")
        .fetch_one(&cluster.pool)
        .await
        .expect("shard 0");
    let (h, o) = if cluster.nodes[0].name == holder { (0, 1) } else { (1, 0) };
    let mut intake = IntakeServiceClient::new(cluster.channel(&cluster.nodes[o]));
    for i in 0..8 {
        license(&mut intake, &format!("W-{i}")).await;
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE destination = 'platform'")
        .fetch_one(&cluster.pool)
        .await
        .expect("count");
    assert!(total >= 8, "the licences wrote messages for the platform: {total}");
    hook.wait_until(Duration::from_secs(30), |all| !all.is_empty()).await.expect("the first request hangs");

    cluster.nodes[h].signal("STOP");
    let other = cluster.nodes[o].name.clone();
    cluster
        .until_leases(Duration::from_secs(30), "shard 0 moves to the other node", |rows| {
            rows.iter().any(|(s, owner)| *s == 0 && owner.as_deref() == Some(other.as_str()))
        })
        .await;
    let total = usize::try_from(total).expect("count");
    hook.wait_accepted(total, Duration::from_secs(60)).await.expect("the new holder delivers everything");

    // Its keeper is held back (the nodes table locked: its first statement waits), as a keeper
    // may be by a slow database; what the resumed node does meanwhile is its own judgement.
    let mut lock = cluster.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.expect("lock");
    let resumed = Instant::now();
    cluster.nodes[h].signal("CONT");
    // It runs again: it answers a call. Then it is given a moment to send what it would.
    let mut on_h = IntakeServiceClient::new(cluster.channel(&cluster.nodes[h]));
    on_h.get_case(pb::GetCaseRequest { case_id: "320700/W-0".into() }).await.expect("the resumed node answers");
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.rollback().await.expect("unlock");
    let after: Vec<String> = hook.received().into_iter().filter(|r| r.at > resumed).map(|r| r.key).collect();
    assert!(after.is_empty(), "the resumed node sent {} more from its window: {after:?}", after.len());
    let undelivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE destination = 'platform' AND status <> 'delivered'")
            .fetch_one(&cluster.pool)
            .await
            .expect("count");
    assert_eq!(undelivered, 0, "every message delivered");
}

/// The `serve` arguments of an outbound configuration in `dir` with one webhook destination
/// (`platform`, channel `supervision`, a 2 s timeout, quick back-off) at `url`; `delivery` and
/// `destination` add lines to those sections.
fn webhook_to(dir: &Path, url: &str, delivery: &str, destination: &str) -> Vec<String> {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "a shared secret for the cluster test").expect("secret");
    let file = dir.join("outbound.toml");
    let text = format!(
        "[delivery]\n{delivery}backoff_initial_ms = 10\nbackoff_max_ms = 50\n\n[[destination]]\nname = \"platform\"\n\
         kind = \"webhook\"\nurl = \"{url}\"\nchannels = [\"supervision\"]\nsecret_file = {secret:?}\n\
         timeout_secs = 2\n{destination}"
    );
    std::fs::write(&file, text).expect("outbound file");
    vec!["--outbound".to_owned(), file.display().to_string()]
}

/// The next message of `stream`, or how it ended; panics if nothing comes within 30 s.
async fn next_event(stream: &mut tonic::Streaming<pb::Event>) -> Result<pb::Event, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => Err(tonic::Status::unknown("the stream ended without a status")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("nothing on the stream within 30 s"),
    }
}

/// How `stream` ends, after whatever it still sends.
async fn end_of(stream: &mut tonic::Streaming<pb::Event>) -> tonic::Status {
    loop {
        if let Err(status) = next_event(stream).await {
            return status;
        }
    }
}

/// A stream consumer's `Ack`, a new `Subscribe` and an administrator's drop reach its stream
/// on another node: a stream stalled at `max_in_flight` goes on when its acknowledgement lands
/// elsewhere (it stalled for good before), a Subscribe elsewhere ends it ABORTED, and so does a
/// drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_acks_take_overs_and_drop_on_another_node_reach_it() {
    use shenguan::proto::events_service_client::EventsServiceClient;
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let cluster = Cluster::start(url, 2).await;
    cluster.balanced(&["n1", "n2"]).await;
    let mut intake = cluster.intake().remove(0);
    for i in 0..3 {
        license(&mut intake, &format!("S-{i}")).await;
    }
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&cluster.pool).await.expect("count");
    assert!(written >= 4, "the cases wrote messages: {written}");
    let subscribe = |in_flight| pb::SubscribeRequest {
        consumer: "platform".to_owned(),
        channels: vec![],
        regions: vec![],
        max_in_flight: in_flight,
    };
    let mut on_n1 = EventsServiceClient::new(cluster.channel(&cluster.nodes[0]));
    let mut on_n2 = EventsServiceClient::new(cluster.channel(&cluster.nodes[1]));
    let mut stream = on_n1.subscribe(subscribe(2)).await.expect("subscribe on n1").into_inner();
    let first = next_event(&mut stream).await.expect("first");
    let second = next_event(&mut stream).await.expect("second");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(),
        "a third before any acknowledgement"
    );
    // Acknowledged on n2: n1's stream sends the next two.
    let acked = on_n2.ack(pb::AckRequest { consumer: "platform".into(), up_to: second.id }).await.expect("ack on n2");
    assert_eq!(acked.into_inner().acked, second.id);
    let third = next_event(&mut stream).await.expect("a third once n2 was told the acknowledgement");
    assert!(first.id < second.id && second.id < third.id, "in order, each once");

    // Taken over on n2: n1's stream ends, n2's resumes after the acknowledgement.
    let mut taken = on_n2.subscribe(subscribe(100)).await.expect("subscribe on n2").into_inner();
    let ended = end_of(&mut stream).await;
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("taken over"), "{ended:?}");
    assert_eq!(next_event(&mut taken).await.expect("resumed").id, third.id);

    // Dropped through n1: n2's stream ends.
    let mut admin = AdminServiceClient::new(cluster.channel(&cluster.nodes[0]));
    admin.drop_consumer(pb::DropConsumerRequest { name: "platform".into() }).await.expect("drop");
    let ended = end_of(&mut taken).await;
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("dropped"), "{ended:?}");
}

/// A quiet stream is a call in progress: the connection idle timeout (1 s here) does not cut
/// it, and what another node commits after three idle periods still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_outlives_the_idle_timeout_and_hears_another_nodes_commits() {
    use shenguan::proto::events_service_client::EventsServiceClient;
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let cluster = Cluster::start_with(url, 2, |_| vec!["--idle-timeout".to_owned(), "1s".to_owned()]).await;
    cluster.balanced(&["n1", "n2"]).await;
    let mut events = EventsServiceClient::new(cluster.channel(&cluster.nodes[0]));
    let request =
        pb::SubscribeRequest { consumer: "quiet".into(), channels: vec![], regions: vec![], max_in_flight: 0 };
    let mut stream = events.subscribe(request).await.expect("subscribe").into_inner();
    // The behaviour under test is what three idle periods do to the stream: wait them out.
    let quiet = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
    assert!(quiet.is_err(), "the stream ended or sent while nothing was written: {quiet:?}");
    // A fresh connection to n2 (the idle timeout closed the lazy channels' idle connections).
    let mut intake = IntakeServiceClient::new(cluster.channel(&cluster.nodes[1]));
    license(&mut intake, "Q-1").await;
    let event = next_event(&mut stream).await.expect("the stream was cut");
    assert!(event.instance_id.contains("Q-1"), "{event:?}");
}

/// (b) A node is SIGKILLed while cases come in and reminders fire: the others take its shards
/// within the lease time and fire what it left overdue; nothing acknowledged is lost, nothing
/// fires twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_and_its_deadlines_move() {
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let mut cluster = Cluster::start(url, 3).await;
    cluster.balanced(&["n1", "n2", "n3"]).await;
    let before = accept(&cluster, "B", 2_000, "2026-10-09").await;

    // Intake keeps going through the kill; n2's reminders are left overdue on its clock.
    let clients = Arc::new(Mutex::new(cluster.intake()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(intake(clients.clone(), "B2".into(), "2026-10-16", 16, stopped));
    cluster.advance(&[0, 2], "2026-10-08T09:00:00+08:00").await;
    let killed = Instant::now();
    cluster.nodes[1].kill();
    // Calls to the dead node fail; the rest go on.
    clients.lock().expect("clients").remove(1);
    let moved = cluster
        .until_leases(Duration::from_secs(20), "n2's shards taken over", |rows| {
            rows.len() == 64 && rows.iter().all(|(_, o)| o.as_deref() != Some("n2"))
        })
        .await;
    cluster.fired_before("2026-10-08T09:00:00+08:00", Duration::from_secs(20)).await;
    let failover = killed.elapsed();
    eprintln!("(b) shards moved {moved:?} after the kill; n2's overdue reminders fired {failover:?} after it");
    assert!(failover < Duration::from_secs(2 + 1 + 2), "failover took {failover:?} (lease 2 s)");
    stop.send_replace(true);
    let (during, failed) = load.await.expect("intake");
    assert!(!during.is_empty(), "intake went on");
    assert!(
        failed.keys().all(|f| f.allowed()),
        "only calls to the killed node fail, as transport failures or UNAVAILABLE: {failed:?}"
    );

    cluster.advance(&[0, 2], "2026-10-20T09:00:00+08:00").await;
    cluster.fired_before("2026-10-20T09:00:00+08:00", Duration::from_secs(60)).await;
    let acked: Vec<String> = before.into_iter().chain(during).collect();
    assert_eq!(cluster.missing(&acked).await, Vec::<String>::new(), "every acknowledged case is stored");
    assert_eq!(cluster.doubled_fires().await, vec![], "no timer fired twice");
}

/// (c) PostgreSQL stops under load and comes back: calls meanwhile are answered UNAVAILABLE (or
/// time out), never with another error; the nodes recover without a restart; nothing
/// acknowledged is lost and every deadline fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_under_load_loses_nothing_and_the_nodes_recover() {
    let _one = SERIAL.lock().await;
    // Its own server: this test stops it.
    let Some(server) = integration_tests::pg::Server::start() else { return };
    let url = integration_tests::pg::create_database(&server.url("postgres")).await.expect("database");
    let mut cluster = Cluster::start(url, 3).await;
    cluster.balanced(&["n1", "n2", "n3"]).await;
    let before = accept(&cluster, "C", 1_000, "2026-10-09").await;
    let clients = Arc::new(Mutex::new(cluster.intake()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(intake(clients.clone(), "C2".into(), "2026-10-16", 16, stopped));

    server.stop().expect("stop PostgreSQL");
    // While it is down, calls fail; wait for a few to have failed.
    let mut probe = cluster.intake().remove(0);
    let down = probe.accept_case(fixtures::deferral("C-probe-down", "2026-10-16")).await.expect_err("database down");
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    server.restart().expect("start PostgreSQL again");
    // The pools reconnect by themselves: a call succeeds again on every node.
    let started = Instant::now();
    for (i, mut client) in cluster.intake().into_iter().enumerate() {
        loop {
            match client.accept_case(fixtures::deferral(&format!("C-probe-{i}"), "2026-10-16")).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(60), "node {i} did not recover: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    eprintln!("(c) every node served again {:?} after PostgreSQL came back", started.elapsed());
    stop.send_replace(true);
    let (during, failed) = load.await.expect("intake");
    assert!(
        failed.keys().all(|f| matches!(f, Failure::Answered(tonic::Code::Unavailable) | Failure::Timeout)),
        "while PostgreSQL is down calls are answered UNAVAILABLE, nothing else: {failed:?}"
    );
    cluster.balanced(&["n1", "n2", "n3"]).await;
    cluster.advance(&[0, 1, 2], "2026-10-20T09:00:00+08:00").await;
    cluster.fired_before("2026-10-20T09:00:00+08:00", Duration::from_secs(60)).await;
    let acked: Vec<String> = before.into_iter().chain(during).collect();
    assert_eq!(cluster.missing(&acked).await, Vec::<String>::new(), "every acknowledged case is stored");
    assert_eq!(cluster.doubled_fires().await, vec![], "no timer fired twice");
    drop(cluster);
    drop(server);
}

/// (d) A node frozen (SIGSTOP) past its lease: the others take its shards and fire its
/// deadlines; resumed, with its wheel still full of them, it writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_resumed_after_its_lease_writes_nothing() {
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let mut cluster = Cluster::start(url, 3).await;
    cluster.balanced(&["n1", "n2", "n3"]).await;
    let acked = accept(&cluster, "D", 1_500, "2026-10-09").await;
    let held_by_n2: Vec<i64> = sqlx::query_scalar("SELECT shard FROM shard_leases WHERE owner = 'n2'")
        .fetch_all(&cluster.pool)
        .await
        .expect("q");
    assert!(!held_by_n2.is_empty());
    let fires_before = cluster.fires().await;
    cluster.nodes[1].signal("STOP");
    cluster
        .until_leases(Duration::from_secs(20), "n2's shards taken while it is frozen", |rows| {
            rows.len() == 64 && rows.iter().all(|(_, o)| o.as_deref() != Some("n2"))
        })
        .await;
    cluster.advance(&[0, 2], "2026-10-12T09:00:00+08:00").await;
    cluster.fired_before("2026-10-12T09:00:00+08:00", Duration::from_secs(60)).await;
    let fired = cluster.fires().await;
    assert!(fired - fires_before >= 2 * acked.len() as i64, "n2's reminders and deadlines fired elsewhere");
    // Resumed, n2 still has its old shards' timers in its wheel; its clock moves past them.
    cluster.nodes[1].signal("CONT");
    cluster.advance(&[1], "2026-10-12T09:00:00+08:00").await;
    // Whatever n2 tried is refused (its epoch is stale) or was dropped when its keeper noticed.
    assert_eq!(cluster.fires().await, fired, "the resumed node wrote no fire");
    assert_eq!(cluster.doubled_fires().await, vec![], "no timer fired twice");
    let metrics = integration_tests::scrape(("127.0.0.1", cluster.nodes[1].port)).await.expect("scrape n2");
    let fenced = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shenguan_fenced_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("(d) the resumed node's fires refused by the fence: {fenced}");
    // It rejoins: the cluster rebalances to all three again.
    cluster.balanced(&["n1", "n2", "n3"]).await;
}

/// (e) Every node is restarted in turn (SIGTERM, start again) while cases come in: nothing
/// acknowledged is lost, every deadline fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    let _one = SERIAL.lock().await;
    let Some(url) = database().await else { return };
    let mut cluster = Cluster::start(url, 3).await;
    cluster.balanced(&["n1", "n2", "n3"]).await;
    let before = accept(&cluster, "E", 1_000, "2026-10-09").await;
    let clients = Arc::new(Mutex::new(cluster.intake()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(intake(clients.clone(), "E2".into(), "2026-10-16", 16, stopped));
    let dir: PathBuf = cluster.dir.path().to_owned();
    for i in 0..3 {
        let name = cluster.nodes[i].name.clone();
        let port = cluster.nodes[i].port;
        cluster.nodes[i].terminate();
        // Its shards are handed back at shutdown: the other two hold all of them at once.
        cluster
            .until_leases(Duration::from_secs(10), "the leaving node's shards taken", |rows| {
                rows.len() == 64 && rows.iter().all(|(_, o)| o.as_deref() != Some(name.as_str()))
            })
            .await;
        let restarted = spawn(&dir, &cluster.url, &name, &cluster.now, port);
        cluster.nodes[i] = restarted;
        cluster.balanced(&["n1", "n2", "n3"]).await;
    }
    stop.send_replace(true);
    let (during, failed) = load.await.expect("intake");
    assert!(
        failed.keys().all(|f| f.allowed()),
        "only calls to a stopping node fail, as transport failures or UNAVAILABLE: {failed:?}"
    );
    cluster.advance(&[0, 1, 2], "2026-10-20T09:00:00+08:00").await;
    cluster.fired_before("2026-10-20T09:00:00+08:00", Duration::from_secs(60)).await;
    let acked: Vec<String> = before.into_iter().chain(during).collect();
    assert_eq!(cluster.missing(&acked).await, Vec::<String>::new(), "every acknowledged case is stored");
    assert_eq!(cluster.doubled_fires().await, vec![], "no timer fired twice");
}

/// `shenguan demo --database postgres://…` runs the guided demo on PostgreSQL, and refuses a
/// database that already holds cases.
#[tokio::test]
async fn the_demo_runs_on_postgresql_and_refuses_a_database_with_cases() {
    let Some(url) = database().await else { return };
    let run = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_shenguan"))
            .args(["demo", "--cases", "40", "--database", url])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run demo")
    };
    let first = run(&url);
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{text}\n{}", String::from_utf8_lossy(&first.stderr));
    assert!(text.contains("Timeline of"), "{text}");
    let pool = PgPool::connect(&url).await.expect("connect");
    let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE workflow = 'approval_case'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(cases >= 40, "the demo's cases are in PostgreSQL: {cases}");
    let again = run(&url);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds cases"), "{again:?}");
}
