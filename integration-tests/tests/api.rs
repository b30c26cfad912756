//! The approval–supervision API over real gRPC on loopback, with the server's virtual clock:
//! every branch of the workflows, the deadline rules on the working-day calendar, idempotency,
//! refusals with the right status and nothing written, and statistics traced to timelines.

use anyhow::Result;
use integration_tests::TestServer;
use shenguan::proto::{
    applicant, AcceptCaseRequest, AcknowledgeTaskRequest, Case, CompleteApprovalRequest, DeadlineStatus,
    GetCaseRequest, GetStatisticsRequest, GetTimelineRequest, ListTasksRequest, Outcome, QueryCasesRequest,
    ReportInspectionRequest, ReportRectificationRequest, ReportResultRequest, RevokeApprovalRequest, Route, Scenario,
    SubmitMaterialsRequest, Supervisor, Task, TimelineEntry,
};
use tonic::Code;

use integration_tests::fixtures::{accept, deferral, with_check};

async fn get_case(server: &TestServer, id: &str) -> Result<Case> {
    Ok(server.intake().get_case(GetCaseRequest { case_id: id.into() }).await?.into_inner().case.expect("case"))
}

async fn timeline(server: &TestServer, id: &str) -> Result<Vec<TimelineEntry>> {
    Ok(server.admin().get_timeline(GetTimelineRequest { case_id: id.into() }).await?.into_inner().entries)
}

fn shanghai(e: &TimelineEntry) -> &str {
    e.at.as_ref().map_or("", |a| a.shanghai.as_str())
}

/// (due, status) of every change to the deadline `name` of `instance`.
fn deadline_status(entries: &[TimelineEntry], instance: &str, name: &str) -> Vec<(String, DeadlineStatus)> {
    entries
        .iter()
        .filter(|e| e.instance_id == instance)
        .flat_map(|e| {
            e.deadlines
                .iter()
                .filter(|d| d.name == name)
                .map(|d| (d.due.as_ref().map_or(String::new(), |i| i.shanghai.clone()), d.status()))
        })
        .collect()
}

async fn complete(server: &TestServer, id: &str) -> Result<Case> {
    let r = CompleteApprovalRequest {
        case_id: id.into(),
        license_no: "JY13207000000001".into(),
        approval_opinion: "同意".into(),
        document_refs: vec!["doc://licence/1".into()],
    };
    Ok(server.intake().complete_approval(r).await?.into_inner().case.expect("case"))
}

async fn task(server: &TestServer, id: &str) -> Result<Task> {
    let (case_id, _) = id.rsplit_once("/T").expect("task id");
    let case = get_case(server, case_id).await?;
    Ok(case.tasks.into_iter().find(|t| t.task_id == id).expect("task"))
}

#[tokio::test]
async fn material_deferral_reminds_at_nine_the_day_before_then_goes_overdue_and_is_revoked() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let case = server.intake().accept_case(deferral("MD-1", "2026-10-09")).await?.into_inner().case.expect("case");
    assert_eq!(case.case_id, "320700/MD-1");
    assert_eq!(case.state, "commitment_pending");
    let dues: Vec<(&str, &str)> =
        case.deadlines.iter().map(|d| (d.name.as_str(), d.due.as_ref().map_or("", |i| i.shanghai.as_str()))).collect();
    assert_eq!(
        dues,
        vec![
            ("material_reminder", "2026-10-08 09:00:00 +08:00"),
            ("commitment_deadline", "2026-10-09 23:59:59 +08:00")
        ]
    );

    server.advance_to("2026-10-08T08:59:59.999+08:00").await?;
    assert_eq!(get_case(&server, "320700/MD-1").await?.state, "commitment_pending", "nothing fires early");
    server.advance_to("2026-10-08T09:00:00+08:00").await?;
    assert_eq!(get_case(&server, "320700/MD-1").await?.state, "reminded");
    let entries = timeline(&server, "320700/MD-1").await?;
    let reminder = entries.iter().find(|e| e.event == "timer:material_reminder").expect("reminder in the timeline");
    assert_eq!(shanghai(reminder), "2026-10-08 09:00:00 +08:00", "exactly 09:00 Asia/Shanghai");
    assert_eq!(reminder.messages, 1, "the SMS to the applicant");
    // The timeline shows the message itself: channel, recipient, text, delivery state, and the
    // key a receiver deduplicates on.
    let [sms] = reminder.outbound.as_slice() else { panic!("one message: {:?}", reminder.outbound) };
    assert_eq!((sms.channel.as_str(), sms.recipient.as_str()), ("sms", "13800138000"));
    assert!(sms.text.contains("MD-1") && sms.text.contains("2026-10-09"), "{}", sms.text);
    assert_eq!((sms.state.as_str(), sms.attempts), ("stream", 0), "no push destination: stream only");
    assert_eq!(sms.key, format!("320700/MD-1:{}:0", reminder.seq));
    assert!(entries
        .iter()
        .filter(|e| e.seq != reminder.seq || e.instance_id != reminder.instance_id)
        .all(|e| e.outbound.len() == e.messages as usize));

    server.advance_to("2026-10-10T00:00:00+08:00").await?;
    let case = get_case(&server, "320700/MD-1").await?;
    assert_eq!(case.state, "overdue");
    assert!(case.overdue);
    let entries = timeline(&server, "320700/MD-1").await?;
    assert!(deadline_status(&entries, "320700/MD-1", "commitment_deadline")
        .contains(&("2026-10-09 23:59:59 +08:00".into(), DeadlineStatus::Breached)));

    let revoke = RevokeApprovalRequest {
        case_id: "320700/MD-1".into(),
        reason: "逾期未补交材料".into(),
        basis: "《行政许可法》第六十九条".into(),
    };
    let case = server.intake().revoke_approval(revoke).await?.into_inner().case.expect("case");
    assert_eq!(case.state, "revoked");
    assert_eq!(case.variables.get("commitment_outcome").map(String::as_str), Some("not_fulfilled"));
    let last = timeline(&server, "320700/MD-1").await?.pop().expect("entry");
    assert_eq!(
        (last.event.as_str(), last.to_state.as_str(), last.messages),
        ("revoke_approval", "revoked", 1),
        "the dishonesty record"
    );
    assert_eq!(last.outbound.first().map(|m| m.channel.as_str()), Some("credit"));
    server.stop().await
}

