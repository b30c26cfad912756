//! Offline operations on a database file: `shenguan admin verify`.
//!
//! Verify replays every instance's history through `decide` (with the definitions loaded now
//! and, for each entry, the calendar set the database held when it was computed) and checks that it rebuilds the stored row, that the `timers` table
//! holds exactly the timers each instance row says are armed, and that no history, outbox or
//! idempotency row names an instance that has no row (a deleted instance).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// Verifies `database`, read-only.
pub async fn verify_database(
    database: &crate::store::Database,
    registry: &Registry,
    calendars: &Calendars,
) -> Result<Report, Error> {
    match database {
        crate::store::Database::Sqlite(path) => verify_file(path, registry, calendars).await,
        crate::store::Database::Postgres(_) => verify(&*database.reader(2).await?, registry, calendars).await,
    }
}

/// Every calendar set the database has held, by generation: replay computes each history
/// entry with the set it was computed with. Generation 0 (entries written before calendars
/// were stored) is the seed. A database with no stored calendars uses `fallback` throughout.
fn archive(
    files: &[crate::store::StoredCalendarFile],
    fallback: &Calendars,
) -> Result<HashMap<u64, Arc<Calendars>>, Error> {
    let mut out = HashMap::new();
    // Replay is permissive: a deadline decided under `refuse` is one `provisional` decides alike.
    let policy = crate::calendar::Policy::Provisional;
    if files.is_empty() {
        out.insert(0, Arc::new(fallback.clone().with_policy(policy)));
        return Ok(out);
    }
    let all: Vec<crate::calendar::CalendarFile> = files.iter().map(|f| f.file.clone()).collect();
    let seed = files.iter().take_while(|f| f.loaded_by == crate::store::SEED).count();
    for (i, f) in files.iter().enumerate() {
        let calendars = Calendars::from_files(&all[..=i], f.generation)
            .map_err(|e| Error::Corrupt(format!("stored calendars up to generation {}: {e}", f.generation)))?
            .with_policy(policy);
        if i + 1 == seed.max(1) {
            out.insert(0, Arc::new(calendars.clone().with_generation(0)));
        }
        out.insert(f.generation, Arc::new(calendars));
    }
    Ok(out)
}

/// Replays every instance `store` holds.
pub async fn verify(store: &dyn ReadStore, registry: &Registry, calendars: &Calendars) -> Result<Report, Error> {
    let archive = archive(&store.calendar_files().await?, calendars)?;
    let calendars = |generation: u64| archive.get(&generation).cloned();
    let mut report = Report::default();
    let mut timer_rows: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for row in store.all_timers().await? {
        timer_rows.entry(row.instance).or_default().insert(row.name, row.due);
    }
    let mut tally = crate::domain::figures::Tally::default();
    let mut after: Option<String> = None;
    loop {
        let ids = store.instance_ids(after.as_deref(), 1000).await?;
        let Some(last) = ids.last().cloned() else { break };
        for id in ids {
            report.instances += 1;
            let Some(row) = store.instance(&id).await? else { continue };
            tally.change(None::<&crate::store::InstanceRow>, Some(&row));
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
            if let Err(d) = replay::verify(def, &instance, &history, &calendars) {
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
    if store.figures_built().await? {
        report.divergent.extend(figures(store, &tally).await?);
    }
    Ok(report)
}

/// Where the statistics counters differ from a count of the rows: each grain summed over all
/// time, per group and figure. (Read while nothing writes, or a commit in between shows.)
async fn figures(store: &dyn ReadStore, tally: &crate::domain::figures::Tally) -> Result<Vec<(String, String)>, Error> {
    use crate::domain::figures::{Cover, Grain};
    use crate::store::figures::CounterQuery;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (key, n) in tally.rows().into_iter().filter(|(k, _)| k.grain == Grain::Day) {
        let g = &key.group;
        let name = format!("{} {} {}/{} {}", g.side.as_str(), g.region, g.department, g.office, key.figure.as_str());
        *expected.entry(name).or_default() += n;
    }
    // Archived cases are counted still, and no longer stored.
    for ([side, region, department, office, figure], n) in store.archived_counts().await? {
        *expected.entry(format!("{side} {region} {department}/{office} {figure}")).or_default() += n;
    }
    let mut out = Vec::new();
    let all = [
        ("day", Cover { months: None, days: vec![("0000-01-01".into(), "9999-12-31".into())] }),
        ("month", Cover { months: Some(("0000-01".into(), "9999-12".into())), days: vec![] }),
    ];
    for (grain, cover) in all {
        let stored = store.figure_counts(&CounterQuery { cover, region: None, department: None, office: None }).await?;
        let mut left = expected.clone();
        for s in stored {
            let g = &s.group;
            let name = format!("{} {} {}/{} {}", g.side.as_str(), g.region, g.department, g.office, s.figure.as_str());
            let want = left.remove(&name).unwrap_or(0);
            if want != i64::try_from(s.n).unwrap_or(i64::MAX) {
                out.push((
                    "figure_counts".to_owned(),
                    format!("{grain} counters of {name} hold {}, the rows {want}", s.n),
                ));
            }
        }
        for (name, want) in left.into_iter().filter(|(_, n)| *n != 0) {
            out.push(("figure_counts".to_owned(), format!("{grain} counters of {name} hold 0, the rows {want}")));
        }
    }
    Ok(out)
}
