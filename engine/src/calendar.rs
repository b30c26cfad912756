//! The working-day calendar: which dates are working days in a region, and deadline arithmetic
//! over them.
//!
//! Owns the year files under `ops/calendars/` (one per State Council notice) and the region
//! files under `ops/calendars/regions/`. Everything here is pure data and arithmetic: no clock,
//! no I/O beyond reading the files handed to [`Calendars::from_dir`].
//!
//! # Contract
//! - A year with a State Council notice loaded is *official*. A year without one, inside
//!   [`provisional::FIRST`]..=[`provisional::LAST`], is *provisional*: weekends plus the days
//!   off the national rules fix by date ([`provisional`]). Under [`Policy::Refuse`] a
//!   provisional year answers like an absent one. Any other year is [`Error::YearNotLoaded`]
//!   naming that year: never a weekends-only guess.
//! - [`Calendar::provisional_between`] tells whether arithmetic over a range of dates used a
//!   provisional year, so that every deadline computed on a guess is marked as one.
//! - [`Calendar::add_working_days`]`(d, n)` is the n-th working day strictly after `d`
//!   (`n = 0` gives `d`). [`Calendar::working_days_between`]`(a, b)` counts working days in
//!   `(a, b]`, so `working_days_between(d, add_working_days(d, n)) == n`.
//!
//! Lookups are O(1) and additions O(log 365) per year crossed: every loaded year keeps a prefix
//! count of its working days, because deadline arithmetic sits on the command path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::Deserialize;

pub mod provisional;
pub mod replan;

/// Parses exactly `YYYY-MM-DD` (chrono alone also takes `2026-9-1`, which callers should not
/// get away with: the same date must always be written the same way).
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// The time zone every deadline is computed in unless a region says otherwise.
pub const DEFAULT_TZ: Tz = chrono_tz::Asia::Shanghai;

/// Calendar errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The date's year has no calendar data.
    #[error("year {year} is not loaded in the working-day calendar of {region}")]
    YearNotLoaded {
        /// The missing year.
        year: i32,
        /// The region whose calendar was asked.
        region: String,
    },
    /// A calendar file could not be read or is malformed.
    #[error("{file}: {message}")]
    Invalid {
        /// The file (or embedded name) at fault.
        file: String,
        /// What is wrong, in words.
        message: String,
    },
    /// The arithmetic left the range chrono can represent.
    #[error("date out of range")]
    OutOfRange,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YearFile {
    year: toml::Spanned<i32>,
    source: String,
    #[serde(default)]
    holidays: Vec<HolidayEntry>,
    #[serde(default)]
    workdays: Vec<WorkdayEntry>,
}

type Date = toml::Spanned<toml::value::Datetime>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidayEntry {
    date: Date,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkdayEntry {
    date: Date,
    #[serde(rename = "for", default)]
    for_holiday: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    code: toml::Spanned<String>,
    #[serde(default)]
    name: String,
    #[serde(default = "national")]
    inherits: toml::Spanned<String>,
    #[serde(default)]
    timezone: Option<toml::Spanned<String>>,
    #[serde(default)]
    holidays: Vec<HolidayEntry>,
    #[serde(default)]
    workdays: Vec<WorkdayEntry>,
}

fn national() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "national".to_owned())
}

/// A file being read, for errors that name `FILE:LINE`.
#[derive(Clone, Copy)]
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// An error at byte `offset` of the file.
    fn at(&self, offset: usize, message: String) -> Error {
        let line = self.text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1);
        Error::Invalid { file: format!("{}:{line}", self.name), message }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            self.at(offset, e.message().trim().to_owned())
        })
    }

    fn date(&self, value: &Date) -> Result<NaiveDate, Error> {
        let at = value.span().start;
        match (value.get_ref().date, value.get_ref().time, value.get_ref().offset) {
            (Some(d), None, None) => NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                .ok_or_else(|| self.at(at, format!("{} is not a date", value.get_ref()))),
            _ => Err(self.at(at, format!("{} must be a plain date such as 2026-10-01", value.get_ref()))),
        }
    }
}

