//! Harness for tests that cross a real process or socket boundary: a child process running
//! the engine on a SQLite file (killed with SIGKILL and restarted), and read-only access to
//! that file from the test process.
//!
//! # Layout
//! - `src/bin/crash_child.rs`: the engine in a child process, driven line by line on stdin.
//! - [`Child`]: spawns it and speaks its protocol.
//! - [`Db`]: reads a database file the way an operator would, from another process.
//! - [`TestServer`]: the real gRPC server on 127.0.0.1:0 with a virtual clock, and typed clients.
//! - [`pg`]: a real PostgreSQL (a throw-away cluster, or `SHENGUAN_TEST_PG_URL`) and a fresh
//!   database per test.
//! - `tests/`: the suites (`backends.rs` runs the engine's behaviour on both backends).

pub mod pg;

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Row, SqliteConnection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

/// A running `crash_child`.
pub struct Child {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    /// Where answers come from, one per line.
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Child {
    /// Starts the child on `db` with its virtual clock at `clock` (UTC ms) and waits for `ready`.
    pub async fn start(exe: &Path, db: &Path, clock: i64) -> Result<Child> {
        Self::start_with(exe, db, clock, &[]).await
    }

    /// Like [`start`](Self::start), with settings for the child's engine (`replan_page=N`).
    pub async fn start_with(exe: &Path, db: &Path, clock: i64, settings: &[&str]) -> Result<Child> {
        let mut child = Command::new(exe)
            .arg(db)
            .arg(clock.to_string())
            .args(settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawn crash_child")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut c = Child { child, stdin: Some(stdin), stdout };
        let line = c.next_line().await?;
        if line != "ready" {
            bail!("crash_child said {line:?} instead of ready");
        }
        Ok(c)
    }

    /// The next line the child printed.
    pub async fn next_line(&mut self) -> Result<String> {
        self.stdout.next_line().await?.context("crash_child closed its output")
    }

    /// Sends one command line.
    pub async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin was taken")?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Takes the child's stdin, to stream commands from another task.
    pub fn take_stdin(&mut self) -> Result<ChildStdin> {
        self.stdin.take().context("stdin was taken")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Read access to a database file from the test process.
pub struct Db {
    conn: SqliteConnection,
}

impl Db {
    /// Opens `path` read-only.
    pub async fn open(path: &Path) -> Result<Db> {
        let conn = SqliteConnectOptions::new().filename(path).read_only(true).connect().await?;
        Ok(Db { conn })
    }

    /// `(instance, state)` for every instance.
    pub async fn states(&mut self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, state FROM instances ORDER BY id").fetch_all(&mut self.conn).await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("state")?))).collect()
    }

    /// Every request id recorded in history.
    pub async fn request_ids(&mut self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT request_id FROM history WHERE request_id IS NOT NULL")
            .fetch_all(&mut self.conn)
            .await?)
    }

    /// `(instance, timer name, due)` of every timer fire recorded in history.
    pub async fn fires(&mut self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT instance_id, json_extract(command, '$.name') AS name, json_extract(command, '$.due') AS due \
             FROM history WHERE json_extract(command, '$.kind') = 'timer'",
        )
        .fetch_all(&mut self.conn)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("instance_id")?, r.try_get("name")?, r.try_get("due")?))).collect()
    }

    /// `(instance, name, due)` of every stored timer.
    pub async fn timers(&mut self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query("SELECT instance_id, name, due_at FROM timers").fetch_all(&mut self.conn).await?;
        rows.iter().map(|r| Ok((r.try_get("instance_id")?, r.try_get("name")?, r.try_get("due_at")?))).collect()
    }

    /// `(instance, seq)` of every re-plan recorded in history.
    pub async fn replan_entries(&mut self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT instance_id, seq FROM history WHERE json_extract(command, '$.kind') = 'replan' ORDER BY instance_id, seq",
        )
        .fetch_all(&mut self.conn)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("instance_id")?, r.try_get("seq")?))).collect()
    }

    /// `done` of every re-plan job, oldest first.
    pub async fn replans_done(&mut self) -> Result<Vec<bool>> {
        Ok(sqlx::query_scalar("SELECT done FROM replans ORDER BY generation").fetch_all(&mut self.conn).await?)
    }

    /// Every outbox message: key → (instance, seq).
    pub async fn outbox(&mut self) -> Result<std::collections::HashMap<String, (String, i64)>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT key, instance_id, seq FROM outbox").fetch_all(&mut self.conn).await?;
        Ok(rows.into_iter().map(|(k, i, s)| (k, (i, s))).collect())
    }

    /// Rows in the outbox.
    pub async fn outbox_len(&mut self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&mut self.conn).await?)
    }
}

