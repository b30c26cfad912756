//! Outbound delivery against a real HTTP receiver on loopback (`integration_tests::receiver`):
//! 500s, timeouts, dropped connections, a receiver that is down and comes back, dead letters
//! and their manual retry, a destination that never answers beside one that does, and the
//! EventsService stream with its durable cursor.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use integration_tests::fixtures::accept;
use integration_tests::receiver::{Answer, Receiver};
use integration_tests::TestServer;
use shenguan::outbound::{Config, Destination, Kind, Policy};
use shenguan::proto::{self as pb, CompleteApprovalRequest, Route, Scenario};

const SECRET: &str = "a shared secret for the test receiver";
/// Long enough for any delivery on a loaded CI machine; the tests wait on arrivals, never on this.
const PATIENCE: Duration = Duration::from_secs(60);

fn destination(name: &str, url: &str, channels: &[&str], secret: &Path) -> Destination {
    Destination {
        name: name.into(),
        kind: Kind::Webhook,
        url: url.into(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        secret_file: Some(secret.to_owned()),
        ca_file: None,
        timeout_secs: 1,
        concurrency: 8,
        queue: 100,
        rate_per_second: None,
    }
}

fn fast_policy(max_attempts: u32) -> Policy {
    Policy { max_attempts, backoff_initial_ms: 10, backoff_max_ms: 50, ..Policy::default() }
}

const ALL: &[&str] = &["supervision", "sms", "escalation", "approval_department", "result", "credit"];

/// Accepts and licenses `n` cases: each writes the approval record (case) and the office
/// administrator's SMS (its task); three working days later the task's escalation.
async fn licensed_cases(server: &TestServer, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        let case_no = format!("{prefix}-{i}");
        server.intake().accept_case(accept(&case_no, Route::Normal, Scenario::Unspecified)).await?;
        server
            .intake()
            .complete_approval(CompleteApprovalRequest {
                case_id: format!("320700/{case_no}"),
                license_no: format!("JY{i:014}"),
                approval_opinion: "同意".into(),
                document_refs: vec!["doc://licence/1".into()],
            })
            .await?;
    }
    Ok(())
}

/// The shared secret, in a file as a destination's `secret_file`.
fn secret_in(dir: &Path) -> Result<std::path::PathBuf> {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, SECRET)?;
    Ok(secret)
}

/// A server on a new database in `dir` (virtual clock at `start`), pushing as `outbound` says.
async fn serve(dir: &Path, start: &str, outbound: Config) -> Result<(TestServer, std::path::PathBuf)> {
    let db = dir.join("d.db");
    let server = TestServer::start_full(start, &db, |_| {}, shenguan::server::Security::open(), None, outbound).await?;
    Ok((server, db))
}

/// Every message the outbox holds: key → (instance, seq), read through the backend's read side
/// (the SQLite file, or the PostgreSQL database standing in for it under
/// `SHENGUAN_TEST_BACKEND=postgres`).
async fn outbox(db: &Path) -> Result<HashMap<String, (String, i64)>> {
    let database = match integration_tests::pg::backend_for(db).await {
        Some(url) => shenguan::store::Database::Postgres(url),
        None => shenguan::store::Database::Sqlite(db.to_owned()),
    };
    let messages = database.reader(1).await?.outbox_after(0, &[], 1_000_000).await?;
    Ok(messages.into_iter().map(|m| (m.key, (m.instance, i64::try_from(m.seq).unwrap_or(i64::MAX)))).collect())
}

