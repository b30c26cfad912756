//! `AdminService.LoadCalendar` and `AdminService.CalendarStatus`: the calendar lifecycle as an
//! operator drives it (see `ops/calendars/README.md` for the year-end procedure).
//!
//! A load is checked here against the stored calendars exactly as the writer will check it;
//! a dry run stops there and answers what the load would move, computed with the same
//! `decide(Replan)` the writer runs, over committed state. A real load goes through the writer,
//! which stores the file, puts the new set in force and re-plans in its following batches.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use tonic::Status;

use super::status::{self, invalid};
use super::{view, Shared};
use crate::calendar::replan::{calendar_label, calendars_with, CalendarLoad, LoadError};
use crate::calendar::{self, CalendarFile, Calendars, FileKey};
use crate::machine::{decide, Command, CommandKind};
use crate::proto::{
    CalendarRegion, CalendarReplan, CalendarStatusReply, CalendarYear, LoadCalendarReply, LoadCalendarRequest,
    ReplanGroup, ReplanMove,
};
use crate::store::StoredCalendarFile;
use crate::writer::WriteError;

/// Largest calendar file accepted (a year file is ~3 KB).
const MAX_FILE: usize = 256 * 1024;
/// Moves listed one by one in a dry run's answer.
const FIRST_MOVES: usize = 10;
/// Timers read per page in a dry run.
const PAGE: u32 = 5_000;

fn file_name(name: &str) -> Result<&str, Status> {
    // Only ever shown in messages and stored; a plain file name, never a path.
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(invalid("name", "give the file's name, such as 2027.toml (letters, digits, . _ -), at most 128 characters"))
    }
}

/// Checks the request's file alone; answers it parsed.
pub fn parse(r: &LoadCalendarRequest) -> Result<CalendarFile, Status> {
    let name = file_name(&r.name)?;
    if r.text.len() > MAX_FILE {
        return Err(invalid("text", format!("is {} bytes; a calendar file is at most {MAX_FILE}", r.text.len())));
    }
    if r.text.contains('\0') {
        return Err(invalid("text", "contains a NUL character"));
    }
    CalendarFile::parse(name, &r.text).map_err(|e| invalid("text", e))
}

fn load_error(e: LoadError) -> Status {
    match e {
        LoadError::Invalid(e) => invalid("text", e),
        LoadError::Store(e) => status::write_error("calendar", "", &WriteError::from(e)),
        LoadError::ShuttingDown => status::write_error("calendar", "", &WriteError::ShuttingDown),
    }
}

/// `LoadCalendar`.
pub async fn load(shared: &Shared, r: LoadCalendarRequest, actor: String) -> Result<LoadCalendarReply, Status> {
    let file = parse(&r)?;
    if r.dry_run {
        return dry_run(shared, &file).await;
    }
    let handle = shared.engine.handle();
    let loaded = handle.load_calendar(CalendarLoad { file, loaded_by: actor }).await.map_err(load_error)?;
    if r.wait {
        handle.replanned(loaded.stored.generation).await.map_err(|e| status::write_error("calendar", "", &e))?;
    }
    let stored = &loaded.stored;
    Ok(LoadCalendarReply {
        key: stored.file.key.to_string(),
        version: stored.version,
        generation: stored.generation,
        source: stored.file.source.clone(),
        dry_run: false,
        changed_from: loaded.replan.as_ref().map(|j| j.first.to_string()).unwrap_or_default(),
        changed_to: loaded.replan.as_ref().map(|j| j.last.to_string()).unwrap_or_default(),
        ..LoadCalendarReply::default()
    })
}

/// What loading `file` would do, over committed state; changes nothing.
async fn dry_run(shared: &Shared, file: &CalendarFile) -> Result<LoadCalendarReply, Status> {
    let files = shared.reader.calendar_files().await.map_err(|e| status::read_error(&e))?;
    let current = shared.calendars();
    let (new, generation, version) = calendars_with(&files, file, current.policy()).map_err(|e| invalid("text", e))?;
    let stored = StoredCalendarFile { generation, version, file: file.clone(), loaded_by: String::new(), loaded_at: 0 };
    let mut reply = LoadCalendarReply {
        key: file.key.to_string(),
        version,
        generation,
        source: file.source.clone(),
        dry_run: true,
        ..LoadCalendarReply::default()
    };
    let Some((first, last)) = calendar::changed_range(&current, &new) else { return Ok(reply) };
    reply.changed_from = first.to_string();
    reply.changed_to = last.to_string();
    let label = calendar_label(&stored);
    let now = shared.context().clock.now();
    let mut groups: BTreeMap<(String, String), ReplanGroup> = BTreeMap::new();
    let mut after = None;
    let mut last_instance = String::new();
    loop {
        let ids = shared
            .reader
            .planned_timers(first, last, after.as_ref(), PAGE)
            .await
            .map_err(|e| status::read_error(&e))?;
        reply.timers_examined += ids.len() as u64;
        for (instance, _) in &ids {
            // A page may end inside an instance: each is replayed once.
            if *instance == last_instance {
                continue;
            }
            last_instance.clone_from(instance);
            preview_one(shared, &new, instance, &label, now, &mut reply, &mut groups).await?;
        }
        if ids.len() < PAGE as usize {
            break;
        }
        after = ids.last().cloned();
    }
    reply.groups = groups.into_values().collect();
    Ok(reply)
}

