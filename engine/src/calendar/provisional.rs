//! Provisional years: the days off that the national rules fix by date, for a year whose State
//! Council notice is not loaded yet.
//!
//! 《全国年节及纪念日放假办法》 as amended by State Council Decree No. 795 (国务院令第795号,
//! 2024-11-10, in force 2025-01-01), Article 2, gives every citizen these days off:
//! 元旦 1 January; 春节 lunar New Year's Eve (除夕) and the first three days of the first
//! lunar month; 清明节 the day of the Qingming solar term; 劳动节 1 and 2 May; 端午节 the
//! fifth day of the fifth lunar month; 中秋节 the fifteenth day of the eighth lunar month;
//! 国庆节 1 to 3 October. What a notice adds — bridging days, make-up Saturdays (调休), a
//! holiday moved off a weekend — is not in the rules, so a provisional year has none of it:
//! its deadlines may move when the notice comes, and are marked provisional until they do.
//!
//! The lunar and solar-term dates are a table for the years the engine computes provisionally
//! ([`FIRST`]..=[`LAST`]), generated with the `tyme4rs` crate (a port of 6tail's widely used
//! `lunar` calendar, 寿星天文历 algorithms) and cross-checked against it in a test, and against
//! the official notices of 2025 and 2026.

use chrono::NaiveDate;

/// The first year with a provisional calendar: the first year under the rules above.
pub const FIRST: i32 = 2025;
/// The last.
pub const LAST: i32 = 2100;

/// Per year: (month, day) of 正月初一, 清明, 端午 (五月初五) and 中秋 (八月十五), Gregorian.
#[rustfmt::skip]
pub(crate) const FEASTS: [(i32, [(u32, u32); 4]); (LAST - FIRST + 1) as usize] = [
    (2025, [(1, 29), (4, 4), (5, 31), (10, 6)]),
    (2026, [(2, 17), (4, 5), (6, 19), (9, 25)]),
    (2027, [(2, 6), (4, 5), (6, 9), (9, 15)]),
    (2028, [(1, 26), (4, 4), (5, 28), (10, 3)]),
    (2029, [(2, 13), (4, 4), (6, 16), (9, 22)]),
    (2030, [(2, 3), (4, 5), (6, 5), (9, 12)]),
    (2031, [(1, 23), (4, 5), (6, 24), (10, 1)]),
    (2032, [(2, 11), (4, 4), (6, 12), (9, 19)]),
    (2033, [(1, 31), (4, 4), (6, 1), (9, 8)]),
    (2034, [(2, 19), (4, 5), (6, 20), (9, 27)]),
    (2035, [(2, 8), (4, 5), (6, 10), (9, 16)]),
    (2036, [(1, 28), (4, 4), (5, 30), (10, 4)]),
    (2037, [(2, 15), (4, 4), (6, 18), (9, 24)]),
    (2038, [(2, 4), (4, 5), (6, 7), (9, 13)]),
    (2039, [(1, 24), (4, 5), (5, 27), (10, 2)]),
    (2040, [(2, 12), (4, 4), (6, 14), (9, 20)]),
    (2041, [(2, 1), (4, 4), (6, 3), (9, 10)]),
    (2042, [(1, 22), (4, 4), (6, 22), (9, 28)]),
    (2043, [(2, 10), (4, 5), (6, 11), (9, 17)]),
    (2044, [(1, 30), (4, 4), (5, 31), (10, 5)]),
    (2045, [(2, 17), (4, 4), (6, 19), (9, 25)]),
    (2046, [(2, 6), (4, 4), (6, 8), (9, 15)]),
    (2047, [(1, 26), (4, 5), (5, 29), (10, 4)]),
    (2048, [(2, 14), (4, 4), (6, 15), (9, 22)]),
    (2049, [(2, 2), (4, 4), (6, 4), (9, 11)]),
    (2050, [(1, 23), (4, 4), (6, 23), (9, 30)]),
    (2051, [(2, 11), (4, 5), (6, 13), (9, 19)]),
    (2052, [(2, 1), (4, 4), (6, 1), (9, 7)]),
    (2053, [(2, 19), (4, 4), (6, 20), (9, 26)]),
    (2054, [(2, 8), (4, 4), (6, 10), (9, 16)]),
    (2055, [(1, 28), (4, 5), (5, 30), (10, 5)]),
    (2056, [(2, 15), (4, 4), (6, 17), (9, 24)]),
    (2057, [(2, 4), (4, 4), (6, 6), (9, 13)]),
    (2058, [(1, 24), (4, 4), (6, 25), (10, 2)]),
    (2059, [(2, 12), (4, 5), (6, 14), (9, 21)]),
    (2060, [(2, 2), (4, 4), (6, 3), (9, 9)]),
    (2061, [(1, 21), (4, 4), (6, 22), (9, 28)]),
    (2062, [(2, 9), (4, 4), (6, 11), (9, 17)]),
    (2063, [(1, 29), (4, 5), (6, 1), (10, 6)]),
    (2064, [(2, 17), (4, 4), (6, 19), (9, 25)]),
    (2065, [(2, 5), (4, 4), (6, 8), (9, 15)]),
    (2066, [(1, 26), (4, 4), (5, 28), (10, 3)]),
    (2067, [(2, 14), (4, 5), (6, 16), (9, 23)]),
    (2068, [(2, 3), (4, 4), (6, 4), (9, 11)]),
    (2069, [(1, 23), (4, 4), (6, 23), (9, 29)]),
    (2070, [(2, 11), (4, 4), (6, 13), (9, 19)]),
    (2071, [(1, 31), (4, 5), (6, 2), (9, 8)]),
    (2072, [(2, 19), (4, 4), (6, 20), (9, 26)]),
    (2073, [(2, 7), (4, 4), (6, 10), (9, 16)]),
    (2074, [(1, 27), (4, 4), (5, 30), (10, 5)]),
    (2075, [(2, 15), (4, 4), (6, 17), (9, 24)]),
    (2076, [(2, 5), (4, 4), (6, 6), (9, 12)]),
    (2077, [(1, 24), (4, 4), (6, 24), (10, 1)]),
    (2078, [(2, 12), (4, 4), (6, 14), (9, 20)]),
    (2079, [(2, 2), (4, 4), (6, 4), (9, 10)]),
    (2080, [(1, 22), (4, 4), (6, 22), (9, 28)]),
    (2081, [(2, 9), (4, 4), (6, 11), (9, 17)]),
    (2082, [(1, 29), (4, 4), (6, 1), (10, 6)]),
    (2083, [(2, 17), (4, 4), (6, 19), (9, 26)]),
    (2084, [(2, 6), (4, 4), (6, 7), (9, 14)]),
    (2085, [(1, 26), (4, 4), (5, 27), (10, 3)]),
    (2086, [(2, 14), (4, 4), (6, 15), (9, 22)]),
    (2087, [(2, 3), (4, 4), (6, 5), (9, 11)]),
    (2088, [(1, 24), (4, 4), (6, 23), (9, 29)]),
    (2089, [(2, 10), (4, 4), (6, 13), (9, 18)]),
    (2090, [(1, 30), (4, 4), (6, 2), (9, 8)]),
    (2091, [(2, 18), (4, 4), (6, 21), (9, 27)]),
    (2092, [(2, 7), (4, 4), (6, 9), (9, 16)]),
    (2093, [(1, 27), (4, 4), (5, 29), (10, 5)]),
    (2094, [(2, 15), (4, 4), (6, 17), (9, 24)]),
    (2095, [(2, 5), (4, 4), (6, 6), (9, 13)]),
    (2096, [(1, 25), (4, 4), (6, 24), (9, 30)]),
    (2097, [(2, 12), (4, 4), (6, 14), (9, 20)]),
    (2098, [(2, 1), (4, 4), (6, 4), (9, 9)]),
    (2099, [(1, 21), (4, 4), (6, 23), (9, 29)]),
    (2100, [(2, 9), (4, 5), (6, 12), (9, 18)]),
];

