//! The load generator for ../shared/WORKLOAD.md: W1 intake, W2 signals, W3 timers due at one
//! instant, W4 server resources, W5 SIGKILL and recovery — against a real server over gRPC on
//! loopback, with the two floors measured in the same run (a no-op gRPC call; the same rows
//! inserted straight into SQLite with the same durability).
//!
//! ```text
//! cargo run --release -p integration-tests --bin load               # the full workload
//! cargo run --release -p integration-tests --bin load -- --smoke    # a few hundred cases, seconds
//! cargo run --release -p integration-tests --bin load -- --replan 1000000   # calendar re-plan
//! cargo run --release -p integration-tests --bin load -- --help     # every mode and flag
//! ```
//!
//! `--replan N` measures something else: N supervision tasks whose result deadline counts
//! working days across New Year on the provisional 2027 are written into a fresh database,
//! intake is measured alone, then a 2027 notice is loaded and intake is measured again while
//! the N deadlines are re-planned; it reports how long the re-plan took and the intake ratio.
//!
//! `--archive N` measures the data lifecycle: N closed cases (revoked; one in ten licensed
//! first) written on a sandbox clock, two years on intake measured alone, then while the N are
//! exported and removed as `shenguan archive` does; it reports both rates and the intake ratio.
//!
//! `--w12 [--secure]` runs only W1 and W2 (and the transport floor), on a fresh server, and
//! prints one JSON line: with `--secure` every call crosses TLS (rustls) and carries an ES256
//! bearer token the server verifies, as in production; without, plain HTTP/2 and no identity.
//! Interleave the two to get the cost of identity as a ratio.
//!
//! `--w6 [--server-exe EXE]` runs only W1 and W6 (AcceptCase, CompleteApproval) on a fresh
//! server and prints one JSON line with W6's rates as ratios to W1's in the same run; with
//! `--server-exe`, another build's `load` serves, for an A/B against an older commit.
//!
//! `--delivery [--cases N] [--rounds R]` measures outbound delivery (BENCHMARKS.md): to a
//! webhook receiver on loopback (this process, `integration_tests::receiver`), the intake rate
//! while delivering as a ratio to intake with no destination (R interleaved rounds of N
//! starts, each writing one message), the webhook drain rate, commit-to-receipt latency
//! without backlog, the stream (`EventsService.Subscribe`) read rate of the same N messages,
//! and W3's burst: N deadlines due at one instant, each writing a message, all received.
//!
//! `--postgres URL [--nodes N] [--cases N] [--timers M]` runs W1–W5 on PostgreSQL: a fresh
//! database on the server at URL (an admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`),
//! N nodes of this binary in `serve-pg` mode sharing it, and PostgreSQL's own insert rate for a
//! case's rows as floors (batched: 64 cases a transaction; single: one a transaction, 64 at a
//! time). W5 SIGKILLs node 1 just before deadlines are due: with one node it restarts; with
//! several, the others take its shards when its leases (2 s) expire. Prints one JSON line.
//!
//! `--abuse [--prefill N] [--secs S]` measures what an unauthenticated party can cost others
//! (issue 21): (1) 1,000 forged tokens a second from one address while a valid client on the
//! same address calls 200 times a second, over TLS with an ES256 identity provider — the valid
//! client's success ratio and latency; (2) `GET /metrics` scraped 1,000 times a second while
//! GetCase is called 200 times a second on a database prefilled with N cases (2N timers) —
//! GetCase's latency against the same calls without the scrapes, and how often the scrapes
//! read the database. Prints one JSON line.
//!
//! `--console N --db PATH [--server-exe EXE]` times the web console's heaviest pages (issue 24)
//! as the console loads them (their JSON calls sent together) over N cases — the statistics
//! benchmark's data with 3 % of commitments and 4 % of tasks still open —, written to PATH
//! first if it does not exist. `--json-intake [--cases N] [--rounds R] [--concurrency C]`
//! alternates R rounds of N AcceptCase calls over gRPC and over JSON on one server and prints
//! the ratio of the median rates.
//!
//! `--stats N --db PATH [--server-exe EXE]` measures GetStatistics at scale (issue 21): N cases
//! and their tasks written straight into PATH (once; kept for the next run), then `EXE serve
//! PATH` (default this binary; another version's `load` gives the before figure on the same
//! data) answers the whole year for every region. Prints the start, the latencies and the
//! memory the calls added.
//!
//! The server is this same binary in `serve` mode, in its own process, on a fresh SQLite file,
//! so its RSS and CPU are its own. Every loop is bounded in count and time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use shenguan::proto::engine_service_client::EngineServiceClient;
use shenguan::proto::{SignalRequest, StartRequest};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[path = "load/console.rs"]
mod console;

struct Args {
    smoke: bool,
    cases: usize,
    timers: usize,
    concurrency: usize,
    lead: Duration,
    json: PathBuf,
    keep: Option<PathBuf>,
    prefill: usize,
    replan: usize,
    prefill_only: bool,
}

/// The command line. Every mode is a flag of its own, as the commands in BENCHMARKS.md spell
/// them; with none, the full workload W1–W6 runs. `serve` and `serve-pg` are the server side,
/// which the harness spawns as its own processes.
#[derive(clap::Parser, Debug)]
#[command(
    name = "load",
    about = "The load generator for ../shared/WORKLOAD.md (W1–W6) and the benchmarks in BENCHMARKS.md",
    long_about = "The load generator for ../shared/WORKLOAD.md (W1–W6) and the benchmarks in BENCHMARKS.md.\n\n\
                  With no mode flag it runs the whole workload against a server it spawns (this binary in \
                  `serve` mode on a fresh SQLite file) and writes the results as JSON. Each mode flag runs \
                  one benchmark instead; integration-tests/src/bin/load.rs says what each measures.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,

    /// A few hundred cases and a 3 s lead (seconds; CI runs it).
    #[arg(long, group = "mode")]
    smoke: bool,
    /// Calendar re-plan: N working-day deadlines across New Year re-planned under intake.
    #[arg(long, value_name = "N", group = "mode")]
    replan: Option<usize>,
    /// W1 and W2 only, on a fresh server; one JSON line.
    #[arg(long, group = "mode")]
    w12: bool,
    /// W1 and W6 only (AcceptCase, CompleteApproval), on a fresh server; one JSON line. With
    /// --server-exe, that build serves (an A/B against another commit).
    #[arg(long, group = "mode")]
    w6: bool,
    /// Outbound delivery: webhook, stream, latency, W3's burst, intake beside it.
    #[arg(long, group = "mode")]
    delivery: bool,
    /// W1–W5 on PostgreSQL: a fresh database on the server at URL (an admin URL).
    #[arg(long, value_name = "URL", group = "mode")]
    postgres: Option<String>,
    /// GetStatistics over N cases written to --db (kept for the next run).
    #[arg(long, value_name = "N", group = "mode", requires = "db")]
    stats: Option<usize>,
    /// The web console's heaviest pages over N cases written to --db (kept for the next run).
    #[arg(long, value_name = "N", group = "mode", requires = "db")]
    console: Option<usize>,
    /// AcceptCase over JSON against AcceptCase over gRPC, alternating rounds on one server.
    #[arg(long, group = "mode")]
    json_intake: bool,
    /// What an unauthenticated party can cost others: forged tokens and metrics scrapes.
    #[arg(long, group = "mode")]
    abuse: bool,
    /// Data lifecycle: N closed cases archived (exported, then removed) under full intake.
    #[arg(long, value_name = "N", group = "mode")]
    archive: Option<usize>,

    /// Cases (W1, --w12, --delivery, --postgres, --json-intake). [default: 5000; --postgres
    /// 20000; --delivery 10000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    cases: Option<u64>,
    /// W3's timers due at one instant. [default: 10000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timers: Option<u64>,
    /// Concurrent callers. [default: 64]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: Option<u64>,
    /// Nodes sharing the database (--postgres).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    nodes: u64,
    /// Rounds (--delivery, --json-intake). [default: 3; --json-intake 5]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rounds: Option<u64>,
    /// W3's lead: from the first start to the deadlines, in seconds.
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    lead_secs: u64,
    /// Where the full workload writes its results.
    #[arg(long, value_name = "PATH", default_value = "target/load-results.json")]
    json: PathBuf,
    /// The SQLite file to use and keep (required by --stats and --console).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Cases already pending before the workload starts (the scale runs).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prefill: usize,
    /// With --replan and --db: write the database and stop (for profiling a server on it).
    #[arg(long, requires = "replan")]
    prefill_only: bool,
    /// With --stats, --console or --w6: the server to measure (another version's `load` gives the
    /// before figure on the same data). [default: this binary]
    #[arg(long, value_name = "EXE")]
    server_exe: Option<PathBuf>,
    /// --w12: every call over TLS with a verified ES256 token.
    #[arg(long)]
    secure: bool,
    /// --abuse: seconds each part runs.
    #[arg(long, value_name = "S", default_value_t = 10)]
    secs: u64,
}

/// The server side, spawned by the harness in a process of its own.
#[derive(clap::Subcommand, Debug)]
enum Serve {
    /// Serves the SQLite file DB on a free loopback port and prints `listening ADDR`.
    #[command(hide = true)]
    Serve {
        db: PathBuf,
        /// A directory with the TLS material and identity provider keys.
        #[arg(long, value_name = "DIR")]
        secure: Option<PathBuf>,
        /// An outbound destinations file.
        #[arg(long, value_name = "FILE")]
        outbound: Option<PathBuf>,
        /// Sandbox mode: the engine's clock starts at this instant (RFC 3339) and AdvanceClock
        /// moves it.
        #[arg(long, value_name = "INSTANT")]
        virtual_clock: Option<String>,
    },
    /// One node on PostgreSQL at URL, named NODE.
    #[command(name = "serve-pg", hide = true)]
    ServePg { url: String, node: String },
}

fn count(v: Option<u64>, default: usize) -> usize {
    v.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

impl Cli {
    /// The full workload's (and --replan's) settings.
    fn workload(&self) -> Args {
        let mut a = Args {
            smoke: self.smoke,
            cases: count(self.cases, 5_000),
            timers: count(self.timers, 10_000),
            concurrency: count(self.concurrency, 64),
            lead: Duration::from_secs(self.lead_secs),
            json: self.json.clone(),
            keep: self.db.clone(),
            prefill: self.prefill,
            replan: self.replan.unwrap_or(0),
            prefill_only: self.prefill_only,
        };
        if self.smoke {
            a.cases = count(self.cases, 300);
            a.timers = count(self.timers, 300);
            a.lead = Duration::from_secs(3);
        }
        a
    }

    fn server_exe(&self) -> Result<PathBuf> {
        self.server_exe.clone().map_or_else(|| Ok(std::env::current_exe()?), Ok)
    }
}

/// W6's AcceptCase: the fixture's normal-route case with a second supervisor.
fn w6_accept(case_no: &str) -> shenguan::proto::AcceptCaseRequest {
    let mut request = integration_tests::fixtures::accept(
        case_no,
        shenguan::proto::Route::Normal,
        shenguan::proto::Scenario::Unspecified,
    );
    request.supervisors.push(shenguan::proto::Supervisor {
        department: "市应急管理局".into(),
        office: "安全生产监管处".into(),
        office_admin_mobile: "13900139001".into(),
    });
    request
}

/// Latencies and wall time of one phase.
struct Phase {
    name: &'static str,
    ops: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }
}

