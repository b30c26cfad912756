//! Identity over real gRPC on loopback: tokens (every way a token can be wrong), key files
//! reloaded, the role × RPC matrix, scopes that filter lists and deny named objects, attribution
//! in the timeline, TLS and mTLS, the rate limit per principal.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use integration_tests::fixtures::{accept, deferral};
use integration_tests::{bearer, Authed, Pki, TestServer, Who};
use jsonwebtoken::Algorithm;
use shenguan::auth::verify::{self, mint_with_pem, Claims, Verifier};
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::engine_service_client::EngineServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::supervision_service_client::SupervisionServiceClient;
use shenguan::proto::{self as pb, Route, Scenario};
use shenguan::server::Security;
use tonic::Code;

const START: &str = "2026-09-28T10:00:00+08:00";
const ISSUER: &str = "https://idp.example.gov.cn";
const DEPT: &str = "市市场监督管理局";
const OFFICE: &str = "食品生产监管处";

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys").join(name)
}

/// A key directory with an RSA and an EC public key, and the private halves to sign with.
struct Keys {
    dir: tempfile::TempDir,
    rsa_private: Vec<u8>,
    ec_private: Vec<u8>,
}

impl Keys {
    fn new() -> Result<Keys> {
        let dir = tempfile::tempdir()?;
        std::fs::copy(data("rsa-test-only.pub.pem"), dir.path().join("rsa-1.pem"))?;
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        std::fs::write(dir.path().join("ec-1.pem"), ec.public_key_pem())?;
        Ok(Keys {
            dir,
            rsa_private: std::fs::read(data("rsa-test-only.key.pem"))?,
            ec_private: ec.serialize_pem().into_bytes(),
        })
    }

    fn verifier(&self) -> Result<Verifier> {
        Ok(Verifier::new(verify::Config {
            pem: Some(self.dir.path().to_owned()),
            jwks: None,
            issuer: ISSUER.into(),
            audience: verify::AUDIENCE.into(),
            leeway: 5,
            dev: None,
        })?)
    }
}

fn now() -> u64 {
    integration_tests::jsonwebtoken_now()
}

fn claims(roles: &[&str]) -> Claims {
    Claims {
        region: "320700".into(),
        iss: ISSUER.into(),
        aud: verify::AUDIENCE.into(),
        ..Claims::valid_for("ops-1", roles.iter().map(|r| (*r).to_owned()).collect(), Duration::from_secs(600))
    }
}

async fn keyed_server(keys: &Keys, db: &Path) -> Result<TestServer> {
    let security = Security::with(shenguan::auth::layer::Mode::Verify(Arc::new(keys.verifier()?)));
    TestServer::start_with(START, db, |_| {}, security, None).await
}

fn admin_with(server: &TestServer, token: &str) -> AdminServiceClient<Authed> {
    AdminServiceClient::new(tonic::service::interceptor::InterceptedService::new(server.channel.clone(), bearer(token)))
}

async fn status_of(server: &TestServer, token: &str) -> tonic::Status {
    match admin_with(server, token).calendar_status(pb::CalendarStatusRequest {}).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn tokens_are_checked_for_signature_time_issuer_audience_and_algorithm() -> Result<()> {
    let keys = Keys::new()?;
    let dir = tempfile::tempdir()?;
    let server = keyed_server(&keys, &dir.path().join("t.db")).await?;
    let rs = |c: &Claims| mint_with_pem(Algorithm::RS256, &keys.rsa_private, Some("rsa-1"), c).expect("mint");
    let es = |c: &Claims| mint_with_pem(Algorithm::ES256, &keys.ec_private, Some("ec-1"), c).expect("mint");
    let admin = claims(&["engine_admin"]);

    // `aud` may be an array (RFC 7519 §4.1.3) naming this engine among others.
    let array_aud = {
        let mut c = serde_json::to_value(&admin)?;
        c["aud"] = serde_json::json!(["another-system", verify::AUDIENCE]);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&keys.rsa_private)?;
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &c, &key)?
    };
    let s = status_of(&server, &array_aud).await;
    ensure!(s.code() == Code::Ok, "an audience array naming this engine refused: {s:?}");
    let other_only = {
        let mut c = serde_json::to_value(&admin)?;
        c["aud"] = serde_json::json!(["another-system", "a-third"]);
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&keys.rsa_private)?;
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &c, &key)?
    };
    let s = status_of(&server, &other_only).await;
    ensure!(s.message().contains("audience is not this engine"), "an array without this engine: {s:?}");

    // Both kinds of configured key verify, with and without a kid.
    for token in [rs(&admin), es(&admin), mint_with_pem(Algorithm::ES256, &keys.ec_private, None, &admin).expect("m")] {
        let s = status_of(&server, &token).await;
        ensure!(s.code() == Code::Ok, "a good token refused: {s:?}");
    }

    let other_ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem();
    let good = rs(&admin);
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = {
        let mut c = admin.clone();
        c.sub = "someone-else".into();
        format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&c)?), parts[2])
    };
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    // The classic confusion: HS256 "signed" with the server's public RSA key as the secret.
    let hs_confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &admin,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(data("rsa-test-only.pub.pem"))?),
    )?;
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", rs(&Claims { exp: now() - 120, nbf: now() - 600, ..admin.clone() }), "the token has expired"),
        ("not yet valid", rs(&Claims { nbf: now() + 600, ..admin.clone() }), "the token is not valid yet"),
        ("wrong issuer", rs(&Claims { iss: "https://evil.example".into(), ..admin.clone() }), "issuer is not accepted"),
        (
            "wrong audience",
            rs(&Claims { aud: "another-system".into(), ..admin.clone() }),
            "audience is not this engine",
        ),
        (
            "wrong key",
            mint_with_pem(Algorithm::ES256, other_ec.as_bytes(), Some("ec-1"), &admin).expect("m"),
            "signature does not verify",
        ),
        (
            "unknown kid",
            mint_with_pem(Algorithm::RS256, &keys.rsa_private, Some("rsa-9"), &admin).expect("m"),
            "no key",
        ),
        ("alg none", none, "not accepted"),
        ("tampered payload", tampered, "signature does not verify"),
        ("HS256 outside dev mode", hs_confused, "HS256 outside dev mode"),
        ("garbage", "not-a-jwt".into(), "not a JWT"),
        // Two parts whose header names HS256: not a JWT, whatever the header says.
        ("two parts", format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), parts[1]), "not a JWT"),
        ("empty subject", rs(&Claims { sub: String::new(), ..admin.clone() }), "sub"),
    ];
    for (name, token, says) in cases {
        let s = status_of(&server, &token).await;
        ensure!(s.code() == Code::Unauthenticated, "{name}: {s:?}");
        ensure!(s.message().contains(says), "{name}: {:?} does not say {says:?}", s.message());
    }
    // No token at all, and a header that is not a bearer token.
    let s = AdminServiceClient::new(server.channel.clone()).calendar_status(pb::CalendarStatusRequest {}).await;
    let s = s.expect_err("no token");
    ensure!(s.code() == Code::Unauthenticated && s.message().contains("Bearer"), "{s:?}");
    let mut r = tonic::Request::new(pb::CalendarStatusRequest {});
    r.metadata_mut().insert("authorization", "Basic YWRtaW46YWRtaW4=".parse()?);
    let s = AdminServiceClient::new(server.channel.clone()).calendar_status(r).await.expect_err("basic");
    ensure!(s.code() == Code::Unauthenticated, "{s:?}");
    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?;
    server.stop().await
}

