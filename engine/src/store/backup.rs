//! Backup and restore of a SQLite database, and the lock that tells a restore a server has the
//! file open.
//!
//! - [`backup`] copies a database while a server writes to it: `VACUUM INTO` reads one
//!   snapshot (WAL mode lets the writer go on beside it), so everything committed before it
//!   began is in the copy and nothing half-committed is. The copy is written beside the
//!   target as `…partial`, synced, and renamed: a backup interrupted half-way leaves no file
//!   that looks whole.
//! - [`restore`] puts a backup in place of a database: it checks the backup (SQLite's
//!   `quick_check`, a shenguan schema no newer than this build), refuses while a server has
//!   the database open ([`ServerLock`]), and moves the database it replaces (with its WAL)
//!   aside instead of deleting it. Replaying every case (`admin verify`) is the caller's
//!   next step: it needs the definitions and calendars.
//! - [`ServerLock`]: a server holds an exclusive `flock` on its database file for as long as
//!   it runs (SQLite's own locks are `fcntl` locks, which `flock` does not touch on Linux). A
//!   second server on the same file is refused at start, and so is a restore.
//!
//! PostgreSQL is backed up with its own tools (`pg_dump`, or a base backup with WAL
//! archiving): ops/runbook.md gives the procedure; [`backup`] and [`restore`] take SQLite files.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

/// What can go wrong; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The output exists: a backup never overwrites a file.
    #[error("{0} exists: a backup never overwrites a file; name a new one")]
    Exists(PathBuf),
    /// The file is not a database this build can use.
    #[error("{path} is not a usable shenguan database: {why}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why, in words.
        why: String,
    },
    /// A server has the database open.
    #[error(
        "a server has {0} open: stop it first (a restore replaces the file under it, and a second server \
         beside it would decide on stale state)"
    )]
    InUse(PathBuf),
    /// A PostgreSQL URL was given.
    #[error(
        "backup and restore take SQLite files; back PostgreSQL up with its own tools (pg_dump, or a base \
         backup with WAL archiving), as ops/runbook.md describes"
    )]
    Postgres,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("{path}: {message}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The database's words.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

fn db(path: &Path) -> impl FnOnce(sqlx::Error) -> BackupError + '_ {
    move |e| BackupError::Sqlite { path: path.to_owned(), message: e.to_string() }
}

/// Refuses a PostgreSQL URL where a SQLite file is wanted.
pub fn sqlite_path(database: &str) -> Result<PathBuf, BackupError> {
    match super::Database::parse(database) {
        super::Database::Sqlite(path) => Ok(path),
        super::Database::Postgres(_) => Err(BackupError::Postgres),
    }
}

/// The exclusive lock a server holds on its SQLite file while it runs; released when dropped
/// (and by the kernel when the process dies, however it dies).
#[derive(Debug)]
pub struct ServerLock {
    _file: File,
}

impl ServerLock {
    /// Takes the lock on `path`, creating an empty file (mode 0600, as the store creates its
    /// database) if there is none: SQLite takes an empty file as a new database.
    /// [`BackupError::InUse`] if a server holds it.
    pub fn take(path: &Path) -> Result<ServerLock, BackupError> {
        super::sqlite::create_private(path).map_err(io(path))?;
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
        match file.try_lock() {
            Ok(()) => Ok(ServerLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(BackupError::InUse(path.to_owned())),
            Err(TryLockError::Error(e)) => Err(BackupError::Io { path: path.to_owned(), source: e }),
        }
    }
}

/// How far a backup is: bytes written of about `expected` (the pages in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Written so far.
    pub written: u64,
    /// The database's pages in use, in bytes: the copy's size, about.
    pub expected: u64,
}

/// What a backup or a restore found in the database it copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Cases (instances) in it.
    pub instances: u64,
    /// Its schema version (the newest migration applied).
    pub schema: i64,
    /// This build's newest migration: a restored database older than it is migrated when a
    /// server next starts on it.
    pub newest: i64,
    /// Where the database a restore replaced was moved, if there was one.
    pub replaced: Option<PathBuf>,
}

async fn open(path: &Path, read_only: bool) -> Result<SqliteConnection, BackupError> {
    if !path.is_file() {
        return Err(BackupError::Unusable { path: path.to_owned(), why: "no such file".into() });
    }
    SqliteConnectOptions::from_str("sqlite:")
        .map_err(db(path))?
        .filename(path)
        .read_only(read_only)
        .busy_timeout(Duration::from_secs(5))
        .disable_statement_logging()
        .connect()
        .await
        .map_err(db(path))
}

/// Checks that `path` is a whole shenguan database with a schema this build knows; answers its
/// schema version and instance count.
async fn check(path: &Path) -> Result<(i64, u64), BackupError> {
    let mut conn = open(path, true).await?;
    let verdict: Result<String, sqlx::Error> = sqlx::query_scalar("PRAGMA quick_check").fetch_one(&mut conn).await;
    let unusable = |why: String| BackupError::Unusable { path: path.to_owned(), why };
    match verdict {
        Ok(v) if v == "ok" => {}
        Ok(v) => return Err(unusable(format!("damaged: {v}"))),
        Err(e) => return Err(unusable(e.to_string())),
    }
    let found = schema(&mut conn, path).await;
    let _ = conn.close().await;
    found
}