/// Runs `n` calls from `concurrency` workers; `call(i)` makes call number i.
async fn drive<F, Fut>(name: &'static str, n: usize, concurrency: usize, call: F) -> Result<Phase>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, next) = (call.clone(), next.clone());
        workers.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                call(i).await?;
                lat.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(r) = workers.join_next().await {
        latencies.extend(r??);
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    Ok(Phase { name, ops: n, wall, latencies })
}

struct ServerProcess {
    child: tokio::process::Child,
    addr: String,
    pid: u32,
}

async fn spawn_server(db: &Path) -> Result<(ServerProcess, Duration)> {
    spawn_server_with(db, &[]).await
}

async fn spawn_server_with(db: &Path, extra: &[&std::ffi::OsStr]) -> Result<(ServerProcess, Duration)> {
    let started = Instant::now();
    let mut args: Vec<&std::ffi::OsStr> = vec!["serve".as_ref(), db.as_os_str()];
    args.extend_from_slice(extra);
    let server = spawn_listening(&args).await?;
    let addr = server.addr.clone();
    if extra.is_empty() {
        let channel = connect(&addr).await?;
        let status =
            HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
        ensure!(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "server not serving");
    }
    Ok((server, started.elapsed()))
}

/// This binary with `args`, in a process of its own; answers once it prints `listening ADDR`.
async fn spawn_listening<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<ServerProcess> {
    spawn_exe(&std::env::current_exe()?, args).await
}

/// `exe` (a build of this binary, maybe another version's) with `args`, like [`spawn_listening`].
async fn spawn_exe<S: AsRef<std::ffi::OsStr>>(exe: &Path, args: &[S]) -> Result<ServerProcess> {
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??.context("server exited")?;
        if let Some(addr) = line.strip_prefix("listening ") {
            break addr.to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ServerProcess { child, addr, pid })
}

/// Answers once the server at `addr` says it is serving.
async fn ready(addr: &str) -> Result<()> {
    let channel = connect(addr).await?;
    let status =
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?.into_inner().status;
    ensure!(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "not serving");
    Ok(())
}

async fn connect(addr: &str) -> Result<Ch> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel, Auth(None)))
}

/// Floor (a): a no-op unary call (the health check) over `channels` at `concurrency`.
async fn transport_floor(channels: &[Ch], n: usize, concurrency: usize) -> Result<Phase> {
    let health: Vec<HealthClient<Ch>> = channels.iter().cloned().map(HealthClient::new).collect();
    drive("floor: transport (health)", n, concurrency, move |i| {
        let mut h = health[i % health.len()].clone();
        async move {
            h.check(HealthCheckRequest { service: String::new() }).await?;
            Ok(())
        }
    })
    .await
}

/// W2: "materials submitted" to the `n` cases W1 started, each then licensed.
async fn signals(clients: &[EngineServiceClient<Ch>], n: usize, concurrency: usize) -> Result<Phase> {
    let clients = clients.to_vec();
    drive("W2 signals", n, concurrency, move |i| {
        let mut client = clients[i % clients.len()].clone();
        let request = SignalRequest {
            instance_id: format!("w1-{i:07}"),
            event: "materials_submitted".into(),
            fields_json: String::new(),
            request_id: String::new(),
        };
        async move {
            let reply = client.signal(request).await?.into_inner();
            ensure!(reply.state == "licensed", "w1-{i:07} is {}", reply.state);
            Ok(())
        }
    })
    .await
}

/// Peak RSS (KiB) and CPU seconds of a process, from /proc.
fn resources(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)).filter_map(|v| v.parse::<f64>().ok()).sum();
    (hwm, ticks / 100.0)
}

