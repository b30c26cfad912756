//! The working-day calendar: which dates are working days in a region, and deadline arithmetic
//! over them.
//!
//! Owns the year files under `ops/calendars/` (one per State Council notice) and the region
//! files under `ops/calendars/regions/`. Everything here is pure data and arithmetic: no clock,
//! no I/O beyond reading the files handed to [`Calendars::from_dir`].
//!
//! # Contract
//! - A question about a date whose year is not loaded is [`Error::YearNotLoaded`] naming that
//!   year. There is no weekends-only fallback: a deadline computed from a guess would be wrong
//!   in a way nobody sees until it is too late.
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
    year: i32,
    source: String,
    #[serde(default)]
    holidays: Vec<HolidayEntry>,
    #[serde(default)]
    workdays: Vec<WorkdayEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidayEntry {
    date: toml::value::Datetime,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkdayEntry {
    date: toml::value::Datetime,
    #[serde(rename = "for", default)]
    for_holiday: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    code: String,
    #[serde(default)]
    name: String,
    #[serde(default = "national")]
    inherits: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    holidays: Vec<HolidayEntry>,
    #[serde(default)]
    workdays: Vec<WorkdayEntry>,
}

fn national() -> String {
    "national".to_owned()
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
}

impl Year {
    fn total(&self) -> u32 {
        u32::from(*self.prefix.last().unwrap_or(&0))
    }
}

/// The calendar of one region: weekends, holidays and make-up working days per loaded year.
#[derive(Debug, Clone)]
pub struct Calendar {
    region: String,
    tz: Tz,
    sources: BTreeMap<i32, String>,
    holidays: BTreeMap<NaiveDate, String>,
    workdays: BTreeMap<NaiveDate, String>,
    years: BTreeMap<i32, Year>,
}

fn toml_date(file: &str, value: &toml::value::Datetime) -> Result<NaiveDate, Error> {
    match (value.date, value.time, value.offset) {
        (Some(d), None, None) => NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
            .ok_or_else(|| invalid(file, format!("{value} is not a date"))),
        _ => Err(invalid(file, format!("{value} must be a plain date such as 2026-10-01"))),
    }
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
            tz,
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

    /// The region's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The loaded years, ascending.
    pub fn years(&self) -> impl Iterator<Item = i32> + '_ {
        self.years.keys().copied()
    }

    /// Whether `year` has data.
    pub fn has_year(&self, year: i32) -> bool {
        self.years.contains_key(&year)
    }

    /// The notice a year's data was transcribed from.
    pub fn source(&self, year: i32) -> Option<&str> {
        self.sources.get(&year).map(String::as_str)
    }

    fn add_days(&mut self, file: &str, holidays: &[HolidayEntry], workdays: &[WorkdayEntry]) -> Result<(), Error> {
        for h in holidays {
            let date = toml_date(file, &h.date)?;
            if self.workdays.contains_key(&date) {
                return Err(invalid(file, format!("{date} is listed both as a holiday and as a working day")));
            }
            self.holidays.insert(date, h.name.clone());
        }
        for w in workdays {
            let date = toml_date(file, &w.date)?;
            if !is_weekend(date) {
                return Err(invalid(
                    file,
                    format!("make-up working day {date} is a {}, not a weekend day", date.weekday()),
                ));
            }
            if self.holidays.contains_key(&date) {
                return Err(invalid(file, format!("{date} is listed both as a holiday and as a working day")));
            }
            self.workdays.insert(date, w.for_holiday.clone());
        }
        Ok(())
    }

    fn load_year_file(&mut self, file: &str, text: &str) -> Result<i32, Error> {
        let parsed: YearFile = toml::from_str(text).map_err(|e| invalid(file, e.to_string()))?;
        if !(1900..=9999).contains(&parsed.year) {
            return Err(invalid(file, format!("year {} is out of range", parsed.year)));
        }
        if self.sources.contains_key(&parsed.year) {
            return Err(invalid(file, format!("year {} is loaded twice", parsed.year)));
        }
        for date in parsed.holidays.iter().map(|h| &h.date).chain(parsed.workdays.iter().map(|w| &w.date)) {
            let date = toml_date(file, date)?;
            if (date.year() - parsed.year).abs() > 1 {
                return Err(invalid(file, format!("{date} is too far from year {}", parsed.year)));
            }
        }
        self.add_days(file, &parsed.holidays, &parsed.workdays)?;
        self.sources.insert(parsed.year, parsed.source);
        Ok(parsed.year)
    }

    /// Rebuilds the prefix counts of every loaded year from the day maps.
    fn index(&mut self) {
        let years: Vec<i32> = self.sources.keys().copied().collect();
        self.years.clear();
        for year in years {
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
            self.years.insert(year, Year { prefix });
        }
    }

    fn raw_is_working(&self, date: NaiveDate) -> bool {
        self.workdays.contains_key(&date) || (!is_weekend(date) && !self.holidays.contains_key(&date))
    }

    fn year(&self, year: i32) -> Result<&Year, Error> {
        self.years.get(&year).ok_or_else(|| Error::YearNotLoaded { year, region: self.region.clone() })
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
        self.year(year)?;
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

/// Every region's calendar: the national one and the regions' own.
#[derive(Debug, Clone)]
pub struct Calendars {
    national: Arc<Calendar>,
    regions: HashMap<String, Arc<Calendar>>,
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
        for (name, text) in years {
            national.load_year_file(name, text)?;
        }
        national.index();
        let mut by_code = HashMap::new();
        for (name, text) in regions {
            let parsed: RegionFile = toml::from_str(text).map_err(|e| invalid(name, e.to_string()))?;
            if parsed.inherits != "national" {
                return Err(invalid(
                    name,
                    format!("a region can only inherit from \"national\", not {:?}", parsed.inherits),
                ));
            }
            if parsed.code.is_empty() || !parsed.code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(name, format!("region code {:?} must be digits", parsed.code)));
            }
            let tz = match &parsed.timezone {
                Some(tz) => tz.parse::<Tz>().map_err(|_| invalid(name, format!("unknown time zone {tz:?}")))?,
                None => DEFAULT_TZ,
            };
            let mut calendar = national.clone();
            calendar.region =
                if parsed.name.is_empty() { parsed.code.clone() } else { format!("{} {}", parsed.code, parsed.name) };
            calendar.tz = tz;
            calendar.add_days(name, &parsed.holidays, &parsed.workdays)?;
            calendar.index();
            if by_code.insert(parsed.code.clone(), Arc::new(calendar)).is_some() {
                return Err(invalid(name, format!("region {} is defined twice", parsed.code)));
            }
        }
        Ok(Calendars { national: Arc::new(national), regions: by_code })
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