/// A named special day (a holiday or a make-up working day) as listed in a calendar file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialDay {
    /// The date.
    pub date: NaiveDate,
    /// The holiday it belongs to (for a make-up day: the holiday it makes up for).
    pub name: String,
}

/// One loaded year: its working days as a prefix count over the days of the year.
#[derive(Debug, Clone)]
struct Year {
    /// `prefix[i]` = number of working days among ordinal days `1..=i` (index 0 is 0).
    prefix: Vec<u16>,
    /// No notice is loaded for the year: its days off are the statutory ones only.
    provisional: bool,
}

impl Year {
    fn total(&self) -> u32 {
        u32::from(*self.prefix.last().unwrap_or(&0))
    }
}

/// What to do with a date in a year that has no notice loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Compute on the provisional calendar and mark the result provisional (the default: cases
    /// keep moving across New Year).
    #[default]
    Provisional,
    /// Refuse, as if the year did not exist ([`Error::YearNotLoaded`]).
    Refuse,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "provisional" => Ok(Policy::Provisional),
            "refuse" => Ok(Policy::Refuse),
            other => Err(format!("calendar policy must be provisional or refuse, not {other:?}")),
        }
    }
}

/// The calendar of one region: weekends, holidays and make-up working days per loaded year.
#[derive(Debug, Clone)]
pub struct Calendar {
    region: String,
    code: String,
    tz: Tz,
    policy: Policy,
    /// Statutory days off of the provisional years.
    statutory: BTreeMap<NaiveDate, &'static str>,
    sources: BTreeMap<i32, String>,
    holidays: BTreeMap<NaiveDate, String>,
    workdays: BTreeMap<NaiveDate, String>,
    years: BTreeMap<i32, Year>,
}

fn invalid(file: &str, message: String) -> Error {
    Error::Invalid { file: file.to_owned(), message }
}

fn is_weekend(date: NaiveDate) -> bool {
    matches!(date.weekday(), Weekday::Sat | Weekday::Sun)
}

impl Calendar {
    fn empty(region: &str, tz: Tz) -> Self {
        Calendar {
            region: region.to_owned(),
            code: String::new(),
            tz,
            policy: Policy::Provisional,
            statutory: BTreeMap::new(),
            sources: BTreeMap::new(),
            holidays: BTreeMap::new(),
            workdays: BTreeMap::new(),
            years: BTreeMap::new(),
        }
    }