/// An EC public key as a JWK.
fn jwk(kid: &str, key: &rcgen::KeyPair) -> serde_json::Value {
    let raw = key.public_key_raw();
    serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
}

#[tokio::test]
async fn a_jwks_file_is_read_and_a_rotated_key_is_picked_up_without_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("jwks.json");
    let old = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    std::fs::write(&jwks, serde_json::to_vec(&serde_json::json!({"keys": [jwk("k1", &old)]}))?)?;
    let verifier = Verifier::new(verify::Config {
        pem: None,
        jwks: Some(jwks.clone()),
        issuer: ISSUER.into(),
        audience: verify::AUDIENCE.into(),
        leeway: 5,
        dev: None,
    })?;
    let mut security = Security::with(shenguan::auth::layer::Mode::Verify(Arc::new(verifier)));
    security.key_reload = std::time::Duration::from_millis(50);
    let server = TestServer::start_with(START, &dir.path().join("j.db"), |_| {}, security, None).await?;
    let admin = claims(&["engine_admin"]);
    let with_old = mint_with_pem(Algorithm::ES256, old.serialize_pem().as_bytes(), Some("k1"), &admin).expect("m");
    ensure!(status_of(&server, &with_old).await.code() == Code::Ok, "the JWKS key is not used");

    // The identity provider rotates: k2 in, k1 out.
    let new = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let with_new = mint_with_pem(Algorithm::ES256, new.serialize_pem().as_bytes(), Some("k2"), &admin).expect("m");
    ensure!(status_of(&server, &with_new).await.code() == Code::Unauthenticated, "k2 accepted before it exists");
    let next = dir.path().join("jwks.next");
    std::fs::write(&next, serde_json::to_vec(&serde_json::json!({"keys": [jwk("k2", &new)]}))?)?;
    std::fs::rename(&next, &jwks)?;
    // The server polls the file every 50 ms: ask until it answers (bounded), not sleep.
    let mut accepted = false;
    for _ in 0..400 {
        if status_of(&server, &with_new).await.code() == Code::Ok {
            accepted = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    ensure!(accepted, "the rotated key was never picked up");
    ensure!(status_of(&server, &with_old).await.code() == Code::Unauthenticated, "the retired key still verifies");
    // A broken file keeps the keys in use.
    std::fs::write(&jwks, b"{ not json")?;
    for _ in 0..20 {
        ensure!(status_of(&server, &with_new).await.code() == Code::Ok, "a broken JWKS file dropped the keys");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.stop().await
}

/// The parties of the matrix, each a token.
fn parties() -> Vec<(&'static str, Who)> {
    vec![
        ("engine_admin", Who::new("root", "engine_admin", "", "", "")),
        ("region_admin", Who::new("city-admin", "region_admin", "320700", "", "")),
        ("auditor", Who::new("audit-1", "auditor", "320700", "", "")),
        ("department_admin", Who::new("dept-admin", "department_admin", "320700", DEPT, "")),
        ("office_admin", Who::new("office-admin", "office_admin", "320700", DEPT, OFFICE)),
        ("platform", Who::new("zwfw-320700", "platform", "320700", "", "")),
        ("supervisor", Who::new("sup-sjj", "supervisor", "320700", DEPT, "")),
        ("no_role", Who::new("stranger", "librarian", "320700", "", "")),
    ]
}

/// Which parties may call each RPC, written out by hand from the issue (not derived from the
/// code under test): `A` allowed, `-` PERMISSION_DENIED, in the order of [`parties`].
const MATRIX: [(&str, &str); 25] = [
    ("AcceptCase", "A----A--"),
    ("SubmitMaterials", "A----A--"),
    ("CompleteApproval", "A----A--"),
    ("RevokeApproval", "A----A--"),
    ("GetCase", "AAAAAA--"),
    ("ListTasks", "AAAAA-A-"),
    ("AcknowledgeTask", "A-----A-"),
    ("ReportInspection", "A-----A-"),
    ("ReportResult", "A-----A-"),
    ("ReportRectification", "A-----A-"),
    ("GetTimeline", "AAAAAA--"),
    ("QueryCases", "AAAAAA--"),
    ("GetStatistics", "AAAAA---"),
    ("AdvanceClock", "A-------"),
    ("LoadCalendar", "A-------"),
    ("CalendarStatus", "AAAAA---"),
    ("EngineService.Start", "A-------"),
    ("EngineService.Signal", "A-------"),
    ("ListDeadLetters", "A-------"),
    ("RetryDeadLetter", "A-------"),
    ("ListConsumers", "A-------"),
    ("DropConsumer", "A-------"),
    ("EventsService.Subscribe", "A----AA-"),
    ("EventsService.Ack", "A----AA-"),
    ("GetWorkflow", "AAAAAAA-"),
];

/// One call of `rpc` as `ch`; requests that pass authorisation fail validation or find nothing,
/// so that the matrix changes no state it depends on.
async fn call(rpc: &str, ch: Authed) -> tonic::Status {
    let mut intake = IntakeServiceClient::new(ch.clone());
    let mut sup = SupervisionServiceClient::new(ch.clone());
    let mut admin = AdminServiceClient::new(ch.clone());
    let mut engine = EngineServiceClient::new(ch.clone());
    let mut events = shenguan::proto::events_service_client::EventsServiceClient::new(ch);
    let case = "320700/M-1".to_string();
    let task = "320700/M-1/T1".to_string();
    let bad_case = pb::AcceptCaseRequest { case_no: String::new(), ..accept("", Route::Normal, Scenario::Unspecified) };
    let result = match rpc {
        "AcceptCase" => intake.accept_case(bad_case).await.map(|_| ()),
        "SubmitMaterials" => intake.submit_materials(pb::SubmitMaterialsRequest { case_id: case }).await.map(|_| ()),
        "CompleteApproval" => intake
            .complete_approval(pb::CompleteApprovalRequest { case_id: case, ..Default::default() })
            .await
            .map(|_| ()),
        "RevokeApproval" => {
            intake.revoke_approval(pb::RevokeApprovalRequest { case_id: case, ..Default::default() }).await.map(|_| ())
        }
        "GetCase" => intake.get_case(pb::GetCaseRequest { case_id: case }).await.map(|_| ()),
        "ListTasks" => sup.list_tasks(pb::ListTasksRequest::default()).await.map(|_| ()),
        "AcknowledgeTask" => sup.acknowledge_task(pb::AcknowledgeTaskRequest { task_id: task }).await.map(|_| ()),
        "ReportInspection" => sup
            .report_inspection(pb::ReportInspectionRequest { task_id: task, finished_on: "not a date".into() })
            .await
            .map(|_| ()),
        "ReportResult" => {
            sup.report_result(pb::ReportResultRequest { task_id: task, ..Default::default() }).await.map(|_| ())
        }
        "ReportRectification" => sup
            .report_rectification(pb::ReportRectificationRequest { task_id: task, ..Default::default() })
            .await
            .map(|_| ()),
        "GetTimeline" => admin.get_timeline(pb::GetTimelineRequest { case_id: case }).await.map(|_| ()),
        "GetWorkflow" => {
            admin.get_workflow(pb::GetWorkflowRequest { name: "no_such_workflow".into(), version: 0 }).await.map(|_| ())
        }
        "QueryCases" => admin.query_cases(pb::QueryCasesRequest::default()).await.map(|_| ()),
        "GetStatistics" => admin.get_statistics(pb::GetStatisticsRequest::default()).await.map(|_| ()),
        "AdvanceClock" => {
            admin.advance_clock(pb::AdvanceClockRequest { by_millis: -1, to: String::new() }).await.map(|_| ())
        }
        "LoadCalendar" => admin
            .load_calendar(pb::LoadCalendarRequest {
                name: "x.toml".into(),
                text: "not toml [".into(),
                dry_run: true,
                wait: false,
            })
            .await
            .map(|_| ()),
        "CalendarStatus" => admin.calendar_status(pb::CalendarStatusRequest {}).await.map(|_| ()),
        "EngineService.Start" => engine
            .start(pb::StartRequest { instance_id: "m".into(), workflow: "none".into(), ..Default::default() })
            .await
            .map(|_| ()),
        "EngineService.Signal" => engine
            .signal(pb::SignalRequest { instance_id: "none".into(), event: "e".into(), ..Default::default() })
            .await
            .map(|_| ()),
        "ListDeadLetters" => {
            admin.list_dead_letters(pb::ListDeadLettersRequest { after_id: 0, limit: 5_000 }).await.map(|_| ())
        }
        "RetryDeadLetter" => {
            admin.retry_dead_letter(pb::RetryDeadLetterRequest { key: "none:1:0".into() }).await.map(|_| ())
        }
        "ListConsumers" => admin.list_consumers(pb::ListConsumersRequest {}).await.map(|_| ()),
        "DropConsumer" => {
            admin.drop_consumer(pb::DropConsumerRequest { name: "no-such-consumer".into() }).await.map(|_| ())
        }
        "EventsService.Subscribe" => events
            .subscribe(pb::SubscribeRequest { consumer: "not a name".into(), ..Default::default() })
            .await
            .map(|_| ()),
        "EventsService.Ack" => events.ack(pb::AckRequest { consumer: String::new(), up_to: 1 }).await.map(|_| ()),
        other => panic!("no RPC {other}"),
    };
    result.err().unwrap_or_else(|| tonic::Status::ok(""))
}

/// A licensed case in 320700 approved by 市行政审批局 with a task for DEPT/OFFICE, and one in
/// 320800.
async fn seed(server: &TestServer) -> Result<()> {
    let root = server.as_who(&Who::new("root", "engine_admin", "", "", ""));
    let mut intake = IntakeServiceClient::new(root);
    intake.accept_case(accept("M-1", Route::Normal, Scenario::Unspecified)).await?;
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: "320700/M-1".into(),
            license_no: "L-1".into(),
            approval_opinion: "准予许可".into(),
            ..Default::default()
        })
        .await?;
    let mut other = accept("M-2", Route::Normal, Scenario::Unspecified);
    other.region_code = "320800".into();
    intake.accept_case(other).await?;
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: "320800/M-2".into(),
            license_no: "L-2".into(),
            approval_opinion: "准予许可".into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn every_rpc_by_every_role_is_allowed_or_denied_as_the_matrix_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("m.db"), |_| {}, |_| {}).await?;
    seed(&server).await?;
    let parties = parties();
    let mut wrong = Vec::new();
    for (rpc, row) in MATRIX {
        for ((role, who), expect) in parties.iter().zip(row.chars()) {
            let s = call(rpc, server.as_who(who)).await;
            let denied = s.code() == Code::PermissionDenied;
            ensure!(s.code() != Code::Unauthenticated && s.code() != Code::Unknown, "{rpc} as {role}: {s:?}");
            if denied != (expect == '-') {
                wrong.push(format!("{rpc} as {role}: expected {expect}, got {:?} {}", s.code(), s.message()));
            } else if denied {
                // A denial names the missing right or the scope left, and who asked.
                ensure!(s.message().starts_with(&who.subject), "{rpc} as {role}: {}", s.message());
                ensure!(s.message().contains("right") || s.message().contains("scope"), "{}", s.message());
            }
        }
    }
    ensure!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
    let metrics = server.metrics().await?;
    ensure!(metrics.contains("shenguan_calls_denied_total{right=\"intake\"}"), "denials are not counted");
    server.stop().await
}