#[tokio::test]
async fn webhooks_get_every_message_through_500s_timeouts_and_drops_signed_and_in_order_per_case() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    // Every key: a 500, then a dropped connection, then no answer (the 1 s timeout), then 200.
    let receiver = Receiver::start(|_, before| match before {
        0 => Answer::Status(500),
        1 => Answer::Drop,
        2 => Answer::Hang,
        _ => Answer::Ok,
    })
    .await?;
    let outbound = Config {
        delivery: fast_policy(10),
        destinations: vec![destination("platform", &receiver.url(), ALL, &secret)],
        ..Config::default()
    };
    let (server, db) = serve(dir.path(), "2026-09-30T10:00:00+08:00", outbound).await?;
    licensed_cases(&server, "W", 6).await?;
    server.advance_to("2026-10-11T00:00:00+08:00").await?;
    let written = outbox(&db).await?;
    assert_eq!(written.len(), 18, "per case: the approval record, the task's SMS and its escalation");

    let accepted = receiver.wait_accepted(written.len(), PATIENCE).await?;
    let all = receiver.received();
    // Every message arrived, and only messages of the outbox, each accepted exactly once.
    let keys: BTreeSet<&str> = accepted.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, written.keys().map(String::as_str).collect::<BTreeSet<_>>());
    assert_eq!(accepted.len(), written.len(), "no message accepted twice");
    // Duplicates only as retries carrying the same key: four attempts per key, no more.
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for r in &all {
        *per_key.entry(r.key.as_str()).or_default() += 1;
    }
    assert!(per_key.values().all(|n| *n == 4), "{per_key:?}");
    for r in &all {
        shenguan::outbound::sign::verify(
            SECRET.as_bytes(),
            &r.timestamp,
            &r.signature,
            &r.body,
            chrono::Utc::now().timestamp(),
            300,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", r.key))?;
        assert_eq!(r.json()["key"], r.key.as_str(), "the body names its key");
    }
    // One instance's messages were accepted in the order they were written.
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &accepted {
        let (instance, seq) = &written[&r.key];
        if let Some(before) = last.insert(instance.clone(), *seq) {
            assert!(before < *seq, "{instance}: seq {seq} accepted after {before}");
        }
    }
    // The timeline shows each message delivered, with its attempts and the last error.
    let timeline =
        server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/W-0".into() }).await?.into_inner();
    let messages: Vec<&pb::OutboundMessage> = timeline.entries.iter().flat_map(|e| e.outbound.iter()).collect();
    assert_eq!(messages.len(), 3);
    // The outcome is recorded shortly after the receipt: wait for it through the API.
    let shown = eventually(|| async {
        let t =
            server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/W-0".into() }).await?.into_inner();
        let ms: Vec<pb::OutboundMessage> = t.entries.iter().flat_map(|e| e.outbound.clone()).collect();
        Ok(ms.iter().all(|m| m.state == "delivered").then_some(ms))
    })
    .await?;
    for m in &shown {
        assert_eq!((m.attempts, m.destination.as_str()), (4, "platform"), "{m:?}");
        assert!(m.last_error.contains("timed out"), "the third attempt's error is kept: {m:?}");
        assert!(m.delivered_at_ms > 0);
    }
    server.stop().await
}