    /// The region this calendar answers for (`national` for the country-wide one).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The region code (empty for the national calendar).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The region's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The years with an official (loaded) notice, ascending.
    pub fn years(&self) -> impl Iterator<Item = i32> + '_ {
        self.sources.keys().copied()
    }

    /// Whether `year` has an official notice loaded.
    pub fn has_year(&self, year: i32) -> bool {
        self.sources.contains_key(&year)
    }

    /// Whether a date in `year` is answered from the provisional calendar (no notice loaded,
    /// inside the provisional range, and the policy allows it).
    pub fn is_provisional(&self, year: i32) -> bool {
        self.policy == Policy::Provisional && self.years.get(&year).is_some_and(|y| y.provisional)
    }

    /// Whether any date in `from..=to` is in a provisional year.
    pub fn provisional_between(&self, from: NaiveDate, to: NaiveDate) -> bool {
        (from.year().min(to.year())..=from.year().max(to.year())).any(|y| self.is_provisional(y))
    }

    /// The policy for years with no notice.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The notice a year's data was transcribed from.
    pub fn source(&self, year: i32) -> Option<&str> {
        self.sources.get(&year).map(String::as_str)
    }

    fn add_days(&mut self, src: Source<'_>, holidays: &[HolidayEntry], workdays: &[WorkdayEntry]) -> Result<(), Error> {
        for h in holidays {
            let date = src.date(&h.date)?;
            if self.workdays.contains_key(&date) {
                return Err(
                    src.at(h.date.span().start, format!("{date} is listed both as a holiday and as a working day"))
                );
            }
            self.holidays.insert(date, h.name.clone());
        }
        for w in workdays {
            let date = src.date(&w.date)?;
            if !is_weekend(date) {
                return Err(src.at(
                    w.date.span().start,
                    format!("make-up working day {date} is a {}, not a weekend day", date.weekday()),
                ));
            }
            if self.holidays.contains_key(&date) {
                return Err(
                    src.at(w.date.span().start, format!("{date} is listed both as a holiday and as a working day"))
                );
            }
            self.workdays.insert(date, w.for_holiday.clone());
        }
        Ok(())
    }

    /// Adds a year file's days; answers the file as loaded.
    fn load_year_file(&mut self, src: Source<'_>) -> Result<CalendarFile, Error> {
        let parsed: YearFile = src.parse()?;
        let year = *parsed.year.get_ref();
        let year_at = parsed.year.span().start;
        if !(1900..=9999).contains(&year) {
            return Err(src.at(year_at, format!("year {year} is out of range")));
        }
        if self.sources.contains_key(&year) {
            return Err(src.at(year_at, format!("year {year} is loaded twice")));
        }
        if parsed.source.trim().is_empty() {
            return Err(src.at(0, "source must name the notice the file was transcribed from".to_owned()));
        }
        for date in parsed.holidays.iter().map(|h| &h.date).chain(parsed.workdays.iter().map(|w| &w.date)) {
            let day = src.date(date)?;
            if (day.year() - year).abs() > 1 {
                return Err(src.at(date.span().start, format!("{day} is too far from year {year}")));
            }
        }
        self.add_days(src, &parsed.holidays, &parsed.workdays)?;
        self.sources.insert(year, parsed.source.clone());
        Ok(CalendarFile {
            key: FileKey::Year(year),
            name: src.name.to_owned(),
            text: src.text.to_owned(),
            source: parsed.source,
        })
    }

    /// Rebuilds the prefix counts of every official and provisional year from the day maps.
    fn index(&mut self) {
        self.statutory.clear();
        for year in provisional::FIRST..=provisional::LAST {
            if !self.sources.contains_key(&year) {
                self.statutory.extend(provisional::statutory_days(year));
            }
        }
        let mut years: Vec<(i32, bool)> = self.sources.keys().map(|y| (*y, false)).collect();
        years.extend(
            (provisional::FIRST..=provisional::LAST).filter(|y| !self.sources.contains_key(y)).map(|y| (y, true)),
        );
        self.years.clear();
        for (year, provisional) in years {
            let mut prefix = Vec::with_capacity(367);
            prefix.push(0u16);
            let mut count = 0u16;
            // Loading admits only years 1900–9999, all of which chrono represents.
            let Some(mut date) = NaiveDate::from_ymd_opt(year, 1, 1) else { continue };
            while date.year() == year {
                if self.raw_is_working(date) {
                    count += 1;
                }
                prefix.push(count);
                date = date.succ_opt().unwrap_or(NaiveDate::MAX);
                if date == NaiveDate::MAX {
                    break;
                }
            }
            self.years.insert(year, Year { prefix, provisional });
        }
    }

    fn raw_is_working(&self, date: NaiveDate) -> bool {
        self.workdays.contains_key(&date)
            || (!is_weekend(date) && !self.holidays.contains_key(&date) && !self.statutory.contains_key(&date))
    }

    fn year(&self, year: i32) -> Result<&Year, Error> {
        self.years
            .get(&year)
            .filter(|y| !y.provisional || self.policy == Policy::Provisional)
            .ok_or_else(|| Error::YearNotLoaded { year, region: self.region.clone() })
    }

    /// Whether `date` is a working day.
    pub fn is_working_day(&self, date: NaiveDate) -> Result<bool, Error> {
        let year = self.year(date.year())?;
        let ord = date.ordinal() as usize;
        Ok(year.prefix[ord] != year.prefix[ord - 1])
    }

    /// Working days of `date`'s year up to and including `date`.
    fn rank(&self, date: NaiveDate) -> Result<u32, Error> {
        Ok(u32::from(self.year(date.year())?.prefix[date.ordinal() as usize]))
    }

    /// The `n`-th working day strictly after `date`; `n = 0` gives `date` itself.
    pub fn add_working_days(&self, date: NaiveDate, n: u32) -> Result<NaiveDate, Error> {
        let mut year_no = date.year();
        let mut year = self.year(year_no)?;
        if n == 0 {
            return Ok(date);
        }
        let mut target = u64::from(self.rank(date)?) + u64::from(n);
        loop {
            let total = u64::from(year.total());
            if target <= total {
                // The first ordinal whose prefix count reaches the target is the wanted day.
                let ord = year.prefix.partition_point(|&c| u64::from(c) < target);
                let ord = u32::try_from(ord).map_err(|_| Error::OutOfRange)?;
                return NaiveDate::from_yo_opt(year_no, ord).ok_or(Error::OutOfRange);
            }
            target -= total;
            year_no = year_no.checked_add(1).ok_or(Error::OutOfRange)?;
            year = self.year(year_no)?;
        }
    }

    /// Working days `d` with `from < d <= to`; negative when `to < from`.
    pub fn working_days_between(&self, from: NaiveDate, to: NaiveDate) -> Result<i64, Error> {
        if to < from {
            return self.working_days_between(to, from).map(|n| -n);
        }
        let mut count = i64::from(self.rank(to)?) - i64::from(self.rank(from)?);
        for year in from.year()..to.year() {
            count += i64::from(self.year(year)?.total());
        }
        Ok(count)
    }

    /// The last instant (millisecond resolution) of `date` in the region's time zone.
    pub fn end_of_day(&self, date: NaiveDate) -> Result<DateTime<Utc>, Error> {
        let next = date.succ_opt().ok_or(Error::OutOfRange)?;
        Ok(self.at_time(next, NaiveTime::MIN)? - Duration::milliseconds(1))
    }

    /// The instant of `time` on `date` in the region's time zone. China has no daylight-saving
    /// time, but a region may name another zone: a time that does not exist that day resolves
    /// to the instant after the gap, an ambiguous one to the earlier instant.
    pub fn at_time(&self, date: NaiveDate, time: NaiveTime) -> Result<DateTime<Utc>, Error> {
        let local = date.and_time(time);
        match self.tz.from_local_datetime(&local) {
            chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
            chrono::LocalResult::Ambiguous(a, _) => Ok(a.with_timezone(&Utc)),
            chrono::LocalResult::None => {
                let later = local + Duration::hours(1);
                self.tz.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc)).ok_or(Error::OutOfRange)
            }
        }
    }

    /// The calendar date of an instant in the region's time zone.
    pub fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        instant.with_timezone(&self.tz).date_naive()
    }

    /// The holidays of `year` (dates in that calendar year), ascending.
    pub fn holidays_in(&self, year: i32) -> Result<Vec<SpecialDay>, Error> {
        if self.year(year)?.provisional {
            let statutory: BTreeMap<NaiveDate, String> =
                self.statutory.iter().map(|(d, n)| (*d, (*n).to_owned())).collect();
            let mut days = special_in(&statutory, year);
            days.extend(special_in(&self.holidays, year));
            days.sort_by_key(|d| d.date);
            return Ok(days);
        }
        Ok(special_in(&self.holidays, year))
    }

    /// The make-up working days of `year`, ascending.
    pub fn workdays_in(&self, year: i32) -> Result<Vec<SpecialDay>, Error> {
        self.year(year)?;
        Ok(special_in(&self.workdays, year))
    }
}