fn instant_json(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn starts(
    name: &'static str,
    clients: &[EngineServiceClient<Ch>],
    prefix: &str,
    n: usize,
    concurrency: usize,
    reminder: i64,
    deadline: i64,
) -> Result<Phase> {
    let clients = clients.to_vec();
    let prefix = prefix.to_owned();
    let vars = format!(r#"{{"reminder_at":"{}","deadline_at":"{}"}}"#, instant_json(reminder), instant_json(deadline));
    drive(name, n, concurrency, move |i| {
        let mut client = clients[i % clients.len()].clone();
        let request = StartRequest {
            workflow: "bench_case".into(),
            instance_id: format!("{prefix}-{i:07}"),
            vars_json: vars.clone(),
            request_id: format!("{prefix}-{i:07}"),
        };
        async move {
            client.start(request).await?;
            Ok(())
        }
    })
    .await
}

/// (lateness ms per fired deadline, fires of each instance) for instances with `prefix`.
async fn fired_deadlines(db: &Path, prefix: &str) -> Result<(Vec<i64>, usize, usize)> {
    let mut conn = SqliteConnectOptions::new().filename(db).read_only(true).connect().await?;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT instance_id, at, json_extract(command, '$.due') FROM history \
         WHERE instance_id >= ? AND instance_id < ? AND json_extract(command, '$.kind') = 'timer' \
         AND json_extract(command, '$.name') = 'deadline'",
    )
    .bind(format!("{prefix}-"))
    .bind(format!("{prefix}.~"))
    .fetch_all(&mut conn)
    .await?;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    let lateness = rows.iter().map(|r| r.1 - r.2).collect();
    Ok((lateness, total, ids.len()))
}

async fn wait_for_fires(db: &Path, prefix: &str, want: usize, until: Instant) -> Result<(Vec<i64>, usize, usize)> {
    loop {
        let r = fired_deadlines(db, prefix).await?;
        if r.1 >= want || Instant::now() > until {
            return Ok(r);
        }
        // A load generator may poll: it measures, it does not synchronise anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows of pending `bench_case` instances whose deadline is `due`, in one transaction, the
/// way the engine writes a start: instance, history, two timers, idempotency key.
async fn insert_cases(conn: &mut sqlx::SqliteConnection, chunk: &[String], due: i64) -> Result<()> {
    // Created now, as the engine would have: request ids within their retention.
    let created = now_ms();
    let CaseJson { vars, timers, command, armed } = CaseJson::due(due);
    let mut tx = conn.begin().await?;
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at) ",
    );
    q.push_values(chunk, |mut b, id| {
        b.push_bind(id)
            .push_bind("bench_case")
            .push_bind(1)
            .push_bind("pending")
            .push_bind(&vars)
            .push_bind(&timers)
            .push_bind(1)
            .push_bind(7)
            .push_bind(created)
            .push_bind(created);
    });
    q.build().execute(&mut *tx).await?;
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO history (instance_id, seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled) ");
    q.push_values(chunk, |mut b, id| {
        b.push_bind(id)
            .push_bind(1)
            .push_bind(created)
            .push_bind("engine-client")
            .push_bind(id)
            .push_bind(&command)
            .push_bind(None::<String>)
            .push_bind("pending")
            .push_bind(&armed)
            .push_bind("{}")
            .push_bind(0)
            .push_bind(1);
    });
    q.build().execute(&mut *tx).await?;
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT INTO timers (instance_id, name, due_at, event, shard) ");
    q.push_values(chunk.iter().flat_map(|id| [(id, "deadline"), (id, "reminder")]), |mut b, (id, name)| {
        let at = if name == "deadline" { due } else { due - 30_000 };
        b.push_bind(id)
            .push_bind(name)
            .push_bind(at)
            .push_bind(if name == "deadline" { "deadline_passed" } else { "remind" })
            .push_bind(7);
    });
    q.build().execute(&mut *tx).await?;
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT INTO idempotency (key, instance_id, seq, fingerprint, created_at) ");
    q.push_values(chunk, |mut b, id| {
        b.push_bind(id).push_bind(id).push_bind(1).push_bind("0123456789abcdef").push_bind(created);
    });
    q.build().execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// The JSON columns of a pending `bench_case` whose deadline is `due` (its reminder 30 s
/// before), as the engine writes them: the floors insert exactly these.
struct CaseJson {
    vars: String,
    timers: String,
    command: String,
    armed: String,
}

impl CaseJson {
    fn due(due: i64) -> Self {
        let vars =
            format!(r#"{{"deadline_at":"{}","reminder_at":"{}"}}"#, instant_json(due), instant_json(due - 30_000));
        CaseJson {
            timers: format!(
                r#"{{"deadline":{{"due":{due},"event":"deadline_passed"}},"reminder":{{"due":{},"event":"remind"}}}}"#,
                due - 30_000
            ),
            command: format!(r#"{{"kind":"start","workflow":"bench_case","version":1,"vars":{vars}}}"#),
            armed: format!(r#"{{"deadline":{due},"reminder":{}}}"#, due - 30_000),
            vars,
        }
    }
}

/// A connection with the engine's durability settings (WAL, synchronous=FULL) to a database
/// with the engine's schema.
async fn open_durable(path: &Path) -> Result<sqlx::SqliteConnection> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await?;
    shenguan::store::sqlite::MIGRATOR.run_direct(&mut conn).await?;
    Ok(conn)
}

/// Fills a fresh database with `n` pending cases the way the engine would have written them:
/// the first `overdue` already due (their reminder and deadline fire as soon as the server
/// starts), the rest falling due over the next 30 days. The scale run starts the server on this.
async fn prefill(db: &Path, n: usize, overdue: usize) -> Result<()> {
    let started = Instant::now();
    let mut conn = open_durable(db).await?;
    let now = now_ms();
    let mut done = 0;
    while done < n {
        let ids: Vec<String> = (done..(done + 2_000).min(n)).map(|i| format!("pre-{i:08}")).collect();
        let due = if done < overdue {
            // Due over the last hour: the server must catch up on them at start.
            now - 3_600_000 + i64::try_from(done)? * 3_600_000 / i64::try_from(overdue.max(1))?
        } else {
            // Spread over the next 30 days, so that the horizon holds only a sliver of them.
            now + 3_600_000 + i64::try_from(done)? * 2_592_000_000 / i64::try_from(n)?
        };
        insert_cases(&mut conn, &ids, due).await?;
        done += ids.len();
        if done % 1_000_000 == 0 {
            println!("prefilled {done} cases in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    println!(
        "prefilled {n} pending cases ({} timers, {overdue} cases already due) in {:.0} s; database {:.2} GiB",
        2 * n,
        started.elapsed().as_secs_f64(),
        size as f64 / (1u64 << 30) as f64
    );
    Ok(())
}

/// The storage floor: the rows one case costs (instance, history, two timers, idempotency key)
/// inserted straight into SQLite, WAL + synchronous=FULL, `batch` cases per transaction.
async fn storage_floor(dir: &Path, n: usize, batch: usize) -> Result<Phase> {
    let mut conn = open_durable(&dir.join(format!("floor-{batch}.db"))).await?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let ids: Vec<String> = (0..n).map(|i| format!("floor-{i:07}")).collect();
    for chunk in ids.chunks(batch) {
        let t = Instant::now();
        insert_cases(&mut conn, chunk, 1_795_755_600_000).await?;
        latencies.push(t.elapsed());
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    Ok(Phase { name: if batch >= 500 { "floor: storage, 500/tx" } else { "floor: storage" }, ops: n, wall, latencies })
}

/// A metric's value from /metrics text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// The server's fire-lateness histogram: (upper bound in seconds, cumulative count), as the
/// writer records it after each commit.
fn lateness_buckets(text: &str) -> Vec<(f64, f64)> {
    let prefix = "shenguan_timer_fire_lateness_seconds_bucket{le=\"";
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Percentile `p` (0–1) of the fires recorded between two histogram snapshots, as the upper
/// bound (ms) of the bucket that holds it: never less than the true value.
fn lateness_pct(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let diff: Vec<(f64, f64)> =
        after.iter().map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    diff.iter().find(|(_, n)| *n >= (total * p).ceil().max(1.0)).map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// (average commands per commit, average commit ms) so far, from the server's /metrics.
async fn commit_stats(addr: &str) -> Result<(f64, f64)> {
    let text = integration_tests::scrape(addr).await?;
    let value = |name: &str| metric(&text, name.trim_end());
    let commits = value("shenguan_commit_seconds_count ").max(1.0);
    Ok((value("shenguan_commit_batch_size_sum ") / commits, value("shenguan_commit_seconds_sum ") * 1000.0 / commits))
}

async fn serve(db: &Path, secure: Option<&Path>, outbound: Option<PathBuf>, clock: Option<&str>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let clock = match clock {
        Some(t) => {
            Some(shenguan::clock::VirtualClock::new(chrono::DateTime::parse_from_rfc3339(t)?.timestamp_millis()))
        }
        None => None,
    };
    let mut options = shenguan::server::Options::new(
        shenguan::engine::Config::new(db),
        Arc::new(shenguan::definition::Registry::embedded()?),
        shenguan::calendar::Calendars::embedded()?,
        clock,
    );
    if let Some(path) = outbound {
        options.outbound = shenguan::outbound::Config::load(&path)?;
    }
    if let Some(dir) = secure {
        use shenguan::auth::verify;
        let verifier = verify::Verifier::new(verify::Config {
            pem: Some(dir.join("keys")),
            jwks: None,
            issuer: SECURE_ISSUER.into(),
            audience: verify::AUDIENCE.into(),
            leeway: 60,
            dev: None,
        })?;
        let mut security = shenguan::server::Security::with(shenguan::auth::layer::Mode::Verify(Arc::new(verifier)));
        security.tls = Some(shenguan::server::Tls {
            cert: std::fs::read(dir.join("server.crt"))?,
            key: std::fs::read(dir.join("server.key"))?,
            client_ca: None,
            client_required: false,
        });
        options.security = security;
    }
    shenguan::server::run(options, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// A made-up 2027 notice (a make-up Saturday on 2 January): moves every deadline counted across it.
const NOTICE_2027: &str = include_str!("../../tests/data/2027-made-up.toml");

/// Writes `n` supervision tasks the way the engine would have: inspected on 28 December 2026, so
/// that their result deadline (5 working days) is counted over the provisional 2027 — Tuesday
/// 5 January — and moves to Monday 4 January under the made-up notice.
async fn prefill_tasks(db: &Path, n: usize) -> Result<()> {
    let started = Instant::now();
    let mut conn = open_durable(db).await?;
    let now = now_ms();
    // 2027-01-05T23:59:59.999+08:00
    let due = chrono::DateTime::parse_from_rfc3339("2027-01-05T23:59:59.999+08:00")?.timestamp_millis();
    let vars = r#"{"region":"320700","case_id":"320700/X","case_no":"X","task_no":1,"department":"市市场监督管理局","office":"食品生产监管处","approval_department":"市行政审批局","applicant_name":"某公司","applicant_code":"91110000600037341L","route":"normal","credit_grade":"A","license_no":"JY1","inspection_finished":"2026-12-28"}"#;
    let timers = format!(
        r#"{{"result_deadline":{{"due":{due},"event":"result_overdue","plan":{{"armed_at":{now},"first":"2026-12-29","last":"2027-01-05","provisional":true}}}}}}"#
    );
    let command = format!(r#"{{"kind":"start","workflow":"supervision_task","version":1,"vars":{vars}}}"#);
    let mut done = 0;
    while done < n {
        let chunk: Vec<String> = (done..(done + 2_000).min(n)).map(|i| format!("320700/R{i:08}/T1")).collect();
        let mut tx = conn.begin().await?;
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at) ",
        );
        q.push_values(&chunk, |mut b, id| {
            b.push_bind(id)
                .push_bind("supervision_task")
                .push_bind(1)
                .push_bind("inspected")
                .push_bind(vars)
                .push_bind(&timers)
                .push_bind(1)
                .push_bind(7)
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut *tx).await?;
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO history (instance_id, seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled) ");
        q.push_values(&chunk, |mut b, id| {
            b.push_bind(id)
                .push_bind(1)
                .push_bind(now)
                .push_bind("load")
                .push_bind(None::<String>)
                .push_bind(&command)
                .push_bind(None::<String>)
                .push_bind("inspected")
                .push_bind(format!(r#"{{"result_deadline":{due}}}"#))
                .push_bind("{}")
                .push_bind(0)
                .push_bind(1);
        });
        q.build().execute(&mut *tx).await?;
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO timers (instance_id, name, due_at, event, shard, plan_first, plan_last, provisional) ",
        );
        q.push_values(&chunk, |mut b, id| {
            b.push_bind(id)
                .push_bind("result_deadline")
                .push_bind(due)
                .push_bind("result_overdue")
                .push_bind(7)
                .push_bind("2026-12-29")
                .push_bind("2027-01-05")
                .push_bind(1);
        });
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        done += chunk.len();
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    println!(
        "prefilled {n} supervision tasks with a provisional working-day deadline in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts in chunks until `stop` is set; the phase covers whole chunks.
async fn intake_until(
    clients: &[EngineServiceClient<Ch>],
    prefix: &'static str,
    concurrency: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Phase> {
    let started = Instant::now();
    let (mut ops, mut latencies) = (0, Vec::new());
    let far = now_ms() + 3_600_000;
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) || round == 0 {
        let phase =
            starts("intake", clients, &format!("{prefix}-{round}"), 2_000, concurrency, far - 60_000, far).await?;
        ops += phase.ops;
        latencies.extend(phase.latencies);
        round += 1;
    }
    latencies.sort_unstable();
    Ok(Phase { name: prefix, ops, wall: started.elapsed(), latencies })
}

/// Intake alone against intake beside something else (`what`): rates, medians, p99s, ratio.
fn beside(alone: &Phase, what: &str, during: &Phase) -> String {
    format!(
        "intake alone {:.0}/s (p50 {:.1} ms, p99 {:.1} ms); {what} {:.0}/s (p50 {:.1} ms, p99 {:.1} ms): ratio {:.2}",
        alone.rate(),
        alone.pct(0.5),
        alone.pct(0.99),
        during.rate(),
        during.pct(0.5),
        during.pct(0.99),
        during.rate() / alone.rate()
    )
}

/// [`intake_until`] for `wall` (in rounds of 2,000 starts: the last one finishes).
async fn intake_for(
    clients: &[EngineServiceClient<Ch>],
    prefix: &'static str,
    concurrency: usize,
    wall: Duration,
) -> Result<Phase> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(wall).await;
        flag.store(true, Ordering::Relaxed);
    });
    let phase = intake_until(clients, prefix, concurrency, stop).await?;
    stopper.await?;
    Ok(phase)
}

/// `--replan N`: the re-plan rate with N pending working-day timers, and intake meanwhile.
async fn replan(args: &Args) -> Result<()> {
    use shenguan::proto::admin_service_client::AdminServiceClient;
    let dir = tempfile::tempdir()?;
    let db = args.keep.clone().unwrap_or_else(|| dir.path().join("replan.db"));
    prefill_tasks(&db, args.replan).await?;
    if args.prefill_only {
        return Ok(());
    }
    let (mut server, _) = spawn_server(&db).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(EngineServiceClient::new(connect(&server.addr).await?));
    }
    let mut admin = AdminServiceClient::new(connect(&server.addr).await?);
    let c = args.concurrency;
    let due = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis());

    // 1. The notice, with nothing else to do: the re-plan alone.
    let (stored, alone_took, alone_replanned) = load_and_time(&mut admin, &server.addr, NOTICE_2027, None).await?;
    let moved_alone = count_at(&db, due("2027-01-04T23:59:59.999+08:00")?).await?;

    // 2. Intake alone, as the base.
    let alone = intake_for(&clients, "base", c, Duration::from_secs(15)).await?;

    // 3. An amended notice (no make-up Saturday) moves every deadline back, under full intake.
    let amended = NOTICE_2027.replace("{ date = 2027-01-02, for = \"元旦\" },\n", "");
    ensure!(amended != NOTICE_2027, "the amendment changes the notice");
    let (_, busy_took, busy_replanned, during) =
        load_and_time_during(&mut admin, &server.addr, &amended, &clients, c).await?;
    let moved_back = count_at(&db, due("2027-01-05T23:59:59.999+08:00")?).await?;
    server.child.kill().await?;

    println!("load answered in {:.0} ms", stored.as_secs_f64() * 1000.0);
    println!(
        "re-plan alone: {alone_replanned} instances in {:.1} s ({:.0}/s); {moved_alone} of {} deadlines at their new due",
        alone_took.as_secs_f64(),
        alone_replanned / alone_took.as_secs_f64(),
        args.replan
    );
    println!(
        "re-plan under full intake: {busy_replanned} instances in {:.1} s ({:.0}/s); {moved_back} of {} deadlines moved back",
        busy_took.as_secs_f64(),
        busy_replanned / busy_took.as_secs_f64(),
        args.replan
    );
    println!("{}", beside(&alone, "during the re-plan", &during));
    ensure!(moved_alone as usize == args.replan, "{moved_alone} of {} deadlines moved", args.replan);
    ensure!(moved_back as usize == args.replan, "{moved_back} of {} deadlines moved back", args.replan);
    Ok(())
}

/// Official (not provisional) result deadlines of the prefilled tasks due at `due`.
async fn count_at(db: &Path, due: i64) -> Result<i64> {
    let mut conn = open_durable(db).await?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM timers WHERE name = 'result_deadline' AND due_at = ? AND provisional = 0",
    )
    .bind(due)
    .fetch_one(&mut conn)
    .await?)
}

/// Loads `text` and waits (polling the server's gauge) until its re-plan is done; answers how
/// long the load call took, how long until done, and the instances re-planned meanwhile.
async fn load_and_time(
    admin: &mut shenguan::proto::admin_service_client::AdminServiceClient<Ch>,
    addr: &str,
    text: &str,
    done: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<(Duration, Duration, f64)> {
    let before = metric(&integration_tests::scrape(addr).await?, "shenguan_replanned_instances_total");
    let loaded_at = Instant::now();
    admin
        .load_calendar(shenguan::proto::LoadCalendarRequest {
            name: "2027.toml".into(),
            text: text.into(),
            dry_run: false,
            wait: false,
        })
        .await?;
    let answered = loaded_at.elapsed();
    loop {
        // A load generator may poll: it measures, it does not synchronise anything.
        let text = integration_tests::scrape(addr).await?;
        if metric(&text, "shenguan_calendar_replans_running") == 0.0 {
            if let Some(done) = done {
                done.store(true, Ordering::Relaxed);
            }
            let replanned = metric(&text, "shenguan_replanned_instances_total") - before;
            return Ok((answered, loaded_at.elapsed(), replanned));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Like [`load_and_time`], with intake running until the re-plan is done.
async fn load_and_time_during(
    admin: &mut shenguan::proto::admin_service_client::AdminServiceClient<Ch>,
    addr: &str,
    text: &str,
    clients: &[EngineServiceClient<Ch>],
    concurrency: usize,
) -> Result<(Duration, Duration, f64, Phase)> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let intake = intake_until(clients, "during", concurrency, done.clone());
    let replan = load_and_time(admin, addr, text, Some(done));
    let (intake, replan) = tokio::join!(intake, replan);
    let (answered, took, replanned) = replan?;
    Ok((answered, took, replanned, intake?))
}

/// `--archive N`: N cases accepted and revoked on 4 March 2024 (one in ten licensed first, so
/// with a supervision task) on a sandbox server; two years on, intake is measured alone, then
/// while the N cases are archived as `shenguan archive` does it — every page exported, then
/// removed 200 cases a call (the server removes 20 per writer transaction).
async fn archive(n: usize, concurrency: usize) -> Result<()> {
    use integration_tests::fixtures;
    use shenguan::proto::admin_service_client::AdminServiceClient;
    use shenguan::proto::intake_service_client::IntakeServiceClient;
    use shenguan::proto::{Route, Scenario};
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("archive.db");
    let (mut server, _) =
        spawn_server_with(&db, &["--virtual-clock".as_ref(), "2024-03-04T10:00:00+08:00".as_ref()]).await?;
    let channel = connect(&server.addr).await?;
    let intake = IntakeServiceClient::new(channel.clone());
    // The sandbox clock stands still unless moved: a minute every 50 ms spreads the cases (and
    // their request ids) over the day as real traffic would, instead of one millisecond.
    let ticking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ticker = {
        let (mut admin, ticking) = (AdminServiceClient::new(channel.clone()), ticking.clone());
        tokio::spawn(async move {
            while ticking.load(Ordering::Relaxed) {
                let minute = shenguan::proto::AdvanceClockRequest { to: String::new(), by_millis: 60_000 };
                admin.advance_clock(minute).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let written = drive("closed cases", n, concurrency, move |i| {
        let mut intake = intake.clone();
        async move {
            let request = fixtures::accept(&format!("ARC-{i:08}"), Route::Normal, Scenario::Unspecified);
            let id = intake.accept_case(request).await?.into_inner().case.context("a case")?.case_id;
            if i % 10 == 0 {
                let licence = shenguan::proto::CompleteApprovalRequest {
                    case_id: id.clone(),
                    license_no: format!("JY{i:014}"),
                    approval_opinion: "同意".into(),
                    document_refs: vec![],
                };
                intake.complete_approval(licence).await?;
            }
            let revoke = shenguan::proto::RevokeApprovalRequest {
                case_id: id,
                reason: "申请人以欺骗手段取得许可".into(),
                basis: "《行政许可法》第六十九条".into(),
            };
            intake.revoke_approval(revoke).await?;
            Ok(())
        }
    })
    .await?;
    ticking.store(false, Ordering::Relaxed);
    ticker.await??;
    let mut admin = AdminServiceClient::new(channel);
    let two_years = shenguan::proto::AdvanceClockRequest { to: "2026-03-04T10:00:00+08:00".into(), by_millis: 0 };
    admin.advance_clock(two_years).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(EngineServiceClient::new(connect(&server.addr).await?));
    }

    // Intake alone, as the base.
    let alone = intake_for(&clients, "base", concurrency, Duration::from_secs(15)).await?;

    // Intake while the cases are archived.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = intake_until(&clients, "during", concurrency, done.clone());
    let run = async {
        let started = Instant::now();
        let (mut cases, mut bytes, mut after) = (Vec::new(), 0usize, String::new());
        loop {
            let request =
                shenguan::proto::ExportArchiveRequest { before: "2025-01-01".into(), after: after.clone(), limit: 200 };
            let page = admin.export_archive(request).await?.into_inner();
            ensure!(page.held_back.is_empty(), "held back: {:?}", page.held_back.first());
            for c in page.cases {
                bytes += c.record.len();
                cases.push(shenguan::proto::RemovableCase { case_id: c.case_id, instances: c.instances });
            }
            if page.next.is_empty() {
                break;
            }
            after = page.next;
        }
        let exported = started.elapsed();
        let mut removed = 0;
        for chunk in cases.chunks(200) {
            let request = shenguan::proto::RemoveArchivedRequest {
                archive: "load.jsonl.gz".into(),
                before: "2025-01-01".into(),
                cases: chunk.to_vec(),
            };
            removed += admin.remove_archived(request).await?.into_inner().removed as usize;
        }
        done.store(true, Ordering::Relaxed);
        Ok::<_, anyhow::Error>((cases.len(), bytes, exported, started.elapsed() - exported, removed))
    };
    let (during, run) = tokio::join!(during, run);
    let (during, (exported_n, bytes, export_took, remove_took, removed)) = (during?, run?);
    server.child.kill().await?;
    println!("{} closed cases written in {:.1} s", n, written.wall.as_secs_f64());
    println!(
        "exported {exported_n} cases ({:.1} MiB of JSON) in {:.1} s ({:.0}/s); removed {removed} in {:.1} s ({:.0}/s)",
        bytes as f64 / (1 << 20) as f64,
        export_took.as_secs_f64(),
        exported_n as f64 / export_took.as_secs_f64(),
        remove_took.as_secs_f64(),
        removed as f64 / remove_took.as_secs_f64()
    );
    println!("{}", beside(&alone, "while archiving", &during));
    ensure!(exported_n == n && removed == n, "{exported_n} exported and {removed} removed of {n}");
    Ok(())
}

/// The same allocator as the `shenguan` binary, so the server measured is the server shipped.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    match &cli.serve {
        Some(Serve::Serve { db, secure, outbound, virtual_clock }) => {
            return serve(db, secure.as_deref(), outbound.clone(), virtual_clock.as_deref()).await;
        }
        Some(Serve::ServePg { url, node }) => return serve_pg(url, node).await,
        None => {}
    }
    if let Some(url) = &cli.postgres {
        let (nodes, cases) = (count(Some(cli.nodes), 1), count(cli.cases, 20_000));
        return pg_workload(url, nodes, cases, count(cli.timers, 10_000), count(cli.concurrency, 64)).await;
    }
    if cli.delivery {
        return delivery(count(cli.cases, 10_000), count(cli.rounds, 3)).await;
    }
    if let Some(n) = cli.stats {
        let db = cli.db.as_deref().context("--stats needs --db PATH (kept: the before and after runs share it)")?;
        return stats(n, db, &cli.server_exe()?).await;
    }
    if let Some(n) = cli.console {
        let db =
            cli.db.as_deref().context("--console needs --db PATH (kept: a million cases take minutes to write)")?;
        return console::console(n, db, &cli.server_exe()?).await;
    }
    if cli.json_intake {
        let (n, rounds) = (count(cli.cases, 5_000), count(cli.rounds, 5));
        return console::json_intake(n, rounds, count(cli.concurrency, 64)).await;
    }
    if cli.abuse {
        let prefill = if cli.prefill == 0 { 200_000 } else { cli.prefill };
        return abuse(prefill, Duration::from_secs(cli.secs)).await;
    }
    if let Some(n) = cli.archive {
        return archive(n, count(cli.concurrency, 64)).await;
    }
    if cli.w12 {
        return w12(count(cli.cases, 5_000), cli.secure).await;
    }
    if cli.w6 {
        return w6_alone(count(cli.cases, 5_000), count(cli.concurrency, 64), &cli.server_exe()?).await;
    }
    let args = cli.workload();
    if args.replan > 0 {
        return replan(&args).await;
    }
    let dir = tempfile::tempdir()?;
    let db = args.keep.clone().unwrap_or_else(|| dir.path().join("load.db"));
    let overdue = args.prefill / 1000;
    if args.prefill > 0 {
        prefill(&db, args.prefill, overdue).await?;
    }
    let spawned_at = now_ms();
    let (mut server, boot) = spawn_server(&db).await?;
    let (boot_rss_kib, _) = resources(server.pid);
    // At scale: the cases already due fire at start (a reminder and a deadline each). Measured
    // at commit: from the server's spawn to the commit of the last of them.
    let catch_up = if overdue > 0 {
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            let text = integration_tests::scrape(server.addr.as_str()).await?;
            let fired = metric(&text, "shenguan_timers_fired_total");
            if fired >= (2 * overdue) as f64 || Instant::now() > until {
                let last = metric(&text, "shenguan_timer_last_fire_commit_unix_ms") as i64;
                break Some((fired, last - spawned_at));
            }
            // A load generator may poll: it measures, it does not synchronise anything.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        None
    };
    let channels: Vec<Ch> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(connect(&server.addr).await?);
        }
        v
    };
    let clients: Vec<EngineServiceClient<Ch>> = channels.iter().cloned().map(EngineServiceClient::new).collect();
    let c = args.concurrency;
    let mut phases = Vec::new();

    // Floor (a): a no-op unary call on the same server at the same concurrency.
    let transport = transport_floor(&channels, args.cases * 2, c).await?;

    // W1: starts whose timers are an hour away.
    let far = now_ms() + 3_600_000;
    let w1 = starts("W1 intake (start)", &clients, "w1", args.cases, c, far - 60_000, far).await?;
    // W2: materials submitted to the same cases.
    let w2 = signals(&clients, args.cases, c).await?;

    let after_w2 = commit_stats(&server.addr).await.unwrap_or_default();

    // W3: M cases whose deadline is one common instant, `lead` after the first start.
    let due = now_ms() + i64::try_from(args.lead.as_millis())?;
    let w3_start = starts(
        "W3 starts (timers armed)",
        &clients,
        "w3",
        args.timers,
        c,
        due - (args.lead.as_millis() as i64) / 2,
        due,
    )
    .await?;
    // The server's lateness histogram before the deadlines (a quarter of the lead before: the
    // W3 reminders, due half the lead before, have fired; a scrape counts every pending timer,
    // seconds at 10M, so it must be rendered before the deadlines) and after: the difference is
    // the W3 deadlines.
    let lead_ms = i64::try_from(args.lead.as_millis())?;
    let snapshot_at = Instant::now() + Duration::from_millis(u64::try_from((due - now_ms() - lead_ms / 4).max(0))?);
    tokio::time::sleep_until(snapshot_at.into()).await;
    let hist_before = lateness_buckets(&integration_tests::scrape(server.addr.as_str()).await?);
    let until = Instant::now() + args.lead + Duration::from_secs(30);
    let (mut late, total, distinct) = wait_for_fires(&db, "w3", args.timers, until).await?;
    let after_w3 = integration_tests::scrape(server.addr.as_str()).await?;
    let hist_after = lateness_buckets(&after_w3);
    let last_commit = metric(&after_w3, "shenguan_timer_last_fire_commit_unix_ms") as i64;
    let count = |h: &[(f64, f64)]| h.last().map_or(0.0, |(_, n)| *n);
    let recorded = count(&hist_after) - count(&hist_before);
    ensure!(
        recorded as usize == args.timers,
        "W3: the server recorded {recorded} fires between the snapshots, not the {} deadlines",
        args.timers
    );
    let committed = |p: f64| lateness_pct(&hist_before, &hist_after, p);
    let committed_max = last_commit - due;
    late.sort_unstable();
    let (rss_kib, cpu) = resources(server.pid);
    ensure!(
        total == args.timers && distinct == args.timers,
        "W3: {total} deadline fires for {distinct} of {} cases",
        args.timers
    );
    ensure!(late.first().is_none_or(|l| *l >= 0), "W3: a deadline fired early: {:?}", late.first());
    let pick = |p: f64| late.get(((late.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    // Fires/s over the whole drain: from the start of the first batch that fired a deadline
    // to the commit of the last one (the old figure stopped at the start of the last batch).
    let (w3_drain, w3_drain_to_last_start) = {
        let mut conn = SqliteConnectOptions::new().filename(&db).read_only(true).connect().await?;
        let (first, last): (i64, i64) = sqlx::query_as(
            "SELECT min(at), max(at) FROM history WHERE instance_id >= 'w3-' AND instance_id < 'w3.~' AND json_extract(command, '$.name') = 'deadline'",
        )
        .fetch_one(&mut conn)
        .await?;
        let secs = |ms: i64| ms.max(1) as f64 / 1000.0;
        (args.timers as f64 / secs(last_commit - first), args.timers as f64 / secs(last - first))
    };

    // W5: pending timers, SIGKILL, restart, every deadline exactly once.
    let w5_lead: i64 = if args.smoke { 2_000 } else { 15_000 };
    let w5_due = now_ms() + w5_lead.max(i64::try_from(args.lead.as_millis())? / 2);
    let w5_n = args.timers;
    let w5_start = starts("W5 starts before the kill", &clients, "w5", w5_n, c, w5_due - 5_000, w5_due).await?;
    server.child.start_kill()?;
    server.child.wait().await?;
    let (restarted, ready) = spawn_server(&db).await?;
    let until =
        Instant::now() + Duration::from_millis(u64::try_from((w5_due - now_ms()).max(0))?) + Duration::from_secs(30);
    let (_, w5_total, w5_distinct) = wait_for_fires(&db, "w5", w5_n, until).await?;
    let mut conn = SqliteConnectOptions::new().filename(&db).read_only(true).connect().await?;
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE id >= 'w5-' AND id < 'w5.~'")
        .fetch_one(&mut conn)
        .await?;
    ensure!(present as usize == w5_n, "W5: {present} of {w5_n} acknowledged cases present after the kill");
    ensure!(w5_total == w5_n && w5_distinct == w5_n, "W5: {w5_total} deadline fires for {w5_distinct} of {w5_n} cases");

    drop(restarted);

    // Floor (b): the same rows straight into SQLite, in batches of the callers' concurrency.
    let storage = storage_floor(dir.path(), args.cases, c).await?;
    let storage500 = storage_floor(dir.path(), args.cases.max(500), 500).await?;

    // W6 runs last, after the floors (which are measured as before), on the same database.
    let (domain_server, _) = spawn_server(&db).await?;
    // W6: the same number of cases through the domain API a platform calls: AcceptCase with
    // two supervisors (the case and its routing, one group, read back), then CompleteApproval
    // (the licence and one task per supervisor, one group, read back with its tasks).
    let (w6_accept, w6_complete, _) = w6(&domain_server.addr, args.cases, c, None).await?;
    drop(domain_server);

    phases.extend([transport, w1, w2, w3_start, w5_start, storage, storage500, w6_accept, w6_complete]);
    println!(
        "\nshenguan load ({}): {} cases, {} timers, {} callers, deadline lead {:?}",
        if args.smoke { "smoke" } else { "full" },
        args.cases,
        args.timers,
        c,
        args.lead
    );
    println!("{:<28} {:>9} {:>10} {:>9} {:>9} {:>9}", "phase", "ops", "ops/s", "p50 ms", "p99 ms", "max ms");
    for p in &phases {
        println!(
            "{:<28} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            p.name,
            p.ops,
            p.rate(),
            p.pct(0.5),
            p.pct(0.99),
            p.pct(1.0)
        );
    }
    let floor = phases[0].rate().min(phases[5].rate());
    println!(
        "\nratios to the lower floor ({floor:.0}/s): W1 {:.2}, W2 {:.2}",
        phases[1].rate() / floor,
        phases[2].rate() / floor
    );
    println!(
        "W1–W2 group commit: {:.1} commands per transaction, {:.2} ms per commit on average",
        after_w2.0, after_w2.1
    );
    println!(
        "W3 lateness at commit (server histogram, bucket upper bounds): p50 ≤ {:.0} ms, p99 ≤ {:.0} ms, max {committed_max} ms (exact); drained at {w3_drain:.0} fires/s (first batch start to last commit); none early",
        committed(0.5),
        committed(0.99)
    );
    println!(
        "W3 lateness at decision (batch start − due, the old measure): p50 {} ms, p99 {} ms, max {} ms; {w3_drain_to_last_start:.0} fires/s to the last batch's start",
        pick(0.5),
        pick(0.99),
        pick(1.0)
    );
    println!(
        "W6 domain intake: AcceptCase {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), CompleteApproval {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); W1 generic start for comparison {:.0}/s",
        phases[7].rate(),
        phases[7].pct(0.5),
        phases[7].pct(0.99),
        phases[8].rate(),
        phases[8].pct(0.5),
        phases[8].pct(0.99),
        phases[1].rate()
    );
    if let Some((fired, ms)) = catch_up {
        println!("scale catch-up: {fired:.0} timers already due at start, all committed {ms} ms after the server was spawned");
    }
    if args.prefill > 0 {
        println!(
            "scale: {} pending cases prefilled; server ready in {:.0} ms with RSS {:.1} MiB after boot",
            args.prefill,
            boot.as_secs_f64() * 1000.0,
            boot_rss_kib as f64 / 1024.0
        );
    }
    println!(
        "W4 server: peak RSS {:.1} MiB, CPU {cpu:.2} s over W1–W3 (boot {:.0} ms)",
        rss_kib as f64 / 1024.0,
        boot.as_secs_f64() * 1000.0
    );
    println!("W5 after SIGKILL with {w5_n} pending: ready in {:.0} ms; {w5_n} cases present; every deadline fired exactly once", ready.as_secs_f64() * 1000.0);

    let json = serde_json::json!({
        "mode": if args.smoke { "smoke" } else { "full" },
        "cases": args.cases, "timers": args.timers, "concurrency": c,
        "phases": phases.iter().map(|p| serde_json::json!({"name": p.name, "ops": p.ops, "per_second": p.rate(), "p50_ms": p.pct(0.5), "p99_ms": p.pct(0.99), "max_ms": p.pct(1.0)})).collect::<Vec<_>>(),
        "group_commit_w1_w2": {"commands_per_commit": after_w2.0, "commit_ms": after_w2.1},
        "w3": {"lateness_at_commit_ms": {"p50_at_most": committed(0.5), "p99_at_most": committed(0.99), "max": committed_max}, "lateness_at_decision_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}, "fires_per_second": w3_drain, "fires_per_second_to_last_batch_start": w3_drain_to_last_start},
        "scale_catch_up": catch_up.map(|(fired, ms)| serde_json::json!({"fired": fired, "ms_after_spawn": ms})),
        "w4": {"peak_rss_mib": rss_kib as f64 / 1024.0, "cpu_seconds": cpu},
        "scale": {"prefilled": args.prefill, "ready_ms": boot.as_secs_f64() * 1000.0, "rss_after_boot_mib": boot_rss_kib as f64 / 1024.0},
        "w5": {"pending": w5_n, "ready_ms": ready.as_secs_f64() * 1000.0, "fired_once": true},
    });
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)?;
    println!("\nresults written to {}", args.json.display());
    Ok(())
}

const SECURE_ISSUER: &str = "https://idp.load.test";

/// Adds a bearer token (if any) to every call.
#[derive(Clone)]
struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Ch = tonic::service::interceptor::InterceptedService<Channel, Auth>;

/// A server on `db`, plain or with TLS and an ES256 identity provider (files in `dir`), and
/// `n` channels to it carrying the valid token (`Auth(None)` when plain). Answers the token too.
async fn secured_server(
    dir: &Path,
    db: &Path,
    secure: bool,
    n: usize,
) -> Result<(ServerProcess, Vec<Ch>, Option<tonic::transport::ClientTlsConfig>, Auth)> {
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    let mut client_tls = None;
    let mut auth = Auth(None);
    if secure {
        // A CA and a server certificate for localhost; the identity provider's ES256 key.
        let pki = integration_tests::Pki::new("load CA")?;
        let (cert, key, _) = pki.leaf(&["localhost"], false)?;
        std::fs::write(dir.join("server.crt"), cert)?;
        std::fs::write(dir.join("server.key"), key)?;
        std::fs::create_dir(dir.join("keys"))?;
        let idp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        std::fs::write(dir.join("keys/idp.pem"), idp.public_key_pem())?;
        let claims = shenguan::auth::verify::Claims {
            iss: SECURE_ISSUER.into(),
            aud: shenguan::auth::verify::AUDIENCE.into(),
            ..shenguan::auth::verify::Claims::valid_for(
                "load-generator",
                vec!["engine_admin".into()],
                Duration::from_secs(3600),
            )
        };
        let token = shenguan::auth::verify::mint_with_pem(
            jsonwebtoken::Algorithm::ES256,
            idp.serialize_pem().as_bytes(),
            Some("idp"),
            &claims,
        )
        .context("mint")?;
        auth = Auth(Some(format!("Bearer {token}").parse()?));
        client_tls = Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_pem()))
                .domain_name("localhost"),
        );
        extra.push("--secure".into());
        extra.push(dir.into());
    }
    let extra_refs: Vec<&std::ffi::OsStr> = extra.iter().map(|s| s.as_os_str()).collect();
    let (server, _) = spawn_server_with(db, &extra_refs).await?;
    let mut channels: Vec<Ch> = Vec::new();
    for _ in 0..n {
        let channel = channel_to(&server.addr, client_tls.as_ref()).await?;
        channels.push(tonic::service::interceptor::InterceptedService::new(channel, auth.clone()));
    }
    Ok((server, channels, client_tls, auth))
}

/// A channel to `addr`, over TLS when `tls` is given, retried while the server starts.
async fn channel_to(addr: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?.tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    for _ in 0..200 {
        if let Ok(c) = endpoint.connect().await {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("cannot connect to {addr}")
}

/// W1 and W2 alone, plain or with TLS and a verified ES256 token on every call.
async fn w12(n: usize, secure: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("w12.db");
    let (server, channels, _, _) = secured_server(dir.path(), &db, secure, 4).await?;
    let c = 64;
    let floor = transport_floor(&channels, n * 2, c).await?;
    let clients: Vec<EngineServiceClient<Ch>> = channels.iter().cloned().map(EngineServiceClient::new).collect();
    let far = now_ms() + 3_600_000;
    let w1 = starts("W1 intake (start)", &clients, "w1", n, c, far - 60_000, far).await?;
    let w2 = signals(&clients, n, c).await?;
    println!(
        "{}",
        serde_json::json!({
            "secure": secure, "cases": n,
            "floor_per_s": floor.rate(), "w1_per_s": w1.rate(), "w2_per_s": w2.rate(),
            "w1_p50_ms": w1.pct(0.5), "w1_p99_ms": w1.pct(0.99),
            "w2_p50_ms": w2.pct(0.5), "w2_p99_ms": w2.pct(0.99),
        })
    );
    drop(server);
    Ok(())
}

/// W6 against the server at `addr`: `n` AcceptCase calls with two supervisors (the case and its
/// routing, one group, read back), then `n` CompleteApproval calls (the licence and one task
/// per supervisor, one group, read back with its tasks), `c` callers each.
/// With `pid`, also the server's CPU seconds over each of the two phases.
async fn w6(addr: &str, n: usize, c: usize, pid: Option<u32>) -> Result<(Phase, Phase, [f64; 2])> {
    let cpu = || pid.map_or(0.0, |p| resources(p).1);
    let cpu_before = cpu();
    let domain = connect(addr).await?;
    let intake = shenguan::proto::intake_service_client::IntakeServiceClient::new(domain);
    let accept_client = intake.clone();
    let w6_accept = drive("W6 AcceptCase (2 supervisors)", n, c, move |i| {
        let mut client = accept_client.clone();
        let request = w6_accept(&format!("W6-{i:07}"));
        async move {
            let reply = client.accept_case(request).await?.into_inner();
            ensure!(reply.case.is_some_and(|c| c.state == "awaiting_approval"), "W6-{i:07} not awaiting approval");
            Ok(())
        }
    })
    .await?;
    let cpu_between = cpu();
    let complete_client = intake.clone();
    let w6_complete = drive("W6 CompleteApproval", n, c, move |i| {
        let mut client = complete_client.clone();
        let request = shenguan::proto::CompleteApprovalRequest {
            case_id: format!("320700/W6-{i:07}"),
            license_no: format!("L-{i:07}"),
            approval_opinion: "approved".into(),
            document_refs: vec![],
        };
        async move {
            let case = client.complete_approval(request).await?.into_inner().case.context("no case")?;
            ensure!(
                case.state == "licensed" && case.tasks.len() == 2,
                "W6-{i:07}: {} with {} tasks",
                case.state,
                case.tasks.len()
            );
            Ok(())
        }
    })
    .await?;
    Ok((w6_accept, w6_complete, [cpu_between - cpu_before, cpu() - cpu_between]))
}

/// `--w6`: W1 (the generic start, for the ratio) and W6 on a fresh server — by default this
/// binary, or `exe` (another build's, for an A/B); one JSON line.
async fn w6_alone(n: usize, c: usize, exe: &Path) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("w6.db");
    let server = spawn_exe(exe, &["serve".as_ref(), db.as_os_str()]).await?;
    let channel = connect(&server.addr).await?;
    let clients: Vec<EngineServiceClient<Ch>> = vec![EngineServiceClient::new(channel)];
    let far = now_ms() + 3_600_000;
    let cpu_before = resources(server.pid).1;
    let w1 = starts("W1 intake (start)", &clients, "w1", n, c, far - 60_000, far).await?;
    let w1_cpu = resources(server.pid).1 - cpu_before;
    let (accept, complete, [accept_cpu, complete_cpu]) = w6(&server.addr, n, c, Some(server.pid)).await?;
    // The server's CPU per call: steadier than a rate on a shared machine, and it counts what
    // the server does for a call on every thread, not only on the writer's path.
    let per_call_us = |cpu: f64| cpu * 1e6 / n as f64;
    println!(
        "{}",
        serde_json::json!({
            "cases": n, "w1_per_s": w1.rate(),
            "accept_per_s": accept.rate(), "complete_per_s": complete.rate(),
            "accept_over_w1": accept.rate() / w1.rate(), "complete_over_w1": complete.rate() / w1.rate(),
            "accept_p50_ms": accept.pct(0.5), "accept_p99_ms": accept.pct(0.99),
            "complete_p50_ms": complete.pct(0.5), "complete_p99_ms": complete.pct(0.99),
            "w1_cpu_us": per_call_us(w1_cpu), "accept_cpu_us": per_call_us(accept_cpu),
            "complete_cpu_us": per_call_us(complete_cpu),
        })
    );
    drop(server);
    Ok(())
}

/// A server with `outbound` (none: every message is stream only), and clients to it.
async fn delivery_server(
    db: &Path,
    outbound: Option<&Path>,
) -> Result<(ServerProcess, Vec<EngineServiceClient<Ch>>, Vec<Ch>)> {
    let extra: Vec<&std::ffi::OsStr> = match outbound {
        Some(p) => vec![std::ffi::OsStr::new("--outbound"), p.as_os_str()],
        None => Vec::new(),
    };
    let (server, _) = spawn_server_with(db, &extra).await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        let mut connected = None;
        for _ in 0..200 {
            match connect(&server.addr).await {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        channels.push(connected.context("connect")?);
    }
    let clients = channels.iter().cloned().map(EngineServiceClient::new).collect();
    Ok((server, clients, channels))
}

/// `n` starts (each writing one message) on a fresh server with no destination: the rate, and
/// the CPU seconds of the server and of this process.
async fn plain_intake(db: &Path, n: usize, c: usize) -> Result<(Phase, (f64, f64))> {
    let (server, clients, _) = delivery_server(db, None).await?;
    let now = now_ms();
    let me = resources(std::process::id()).1;
    // The reminder is due at once: each start commits its reminder's SMS with it.
    let plain = starts("W1 intake, no destination", &clients, "p", n, c, now, now + 3_600_000).await?;
    let cpu = (resources(server.pid).1, resources(std::process::id()).1 - me);
    drop(server);
    Ok((plain, cpu))
}

/// Unix ms of an RFC 3339 instant in a webhook body.
fn body_ms(r: &integration_tests::receiver::Received) -> Option<i64> {
    let json = r.json();
    let text = json["created_at"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

fn pct_ms(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn delivery(n: usize, rounds: usize) -> Result<()> {
    use integration_tests::receiver::{Answer, Receiver};
    use shenguan::proto::events_service_client::EventsServiceClient;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hook.secret"), "a shared secret for the load receiver")?;
    let config = |url: &str| {
        format!(
            "[[destination]]\nname = \"receiver\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
             channels = [\"sms\", \"approval_department\"]\nsecret_file = {:?}\nconcurrency = 64\nqueue = 20000\n",
            dir.path().join("hook.secret")
        )
    };
    let c = 64;
    let mut json_rounds = Vec::new();
    let mut ratios = Vec::new();
    let mut webhook_rates = Vec::new();
    let mut stream_rates = Vec::new();
    let mut stuck_ratios = Vec::new();
    for round in 0..rounds {
        // Intake with no destination (every message stream only), before and after the
        // others: this machine drifts within a run, and the mean of the two cancels it.
        let (plain, plain_cpu) = plain_intake(&dir.path().join(format!("plain-{round}.db")), n, c).await?;

        // The same intake while the destination never answers: what a dead receiver costs
        // intake (its dispatcher holds `concurrency` requests and a window; nothing else).
        let stuck = Receiver::start(|_, _| Answer::Hang).await?;
        let cfg = dir.path().join(format!("outbound-stuck-{round}.toml"));
        std::fs::write(&cfg, config(&stuck.url()).replace("concurrency = 64", "concurrency = 64\ntimeout_secs = 300"))?;
        let (server, clients, _) = delivery_server(&dir.path().join(format!("stuck-{round}.db")), Some(&cfg)).await?;
        let now = now_ms();
        let blocked = starts("W1 intake, destination stuck", &clients, "s", n, c, now, now + 3_600_000).await?;
        let stuck_rate = blocked.rate();
        drop(server);
        drop(stuck);

        // The same intake while a webhook receiver takes every message.
        let receiver = Receiver::start(|_, _| Answer::Ok).await?;
        let cfg = dir.path().join(format!("outbound-{round}.toml"));
        std::fs::write(&cfg, config(&receiver.url()))?;
        let db = dir.path().join(format!("push-{round}.db"));
        let (server, clients, channels) = delivery_server(&db, Some(&cfg)).await?;
        let now = now_ms();
        let started = Instant::now();
        let me = resources(std::process::id()).1;
        let pushed = starts("W1 intake, delivering", &clients, "d", n, c, now, now + 3_600_000).await?;
        let all = receiver.wait_until(Duration::from_secs(300), |all| all.len() >= n).await?;
        let pushed_cpu = (resources(server.pid).1, resources(std::process::id()).1 - me);
        let drained = started.elapsed();
        let first = all.iter().map(|r| r.at).min().context("none")?;
        let last = all.iter().map(|r| r.at).max().context("none")?;
        let webhook_rate = n as f64 / last.duration_since(first).as_secs_f64().max(1e-9);
        let pushed_rate = pushed.rate();

        // The stream: one consumer reads the same n messages, acknowledging every 2,000.
        let mut events = EventsServiceClient::new(channels[0].clone());
        let t = Instant::now();
        let mut stream = events
            .subscribe(shenguan::proto::SubscribeRequest {
                consumer: format!("load-{round}"),
                channels: vec![],
                regions: vec![],
                max_in_flight: 10_000,
            })
            .await?
            .into_inner();
        let mut got = 0;
        while got < n {
            let e = stream.message().await?.context("stream ended")?;
            got += 1;
            if got % 2_000 == 0 {
                events.ack(shenguan::proto::AckRequest { consumer: format!("load-{round}"), up_to: e.id }).await?;
            }
        }
        let stream_rate = n as f64 / t.elapsed().as_secs_f64();
        drop(stream);
        drop(server);
        println!(
            "round {round}: webhook {webhook_rate:.0} msg/s (all {n} received {:.2} s after the first start); stream {stream_rate:.0} msg/s; CPU s server/load+receiver: plain {:.2}/{:.2}, delivering {:.2}/{:.2}",
            drained.as_secs_f64(),
            plain_cpu.0,
            plain_cpu.1,
            pushed_cpu.0,
            pushed_cpu.1
        );
        let (plain_after, _) = plain_intake(&dir.path().join(format!("plain-after-{round}.db")), n, c).await?;
        let baseline = (plain.rate() + plain_after.rate()) / 2.0;
        let (ratio, stuck_ratio) = (pushed_rate / baseline, stuck_rate / baseline);
        println!(
            "round {round}: intake {:.0}/s plain (mean of {:.0} before and {:.0} after), {pushed_rate:.0}/s delivering (ratio {ratio:.2}), {stuck_rate:.0}/s beside a stuck destination (ratio {stuck_ratio:.2})",
            baseline,
            plain.rate(),
            plain_after.rate()
        );
        ratios.push(ratio);
        stuck_ratios.push(stuck_ratio);
        webhook_rates.push(webhook_rate);
        stream_rates.push(stream_rate);
        json_rounds.push(serde_json::json!({
            "intake_plain_per_s": baseline, "intake_plain_before_per_s": plain.rate(), "intake_plain_after_per_s": plain_after.rate(),
            "intake_delivering_per_s": pushed_rate, "ratio": ratio,
            "intake_beside_stuck_destination_per_s": blocked.rate(), "stuck_ratio": stuck_ratio,
            "webhook_msgs_per_s": webhook_rate, "stream_msgs_per_s": stream_rate,
            "cpu_s_plain": {"server": plain_cpu.0, "load_and_receiver": plain_cpu.1},
            "cpu_s_delivering": {"server": pushed_cpu.0, "load_and_receiver": pushed_cpu.1},
        }));
    }

    // Commit-to-receipt without backlog: one start at a time, each writing one message.
    let receiver = Receiver::start(|_, _| Answer::Ok).await?;
    let cfg = dir.path().join("outbound-latency.toml");
    std::fs::write(&cfg, config(&receiver.url()))?;
    let (server, clients, _) = delivery_server(&dir.path().join("latency.db"), Some(&cfg)).await?;
    let paced = 2_000.min(n);
    let now = now_ms();
    starts("paced starts", &clients, "l", paced, 1, now, now + 3_600_000).await?;
    let all = receiver.wait_until(Duration::from_secs(120), |all| all.len() >= paced).await?;
    let mut latency: Vec<i64> = all.iter().filter_map(|r| body_ms(r).map(|c| r.received_ms - c)).collect();
    latency.sort_unstable();
    drop(server);

    // W3's burst: n deadlines due at one instant, each writing a message to the receiver.
    let receiver = Receiver::start(|_, _| Answer::Ok).await?;
    let cfg = dir.path().join("outbound-w3.toml");
    std::fs::write(&cfg, config(&receiver.url()))?;
    let (server, clients, _) = delivery_server(&dir.path().join("w3.db"), Some(&cfg)).await?;
    let lead = 20_000;
    let due = now_ms() + lead;
    // The reminder after the deadline never fires: the deadline ends the case.
    starts("W3 starts", &clients, "w3", n, c, due + 3_600_000, due).await?;
    ensure!(now_ms() < due, "the W3 starts took longer than the lead ({lead} ms)");
    let all = receiver.wait_until(Duration::from_secs(300), |all| all.len() >= n).await?;
    let last = all.iter().map(|r| r.received_ms).max().context("none")?;
    let first = all.iter().map(|r| r.received_ms).min().context("none")?;
    let w3_all_received_ms = last - due;
    // Ten thousand messages appear at once (as fast as the timers fire): the drain rate of a
    // backlog, which intake-paced delivery above cannot show.
    let w3_drain = n as f64 * 1000.0 / (last - first).max(1) as f64;
    drop(server);

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary = serde_json::json!({
        "cases": n, "rounds": json_rounds,
        "intake_ratio_median": median(&mut ratios),
        "intake_ratio_beside_stuck_destination_median": median(&mut stuck_ratios),
        "webhook_msgs_per_s_median": median(&mut webhook_rates),
        "stream_msgs_per_s_median": median(&mut stream_rates),
        "commit_to_receipt_ms": {"n": latency.len(), "p50": pct_ms(&latency, 0.5), "p99": pct_ms(&latency, 0.99), "max": pct_ms(&latency, 1.0)},
        "w3_burst_all_received_after_due_ms": w3_all_received_ms,
        "w3_burst_webhook_msgs_per_s": w3_drain,
    });
    println!("{summary}");
    Ok(())
}

/// `load serve-pg URL NODE`: this binary as one node of a cluster on PostgreSQL (open
/// authentication, real clock), lease 2 s.
async fn serve_pg(url: &str, node: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let mut config = shenguan::engine::Config::with_database(shenguan::store::Database::Postgres(url.to_owned()));
    config.cluster =
        Some(shenguan::cluster::Settings { node: node.to_owned(), lease: PG_LEASE, tick: Duration::from_millis(200) });
    let options = shenguan::server::Options::new(
        config,
        Arc::new(shenguan::definition::Registry::embedded()?),
        shenguan::calendar::Calendars::embedded()?,
        None,
    );
    shenguan::server::run(options, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

/// The lease time of `--postgres` runs: the failover goal is this plus one second.
const PG_LEASE: Duration = Duration::from_secs(2);

/// (lateness ms per fired deadline, fires, distinct instances, first and last fire instant) for
/// instances with `prefix`, from PostgreSQL.
async fn pg_fired(pool: &sqlx::PgPool, prefix: &str) -> Result<(Vec<i64>, usize, usize, i64, i64)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT instance_id, at, ((command::jsonb) ->> 'due')::bigint FROM history \
         WHERE instance_id >= $1 AND instance_id < $2 AND (command::jsonb) ->> 'kind' = 'timer' \
         AND (command::jsonb) ->> 'name' = 'deadline'",
    )
    .bind(format!("{prefix}-"))
    .bind(format!("{prefix}.~"))
    .fetch_all(pool)
    .await?;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    let first = rows.iter().map(|r| r.1).min().unwrap_or(0);
    let last = rows.iter().map(|r| r.1).max().unwrap_or(0);
    Ok((rows.iter().map(|r| r.1 - r.2).collect(), total, ids.len(), first, last))
}

async fn pg_wait_fires(
    pool: &sqlx::PgPool,
    prefix: &str,
    want: usize,
    until: Instant,
) -> Result<(Vec<i64>, usize, usize, i64, i64)> {
    loop {
        let r = pg_fired(pool, prefix).await?;
        if r.1 >= want || Instant::now() > until {
            return Ok(r);
        }
        // A load generator may poll: it measures, it does not synchronise anything.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Floor: a case's rows (instance, history, two timers, request id) inserted straight into
/// PostgreSQL with the engine's statements' shape (UNNEST), `batch` cases per transaction,
/// `parallel` transactions at a time, synchronous_commit on.
async fn pg_floor(url: &str, n: usize, batch: usize, parallel: usize, name: &'static str) -> Result<Phase> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(parallel)?)
        .connect_with(shenguan::store::postgres::connect_options(url)?)
        .await?;
    let chunks: Vec<Vec<String>> = (0..n)
        .map(|i| format!("floor-{batch}-{i:07}"))
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(<[String]>::to_vec)
        .collect();
    let chunks = Arc::new(chunks);
    let count = chunks.len();
    let phase = drive(name, count, parallel, move |i| {
        let (pool, chunks) = (pool.clone(), chunks.clone());
        async move { pg_insert_cases(&pool, &chunks[i], 1_795_755_600_000).await }
    })
    .await?;
    // Rates are in cases, latencies per transaction.
    Ok(Phase { ops: n, ..phase })
}

async fn pg_insert_cases(pool: &sqlx::PgPool, ids: &[String], due: i64) -> Result<()> {
    let created = now_ms();
    let CaseJson { vars, timers, command, armed } = CaseJson::due(due);
    let n = ids.len();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO history (instance_id, seq, at, actor, request_id, command, from_state, to_state, armed, cancelled, messages, handled, calendar) \
         SELECT id, 1, $2, 'engine-client', id, $3, NULL, 'pending', $4, '{}', 0, true, 0 FROM UNNEST($1::text[]) AS u(id) \
         ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(created)
    .bind(&command)
    .bind(&armed)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at) \
         SELECT id, 'bench_case', 1, 'pending', $2::jsonb, $3, 1, 7, $4, $4 FROM UNNEST($1::text[]) AS u(id) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
    )
    .bind(ids)
    .bind(&vars)
    .bind(&timers)
    .bind(created)
    .execute(&mut *tx)
    .await?;
    let (tid, tname): (Vec<&str>, Vec<&str>) =
        ids.iter().flat_map(|id| [(id.as_str(), "deadline"), (id.as_str(), "reminder")]).unzip();
    let dues: Vec<i64> = (0..n).flat_map(|_| [due, due - 30_000]).collect();
    sqlx::query(
        "INSERT INTO timers (instance_id, name, due_at, event, shard) \
         SELECT i, n, d, CASE n WHEN 'deadline' THEN 'deadline_passed' ELSE 'remind' END, 7 \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS u(i, n, d) ON CONFLICT DO NOTHING",
    )
    .bind(&tid)
    .bind(&tname)
    .bind(&dues)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO idempotency (key, instance_id, seq, fingerprint, created_at) \
         SELECT id, id, 1, '0123456789abcdef', $2 FROM UNNEST($1::text[]) AS u(id) ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(created)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `--postgres URL [--nodes N]`: W1–W5 against N nodes (this binary in `serve-pg` mode) on a
/// fresh database of the PostgreSQL server at URL, with PostgreSQL's own insert rates for a
/// case's rows (batched and single) as floors, measured in the same run. Prints one JSON line.
async fn pg_workload(admin_url: &str, nodes: usize, cases: usize, timers: usize, c: usize) -> Result<()> {
    let url = integration_tests::pg::create_database(admin_url).await?;
    shenguan::store::migrate(&shenguan::store::Database::Postgres(url.clone())).await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let mut servers = Vec::new();
    for i in 0..nodes {
        servers.push(spawn_listening(&["serve-pg", url.as_str(), &format!("n{}", i + 1)]).await?);
    }
    // Every node holds its share before the clock starts.
    let settled = Instant::now();
    loop {
        let owners: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT owner FROM shard_leases WHERE owner IS NOT NULL \
             AND expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        )
        .fetch_all(&pool)
        .await?;
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL").fetch_one(&pool).await?;
        if owners.len() == nodes && held == 64 {
            break;
        }
        ensure!(settled.elapsed() < Duration::from_secs(60), "the nodes did not share the shards");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut channels = Vec::new();
    for s in &servers {
        for _ in 0..4 {
            channels.push(connect(&s.addr).await?);
        }
    }
    let clients: Vec<EngineServiceClient<Ch>> = channels.iter().cloned().map(EngineServiceClient::new).collect();
    let transport = transport_floor(&channels, cases * 2, c).await?;
    let far = now_ms() + 3_600_000;
    let w1 = starts("W1 intake (start)", &clients, "w1", cases, c, far - 60_000, far).await?;
    let w2 = signals(&clients, cases, c).await?;
    let mut group_commit = Vec::new();
    for s in &servers {
        group_commit.push(commit_stats(&s.addr).await.unwrap_or_default());
    }
    eprintln!("W1–W2 group commit per node (commands per commit, ms per commit): {group_commit:?}");

    // W3: `timers` deadlines at one instant, 20 s after the first start.
    let lead = 20_000;
    let due = now_ms() + lead;
    let w3_start = starts("W3 starts (timers armed)", &clients, "w3", timers, c, due - lead / 2, due).await?;
    let until = Instant::now() + Duration::from_millis(u64::try_from(lead)?) + Duration::from_secs(60);
    let (mut late, total, distinct, first, last) = pg_wait_fires(&pool, "w3", timers, until).await?;
    ensure!(total == timers && distinct == timers, "W3: {total} deadline fires for {distinct} of {timers} cases");
    ensure!(late.iter().all(|l| *l >= 0), "W3: a deadline fired early");
    late.sort_unstable();
    let pick = |p: f64| late.get(((late.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let drain = timers as f64 / ((last - first).max(1) as f64 / 1000.0);
    let mut rss = Vec::new();
    let mut cpu = 0.0;
    for s in &servers {
        let (r, c) = resources(s.pid);
        rss.push(r as f64 / 1024.0);
        cpu += c;
    }

    // W5: deadlines due just after node 1 is SIGKILLed. One node: it restarts and fires them;
    // several: the others take its shards when its leases expire and fire them.
    let w5_n = timers.min(5_000);
    let w5_due = now_ms() + 15_000;
    let w5_start = starts("W5 starts before the kill", &clients, "w5", w5_n, c, w5_due - 30_000, w5_due).await?;
    let wait = u64::try_from((w5_due - now_ms() - 300).max(0))?;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let killed_at = now_ms();
    {
        let first = &mut servers[0];
        first.child.start_kill()?;
        first.child.wait().await?;
    }
    let mut ready_ms = None;
    if nodes == 1 {
        let started = Instant::now();
        servers[0] = spawn_listening(&["serve-pg", url.as_str(), "n1"]).await?;
        ready_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (_, w5_total, w5_distinct, _, w5_last) =
        pg_wait_fires(&pool, "w5", w5_n, Instant::now() + Duration::from_secs(60)).await?;
    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE id >= 'w5-' AND id < 'w5.~'").fetch_one(&pool).await?;
    ensure!(present as usize == w5_n, "W5: {present} of {w5_n} acknowledged cases present after the kill");
    ensure!(w5_total == w5_n && w5_distinct == w5_n, "W5: {w5_total} deadline fires for {w5_distinct} of {w5_n} cases");
    let failover_ms = w5_last - killed_at.max(w5_due);
    drop(servers);

    let floor_batched = pg_floor(&url, cases, c, 1, "floor: PostgreSQL, batched").await?;
    let floor_single = pg_floor(&url, cases.min(20_000), 1, c, "floor: PostgreSQL, single").await?;
    let phases = [transport, w1, w2, w3_start, w5_start, floor_batched, floor_single];
    for p in &phases {
        eprintln!(
            "{:<32} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            p.name,
            p.ops,
            p.rate(),
            p.pct(0.5),
            p.pct(0.99),
            p.pct(1.0)
        );
    }
    let json = serde_json::json!({
        "backend": "postgres", "nodes": nodes, "cases": cases, "timers": timers, "concurrency": c,
        "phases": phases.iter().map(|p| serde_json::json!({"name": p.name, "ops": p.ops, "per_second": p.rate(), "p50_ms": p.pct(0.5), "p99_ms": p.pct(0.99), "max_ms": p.pct(1.0)})).collect::<Vec<_>>(),
        "w1_ratio_to_batched_floor": phases[1].rate() / phases[5].rate(),
        "group_commit_w1_w2": group_commit.iter().map(|(n, ms)| serde_json::json!({"commands_per_commit": n, "commit_ms": ms})).collect::<Vec<_>>(),
        "w3": {"lateness_at_decision_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}, "fires_per_second": drain},
        "w4": {"peak_rss_mib": rss, "cpu_seconds_all_nodes": cpu},
        "w5": {"pending": w5_n, "restart_ready_ms": ready_ms, "killed_node_deadlines_fired_ms_after_kill_or_due": failover_ms, "lease_ms": PG_LEASE.as_millis(), "fired_once": true},
    });
    println!("{json}");
    Ok(())
}

/// Calls `call` every `every` for `secs`, each in a task of its own (an open loop: a slow server
/// does not slow the offered rate); answers (latency, ok) per call.
async fn paced<F, Fut>(every: Duration, secs: Duration, call: F) -> Vec<(Duration, bool)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let call = Arc::new(call);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + secs;
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while Instant::now() < until {
        tick.tick().await;
        let call = call.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let ok = tokio::time::timeout(Duration::from_secs(10), call(i)).await.unwrap_or(false);
            (started.elapsed(), ok)
        });
        i += 1;
    }
    let mut out = Vec::with_capacity(i);
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out
}

/// (ok ratio, p50 ms, p99 ms, calls) of `results`.
fn summary(results: &mut [(Duration, bool)]) -> (f64, f64, f64, usize) {
    results.sort_by_key(|r| r.0);
    let n = results.len().max(1);
    let ok = results.iter().filter(|r| r.1).count() as f64 / n as f64;
    let pct = |p: f64| results.get(((n as f64 - 1.0) * p).round() as usize).map_or(0.0, |r| r.0.as_secs_f64() * 1e3);
    (ok, pct(0.5), pct(0.99), results.len())
}

/// `--abuse`: see the module documentation.
async fn abuse(prefill_cases: usize, secs: Duration) -> Result<()> {
    use shenguan::proto::admin_service_client::AdminServiceClient;
    use shenguan::proto::intake_service_client::IntakeServiceClient;
    // (1) Forged tokens against a valid neighbour, over TLS.
    let dir = tempfile::tempdir()?;
    let (server, channels, tls, _) = secured_server(dir.path(), &dir.path().join("forged.db"), true, 2).await?;
    let valid = AdminServiceClient::new(channels[0].clone());
    let forged_channel = channel_to(&server.addr, tls.as_ref()).await?;
    let forged = Arc::new(AtomicUsize::new(0));
    let flood = {
        let forged = forged.clone();
        tokio::spawn(paced(Duration::from_millis(1), secs, move |i| {
            // A different (bad) token each time: nothing is cached, each is a signature check
            // unless the address is refused first.
            let auth =
                Auth(format!("Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImlkcCJ9.eyJzdWIiOiJ4In0.forged{i}").parse().ok());
            let mut client = AdminServiceClient::new(tonic::service::interceptor::InterceptedService::new(
                forged_channel.clone(),
                auth,
            ));
            let forged = forged.clone();
            async move {
                let r = client.calendar_status(shenguan::proto::CalendarStatusRequest {}).await;
                forged.fetch_add(1, Ordering::Relaxed);
                r.is_ok()
            }
        }))
    };
    let mut neighbour = paced(Duration::from_millis(5), secs, move |_| {
        let mut client = valid.clone();
        async move { client.calendar_status(shenguan::proto::CalendarStatusRequest {}).await.is_ok() }
    })
    .await;
    let mut flood = flood.await?;
    let forged_accepted = flood.iter().filter(|r| r.1).count();
    let (flood_ok, _, _, flood_calls) = summary(&mut flood);
    ensure!(forged_accepted == 0, "{forged_accepted} forged tokens were accepted");
    let (ok, p50, p99, calls) = summary(&mut neighbour);
    drop(server);

    // (2) A scrape flood against GetCase, plain, on a prefilled database.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("scrape.db");
    prefill(&db, prefill_cases, 0).await?;
    let (server, channels, _, _) = secured_server(dir.path(), &db, false, 4).await?;
    let mut intake = IntakeServiceClient::new(channels[0].clone());
    for i in 0..100 {
        let r = integration_tests::fixtures::accept(
            &format!("SCRAPE-{i}"),
            shenguan::proto::Route::Normal,
            shenguan::proto::Scenario::Unspecified,
        );
        intake.accept_case(r).await?;
    }
    let get_cases = |channels: Vec<Ch>| {
        paced(Duration::from_millis(5), secs, move |i| {
            let mut client = IntakeServiceClient::new(channels[i % channels.len()].clone());
            async move {
                let id = format!("320700/SCRAPE-{}", i % 100);
                client.get_case(shenguan::proto::GetCaseRequest { case_id: id }).await.is_ok()
            }
        })
    };
    let mut alone = get_cases(channels.clone()).await;
    let addr = server.addr.clone();
    let scrapes = tokio::spawn(paced(Duration::from_millis(1), secs, move |_| {
        let addr = addr.clone();
        async move { integration_tests::scrape(addr.as_str()).await.is_ok_and(|t| t.starts_with("HTTP/1.1 200")) }
    }));
    let mut flooded = get_cases(channels.clone()).await;
    let mut scrapes = scrapes.await?;
    let refreshes = integration_tests::scrape(server.addr.as_str())
        .await?
        .lines()
        .find(|l| l.starts_with("shenguan_metrics_gauge_refreshes_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(-1.0);
    let (alone_ok, alone_p50, alone_p99, _) = summary(&mut alone);
    let (flood_get_ok, flooded_p50, flooded_p99, _) = summary(&mut flooded);
    let (scrape_ok, scrape_p50, _, scrape_calls) = summary(&mut scrapes);
    // What one scrape used to cost: the count over the timers it ran every time.
    let mut conn = open_durable(&db).await?;
    let started = Instant::now();
    let timers: i64 = sqlx::query_scalar("SELECT count(*) FROM timers").fetch_one(&mut conn).await?;
    let count_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(server);
    println!(
        "{}",
        serde_json::json!({
            "secs": secs.as_secs(),
            "forged_calls": flood_calls, "forged_per_s": flood_calls as f64 / secs.as_secs_f64(),
            "forged_refused_ratio": 1.0 - flood_ok,
            "neighbour_calls": calls, "neighbour_ok_ratio": ok, "neighbour_p50_ms": p50, "neighbour_p99_ms": p99,
            "prefilled_cases": prefill_cases, "timers": timers, "count_timers_ms": count_ms,
            "getcase_alone_ok": alone_ok, "getcase_alone_p50_ms": alone_p50, "getcase_alone_p99_ms": alone_p99,
            "getcase_flooded_ok": flood_get_ok, "getcase_flooded_p50_ms": flooded_p50, "getcase_flooded_p99_ms": flooded_p99,
            "scrapes": scrape_calls, "scrape_ok": scrape_ok, "scrape_p50_ms": scrape_p50,
            "gauge_refreshes": refreshes,
        })
    );
    Ok(())
}

/// Issue 21's statistics benchmark: `n` cases (each licensed case with one supervision task)
/// over 2026 in 7 regions, 8 approving departments and 12 supervising offices, written straight
/// into `db` (kept: a second run reuses it); then `exe serve db` (this build, or another
/// version's `load` for the before figure) answers GetStatistics for the whole year, every
/// region, as the engine administrator (the widest scope, every group). Reports the start (a
/// first start of a build with counters counts the stored rows), each call's latency, and the
/// memory the calls added: peak RSS over them (reset through /proc/PID/clear_refs) minus RSS
/// before.
async fn stats(n: usize, db: &Path, exe: &Path) -> Result<()> {
    use shenguan::proto::admin_service_client::AdminServiceClient;
    use shenguan::proto::GetStatisticsRequest;
    let serve = |db: &Path| vec![std::ffi::OsString::from("serve"), db.as_os_str().to_owned()];
    if !db.exists() {
        // The schema of the build that reads it first: an older one refuses a newer schema.
        let mut server = spawn_exe(exe, &serve(db)).await?;
        ready(&server.addr).await?;
        server.child.kill().await?;
        stats_prefill(db, n, false).await?;
    }
    let started = Instant::now();
    let mut server = spawn_exe(exe, &serve(db)).await?;
    ready(&server.addr).await?;
    let start = started.elapsed();
    // The reply before counters listed every id: over 100 MB at a million cases, past any
    // default limit. Measured anyway, so the limit is lifted; the reply's size is reported.
    let mut admin = AdminServiceClient::new(connect(&server.addr).await?).max_decoding_message_size(usize::MAX);
    let request =
        GetStatisticsRequest { from: "2026-01-01".into(), to: "2026-12-31".into(), ..GetStatisticsRequest::default() };
    let status = |field: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", server.pid)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let rss_before = status("VmRSS:");
    std::fs::write(format!("/proc/{}/clear_refs", server.pid), "5").context("reset peak RSS")?;
    let mut latencies = Vec::new();
    let mut cases = 0;
    let mut tasks = 0;
    let mut bytes = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let reply = admin.get_statistics(request.clone()).await?.into_inner();
        latencies.push(t.elapsed());
        bytes = prost::Message::encoded_len(&reply);
        cases = reply.approval.iter().map(|a| a.cases.as_ref().map_or(0, |f| f.count)).sum::<u64>();
        tasks = reply.supervision.iter().map(|s| s.tasks.as_ref().map_or(0, |f| f.count)).sum::<u64>();
    }
    let peak = status("VmHWM:");
    ensure!(cases == n as u64, "the figures count {cases} cases of {n}");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let first = latencies[0];
    let mut warm = latencies[1..].to_vec();
    warm.sort_unstable();
    println!(
        "statistics over {n} cases and {tasks} tasks ({}): start {:.1} s; GetStatistics first {:.0} ms, \
         median of 6 more {:.0} ms (max {:.0}); reply {bytes} bytes; memory added {:.1} MiB (peak {:.0} MiB, \
         before {:.0} MiB)",
        exe.display(),
        start.as_secs_f64(),
        ms(first),
        ms(warm[warm.len() / 2]),
        ms(warm[warm.len() - 1]),
        peak.saturating_sub(rss_before) as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0,
    );
    server.child.kill().await?;
    Ok(())
}

/// The rows of [`stats`]: cases and their tasks as the engine stores them, with the variables
/// the figures read, spread over 2026 by a fixed pseudo-random sequence (the same every run).
async fn stats_prefill(db: &Path, n: usize, open: bool) -> Result<()> {
    const REGIONS: [&str; 7] = ["320700", "320703", "320706", "320707", "320722", "320723", "320724"];
    const APPROVERS: [&str; 8] = [
        "市行政审批局",
        "市市场监督管理局",
        "市卫生健康委员会",
        "市交通运输局",
        "市生态环境局",
        "市住房和城乡建设局",
        "市文化广电和旅游局",
        "市应急管理局",
    ];
    const OFFICES: [(&str, &str); 12] = [
        ("市市场监督管理局", "食品生产监管处"),
        ("市市场监督管理局", "食品经营监管处"),
        ("市市场监督管理局", "特种设备安全监察处"),
        ("市卫生健康委员会", "医政医管处"),
        ("市卫生健康委员会", "公共卫生监督处"),
        ("市交通运输局", "运输管理处"),
        ("市生态环境局", "环境执法支队"),
        ("市住房和城乡建设局", "建筑市场监管处"),
        ("市文化广电和旅游局", "文化市场执法支队"),
        ("市应急管理局", "危险化学品监管处"),
        ("市应急管理局", "工贸安全监管处"),
        ("市农业农村局", "农产品质量安全监管处"),
    ];
    let started = Instant::now();
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .connect()
        .await?;
    let year_start = chrono::DateTime::parse_from_rfc3339("2026-01-01T08:00:00+08:00")?.timestamp_millis();
    let span: i64 = 338 * 86_400_000; // to 5 December
    let pick = |i: usize, salt: u64| shenguan::store::fnv1a(format!("{salt}:{i}").as_bytes());
    let mut done = 0;
    while done < n {
        let mut rows: Vec<(String, &str, &str, String, i64)> = Vec::new();
        for i in done..(done + 1_000).min(n) {
            let region = REGIONS[(pick(i, 1) % 7) as usize];
            let at = year_start + i64::try_from(i)? * span / i64::try_from(n)?;
            let case_no = format!("SB-{i:08}");
            let id = format!("{region}/{case_no}");
            let commitment = pick(i, 2) % 10 < 4;
            let revoked = pick(i, 3) % 20 == 0;
            let mut vars = serde_json::json!({
                "region": region,
                "case_no": case_no,
                "approval_department": APPROVERS[(pick(i, 4) % 8) as usize],
                "applicant_name": "某某食品有限公司",
                "applicant_code": "91320700MA1XXXXX0X",
                "route": if commitment { "commitment" } else { "normal" },
            });
            if commitment && pick(i, 5) % 10 < 7 {
                vars["commitment_outcome"] = "fulfilled".into();
            } else if commitment {
                vars["deadline_breached"] = true.into();
            }
            let mut state = if revoked { "revoked" } else { "licensed" };
            // For the console: 3 % of the cases still open on a commitment (pending, reminded
            // the day before, overdue), their deadlines in December.
            if open && !revoked && commitment {
                match pick(i, 10) % 34 {
                    0 => state = "commitment_pending",
                    1 => state = "reminded",
                    2 => {
                        state = "overdue";
                        vars["deadline_breached"] = true.into();
                    }
                    _ => {}
                }
                if state != "licensed" {
                    vars["commitment_deadline"] = format!("2026-12-{:02}", 1 + pick(i, 11) % 28).into();
                    vars.as_object_mut().map(|v| v.remove("commitment_outcome"));
                }
            }
            rows.push((id.clone(), "approval_case", state, vars.to_string(), at));
            if revoked {
                continue;
            }
            let (department, office) = OFFICES[(pick(i, 6) % 12) as usize];
            let mut t = serde_json::json!({
                "region": region, "case_id": id, "case_no": case_no, "task_no": 1,
                "department": department, "office": office,
            });
            match pick(i, 7) % 10 {
                0 => t["ack_breached"] = true.into(),
                1 => {
                    t["viewed_at"] = (at + 5 * 86_400_000).into();
                    t["ack_late"] = true.into();
                }
                _ => t["viewed_at"] = (at + 86_400_000).into(),
            }
            if t.get("viewed_at").is_some() {
                match pick(i, 8) % 10 {
                    0 => t["result_breached"] = true.into(),
                    1 | 2 => {
                        t["result"] = "non_compliant".into();
                        t["rectified"] = (pick(i, 9) % 4 != 0).into();
                    }
                    3 => t["result"] = "revocation".into(),
                    4 => {
                        t["result"] = "compliant".into();
                        t["result_late"] = true.into();
                    }
                    _ => t["result"] = "compliant".into(),
                }
            }
            // For the console: 2 % of the tasks not yet viewed (half of them late), 2 % viewed
            // and waiting for a result.
            let task_state = match pick(i, 12) % 50 {
                0 if open => {
                    t.as_object_mut().map(|v| {
                        v.remove("viewed_at");
                        v.remove("result");
                        v.remove("result_late");
                        v.remove("ack_late")
                    });
                    if pick(i, 13) % 2 == 0 {
                        t["ack_breached"] = true.into();
                    }
                    "pushed"
                }
                1 if open => {
                    t.as_object_mut().map(|v| {
                        v.remove("result");
                        v.remove("result_late");
                        v.remove("rectified")
                    });
                    "viewed"
                }
                _ => "closed",
            };
            rows.push((format!("{id}/T1"), "supervision_task", task_state, t.to_string(), at));
        }
        let mut tx = conn.begin().await?;
        for chunk in rows.chunks(2_000) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO instances (id, workflow, version, state, vars, timers, seq, shard, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut b, (id, workflow, state, vars, at)| {
                b.push_bind(id)
                    .push_bind(*workflow)
                    .push_bind(1)
                    .push_bind(*state)
                    .push_bind(vars)
                    .push_bind("{}")
                    .push_bind(1)
                    .push_bind(0)
                    .push_bind(*at)
                    .push_bind(*at);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        done = (done + 1_000).min(n);
    }
    // Written behind the engine's back: its next start counts them into the figures' counters
    // (as it does for a database older than the counters), else GetStatistics would see none.
    sqlx::query("DELETE FROM figure_counts").execute(&mut conn).await?;
    sqlx::query("DELETE FROM figure_counts_built").execute(&mut conn).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await?;
    println!(
        "wrote {n} cases and their tasks in {:.0} s; database {:.2} GiB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(db).map(|m| m.len()).unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    Ok(())
}