/// Polls `check` until it answers `Some` (every 10 ms, for at most [`PATIENCE`]): waiting on
/// a condition the test can observe only through the API, never a guess at a duration.
async fn eventually<T, F, Fut>(mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the condition did not hold within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dead_letters_after_the_limit_and_refusals_are_delivered_after_a_manual_retry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    // The SMS (task) messages fail with 503 until told otherwise; the approval records are
    // refused for good (400) the first time.
    let receiver = Receiver::start(|r, before| match (r.json()["channel"].as_str(), before) {
        (Some("sms"), _) => Answer::Status(503),
        (Some("supervision"), 0) => Answer::Status(400),
        _ => Answer::Ok,
    })
    .await?;
    let outbound = Config {
        delivery: fast_policy(3),
        destinations: vec![destination("platform", &receiver.url(), &["supervision", "sms"], &secret)],
        ..Config::default()
    };
    let (server, _) = serve(dir.path(), "2026-09-30T10:00:00+08:00", outbound).await?;
    licensed_cases(&server, "D", 2).await?;
    let dead = eventually(|| async {
        let d =
            server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
        Ok((d.len() == 4).then_some(d))
    })
    .await?;
    let by_channel = |channel: &str| -> Vec<&pb::DeadLetter> {
        dead.iter().filter(|d| d.message.as_ref().is_some_and(|m| m.channel == channel)).collect()
    };
    for d in by_channel("sms") {
        let m = d.message.as_ref().expect("message");
        assert_eq!((m.attempts, m.state.as_str()), (3, "dead"), "{m:?}");
        assert!(m.last_error.contains("503") && m.last_error.contains("gave up after 3 attempts"), "{m:?}");
        assert_eq!(d.destination, "platform");
    }
    for d in by_channel("supervision") {
        let m = d.message.as_ref().expect("message");
        assert_eq!(m.attempts, 1, "a 400 is not retried: {m:?}");
        assert!(m.last_error.contains("400"), "{m:?}");
    }
    assert_eq!(receiver.received().len(), 2 * 3 + 2, "three tries per SMS, one per refused record");

    // A retry of something that is not dead, or does not exist, is refused and changes nothing.
    let e = server
        .admin()
        .retry_dead_letter(pb::RetryDeadLetterRequest { key: "nope:1:0".into() })
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);

    // The receiver is mended; an administrator retries every dead letter: each is delivered,
    // with the same key as before.
    receiver.set_script(|_, _| Answer::Ok);
    for d in &dead {
        let key = d.message.as_ref().expect("message").key.clone();
        let r = server.admin().retry_dead_letter(pb::RetryDeadLetterRequest { key: key.clone() }).await?.into_inner();
        assert_eq!((r.key.as_str(), r.destination.as_str()), (key.as_str(), "platform"));
    }
    let accepted = receiver.wait_accepted(4, PATIENCE).await?;
    let dead_keys: BTreeSet<String> = dead.iter().filter_map(|d| d.message.as_ref()).map(|m| m.key.clone()).collect();
    assert_eq!(accepted.iter().map(|r| r.key.clone()).collect::<BTreeSet<_>>(), dead_keys);
    eventually(|| async {
        let d =
            server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
        Ok(d.is_empty().then_some(()))
    })
    .await?;
    let e = server
        .admin()
        .retry_dead_letter(pb::RetryDeadLetterRequest { key: dead_keys.first().cloned().unwrap_or_default() })
        .await
        .expect_err("delivered now");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    server.stop().await
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_everything_when_it_comes_back() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    let receiver = Receiver::start(|_, _| Answer::Ok).await?;
    let addr = receiver.stop().await;
    let outbound = Config {
        delivery: fast_policy(1_000),
        destinations: vec![destination("platform", &format!("http://{addr}/hook"), ALL, &secret)],
        ..Config::default()
    };
    let (server, db) = serve(dir.path(), "2026-09-30T10:00:00+08:00", outbound).await?;
    licensed_cases(&server, "B", 5).await?;
    // Connection refused for a while: the messages wait, retried.
    let backlog = eventually(|| async {
        let t =
            server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/B-0".into() }).await?.into_inner();
        let m: Vec<pb::OutboundMessage> = t.entries.iter().flat_map(|e| e.outbound.clone()).collect();
        Ok(m.iter().all(|m| m.attempts >= 2).then_some(m))
    })
    .await?;
    assert!(backlog.iter().all(|m| m.state == "pending" && m.last_error.contains("connect")), "{backlog:?}");
    let back = Receiver::start_on(addr, Box::new(|_, _| Answer::Ok)).await?;
    let written = outbox(&db).await?;
    let accepted = back.wait_accepted(written.len(), PATIENCE).await?;
    assert_eq!(accepted.len(), written.len());
    server.stop().await
}