fn special_in(map: &BTreeMap<NaiveDate, String>, year: i32) -> Vec<SpecialDay> {
    let (Some(first), Some(last)) = (NaiveDate::from_ymd_opt(year, 1, 1), NaiveDate::from_ymd_opt(year, 12, 31)) else {
        return Vec::new();
    };
    map.range(first..=last).map(|(date, name)| SpecialDay { date: *date, name: name.clone() }).collect()
}

/// The dates on which two calendar sets disagree — a working day in one and not the other, or
/// a year provisional in one and official in the other (the whole year) — as the smallest
/// range holding them all; `None` when they agree everywhere. Compares every calendar of
/// either set (the national one and each region's); policies are ignored.
pub fn changed_range(old: &Calendars, new: &Calendars) -> Option<(NaiveDate, NaiveDate)> {
    let mut codes: Vec<&str> = old.regions.keys().chain(new.regions.keys()).map(String::as_str).collect();
    codes.sort_unstable();
    codes.dedup();
    let pairs = std::iter::once((&old.national, &new.national))
        .chain(codes.into_iter().map(|c| (old.region(c), new.region(c))));
    let mut range: Option<(NaiveDate, NaiveDate)> = None;
    let mut widen = |a: NaiveDate, b: NaiveDate| {
        range = Some(match range {
            None => (a, b),
            Some((x, y)) => (x.min(a), y.max(b)),
        });
    };
    for (a, b) in pairs {
        let mut years: Vec<i32> = a.years.keys().chain(b.years.keys()).copied().collect();
        years.sort_unstable();
        years.dedup();
        for year in years {
            let (Some(first), Some(last)) =
                (NaiveDate::from_ymd_opt(year, 1, 1), NaiveDate::from_ymd_opt(year, 12, 31))
            else {
                continue;
            };
            match (a.years.get(&year), b.years.get(&year)) {
                (Some(x), Some(y)) if x.provisional == y.provisional => {
                    // The first and last ordinal where the working-day status differs.
                    let differs =
                        |ord: usize| (x.prefix[ord] - x.prefix[ord - 1]) != (y.prefix[ord] - y.prefix[ord - 1]);
                    let days = x.prefix.len().min(y.prefix.len());
                    let lo = (1..days).find(|&o| differs(o));
                    let hi = (1..days).rev().find(|&o| differs(o));
                    if let (Some(lo), Some(hi)) = (lo, hi) {
                        let day = |o: usize| u32::try_from(o).ok().and_then(|o| NaiveDate::from_yo_opt(year, o));
                        if let (Some(lo), Some(hi)) = (day(lo), day(hi)) {
                            widen(lo, hi);
                        }
                    }
                }
                _ => widen(first, last),
            }
        }
    }
    range
}