#[tokio::test]
async fn scopes_deny_named_objects_outside_and_filter_lists_and_statistics() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("s.db"), |_| {}, |_| {}).await?;
    seed(&server).await?;
    let code = |s: Result<(), tonic::Status>| s.err().map_or(Code::Ok, |s| s.code());

    // A platform of 320700 cannot touch 320800, nor accept there.
    let platform = server.as_who(&Who::new("zwfw-320700", "platform", "320700", "", ""));
    let mut intake = IntakeServiceClient::new(platform.clone());
    let r = intake.submit_materials(pb::SubmitMaterialsRequest { case_id: "320800/M-2".into() }).await;
    ensure!(code(r.map(|_| ())) == Code::PermissionDenied, "cross-region intake");
    let mut there = deferral("X-9", "2026-10-20");
    there.region_code = "320800".into();
    let r = intake.accept_case(there).await;
    ensure!(code(r.map(|_| ())) == Code::PermissionDenied, "cross-region acceptance");
    let r = intake.get_case(pb::GetCaseRequest { case_id: "320800/M-2".into() }).await;
    ensure!(code(r.map(|_| ())) == Code::PermissionDenied, "cross-region read");

    // A province administrator sees both cities; a city administrator only its own.
    let ids = |who: Who| {
        let ch = server.as_who(&who);
        async move {
            let cases = AdminServiceClient::new(ch).query_cases(pb::QueryCasesRequest::default()).await?.into_inner();
            anyhow::Ok(cases.cases.into_iter().map(|c| c.case_id).collect::<Vec<_>>())
        }
    };
    ensure!(ids(Who::new("prov", "region_admin", "320000", "", "")).await? == ["320700/M-1", "320800/M-2"]);
    ensure!(ids(Who::new("city", "region_admin", "320700", "", "")).await? == ["320700/M-1"]);
    // Asking for another region inside a query is filtered, not refused.
    let city = AdminServiceClient::new(server.as_who(&Who::new("city", "region_admin", "320700", "", "")));
    let other = city
        .clone()
        .query_cases(pb::QueryCasesRequest { region_code: "320800".into(), ..Default::default() })
        .await?
        .into_inner();
    ensure!(other.cases.is_empty(), "a query outside the scope returned cases");
    // A department sees a case through its task; another department does not.
    ensure!(ids(Who::new("d", "department_admin", "320700", DEPT, "")).await? == ["320700/M-1"]);
    ensure!(ids(Who::new("d2", "department_admin", "320700", "市卫生健康委", "")).await?.is_empty());
    ensure!(ids(Who::new("o2", "office_admin", "320700", DEPT, "特种设备安全监察处")).await?.is_empty());
    let health = server.as_who(&Who::new("d2", "department_admin", "320700", "市卫生健康委", ""));
    let r = AdminServiceClient::new(health).get_timeline(pb::GetTimelineRequest { case_id: "320700/M-1".into() }).await;
    ensure!(code(r.map(|_| ())) == Code::PermissionDenied, "another department read the timeline");

    // Supervisors: only their department's tasks, listed and reported.
    let other_sup = server.as_who(&Who::new("sup-wjw", "supervisor", "320700", "市卫生健康委", ""));
    let mut sup = SupervisionServiceClient::new(other_sup);
    let listed = sup.list_tasks(pb::ListTasksRequest::default()).await?.into_inner();
    ensure!(listed.tasks.is_empty(), "another department's tasks listed: {:?}", listed.tasks);
    let r = sup.acknowledge_task(pb::AcknowledgeTaskRequest { task_id: "320700/M-1/T1".into() }).await;
    ensure!(code(r.map(|_| ())) == Code::PermissionDenied, "another department acknowledged");
    let own = server.as_who(&Who::new("sup-sjj", "supervisor", "320700", DEPT, ""));
    let mut sup = SupervisionServiceClient::new(own);
    let listed = sup.list_tasks(pb::ListTasksRequest::default()).await?.into_inner();
    let listed: Vec<String> = listed.tasks.into_iter().map(|t| t.task_id).collect();
    ensure!(listed == ["320700/M-1/T1"], "{listed:?}");
    sup.acknowledge_task(pb::AcknowledgeTaskRequest { task_id: "320700/M-1/T1".into() }).await?;

    // Statistics count only the caller's scope.
    let stats = |who: Who| {
        let ch = server.as_who(&who);
        async move {
            let s = AdminServiceClient::new(ch)
                .get_statistics(pb::GetStatisticsRequest { from: "2026-01-01".into(), ..Default::default() })
                .await?
                .into_inner();
            anyhow::Ok(s)
        }
    };
    let all = stats(Who::new("root", "engine_admin", "", "", "")).await?;
    ensure!(all.approval.len() == 2, "{:?}", all.approval);
    let city = stats(Who::new("city", "region_admin", "320700", "", "")).await?;
    ensure!(city.approval.iter().all(|a| a.region_code == "320700") && city.approval.len() == 1);
    let dept = stats(Who::new("d2", "department_admin", "320700", "市卫生健康委", "")).await?;
    ensure!(dept.approval.is_empty() && dept.supervision.is_empty(), "{dept:?}");
    let office = stats(Who::new("o", "office_admin", "320700", DEPT, OFFICE)).await?;
    ensure!(office.approval.is_empty(), "approval figures have no office");
    ensure!(office.supervision.len() == 1 && office.supervision[0].office == OFFICE, "{:?}", office.supervision);
    server.stop().await
}