#[tokio::test]
async fn a_destination_that_never_answers_holds_neither_intake_nor_the_other_destinations() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    let stuck = Receiver::start(|_, _| Answer::Hang).await?;
    let fine = Receiver::start(|_, _| Answer::Ok).await?;
    let mut slow = destination("stuck", &stuck.url(), &["sms"], &secret);
    slow.timeout_secs = 300;
    slow.concurrency = 2;
    slow.queue = 10;
    let outbound = Config {
        delivery: fast_policy(3),
        destinations: vec![slow, destination("fine", &fine.url(), &["supervision"], &secret)],
        ..Config::default()
    };
    let (server, _) = serve(dir.path(), "2026-09-30T10:00:00+08:00", outbound).await?;
    // 60 cases: 60 SMS for a destination that takes two requests and answers neither.
    licensed_cases(&server, "S", 60).await?;
    let accepted = fine.wait_accepted(60, PATIENCE).await?;
    assert_eq!(accepted.len(), 60, "every approval record reached the destination that answers");
    let stuck_requests = stuck.received().len();
    assert!(stuck_requests <= 2, "the stuck destination has only its concurrency in flight: {stuck_requests}");
    // It holds at most its queue in memory; the rest waits in the database.
    let metrics = server.metrics().await?;
    let window = metrics
        .lines()
        .find(|l| l.starts_with("shenguan_outbound_window{destination=\"stuck\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1);
    assert!((0..=10).contains(&window), "window {window}");
    assert!(metrics.contains("shenguan_outbound_backlog{destination=\"stuck\"} 60"), "{metrics}");
    server.stop().await
}

#[tokio::test]
async fn a_stream_consumer_resumes_after_its_last_ack_missing_nothing_and_seeing_nothing_twice() -> Result<()> {
    use integration_tests::Who;
    use shenguan::proto::events_service_client::EventsServiceClient;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("s.db");
    let server = TestServer::start_secured("2026-09-30T10:00:00+08:00", &db, |_| {}, |_| {}).await?;
    let root = server.as_who(&Who::new("root", "engine_admin", "", "", ""));
    let mut intake = shenguan::proto::intake_service_client::IntakeServiceClient::new(root);
    for (region, n) in [("320700", 8), ("320800", 2)] {
        for i in 0..n {
            let mut r = accept(&format!("E-{i}"), Route::Normal, Scenario::Unspecified);
            r.region_code = region.into();
            intake.accept_case(r).await?;
            intake
                .complete_approval(CompleteApprovalRequest {
                    case_id: format!("{region}/E-{i}"),
                    license_no: format!("L-{i}"),
                    approval_opinion: "准予許可".into(),
                    document_refs: vec![],
                })
                .await?;
        }
    }
    let mine: BTreeSet<String> =
        outbox(&db).await?.into_iter().filter(|(_, (i, _))| i.starts_with("320700/")).map(|(k, _)| k).collect();
    assert_eq!(mine.len(), 16, "the approval record and the task's SMS of each case in 320700");

    let platform = server.as_who(&Who::new("zwfw-320700", "platform", "320700", "", ""));
    let mut events = EventsServiceClient::new(platform.clone());
    let subscribe = |consumer: &str, max_in_flight: u32| pb::SubscribeRequest {
        consumer: consumer.into(),
        channels: vec![],
        regions: vec![],
        max_in_flight,
    };
    let mut stream = events.subscribe(subscribe("sup-320700", 5)).await?.into_inner();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(stream.message().await?.expect("an event"));
    }
    // Five unacknowledged: nothing more comes until an acknowledgement.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(),
        "a sixth before any ack"
    );
    let acked = seen[2].id;
    assert_eq!(
        events.ack(pb::AckRequest { consumer: "sup-320700".into(), up_to: acked }).await?.into_inner().acked,
        acked
    );
    for _ in 0..3 {
        seen.push(stream.message().await?.expect("room for three more"));
    }
    // Disconnect mid-stream with five unacknowledged.
    drop(stream);
    let mut stream = events.subscribe(subscribe("sup-320700", 100)).await?.into_inner();
    let mut resumed = Vec::new();
    while resumed.len() < mine.len() - 3 {
        resumed.push(stream.message().await?.expect("an event"));
    }
    assert_eq!(resumed[0].id, seen[3].id, "resumes just after the acknowledgement");
    assert!(resumed.windows(2).all(|w| w[0].id < w[1].id), "in commit order, each once");
    assert!(resumed.iter().all(|e| e.id > acked), "nothing acknowledged comes again");
    let keys: BTreeSet<String> = seen[..3].iter().chain(&resumed).map(|e| e.key.clone()).collect();
    assert_eq!(keys, mine, "nothing missed, nothing from another region");

    // Consumers are independent: another one starts from the beginning.
    let mut other = events.subscribe(subscribe("archive-320700", 100)).await?.into_inner();
    assert_eq!(other.message().await?.expect("an event").id, seen[0].id);
    // A second Subscribe of the same consumer takes over: the first stream ends ABORTED.
    let mut again = events.subscribe(subscribe("sup-320700", 100)).await?.into_inner();
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    assert_eq!(again.message().await?.expect("an event").id, seen[3].id);

    // Another subject can neither use nor move the consumer; a region outside the scope is refused.
    let mut stranger = EventsServiceClient::new(server.as_who(&Who::new("zwfw-other", "platform", "320700", "", "")));
    let e = stranger.subscribe(subscribe("sup-320700", 10)).await.expect_err("not theirs");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "zwfw-other: consumer sup-320700 belongs to another subject");
    let e =
        stranger.ack(pb::AckRequest { consumer: "sup-320700".into(), up_to: u64::MAX }).await.expect_err("not theirs");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = events
        .subscribe(pb::SubscribeRequest { regions: vec!["320800".into()], ..subscribe("sup-320800", 10) })
        .await
        .expect_err("another region");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    for bad in [
        subscribe("", 10),
        subscribe(&"x".repeat(65), 10),
        subscribe("c", 10_001),
        pb::SubscribeRequest { channels: vec!["a b".into()], ..subscribe("c", 1) },
        pb::SubscribeRequest { regions: vec!["32".into()], ..subscribe("c", 1) },
    ] {
        let e = events.subscribe(bad.clone()).await.expect_err("invalid");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    server.stop().await
}