/// The real server (`shenguan::server::run`) on a loopback port chosen by the OS, on a fresh
/// SQLite file, with a virtual clock; stopped when dropped or by [`TestServer::stop`].
pub struct TestServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// A connected channel.
    pub channel: tonic::transport::Channel,
    /// The database file.
    pub db: std::path::PathBuf,
    /// The dev key tokens are signed with, when the server verifies tokens.
    pub key: Option<shenguan::auth::verify::DevKey>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), shenguan::server::Error>>>,
    _dir: Option<tempfile::TempDir>,
}

/// Adds a bearer token to every call.
#[derive(Clone)]
pub struct Token(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry a token.
pub type Authed = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Token>;

/// Who a test token names.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// `sub`.
    pub subject: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Region code.
    pub region: String,
    /// Department.
    pub department: String,
    /// Office.
    pub office: String,
    /// The on-behalf right.
    pub on_behalf: bool,
}

impl Who {
    /// `subject` with one `role` in `region`, `department`, `office`.
    pub fn new(subject: &str, role: &str, region: &str, department: &str, office: &str) -> Who {
        Who {
            subject: subject.into(),
            roles: vec![role.into()],
            region: region.into(),
            department: department.into(),
            office: office.into(),
            on_behalf: false,
        }
    }

    /// Claims valid for an hour from now (real time: tokens live in the real world).
    pub fn claims(&self) -> shenguan::auth::verify::Claims {
        shenguan::auth::verify::Claims {
            region: self.region.clone(),
            department: self.department.clone(),
            office: self.office.clone(),
            on_behalf: self.on_behalf,
            ..shenguan::auth::verify::Claims::valid_for(
                self.subject.clone(),
                self.roles.clone(),
                std::time::Duration::from_secs(3600),
            )
        }
    }
}

/// Unix seconds now.
pub fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `Bearer <token>` as metadata.
pub fn bearer(token: &str) -> Token {
    Token(format!("Bearer {token}").parse().expect("a JWT is ASCII"))
}