#[tokio::test]
async fn materials_in_time_licence_supervision_with_a_late_view_and_a_rectification_then_closed() -> Result<()> {
    let server = TestServer::start("2026-09-21T10:00:00+08:00").await?;
    let mut request = deferral("MD-2", "2026-09-25");
    request.supervisors.push(Supervisor {
        department: "市卫生健康委".into(),
        office: "综合监督处".into(),
        office_admin_mobile: "13900139003".into(),
    });
    server.intake().accept_case(request).await?;
    let case = server
        .intake()
        .submit_materials(SubmitMaterialsRequest { case_id: "320700/MD-2".into() })
        .await?
        .into_inner()
        .case
        .expect("case");
    assert_eq!(case.state, "materials_received");
    assert!(case.deadlines.is_empty(), "materials in time cancel the reminder and the deadline");
    let entries = timeline(&server, "320700/MD-2").await?;
    assert!(deadline_status(&entries, "320700/MD-2", "commitment_deadline")
        .iter()
        .any(|(_, s)| *s == DeadlineStatus::Met));

    let case = complete(&server, "320700/MD-2").await?;
    assert_eq!(case.state, "licensed");
    assert_eq!(case.tasks.len(), 2, "one task per supervising department");
    for t in &case.tasks {
        assert_eq!(t.state, "pushed");
        // Pushed Monday 2026-09-21: 3 working days → end of Thursday 2026-09-24.
        assert_eq!(t.deadlines[0].due.as_ref().map(|d| d.shanghai.as_str()), Some("2026-09-24 23:59:59 +08:00"));
    }
    // T1 views in time; T2 only after its deadline.
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/MD-2/T1".into() }).await?;
    server.advance_to("2026-09-25T09:00:00+08:00").await?;
    let t2 = task(&server, "320700/MD-2/T2").await?;
    assert!(t2.overdue);
    assert_eq!(t2.state, "pushed");
    let late = server
        .supervision()
        .acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/MD-2/T2".into() })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(late.state, "viewed", "a late action is still accepted");
    assert_eq!(late.variables.get("ack_late").map(String::as_str), Some("true"), "and recorded as late");
    assert_ne!(task(&server, "320700/MD-2/T1").await?.variables.get("ack_late").map(String::as_str), Some("true"));

    // T1: inspection finished Friday; the result is due at the end of the 5th working day after.
    let t1 = server
        .supervision()
        .report_inspection(ReportInspectionRequest {
            task_id: "320700/MD-2/T1".into(),
            finished_on: "2026-09-25".into(),
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(
        t1.deadlines[0].due.as_ref().map(|d| d.shanghai.as_str()),
        Some("2026-10-09 23:59:59 +08:00"),
        "5 working days after 2026-09-25 skip National Day: 28, 29, 30 Sep, 9 Oct… and 27 Sep is a make-up Sunday"
    );
    let t1 = server
        .supervision()
        .report_result(ReportResultRequest {
            task_id: "320700/MD-2/T1".into(),
            outcome: Outcome::Compliant as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(t1.state, "closed_compliant");
    assert_eq!(get_case(&server, "320700/MD-2").await?.variables.get("open_tasks").map(String::as_str), Some("1"));

    // T2: non-compliant, rectification ordered, rectified.
    server
        .supervision()
        .report_inspection(ReportInspectionRequest {
            task_id: "320700/MD-2/T2".into(),
            finished_on: "2026-09-25".into(),
        })
        .await?;
    let t2 = server
        .supervision()
        .report_result(ReportResultRequest {
            task_id: "320700/MD-2/T2".into(),
            outcome: Outcome::NonCompliant as i32,
            rectification_deadline: "2026-10-16".into(),
            notes: "标签不符".into(),
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(t2.state, "rectifying");
    let t2 = server
        .supervision()
        .report_rectification(ReportRectificationRequest {
            task_id: "320700/MD-2/T2".into(),
            rectified: true,
            notes: String::new(),
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(t2.state, "closed_rectified");
    let case = get_case(&server, "320700/MD-2").await?;
    assert_eq!(case.state, "closed", "every result fed back");
    assert_eq!(case.variables.get("commitment_outcome").map(String::as_str), Some("fulfilled"));
    server.stop().await
}

#[tokio::test]
async fn a_three_working_day_deadline_spans_national_day_and_counts_the_make_up_saturday() -> Result<()> {
    let server = TestServer::start("2026-09-30T10:00:00+08:00").await?;
    server.intake().accept_case(accept("N-1", Route::Normal, Scenario::Unspecified)).await?;
    let case = complete(&server, "320700/N-1").await?;
    // Pushed Wednesday 30 Sep: 1–7 Oct are holidays, 8 and 9 Oct working, Saturday 10 Oct a make-up working day.
    let due = case.tasks[0].deadlines[0].due.clone().expect("due");
    assert_eq!(due.shanghai, "2026-10-10 23:59:59 +08:00");
    server.advance_to("2026-10-10T23:59:59.998+08:00").await?;
    assert!(!task(&server, "320700/N-1/T1").await?.overdue, "the make-up Saturday is still a working day");
    server.advance_to("2026-10-11T00:00:00+08:00").await?;
    let t = task(&server, "320700/N-1/T1").await?;
    assert!(t.overdue);
    let entries = timeline(&server, "320700/N-1").await?;
    let breach = entries.iter().find(|e| e.event == "timer:view_deadline").expect("breach recorded");
    assert_eq!(breach.instance_id, "320700/N-1/T1");
    assert_eq!(breach.messages, 1, "an escalation to the responsible department");
    server.stop().await
}

#[tokio::test]
async fn a_revocation_decided_in_supervision_returns_to_the_approval_department() -> Result<()> {
    let server = TestServer::start("2026-11-02T10:00:00+08:00").await?;
    server.intake().accept_case(accept("PV-1", Route::Commitment, Scenario::PostApprovalVerification)).await?;
    assert_eq!(get_case(&server, "320700/PV-1").await?.state, "awaiting_approval");
    complete(&server, "320700/PV-1").await?;
    let sup = server.supervision();
    sup.clone().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/PV-1/T1".into() }).await?;
    sup.clone()
        .report_inspection(ReportInspectionRequest {
            task_id: "320700/PV-1/T1".into(),
            finished_on: "2026-11-02".into(),
        })
        .await?;
    let t = sup
        .clone()
        .report_result(ReportResultRequest {
            task_id: "320700/PV-1/T1".into(),
            outcome: Outcome::Revocation as i32,
            notes: "承诺内容与实际不符".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(t.state, "revocation_requested");
    let case = get_case(&server, "320700/PV-1").await?;
    assert_eq!(case.state, "revocation_pending");
    assert_eq!(case.variables.get("revocation_requested_by").map(String::as_str), Some("市市场监督管理局"));
    let revoke = RevokeApprovalRequest {
        case_id: "320700/PV-1".into(),
        reason: "承诺不实".into(),
        basis: "告知承诺制相关规定".into(),
    };
    let case = server.intake().revoke_approval(revoke).await?.into_inner().case.expect("case");
    assert_eq!(case.state, "revoked");
    assert_eq!(case.variables.get("commitment_outcome").map(String::as_str), Some("not_fulfilled"));
    assert_eq!(case.tasks[0].state, "closed_revoked");
    server.stop().await
}

#[tokio::test]
async fn the_same_accept_again_gets_the_first_answer_and_a_changed_one_already_exists() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let first = server.intake().accept_case(deferral("ID-1", "2026-10-09")).await?.into_inner();
    assert!(!first.duplicate);
    let again = server.intake().accept_case(deferral("ID-1", "2026-10-09")).await?.into_inner();
    assert!(again.duplicate);
    assert_eq!(again.case, first.case);
    let changed = server.intake().accept_case(deferral("ID-1", "2026-10-12")).await.expect_err("changed payload");
    assert_eq!(changed.code(), Code::AlreadyExists, "{changed:?}");
    assert!(changed.message().contains("320700/ID-1"), "{}", changed.message());
    assert_eq!(timeline(&server, "320700/ID-1").await?.len(), 2, "accepted and routed, once");
    server.stop().await
}

/// A replay is answered before anything that depends on today: after the commitment deadline
/// has passed, the same request still gets the first answer and a changed one ALREADY_EXISTS
/// (not "the deadline is in the past").
#[tokio::test]
async fn an_accept_replayed_after_its_deadline_passed_gets_the_first_answer() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let first = server.intake().accept_case(deferral("LATE-1", "2026-09-30")).await?.into_inner();
    // Past the deadline, within the idempotency retention (7 days).
    server.advance_to("2026-10-02T10:00:00+08:00").await?;
    let again = server.intake().accept_case(deferral("LATE-1", "2026-09-30")).await?.into_inner();
    assert!(again.duplicate, "a replay on a later day is a duplicate");
    assert_eq!(again.case.as_ref().map(|c| &c.case_id), first.case.as_ref().map(|c| &c.case_id));
    let changed = server.intake().accept_case(deferral("LATE-1", "2026-09-29")).await.expect_err("changed payload");
    assert_eq!(changed.code(), Code::AlreadyExists, "{changed:?}");
    assert!(changed.message().contains("different content"), "{}", changed.message());
    // A new case with a deadline in the past is still refused.
    let past = server.intake().accept_case(deferral("LATE-2", "2026-09-30")).await.expect_err("in the past");
    assert_eq!(past.code(), Code::InvalidArgument, "{past:?}");
    server.stop().await
}

#[tokio::test]
async fn illegal_steps_are_refused_naming_the_current_state() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    server.intake().accept_case(accept("IL-1", Route::Normal, Scenario::Unspecified)).await?;
    let e = server
        .intake()
        .submit_materials(SubmitMaterialsRequest { case_id: "320700/IL-1".into() })
        .await
        .expect_err("normal route");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("case 320700/IL-1 is in state awaiting_approval"), "{}", e.message());
    complete(&server, "320700/IL-1").await?;
    let e = complete(&server, "320700/IL-1").await.expect_err("twice");
    assert!(e.to_string().contains("is in state licensed"), "{e}");
    let e = server
        .supervision()
        .report_result(ReportResultRequest {
            task_id: "320700/IL-1/T1".into(),
            outcome: Outcome::Compliant as i32,
            ..Default::default()
        })
        .await
        .expect_err("not inspected");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("task 320700/IL-1/T1 is in state pushed"), "{}", e.message());
    let e = server.intake().get_case(GetCaseRequest { case_id: "320700/NOPE".into() }).await.expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);
    let e = server
        .supervision()
        .acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/NOPE/T1".into() })
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    server.stop().await
}

#[tokio::test]
async fn a_dishonest_applicant_may_not_take_the_commitment_route() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut r = deferral("CR-1", "2026-10-09");
    r.credit_grade = "dishonest".into();
    let e = server.intake().accept_case(r.clone()).await.expect_err("barred");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("may not take the commitment route"), "{}", e.message());
    assert_eq!(
        server
            .intake()
            .get_case(GetCaseRequest { case_id: "320700/CR-1".into() })
            .await
            .expect_err("nothing written")
            .code(),
        Code::NotFound
    );
    let mut normal = accept("CR-1", Route::Normal, Scenario::Unspecified);
    normal.credit_grade = "dishonest".into();
    assert_eq!(server.intake().accept_case(normal).await?.into_inner().case.expect("case").state, "awaiting_approval");
    server.stop().await
}

#[tokio::test]
async fn malformed_input_is_invalid_argument_naming_the_field_and_writes_nothing() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    type Edit = fn(&mut AcceptCaseRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("applicant.credit_code", |r| {
            r.applicant.as_mut().expect("a").id = Some(applicant::Id::CreditCode("91110000600037341M".into()))
        }),
        ("applicant.credit_code", |r| {
            r.applicant.as_mut().expect("a").id = Some(applicant::Id::CreditCode("9111000060003734IL".into()))
        }),
        ("applicant.citizen_id", |r| {
            r.applicant.as_mut().expect("a").id = Some(applicant::Id::CitizenId("110105194912310021".into()))
        }),
        ("applicant.credit_code", |r| r.applicant.as_mut().expect("a").id = None),
        ("applicant", |r| r.applicant = None),
        ("applicant.mobile", |r| r.applicant.as_mut().expect("a").mobile = "12345".into()),
        ("applicant.name", |r| r.applicant.as_mut().expect("a").name = "x".repeat(201)),
        ("applicant.name", |r| r.applicant.as_mut().expect("a").name = "bad\u{0}name".into()),
        ("route", |r| r.route = 99),
        ("route", |r| r.route = 0),
        ("scenario", |r| r.scenario = 0),
        ("case_no", |r| r.case_no = String::new()),
        ("case_no", |r| r.case_no = "x".repeat(65)),
        ("case_no", |r| r.case_no = "../../etc/passwd".into()),
        ("region_code", |r| r.region_code = "32070".into()),
        ("approval_department", |r| r.approval_department = "  ".into()),
        ("commitment_deadline", |r| r.commitment_deadline = "2026-09-27".into()),
        ("commitment_deadline", |r| r.commitment_deadline = "2150-01-15".into()),
        ("commitment_deadline", |r| r.commitment_deadline = "09/10/2026".into()),
        ("commitment_deadline", |r| r.commitment_period_working_days = 5),
        ("commitment_period_working_days", |r| {
            r.commitment_deadline = String::new();
            r.commitment_period_working_days = 400;
        }),
        ("deferred_materials", |r| r.deferred_materials.clear()),
        ("deferred_materials[0]", |r| r.deferred_materials[0] = "m".repeat(201)),
        ("supervisors", |r| r.supervisors.clear()),
        ("supervisors[0].office", |r| r.supervisors[0].office = String::new()),
        ("supervisors[0].office_admin_mobile", |r| r.supervisors[0].office_admin_mobile = "x".into()),
        ("supervisors", |r| r.supervisors = vec![r.supervisors[0].clone(); 21]),
        ("credit_grade", |r| r.credit_grade = String::new()),
        // Hostile or impossible values that are well-formed at first sight.
        ("credit_grade", |r| r.credit_grade = "AAA".into()),
        ("applicant.citizen_id", |r| {
            r.applicant.as_mut().expect("a").id = Some(applicant::Id::CitizenId(with_check("11010520990101002")))
        }),
        ("applicant.citizen_id", |r| {
            r.applicant.as_mut().expect("a").id = Some(applicant::Id::CitizenId(with_check("00000019491231002")))
        }),
        ("region_code", |r| r.region_code = "999999".into()),
        ("region_code", |r| r.region_code = "000000".into()),
        ("case_no", |r| r.case_no = ".".into()),
        ("case_no", |r| r.case_no = "..".into()),
        ("case_no", |r| r.case_no = "-".into()),
        ("applicant.name", |r| r.applicant.as_mut().expect("a").name = "\u{200B}\u{200B}\u{200B}".into()),
        ("applicant.name", |r| r.applicant.as_mut().expect("a").name = "公司\u{202E}司公".into()),
        ("applicant.name", |r| r.applicant.as_mut().expect("a").name = "公司\u{2028}名".into()),
        ("supervisors[0].department", |r| r.supervisors[0].department = "\u{2066}局\u{2069}".into()),
    ];
    for (field, edit) in cases {
        let mut r = deferral("BAD-1", "2026-10-09");
        edit(&mut r);
        let e = server.intake().accept_case(r).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(&format!("{field}: ")), "{field}: {}", e.message());
    }
    // An oversized request is refused by the transport before it reaches a handler.
    let mut huge = deferral("BAD-1", "2026-10-09");
    huge.applicant.as_mut().expect("a").name = "x".repeat(2 * 1024 * 1024);
    let e = server.intake().accept_case(huge).await.expect_err("too large");
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    // Nothing of any of them was written.
    let listed = server.admin().query_cases(QueryCasesRequest::default()).await?.into_inner();
    assert!(listed.cases.is_empty(), "{:?}", listed.cases);

    // Other calls: ids and dates are checked too.
    let e = server.intake().get_case(GetCaseRequest { case_id: "no-slash".into() }).await.expect_err("id");
    assert_eq!((e.code(), e.message().starts_with("case_id: ")), (Code::InvalidArgument, true), "{e:?}");
    server.intake().accept_case(accept("OK-1", Route::Normal, Scenario::Unspecified)).await?;
    complete(&server, "320700/OK-1").await?;
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/OK-1/T1".into() }).await?;
    for (finished_on, why) in [("2026-09-29", "in the future"), ("2026-9-1", "not a date")] {
        let e = server
            .supervision()
            .report_inspection(ReportInspectionRequest {
                task_id: "320700/OK-1/T1".into(),
                finished_on: finished_on.into(),
            })
            .await
            .expect_err(why);
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with("finished_on: "), "{}", e.message());
    }
    let e = server
        .supervision()
        .report_result(ReportResultRequest { task_id: "320700/OK-1/T1".into(), outcome: 7, ..Default::default() })
        .await
        .expect_err("outcome");
    assert!(e.message().starts_with("outcome: "), "{}", e.message());
    let e = server
        .supervision()
        .list_tasks(ListTasksRequest { state: "nonsense".into(), ..Default::default() })
        .await
        .expect_err("state");
    assert!(e.message().starts_with("state: unknown state"), "{}", e.message());
    let e = server
        .admin()
        .query_cases(QueryCasesRequest {
            page: Some(shenguan::proto::PageRequest { page_size: 1, page_token: "zz".into() }),
            ..Default::default()
        })
        .await
        .expect_err("token");
    assert!(e.message().starts_with("page.page_token: "), "{}", e.message());
    let e = server
        .admin()
        .advance_clock(shenguan::proto::AdvanceClockRequest { by_millis: -5, to: String::new() })
        .await
        .expect_err("back");
    assert_eq!(e.code(), Code::InvalidArgument);
    let task = task(&server, "320700/OK-1/T1").await?;
    assert_eq!(task.state, "viewed", "unchanged by the refused calls");
    server.stop().await
}

