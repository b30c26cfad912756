//! The SQLite read side: [`Reader`] implements [`ReadStore`] — the queries of the API (cases,
//! tasks, timelines, statistics) and of `admin verify` — on a pool of read-only connections,
//! beside the writer's own connection. WAL lets these read while the writer commits; they see
//! only committed state.

/// How many tables have the name bound.
const TABLE_EXISTS: &str = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?";

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::sqlite::{HISTORY_COLUMNS, INSTANCE_COLUMNS as COLUMNS};
use super::{
    Error, Filter, InstanceRow, ReadStore, ReplanJob, StoredCalendarFile, StoredConsumer, StoredMessage, TimerId,
    TimerRow,
};
use crate::machine::{CommandKind, HistoryEntry};

use crate::store::row::CONSUMER_COLUMNS;

/// The columns [`crate::store::row::message`] reads.
const MESSAGE_COLUMNS: &str =
    "id, key, instance_id, seq, channel, recipient, body, template, created_at, destination, status, \
     attempts, next_attempt_at, last_error, receipt, delivered_at, first_failed_at, kind, schema_version, data";

/// ` IN (?, ?, …)` over `values`; none: a condition nothing meets.
fn push_in(q: &mut QueryBuilder<'_, Sqlite>, values: &[String]) {
    if values.is_empty() {
        q.push(" IN (NULL)");
        return;
    }
    q.push(" IN (");
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v.clone());
    }
    q.push(")");
}

fn id_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
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

    /// Opens an existing shenguan database for reading only (`admin verify`): never creates a
    /// file, and refuses a file that is not a shenguan database.
    pub async fn open_existing(path: &Path) -> Result<Self, Error> {
        Self::open_existing_with(path, 1).await
    }

    /// Like [`open_existing`](Self::open_existing), with a pool of `connections`.
    pub async fn open_existing_with(path: &Path, connections: u32) -> Result<Self, Error> {
        let open = |message: String| Error::Open { path: path.display().to_string(), message };
        if !path.is_file() {
            return Err(open("no such database file".into()));
        }
        let reader = Reader::open(path, connections).await?;
        let has_schema: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'instances'")
            .fetch_one(&reader.pool)
            .await
            .map_err(|e| open(e.to_string()))?;
        if has_schema == 0 {
            return Err(open("not a shenguan database (no instances table)".into()));
        }
        Ok(reader)
    }
}

