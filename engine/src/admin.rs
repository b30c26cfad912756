//! Offline operations on a database file: `shenguan admin verify`.
//!
//! Verify replays every instance's history through `decide` (with the definitions and
//! calendars loaded now) and checks that it rebuilds the stored row, that the `timers` table
//! holds exactly the timers each instance row says are armed, and that no history, outbox or
//! idempotency row names an instance that has no row (a deleted instance).

use std::collections::BTreeMap;

use crate::calendar::Calendars;
use crate::definition::Registry;
use crate::machine::replay;
use crate::store::{Error, ReadStore};

/// What verify found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Instances checked.
    pub instances: u64,
    /// History entries replayed.
    pub entries: u64,
    /// (instance, what is wrong), one per divergent instance.
    pub divergent: Vec<(String, String)>,
}

/// Verifies the SQLite database at `path`, read-only (never creates or changes it).
pub async fn verify_file(path: &std::path::Path, registry: &Registry, calendars: &Calendars) -> Result<Report, Error> {
    verify(&crate::store::read::Reader::open_existing(path).await?, registry, calendars).await
}

/// Replays every instance `store` holds.
pub async fn verify(store: &dyn ReadStore, registry: &Registry, calendars: &Calendars) -> Result<Report, Error> {
    let mut report = Report::default();
    let mut timer_rows: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for row in store.all_timers().await? {
        timer_rows.entry(row.instance).or_default().insert(row.name, row.due);
    }
    let mut after: Option<String> = None;
    loop {
        let ids = store.instance_ids(after.as_deref(), 1000).await?;
        let Some(last) = ids.last().cloned() else { break };
        for id in ids {
            report.instances += 1;
            let Some(row) = store.instance(&id).await? else { continue };
            let history = store.history(&id).await?;
            report.entries += history.len() as u64;
            let Some(def) = registry.get(&row.workflow, row.version) else {
                report.divergent.push((id, format!("workflow {} version {} is not loaded", row.workflow, row.version)));
                continue;
            };
            let stored_timers: BTreeMap<String, i64> = row.timers.iter().map(|(k, t)| (k.clone(), t.due)).collect();
            let table_timers = timer_rows.remove(&id).unwrap_or_default();
            if stored_timers != table_timers {
                report.divergent.push((
                    id.clone(),
                    format!("timers table {table_timers:?} differs from the instance's armed timers {stored_timers:?}"),
                ));
                continue;
            }
            let instance = match row.decode(def) {
                Ok(instance) => instance,
                Err(e) => {
                    report.divergent.push((id, format!("stored variables do not decode: {e}")));
                    continue;
                }
            };
            if let Err(d) = replay::verify(def, &instance, &history, calendars) {
                report.divergent.push((id, d.to_string()));
            }
        }
        after = Some(last);
    }
    for (id, timers) in timer_rows {
        report.divergent.push((id, format!("timers {timers:?} belong to no instance")));
    }
    for (table, id) in store.orphans(1000).await? {
        report.divergent.push((id, format!("{table} rows name this instance, which has no instance row")));
    }
    Ok(report)
}