#[tokio::test]
async fn statistics_count_what_the_timelines_show() -> Result<()> {
    let server = TestServer::start("2026-09-21T10:00:00+08:00").await?;
    // Four normal cases; their tasks are viewed in time, late, or not at all.
    for n in 1..=4 {
        server.intake().accept_case(accept(&format!("ST-{n}"), Route::Normal, Scenario::Unspecified)).await?;
        complete(&server, &format!("320700/ST-{n}")).await?;
    }
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/ST-1/T1".into() }).await?;
    server.advance_to("2026-09-25T12:00:00+08:00").await?;
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/ST-2/T1".into() }).await?;
    // Two commitment cases: one fulfilled in time, one overdue.
    server.intake().accept_case(deferral("ST-5", "2026-09-30")).await?;
    server.intake().accept_case(deferral("ST-6", "2026-09-28")).await?;
    server.intake().submit_materials(SubmitMaterialsRequest { case_id: "320700/ST-5".into() }).await?;
    server.advance_to("2026-09-29T08:00:00+08:00").await?;

    let stats = server
        .admin()
        .get_statistics(GetStatisticsRequest {
            region_code: "320700".into(),
            from: "2026-09-01".into(),
            to: "2026-09-30".into(),
            with_ids: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    // Counts alone come from the counters the writer keeps; with ids, from the rows: the same.
    let counts = server
        .admin()
        .get_statistics(GetStatisticsRequest {
            region_code: "320700".into(),
            from: "2026-09-01".into(),
            to: "2026-09-30".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(counts, without_ids(&stats));
    let sup = &stats.supervision[0];
    let ids = |f: &Option<shenguan::proto::Figure>| f.as_ref().map(|f| f.ids.clone()).unwrap_or_default();
    assert_eq!(ids(&sup.tasks).len(), 4);
    assert_eq!(ids(&sup.viewed_in_time), vec!["320700/ST-1/T1"]);
    assert_eq!(ids(&sup.viewed_late), vec!["320700/ST-2/T1"]);
    assert_eq!(ids(&sup.view_overdue), vec!["320700/ST-3/T1", "320700/ST-4/T1"]);
    let approval = &stats.approval[0];
    assert_eq!(ids(&approval.cases).len(), 6);
    assert_eq!(ids(&approval.commitments), vec!["320700/ST-5", "320700/ST-6"]);
    assert_eq!(ids(&approval.commitments_overdue), vec!["320700/ST-6"]);

    // Every id behind a figure is borne out by its case's timeline.
    for id in ids(&sup.viewed_in_time) {
        let entries = timeline(&server, id.rsplit_once("/T").expect("task").0).await?;
        assert!(entries.iter().any(|e| e.instance_id == id && e.event == "acknowledge"));
        assert!(deadline_status(&entries, &id, "view_deadline").iter().any(|(_, s)| *s == DeadlineStatus::Met), "{id}");
    }
    for id in ids(&sup.viewed_late).into_iter().chain(ids(&sup.view_overdue)) {
        let entries = timeline(&server, id.rsplit_once("/T").expect("task").0).await?;
        assert!(
            deadline_status(&entries, &id, "view_deadline").iter().any(|(_, s)| *s == DeadlineStatus::Breached),
            "{id}"
        );
    }
    for id in ids(&approval.commitments_overdue) {
        let entries = timeline(&server, &id).await?;
        assert!(entries.iter().any(|e| e.event == "timer:commitment_deadline" && e.to_state == "overdue"), "{id}");
    }
    let tasks = server
        .supervision()
        .list_tasks(ListTasksRequest { overdue_only: true, ..Default::default() })
        .await?
        .into_inner()
        .tasks;
    let mut overdue: Vec<String> = tasks.into_iter().map(|t| t.task_id).collect();
    overdue.sort();
    assert_eq!(overdue, vec!["320700/ST-2/T1", "320700/ST-3/T1", "320700/ST-4/T1"]);
    // Paging walks every case exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = server
            .admin()
            .query_cases(QueryCasesRequest {
                page: Some(shenguan::proto::PageRequest { page_size: 4, page_token: token.clone() }),
                ..Default::default()
            })
            .await?
            .into_inner();
        seen.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    server.stop().await
}

#[tokio::test]
async fn material_verification_is_approved_directly_and_late_materials_are_recorded_late() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    server.intake().accept_case(accept("MV-1", Route::Commitment, Scenario::MaterialVerification)).await?;
    assert_eq!(get_case(&server, "320700/MV-1").await?.state, "awaiting_approval");
    assert_eq!(complete(&server, "320700/MV-1").await?.state, "licensed");

    server.intake().accept_case(deferral("LATE-1", "2026-09-29")).await?;
    server.advance_to("2026-09-30T10:00:00+08:00").await?;
    assert_eq!(get_case(&server, "320700/LATE-1").await?.state, "overdue");
    let case = server
        .intake()
        .submit_materials(SubmitMaterialsRequest { case_id: "320700/LATE-1".into() })
        .await?
        .into_inner()
        .case
        .expect("case");
    assert_eq!(case.state, "materials_received", "a late action is still accepted");
    assert_eq!(case.variables.get("materials_late").map(String::as_str), Some("true"), "and recorded as late");
    assert!(case.overdue, "the breach stays on record");
    server.stop().await
}

#[tokio::test]
async fn missed_result_and_rectification_deadlines_escalate_and_a_failed_rectification_leads_to_revocation(
) -> Result<()> {
    let server = TestServer::start("2026-11-02T10:00:00+08:00").await?;
    server.intake().accept_case(accept("RF-1", Route::Normal, Scenario::Unspecified)).await?;
    complete(&server, "320700/RF-1").await?;
    let t = "320700/RF-1/T1";
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: t.into() }).await?;
    server
        .supervision()
        .report_inspection(ReportInspectionRequest { task_id: t.into(), finished_on: "2026-11-02".into() })
        .await?;
    // 5 working days after Monday 2 Nov: end of Monday 9 Nov.
    server.advance_to("2026-11-10T09:00:00+08:00").await?;
    let task = task(&server, t).await?;
    assert!(task.overdue);
    assert_eq!(task.variables.get("result_breached").map(String::as_str), Some("true"));
    let late = server
        .supervision()
        .report_result(ReportResultRequest {
            task_id: t.into(),
            outcome: Outcome::NonCompliant as i32,
            rectification_deadline: "2026-11-13".into(),
            notes: "未按承诺落实".into(),
        })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(late.state, "rectifying");
    assert_eq!(late.variables.get("result_late").map(String::as_str), Some("true"));
    server.advance_to("2026-11-14T09:00:00+08:00").await?;
    let entries = timeline(&server, "320700/RF-1").await?;
    let breach = entries.iter().find(|e| e.event == "timer:rectification_deadline").expect("escalated");
    assert_eq!((breach.instance_id.as_str(), breach.messages), (t, 1));
    let task = server
        .supervision()
        .report_rectification(ReportRectificationRequest { task_id: t.into(), rectified: false, notes: String::new() })
        .await?
        .into_inner()
        .task
        .expect("task");
    assert_eq!(task.state, "revocation_requested");
    assert_eq!(get_case(&server, "320700/RF-1").await?.state, "revocation_pending");
    let revoke = RevokeApprovalRequest {
        case_id: "320700/RF-1".into(),
        reason: "整改后仍不符合".into(),
        basis: "《行政许可法》第七十条".into(),
    };
    let case = server.intake().revoke_approval(revoke).await?.into_inner().case.expect("case");
    assert_eq!(case.state, "revoked");
    assert_eq!(case.variables.get("commitment_outcome"), None, "no commitment on the normal route");
    assert_eq!(case.tasks[0].state, "closed_revoked");
    let e =
        server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: t.into() }).await.expect_err("ended");
    assert!(e.message().contains("is in state closed_revoked"), "{}", e.message());
    server.stop().await
}

