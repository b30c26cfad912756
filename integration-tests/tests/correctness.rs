//! The defects of the correctness review, each over real gRPC on loopback: races decided where
//! the state is authoritative, no back door into the domain workflows, idempotency that
//! survives a day and never crosses callers, one definition of overdue, instants shown in
//! Asia/Shanghai, credit grades matched after normalisation, past-due timers fired at once,
//! damaged data reported instead of defaulted, and hostile input refused.

use anyhow::{ensure, Context, Result};
use integration_tests::fixtures::{accept, deferral};
use integration_tests::{TestServer, Who};
use shenguan::proto::engine_service_client::EngineServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::{
    AcknowledgeTaskRequest, Case, CompleteApprovalRequest, GetCaseRequest, GetStatisticsRequest, PageRequest,
    QueryCasesRequest, RevokeApprovalRequest, Route, Scenario, SignalRequest, StartRequest, SubmitMaterialsRequest,
};
use tonic::Code;

const START: &str = "2026-09-28T10:00:00+08:00";

async fn get_case(server: &TestServer, id: &str) -> Result<Case> {
    server.intake().get_case(GetCaseRequest { case_id: id.into() }).await?.into_inner().case.context("case")
}

fn complete_request(id: &str) -> CompleteApprovalRequest {
    CompleteApprovalRequest {
        case_id: id.into(),
        license_no: "JY13207000000001".into(),
        approval_opinion: "同意".into(),
        document_refs: vec![],
    }
}

fn revoke_request(id: &str) -> RevokeApprovalRequest {
    RevokeApprovalRequest {
        case_id: id.into(), reason: "撤销".into(), basis: "《行政许可法》第六十九条".into()
    }
}

const TERMINAL_TASK_STATES: [&str; 4] = ["closed_compliant", "closed_rectified", "closed_revoked", "cancelled"];

/// A licence and a revocation of the same case in flight together: whichever commits first,
/// a revoked case never keeps an open supervision task.
#[tokio::test]
async fn a_revocation_racing_a_licence_never_leaves_an_open_task() -> Result<()> {
    let server = TestServer::start(START).await?;
    const CASES: usize = 60;
    for i in 0..CASES {
        let mut r = accept(&format!("RACE-{i}"), Route::Normal, Scenario::Unspecified);
        r.supervisors.push(shenguan::proto::Supervisor {
            department: "市消防救援支队".into(),
            office: "防火监督处".into(),
            office_admin_mobile: "13900139002".into(),
        });
        server.intake().accept_case(r).await?;
    }
    let mut races = Vec::new();
    for i in 0..CASES {
        let id = format!("320700/RACE-{i}");
        let (mut a, mut b) = (server.intake(), server.intake());
        races.push(tokio::spawn(async move {
            let (licence, revocation) =
                tokio::join!(a.complete_approval(complete_request(&id)), b.revoke_approval(revoke_request(&id)));
            (id, licence.map(|_| ()).map_err(|s| s.code()), revocation.map(|_| ()).map_err(|s| s.code()))
        }));
    }
    let (mut licensed_first, mut revoked_first) = (0, 0);
    for race in races {
        let (id, licence, revocation) = race.await?;
        ensure!(revocation.is_ok(), "{id}: revocation failed: {revocation:?}");
        match licence {
            Ok(()) => licensed_first += 1,
            Err(Code::FailedPrecondition) => revoked_first += 1,
            Err(code) => anyhow::bail!("{id}: licence answered {code:?}"),
        }
        let case = get_case(&server, &id).await?;
        ensure!(case.state == "revoked", "{id} is {}", case.state);
        for t in &case.tasks {
            ensure!(TERMINAL_TASK_STATES.contains(&t.state.as_str()), "{id}: task {} is still {}", t.task_id, t.state);
        }
        if licence.is_ok() {
            ensure!(case.tasks.len() == 2, "{id}: licensed with {} tasks", case.tasks.len());
        }
    }
    eprintln!("{licensed_first} licensed before their revocation, {revoked_first} revoked first");
    server.stop().await
}