#[tokio::test]
async fn the_sms_gateway_gets_chinese_templates_and_the_credit_platform_a_record_keyed_by_the_credit_code() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    let gateway = Receiver::start(|_, _| Answer::Ok).await?;
    let credit = Receiver::start(|_, _| Answer::Ok).await?;
    let mut sms = destination("sms-gateway", &gateway.url(), &["sms"], &secret);
    sms.kind = Kind::Sms;
    sms.secret_file = None;
    sms.rate_per_second = Some(1_000.0);
    let mut record = destination("credit-platform", &credit.url(), &["credit"], &secret);
    record.kind = Kind::Credit;
    let outbound = Config {
        delivery: fast_policy(3),
        destinations: vec![sms, record],
        sms_templates: [
            (
                "commitment_reminder".to_owned(),
                "【審管聯動】{applicant_name}：請于{commitment_deadline}前補交{deferred_materials}。".to_owned(),
            ),
            ("task_pushed".to_owned(), "【審管聯動】{office}：新的監管任務，案件{case_no}。".to_owned()),
        ]
        .into(),
    };
    let (server, _) = serve(dir.path(), "2026-09-28T10:00:00+08:00", outbound).await?;
    // A commitment case: reminded the day before, overdue, revoked: a dishonesty record.
    server.intake().accept_case(integration_tests::fixtures::deferral("C-1", "2026-10-09")).await?;
    server.advance_to("2026-10-10T08:00:00+08:00").await?;
    server
        .intake()
        .revoke_approval(pb::RevokeApprovalRequest {
            case_id: "320700/C-1".into(),
            reason: "逾期未補交材料".into(),
            basis: "《行政許可法》第六十九條".into(),
        })
        .await?;
    // A number the sender could not send is refused at intake (one rule for a mobile number).
    let mut odd = accept("C-2", Route::Normal, Scenario::Unspecified);
    odd.supervisors[0].office_admin_mobile = "12000000000".into();
    let e = server.intake().accept_case(odd.clone()).await.expect_err("not a mobile number");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A licensed case whose office administrator has no number at all (still accepted: issue
    // 22 refuses it unless the organisation catalog supplies one).
    odd.supervisors[0].office_admin_mobile = String::new();
    server.intake().accept_case(odd).await?;
    server
        .intake()
        .complete_approval(CompleteApprovalRequest {
            case_id: "320700/C-2".into(),
            license_no: "JY1".into(),
            approval_opinion: "同意".into(),
            document_refs: vec![],
        })
        .await?;

    let texts = gateway.wait_accepted(1, PATIENCE).await?;
    assert_eq!(texts[0].json()["mobile"], "13800138000");
    assert_eq!(
        texts[0].json()["text"],
        "【審管聯動】連云港某某食品有限公司：請于2026-10-09前補交食品安全管理制度, 設備布局圖。",
        "the configured template, filled from the case"
    );
    let records = credit.wait_accepted(1, PATIENCE).await?;
    let r = &records[0].json();
    assert_eq!(
        (r["uscc"].as_str(), r["record_type"].as_str()),
        (Some(integration_tests::fixtures::USCC), Some("dishonesty")),
        "{r}"
    );
    assert_eq!(r["case_id"], "320700/C-1");
    assert_eq!(r["record_id"], records[0].key.as_str());
    shenguan::outbound::sign::verify(
        SECRET.as_bytes(),
        &records[0].timestamp,
        &records[0].signature,
        &records[0].body,
        chrono::Utc::now().timestamp(),
        300,
    )?;

    // The missing number is never sent: a dead letter at once, saying why.
    let dead = eventually(|| async {
        let d =
            server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
        Ok((!d.is_empty()).then_some(d))
    })
    .await?;
    let m = dead[0].message.clone().expect("message");
    assert_eq!((m.channel.as_str(), m.attempts), ("sms", 1));
    assert!(m.last_error.contains("not a mainland mobile number"), "{m:?}");
    assert_eq!(gateway.received().len(), 1, "only the valid number reached the gateway");
    // The gateway's answer is kept with the message.
    let receipt = eventually(|| async {
        let t =
            server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/C-1".into() }).await?.into_inner();
        Ok(t.entries
            .iter()
            .flat_map(|e| e.outbound.clone())
            .find(|m| m.channel == "sms" && m.state == "delivered")
            .map(|m| m.receipt))
    })
    .await?;
    assert!(receipt.contains("gw-1"), "{receipt}");
    server.stop().await
}

