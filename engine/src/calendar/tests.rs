//! Table and property tests of the working-day calendar: holidays, make-up days, year boundaries.

use super::*;
use proptest::prelude::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
}

fn cal() -> Calendars {
    Calendars::embedded().expect("embedded calendars load")
}

#[test]
fn tricky_days() {
    let cals = cal();
    let c = cals.national();
    // (date, working?) straight from the notices.
    let table = [
        ("2026-10-10", true),  // Saturday, make-up day for National Day
        ("2026-10-11", false), // ordinary Sunday
        ("2026-10-01", false), // National Day
        ("2026-10-07", false), // Wednesday inside the National Day holiday
        ("2026-09-20", true),  // Sunday make-up day
        ("2026-02-14", true),  // Saturday before Spring Festival
        ("2026-02-23", false), // Monday, last day of Spring Festival
        ("2026-02-24", true),
        ("2026-01-04", true), // Sunday make-up for New Year
        ("2024-02-09", true), // New Year's Eve 2024 was a working Friday
        ("2024-02-10", false),
        ("2020-01-31", false), // 2020 Spring Festival extension
        ("2020-02-01", false), // its make-up Saturday was cancelled by the extension
        ("2020-02-03", true),
        ("2022-12-31", false), // belongs to the 2023 New Year holiday
        ("2023-01-02", false),
        ("2023-01-03", true),
        ("2018-12-29", false), // 2018 is not loaded: see below
    ];
    for (date, working) in table.iter().take(table.len() - 1) {
        assert_eq!(c.is_working_day(d(date)).expect("loaded"), *working, "{date}");
    }
    assert_eq!(c.is_working_day(d("2018-12-29")), Err(Error::YearNotLoaded { year: 2018, region: "national".into() }));
}

#[test]
fn additions_across_holidays() {
    let cals = cal();
    let c = cals.national();
    let table = [
        ("2026-09-30", 3, "2026-10-10"), // National Day, then the make-up Saturday
        ("2026-09-30", 1, "2026-10-08"),
        ("2026-09-30", 0, "2026-09-30"),
        ("2026-02-13", 1, "2026-02-14"), // make-up Saturday
        ("2026-02-13", 2, "2026-02-24"), // then the whole Spring Festival
        ("2022-12-30", 1, "2023-01-03"), // across the year boundary and the New Year holiday
        ("2024-02-08", 1, "2024-02-09"),
        ("2024-02-08", 2, "2024-02-18"), // Sunday make-up after Spring Festival
        ("2020-01-23", 1, "2020-02-03"), // the extended 2020 Spring Festival
        ("2025-12-31", 1, "2026-01-04"), // the Sunday make-up day after New Year
        ("2025-12-31", 2, "2026-01-05"),
    ];
    for (from, n, want) in table {
        assert_eq!(c.add_working_days(d(from), n).expect("loaded"), d(want), "{from} + {n}");
        assert_eq!(c.working_days_between(d(from), d(want)).expect("loaded"), i64::from(n), "{from}..{want}");
    }
    assert_eq!(
        c.add_working_days(d("2026-12-30"), 5),
        Err(Error::YearNotLoaded { year: 2027, region: "national".into() })
    );
    assert_eq!(c.working_days_between(d("2026-10-10"), d("2026-09-30")).expect("loaded"), -3);
    assert!(c.add_working_days(d("2027-01-04"), 1).is_err());
}

#[test]
fn end_of_day_is_shanghai_midnight_minus_a_millisecond() {
    let cals = cal();
    let t = cals.national().end_of_day(d("2026-10-10")).expect("in range");
    assert_eq!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "2026-10-10T15:59:59.999Z");
    let nine =
        cals.national().at_time(d("2026-10-09"), NaiveTime::from_hms_opt(9, 0, 0).expect("time")).expect("in range");
    assert_eq!(nine.to_rfc3339(), "2026-10-09T01:00:00+00:00");
}