/// The generic service cannot start or signal the domain workflows, nor pose as a case's task.
#[tokio::test]
async fn the_generic_service_is_no_back_door_into_cases_and_tasks() -> Result<()> {
    let server = TestServer::start(START).await?;
    let mut engine = EngineServiceClient::new(server.channel.clone());
    server.intake().accept_case(accept("BD-1", Route::Normal, Scenario::Unspecified)).await?;

    // Refused starts: the domain workflows, and an instance under a task id of a real case
    // (it would show up as one of its tasks) or a case id.
    let bench = r#"{"reminder_at":"2026-09-29T02:00:00Z","deadline_at":"2026-09-30T02:00:00Z"}"#;
    let refused = [
        ("approval_case", "bd-x", r#"{"region":"320700"}"#, "workflow: "),
        ("supervision_task", "bd-y", r#"{"region":"320700"}"#, "workflow: "),
        ("bench_case", "320700/BD-1/T7", bench, "instance_id: "),
        ("bench_case", "320700/BD-2", bench, "instance_id: "),
    ];
    for (workflow, id, vars, field) in refused {
        let request = StartRequest {
            workflow: workflow.into(),
            instance_id: id.into(),
            vars_json: vars.into(),
            request_id: String::new(),
        };
        let e = engine.start(request).await.expect_err(id);
        ensure!(e.code() == Code::InvalidArgument && e.message().starts_with(field), "{workflow} {id}: {e:?}");
    }
    // Licensing through the back door would leave the case without its tasks.
    let e = engine
        .signal(SignalRequest {
            instance_id: "320700/BD-1".into(),
            event: "complete_approval".into(),
            fields_json: r#"{"license_no":"X","approval_opinion":"同意"}"#.into(),
            request_id: String::new(),
        })
        .await
        .expect_err("signal a case");
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    let case = get_case(&server, "320700/BD-1").await?;
    ensure!(case.state == "awaiting_approval" && case.tasks.is_empty(), "{case:?}");

    // A generic request id that looks like a domain key blocks nothing.
    engine
        .start(StartRequest {
            workflow: "bench_case".into(),
            instance_id: "bd-z".into(),
            vars_json: bench.into(),
            request_id: "accept:320700/BD-3".into(),
        })
        .await?;
    server.intake().accept_case(accept("BD-3", Route::Normal, Scenario::Unspecified)).await?;
    server.stop().await
}

/// A retry of AcceptCase on a later day is the same request: its derived deadline moved, the
/// request did not.
#[tokio::test]
async fn accept_retried_days_later_is_a_duplicate_not_a_conflict() -> Result<()> {
    let server = TestServer::start(START).await?;
    let mut r = deferral("ID-1", "");
    r.commitment_deadline = String::new();
    r.commitment_period_working_days = 10;
    let first = server.intake().accept_case(r.clone()).await?.into_inner();
    server.advance_to("2026-10-01T10:00:00+08:00").await?;
    let again = server.intake().accept_case(r.clone()).await?.into_inner();
    ensure!(again.duplicate, "the retry was not recognised");
    let (a, b) = (first.case.context("case")?, again.case.context("case")?);
    ensure!(a.commitment_deadline == b.commitment_deadline, "{} then {}", a.commitment_deadline, b.commitment_deadline);
    // Another request under the same case number is still a conflict.
    r.deferred_materials.push("另一份材料".into());
    let e = server.intake().accept_case(r).await.expect_err("changed");
    ensure!(e.code() == Code::AlreadyExists, "{e:?}");
    server.stop().await
}

fn with_id<T>(message: T, request_id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("x-request-id", request_id.parse().expect("ascii"));
    r
}

/// Request ids are one namespace per method and caller (the verified principal, not a header
/// the caller sets), and are forgotten after the retention.
#[tokio::test]
async fn request_ids_are_scoped_per_caller_and_method_and_expire() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keys.db");
    let day = 24 * 3_600_000;
    let server = TestServer::start_secured(START, &db, |c| c.idempotency_retention = 2 * day, |_| {}).await?;
    let platform = |name: &str| IntakeServiceClient::new(server.as_who(&Who::new(name, "platform", "320700", "", "")));
    let (mut a, mut b) = (platform("platform-a"), platform("platform-b"));
    for n in 1..=3 {
        a.accept_case(deferral(&format!("K-{n}"), "2026-10-09")).await?;
    }
    let submit = |n: u32| SubmitMaterialsRequest { case_id: format!("320700/K-{n}") };
    // Two platforms that happen to use the same id: two requests.
    a.submit_materials(with_id(submit(1), "req-1")).await?;
    let mut forged = with_id(submit(2), "req-1");
    // A header naming another caller changes nothing: the key is the token's subject.
    forged.metadata_mut().insert("x-shenguan-actor", "platform-a".parse().expect("ascii"));
    let reply = b.submit_materials(forged).await?.into_inner();
    ensure!(!reply.duplicate, "one caller's id answered another's request");
    let k2 = reply.case.context("case")?;
    ensure!(k2.state == "materials_received", "K-2 not applied");
    // The same caller, the same id, another request: a conflict while the id is remembered…
    let e = a.submit_materials(with_id(submit(3), "req-1")).await.expect_err("reused");
    ensure!(e.code() == Code::AlreadyExists, "{e:?}");
    // …and a new request once it is forgotten.
    let admin = shenguan::proto::admin_service_client::AdminServiceClient::new(server.as_who(&Who::new(
        "ops",
        "engine_admin",
        "",
        "",
        "",
    )));
    admin
        .clone()
        .advance_clock(shenguan::proto::AdvanceClockRequest { by_millis: 0, to: "2026-10-01T10:00:00+08:00".into() })
        .await?;
    let c = a.submit_materials(with_id(submit(3), "req-1")).await?.into_inner();
    ensure!(!c.duplicate && c.case.context("case")?.state == "materials_received", "expired key not reusable");
    server.stop().await
}

/// One definition of overdue: a case whose task missed its view deadline is overdue in GetCase
/// and in QueryCases with overdue_only; instants come back in Asia/Shanghai.
#[tokio::test]
async fn overdue_means_the_same_everywhere_and_instants_are_shanghai_time() -> Result<()> {
    let server = TestServer::start("2026-09-30T10:00:00+08:00").await?;
    server.intake().accept_case(accept("OD-1", Route::Normal, Scenario::Unspecified)).await?;
    server.intake().accept_case(accept("OD-2", Route::Normal, Scenario::Unspecified)).await?;
    server.intake().complete_approval(complete_request("320700/OD-1")).await?;
    server.intake().complete_approval(complete_request("320700/OD-2")).await?;
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/OD-2/T1".into() }).await?;
    server.advance_to("2026-10-11T00:00:00+08:00").await?;
    let od1 = get_case(&server, "320700/OD-1").await?;
    ensure!(od1.state == "licensed" && od1.overdue, "OD-1: {} overdue={}", od1.state, od1.overdue);
    ensure!(!get_case(&server, "320700/OD-2").await?.overdue, "OD-2 viewed in time");
    let listed = server
        .admin()
        .query_cases(QueryCasesRequest { overdue_only: true, ..Default::default() })
        .await?
        .into_inner()
        .cases;
    let ids: Vec<&str> = listed.iter().map(|c| c.case_id.as_str()).collect();
    ensure!(ids == ["320700/OD-1"], "overdue_only listed {ids:?}");

    let licensed_at = od1.variables.get("licensed_at").context("licensed_at")?;
    ensure!(licensed_at == "2026-09-30 10:00:00 +08:00", "licensed_at shown as {licensed_at}");
    let viewed = get_case(&server, "320700/OD-2").await?.tasks[0].variables.get("viewed_at").cloned();
    ensure!(viewed.as_deref() == Some("2026-09-30 10:00:00 +08:00"), "viewed_at shown as {viewed:?}");
    server.stop().await
}

/// Credit grades are a closed set matched after normalisation.
#[tokio::test]
async fn credit_grades_are_normalised_and_unknown_ones_refused() -> Result<()> {
    let server = TestServer::start(START).await?;
    for (i, grade) in ["DISHONEST", "Dishonest", " dishonest", "ｄｉｓｈｏｎｅｓｔ", "d"].iter().enumerate() {
        let mut r = deferral(&format!("CG-{i}"), "2026-10-09");
        r.credit_grade = (*grade).into();
        let e = server.intake().accept_case(r).await.expect_err(grade);
        ensure!(e.code() == Code::FailedPrecondition, "{grade:?}: {e:?}");
    }
    let mut r = deferral("CG-X", "2026-10-09");
    r.credit_grade = "AAA".into();
    let e = server.intake().accept_case(r).await.expect_err("unknown");
    ensure!(e.code() == Code::InvalidArgument && e.message().starts_with("credit_grade: "), "{e:?}");
    let mut r = deferral("CG-A", "2026-10-09");
    r.credit_grade = " a ".into();
    let case = server.intake().accept_case(r).await?.into_inner().case.context("case")?;
    ensure!(case.credit_grade == "A", "stored as {:?}", case.credit_grade);
    server.stop().await
}

/// A reminder armed after its due time (a case accepted at 10:00 whose reminder is due at 09:00
/// that day) fires at once — in the transaction that armed it, so the answer already shows it,
/// without the sandbox clock being moved.
#[tokio::test]
async fn a_timer_armed_in_the_past_fires_at_once() -> Result<()> {
    let server = TestServer::start("2026-10-08T10:00:00+08:00").await?;
    let case =
        server.intake().accept_case(deferral("PAST-1", "2026-10-09")).await?.into_inner().case.context("case")?;
    ensure!(case.state == "reminded", "the past-due reminder did not fire: {}", case.state);
    let names: Vec<&str> = case.deadlines.iter().map(|d| d.name.as_str()).collect();
    ensure!(names == ["commitment_deadline"], "still armed: {names:?}");
    let entries = server
        .admin()
        .get_timeline(shenguan::proto::GetTimelineRequest { case_id: "320700/PAST-1".into() })
        .await?
        .into_inner()
        .entries;
    let fired: Vec<&str> = entries.iter().filter(|e| e.event.starts_with("timer:")).map(|e| e.event.as_str()).collect();
    ensure!(fired == ["timer:material_reminder"], "fired {fired:?}");
    ensure!(entries.iter().any(|e| e.event == "timer:material_reminder" && e.messages == 1), "no SMS");
    server.stop().await
}

/// Supervisors that do not parse are damaged data: DATA_LOSS and nothing written, never a case
/// licensed with no tasks.
#[tokio::test]
async fn damaged_supervisors_are_data_loss_not_a_licence_without_tasks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("damaged.db");
    let server = TestServer::start_on(START, &db, |_| {}).await?;
    server.intake().accept_case(accept("DL-1", Route::Normal, Scenario::Unspecified)).await?;
    server.stop().await?;
    {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
        sqlx::query(
            "UPDATE instances SET vars = json_set(vars, '$.supervisors_json', 'not json') WHERE id = '320700/DL-1'",
        )
        .execute(&mut conn)
        .await?;
        conn.close().await?;
    }
    let server = TestServer::start_on(START, &db, |_| {}).await?;
    let e = server.intake().complete_approval(complete_request("320700/DL-1")).await.expect_err("damaged");
    ensure!(e.code() == Code::DataLoss, "{e:?}");
    let case = get_case(&server, "320700/DL-1").await?;
    ensure!(case.state == "awaiting_approval" && case.tasks.is_empty(), "{case:?}");
    server.stop().await
}

