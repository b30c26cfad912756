//! The calendar lifecycle over real gRPC with the server's virtual clock: deadlines across New
//! Year on a provisional calendar, a notice loaded at run time re-planning exactly the
//! deadlines it moves, the `refuse` policy, and bad calendar files refused with their line.

use anyhow::Result;
use integration_tests::fixtures::accept;
use integration_tests::TestServer;
use shenguan::proto::{
    Case, CompleteApprovalRequest, GetCaseRequest, GetTimelineRequest, LoadCalendarRequest, QueryCasesRequest, Route,
    Scenario, TimelineEntry,
};
use tonic::Code;

const NOTICE: &str = include_str!("data/2027-made-up.toml");

async fn get_case(server: &TestServer, id: &str) -> Result<Case> {
    Ok(server.intake().get_case(GetCaseRequest { case_id: id.into() }).await?.into_inner().case.expect("case"))
}

async fn timeline(server: &TestServer, id: &str) -> Result<Vec<TimelineEntry>> {
    Ok(server.admin().get_timeline(GetTimelineRequest { case_id: id.into() }).await?.into_inner().entries)
}

async fn licensed(server: &TestServer, case_no: &str) -> Result<Case> {
    server.intake().accept_case(accept(case_no, Route::Normal, Scenario::Unspecified)).await?;
    let r = CompleteApprovalRequest {
        case_id: format!("320700/{case_no}"),
        license_no: "JY13207000000001".into(),
        approval_opinion: "同意".into(),
        document_refs: vec![],
    };
    Ok(server.intake().complete_approval(r).await?.into_inner().case.expect("case"))
}

/// (due as shown, provisional) of the task's view deadline.
fn view_deadline(case: &Case) -> (String, bool) {
    let d = case.tasks[0].deadlines.iter().find(|d| d.name == "view_deadline").expect("view deadline");
    (d.due.as_ref().map(|i| i.shanghai.clone()).unwrap_or_default(), d.provisional)
}

fn load(text: &str, dry_run: bool) -> LoadCalendarRequest {
    LoadCalendarRequest { name: "2027.toml".into(), text: text.into(), dry_run, wait: true }
}