#[async_trait::async_trait]
impl ReadStore for Reader {
    async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM instances WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(crate::store::row::instance).transpose()
    }

    async fn with_prefix(&self, prefix: &str) -> Result<Vec<InstanceRow>, Error> {
        // Ids are ASCII here; the range [prefix, prefix + U+10FFFF) holds exactly the prefixed ones.
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM instances WHERE id >= ? AND id < ? ORDER BY id"))
            .bind(prefix)
            .bind(format!("{prefix}\u{10FFFF}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::store::row::instance).collect()
    }

    async fn history(&self, id: &str) -> Result<Vec<HistoryEntry>, Error> {
        let rows = sqlx::query(&format!("SELECT {HISTORY_COLUMNS} FROM history WHERE instance_id = ? ORDER BY seq"))
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::store::row::history).collect()
    }

    async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, Error> {
        let rows =
            sqlx::query("SELECT destination, count(*) AS n FROM outbox WHERE status = 'pending' GROUP BY destination")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let d: Option<String> = r.try_get("destination")?;
                Ok((d.unwrap_or_default(), u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0)))
            })
            .collect()
    }

    async fn outbox_pending(&self, destination: &str, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE destination = ? AND status = 'pending' AND id > ? \
             ORDER BY id LIMIT ?"
        ))
        .bind(destination)
        .bind(id_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::store::row::message).collect()
    }

    async fn outbox_after(&self, after: u64, channels: &[String], limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id > "));
        q.push_bind(id_i64(after));
        if !channels.is_empty() {
            q.push(" AND channel IN (");
            let mut list = q.separated(", ");
            for c in channels {
                list.push_bind(c);
            }
            list.push_unseparated(")");
        }
        q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(crate::store::row::message).collect()
    }

    async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<StoredMessage>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE status = 'dead' AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(id_i64(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::store::row::message).collect()
    }

    async fn dead_instances(&self, destination: &str) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar("SELECT DISTINCT instance_id FROM outbox WHERE status = 'dead' AND destination = ?")
            .bind(destination)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn message(&self, key: &str) -> Result<Option<StoredMessage>, Error> {
        let row = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE key = ?"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(crate::store::row::message).transpose()
    }

    async fn idempotency(&self, key: &str) -> Result<Option<crate::store::IdempotencyRow>, Error> {
        let columns = crate::store::row::IDEMPOTENCY_COLUMNS;
        let row = sqlx::query(&format!("SELECT {columns} FROM idempotency WHERE key = ?"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(crate::store::row::idempotency).transpose()?.map(|(_, row)| row))
    }

    async fn consumer(&self, name: &str) -> Result<Option<StoredConsumer>, Error> {
        let row = sqlx::query(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(crate::store::row::consumer).transpose()
    }

    async fn consumers(&self) -> Result<Vec<StoredConsumer>, Error> {
        let rows = sqlx::query(&format!("SELECT {CONSUMER_COLUMNS} FROM consumers ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::store::row::consumer).collect()
    }

    async fn outbox_last_id(&self) -> Result<u64, Error> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM outbox").fetch_one(&self.pool).await?;
        Ok(id.and_then(|i| u64::try_from(i).ok()).unwrap_or(0))
    }

    async fn outbox_of(&self, instance: &str) -> Result<Vec<StoredMessage>, Error> {
        let rows = sqlx::query(&format!("SELECT {MESSAGE_COLUMNS} FROM outbox WHERE instance_id = ? ORDER BY seq, id"))
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::store::row::message).collect()
    }

    async fn timers_pending(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM timers").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<InstanceRow>, Error> {
        let rows: Vec<SqliteRow> = list_query(filter).build().fetch_all(&self.pool).await?;
        rows.iter().map(crate::store::row::instance).collect()
    }

    async fn instance_ids(&self, after: Option<&str>, limit: u32) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar("SELECT id FROM instances WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn all_timers(&self) -> Result<Vec<TimerRow>, Error> {
        let rows = sqlx::query("SELECT instance_id, name, due_at FROM timers ORDER BY due_at, instance_id, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::store::row::timer).collect()
    }

    async fn orphans(&self, limit: u32) -> Result<Vec<(String, String)>, Error> {
        Ok(sqlx::query_as::<_, (String, String)>(super::sqlite::ORPHANS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn calendar_files(&self) -> Result<Vec<StoredCalendarFile>, Error> {
        super::sqlite::calendars::files(&self.pool).await
    }

    async fn catalogs(&self) -> Result<Vec<crate::catalog::Version>, Error> {
        super::sqlite::catalogs::latest(&self.pool).await
    }

    async fn catalog_history(&self, kind: crate::catalog::Kind) -> Result<Vec<crate::catalog::Version>, Error> {
        super::sqlite::catalogs::history(&self.pool, kind).await
    }

    async fn subjects_of(&self, code: &str) -> Result<Vec<super::Subject>, Error> {
        super::sqlite::catalogs::subjects_of(&self.pool, code).await
    }

    async fn subjects_by_item(
        &self,
        workflow: &str,
        items: &[String],
        states: &[&str],
    ) -> Result<Vec<super::Subject>, Error> {
        super::sqlite::catalogs::subjects_by_item(&self.pool, workflow, items, states).await
    }

    async fn replans(&self) -> Result<Vec<ReplanJob>, Error> {
        super::sqlite::calendars::replans(&self.pool).await
    }

    async fn planned_timers(
        &self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
        after: Option<&TimerId>,
        limit: u32,
    ) -> Result<Vec<TimerId>, Error> {
        super::sqlite::calendars::planned(&self.pool, first, last, after, limit).await
    }

    async fn provisional_timers(&self) -> Result<u64, Error> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM timers WHERE provisional = 1").fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn figures_built(&self) -> Result<bool, Error> {
        // A database from before the counters has no such table: not built.
        let tables: i64 = sqlx::query_scalar(TABLE_EXISTS).bind("figure_counts_built").fetch_one(&self.pool).await?;
        if tables == 0 {
            return Ok(false);
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM figure_counts_built").fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    async fn archived_counts(&self) -> Result<Vec<([String; 5], i64)>, Error> {
        // A database from before archiving (verify does not migrate) has archived nothing.
        let tables: i64 = sqlx::query_scalar(TABLE_EXISTS).bind("archived_counts").fetch_one(&self.pool).await?;
        if tables == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, String, String, String, i64)> =
            sqlx::query_as(super::removal::COUNTS).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(a, b, c, d, e, n)| ([a, b, c, d, e], n)).collect())
    }

    async fn archived(&self, id: &str) -> Result<Option<super::ArchivedRow>, Error> {
        let row = sqlx::query(super::row::ARCHIVED).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(super::row::archived).transpose()
    }

    async fn figure_counts(&self, query: &super::figures::CounterQuery) -> Result<Vec<super::figures::Summed>, Error> {
        let mut q: sqlx::QueryBuilder<Sqlite> = sqlx::QueryBuilder::new("");
        super::figures::build(&mut q, query);
        q.build().fetch_all(&self.pool).await?.iter().map(super::figures::decode).collect()
    }

    async fn count(&self, table: super::Table) -> Result<u64, Error> {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name())).fetch_one(&self.pool).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A short name for what a history entry did, for timelines.
pub fn event_name(entry: &HistoryEntry) -> String {
    match &entry.command {
        CommandKind::Start { .. } => "accepted".to_owned(),
        CommandKind::Event { name, .. } => name.clone(),
        CommandKind::Timer { name, .. } => format!("timer:{name}"),
        CommandKind::Replan { .. } => "deadline_replanned".to_owned(),
    }
}

/// The query of [`Reader::list`] (`Filter` → SQL). Three choices steer SQLite's planner, which
/// otherwise takes the `(workflow, state)` index for every listing and sorts a whole workflow
/// (a million cases) to give the first page of 50: without a state, `+workflow` leaves the
/// primary key to serve `ORDER BY id LIMIT n`; an unpaged read of a period (a figure's ids)
/// takes the `(workflow, created_at)` index instead, and `+id` keeps a region's id range from
/// pulling it back to the primary key (a region may be every case there is); and the
/// correlated subqueries over a case's tasks (`<id>/T…`) name `+t.workflow`, so that they are a
/// range of the primary key, not a scan of every task per case.
fn list_query(filter: &Filter) -> QueryBuilder<'_, Sqlite> {
    let by_state = filter.state.is_some() || !filter.states_in.is_empty();
    let by_period =
        !by_state && filter.limit.is_none() && (filter.created_from.is_some() || filter.created_before.is_some());
    let workflow = if by_state || by_period { "workflow" } else { "+workflow" };
    let id = if by_period { "+id" } else { "id" };
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {COLUMNS} FROM instances WHERE {workflow} = "));
    q.push_bind(&filter.workflow);
    if let Some(state) = &filter.state {
        q.push(" AND state = ").push_bind(state);
    }
    for (var, value) in &filter.vars {
        q.push(" AND json_extract(vars, ").push_bind(format!("$.{var}")).push(") = ").push_bind(value);
    }
    for (var, values) in &filter.vars_in {
        q.push(" AND json_extract(vars, ").push_bind(format!("$.{var}")).push(")");
        push_in(&mut q, values);
    }
    if !filter.states_in.is_empty() {
        q.push(" AND state");
        push_in(&mut q, &filter.states_in);
    }
    for (var, bound) in &filter.vars_at_most {
        q.push(" AND json_extract(vars, ").push_bind(format!("$.{var}")).push(") <= ").push_bind(bound);
    }
    if !filter.any_true.is_empty() || !filter.any_task_true.is_empty() {
        q.push(" AND (0");
        for var in &filter.any_true {
            q.push(" OR json_extract(vars, ").push_bind(format!("$.{var}")).push(") = 1");
        }
        if !filter.any_task_true.is_empty() {
            // Task ids are the case id, "/T" and a number: a range scan of the primary key.
            q.push(" OR EXISTS (SELECT 1 FROM instances t WHERE t.id > instances.id || '/T' AND t.id < instances.id || '/U' AND +t.workflow = ")
                .push_bind(&filter.task_workflow)
                .push(" AND (0");
            for var in &filter.any_task_true {
                q.push(" OR json_extract(t.vars, ").push_bind(format!("$.{var}")).push(") = 1");
            }
            q.push("))");
        }
        q.push(")");
    }
    if filter.provisional {
        // The case's own timers, its tasks' ("<id>/T…"), or the variable set when a deadline
        // outside the timers (a commitment date) was computed on a provisional calendar.
        q.push(
            " AND (EXISTS (SELECT 1 FROM timers p WHERE p.provisional = 1 AND (p.instance_id = instances.id \
             OR (p.instance_id > instances.id || '/T' AND p.instance_id < instances.id || '/U')))",
        );
        if let Some(var) = &filter.provisional_var {
            q.push(" OR json_extract(vars, ").push_bind(format!("$.{var}")).push(") = 1");
        }
        q.push(")");
    }
    if let Some(prefix) = filter.region_prefix.as_deref().filter(|p| !p.is_empty()) {
        // A range of the primary key: every id that starts with the prefix.
        q.push(format!(" AND {id} >= "))
            .push_bind(prefix.to_owned())
            .push(format!(" AND {id} < "))
            .push_bind(format!("{prefix}\u{10FFFF}"));
    }
    if let Some((departments, offices)) = &filter.seen_by {
        q.push(" AND (");
        if offices.is_none() {
            q.push("json_extract(vars, '$.approval_department')");
            push_in(&mut q, departments);
            q.push(" OR ");
        }
        q.push("EXISTS (SELECT 1 FROM instances s WHERE s.id > instances.id || '/T' AND s.id < instances.id || '/U' AND +s.workflow = ")
            .push_bind(filter.task_workflow.clone())
            .push(" AND json_extract(s.vars, '$.department')");
        push_in(&mut q, departments);
        if let Some(offices) = offices {
            q.push(" AND json_extract(s.vars, '$.office')");
            push_in(&mut q, offices);
        }
        q.push("))");
    }
    if let Some(from) = filter.created_from {
        q.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(before) = filter.created_before {
        q.push(" AND created_at < ").push_bind(before);
    }
    if let Some(after) = &filter.after {
        q.push(format!(" AND {id} > ")).push_bind(after);
    }
    q.push(" ORDER BY id");
    if let Some(limit) = filter.limit {
        q.push(" LIMIT ").push_bind(i64::from(limit));
    }
    q
}

#[cfg(test)]
mod tests {
    use sqlx::Execute as _;

    use super::*;

    /// SQLite's plan for `filter`'s listing, one line per step.
    async fn plan(filter: &Filter) -> String {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.expect("memory database");
        crate::store::sqlite::MIGRATOR.run(&pool).await.expect("schema");
        let mut q = list_query(filter);
        let mut query = q.build();
        let sql = format!("EXPLAIN QUERY PLAN {}", query.sql());
        let args = query.take_arguments().expect("arguments").expect("some");
        let rows: Vec<SqliteRow> = sqlx::query_with(&sql, args).fetch_all(&pool).await.expect("plan");
        rows.iter().map(|r| sqlx::Row::get::<String, _>(r, "detail")).collect::<Vec<_>>().join("\n")
    }

    fn cases() -> Filter {
        Filter { workflow: "approval_case".into(), limit: Some(50), ..Filter::default() }
    }

    // At a million cases the first page of a listing took 1.5 s (the workflow's index, then
    // a sort of every case) and an overdue-only page minutes (every task scanned per case).
    #[tokio::test]
    async fn a_listings_first_page_reads_the_primary_key_in_order_and_a_cases_tasks_by_range() {
        let mut region = cases();
        region.vars.push(("region".into(), "320700".into()));
        let p = plan(&region).await;
        assert!(!p.contains("TEMP B-TREE") && !p.contains("instances_workflow_state"), "{p}");

        let mut overdue = region.clone();
        overdue.any_true = vec!["deadline_breached".into()];
        overdue.any_task_true = vec!["ack_breached".into()];
        overdue.task_workflow = "supervision_task".into();
        overdue.seen_by = Some((vec!["市市场监督管理局".into()], None));
        let p = plan(&overdue).await;
        assert!(!p.contains("TEMP B-TREE") && !p.contains("instances_workflow_state"), "{p}");
        assert_eq!(p.matches("USING PRIMARY KEY (id>? AND id<?)").count(), 2, "{p}");

        // A state is what the index is for: its entries are in id order within the state.
        let mut state = region;
        state.state = Some("overdue".into());
        let p = plan(&state).await;
        assert!(p.contains("instances_workflow_state") && !p.contains("TEMP B-TREE"), "{p}");
    }

    // A figure's ids (a region, a month) read every instance of the region: 2.2 s at a million.
    #[tokio::test]
    async fn a_periods_unpaged_read_takes_the_creation_index_not_the_regions_id_range() {
        let month = Filter {
            workflow: "supervision_task".into(),
            vars: vec![("region".into(), "320700".into())],
            vars_in: vec![("department".into(), vec!["市市场监督管理局".into()])],
            created_from: Some(1_780_243_200_000),
            created_before: Some(1_782_835_200_000),
            region_prefix: Some("320700/".into()),
            ..Filter::default()
        };
        let p = plan(&month).await;
        assert!(p.contains("instances_workflow_created (workflow=? AND created_at>? AND created_at<?)"), "{p}");

        // Paged, the same filter keeps to the primary key's order.
        let paged = Filter { limit: Some(50), ..month };
        let p = plan(&paged).await;
        assert!(!p.contains("instances_workflow_created") && !p.contains("TEMP B-TREE"), "{p}");
    }
}
