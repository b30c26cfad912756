//! Cron-driven timers: when a timer declared with `cron = …` is due next.
//!
//! The schedule is a cron expression (the `cron` crate's syntax; five fields `min hour dom mon
//! dow` are read with second 0, six or seven fields as the crate reads them), evaluated in the
//! region calendar's time zone (Asia/Shanghai). With `working_days_only`, an occurrence on a day
//! off moves to the next working day of the instance's region calendar at the same time of
//! day. The machine re-arms a cron timer after it fires, for its next occurrence after the one
//! that fired (not after the instant it fired: a late firing must skip no occurrence), so an
//! instance keeps its schedule as long as it stays where the timer lives.
//!
//! A moved occurrence remembers the dates it read, like a working-day deadline, so a calendar
//! loaded later moves it again.

use std::str::FromStr;

use chrono::{NaiveDate, TimeZone};

use super::expr::{EvalError, Operand, Planned, Scope};
use super::Value;
use crate::clock::{self, Millis};

/// A parsed cron expression.
pub type Cron = cron::Schedule;

/// Reads a schedule. Five fields are minutes to weekdays (second 0).
pub fn parse(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {}", text.trim()),
        6 | 7 => text.trim().to_owned(),
        n => {
            return Err(format!(
                "{text:?} has {n} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or 6–7 (with seconds first, year last)"
            ))
        }
    };
    Cron::from_str(&full).map_err(|e| format!("{text:?} is not a cron schedule: {e}"))
}

/// A `cron = …` timer's schedule, as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSpec {
    /// A literal schedule (`'0 9 * * MON'`) or a string variable holding one.
    pub schedule: Operand,
    /// `true`/`false`, or a bool variable.
    pub working_days_only: Operand,
    /// Source text, for diagrams.
    pub text: String,
}

impl CronSpec {
    /// The next occurrence strictly after `scope.now`, moved to a working day if asked.
    pub fn plan(&self, scope: &Scope<'_>) -> Result<Planned, EvalError> {
        let text = match scope.require(&self.schedule)? {
            Value::Str(s) => s,
            _ => return Err(EvalError::Unset("schedule".into())),
        };
        let working_only = matches!(scope.require(&self.working_days_only)?, Value::Bool(true));
        let schedule = parse(&text).map_err(EvalError::Schedule)?;
        next(&schedule, scope.now, scope.calendar, working_only)
    }
}

/// The first occurrence of `schedule` strictly after `after`, in the calendar's time zone;
/// with `working_only`, moved from a day off to the next working day at the same time.
pub fn next(
    schedule: &Cron,
    after: Millis,
    calendar: &crate::calendar::Calendar,
    working_only: bool,
) -> Result<Planned, EvalError> {
    let tz = calendar.tz();
    let start = tz.from_utc_datetime(&clock::to_datetime(after).naive_utc());
    let occurrence = schedule
        .after(&start)
        .next()
        .ok_or_else(|| EvalError::Schedule("the schedule has no occurrence after now".into()))?;
    let due = clock::from_datetime(occurrence.with_timezone(&chrono::Utc));
    if !working_only {
        return Ok(Planned { due, days: None, provisional: false });
    }
    let date: NaiveDate = occurrence.date_naive();
    if calendar.is_working_day(date)? {
        return Ok(Planned { due, days: Some((date, date)), provisional: calendar.provisional_between(date, date) });
    }
    // The first working day strictly after a day off.
    let moved = calendar.add_working_days(date, 1)?;
    let instant = calendar.at_time(moved, occurrence.time())?;
    Ok(Planned {
        due: clock::from_datetime(instant),
        days: Some((date, moved)),
        provisional: calendar.provisional_between(date, moved),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Calendars;

    fn at(text: &str) -> Millis {
        clock::from_datetime(chrono::DateTime::parse_from_rfc3339(text).expect("instant").with_timezone(&chrono::Utc))
    }

    #[test]
    fn five_fields_are_minutes_to_weekdays_and_bad_ones_say_why() {
        assert!(parse("0 9 * * MON").is_ok());
        assert!(parse("0 0 9 * * MON").is_ok());
        assert!(parse("0 9 * *").is_err_and(|e| e.contains("4 fields")));
        assert!(parse("0 25 * * *").is_err());
        // Parses, but never falls due: an error at once, not a search without end.
        let calendars = Calendars::embedded().expect("calendars");
        let never = parse("0 0 30 2 *").expect("30 February parses");
        assert!(matches!(next(&never, 0, calendars.region("320700"), false), Err(EvalError::Schedule(_))));
    }

    #[test]
    fn a_run_on_a_holiday_moves_to_the_next_working_day_at_the_same_time() {
        let calendars = Calendars::embedded().expect("calendars");
        let calendar = calendars.region("320700");
        // Daily at 09:00; 1–7 October 2026 are holidays.
        let daily = parse("0 9 * * *").expect("schedule");
        let plain = next(&daily, at("2026-09-30T02:00:00+08:00"), calendar, false).expect("next");
        assert_eq!(plain.due, at("2026-09-30T09:00:00+08:00"));
        let p = next(&daily, at("2026-09-30T10:00:00+08:00"), calendar, true).expect("next");
        assert_eq!(p.due, at("2026-10-08T09:00:00+08:00"), "the first working day after the holiday");
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 10, d).expect("date");
        assert_eq!(p.days, Some((day(1), day(8))), "the dates it read, for a later calendar to move it again");
        // A Saturday that is a make-up working day (10 October 2026) is a working day.
        let saturday = parse("0 9 * * SAT").expect("schedule");
        let p = next(&saturday, at("2026-10-03T10:00:00+08:00"), calendar, true).expect("next");
        assert_eq!(p.due, at("2026-10-10T09:00:00+08:00"), "the make-up Saturday is a working day");
    }
}
