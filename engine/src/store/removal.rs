//! Removing archived cases ([`super::Store::remove_archived`]): the statements both backends
//! run for each case, in one transaction per call, written once. Parameters are `$n`, which
//! SQLite reads as PostgreSQL does.

/// The case and its tasks as stored now: (id, history length). `$1` the case id, `$2`..`$3`
/// the range of its tasks' ids (`<case>/` and that followed by U+10FFFF).
pub(super) const STORED: &str = "SELECT id, seq FROM instances WHERE id = $1 OR (id >= $2 AND id < $3)";

/// Messages of an instance still waiting for a delivery or for an administrator: removing them
/// would lose a delivery.
pub(super) const UNDELIVERED: &str =
    "SELECT count(*) FROM outbox WHERE instance_id = $1 AND status IN ('pending', 'dead')";

/// Everything of one instance, the row itself last.
pub(super) const DELETE: [&str; 4] = [
    "DELETE FROM history WHERE instance_id = $1",
    "DELETE FROM timers WHERE instance_id = $1",
    "DELETE FROM outbox WHERE instance_id = $1",
    "DELETE FROM instances WHERE id = $1",
];

/// The request ids one instance recorded at one instant: a request id's row is written in the
/// transaction of the history entry it answers, with the same instant, so `created_at`'s index
/// finds it among that instant's few.
pub(super) const DELETE_KEYS: &str = "DELETE FROM idempotency WHERE created_at = $1 AND instance_id = $2";

/// One row of the enterprise index, by its whole key.
pub(super) const DELETE_SUBJECT: &str = "DELETE FROM subjects WHERE code = $1 AND instance_id = $2";

/// The record that the case was archived.
pub(super) const RECORD: &str =
    "INSERT INTO archived (id, state, instances, created_at, closed_at, archive, archived_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";

/// Adds to what archived cases counted (a day counter's key and n).
pub(super) const COUNT: &str = "INSERT INTO archived_counts (period, side, region, department, office, figure, n) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (period, side, region, department, office, figure) \
     DO UPDATE SET n = archived_counts.n + excluded.n";

/// What archived cases counted, summed over all days.
pub(crate) const COUNTS: &str = "SELECT side, region, department, office, figure, CAST(sum(n) AS BIGINT) AS n \
     FROM archived_counts GROUP BY side, region, department, office, figure";

/// Removes `$cases` (a `&[Removal]`) on the open transaction `$tx`, recording each in
/// `archived` under `$archive` at `$at`; `$lock` is appended to the read of the stored rows
/// (PostgreSQL locks them against another node). Evaluates to `Result<Removed, Error>`; the
/// caller commits.
macro_rules! remove_in {
    ($tx:expr, $cases:expr, $archive:expr, $at:expr, $lock:expr) => {{
        let mut out = $crate::store::Removed::default();
        let stored_sql = format!("{}{}", $crate::store::removal::STORED, $lock);
        for case in $cases {
            let prefix = format!("{}/", case.case);
            let stored: Vec<(String, i64)> = sqlx::query_as(&stored_sql)
                .bind(&case.case)
                .bind(&prefix)
                .bind(format!("{prefix}\u{10FFFF}"))
                .fetch_all(&mut *$tx)
                .await?;
            let mut undelivered = 0i64;
            for id in case.ids() {
                let n: i64 =
                    sqlx::query_scalar($crate::store::removal::UNDELIVERED).bind(id).fetch_one(&mut *$tx).await?;
                undelivered += n;
            }
            if !case.unchanged(&stored, undelivered) {
                out.changed.push(case.case.clone());
                continue;
            }
            for id in case.ids() {
                for sql in $crate::store::removal::DELETE {
                    sqlx::query(sql).bind(id).execute(&mut *$tx).await?;
                }
            }
            for (id, at) in &case.keyed_at {
                sqlx::query($crate::store::removal::DELETE_KEYS).bind(*at).bind(id).execute(&mut *$tx).await?;
            }
            for (code, id) in &case.subjects {
                sqlx::query($crate::store::removal::DELETE_SUBJECT).bind(code).bind(id).execute(&mut *$tx).await?;
            }
            for (key, n) in case.figures.iter().filter(|(k, _)| k.grain == $crate::domain::figures::Grain::Day) {
                sqlx::query($crate::store::removal::COUNT)
                    .bind(&key.period)
                    .bind(key.group.side.as_str())
                    .bind(&key.group.region)
                    .bind(&key.group.department)
                    .bind(&key.group.office)
                    .bind(key.figure.as_str())
                    .bind(*n)
                    .execute(&mut *$tx)
                    .await?;
            }
            sqlx::query($crate::store::removal::RECORD)
                .bind(&case.case)
                .bind(&case.state)
                .bind(case.instances.len() as i64)
                .bind(case.created_at)
                .bind(case.closed_at)
                .bind($archive)
                .bind($at)
                .execute(&mut *$tx)
                .await?;
            out.removed.push(case.case.clone());
        }
        Ok::<_, $crate::store::Error>(out)
    }};
}
pub(super) use remove_in;