#[tokio::test]
async fn every_act_is_attributed_to_the_verified_principal_never_to_a_claimed_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("a.db"), |_| {}, |_| {}).await?;
    let platform = Who::new("zwfw-320700", "platform", "320700", "", "");
    let mut intake = IntakeServiceClient::new(server.as_who(&platform));
    let mut r = tonic::Request::new(accept("AT-1", Route::Normal, Scenario::Unspecified));
    r.metadata_mut().insert("x-shenguan-actor", "the-governor".parse()?);
    r.metadata_mut().insert("x-request-id", "req-at-1".parse()?);
    intake.accept_case(r).await?;
    // On behalf of a person: refused without the right…
    let mut r = tonic::Request::new(pb::SubmitMaterialsRequest { case_id: "320700/AT-1".into() });
    r.metadata_mut().insert("x-shenguan-on-behalf-of", "zhang-san".parse()?);
    let e = intake.submit_materials(r).await.expect_err("no on-behalf right");
    ensure!(e.code() == Code::PermissionDenied && e.message().contains("act_on_behalf"), "{e:?}");
    // …and recorded as such with it.
    let mut with_right = platform.clone();
    with_right.subject = "zwfw-gateway".into();
    with_right.on_behalf = true;
    let mut gateway = IntakeServiceClient::new(server.as_who(&with_right));
    let mut r = tonic::Request::new(pb::CompleteApprovalRequest {
        case_id: "320700/AT-1".into(),
        license_no: "L-AT".into(),
        approval_opinion: "准予许可".into(),
        ..Default::default()
    });
    r.metadata_mut().insert("x-shenguan-on-behalf-of", "zhang-san".parse()?);
    gateway.complete_approval(r).await?;

    let auditor = server.as_who(&Who::new("audit-1", "auditor", "320700", "", ""));
    let timeline = AdminServiceClient::new(auditor)
        .get_timeline(pb::GetTimelineRequest { case_id: "320700/AT-1".into() })
        .await?
        .into_inner();
    let accepted = timeline.entries.first().context("entries")?;
    let p = accepted.principal.clone().context("the acceptance has a principal")?;
    ensure!(p.subject == "zwfw-320700" && p.role == "platform" && p.region_code == "320700", "{p:?}");
    ensure!(p.via == "dev_token" && accepted.request_id == "req-at-1", "{accepted:?}");
    ensure!(timeline.entries.iter().all(|e| e.actor != "the-governor"), "a claimed actor was recorded");
    let licensed = timeline.entries.iter().find(|e| e.event == "complete_approval").context("licence")?;
    let p = licensed.principal.clone().context("principal")?;
    ensure!(p.subject == "zwfw-gateway" && p.on_behalf_of == "zhang-san", "{p:?}");
    ensure!(licensed.request_id.starts_with("srv-"), "a call without x-request-id gets one: {licensed:?}");
    // The task the licence created is attributed to the same act.
    let task = timeline.entries.iter().find(|e| e.instance_id == "320700/AT-1/T1").context("task")?;
    ensure!(task.principal.as_ref().is_some_and(|p| p.subject == "zwfw-gateway"), "{task:?}");
    server.stop().await
}