/// `GET /metrics` is open to anyone: a scrape flood must not turn into a query flood on the
/// pool the read calls use. Scrapes with nothing committed read the database once; scrapes
/// while commits go on read it at most once a second.
#[tokio::test]
async fn a_scrape_flood_reads_the_database_at_most_once_a_second() -> Result<()> {
    let server = TestServer::start("2026-09-30T10:00:00+08:00").await?;
    server.intake().accept_case(accept("SCRAPE-0", Route::Normal, Scenario::Unspecified)).await?;
    let refreshes = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("shenguan_metrics_gauge_refreshes_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let mut last = String::new();
    for _ in 0..300 {
        last = server.metrics().await?;
    }
    assert_eq!(refreshes(&last), 1, "nothing committed: one read for 300 scrapes");
    assert!(last.contains("shenguan_timers_pending 0"), "the gauges are there: {last}");
    let started = std::time::Instant::now();
    for i in 1..=100 {
        server.intake().accept_case(accept(&format!("SCRAPE-{i}"), Route::Normal, Scenario::Unspecified)).await?;
        for _ in 0..3 {
            last = server.metrics().await?;
        }
    }
    let bound = started.elapsed().as_secs() + 2;
    assert!(
        refreshes(&last) <= bound,
        "{} reads in {:?} of scraping while committing",
        refreshes(&last),
        started.elapsed()
    );
    server.stop().await
}

#[tokio::test]
async fn metrics_count_commands_commits_fired_timers_and_breaches_by_department() -> Result<()> {
    let server = TestServer::start("2026-09-30T10:00:00+08:00").await?;
    server.intake().accept_case(accept("M-1", Route::Normal, Scenario::Unspecified)).await?;
    complete(&server, "320700/M-1").await?;
    server.advance_to("2026-10-11T00:00:00+08:00").await?;
    let text = server.metrics().await?;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("shenguan_commands_total{kind=\"start\",result=\"applied\"} 2"), "{text}");
    assert!(text.contains("shenguan_timers_fired_total 1"), "{text}");
    assert!(
        text.contains(
            "shenguan_deadline_breaches_total{department=\"市市场监督管理局\",workflow=\"supervision_task\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("shenguan_commit_batch_size_count"), "{text}");
    assert!(text.contains("shenguan_timers_pending 0"), "the view deadline fired and nothing else is armed: {text}");
    assert!(text.contains("shenguan_outbox_messages_total 3"), "supervision push, task SMS, escalation: {text}");
    assert!(text.contains("shenguan_outbox_backlog 0"), "no push destination: every message is stream only: {text}");
    server.stop().await
}

#[tokio::test]
async fn the_generic_engine_service_starts_and_signals_any_workflow_and_refuses_bad_input() -> Result<()> {
    use shenguan::proto::engine_service_client::EngineServiceClient;
    use shenguan::proto::{SignalRequest, StartRequest};
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut engine = EngineServiceClient::new(server.channel.clone());
    let vars = r#"{"reminder_at":"2026-09-28T02:00:30Z","deadline_at":"2026-09-28T02:01:00Z"}"#;
    let start = |id: &str, vars: &str| StartRequest {
        workflow: "bench_case".into(),
        instance_id: id.into(),
        vars_json: vars.into(),
        request_id: format!("start-{id}"),
    };
    let r = engine.start(start("b-1", vars)).await?.into_inner();
    assert_eq!((r.state.as_str(), r.seq, r.duplicate), ("pending", 1, false));
    assert!(engine.start(start("b-1", vars)).await?.into_inner().duplicate);
    engine.start(start("b-2", vars)).await?;
    let r = engine
        .signal(SignalRequest {
            instance_id: "b-1".into(),
            event: "materials_submitted".into(),
            fields_json: String::new(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(r.state, "licensed");
    server.advance_to("2026-09-28T10:01:00+08:00").await?;
    let e = engine
        .signal(SignalRequest { instance_id: "b-2".into(), event: "materials_submitted".into(), ..Default::default() })
        .await
        .expect_err("overdue");
    assert!(e.message().contains("instance b-2 is in state overdue"), "{}", e.message());

    let bad: Vec<(StartRequest, Code, &str)> = vec![
        (StartRequest { workflow: "nope".into(), ..start("b-3", vars) }, Code::InvalidArgument, "workflow: "),
        (start("", vars), Code::InvalidArgument, "instance_id: "),
        (start("a b", vars), Code::InvalidArgument, "instance_id: "),
        (start(&"x".repeat(129), vars), Code::InvalidArgument, "instance_id: "),
        (start("b-3", "{"), Code::InvalidArgument, "vars_json: is not JSON"),
        (start("b-3", "[1]"), Code::InvalidArgument, "vars_json: must be a JSON object"),
        (start("b-3", &format!("{{\"x\":\"{}\"}}", "y".repeat(70_000))), Code::InvalidArgument, "vars_json: is "),
        (start("b-3", r#"{"reminder_at":"soon"}"#), Code::InvalidArgument, "reminder_at: expected an RFC 3339 instant"),
        (start("b-3", r#"{"reminder_at":"2026-09-28T02:00:30Z"}"#), Code::InvalidArgument, "deadline_at: required"),
        (
            start("b-3", r#"{"reminder_at":"2026-09-28T02:00:30Z","deadline_at":"2026-09-28T02:01:00Z","extra":1}"#),
            Code::InvalidArgument,
            "extra: unknown variable",
        ),
    ];
    for (request, code, prefix) in bad {
        let e = engine.start(request).await.expect_err(prefix);
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with(prefix), "{prefix}: {}", e.message());
    }
    let e = engine
        .signal(SignalRequest { instance_id: "b-2".into(), event: "remind".into(), ..Default::default() })
        .await
        .expect_err("internal");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = engine
        .signal(SignalRequest { instance_id: "b-9".into(), event: "materials_submitted".into(), ..Default::default() })
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);
    let e = engine
        .signal(SignalRequest { instance_id: "b-2".into(), event: "nope".into(), ..Default::default() })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = engine.start(start("b-3", vars)).await;
    assert!(e.is_ok(), "none of the refused starts wrote b-3: {e:?}");
    server.stop().await
}

#[tokio::test]
async fn accept_and_licence_answer_exactly_what_a_read_back_shows() -> Result<()> {
    // Both are answered from the instances their group committed, not read back: the answer
    // must be the same as GetCase right after, tasks in the same order (T10 before T2).
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut r = accept("ANSWER-1", Route::Commitment, Scenario::PostApprovalVerification);
    r.supervisors = (1..=11)
        .map(|n| Supervisor {
            department: format!("部门{n}"),
            office: format!("处室{n}"),
            office_admin_mobile: if n % 2 == 0 { "13900139000".into() } else { "+86 139-0013-9001".into() },
        })
        .collect();
    let accepted = server.intake().accept_case(r.clone()).await?.into_inner();
    assert!(!accepted.duplicate);
    assert_eq!(accepted.case.as_ref(), Some(&get_case(&server, "320700/ANSWER-1").await?));
    let licensed = complete(&server, "320700/ANSWER-1").await?;
    assert_eq!(licensed.tasks.len(), 11);
    assert_eq!(licensed.tasks[1].task_id, "320700/ANSWER-1/T10");
    assert_eq!(licensed, get_case(&server, "320700/ANSWER-1").await?);
    // A retry is read back, and says so.
    let again = server.intake().accept_case(r).await?.into_inner();
    assert!(again.duplicate);
    assert_eq!(again.case, Some(get_case(&server, "320700/ANSWER-1").await?));
    server.stop().await
}

/// A statistics reply with its ids left out (what a counts-only call answers).
fn without_ids(reply: &shenguan::proto::GetStatisticsReply) -> shenguan::proto::GetStatisticsReply {
    let mut r = reply.clone();
    let clear = |f: &mut Option<shenguan::proto::Figure>| {
        if let Some(f) = f {
            f.ids.clear();
        }
    };
    for s in &mut r.supervision {
        for f in [
            &mut s.tasks,
            &mut s.viewed_in_time,
            &mut s.viewed_late,
            &mut s.view_overdue,
            &mut s.results_in_time,
            &mut s.results_late,
            &mut s.result_overdue,
            &mut s.rectifications_ordered,
            &mut s.rectified,
            &mut s.rectification_failed,
            &mut s.revocations_decided,
        ] {
            clear(f);
        }
    }
    for a in &mut r.approval {
        for f in [
            &mut a.cases,
            &mut a.commitments,
            &mut a.commitments_fulfilled,
            &mut a.commitments_overdue,
            &mut a.commitments_revoked,
            &mut a.revoked,
        ] {
            clear(f);
        }
    }
    r
}

/// One rule for a mobile number (issue 22): `+86`, spaces and hyphens are accepted at intake,
/// as the SMS gateway accepts them, and stored as the eleven digits the sender sends; what the
/// sender would refuse is refused at intake, naming the field.
#[tokio::test]
async fn mobile_numbers_are_normalised_at_intake_by_the_senders_rule() -> Result<()> {
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    let mut request = accept("MOB-1", Route::Normal, Scenario::Unspecified);
    request.applicant.as_mut().expect("applicant").mobile = "+86 138-0013-8000".into();
    request.supervisors[0].office_admin_mobile = "+8613900139000".into();
    server.intake().accept_case(request).await?;
    server
        .intake()
        .complete_approval(CompleteApprovalRequest {
            case_id: "320700/MOB-1".into(),
            license_no: "JY13207000000001".into(),
            approval_opinion: "同意".into(),
            document_refs: vec![],
        })
        .await?;
    let case = get_case(&server, "320700/MOB-1").await?;
    assert_eq!(case.variables.get("applicant_mobile").map(String::as_str), Some("13800138000"));
    assert!(case.variables.get("supervisors_json").is_some_and(|s| s.contains("\"13900139000\"")), "{case:?}");
    for (field, bad) in [("applicant.mobile", "12800138000"), ("supervisors[0].office_admin_mobile", "+1 555 0100")] {
        let mut request = accept("MOB-2", Route::Normal, Scenario::Unspecified);
        if field == "applicant.mobile" {
            request.applicant.as_mut().expect("applicant").mobile = bad.into();
        } else {
            request.supervisors[0].office_admin_mobile = bad.into();
        }
        let e = server.intake().accept_case(request).await.expect_err(bad);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field) && e.message().contains("mainland mobile"), "{e:?}");
    }
    server.stop().await
}

#[tokio::test]
async fn get_workflow_draws_the_definition_a_case_and_its_task_run_on() -> Result<()> {
    use shenguan::proto::GetWorkflowRequest;
    let server = TestServer::start("2026-09-28T10:00:00+08:00").await?;
    server.intake().accept_case(accept("WF-1", Route::Normal, Scenario::Unspecified)).await?;
    let case = server
        .intake()
        .complete_approval(CompleteApprovalRequest {
            case_id: "320700/WF-1".into(),
            license_no: "JY-WF-1".into(),
            approval_opinion: "同意".into(),
            document_refs: vec!["doc://licence/1".into()],
        })
        .await?
        .into_inner()
        .case
        .expect("case");
    let task = case.tasks.first().expect("a task");
    for (name, version, state) in
        [(&case.workflow, case.workflow_version, &case.state), (&task.workflow, task.workflow_version, &task.state)]
    {
        assert!(!name.is_empty() && version > 0, "{name} v{version}");
        let request = GetWorkflowRequest { name: name.clone(), version };
        let def = server.admin().get_workflow(request).await?.into_inner();
        assert_eq!((&def.name, def.version), (name, version));
        // The state the instance is in is a state of the definition, and so are both ends of
        // every transition.
        let states: Vec<&str> = def.states.iter().map(|s| s.name.as_str()).collect();
        assert!(states.contains(&state.as_str()) && states.contains(&def.initial.as_str()), "{states:?}");
        for t in &def.transitions {
            assert!(states.contains(&t.to.as_str()) && t.from.iter().all(|f| states.contains(&f.as_str())), "{t:?}");
        }
    }
    // The task's deadlines are timers' transitions.
    let def =
        server.admin().get_workflow(GetWorkflowRequest { name: task.workflow.clone(), version: 0 }).await?.into_inner();
    assert!(def.transitions.iter().any(|t| t.timer == "view_deadline"), "{:?}", def.transitions);

    // Unknown, empty and hostile names are refused with the right code; the echo is bounded.
    let long = "<script>".repeat(10_000);
    for (name, version, code) in [
        ("", 0, Code::InvalidArgument),
        ("no_such_workflow", 0, Code::NotFound),
        (task.workflow.as_str(), 999, Code::NotFound),
        (long.as_str(), 0, Code::NotFound),
    ] {
        let e =
            server.admin().get_workflow(GetWorkflowRequest { name: name.into(), version }).await.expect_err("refused");
        assert_eq!(e.code(), code, "{name:.20} v{version}: {e:?}");
        assert!(e.message().len() < 300, "{}", e.message().len());
    }
    server.stop().await
}

#[tokio::test]
async fn the_boards_queries_commitments_due_within_working_days_by_route_and_tasks_by_missed_deadline() -> Result<()> {
    // Monday 2 November 2026: three working days on are Tuesday to Thursday (5 November).
    let server = TestServer::start("2026-11-02T10:00:00+08:00").await?;
    for (no, deadline) in [("D-1", "2026-11-04"), ("D-2", "2026-11-05"), ("D-3", "2026-11-06"), ("D-4", "2026-11-20")] {
        server.intake().accept_case(deferral(no, deadline)).await?;
    }
    server.intake().accept_case(accept("N-1", Route::Normal, Scenario::Unspecified)).await?;
    let licence = CompleteApprovalRequest {
        case_id: "320700/N-1".into(),
        license_no: "JY-N-1".into(),
        approval_opinion: "同意".into(),
        document_refs: vec![],
    };
    server.intake().complete_approval(licence).await?;
    let ids = |cases: Vec<Case>| cases.into_iter().map(|c| c.case_id).collect::<Vec<_>>();
    let due = |n: u32| QueryCasesRequest { commitment_due_within_working_days: n, ..Default::default() };
    let soon = server.admin().query_cases(due(3)).await?.into_inner().cases;
    assert_eq!(ids(soon), ["320700/D-1", "320700/D-2"]);
    let month = server.admin().query_cases(due(20)).await?.into_inner().cases;
    assert_eq!(ids(month).len(), 4);
    // A commitment whose materials came in is no longer waiting.
    server.intake().submit_materials(SubmitMaterialsRequest { case_id: "320700/D-1".into() }).await?;
    let soon = server.admin().query_cases(due(3)).await?.into_inner().cases;
    assert_eq!(ids(soon), ["320700/D-2"]);

    let route = |r: &str| QueryCasesRequest { route: r.into(), ..Default::default() };
    assert_eq!(server.admin().query_cases(route("commitment")).await?.into_inner().cases.len(), 4);
    assert_eq!(ids(server.admin().query_cases(route("normal")).await?.into_inner().cases), ["320700/N-1"]);
    for bad in [route("express"), due(61)] {
        let e = server.admin().query_cases(bad).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }

    // The task of N-1 is not viewed: after its three working days it missed the view deadline,
    // not the result deadline.
    let missed = |m: &str| ListTasksRequest { missed: m.into(), ..Default::default() };
    assert!(server.supervision().list_tasks(missed("view")).await?.into_inner().tasks.is_empty());
    server.advance_to("2026-11-06T10:00:00+08:00").await?;
    let late = server.supervision().list_tasks(missed("view")).await?.into_inner().tasks;
    assert_eq!(late.len(), 1);
    assert!(late[0].task_id.starts_with("320700/N-1/"), "{late:?}");
    assert!(server.supervision().list_tasks(missed("result")).await?.into_inner().tasks.is_empty());
    let e = server.supervision().list_tasks(missed("lunch")).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    server.stop().await
}