/// The shenguan schema in the database `conn` has open (`path`): its version, refused if newer
/// than this build, and its instance count. Reads the schema and one count, not every page.
async fn schema(conn: &mut SqliteConnection, path: &Path) -> Result<(i64, u64), BackupError> {
    let unusable = |why: String| BackupError::Unusable { path: path.to_owned(), why };
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('_sqlx_migrations', 'instances')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db(path))?;
    if tables < 2 {
        return Err(unusable("no shenguan schema in it".into()));
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(&mut *conn)
        .await
        .map_err(db(path))?;
    super::newer_schema(&applied, &super::sqlite::MIGRATOR).map_err(unusable)?;
    let instances: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances").fetch_one(&mut *conn).await.map_err(db(path))?;
    Ok((applied.iter().copied().max().unwrap_or(0), u64::try_from(instances).unwrap_or(0)))
}

fn newest() -> i64 {
    super::sqlite::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// `path` with `suffix` appended to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), BackupError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Copies the database at `from` to `to` (a new file) while servers may write to it, calling
/// `progress` about every quarter second.
pub async fn backup(from: &Path, to: &Path, mut progress: impl FnMut(Progress)) -> Result<Summary, BackupError> {
    if to.exists() {
        return Err(BackupError::Exists(to.to_owned()));
    }
    let partial = beside(to, ".partial");
    // Left by a backup that was interrupted: it was never a backup.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BackupError::Io { path: partial, source: e }),
    }
    let mut conn = open(from, true).await?;
    // The source's schema only: its pages are read once, by the copy, and the copy is checked
    // whole below.
    schema(&mut conn, from).await?;
    let pages: i64 = sqlx::query_scalar(
        "SELECT (SELECT page_count FROM pragma_page_count()) - \
         (SELECT freelist_count FROM pragma_freelist_count())",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(db(from))?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut conn).await.map_err(db(from))?;
    let expected = u64::try_from(pages.saturating_mul(size)).unwrap_or(0);
    let target = partial.to_str().ok_or_else(|| BackupError::Unusable {
        path: partial.clone(),
        why: "the output path is not valid UTF-8".into(),
    })?;
    let done = {
        let vacuum = sqlx::query("VACUUM INTO ?1").bind(target.to_owned()).execute(&mut conn);
        tokio::pin!(vacuum);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                done = &mut vacuum => break done,
                _ = tick.tick() => {
                    let written = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                    progress(Progress { written, expected });
                }
            }
        }
    };
    let _ = conn.close().await;
    let copied = match done {
        Err(e) => Err(db(from)(e)),
        Ok(_) => match File::open(&partial).and_then(|f| f.sync_all()) {
            Err(e) => Err(io(&partial)(e)),
            Ok(()) => check(&partial).await,
        },
    };
    // Whatever went wrong, no partial copy stays behind.
    let (schema, instances) = copied.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    std::fs::rename(&partial, to).map_err(io(to))?;
    sync_dir(to)?;
    let bytes = std::fs::metadata(to).map_err(io(to))?.len();
    progress(Progress { written: bytes, expected: bytes });
    Ok(Summary { path: to.to_owned(), bytes, instances, schema, newest: newest(), replaced: None })
}

/// Puts the backup at `from` in place of the database at `to`, which no server may have open;
/// the database replaced, if any, is moved aside (`…replaced-YYYYMMDDTHHMMSS`, with its WAL).
pub async fn restore(from: &Path, to: &Path) -> Result<Summary, BackupError> {
    let (schema, instances) = check(from).await?;
    // Held to the end: a server starting on `to` meanwhile is refused.
    let _held = if to.exists() { Some(ServerLock::take(to)?) } else { None };
    let incoming = beside(to, ".restoring");
    std::fs::copy(from, &incoming).map_err(io(&incoming))?;
    File::open(&incoming).and_then(|f| f.sync_all()).map_err(io(&incoming))?;
    // The copy is locked before it takes the database's name, for the same reason.
    let _incoming_held = ServerLock::take(&incoming)?;
    let mut replaced = None;
    if to.exists() {
        let stamp = chrono::Local::now().format("%Y%m%dT%H%M%S");
        let aside = beside(to, &format!(".replaced-{stamp}"));
        // The WAL and its index go with their database: beside another file, SQLite would
        // replay the old WAL into it.
        for suffix in ["-wal", "-shm"] {
            let side = beside(to, suffix);
            if side.exists() {
                std::fs::rename(&side, beside(&aside, suffix)).map_err(io(&side))?;
            }
        }
        std::fs::rename(to, &aside).map_err(io(to))?;
        replaced = Some(aside);
    }
    std::fs::rename(&incoming, to).map_err(io(to))?;
    sync_dir(to)?;
    let bytes = std::fs::metadata(to).map_err(io(to))?.len();
    Ok(Summary { path: to.to_owned(), bytes, instances, schema, newest: newest(), replaced })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db");
        let first = ServerLock::take(&path).expect("first");
        assert!(matches!(ServerLock::take(&path), Err(BackupError::InUse(_))));
        drop(first);
        ServerLock::take(&path).expect("free again");
    }

    #[test]
    fn postgres_urls_are_refused_with_what_to_do_instead() {
        let e = sqlite_path("postgres://u@h/db").expect_err("postgres");
        assert!(e.to_string().contains("pg_dump"), "{e}");
        assert_eq!(sqlite_path("sqlite:x.db").expect("file"), PathBuf::from("x.db"));
    }
}