#[tokio::test]
async fn the_rate_limit_per_principal_answers_resource_exhausted_and_spares_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("r.db"), |_| {}, |s| s.rate = 2).await?;
    let noisy = AdminServiceClient::new(server.as_who(&Who::new("noisy", "auditor", "320700", "", "")));
    let mut exhausted = 0;
    for _ in 0..30 {
        if let Err(s) = noisy.clone().calendar_status(pb::CalendarStatusRequest {}).await {
            ensure!(s.code() == Code::ResourceExhausted && s.message().contains("rate limit"), "{s:?}");
            exhausted += 1;
        }
    }
    // A burst of 4 (twice the rate) passes; 30 calls in well under 13 s cannot all pass.
    ensure!(exhausted >= 10, "only {exhausted} of 30 calls were limited");
    let quiet = AdminServiceClient::new(server.as_who(&Who::new("quiet", "auditor", "320700", "", "")));
    quiet.clone().calendar_status(pb::CalendarStatusRequest {}).await?;
    server.stop().await
}

#[tokio::test]
async fn tls_and_client_certificates_over_real_sockets() -> Result<()> {
    let pki = Pki::new("shenguan test CA")?;
    let (server_cert, server_key, _) = pki.leaf(&["localhost", "127.0.0.1"], false)?;
    let (client_cert, client_key, client_der) = pki.leaf(&["zwfw-gateway"], true)?;
    let (stranger_cert, stranger_key, _) = pki.leaf(&["stranger"], true)?;
    let rogue = Pki::new("rogue CA")?;
    let (rogue_cert, rogue_key, _) = rogue.leaf(&["zwfw-gateway"], true)?;

    let dir = tempfile::tempdir()?;
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[[account]]\nfingerprint = \"sha256:{}\"\nsubject = \"zwfw-gateway\"\nroles = [\"platform\"]\nregion = \"320700\"\n",
            shenguan::auth::layer::fingerprint(&client_der)
        ),
    )?;
    let key = verify::DevKey::load_or_create(&dir.path().join("dev-key"))?;
    let verifier = Verifier::new(verify::Config::dev(key.clone()))?;
    let mut security = Security::with(shenguan::auth::layer::Mode::Verify(Arc::new(verifier)));
    security.accounts = shenguan::auth::layer::Accounts::load(&accounts).map_err(anyhow::Error::msg)?;
    security.tls = Some(shenguan::server::Tls {
        cert: server_cert.into_bytes(),
        key: server_key.into_bytes(),
        client_ca: Some(pki.ca_pem().into_bytes()),
        client_required: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut options = shenguan::server::Options::new(
        shenguan::engine::Config::new(dir.path().join("tls.db")),
        Arc::new(shenguan::definition::Registry::embedded()?),
        shenguan::calendar::Calendars::embedded()?,
        Some(shenguan::clock::VirtualClock::new(chrono::DateTime::parse_from_rfc3339(START)?.timestamp_millis())),
    );
    options.security = security;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(shenguan::server::run(options, listener, async {
        let _ = stopped.await;
    }));

    let tls = |identity: Option<(&str, &str)>| {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_pem()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        c
    };
    let connect = |config: tonic::transport::ClientTlsConfig| async move {
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(config)?.connect().await
    };

    // A token over TLS.
    let token = key.mint(&Who::new("root", "engine_admin", "", "", "").claims());
    let ch = connect(tls(None)).await?;
    let mut admin = AdminServiceClient::new(tonic::service::interceptor::InterceptedService::new(ch, bearer(&token)));
    admin.calendar_status(pb::CalendarStatusRequest {}).await?;

    // A pinned client certificate, no token: the platform's service account.
    let ch = connect(tls(Some((&client_cert, &client_key)))).await?;
    let mut intake = IntakeServiceClient::new(ch.clone());
    intake.accept_case(accept("TLS-1", Route::Normal, Scenario::Unspecified)).await?;
    let timeline = admin.get_timeline(pb::GetTimelineRequest { case_id: "320700/TLS-1".into() }).await?.into_inner();
    let p = timeline.entries[0].principal.clone().context("principal")?;
    ensure!(p.subject == "zwfw-gateway" && p.via == "certificate" && p.role == "platform", "{p:?}");
    // …which is still only a platform: no clock.
    let e =
        AdminServiceClient::new(ch).advance_clock(pb::AdvanceClockRequest { by_millis: 1, to: String::new() }).await;
    ensure!(e.expect_err("platform").code() == Code::PermissionDenied);

    // A certificate from the right CA but not a known account: UNAUTHENTICATED, naming it.
    let ch = connect(tls(Some((&stranger_cert, &stranger_key)))).await?;
    let e = IntakeServiceClient::new(ch).get_case(pb::GetCaseRequest { case_id: "320700/TLS-1".into() }).await;
    let e = e.expect_err("unknown certificate");
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("not a known service account"), "{e:?}");

    // A certificate from another CA fails the handshake (or the first call).
    let refused = match connect(tls(Some((&rogue_cert, &rogue_key)))).await {
        Err(_) => true,
        Ok(ch) => IntakeServiceClient::new(ch).get_case(pb::GetCaseRequest { case_id: "x/y".into() }).await.is_err(),
    };
    ensure!(refused, "a certificate of another CA was accepted");

    // Plain HTTP/2 to a TLS port gets nowhere.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await;
    if let Ok(ch) = plain {
        let r = AdminServiceClient::new(ch).calendar_status(pb::CalendarStatusRequest {}).await;
        ensure!(r.is_err(), "plaintext was served on the TLS port");
    }
    let _ = stop.send(());
    task.await??;
    Ok(())
}