impl TestServer {
    /// Starts a server whose virtual clock reads `start` (RFC 3339).
    pub async fn start(start: &str) -> Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("server.db");
        let mut server = Self::start_on(start, &db, |_| {}).await?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a server on the database file `db` (kept when the server stops, so that a test
    /// can start another on it), with `configure` applied to the engine's defaults.
    pub async fn start_on(
        start: &str,
        db: &Path,
        configure: impl FnOnce(&mut shenguan::engine::Config),
    ) -> Result<TestServer> {
        Self::start_with(start, db, configure, shenguan::server::Security::open(), None).await
    }

    /// A server that verifies tokens signed with a dev key (kept beside `db`), with `secure`
    /// applied to the default limits; [`TestServer::as_who`] makes clients.
    pub async fn start_secured(
        start: &str,
        db: &Path,
        configure: impl FnOnce(&mut shenguan::engine::Config),
        secure: impl FnOnce(&mut shenguan::server::Security),
    ) -> Result<TestServer> {
        use shenguan::auth::verify;
        let key = verify::DevKey::load_or_create(&db.with_extension("dev-key"))?;
        let verifier = verify::Verifier::new(verify::Config::dev(key.clone()))?;
        let mut security =
            shenguan::server::Security::with(shenguan::auth::layer::Mode::Verify(std::sync::Arc::new(verifier)));
        secure(&mut security);
        Self::start_with(start, db, configure, security, Some(key)).await
    }

    /// A channel whose calls carry a dev token naming `who`.
    pub fn as_who(&self, who: &Who) -> Authed {
        let key = self.key.as_ref().expect("a server started with start_secured");
        tonic::service::interceptor::InterceptedService::new(self.channel.clone(), bearer(&key.mint(&who.claims())))
    }

    /// The most general start: engine settings, security, and the dev key if any.
    pub async fn start_with(
        start: &str,
        db: &Path,
        configure: impl FnOnce(&mut shenguan::engine::Config),
        security: shenguan::server::Security,
        key: Option<shenguan::auth::verify::DevKey>,
    ) -> Result<TestServer> {
        Self::start_full(start, db, configure, security, key, Default::default()).await
    }

    /// Like [`start_with`](Self::start_with), pushing messages as `outbound` says.
    pub async fn start_full(
        start: &str,
        db: &Path,
        configure: impl FnOnce(&mut shenguan::engine::Config),
        security: shenguan::server::Security,
        key: Option<shenguan::auth::verify::DevKey>,
        outbound: shenguan::outbound::Config,
    ) -> Result<TestServer> {
        let start = chrono::DateTime::parse_from_rfc3339(start)?.timestamp_millis();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut config = shenguan::engine::Config::new(db);
        if let Some(url) = pg::backend_for(db).await {
            config.database = shenguan::store::Database::Postgres(url);
        }
        configure(&mut config);
        let mut options = shenguan::server::Options::new(
            config,
            std::sync::Arc::new(shenguan::definition::Registry::embedded()?),
            shenguan::calendar::Calendars::embedded()?,
            Some(shenguan::clock::VirtualClock::new(start)),
        );
        options.security = security;
        options.outbound = outbound;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(shenguan::server::run(options, listener, async {
            let _ = stopped.await;
        }));
        // The listener is already bound, so this connects without racing the server task.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        Ok(TestServer { addr, channel, db: db.to_owned(), key, stop: Some(stop), task: Some(task), _dir: None })
    }

    /// A client of the intake service.
    pub fn intake(&self) -> shenguan::proto::intake_service_client::IntakeServiceClient<tonic::transport::Channel> {
        shenguan::proto::intake_service_client::IntakeServiceClient::new(self.channel.clone())
    }

    /// A client of the supervision service.
    pub fn supervision(
        &self,
    ) -> shenguan::proto::supervision_service_client::SupervisionServiceClient<tonic::transport::Channel> {
        shenguan::proto::supervision_service_client::SupervisionServiceClient::new(self.channel.clone())
    }

    /// A client of the events service (the outbox as a stream).
    pub fn events(&self) -> shenguan::proto::events_service_client::EventsServiceClient<tonic::transport::Channel> {
        shenguan::proto::events_service_client::EventsServiceClient::new(self.channel.clone())
    }

    /// A client of the admin service.
    pub fn admin(&self) -> shenguan::proto::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
        shenguan::proto::admin_service_client::AdminServiceClient::new(self.channel.clone())
    }

    /// The server's `GET /metrics` answer (status line, headers and text).
    pub async fn metrics(&self) -> Result<String> {
        scrape(self.addr).await
    }

    /// Moves the virtual clock to `to` (RFC 3339); returns once everything due has fired.
    pub async fn advance_to(&self, to: &str) -> Result<()> {
        self.admin().advance_clock(shenguan::proto::AdvanceClockRequest { by_millis: 0, to: to.to_owned() }).await?;
        Ok(())
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// A small tmpfs file system mounted on a fresh directory: a real disk that fills up.
/// Unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB. Needs the right to mount (root, as in CI); the error says
    /// why when it cannot.
    pub fn mount(kib: u64) -> Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .context("run mount(8)")?;
        if !out.status.success() {
            bail!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Tmpfs { dir })
    }