/// Hostile values in calls other than AcceptCase: a multi-byte page token, a date at the end of
/// the calendar type's range.
#[tokio::test]
async fn hostile_tokens_and_dates_are_invalid_argument_not_a_panic() -> Result<()> {
    let server = TestServer::start(START).await?;
    for token in ["中a", "a中", "éé", "zz"] {
        let e = server
            .admin()
            .query_cases(QueryCasesRequest {
                page: Some(PageRequest { page_size: 10, page_token: token.into() }),
                ..Default::default()
            })
            .await
            .expect_err(token);
        ensure!(e.code() == Code::InvalidArgument, "{token:?}: {e:?}");
    }
    let e = server
        .admin()
        .get_statistics(GetStatisticsRequest {
            region_code: "320700".into(),
            from: "2026-01-01".into(),
            to: "9999-12-31".into(),
            ..Default::default()
        })
        .await
        .expect_err("to");
    ensure!(e.code() == Code::InvalidArgument && e.message().starts_with("to: "), "{e:?}");
    // The server is still there.
    server.admin().query_cases(QueryCasesRequest::default()).await?;
    server.stop().await
}

/// A body that is not protobuf is the caller's error.
#[tokio::test]
async fn a_malformed_protobuf_body_is_invalid_argument() -> Result<()> {
    let server = TestServer::start(START).await?;
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/shenguan.v1.IntakeService/GetCase");
    // Field 1 (case_id) as a length-delimited string claiming 100 bytes, with 2 present.
    let body = vec![0x0a, 100, b'a', b'b'];
    let e = grpc.unary(tonic::Request::new(body), path, RawCodec).await.expect_err("malformed");
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    server.stop().await
}