async fn preview_one(
    shared: &Shared,
    new: &Calendars,
    id: &str,
    label: &str,
    now: crate::clock::Millis,
    reply: &mut LoadCalendarReply,
    groups: &mut BTreeMap<(String, String), ReplanGroup>,
) -> Result<(), Status> {
    let Some(row) = shared.reader.instance(id).await.map_err(|e| status::read_error(&e))? else { return Ok(()) };
    let Some(def) = shared.registry().get(&row.workflow, row.version) else { return Ok(()) };
    let region = def.region_var().map(|v| view::var(&row, v)).unwrap_or_default();
    let Ok(instance) = row.clone().decode(def) else { return Ok(()) };
    let command = Command {
        instance: id.to_owned(),
        kind: CommandKind::Replan { calendar: label.to_owned() },
        actor: "calendar".into(),
        request_id: None,
        idempotency: None,
    };
    let Ok(t) = decide(def, Some(&instance), &command, now, new) else { return Ok(()) };
    for (name, new_due) in &t.history.armed {
        let old_due = t.history.cancelled.get(name).copied().unwrap_or(*new_due);
        let department = def
            .timer(name)
            .and_then(|spec| spec.responsible.as_deref())
            .map(|var| view::var(&row, var))
            .unwrap_or_default();
        let group = groups.entry((region.clone(), department.clone())).or_insert_with(|| ReplanGroup {
            region_code: region.clone(),
            department,
            ..ReplanGroup::default()
        });
        match new_due.cmp(&old_due) {
            std::cmp::Ordering::Less => group.earlier += 1,
            std::cmp::Ordering::Greater => group.later += 1,
            std::cmp::Ordering::Equal => group.confirmed += 1,
        }
        if new_due != &old_due {
            reply.timers_moved += 1;
            if reply.first_moves.len() < FIRST_MOVES {
                reply.first_moves.push(ReplanMove {
                    instance_id: id.to_owned(),
                    timer: name.clone(),
                    old_due: Some(view::instant(old_due)),
                    new_due: Some(view::instant(*new_due)),
                });
            }
        }
    }
    Ok(())
}

/// The years a region's status lists: every official one, and provisional ones from the first
/// year after the last official one up to next year.
fn years_of(calendars: &Calendars, code: &str, today: NaiveDate) -> Vec<(i32, bool)> {
    let calendar = calendars.region(code);
    let mut years: Vec<(i32, bool)> = calendar.years().map(|y| (y, true)).collect();
    let last_official = years.last().map_or(today.year() - 1, |(y, _)| *y);
    for y in (last_official + 1)..=(today.year() + 1) {
        if calendar.is_provisional(y) || calendar.policy() == calendar::Policy::Refuse {
            years.push((y, false));
        }
    }
    years
}

/// `CalendarStatus`.
pub async fn status(shared: &Shared, warn_from: (u32, u32)) -> Result<CalendarStatusReply, Status> {
    let files = shared.reader.calendar_files().await.map_err(|e| status::read_error(&e))?;
    let replans = shared.reader.replans().await.map_err(|e| status::read_error(&e))?;
    let provisional_timers = shared.reader.provisional_timers().await.map_err(|e| status::read_error(&e))?;
    let calendars = shared.calendars();
    let today = shared.today(calendars.national());
    let latest = |key: &FileKey| files.iter().rev().find(|f| &f.file.key == key);
    let mut regions = Vec::new();
    let mut codes = vec![""];
    codes.extend(calendars.region_codes());
    for code in codes {
        let calendar = calendars.region(code);
        let years = years_of(&calendars, code, today)
            .into_iter()
            .map(|(year, official)| {
                let f = latest(&FileKey::Year(year)).filter(|_| official);
                let status = match (official, calendars.policy()) {
                    (true, _) => "official",
                    (false, calendar::Policy::Provisional) => "provisional",
                    (false, calendar::Policy::Refuse) => "missing (refused)",
                };
                CalendarYear {
                    year,
                    status: status.to_owned(),
                    source: f.map(|f| f.file.source.clone()).unwrap_or_default(),
                    version: f.map_or(0, |f| f.version),
                    loaded_by: f.map(|f| f.loaded_by.clone()).unwrap_or_default(),
                    loaded_at: f.map(|f| view::instant(f.loaded_at)),
                }
            })
            .collect();
        let region_file = latest(&FileKey::Region(code.to_owned()));
        regions.push(CalendarRegion {
            region: if code.is_empty() { "national".to_owned() } else { code.to_owned() },
            name: match region_file {
                Some(f) => format!("{} (region file v{}, loaded by {})", calendar.region(), f.version, f.loaded_by),
                None => calendar.region().to_owned(),
            },
            years,
            official_days_left: calendar::official_days_left(calendar, today),
        });
    }
    Ok(CalendarStatusReply {
        policy: match calendars.policy() {
            calendar::Policy::Provisional => "provisional",
            calendar::Policy::Refuse => "refuse",
        }
        .to_owned(),
        regions,
        replans: replans
            .into_iter()
            .map(|j| CalendarReplan {
                generation: j.generation,
                calendar: j.label,
                changed_from: j.first.to_string(),
                changed_to: j.last.to_string(),
                instances_replanned: j.moved,
                done: j.done,
            })
            .collect(),
        warnings: calendar::warnings(&calendars, today, warn_from),
        provisional_timers,
    })
}