#[tokio::test]
async fn hostile_headers_and_claims_are_refused_with_a_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("h.db"), |_| {}, |_| {}).await?;
    let key = server.key.clone().context("key")?;
    let refused = |token: String| {
        let channel = server.channel.clone();
        async move {
            let mut r = tonic::Request::new(pb::CalendarStatusRequest {});
            r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
            AdminServiceClient::new(channel).calendar_status(r).await.expect_err("refused")
        }
    };
    let e = refused("a".repeat(9000)).await;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("longer than 8 KiB"), "{e:?}");
    let mut who = Who::new(&"s".repeat(200), "engine_admin", "", "", "");
    let e = refused(key.mint(&who.claims())).await;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("sub"), "{e:?}");
    who.subject = "evil\u{202e}gnp.exe".into();
    let e = refused(key.mint(&who.claims())).await;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("sub"), "{e:?}");
    who.subject = "many".into();
    who.roles = (0..40).map(|i| format!("r{i}")).collect();
    let e = refused(key.mint(&who.claims())).await;
    ensure!(e.message().contains("more than 32 roles"), "{e:?}");
    // A token that expired in 1970.
    let e = refused(key.mint(&Claims { sub: "x".into(), exp: 1, ..Claims::default() })).await;
    ensure!(e.code() == Code::Unauthenticated, "{e:?}");

    let admin = server.as_who(&Who { on_behalf: true, ..Who::new("gw", "engine_admin", "", "", "") });
    for (value, says) in [("x".repeat(300), "at most"), ("a\u{7}b".to_owned(), "")] {
        let mut r = tonic::Request::new(pb::CalendarStatusRequest {});
        match value.parse() {
            Ok(v) => {
                r.metadata_mut().insert("x-shenguan-on-behalf-of", v);
            }
            // Not even a header value: nothing to send.
            Err(_) => continue,
        }
        let e = AdminServiceClient::new(admin.clone()).calendar_status(r).await.expect_err("refused");
        ensure!(e.code() == Code::InvalidArgument && e.message().contains(says), "{e:?}");
    }
    // Page sizes are capped, not refused; a hostile page token is INVALID_ARGUMENT.
    let mut admin_client = AdminServiceClient::new(admin);
    let r = admin_client
        .query_cases(pb::QueryCasesRequest {
            page: Some(pb::PageRequest { page_size: u32::MAX, page_token: "zz".into() }),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    ensure!(r.code() == Code::InvalidArgument, "{r:?}");
    server.stop().await
}

#[tokio::test]
async fn an_address_that_keeps_failing_is_refused_before_its_tokens_are_checked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("f.db"), |_| {}, |s| s.failed_auth_rate = 2).await?;
    let key = server.key.clone().context("key")?;
    let good = key.mint(&Who::new("root", "engine_admin", "", "", "").claims());
    let forged = format!("{}x", &good[..good.len() - 1]);
    let mut codes = Vec::new();
    for _ in 0..20 {
        codes.push(status_of(&server, &forged).await.code());
    }
    // A burst of four failures is checked (UNAUTHENTICATED); then the address is refused
    // outright until its failures age out.
    let checked = codes.iter().filter(|c| **c == Code::Unauthenticated).count();
    ensure!((4..=8).contains(&checked), "{codes:?}");
    ensure!(codes.last() == Some(&Code::ResourceExhausted), "{codes:?}");
    let s = status_of(&server, &forged).await;
    ensure!(s.message().contains("too many failed authentications"), "{s:?}");
    server.stop().await
}

/// Forged tokens from one address (a NAT, a proxy) must not lock out a valid client behind the
/// same address: the limit costs the attacker, and a token verified before is accepted without
/// a signature check. Interleaved, 400 forged calls and 100 valid ones: every valid call
/// succeeds once its token has been verified.
#[tokio::test]
async fn forged_tokens_from_an_address_do_not_lock_out_a_valid_neighbour() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("n.db"), |_| {}, |s| s.failed_auth_rate = 2).await?;
    let key = server.key.clone().context("key")?;
    let good = key.mint(&Who::new("root", "engine_admin", "", "", "").claims());
    ensure!(status_of(&server, &good).await.code() == Code::Ok, "the neighbour's first call");
    let (mut ok, mut forged_refused) = (0, 0);
    for i in 0..100 {
        for j in 0..4 {
            let forged = format!("{}{}", &good[..good.len() - 2], ["xa", "xb", "xc", "xd"][(i + j) % 4]);
            let s = status_of(&server, &forged).await;
            ensure!(s.code() != Code::Ok, "a forged token was accepted");
            forged_refused += usize::from(s.code() == Code::ResourceExhausted);
        }
        ok += usize::from(status_of(&server, &good).await.code() == Code::Ok);
    }
    ensure!(ok == 100, "the valid neighbour succeeded {ok} of 100 times");
    ensure!(forged_refused >= 300, "the forged tokens were refused before being checked: {forged_refused}");
    server.stop().await
}

/// The visibility parties: the matrix's eight, with the department and office the example
/// catalog names (so that catalogued cases and spot checks are theirs).
fn visibility_parties() -> Vec<(&'static str, Who)> {
    vec![
        ("engine_admin", Who::new("root", "engine_admin", "", "", "")),
        ("region_admin", Who::new("city-admin", "region_admin", "320700", "", "")),
        ("auditor", Who::new("audit-1", "auditor", "320700", "", "")),
        ("department_admin", Who::new("dept-admin", "department_admin", "320700", "SJJ-320700", "")),
        ("office_admin", Who::new("office-admin", "office_admin", "320700", "SJJ-320700", "SJJ-FOOD")),
        ("platform", Who::new("zwfw-320700", "platform", "320700", "", "")),
        ("supervisor", Who::new("sup-sjj", "supervisor", "320700", "SJJ-320700", "")),
        ("no_role", Who::new("stranger", "librarian", "320700", "", "")),
    ]
}

/// Which parties see which row through which read call, written out by hand (not derived from
/// the code under test), parties in the order of [`visibility_parties`]: `Y` sees it, `n` does
/// not (filtered out, NOT_FOUND or PERMISSION_DENIED for the scope), `-` the call itself is
/// denied (the right is missing).
///
/// Rows: `own` a case the department approves (its task is another department's); `task` a
/// case another department approves with a task of the department's office; `other` a case
/// another department approves and supervises; `T` a case numbered `TZ-2026-0001` with a task
/// of the office (a case number beginning with T is still a case); `spot` a spot-check task of
/// the office (and its plan).
const VISIBILITY: [(&str, &str, &str); 29] = [
    ("GetCase", "own", "YYYYnY--"),
    ("GetCase", "task", "YYYYYY--"),
    ("GetCase", "other", "YYYnnY--"),
    ("GetCase", "T", "YYYYYY--"),
    ("GetTimeline", "own", "YYYYnY--"),
    ("GetTimeline", "task", "YYYYYY--"),
    ("GetTimeline", "other", "YYYnnY--"),
    ("GetTimeline", "T", "YYYYYY--"),
    ("QueryCases", "own", "YYYYnY--"),
    ("QueryCases", "task", "YYYYYY--"),
    ("QueryCases", "other", "YYYnnY--"),
    ("QueryCases", "T", "YYYYYY--"),
    ("ListTasks", "own", "YYYnn-n-"),
    ("ListTasks", "task", "YYYYY-Y-"),
    ("ListTasks", "other", "YYYnn-n-"),
    ("ListTasks", "T", "YYYYY-Y-"),
    ("GetStatistics", "own", "YYYYn---"),
    ("GetStatistics", "task", "YYYYY---"),
    ("GetStatistics", "other", "YYYnn---"),
    ("GetEnterpriseProfile", "own", "YYYYn---"),
    ("GetEnterpriseProfile", "task", "YYYYY---"),
    ("GetEnterpriseProfile", "other", "YYYnn---"),
    ("GetEnterpriseProfile", "spot", "YYYYY---"),
    ("Subscribe", "own", "Y----YY-"),
    ("Subscribe", "task", "Y----YY-"),
    ("Subscribe", "other", "Y----Yn-"),
    ("Subscribe", "T", "Y----YY-"),
    ("ListSpotCheckRuns", "spot", "YYYYY-Y-"),
    ("ListSpotCheckPlans", "spot", "YYYYY-Y-"),
];

/// The rows of [`VISIBILITY`]: a case id, the id of its task (or of the spot-check task), the
/// applicant's credit code.
struct Rows {
    ids: std::collections::HashMap<&'static str, (String, String, String)>,
    plan: String,
    /// The last case licensed: its approval record ends what a stream is read for.
    sentinel: String,
}

