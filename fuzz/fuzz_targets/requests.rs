//! The request validators on any bytes: an AcceptCase message as received, through the
//! domain's checks (region, case number, applicant id check characters, dates, lists, credit,
//! the working-day arithmetic of the commitment period); a calendar file; a page token.
#![no_main]

use std::sync::OnceLock;

use prost::Message as _;
use shenguan::calendar::Calendars;
use shenguan::domain::case;
use shenguan::domain::credit::CreditGrades;

fn calendars() -> &'static Calendars {
    static C: OnceLock<Calendars> = OnceLock::new();
    C.get_or_init(|| Calendars::embedded().expect("the embedded calendars load"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(r) = shenguan::proto::AcceptCaseRequest::decode(data) {
        let credit = CreditGrades::default();
        let calendar = calendars().region(&r.region_code);
        let today = chrono::NaiveDate::from_ymd_opt(2026, 9, 28).expect("date");
        let policy = case::Policy { credit: &credit, calendar, today };
        let _ = case::accept(&shenguan::api::intake::new_case(&r), &policy, "fuzz");
    }
    if let Ok(p) = shenguan::proto::PageRequest::decode(data) {
        let _ = shenguan::api::page(Some(&p));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shenguan::calendar::CalendarFile::parse("fuzz.toml", text);
    }
});