    /// [`mount`](Self::mount) for a test that needs the right to mount: `None` (the reason
    /// printed, with `also`) where it cannot mount; under CI, which runs as root and must run
    /// every such test, a failure to mount panics.
    pub fn mount_or_skip(kib: u64, also: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(kib) {
            Ok(fs) => Some(fs),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {e:#}{also}");
                None
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

pub mod receiver;

/// A `shenguan serve` process started from a prepared command (the CLI's tests name their own
/// binary), with the address it logged; its log is drained so that it never blocks on a full
/// pipe. Killed when dropped.
pub struct ServeProcess {
    /// The process.
    pub child: std::process::Child,
    /// `http://ADDR`, from its "serving gRPC" line.
    pub url: String,
}

impl ServeProcess {
    /// Spawns `command` (which must be `serve` with `--listen …:0` or a port) and waits until it
    /// serves; panics with what it logged if it exits first.
    pub fn spawn(mut command: std::process::Command) -> ServeProcess {
        use std::io::BufRead;
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else { panic!("serve exited before serving: {seen:#?}") };
            if let Some(addr) = line.split("addr=").nth(1).filter(|_| line.contains("serving gRPC")) {
                break format!("http://{}", addr.trim());
            }
            seen.push(line);
        };
        std::thread::spawn(move || for _ in lines {});
        ServeProcess { child, url }
    }

    /// The dev-mode admin token a server without keys wrote beside its database `db`.
    pub fn dev_token(db: &Path) -> String {
        let mut name = db.file_name().expect("a file name").to_os_string();
        name.push(".dev-token");
        std::fs::read_to_string(db.with_file_name(name)).expect("dev token").trim().to_owned()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA that signs server and client certificates: the engine's development CA.
pub struct Pki {
    ca: shenguan::server::pki::DevCa,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Pki> {
        Ok(Pki { ca: shenguan::server::pki::DevCa::new(name)? })
    }

    /// The CA certificate (PEM): what a client or an mTLS server trusts.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// A certificate for `names`, for a client or a server: (certificate PEM, key PEM, DER).
    pub fn leaf(&self, names: &[&str], client: bool) -> Result<(String, String, Vec<u8>)> {
        let issued = self.ca.issue(names, client)?;
        Ok((issued.cert_pem, issued.key_pem, issued.der))
    }
}

/// `GET /metrics` over plain HTTP/1.1 on the gRPC port, the way Prometheus scrapes it.
pub async fn scrape(addr: impl tokio::net::ToSocketAddrs) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: shenguan\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    conn.read_to_string(&mut response).await?;
    Ok(response)
}

/// What a command printed, stdout then stderr, for assertions and their messages.
pub fn output_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// A path as a command-line argument (the tests' temporary paths are UTF-8).
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Callers that accept cases until stopped — the load something else runs under (a backup, an
/// archive) — each case id recorded once acknowledged. A refused call fails the test.
pub struct AcceptLoad {
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    count: tokio::sync::watch::Receiver<usize>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl AcceptLoad {
    /// `workers` callers on `client`, cases `PREFIX-WORKER-N` (deferral cases due `deadline`).
    pub fn start(
        client: shenguan::proto::intake_service_client::IntakeServiceClient<Authed>,
        workers: usize,
        prefix: &str,
        deadline: &str,
    ) -> AcceptLoad {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, count) = tokio::sync::watch::channel(0);
        let counted = std::sync::Arc::new(counted);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let (mut client, acked, counted, stopped) =
                (client.clone(), acked.clone(), counted.clone(), stopped.clone());
            let (prefix, deadline) = (prefix.to_owned(), deadline.to_owned());
            tasks.spawn(async move {
                let mut n = 0;
                while !*stopped.borrow() {
                    let request = fixtures::deferral(&format!("{prefix}-{worker:02}-{n:05}"), &deadline);
                    n += 1;
                    let answer = client.accept_case(request).await.expect("accepted under load");
                    let id = answer.into_inner().case.expect("case").case_id;
                    let len = {
                        let mut acked = acked.lock().expect("acked");
                        acked.push(id);
                        acked.len()
                    };
                    counted.send_replace(len);
                }
            });
        }
        AcceptLoad { acked, count, stop, tasks }
    }

    /// Waits until `n` cases have been acknowledged in all (a minute at most).
    pub async fn wait_for(&self, n: usize) {
        let mut count = self.count.clone();
        tokio::time::timeout(std::time::Duration::from_secs(60), count.wait_for(|c| *c >= n))
            .await
            .expect("the server keeps accepting")
            .expect("the callers are running");
    }

    /// The ids acknowledged so far, in the order acknowledged.
    pub fn acked(&self) -> Vec<String> {
        self.acked.lock().expect("acked").clone()
    }

    /// Stops the callers once their calls in flight are answered; the ids acknowledged.
    pub async fn stop(mut self) -> Vec<String> {
        let _ = self.stop.send(true);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a caller");
        }
        self.acked()
    }
}

/// Requests the suites share.
pub mod fixtures {
    use shenguan::proto::{applicant, AcceptCaseRequest, Applicant, Route, Scenario, Supervisor};

    /// A valid Unified Social Credit Code.
    pub const USCC: &str = "91110000600037341L";

    /// A case on `route`/`scenario` in region 320700 with one supervisor.
    pub fn accept(case_no: &str, route: Route, scenario: Scenario) -> AcceptCaseRequest {
        AcceptCaseRequest {
            case_no: case_no.into(),
            region_code: "320700".into(),
            approval_department: "市行政审批局".into(),
            approval_item_code: "ITEM-001".into(),
            handling_item_code: "HANDLE-001".into(),
            applicant: Some(Applicant {
                name: "连云港某某食品有限公司".into(),
                id: Some(applicant::Id::CreditCode(USCC.into())),
                mobile: "13800138000".into(),
            }),
            route: route as i32,
            scenario: scenario as i32,
            credit_grade: "A".into(),
            commitment_deadline: String::new(),
            commitment_period_working_days: 0,
            deferred_materials: vec![],
            supervisors: vec![Supervisor {
                department: "市市场监督管理局".into(),
                office: "食品生产监管处".into(),
                office_admin_mobile: "13900139000".into(),
            }],
        }
    }

    /// A Unified Social Credit Code from its first 17 characters, with the right check character.
    pub fn uscc(first: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
        const WEIGHTS: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
        let sum: usize = first
            .bytes()
            .zip(WEIGHTS)
            .map(|(b, w)| ALPHABET.iter().position(|a| *a == b).expect("a USCC character") * w)
            .sum();
        format!("{first}{}", ALPHABET[(31 - sum % 31) % 31] as char)
    }

    /// The example catalog of ops/examples/catalog as one import request.
    pub fn example_catalog() -> shenguan::proto::ImportCatalogsRequest {
        shenguan::proto::ImportCatalogsRequest {
            files: shenguan::catalog::example_files()
                .into_iter()
                .map(|f| shenguan::proto::CatalogFile {
                    name: f.name,
                    kind: String::new(),
                    content: f.content.into_bytes(),
                })
                .collect(),
            comment: "the example catalog".into(),
            dry_run: false,
        }
    }

    /// A case on a catalogued item: no department or supervisors named, the catalogs decide.
    pub fn catalogued(case_no: &str, handling_item: &str, code: &str, grade: &str) -> AcceptCaseRequest {
        let approval_item = handling_item.rsplit_once('-').map_or(handling_item, |(a, _)| a).to_owned();
        AcceptCaseRequest {
            approval_department: String::new(),
            approval_item_code: approval_item,
            handling_item_code: handling_item.into(),
            applicant: Some(Applicant {
                name: format!("连云港市企业{code}"),
                id: Some(applicant::Id::CreditCode(code.into())),
                mobile: "13800138000".into(),
            }),
            credit_grade: grade.into(),
            supervisors: vec![],
            ..accept(case_no, Route::Normal, Scenario::Unspecified)
        }
    }

    /// A citizen ID from its first 17 characters, with the right check character.
    pub fn with_check(first: &str) -> String {
        const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        let sum: u32 = first.bytes().zip(WEIGHTS).map(|(b, w)| u32::from(b - b'0') * w).sum();
        format!("{first}{}", b"10X98765432"[(sum % 11) as usize] as char)
    }

    /// A material-deferral case with deadline `deadline` and two deferred materials.
    pub fn deferral(case_no: &str, deadline: &str) -> AcceptCaseRequest {
        let mut r = accept(case_no, Route::Commitment, Scenario::MaterialDeferral);
        r.commitment_deadline = deadline.into();
        r.deferred_materials = vec!["食品安全管理制度".into(), "设备布局图".into()];
        r
    }
}