/// Days from `today` to the last day of the last year `calendar` has an official notice for
/// (negative once past it).
pub fn official_days_left(calendar: &Calendar, today: NaiveDate) -> i64 {
    let last = calendar.years().last().and_then(|y| NaiveDate::from_ymd_opt(y, 12, 31));
    last.map_or(-(i64::from(today.ordinal())), |last| (last - today).num_days())
}

/// The default date from which a missing notice for next year is warned about: 1 November.
pub const WARN_FROM: (u32, u32) = (11, 1);

/// What an operator should do about the calendars today: a year in force or coming (from
/// `warn_from`, month and day) with no official notice.
pub fn warnings(calendars: &Calendars, today: NaiveDate, warn_from: (u32, u32)) -> Vec<String> {
    let national = calendars.national();
    let mut out = Vec::new();
    let this = today.year();
    let verb = match calendars.policy() {
        Policy::Provisional => "are computed on the provisional calendar (statutory days only) and marked provisional",
        Policy::Refuse => "are refused (--calendar-policy refuse)",
    };
    if !national.has_year(this) {
        out.push(format!(
            "{this} has no official calendar: deadlines in {this} {verb}; load {this}.toml              (shenguan calendar load ops/calendars/{this}.toml)"
        ));
    }
    let warn = NaiveDate::from_ymd_opt(this, warn_from.0, warn_from.1).is_some_and(|d| today >= d);
    if warn && !national.has_year(this + 1) {
        let days = official_days_left(national, today);
        out.push(format!(
            "{next} has no official calendar and {days} days of official calendar are left: deadlines in {next} {verb}; \
             when the State Council publishes its notice for {next}, load it (shenguan calendar load ops/calendars/{next}.toml)",
            next = this + 1
        ));
    }
    out
}

/// Every region's calendar: the national one and the regions' own.
#[derive(Debug, Clone)]
pub struct Calendars {
    national: Arc<Calendar>,
    regions: HashMap<String, Arc<Calendar>>,
    generation: u64,
    policy: Policy,
    files: Vec<CalendarFile>,
}