/// The statutory days off of `year` with the holiday each belongs to, ascending; empty outside
/// [`FIRST`]..=[`LAST`]. New Year's Eve may fall in the year before (除夕 of a January Spring
/// Festival is still in January; it never leaves the year, since 正月初一 is after 21 January).
pub fn statutory_days(year: i32) -> Vec<(NaiveDate, &'static str)> {
    let Some(&(_, [spring, qingming, duanwu, midautumn])) = FEASTS.iter().find(|(y, _)| *y == year) else {
        return Vec::new();
    };
    let date = |(m, d): (u32, u32)| NaiveDate::from_ymd_opt(year, m, d);
    let mut out = Vec::with_capacity(13);
    let mut push = |d: Option<NaiveDate>, name| out.extend(d.map(|d| (d, name)));
    push(date((1, 1)), "元旦");
    if let Some(first) = date(spring) {
        push(first.pred_opt(), "春节");
        for offset in 0..3 {
            push(first.checked_add_days(chrono::Days::new(offset)), "春节");
        }
    }
    push(date(qingming), "清明节");
    push(date((5, 1)), "劳动节");
    push(date((5, 2)), "劳动节");
    push(date(duanwu), "端午节");
    push(date(midautumn), "中秋节");
    for day in 1..=3 {
        push(date((10, day)), "国庆节");
    }
    out.sort();
    // 中秋 can fall on 1–3 October (2020, 2031): one day off, not two.
    out.dedup_by_key(|(d, _)| *d);
    out
}