#[tokio::test]
async fn webhooks_over_tls_trust_the_configured_ca_and_refuse_an_unknown_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    // A private CA, and the receiver's certificate for localhost signed by it.
    let pki = integration_tests::Pki::new("private CA")?;
    let (cert, key, _) = pki.leaf(&["localhost"], false)?;
    let trusted = Receiver::start_tls(&cert, &key, |_, _| Answer::Ok).await?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, pki.ca_pem())?;
    let mut good = destination("internal", &trusted.url(), &["supervision"], &secret);
    good.ca_file = Some(ca_file);
    // The same receiver, without the CA: its certificate must not be accepted.
    let bad = destination("unverified", &trusted.url(), &["sms"], &secret);
    let outbound = Config { delivery: fast_policy(2), destinations: vec![good, bad], ..Config::default() };
    let (server, _) = serve(dir.path(), "2026-09-30T10:00:00+08:00", outbound).await?;
    licensed_cases(&server, "T", 2).await?;
    let accepted = trusted.wait_accepted(2, PATIENCE).await?;
    assert!(accepted.iter().all(|r| r.json()["channel"] == "supervision"), "only the trusting destination got through");
    let dead = eventually(|| async {
        let d =
            server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
        Ok((d.len() == 2).then_some(d))
    })
    .await?;
    for d in &dead {
        let m = d.message.as_ref().expect("message");
        assert_eq!(d.destination, "unverified");
        assert!(m.last_error.to_lowercase().contains("certificate"), "{m:?}");
    }
    assert!(
        trusted.received().iter().all(|r| r.json()["channel"] == "supervision"),
        "no SMS crossed an unverified TLS session"
    );
    server.stop().await
}

#[tokio::test]
async fn a_supervision_platform_streams_only_its_own_departments_tasks_and_cases() -> Result<()> {
    use integration_tests::Who;
    use shenguan::proto::events_service_client::EventsServiceClient;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("v.db");
    let server = TestServer::start_secured("2026-09-30T10:00:00+08:00", &db, |_| {}, |_| {}).await?;
    let root = server.as_who(&Who::new("root", "engine_admin", "", "", ""));
    let mut intake = shenguan::proto::intake_service_client::IntakeServiceClient::new(root);
    // Two cases supervised by market regulation, one by health, in the same region.
    for (case_no, department) in [("V-1", "市市場監督管理局"), ("V-2", "市衛生健康委"), ("V-3", "市市場監督管理局")]
    {
        let mut r = accept(case_no, Route::Normal, Scenario::Unspecified);
        r.supervisors[0].department = department.into();
        intake.accept_case(r).await?;
        intake
            .complete_approval(CompleteApprovalRequest {
                case_id: format!("320700/{case_no}"),
                license_no: format!("L-{case_no}"),
                approval_opinion: "准予許可".into(),
                document_refs: vec![],
            })
            .await?;
    }
    let written = outbox(&db).await?;
    assert_eq!(written.len(), 6, "per case: the approval record and the task's SMS");
    let market = Who::new("sup-sjj", "supervisor", "320700", "市市場監督管理局", "");
    let mut events = EventsServiceClient::new(server.as_who(&market));
    let mut stream = events
        .subscribe(pb::SubscribeRequest {
            consumer: "sjj".into(),
            channels: vec![],
            regions: vec![],
            max_in_flight: 100,
        })
        .await?
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(stream.message().await?.expect("an event"));
    }
    let instances: BTreeSet<&str> = got.iter().map(|e| e.instance_id.as_str()).collect();
    assert_eq!(
        instances,
        ["320700/V-1", "320700/V-1/T1", "320700/V-3", "320700/V-3/T1"].into_iter().collect(),
        "its own cases and tasks only"
    );
    // Nothing of the health department's case follows.
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(), "V-2 leaked");
    server.stop().await
}