/// The calendars in force, replaced as a whole when a file is loaded: readers take the current
/// set and keep it for what they are doing (a batch, a request), so one computation never
/// mixes two sets.
#[derive(Debug)]
pub struct Live {
    current: std::sync::RwLock<Arc<Calendars>>,
}

impl Live {
    /// Calendars in force from now on.
    pub fn new(calendars: Calendars) -> Self {
        Live { current: std::sync::RwLock::new(Arc::new(calendars)) }
    }

    /// The set in force.
    pub fn current(&self) -> Arc<Calendars> {
        // A poisoned lock only means a panic elsewhere while holding it; the Arc inside is whole.
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Sets the policy for years without a notice.
    pub fn set_policy(&self, policy: Policy) {
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Arc::new((**current).clone().with_policy(policy));
    }

    /// Puts `calendars` in force (their policy becomes that of the set they replace).
    pub fn replace(&self, calendars: Calendars) {
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let policy = current.policy();
        *current = Arc::new(calendars.with_policy(policy));
    }
}

/// What a calendar file is for: a national year, or a region's own days.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKey {
    /// A year file (`2027.toml`).
    Year(i32),
    /// A region file (`regions/320700.toml`), by region code.
    Region(String),
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileKey::Year(y) => write!(f, "national {y}"),
            FileKey::Region(code) => write!(f, "region {code}"),
        }
    }
}

/// A calendar file as stored and loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarFile {
    /// The year or region it defines.
    pub key: FileKey,
    /// The name it was loaded under (for errors).
    pub name: String,
    /// The TOML text.
    pub text: String,
    /// The notice it was transcribed from (a region file: its name).
    pub source: String,
}

impl CalendarFile {
    /// Reads what kind of file `text` is (a year file has `year`, a region file `code`) and
    /// checks it alone; the whole set is checked by [`Calendars::from_files`].
    pub fn parse(name: &str, text: &str) -> Result<Self, Error> {
        let src = Source { name, text };
        let table: toml::Table = src.parse()?;
        let calendars = if table.contains_key("year") {
            Calendars::from_sources(&[(name, text)], &[])?
        } else if table.contains_key("code") {
            Calendars::from_sources(&[], &[(name, text)])?
        } else {
            return Err(src.at(0, "neither a year file (`year = …`) nor a region file (`code = …`)".to_owned()));
        };
        // One file in, so exactly one described.
        calendars.files.into_iter().next().ok_or_else(|| src.at(0, "no calendar in the file".to_owned()))
    }
}

/// The data files shipped in the binary (`ops/calendars` at build time), as (name, text) pairs.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_calendars.rs"));
}