/// Licenses a trusted (uncatalogued) case: approved by `department`, supervised by
/// `supervisor`.
async fn trusted(server: &TestServer, no: &str, department: &str, supervisor: (&str, &str), code: &str) -> Result<()> {
    let mut intake = IntakeServiceClient::new(server.as_who(&Who::new("root", "engine_admin", "", "", "")));
    let mut r = accept(no, Route::Normal, Scenario::Unspecified);
    r.approval_department = department.into();
    r.applicant.as_mut().context("applicant")?.id = Some(pb::applicant::Id::CreditCode(code.into()));
    r.supervisors[0].department = supervisor.0.into();
    r.supervisors[0].office = supervisor.1.into();
    intake.accept_case(r).await?;
    let licence = pb::CompleteApprovalRequest {
        case_id: format!("320700/{no}"),
        license_no: format!("JY-{no}"),
        approval_opinion: "准予许可".into(),
        ..Default::default()
    };
    intake.complete_approval(licence).await?;
    Ok(())
}

async fn visibility_rows(server: &TestServer) -> Result<Rows> {
    use integration_tests::fixtures::{catalogued, example_catalog, uscc};
    let root = server.as_who(&Who::new("root", "engine_admin", "", "", ""));
    let mut ids = std::collections::HashMap::new();
    // Before any catalog is imported, AcceptCase trusts the departments a request names.
    for (row, no, department, supervisor, first) in [
        ("own", "V-OWN", "SJJ-320700", ("WJW-320700", "WJW-PH"), "91320700MA5000001"),
        ("task", "V-TASK", "SPJ-320700", ("SJJ-320700", "SJJ-FOOD"), "91320700MA5000002"),
        ("other", "V-OTHER", "SPJ-320700", ("WJW-320700", "WJW-PH"), "91320700MA5000003"),
        ("T", "TZ-2026-0001", "SPJ-320700", ("SJJ-320700", "SJJ-FOOD"), "91320700MA5000004"),
    ] {
        let code = uscc(first);
        trusted(server, no, department, supervisor, &code).await?;
        ids.insert(row, (format!("320700/{no}"), format!("320700/{no}/T1"), code));
    }
    // A spot check of the office draws the one enterprise licensed on its item.
    AdminServiceClient::new(root.clone()).import_catalogs(example_catalog()).await?;
    let spot_code = uscc("91320700MA5000005");
    let mut intake = IntakeServiceClient::new(root.clone());
    intake.accept_case(catalogued("V-SPOT", "FOOD-PROD-NEW", &spot_code, "A")).await?;
    let licence = |no: &str| pb::CompleteApprovalRequest {
        case_id: format!("320700/{no}"),
        license_no: format!("JY-{no}"),
        approval_opinion: "准予许可".into(),
        ..Default::default()
    };
    intake.complete_approval(licence("V-SPOT")).await?;
    let plan = AdminServiceClient::new(root.clone())
        .create_spot_check_plan(pb::CreateSpotCheckPlanRequest {
            code: "VIS".into(),
            region_code: "320700".into(),
            name: "食品生产企业抽查".into(),
            office: "SJJ-FOOD".into(),
            supervision_item: "SJ-FOOD-PROD".into(),
            schedule: "0 9 * * MON".into(),
            working_days_only: true,
            ratios: "A=1".into(),
            inspectors_per_target: 2,
        })
        .await?
        .into_inner();
    AdminServiceClient::new(root.clone())
        .advance_clock(pb::AdvanceClockRequest { by_millis: 0, to: "2026-10-12T10:00:00+08:00".into() })
        .await?;
    let runs = AdminServiceClient::new(root.clone())
        .list_spot_check_runs(pb::ListSpotCheckRunsRequest { plan_id: plan.plan_id.clone(), include_records: false })
        .await?
        .into_inner();
    let target = runs.runs.first().and_then(|r| r.targets.first()).context("a target drawn")?;
    ensure!(target.credit_code == spot_code, "{target:?}");
    SupervisionServiceClient::new(root.clone())
        .report_spot_check_result(pb::ReportSpotCheckResultRequest {
            task_id: target.task_id.clone(),
            outcome: "compliant".into(),
            findings: String::new(),
        })
        .await?;
    ids.insert("spot", ("".into(), target.task_id.clone(), spot_code));
    intake.accept_case(catalogued("V-END", "FOOD-PROD-NEW", &uscc("91320700MA5000006"), "A")).await?;
    intake.complete_approval(licence("V-END")).await?;
    Ok(Rows { ids, plan: plan.plan_id, sentinel: "320700/V-END".into() })
}

