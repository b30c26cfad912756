//! Table and property tests of the working-day calendar: holidays, make-up days, year boundaries.

use super::*;
use proptest::prelude::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
}

/// Built once: the property tests ask for it per case, and a build indexes every provisional
/// year too.
fn cal() -> Calendars {
    static CALS: std::sync::OnceLock<Calendars> = std::sync::OnceLock::new();
    CALS.get_or_init(|| Calendars::embedded().expect("embedded calendars load")).clone()
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
    // 2027 has no notice: counted on its statutory days (元旦 on Friday 1 January), and refused
    // under the `refuse` policy; past the provisional range it is refused whatever the policy.
    assert_eq!(c.add_working_days(d("2026-12-30"), 5).expect("provisional"), d("2027-01-07"));
    assert!(c.provisional_between(d("2026-12-31"), d("2027-01-07")));
    assert!(!c.provisional_between(d("2026-01-01"), d("2026-12-31")));
    let refuse = cal().with_policy(super::Policy::Refuse);
    assert_eq!(
        refuse.national().add_working_days(d("2026-12-30"), 5),
        Err(Error::YearNotLoaded { year: 2027, region: "national".into() })
    );
    assert_eq!(
        c.add_working_days(d("2100-12-30"), 5),
        Err(Error::YearNotLoaded { year: 2101, region: "national".into() })
    );
    assert_eq!(c.working_days_between(d("2026-10-10"), d("2026-09-30")).expect("loaded"), -3);
    assert!(c.add_working_days(d("2101-01-04"), 1).is_err());
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
        assert!(source.contains(&format!("关于{y}年部分节假日安排的通知")), "{y}: {source}");
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
    assert!(err.to_string().contains("bad.toml:3: make-up working day 2026-10-12 is a Mon"), "{err}");

    let both = "year = 2026\nsource = \"x\"\nholidays = [{ date = 2026-10-10, name = \"x\" }]\nworkdays = [{ date = 2026-10-10 }]\n";
    let err = Calendars::from_sources(&[("both.toml", both)], &[]).expect_err("refused");
    assert!(err.to_string().contains("both as a holiday and as a working day"), "{err}");

    let dup = "year = 2026\nsource = \"x\"\n";
    let err = Calendars::from_sources(&[("a.toml", dup), ("b.toml", dup)], &[]).expect_err("refused");
    assert!(err.to_string().contains("b.toml:1: year 2026 is loaded twice"), "{err}");

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

/// The provisional table against the `tyme4rs` crate (寿星天文历), every year it covers: the
/// first day of the first lunar month, the Qingming solar term, 五月初五 and 八月十五.
#[test]
fn the_provisional_feast_table_matches_the_lunar_crate_every_year() {
    use tyme4rs::tyme::lunar::LunarDay;
    use tyme4rs::tyme::solar::SolarTerm;
    for (year, [spring, qingming, duanwu, midautumn]) in super::provisional::FEASTS {
        let y = year as isize;
        let md = |s: tyme4rs::tyme::solar::SolarDay| (s.get_month() as u32, s.get_day() as u32);
        assert_eq!(md(LunarDay::from_ymd(y, 1, 1).get_solar_day()), spring, "{year} 正月初一");
        // Index 7 counted from 冬至 is 清明.
        assert_eq!(md(SolarTerm::from_index(y, 7).get_julian_day().get_solar_day()), qingming, "{year} 清明");
        assert_eq!(md(LunarDay::from_ymd(y, 5, 5).get_solar_day()), duanwu, "{year} 端午");
        assert_eq!(md(LunarDay::from_ymd(y, 8, 15).get_solar_day()), midautumn, "{year} 中秋");
    }
}

#[test]
fn provisional_days_off_2027_to_2030_are_the_statutory_ones() {
    let days = |y: i32| -> Vec<String> {
        super::provisional::statutory_days(y).iter().map(|(d, n)| format!("{d} {n}")).collect()
    };
    assert_eq!(
        days(2027),
        [
            "2027-01-01 元旦",
            "2027-02-05 春节",
            "2027-02-06 春节",
            "2027-02-07 春节",
            "2027-02-08 春节",
            "2027-04-05 清明节",
            "2027-05-01 劳动节",
            "2027-05-02 劳动节",
            "2027-06-09 端午节",
            "2027-09-15 中秋节",
            "2027-10-01 国庆节",
            "2027-10-02 国庆节",
            "2027-10-03 国庆节",
        ]
    );
    assert_eq!(days(2028)[1..5], ["2028-01-25 春节", "2028-01-26 春节", "2028-01-27 春节", "2028-01-28 春节"]);
    assert!(
        days(2028).contains(&"2028-10-03 中秋节".to_owned()) || days(2028).contains(&"2028-10-03 国庆节".to_owned())
    );
    // 2028: 中秋 on 3 October falls inside 国庆: 12 distinct days, not 13.
    assert_eq!(days(2028).len(), 12);
    assert!(days(2029).contains(&"2029-02-12 春节".to_owned()) && days(2029).contains(&"2029-09-22 中秋节".to_owned()));
    assert!(
        days(2030).contains(&"2030-04-05 清明节".to_owned()) && days(2030).contains(&"2030-06-05 端午节".to_owned())
    );
    assert!(days(2024).is_empty() && days(2101).is_empty(), "outside the provisional range");

    // The calendar: 2027 is provisional, its statutory days are off and weekends too.
    let cals = cal();
    let c = cals.national();
    assert!(c.is_provisional(2027) && !c.is_provisional(2026) && !c.has_year(2027));
    assert_eq!(c.is_working_day(d("2027-02-05")), Ok(false), "除夕");
    assert_eq!(c.is_working_day(d("2027-02-09")), Ok(true), "初四: not statutory");
    assert_eq!(c.is_working_day(d("2027-01-02")), Ok(false), "a Saturday");
}

/// An independent check of the table: every statutory day of 2025 and 2026 is a day off in
/// the State Council's own notice for that year.
#[test]
fn statutory_days_of_2025_and_2026_are_days_off_in_their_notices() {
    let cals = cal();
    for year in [2025, 2026] {
        for (date, name) in super::provisional::statutory_days(year) {
            assert_eq!(cals.national().is_working_day(date), Ok(false), "{date} {name}");
        }
    }
}

#[test]
fn a_loaded_notice_changes_exactly_the_days_it_moves() {
    let mut files: Vec<(&str, &str)> = super::embedded::YEARS.to_vec();
    let before = Calendars::from_sources(&files, super::embedded::REGIONS).expect("embedded");
    // The same files again: nothing changes.
    let same = Calendars::from_sources(&files, super::embedded::REGIONS).expect("embedded");
    assert_eq!(super::changed_range(&before, &same), None);
    // A notice for 2027: the whole year turns official, so the range is the year.
    let notice = "year = 2027\nsource = \"test\"\nholidays = [{ date = 2027-01-01, name = \"元旦\" }]\n";
    files.push(("2027.toml", notice));
    let after = Calendars::from_sources(&files, super::embedded::REGIONS).expect("with 2027");
    assert_eq!(super::changed_range(&before, &after), Some((d("2027-01-01"), d("2027-12-31"))));
    // An amendment of an official year: only the days it moves.
    let amended = super::embedded::YEARS
        .iter()
        .find(|(name, _)| name.ends_with("2026.toml"))
        .map(|(_, text)| text.replace("{ date = 2026-10-10, for = \"国庆节\" },\n", ""))
        .expect("2026");
    let mut files: Vec<(&str, &str)> =
        super::embedded::YEARS.iter().filter(|(n, _)| !n.ends_with("2026.toml")).copied().collect();
    files.push(("2026.toml", &amended));
    let amended = Calendars::from_sources(&files, super::embedded::REGIONS).expect("amended");
    assert_eq!(super::changed_range(&before, &amended), Some((d("2026-10-10"), d("2026-10-10"))));
}

#[test]
fn a_file_to_load_is_refused_with_its_line() {
    let text = "year = 2027\nsource = \"x\"\n\nworkdays = [\n  { date = 2027-01-04, for = \"元旦\" },\n]\n";
    let err = super::CalendarFile::parse("2027.toml", text).expect_err("a Monday make-up day");
    assert_eq!(err.to_string(), "2027.toml:5: make-up working day 2027-01-04 is a Mon, not a weekend day");
    let err = super::CalendarFile::parse("x.toml", "name = \"x\"\n").expect_err("neither");
    assert!(err.to_string().starts_with("x.toml:1: neither a year file"), "{err}");
    let err =
        super::CalendarFile::parse("y.toml", "year = 2027\nsource = \"x\"\nholidays = [oops]\n").expect_err("toml");
    assert!(err.to_string().starts_with("y.toml:3: "), "{err}");
    let ok = super::CalendarFile::parse("r.toml", "code = \"320700\"\nname = \"n\"\n").expect("a region file");
    assert_eq!(ok.key, super::FileKey::Region("320700".into()));
}