impl Calendars {
    /// Builds the calendars from year files and region files given as (name, text) pairs.
    /// Names are used only in error messages.
    pub fn from_sources(years: &[(&str, &str)], regions: &[(&str, &str)]) -> Result<Self, Error> {
        let mut national = Calendar::empty("national", DEFAULT_TZ);
        let mut files = Vec::with_capacity(years.len() + regions.len());
        for (name, text) in years {
            files.push(national.load_year_file(Source { name, text })?);
        }
        national.index();
        let mut by_code = HashMap::new();
        for (name, text) in regions {
            let src = Source { name, text };
            let parsed: RegionFile = src.parse()?;
            if parsed.inherits.get_ref() != "national" {
                return Err(src.at(
                    parsed.inherits.span().start,
                    format!("a region can only inherit from \"national\", not {:?}", parsed.inherits.get_ref()),
                ));
            }
            let code = parsed.code.get_ref();
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(src.at(parsed.code.span().start, format!("region code {code:?} must be digits")));
            }
            let tz = match &parsed.timezone {
                Some(tz) => tz
                    .get_ref()
                    .parse::<Tz>()
                    .map_err(|_| src.at(tz.span().start, format!("unknown time zone {:?}", tz.get_ref())))?,
                None => DEFAULT_TZ,
            };
            let mut calendar = national.clone();
            calendar.region = if parsed.name.is_empty() { code.clone() } else { format!("{code} {}", parsed.name) };
            calendar.code = code.clone();
            calendar.tz = tz;
            calendar.add_days(src, &parsed.holidays, &parsed.workdays)?;
            calendar.index();
            if by_code.insert(code.clone(), Arc::new(calendar)).is_some() {
                return Err(src.at(parsed.code.span().start, format!("region {code} is defined twice")));
            }
            let source = if parsed.name.is_empty() { code.clone() } else { parsed.name.clone() };
            files.push(CalendarFile {
                key: FileKey::Region(code.clone()),
                name: (*name).to_owned(),
                text: (*text).to_owned(),
                source,
            });
        }
        Ok(Calendars {
            national: Arc::new(national),
            regions: by_code,
            generation: 0,
            policy: Policy::Provisional,
            files,
        })
    }

    /// Builds the calendars from stored files (each a year or a region file; a later file with
    /// the same key replaces an earlier one), as of `generation`.
    pub fn from_files(files: &[CalendarFile], generation: u64) -> Result<Self, Error> {
        let mut latest: BTreeMap<&FileKey, &CalendarFile> = BTreeMap::new();
        for f in files {
            latest.insert(&f.key, f);
        }
        let mut years = Vec::new();
        let mut regions = Vec::new();
        for (key, f) in latest {
            match key {
                FileKey::Year(_) => years.push((f.name.as_str(), f.text.as_str())),
                FileKey::Region(_) => regions.push((f.name.as_str(), f.text.as_str())),
            }
        }
        let mut calendars = Self::from_sources(&years, &regions)?;
        calendars.generation = generation;
        Ok(calendars)
    }

    /// The same calendars, labelled as generation `generation`.
    #[must_use]
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The same calendars under `policy`.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        let set = |c: &mut Arc<Calendar>| Arc::make_mut(c).policy = policy;
        set(&mut self.national);
        self.regions.values_mut().for_each(set);
        self
    }

    /// The policy for years without a notice.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The files these calendars were built from (a year file replaced by a later one with the
    /// same key is not among them).
    pub fn files(&self) -> &[CalendarFile] {
        &self.files
    }

    /// Which stored calendar set these are: the number of files loaded into the database when
    /// they were built (0 for calendars not from a database). History entries record it, so
    /// that replay computes with the calendar each entry was computed with.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The calendars compiled into the binary from `ops/calendars/`.
    pub fn embedded() -> Result<Self, Error> {
        Self::from_sources(embedded::YEARS, embedded::REGIONS)
    }

    /// Reads `<dir>/<year>.toml` and `<dir>/regions/*.toml`.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        let read_all = |dir: &Path, want_year: bool| -> Result<Vec<(String, String)>, Error> {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if !want_year && e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(invalid(&dir.display().to_string(), e.to_string())),
            };
            for entry in entries {
                let path = entry.map_err(|e| invalid(&dir.display().to_string(), e.to_string()))?.path();
                let is_toml = path.extension().is_some_and(|e| e == "toml");
                let stem_is_year = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()));
                if is_toml && (!want_year || stem_is_year) {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| invalid(&path.display().to_string(), e.to_string()))?;
                    out.push((path.display().to_string(), text));
                }
            }
            out.sort();
            Ok(out)
        };
        let years = read_all(dir, true)?;
        let regions = read_all(&dir.join("regions"), false)?;
        let years: Vec<(&str, &str)> = years.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let regions: Vec<(&str, &str)> = regions.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        Self::from_sources(&years, &regions)
    }

    /// The national calendar.
    pub fn national(&self) -> &Arc<Calendar> {
        &self.national
    }

    /// The calendar of a region: its own when it has a file, else the national one, which
    /// every region follows unless it adds days of its own.
    pub fn region(&self, code: &str) -> &Arc<Calendar> {
        self.regions.get(code).unwrap_or(&self.national)
    }

    /// Region codes that have their own file.
    pub fn region_codes(&self) -> Vec<&str> {
        let mut codes: Vec<&str> = self.regions.keys().map(String::as_str).collect();
        codes.sort_unstable();
        codes
    }
}

#[cfg(test)]
mod tests;
