//! The read side: queries for the API (cases, tasks, timelines, statistics) on a pool of
//! read-only SQLite connections, beside the writer's own connection. WAL lets these read while
//! the writer commits; they see only committed state.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{QueryBuilder, Sqlite};

use super::sqlite::{HISTORY_COLUMNS, INSTANCE_COLUMNS as COLUMNS};
use super::{Error, InstanceRow};
use crate::clock::Millis;
use crate::domain::TASK_WORKFLOW;
use crate::machine::{CommandKind, HistoryEntry};

/// A filter on an instance listing.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Workflow name.
    pub workflow: String,
    /// Exact state.
    pub state: Option<String>,
    /// Variable equals text: (variable, value).
    pub vars: Vec<(String, String)>,
    /// Any of these boolean variables is true…
    pub any_true: Vec<String>,
    /// …or (for a case) any of these boolean variables of one of its tasks (`<id>/T…` of
    /// workflow [`TASK_WORKFLOW`]) is true.
    pub any_task_true: Vec<String>,
    /// Created at or after.
    pub created_from: Option<Millis>,
    /// Created before.
    pub created_before: Option<Millis>,
    /// Ids strictly after this one (paging).
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// Read-only access for queries.
#[derive(Debug, Clone)]
pub struct Reader {
    pool: SqlitePool,
}

impl Reader {
    /// Opens a pool of read-only connections to the database the writer has created.
    pub async fn open(path: &Path, connections: u32) -> Result<Self, Error> {
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| Error::Open { path: path.display().to_string(), message: e.to_string() })?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(connections.max(1))
            .connect_with(opts)
            .await
            .map_err(|e| Error::Open { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Reader { pool })
    }

    /// One instance.
    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM instances WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(super::sqlite::instance_from_row).transpose()
    }

    /// Instances whose id starts with `prefix`, in id order.
    pub async fn with_prefix(&self, prefix: &str) -> Result<Vec<InstanceRow>, Error> {
        // Ids are ASCII here; the range [prefix, prefix + U+10FFFF) holds exactly the prefixed ones.
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM instances WHERE id >= ? AND id < ? ORDER BY id"))
            .bind(prefix)
            .bind(format!("{prefix}\u{10FFFF}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(super::sqlite::instance_from_row).collect()
    }

    /// One instance's history, ascending.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, Error> {
        let rows = sqlx::query(&format!("SELECT {HISTORY_COLUMNS} FROM history WHERE instance_id = ? ORDER BY seq"))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(super::sqlite::history_from_row).collect()
    }

    /// Outbox messages not yet delivered.
    pub async fn outbox_backlog(&self) -> Result<u64, Error> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status = 'pending'").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Timers armed in the database. Counts the `timers_due` index: cost grows with the number
    /// of pending timers (tens of milliseconds per million), paid per scrape, not per command.
    pub async fn timers_pending(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM timers").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Instances matching `filter`, in id order.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<InstanceRow>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM instances WHERE workflow = "));
        q.push_bind(&filter.workflow);
        if let Some(state) = &filter.state {
            q.push(" AND state = ").push_bind(state);
        }
        for (var, value) in &filter.vars {
            q.push(" AND json_extract(vars, ").push_bind(format!("$.{var}")).push(") = ").push_bind(value);
        }
        if !filter.any_true.is_empty() || !filter.any_task_true.is_empty() {
            q.push(" AND (0");
            for var in &filter.any_true {
                q.push(" OR json_extract(vars, ").push_bind(format!("$.{var}")).push(") = 1");
            }
            if !filter.any_task_true.is_empty() {
                // Task ids are the case id, "/T" and a number: a range scan of the primary key.
                q.push(" OR EXISTS (SELECT 1 FROM instances t WHERE t.id > instances.id || '/T' AND t.id < instances.id || '/U' AND t.workflow = ")
                    .push_bind(TASK_WORKFLOW)
                    .push(" AND (0");
                for var in &filter.any_task_true {
                    q.push(" OR json_extract(t.vars, ").push_bind(format!("$.{var}")).push(") = 1");
                }
                q.push("))");
            }
            q.push(")");
        }
        if let Some(from) = filter.created_from {
            q.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(before) = filter.created_before {
            q.push(" AND created_at < ").push_bind(before);
        }
        if let Some(after) = &filter.after {
            q.push(" AND id > ").push_bind(after);
        }
        q.push(" ORDER BY id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows: Vec<SqliteRow> = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(super::sqlite::instance_from_row).collect()
    }
}

/// A short name for what a history entry did, for timelines.
pub fn event_name(entry: &HistoryEntry) -> String {
    match &entry.command {
        CommandKind::Start { .. } => "accepted".to_owned(),
        CommandKind::Event { name, .. } => name.clone(),
        CommandKind::Timer { name, .. } => format!("timer:{name}"),
    }
}