/// Sends bytes as they are and ignores the answer's content.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Statistics with nothing given answer for every region, this year (by the server's clock).
#[tokio::test]
async fn statistics_with_no_filters_cover_every_region_this_year() -> Result<()> {
    let server = TestServer::start(START).await?;
    server.intake().accept_case(accept("ST-1", Route::Normal, Scenario::Unspecified)).await?;
    let mut other = accept("ST-2", Route::Normal, Scenario::Unspecified);
    other.region_code = "320100".into();
    server.intake().accept_case(other).await?;
    let reply = server.admin().get_statistics(GetStatisticsRequest::default()).await?.into_inner();
    let mut regions: Vec<(String, u64)> =
        reply.approval.iter().map(|a| (a.region_code.clone(), a.cases.as_ref().map_or(0, |f| f.count))).collect();
    regions.sort();
    ensure!(regions == [("320100".to_owned(), 1), ("320700".to_owned(), 1)], "{regions:?}");
    server.stop().await
}

/// September's statistics request.
fn period() -> GetStatisticsRequest {
    GetStatisticsRequest { from: "2026-09-01".into(), to: "2026-09-30".into(), ..Default::default() }
}

/// Three cases and a task that count in several figures (one commitment overdue), then
/// September's statistics, checked to count them.
async fn counted_statistics(server: &TestServer) -> Result<shenguan::proto::GetStatisticsReply> {
    server.intake().accept_case(accept("FC-1", Route::Normal, Scenario::Unspecified)).await?;
    server.intake().accept_case(deferral("FC-2", "2026-09-30")).await?;
    server.intake().accept_case(deferral("FC-3", "2026-10-09")).await?;
    server.intake().submit_materials(SubmitMaterialsRequest { case_id: "320700/FC-3".into() }).await?;
    server.intake().complete_approval(complete_request("320700/FC-1")).await?;
    server.supervision().acknowledge_task(AcknowledgeTaskRequest { task_id: "320700/FC-1/T1".into() }).await?;
    server.advance_to("2026-10-12T09:00:00+08:00").await?;
    let counted = server.admin().get_statistics(period()).await?.into_inner();
    let cases: u64 = counted.approval.iter().map(|a| a.cases.as_ref().map_or(0, |f| f.count)).sum();
    let overdue: u64 = counted.approval.iter().map(|a| a.commitments_overdue.as_ref().map_or(0, |f| f.count)).sum();
    let tasks: u64 = counted.supervision.iter().map(|s| s.tasks.as_ref().map_or(0, |f| f.count)).sum();
    ensure!(cases == 3 && overdue == 1 && tasks >= 1, "{counted:?}");
    Ok(counted)
}

