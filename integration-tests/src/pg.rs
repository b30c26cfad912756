//! A real PostgreSQL for the tests: a throw-away cluster (initdb + postgres in a temporary
//! directory, on a free loopback port, run as `nobody` when the tests run as root, since
//! PostgreSQL refuses root), or the server `SHENGUAN_TEST_PG_URL` names (CI starts one).
//!
//! Each test gets a database of its own ([`database`]), so the tests run in parallel.
//!
//! Without PostgreSQL binaries and without `SHENGUAN_TEST_PG_URL` the PostgreSQL tests say why
//! and return — except under CI (`CI` set), where a skip is a failure: [`database`] and
//! [`Server::start`] panic there instead of answering `None`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use sqlx::Connection;

/// Where the PostgreSQL binaries are (Debian's layout first), if installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    if let Some(d) = dirs.pop() {
        return Some(d);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Says why a PostgreSQL test does not run, or fails it under CI.
pub fn skip(why: &str) {
    if in_ci() {
        panic!("PostgreSQL test cannot run under CI: {why}");
    }
    eprintln!("SKIPPED (no PostgreSQL): {why}. Install Debian's `postgresql` package or set SHENGUAN_TEST_PG_URL.");
}

fn root() -> bool {
    // SAFETY-free: `id -u` answers without libc bindings.
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL cluster this process started and owns; stopped (immediately) when dropped.
pub struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    user: Option<&'static str>,
}

impl Server {
    /// Initialises and starts a cluster; `None` (after saying why) without binaries.
    pub fn start() -> Option<Server> {
        let Some(bin) = bin_dir() else {
            skip("no PostgreSQL binaries (initdb) found");
            return None;
        };
        match Self::start_in(bin) {
            Ok(s) => Some(s),
            Err(e) => {
                if in_ci() {
                    panic!("cannot start PostgreSQL: {e:#}");
                }
                skip(&format!("cannot start PostgreSQL: {e:#}"));
                None
            }
        }
    }

    fn start_in(bin: PathBuf) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("shenguan-pg-").tempdir().context("tempdir")?;
        let user = if root() { Some("nobody") } else { None };
        if let Some(user) = user {
            let status = Command::new("chown").arg(user).arg(dir.path()).status().context("chown")?;
            if !status.success() {
                bail!("cannot give {} to {user}", dir.path().display());
            }
        }
        let port = free_port()?;
        let server = Server { dir, bin, port, user };
        server.run(&format!(
            "'{}' -D '{}' -U postgres --auth=trust -E UTF8 --no-sync >'{}' 2>&1",
            server.bin.join("initdb").display(),
            server.data().display(),
            server.dir.path().join("initdb.log").display()
        ))?;
        server.pg_ctl_start()?;
        server.watch()?;
        Ok(server)
    }

    /// A watchdog that stops the cluster and removes its directory once this process is gone:
    /// the cluster shared by a test binary lives in a static, which is never dropped, and a
    /// test process that panics or is killed drops nothing either.
    fn watch(&self) -> Result<()> {
        let stop = format!(
            "'{}' -D '{}' -m immediate -w stop >/dev/null 2>&1",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let stop = match self.user {
            Some(user) => format!("su -s /bin/sh {user} -c \"{stop}\""),
            None => stop,
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start the PostgreSQL watchdog")?;
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a shell command as the cluster's owner.
    fn run(&self, command: &str) -> Result<()> {
        let status = match self.user {
            Some(user) => Command::new("su").args(["-s", "/bin/sh", user, "-c", command]).status(),
            None => Command::new("sh").args(["-c", command]).status(),
        }
        .context("run a PostgreSQL command")?;
        if !status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default();
            let init = std::fs::read_to_string(self.dir.path().join("initdb.log")).unwrap_or_default();
            bail!("`{command}` failed ({status}):\n{init}\n{log}");
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        // fsync and synchronous_commit stay on: the tests check durability, not a fast fake.
        self.run(&format!(
            "'{}' -D '{}' -l '{}' -w -t 60 -o \"-c listen_addresses=127.0.0.1 -p {} -k '{}' -c max_connections=300\" start >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data().display(),
            self.dir.path().join("pg.log").display(),
            self.port,
            self.dir.path().display(),
        ))
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server at once (`-m immediate`: like a crash; recovery replays the WAL).
    pub fn stop(&self) -> Result<()> {
        self.run(&format!(
            "'{}' -D '{}' -m immediate -w stop >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        ))
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// The server's directory (its log is `pg.log` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

static SHARED: std::sync::OnceLock<Option<Server>> = std::sync::OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The URL of the server tests share: `SHENGUAN_TEST_PG_URL`, or one cluster started for this
/// test binary. `None` (after saying why) when there is neither.
fn server_url() -> Option<String> {
    if let Ok(url) = std::env::var("SHENGUAN_TEST_PG_URL") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    SHARED.get_or_init(Server::start).as_ref().map(|s| s.url("postgres"))
}

/// A fresh, empty database for one test: its URL. `None` (after saying why) when there is no
/// PostgreSQL to run on, outside CI.
pub async fn database() -> Option<String> {
    let url = server_url()?;
    Some(create_database(&url).await.unwrap_or_else(|e| panic!("cannot create a test database on {url}: {e:#}")))
}

static BACKENDS: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, String>>> = std::sync::Mutex::new(None);

/// With `SHENGUAN_TEST_BACKEND=postgres`, the PostgreSQL database that stands in for the SQLite
/// file `db` in [`crate::TestServer`] (the same one each time the same path is started, so a
/// test that restarts a server finds its state): the gRPC suites run on PostgreSQL unchanged.
/// `None` otherwise.
pub async fn backend_for(db: &Path) -> Option<String> {
    if std::env::var("SHENGUAN_TEST_BACKEND").ok().as_deref() != Some("postgres") {
        return None;
    }
    if let Some(url) = BACKENDS.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(db).cloned())) {
        return Some(url);
    }
    let url = database().await?;
    if let Ok(mut m) = BACKENDS.lock() {
        m.get_or_insert_with(Default::default).insert(db.to_owned(), url.clone());
    }
    Some(url)
}

/// Creates a database with a fresh name on the server of `admin_url`; answers its URL.
pub async fn create_database(admin_url: &str) -> Result<String> {
    let name = format!("sg_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut conn = sqlx::PgConnection::connect(admin_url).await.context("connect")?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.context("CREATE DATABASE")?;
    conn.close().await.ok();
    let (base, _) = admin_url.rsplit_once('/').context("a URL with a database name")?;
    Ok(format!("{base}/{name}"))
}