/// What `rpc` as `ch` shows of `row`: `Y`, `n` or `-` as in [`VISIBILITY`].
async fn observe(rpc: &str, row: &str, rows: &Rows, ch: Authed) -> Result<char> {
    let (case, task, code) = rows.ids.get(row).cloned().context("row")?;
    let refused = |s: tonic::Status| -> Result<char> {
        match s.code() {
            Code::PermissionDenied if s.message().contains("right") => Ok('-'),
            Code::PermissionDenied | Code::NotFound => Ok('n'),
            _ => Err(anyhow::anyhow!("{rpc} of {row}: {s:?}")),
        }
    };
    let yes = |b: bool| if b { 'Y' } else { 'n' };
    let mut admin = AdminServiceClient::new(ch.clone());
    Ok(match rpc {
        "GetCase" => match IntakeServiceClient::new(ch).get_case(pb::GetCaseRequest { case_id: case.clone() }).await {
            Ok(r) => yes(r.into_inner().case.is_some_and(|c| c.case_id == case)),
            Err(s) => refused(s)?,
        },
        "GetTimeline" => match admin.get_timeline(pb::GetTimelineRequest { case_id: case.clone() }).await {
            Ok(r) => yes(!r.into_inner().entries.is_empty()),
            Err(s) => refused(s)?,
        },
        "QueryCases" => match admin.query_cases(pb::QueryCasesRequest::default()).await {
            Ok(r) => yes(r.into_inner().cases.iter().any(|c| c.case_id == case)),
            Err(s) => refused(s)?,
        },
        "ListTasks" => match SupervisionServiceClient::new(ch).list_tasks(pb::ListTasksRequest::default()).await {
            Ok(r) => yes(r.into_inner().tasks.iter().any(|t| t.task_id == task)),
            Err(s) => refused(s)?,
        },
        "GetStatistics" => {
            let request = pb::GetStatisticsRequest { from: "2026-01-01".into(), with_ids: true, ..Default::default() };
            match admin.get_statistics(request).await {
                Ok(r) => {
                    let s = r.into_inner();
                    let mut ids = s.approval.iter().flat_map(|a| a.cases.iter().flat_map(|f| f.ids.iter()));
                    let mut tasks = s.supervision.iter().flat_map(|a| a.tasks.iter().flat_map(|f| f.ids.iter()));
                    yes(ids.any(|i| *i == case) || tasks.any(|i| *i == task))
                }
                Err(s) => refused(s)?,
            }
        }
        "GetEnterpriseProfile" => {
            let request = pb::GetEnterpriseProfileRequest { credit_code: code };
            match admin.get_enterprise_profile(request).await {
                Ok(r) => {
                    let p = r.into_inner();
                    yes(p.cases.iter().any(|c| c.instance_id == case) || p.tasks.iter().any(|t| t.instance_id == task))
                }
                Err(s) => refused(s)?,
            }
        }
        "ListSpotCheckPlans" => match admin.list_spot_check_plans(pb::ListSpotCheckPlansRequest::default()).await {
            Ok(r) => yes(r.into_inner().plans.iter().any(|p| p.plan_id == rows.plan)),
            Err(s) => refused(s)?,
        },
        "ListSpotCheckRuns" => {
            let request = pb::ListSpotCheckRunsRequest { plan_id: rows.plan.clone(), include_records: false };
            match admin.list_spot_check_runs(request).await {
                Ok(r) => yes(r.into_inner().runs.iter().flat_map(|r| r.targets.iter()).any(|t| t.task_id == task)),
                Err(s) => refused(s)?,
            }
        }
        "Subscribe" => {
            let mut events = shenguan::proto::events_service_client::EventsServiceClient::new(ch);
            let consumer = format!("vis-{}", rand_suffix());
            let request = pb::SubscribeRequest { consumer, max_in_flight: 1000, ..Default::default() };
            let mut stream = match events.subscribe(request).await {
                Ok(s) => s.into_inner(),
                Err(s) => return refused(s),
            };
            // The stream walks the outbox in order: once the sentinel's record arrives, every
            // message before it was either sent or withheld.
            let mut seen = false;
            loop {
                let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .context("the sentinel never arrived")??
                    .context("the stream ended")?;
                seen |= event.instance_id == case && event.channel == "supervision";
                if event.instance_id == rows.sentinel && event.channel == "supervision" {
                    break;
                }
            }
            yes(seen)
        }
        other => anyhow::bail!("no read call {other}"),
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One rule for who sees what, over every read call: each of the eight parties against a case
/// its department approves, a case with its task, another department's case, a case numbered
/// `T…` and a spot-check task.
#[tokio::test]
async fn every_read_call_shows_each_party_what_the_visibility_matrix_says() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server =
        TestServer::start_secured("2026-10-09T10:00:00+08:00", &dir.path().join("v.db"), |_| {}, |_| {}).await?;
    let rows = visibility_rows(&server).await?;
    let parties = visibility_parties();
    let mut wrong = Vec::new();
    for (rpc, row, expect) in VISIBILITY {
        for ((party, who), want) in parties.iter().zip(expect.chars()) {
            let got = observe(rpc, row, &rows, server.as_who(who)).await?;
            if got != want {
                wrong.push(format!("{rpc} of {row} as {party}: expected {want}, got {got}"));
            }
        }
    }
    ensure!(wrong.is_empty(), "{} cells differ:\n{}", wrong.len(), wrong.join("\n"));
    server.stop().await
}

/// A department is one department whether a token names it by code or by catalogued name:
/// cases accepted through the catalogs carry codes, and a supervision platform whose token says
/// 连云港市市场监督管理局 sees and lists its tasks in them, as one that says SJJ-320700 does —
/// and another department sees none of them under either name.
#[tokio::test]
async fn a_department_named_in_a_token_by_name_or_by_code_sees_the_catalogued_cases() -> Result<()> {
    use integration_tests::fixtures::{catalogued, example_catalog, uscc};
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("n.db"), |_| {}, |_| {}).await?;
    let root = server.as_who(&Who::new("root", "engine_admin", "", "", ""));
    AdminServiceClient::new(root.clone()).import_catalogs(example_catalog()).await?;
    let mut intake = IntakeServiceClient::new(root);
    intake.accept_case(catalogued("N-1", "FOOD-PROD-NEW", &uscc("91320700MA1000002"), "A")).await?;
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: "320700/N-1".into(),
            license_no: "JY-N-1".into(),
            approval_opinion: "准予许可".into(),
            document_refs: vec![],
        })
        .await?;
    let ids = |tasks: &[pb::Task]| tasks.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>();
    for department in ["连云港市市场监督管理局", "SJJ-320700"] {
        for office in ["", "食品生产监督管理处", "SJJ-FOOD"] {
            let who = Who::new("sjj-platform", "supervisor", "320700", department, office);
            let mut sup = SupervisionServiceClient::new(server.as_who(&who));
            let tasks = sup.list_tasks(pb::ListTasksRequest::default()).await?.into_inner().tasks;
            ensure!(ids(&tasks) == ["320700/N-1/T1"], "{department}/{office}: {:?}", ids(&tasks));
            ensure!(tasks[0].department == "SJJ-320700", "cases carry the code");
            // Asked by name or by code, the same task.
            for asked in ["连云港市市场监督管理局", "SJJ-320700"] {
                let r = pb::ListTasksRequest { department: asked.into(), ..Default::default() };
                let listed = sup.list_tasks(r).await?.into_inner().tasks;
                ensure!(ids(&listed) == ids(&tasks), "{department}/{office} asked {asked}: {:?}", ids(&listed));
            }
        }
        // Its administrator reads the case it has a task in.
        let admin = Who::new("sjj-admin", "department_admin", "320700", department, "");
        IntakeServiceClient::new(server.as_who(&admin))
            .get_case(pb::GetCaseRequest { case_id: "320700/N-1".into() })
            .await
            .with_context(|| format!("{department} reads its case"))?;
    }
    // The approving department's administrator, by name, finds its case.
    let approver = Who::new("spj-admin", "department_admin", "320700", "连云港市行政审批局", "");
    let cases = AdminServiceClient::new(server.as_who(&approver))
        .query_cases(pb::QueryCasesRequest::default())
        .await?
        .into_inner()
        .cases;
    ensure!(cases.len() == 1, "{cases:?}");
    // Another department sees nothing, by either name, and may not read the case.
    for department in ["连云港市卫生健康委员会", "WJW-320700"] {
        let who = Who::new("wjw-platform", "supervisor", "320700", department, "");
        let tasks = SupervisionServiceClient::new(server.as_who(&who))
            .list_tasks(pb::ListTasksRequest::default())
            .await?
            .into_inner()
            .tasks;
        ensure!(tasks.is_empty(), "{department}: {:?}", ids(&tasks));
        let admin = Who::new("wjw-admin", "department_admin", "320700", department, "");
        let err = IntakeServiceClient::new(server.as_who(&admin))
            .get_case(pb::GetCaseRequest { case_id: "320700/N-1".into() })
            .await
            .expect_err("another department's case");
        ensure!(err.code() == Code::PermissionDenied, "{department}: {err:?}");
    }
    server.stop().await
}