/// The statistics are summed from counters the writer keeps. A database from before they
/// existed has none: the first start counts its cases and tasks, and the figures are what they
/// were. A counter that drifts from the rows is named by `admin verify`.
#[tokio::test]
async fn statistics_counters_are_built_at_first_start_and_verify_names_a_drifted_one() -> Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("counters.db");
    let server = TestServer::start_on(START, &db, |_| {}).await?;
    let before = counted_statistics(&server).await?;
    server.stop().await?;

    // As a database migrated from before the counters: the tables empty, nothing built.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
    sqlx::query("DELETE FROM figure_counts").execute(&mut conn).await?;
    sqlx::query("DELETE FROM figure_counts_built").execute(&mut conn).await?;
    conn.close().await?;
    let server = TestServer::start_on("2026-10-12T09:00:00+08:00", &db, |_| {}).await?;
    let after = server.admin().get_statistics(period()).await?.into_inner();
    ensure!(after == before, "rebuilt {after:?}\nwas {before:?}");
    server.stop().await?;
    let registry = shenguan::definition::Registry::embedded()?;
    let calendars = shenguan::calendar::Calendars::embedded()?;
    let report = shenguan::admin::verify_file(&db, &registry, &calendars).await?;
    ensure!(report.divergent.is_empty(), "{:?}", report.divergent);

    // One counter off by one: verify says which.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
    sqlx::query("UPDATE figure_counts SET n = n + 1 WHERE grain = 'month' AND figure = 'commitments_overdue'")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let report = shenguan::admin::verify_file(&db, &registry, &calendars).await?;
    let named: Vec<&String> =
        report.divergent.iter().filter(|(what, _)| what == "figure_counts").map(|(_, m)| m).collect();
    ensure!(
        named.len() == 1
            && named[0].contains("month counters of approval 320700")
            && named[0].contains("hold 2, the rows 1"),
        "{:?}",
        report.divergent
    );
    Ok(())
}

/// On PostgreSQL too: the counters rebuilt at first start are those the commits kept (the
/// rebuild writes them with the batch statement's counter upsert, as the commits do).
#[tokio::test]
async fn statistics_counters_rebuilt_on_postgresql_are_those_the_commits_kept() -> Result<()> {
    use sqlx::Connection;
    let Some(url) = integration_tests::pg::database().await else { return Ok(()) };
    let on_postgres = || {
        let url = url.clone();
        move |c: &mut shenguan::engine::Config| c.database = shenguan::store::Database::Postgres(url)
    };
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("beside.db");
    let server = TestServer::start_on(START, &db, on_postgres()).await?;
    let before = counted_statistics(&server).await?;
    server.stop().await?;

    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("DELETE FROM figure_counts").execute(&mut conn).await?;
    sqlx::query("DELETE FROM figure_counts_built").execute(&mut conn).await?;
    let server = TestServer::start_on("2026-10-12T09:00:00+08:00", &db, on_postgres()).await?;
    let after = server.admin().get_statistics(period()).await?.into_inner();
    ensure!(after == before, "rebuilt {after:?}\nwas {before:?}");
    server.stop().await
}