#[test]
fn every_year_2019_to_2026_is_loaded_with_its_notice() {
    let cals = cal();
    let years: Vec<i32> = cals.national().years().collect();
    assert_eq!(years, (2019..=2026).collect::<Vec<_>>());
    for y in 2019..=2026 {
        let source = cals.national().source(y).expect("source");
        assert!(source.contains(&format!("關于{y}年部分節假日安排的通知")), "{y}: {source}");
        for day in cals.national().workdays_in(y).expect("loaded") {
            assert!(is_weekend(day.date), "{y}: make-up day {} is not a weekend", day.date);
        }
    }
    // 2026: 261 weekdays, 19 of them holidays, 6 make-up weekend days.
    assert_eq!(cals.national().working_days_between(d("2025-12-31"), d("2026-12-31")).expect("loaded"), 248);
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let not_weekend = "year = 2026\nsource = \"x\"\nworkdays = [{ date = 2026-10-12, for = \"x\" }]\n";
    let err = Calendars::from_sources(&[("bad.toml", not_weekend)], &[]).expect_err("refused");
    assert!(err.to_string().contains("bad.toml: make-up working day 2026-10-12 is a Mon"), "{err}");

    let both = "year = 2026\nsource = \"x\"\nholidays = [{ date = 2026-10-10, name = \"x\" }]\nworkdays = [{ date = 2026-10-10 }]\n";
    let err = Calendars::from_sources(&[("both.toml", both)], &[]).expect_err("refused");
    assert!(err.to_string().contains("both as a holiday and as a working day"), "{err}");

    let dup = "year = 2026\nsource = \"x\"\n";
    let err = Calendars::from_sources(&[("a.toml", dup), ("b.toml", dup)], &[]).expect_err("refused");
    assert!(err.to_string().contains("b.toml: year 2026 is loaded twice"), "{err}");

    let time = "year = 2026\nsource = \"x\"\nholidays = [{ date = 2026-10-10T09:00:00, name = \"x\" }]\n";
    assert!(Calendars::from_sources(&[("t.toml", time)], &[]).is_err());
    let garbage = "year = \"soon\"";
    assert!(Calendars::from_sources(&[("g.toml", garbage)], &[]).is_err());
    let unknown_field = "year = 2026\nsource = \"x\"\nholiday = []\n";
    assert!(Calendars::from_sources(&[("u.toml", unknown_field)], &[]).is_err());
}

#[test]
fn a_region_adds_its_own_days_on_top_of_the_national_calendar() {
    let year = "year = 2026\nsource = \"x\"\n";
    let region = "code = \"320700\"\nname = \"test\"\nholidays = [{ date = 2026-03-03, name = \"local\" }]\n";
    let cals = Calendars::from_sources(&[("2026.toml", year)], &[("r.toml", region)]).expect("loads");
    assert!(!cals.region("320700").is_working_day(d("2026-03-03")).expect("loaded"));
    assert!(cals.national().is_working_day(d("2026-03-03")).expect("loaded"));
    assert!(cals.region("110000").is_working_day(d("2026-03-03")).expect("loaded"), "no file: national");
    assert_eq!(cals.region("320700").add_working_days(d("2026-03-02"), 1).expect("loaded"), d("2026-03-04"));
}

fn any_date() -> impl Strategy<Value = NaiveDate> {
    (0u32..(365 * 8 - 40)).prop_map(|offset| d("2019-01-01") + Duration::days(i64::from(offset)))
}

proptest! {
    #[test]
    fn add_is_associative(date in any_date(), a in 0u32..40, b in 0u32..40) {
        let cals = cal();
        let c = cals.national();
        let (Ok(ab), Ok(step)) = (c.add_working_days(date, a + b), c.add_working_days(date, a)) else {
            // Past the last loaded year: both sides must fail the same way.
            prop_assert!(c.add_working_days(date, a + b).is_err());
            return Ok(());
        };
        prop_assert_eq!(c.add_working_days(step, b).expect("same range"), ab);
    }

    #[test]
    fn add_agrees_with_between(date in any_date(), n in 0u32..60) {
        let cals = cal();
        let c = cals.national();
        if let Ok(end) = c.add_working_days(date, n) {
            prop_assert_eq!(c.working_days_between(date, end).expect("loaded"), i64::from(n));
            if n > 0 {
                prop_assert!(c.is_working_day(end).expect("loaded"));
                prop_assert!(end > date);
                // Nothing between the (n-1)-th and the n-th working day is a working day.
                let prev = c.add_working_days(date, n - 1).expect("loaded");
                let mut day = prev.succ_opt().expect("in range");
                while day < end {
                    prop_assert!(!c.is_working_day(day).expect("loaded"));
                    day = day.succ_opt().expect("in range");
                }
            }
        }
    }

    #[test]
    fn between_is_additive(a in any_date(), b in any_date(), m in any_date()) {
        let cals = cal();
        let c = cals.national();
        let ab = c.working_days_between(a, b).expect("loaded");
        let am = c.working_days_between(a, m).expect("loaded");
        let mb = c.working_days_between(m, b).expect("loaded");
        prop_assert_eq!(ab, am + mb);
    }
}