#[tokio::test]
async fn a_notice_loaded_at_run_time_re_plans_exactly_the_provisional_deadlines_it_moves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("calendar.db");
    let server = TestServer::start_on("2026-12-28T10:00:00+08:00", &db, |_| {}).await?;

    // Licensed on Monday 28 December: 3 working days end on 31 December, all in 2026.
    let a = licensed(&server, "CAL-A").await?;
    assert_eq!(view_deadline(&a), ("2026-12-31 23:59:59 +08:00".into(), false));
    // On Tuesday 29 December: 30, 31 December, then (元旦 and a weekend) Monday 4 January —
    // counted on the provisional 2027, and shown as such.
    server.advance_to("2026-12-29T10:00:00+08:00").await?;
    let b = licensed(&server, "CAL-B").await?;
    assert_eq!(view_deadline(&b), ("2027-01-04 23:59:59 +08:00".into(), true));
    // A commitment period across New Year: accepted, and marked provisional.
    let mut c = accept("CAL-C", Route::Commitment, Scenario::MaterialDeferral);
    c.commitment_period_working_days = 20;
    c.deferred_materials = vec!["设备布局图".into()];
    let c = server.intake().accept_case(c).await?.into_inner().case.expect("case");
    assert_eq!((c.commitment_deadline.as_str(), c.commitment_deadline_provisional), ("2027-01-27", true));

    let provisional = server
        .admin()
        .query_cases(QueryCasesRequest { provisional_only: true, ..QueryCasesRequest::default() })
        .await?
        .into_inner();
    let ids: Vec<&str> = provisional.cases.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(ids, ["320700/CAL-B", "320700/CAL-C"]);
    let status = server.admin().calendar_status(shenguan::proto::CalendarStatusRequest {}).await?.into_inner();
    let national = &status.regions[0];
    assert_eq!(national.region, "national");
    let y2027 = national.years.iter().find(|y| y.year == 2027).expect("2027 listed");
    assert_eq!(y2027.status, "provisional");
    assert!(status.warnings.iter().any(|w| w.starts_with("2027 has no official calendar")), "{:?}", status.warnings);
    assert_eq!(national.official_days_left, 2);
    assert_eq!(status.provisional_timers, 1, "B's task (C's deadline is a date the applicant signed for)");

    // A dry run says what would move and changes nothing.
    let dry = server.admin().load_calendar(load(NOTICE, true)).await?.into_inner();
    assert_eq!((dry.dry_run, dry.key.as_str(), dry.version), (true, "national 2027", 1));
    assert_eq!((dry.timers_examined, dry.timers_moved), (1, 1));
    assert_eq!(dry.groups.len(), 1);
    assert_eq!((dry.groups[0].region_code.as_str(), dry.groups[0].department.as_str()), ("320700", "市市场监督管理局"));
    assert_eq!((dry.groups[0].earlier, dry.groups[0].later), (1, 0));
    let first = &dry.first_moves[0];
    assert_eq!((first.instance_id.as_str(), first.timer.as_str()), ("320700/CAL-B/T1", "view_deadline"));
    assert_eq!(first.new_due.as_ref().expect("new").shanghai, "2027-01-02 23:59:59 +08:00");
    assert!(view_deadline(&get_case(&server, "320700/CAL-B").await?).1, "a dry run changes nothing");

    // The load: the make-up Saturday 2 January is now the third working day.
    let loaded = server.admin().load_calendar(load(NOTICE, false)).await?.into_inner();
    assert_eq!((loaded.dry_run, loaded.version), (false, 1));
    assert_eq!(view_deadline(&get_case(&server, "320700/CAL-B").await?), ("2027-01-02 23:59:59 +08:00".into(), false));
    assert_eq!(view_deadline(&get_case(&server, "320700/CAL-A").await?), ("2026-12-31 23:59:59 +08:00".into(), false));
    let moved: Vec<TimelineEntry> =
        timeline(&server, "320700/CAL-B").await?.into_iter().filter(|e| e.event == "deadline_replanned").collect();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].instance_id, "320700/CAL-B/T1");
    assert_eq!(
        moved[0].note,
        "deadline re-planned: view_deadline 2027-01-04 23:59:59 +08:00 → 2027-01-02 23:59:59 +08:00 \
         (calendar national 2027 v1, 测试用虚构通知 2027 (made up, tests only))"
    );
    assert!(timeline(&server, "320700/CAL-A").await?.iter().all(|e| e.event != "deadline_replanned"));
    let status = server.admin().calendar_status(shenguan::proto::CalendarStatusRequest {}).await?.into_inner();
    let y2027 = status.regions[0].years.iter().find(|y| y.year == 2027).expect("2027 listed");
    assert_eq!(
        (y2027.status.as_str(), y2027.version, y2027.loaded_by.as_str()),
        ("official", 1, "anonymous (engine_admin)")
    );
    assert!(status.replans.iter().all(|r| r.done) && status.replans.len() == 1, "{:?}", status.replans);
    assert_eq!(status.replans[0].instances_replanned, 1);
    assert_eq!(status.provisional_timers, 0);
    assert!(status.warnings.iter().all(|w| !w.starts_with("2027")), "{:?}", status.warnings);

    // The moved deadline fires once, at its new time; the old time passes without a fire.
    server.advance_to("2027-01-02T23:59:59.998+08:00").await?;
    assert!(!get_case(&server, "320700/CAL-B").await?.tasks[0].overdue);
    server.advance_to("2027-01-05T00:00:00+08:00").await?;
    assert!(get_case(&server, "320700/CAL-B").await?.tasks[0].overdue);
    let fires: Vec<String> = timeline(&server, "320700/CAL-B")
        .await?
        .iter()
        .filter(|e| e.event == "timer:view_deadline")
        .map(|e| e.deadlines[0].due.as_ref().expect("due").shanghai.clone())
        .collect();
    assert_eq!(fires, ["2027-01-02 23:59:59 +08:00"]);

    // A second load of the same year is version 2 and moves nothing more.
    let again = server.admin().load_calendar(load(NOTICE, false)).await?.into_inner();
    assert_eq!((again.version, again.changed_from.as_str()), (2, ""));
    server.stop().await?;

    // Offline, every entry replays with the calendar it was computed with.
    let report = shenguan::admin::verify_file(
        &db,
        &shenguan::definition::Registry::embedded()?,
        &shenguan::calendar::Calendars::embedded()?,
    )
    .await?;
    assert!(report.divergent.is_empty(), "{:?}", report.divergent);
    // A restart uses the stored 2027, not the built-in calendars (which have none).
    let server = TestServer::start_on("2027-01-05T10:00:00+08:00", &db, |_| {}).await?;
    let d = licensed(&server, "CAL-D").await?;
    assert_eq!(view_deadline(&d), ("2027-01-08 23:59:59 +08:00".into(), false));
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_refuse_policy_gives_the_year_not_loaded_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_on("2026-12-29T10:00:00+08:00", &dir.path().join("r.db"), |c| {
        c.calendar_policy = shenguan::calendar::Policy::Refuse;
    })
    .await?;
    let e = licensed(&server, "REF-1").await.expect_err("refused");
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("year 2027 is not loaded in the working-day calendar"), "{}", status.message());
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_calendar_file_is_refused_with_its_line_and_nothing_changes() -> Result<()> {
    let server = TestServer::start("2026-12-29T10:00:00+08:00").await?;
    let b = licensed(&server, "BAD-B").await?;
    let monday = NOTICE.replace("{ date = 2027-01-02, for = \"元旦\" }", "{ date = 2027-01-04, for = \"元旦\" }");
    let line = monday.lines().position(|l| l.contains("2027-01-04")).expect("line") + 1;
    let monday_error = format!("2027.toml:{line}: make-up working day 2027-01-04 is a Mon");
    let cases: Vec<(String, String, &str)> = vec![
        ("2027.toml".into(), monday, &monday_error),
        (
            "2027.toml".into(),
            "year = 2027\nsource = \"x\"\nholidays = [\n  { date = \"soon\" },\n]\n".into(),
            "2027.toml:4: ",
        ),
        ("2027.toml".into(), "year = 2027\n".into(), "missing field `source`"),
        ("2027.toml".into(), "hello".into(), "2027.toml:1: "),
        ("2027.toml".into(), "year = 2027\nsource = \"x\\u0000\"\n\0".into(), "NUL"),
        ("2027.toml".into(), format!("year = 2027\nsource = \"{}\"\n", "x".repeat(300_000)), "at most"),
        ("../../etc/passwd".into(), NOTICE.into(), "name"),
        ("".into(), NOTICE.into(), "name"),
        ("2026.toml".into(), "year = 2026\nsource = \"x\"\nworkdays = [{ date = 2026-10-12 }]\n".into(), "is a Mon"),
    ];
    for (name, text, want) in cases {
        let e = server
            .admin()
            .load_calendar(LoadCalendarRequest { name, text, dry_run: false, wait: true })
            .await
            .expect_err(want);
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {e:?}");
        assert!(e.message().contains(want), "{want}: {}", e.message());
    }
    let status = server.admin().calendar_status(shenguan::proto::CalendarStatusRequest {}).await?.into_inner();
    let y2027 = status.regions[0].years.iter().find(|y| y.year == 2027).expect("2027 listed");
    assert_eq!(y2027.status, "provisional");
    assert!(status.replans.is_empty());
    assert_eq!(view_deadline(&get_case(&server, "320700/BAD-B").await?), view_deadline(&b));
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_deadline_moved_into_the_past_fires_at_once_and_only_once() -> Result<()> {
    let server = TestServer::start("2026-12-29T10:00:00+08:00").await?;
    licensed(&server, "PAST-1").await?;
    // Sunday 3 January: the provisional deadline (Monday 4th) is still ahead.
    server.advance_to("2027-01-03T12:00:00+08:00").await?;
    assert!(!get_case(&server, "320700/PAST-1").await?.tasks[0].overdue);
    // The notice makes Saturday 2nd the third working day: the deadline is now behind us and
    // fires in the re-plan's own batch, so the answer (which waits for the re-plan) sees it.
    server.admin().load_calendar(load(NOTICE, false)).await?;
    let task = &get_case(&server, "320700/PAST-1").await?.tasks[0];
    assert!(task.overdue && task.deadlines.iter().all(|d| d.name != "view_deadline"), "{task:?}");
    server.advance_to("2027-01-06T00:00:00+08:00").await?;
    let entries = timeline(&server, "320700/PAST-1").await?;
    let events: Vec<&str> =
        entries.iter().filter(|e| e.instance_id.ends_with("/T1")).map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["accepted", "deadline_replanned", "timer:view_deadline"]);
    let fired = entries.iter().find(|e| e.event == "timer:view_deadline").expect("fired");
    assert_eq!(fired.deadlines[0].due.as_ref().expect("due").shanghai, "2027-01-02 23:59:59 +08:00");
    assert_eq!(fired.at.as_ref().expect("at").shanghai, "2027-01-03 12:00:00 +08:00");
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_load_that_cannot_be_stored_is_unavailable_and_changes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("full.db");
    let server = TestServer::start_on("2026-12-29T10:00:00+08:00", &db, |_| {}).await?;
    let b = licensed(&server, "FULL-B").await?;
    server.stop().await?;
    // The database may not grow by a page, and the file (a long comment in it) needs new
    // pages: the load's commit fails like a full disk.
    let padded = format!("{NOTICE}\n# {}\n", "注".repeat(20_000));
    let server = TestServer::start_on("2026-12-29T10:00:00+08:00", &db, |c| c.max_db_pages = Some(1)).await?;
    let e = server.admin().load_calendar(load(&padded, false)).await.expect_err("no space");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let status = server.admin().calendar_status(shenguan::proto::CalendarStatusRequest {}).await?.into_inner();
    assert_eq!(status.regions[0].years.iter().find(|y| y.year == 2027).expect("2027").status, "provisional");
    assert!(status.replans.is_empty());
    // The calendar in force did not change either: a new licence (small rows still fit in the
    // file's free pages) still counts on the provisional 2027.
    let c = licensed(&server, "FULL-C").await?;
    assert_eq!(view_deadline(&c), ("2027-01-04 23:59:59 +08:00".into(), true));
    assert_eq!(view_deadline(&get_case(&server, "320700/FULL-B").await?), view_deadline(&b));
    server.stop().await?;
    // With space again the same load goes through as version 1.
    let server = TestServer::start_on("2026-12-29T10:00:00+08:00", &db, |_| {}).await?;
    let loaded = server.admin().load_calendar(load(&padded, false)).await?.into_inner();
    assert_eq!(loaded.version, 1);
    assert_eq!(view_deadline(&get_case(&server, "320700/FULL-B").await?), ("2027-01-02 23:59:59 +08:00".into(), false));
    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_region_file_loaded_at_run_time_moves_only_that_regions_deadlines() -> Result<()> {
    let server = TestServer::start("2026-12-29T10:00:00+08:00").await?;
    let here = licensed(&server, "REG-1").await?;
    assert_eq!(view_deadline(&here), ("2027-01-04 23:59:59 +08:00".into(), true));
    // The same licence in Nanjing (320100), which has no region file.
    let mut r = accept("REG-2", Route::Normal, Scenario::Unspecified);
    r.region_code = "320100".into();
    server.intake().accept_case(r).await?;
    let complete = CompleteApprovalRequest {
        case_id: "320100/REG-2".into(),
        license_no: "JY2".into(),
        approval_opinion: "同意".into(),
        document_refs: vec![],
    };
    let there = server.intake().complete_approval(complete).await?.into_inner().case.expect("case");
    assert_eq!(view_deadline(&there), ("2027-01-04 23:59:59 +08:00".into(), true));

    // 连云港 declares Wednesday 30 December a local holiday: its deadline moves a day later.
    let region = "code = \"320700\"\nname = \"连云港市\"\ninherits = \"national\"\ntimezone = \"Asia/Shanghai\"\n\
                  holidays = [{ date = 2026-12-30, name = \"local\" }]\nworkdays = []\n";
    let request = LoadCalendarRequest { name: "320700.toml".into(), text: region.into(), dry_run: true, wait: true };
    let dry = server.admin().load_calendar(request.clone()).await?.into_inner();
    assert_eq!((dry.key.as_str(), dry.version, dry.timers_moved), ("region 320700", 2, 1));
    assert_eq!((dry.groups[0].earlier, dry.groups[0].later), (0, 1));
    let loaded = server.admin().load_calendar(LoadCalendarRequest { dry_run: false, ..request }).await?.into_inner();
    assert_eq!((loaded.changed_from.as_str(), loaded.changed_to.as_str()), ("2026-12-30", "2026-12-30"));
    assert_eq!(view_deadline(&get_case(&server, "320700/REG-1").await?), ("2027-01-05 23:59:59 +08:00".into(), true));
    assert_eq!(view_deadline(&get_case(&server, "320100/REG-2").await?), ("2027-01-04 23:59:59 +08:00".into(), true));
    let status = server.admin().calendar_status(shenguan::proto::CalendarStatusRequest {}).await?.into_inner();
    let lyg = status.regions.iter().find(|r| r.region == "320700").expect("320700 listed");
    assert!(lyg.name.contains("region file v2"), "{}", lyg.name);
    server.stop().await?;
    Ok(())
}
