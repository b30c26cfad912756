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
        on_dead_letter: shenguan::outbound::OnDeadLetter::Hold,
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
    let messages = outbox_rows(db).await?;
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
    // `skip`: each message meets its own end here (a held case is the next test's subject).
    let mut platform = destination("platform", &receiver.url(), &["supervision", "sms"], &secret);
    platform.on_dead_letter = shenguan::outbound::OnDeadLetter::Skip;
    let outbound = Config { delivery: fast_policy(3), destinations: vec![platform], ..Config::default() };
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
    // Connection refused for a while: the messages wait, the oldest of each case retried (the
    // case's later ones wait behind it: one case's messages arrive in order).
    let backlog = eventually(|| async {
        let t =
            server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/B-0".into() }).await?.into_inner();
        let m: Vec<pb::OutboundMessage> = t.entries.iter().flat_map(|e| e.outbound.clone()).collect();
        Ok(m.first().is_some_and(|first| first.attempts >= 2).then_some(m))
    })
    .await?;
    assert!(backlog[0].last_error.contains("connect"), "{backlog:?}");
    assert!(backlog.iter().all(|m| m.state == "pending"), "{backlog:?}");
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
                    approval_opinion: "准予许可".into(),
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
                "【审管联动】{applicant_name}：请于{commitment_deadline}前补交{deferred_materials}。".to_owned(),
            ),
            ("task_pushed".to_owned(), "【审管联动】{office}：新的监管任务，案件{case_no}。".to_owned()),
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
            reason: "逾期未补交材料".into(),
            basis: "《行政许可法》第六十九条".into(),
        })
        .await?;
    // A number the sender could not send is refused at intake (one rule for a mobile number).
    let mut odd = accept("C-2", Route::Normal, Scenario::Unspecified);
    odd.supervisors[0].office_admin_mobile = "12000000000".into();
    let e = server.intake().accept_case(odd.clone()).await.expect_err("not a mobile number");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // An office administrator with no number at all is refused too: nobody would be told of
    // the task, and its SMS would die at send (issue 22).
    odd.supervisors[0].office_admin_mobile = String::new();
    let e = server.intake().accept_case(odd).await.expect_err("no number");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("supervisors[0].office_admin_mobile: required"), "{e:?}");

    let texts = gateway.wait_accepted(1, PATIENCE).await?;
    assert_eq!(texts[0].json()["mobile"], "13800138000");
    assert_eq!(
        texts[0].json()["text"],
        "【审管联动】连云港某某食品有限公司：请于2026-10-09前补交食品安全管理制度, 设备布局图。",
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
    for (case_no, department) in [("V-1", "市市场监督管理局"), ("V-2", "市卫生健康委"), ("V-3", "市市场监督管理局")]
    {
        let mut r = accept(case_no, Route::Normal, Scenario::Unspecified);
        r.supervisors[0].department = department.into();
        intake.accept_case(r).await?;
        intake
            .complete_approval(CompleteApprovalRequest {
                case_id: format!("320700/{case_no}"),
                license_no: format!("L-{case_no}"),
                approval_opinion: "准予许可".into(),
                document_refs: vec![],
            })
            .await?;
    }
    let written = outbox(&db).await?;
    assert_eq!(written.len(), 6, "per case: the approval record and the task's SMS");
    let market = Who::new("sup-sjj", "supervisor", "320700", "市市场监督管理局", "");
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

/// Every message the outbox holds, as stored, in id order (through the backend's read side).
async fn outbox_rows(db: &Path) -> Result<Vec<shenguan::store::StoredMessage>> {
    let database = match integration_tests::pg::backend_for(db).await {
        Some(url) => shenguan::store::Database::Postgres(url),
        None => shenguan::store::Database::Sqlite(db.to_owned()),
    };
    Ok(database.reader(1).await?.outbox_after(0, &[], 1_000_000).await?)
}

/// Retention never removes what a registered consumer wants and has not acknowledged (issue
/// 22): a consumer registered before the first case finds every message of 60 days; once it
/// acknowledges, or an administrator drops it, what is past the retention goes — and a
/// consumer of one channel holds only that channel.
#[tokio::test]
async fn retention_keeps_every_message_a_registered_consumer_has_not_acknowledged() -> Result<()> {
    const DAY: i64 = 24 * 3600 * 1000;
    let dir = tempfile::tempdir()?;
    let start = chrono::DateTime::parse_from_rfc3339("2026-09-01T10:00:00+08:00")?;
    let (server, db) = serve(dir.path(), &start.to_rfc3339(), Config::default()).await?;
    let mut events = server.events();
    let subscribe = |consumer: &str, channels: &[&str]| pb::SubscribeRequest {
        consumer: consumer.into(),
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        regions: vec![],
        max_in_flight: 10_000,
    };
    // Both registered before the first case; neither reads for 60 days.
    drop(events.subscribe(subscribe("archive", &[])).await?.into_inner());
    drop(events.subscribe(subscribe("sms-reader", &["sms"])).await?.into_inner());
    let mut intake = server.intake();
    for day in 0..60 {
        let case_no = format!("R-{day}");
        intake.accept_case(accept(&case_no, Route::Normal, Scenario::Unspecified)).await?;
        intake
            .complete_approval(CompleteApprovalRequest {
                case_id: format!("320700/{case_no}"),
                license_no: format!("JY{day:014}"),
                approval_opinion: "同意".into(),
                document_refs: vec![],
            })
            .await?;
        server.advance_to(&(start + chrono::Duration::days(day + 1)).to_rfc3339()).await?;
    }
    let metrics = server.metrics().await?;
    let written: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shenguan_outbox_messages_total "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no outbox counter in {metrics}"))?;
    assert!(written >= 120, "two messages a case at least: {written}");
    let kept = outbox_rows(&db).await?;
    assert_eq!(kept.len(), written, "60 days on, nothing the consumers have not acknowledged is gone");
    assert!(metrics.contains("shenguan_stream_consumer_lag_messages{consumer=\"archive\"}"), "lag per consumer");

    // The consumer reads all of it, in order, and acknowledges.
    let mut stream = events.subscribe(subscribe("archive", &[])).await?.into_inner();
    let mut read = Vec::new();
    while read.len() < written {
        read.push(stream.message().await?.expect("an event"));
    }
    assert!(read.windows(2).all(|w| w[0].id < w[1].id));
    let last = read.last().map(|e| e.id).unwrap_or_default();
    events.ack(pb::AckRequest { consumer: "archive".into(), up_to: last }).await?;
    drop(stream);

    let mut admin = server.admin();
    let listed = admin.list_consumers(pb::ListConsumersRequest {}).await?.into_inner();
    let lags: Vec<(String, u64, Vec<String>)> =
        listed.consumers.iter().map(|c| (c.name.clone(), c.lag, c.channels.clone())).collect();
    assert_eq!(
        lags,
        vec![("archive".to_owned(), 0, vec![]), ("sms-reader".to_owned(), listed.last_id, vec!["sms".to_owned()])]
    );

    // Past the next prune (at most hourly; it runs after a batch's callers are answered, so once
    // a second command is answered it is done): what only the SMS reader wants is kept.
    let prune = |name: &'static str, at: chrono::DateTime<chrono::FixedOffset>| {
        let server = &server;
        let mut intake = intake.clone();
        async move {
            server.advance_to(&at.to_rfc3339()).await?;
            for i in 0..2 {
                intake.accept_case(accept(&format!("{name}-{i}"), Route::Normal, Scenario::Unspecified)).await?;
            }
            anyhow::Ok(())
        }
    };
    let now = start + chrono::Duration::days(60) + chrono::Duration::hours(2);
    prune("P1", now).await?;
    let cutoff = now.timestamp_millis() - 30 * DAY;
    let left = outbox_rows(&db).await?;
    let old: Vec<&str> = left.iter().filter(|m| m.created_at < cutoff).map(|m| m.message.channel.as_str()).collect();
    assert!(!old.is_empty() && old.iter().all(|c| *c == "sms"), "old messages left: {old:?}");
    let old_sms_before = kept.iter().filter(|m| m.created_at < cutoff && m.message.channel == "sms").count();
    assert_eq!(old.len(), old_sms_before, "every old SMS the reader has not acknowledged is kept");
    assert!(left.len() < written, "acknowledged messages past the retention are pruned");

    // Dropped by an administrator: nothing holds them any more.
    let dropped = admin.drop_consumer(pb::DropConsumerRequest { name: "sms-reader".into() }).await?.into_inner();
    assert_eq!(dropped.acked, 0);
    let e = admin.drop_consumer(pb::DropConsumerRequest { name: "sms-reader".into() }).await.expect_err("gone");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin.drop_consumer(pb::DropConsumerRequest { name: "no such/name".into() }).await.expect_err("bad");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    prune("P2", now + chrono::Duration::hours(2)).await?;
    let left = outbox_rows(&db).await?;
    assert!(left.iter().all(|m| m.created_at >= cutoff), "the old SMS went with the consumer that held them");
    server.stop().await
}

/// The JSON Schema of each record type, as the repository keeps them (docs/schemas).
fn schemas() -> Result<HashMap<String, jsonschema::Validator>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let validator = jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.insert(name, validator);
    }
    Ok(out)
}

/// Checks a record (`{type, schema_version, data, …}`) against its type's schema; answers its type.
fn check_record(schemas: &HashMap<String, jsonschema::Validator>, record: &serde_json::Value) -> Result<String> {
    let kind = record["type"].as_str().ok_or_else(|| anyhow::anyhow!("no type: {record}"))?;
    let version = record["schema_version"].as_u64().unwrap_or_default();
    let validator =
        schemas.get(&format!("{kind}.v{version}")).ok_or_else(|| anyhow::anyhow!("no schema for {kind} v{version}"))?;
    let errors: Vec<String> = validator.iter_errors(record).map(|e| format!("{}: {e}", e.instance_path())).collect();
    anyhow::ensure!(errors.is_empty(), "{kind} does not match its schema: {errors:?}\n{record}");
    Ok(kind.to_owned())
}

/// What every receiver gets is a typed record matching its JSON Schema (issue 22): webhook, SMS
/// gateway, credit platform and the stream, through licence, supervision revocation, a
/// revocation by the approval department (`licence_revoked` told to the department) and a
/// late commitment revoked by supervision — whose credit record is the one its transition
/// declares, `commitment_not_fulfilled`, though its deadline once passed (it was sent as
/// `dishonesty` when the type was worked out at send time from the case's variables).
#[tokio::test]
async fn every_record_sent_is_typed_and_matches_its_json_schema_on_every_path() -> Result<()> {
    let schemas = schemas()?;
    let dir = tempfile::tempdir()?;
    let secret = secret_in(dir.path())?;
    let (hook, gateway, credit) = (
        Receiver::start(|_, _| Answer::Ok).await?,
        Receiver::start(|_, _| Answer::Ok).await?,
        Receiver::start(|_, _| Answer::Ok).await?,
    );
    let mut sms = destination("sms-gateway", &gateway.url(), &["sms"], &secret);
    sms.kind = Kind::Sms;
    sms.rate_per_second = Some(1_000.0);
    let mut record = destination("credit-platform", &credit.url(), &["credit"], &secret);
    record.kind = Kind::Credit;
    let hooks = destination(
        "supervision",
        &hook.url(),
        &["supervision", "escalation", "approval_department", "result"],
        &secret,
    );
    let outbound = Config { delivery: fast_policy(3), destinations: vec![hooks, sms, record], ..Config::default() };
    let (server, _) = serve(dir.path(), "2026-09-28T10:00:00+08:00", outbound).await?;
    let (intake, sup) = (server.intake(), server.supervision());
    let licence = |case: &str| CompleteApprovalRequest {
        case_id: format!("320700/{case}"),
        license_no: format!("JY-{case}"),
        approval_opinion: "同意".into(),
        document_refs: vec!["doc://licence/1".into()],
    };
    let revoke = |case: &str, reason: &str| pb::RevokeApprovalRequest {
        case_id: format!("320700/{case}"),
        reason: reason.into(),
        basis: "《行政许可法》第六十九条".into(),
    };
    // L-1: late materials after the deadline passed, licensed, then revoked on supervision's request.
    intake.clone().accept_case(integration_tests::fixtures::deferral("L-1", "2026-10-09")).await?;
    // N-1: licensed, then revoked by the approval department for another reason.
    intake.clone().accept_case(accept("N-1", Route::Normal, Scenario::Unspecified)).await?;
    intake.clone().complete_approval(licence("N-1")).await?;
    server.advance_to("2026-10-10T08:00:00+08:00").await?;
    intake.clone().submit_materials(pb::SubmitMaterialsRequest { case_id: "320700/L-1".into() }).await?;
    intake.clone().complete_approval(licence("L-1")).await?;
    let task = "320700/L-1/T1".to_owned();
    sup.clone().acknowledge_task(pb::AcknowledgeTaskRequest { task_id: task.clone() }).await?;
    sup.clone()
        .report_inspection(pb::ReportInspectionRequest { task_id: task.clone(), finished_on: "2026-10-10".into() })
        .await?;
    sup.clone()
        .report_result(pb::ReportResultRequest {
            task_id: task.clone(),
            outcome: pb::Outcome::Revocation as i32,
            notes: "承诺内容与实际不符".into(),
            ..Default::default()
        })
        .await?;
    intake.clone().revoke_approval(revoke("L-1", "承诺不实")).await?;
    intake.clone().revoke_approval(revoke("N-1", "申请人主动申请注销")).await?;

    let records = credit.wait_accepted(1, PATIENCE).await?;
    let r = records[0].json();
    assert_eq!(check_record(&schemas, &r)?, "credit_record");
    assert_eq!(
        (r["record_type"].as_str(), r["data"]["record_type"].as_str()),
        (Some("commitment_not_fulfilled"), Some("commitment_not_fulfilled")),
        "the type its transition declared: {r}"
    );
    assert_eq!(r["data"]["reason"], "承诺不实");
    // Per webhook: the approval records, the task's and the case's revocation messages, and
    // the licence revoked, told to each task's department.
    let hooked = hook
        .wait_until(PATIENCE, |got| got.iter().filter(|m| m.json()["type"] == "licence_revoked").count() == 2)
        .await?;
    let mut kinds = BTreeSet::new();
    for m in &hooked {
        kinds.insert(check_record(&schemas, &m.json())?);
    }
    for kind in ["approval_record", "revocation_requested", "revocation_decision", "licence_revoked", "view_overdue"] {
        assert!(kinds.contains(kind), "{kind} not delivered: {kinds:?}");
    }
    let revoked: Vec<serde_json::Value> =
        hooked.iter().map(|m| m.json()).filter(|j| j["type"] == "licence_revoked").collect();
    let told: BTreeSet<(String, String, String)> = revoked
        .iter()
        .map(|j| {
            let d = &j["data"];
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (s("task_id"), s("task_outcome"), s("reason"))
        })
        .collect();
    assert_eq!(
        told,
        [
            ("320700/L-1/T1".to_owned(), "closed_revoked".to_owned(), "承诺不实".to_owned()),
            ("320700/N-1/T1".to_owned(), "cancelled".to_owned(), "申请人主动申请注销".to_owned()),
        ]
        .into(),
    );
    assert!(revoked.iter().all(|j| j["recipient"] == "市市场监督管理局"), "to the supervising department: {revoked:?}");
    let approval = hooked.iter().map(|m| m.json()).find(|j| j["type"] == "approval_record").expect("approval record");
    let supervisors = &approval["data"]["supervisors"];
    assert_eq!(supervisors[0]["department"], "市市场监督管理局", "a list of objects, not a sentence: {approval}");
    assert!(approval["data"]["licensed_at"].as_str().is_some_and(|t| t.ends_with("+08:00")), "{approval}");
    // The SMS gateway gets the record beside the text.
    let texts = gateway.wait_accepted(3, PATIENCE).await?;
    for m in &texts {
        let kind = check_record(&schemas, &m.json())?;
        assert!(["commitment_reminder", "task_pushed"].contains(&kind.as_str()), "{kind}");
    }

    // The stream carries every message's record too; the timeline shows the text that was sent.
    let mut stream = server
        .events()
        .subscribe(pb::SubscribeRequest {
            consumer: "check".into(),
            channels: vec![],
            regions: vec![],
            max_in_flight: 1_000,
        })
        .await?
        .into_inner();
    let written = outbox(&dir.path().join("d.db")).await?.len();
    for _ in 0..written {
        let e = stream.message().await?.expect("an event");
        let data: serde_json::Value = serde_json::from_str(&e.data_json)?;
        let record = serde_json::json!({ "type": e.r#type, "schema_version": e.schema_version, "data": data });
        check_record(&schemas, &record)?;
    }
    let timeline =
        server.admin().get_timeline(pb::GetTimelineRequest { case_id: "320700/L-1".into() }).await?.into_inner();
    let sent =
        timeline.entries.iter().flat_map(|e| e.outbound.clone()).find(|m| m.r#type == "credit_record").expect("credit");
    assert_eq!(sent.text, r["text"].as_str().unwrap_or_default(), "the timeline shows what was sent");
    server.stop().await
}

/// Licenses `case` (post-approval verification) and has its supervision ask for the revocation:
/// the case's approval record, then the task's revocation decision and the case's revocation
/// request, all to the approval and supervision webhooks.
async fn licensed_then_revocation_asked(server: &TestServer, case: &str) -> Result<()> {
    server.intake().accept_case(accept(case, Route::Commitment, Scenario::PostApprovalVerification)).await?;
    server
        .intake()
        .complete_approval(CompleteApprovalRequest {
            case_id: format!("320700/{case}"),
            license_no: format!("JY-{case}"),
            approval_opinion: "同意".into(),
            document_refs: vec![],
        })
        .await?;
    let task = format!("320700/{case}/T1");
    let sup = server.supervision();
    sup.clone().acknowledge_task(pb::AcknowledgeTaskRequest { task_id: task.clone() }).await?;
    sup.clone()
        .report_inspection(pb::ReportInspectionRequest { task_id: task.clone(), finished_on: "2026-11-02".into() })
        .await?;
    sup.clone()
        .report_result(pb::ReportResultRequest {
            task_id: task,
            outcome: pb::Outcome::Revocation as i32,
            notes: "承诺内容与实际不符".into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The accepted requests' (case, type), in arrival order.
fn arrivals(received: &[integration_tests::receiver::Received]) -> Vec<(String, String)> {
    received
        .iter()
        .filter(|r| r.answer == Answer::Ok)
        .map(|r| {
            let j = r.json();
            let case = j["data"]["case_id"].as_str().unwrap_or_default().to_owned();
            (case, j["type"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// Order per case holds across a dead letter (issue 22, a defect found outside: a case's
/// revocation request was delivered while its approval record was dead, and after the retry the
/// approval record came after it). With `hold` (the default) the case's later messages wait —
/// through a restart — until the dead letter is retried (then all arrive in order) or discarded
/// (then the rest go on); other cases are not held. With `skip` they go on at once.
#[tokio::test]
async fn a_dead_letter_holds_its_cases_later_messages_until_it_is_retried_or_discarded() -> Result<()> {
    for mode in [shenguan::outbound::OnDeadLetter::Hold, shenguan::outbound::OnDeadLetter::Skip] {
        let dir = tempfile::tempdir()?;
        let secret = secret_in(dir.path())?;
        // The approval records of H-1 and H-2 are refused for good (a 4xx): dead letters at once.
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refuse = refusing.clone();
        let hook = Receiver::start(move |r, _| {
            let j = r.json();
            let held = ["320700/H-1", "320700/H-2"].contains(&j["data"]["case_id"].as_str().unwrap_or_default());
            if held && j["type"] == "approval_record" && refuse.load(std::sync::atomic::Ordering::SeqCst) {
                Answer::Status(422)
            } else {
                Answer::Ok
            }
        })
        .await?;
        let mut d = destination("platform", &hook.url(), &["supervision", "approval_department"], &secret);
        d.on_dead_letter = mode;
        let outbound = Config { delivery: fast_policy(3), destinations: vec![d], ..Config::default() };
        let (server, _) = serve(dir.path(), "2026-11-02T10:00:00+08:00", outbound.clone()).await?;
        for case in ["H-1", "H-2"] {
            licensed_then_revocation_asked(&server, case).await?;
        }
        let h1 = "320700/H-1".to_owned();
        if mode == shenguan::outbound::OnDeadLetter::Skip {
            hook.wait_until(PATIENCE, |got| arrivals(got).iter().filter(|(c, _)| c == &h1).count() == 2).await?;
            let got: Vec<String> =
                arrivals(&hook.received()).into_iter().filter(|(c, _)| c == &h1).map(|(_, t)| t).collect();
            assert_eq!(
                got,
                ["revocation_decision", "revocation_requested"],
                "skip: the rest go on past the dead letter"
            );
            server.stop().await?;
            continue;
        }
        // Another case, written after, goes through: the held ones are not merely slow.
        licensed_then_revocation_asked(&server, "S-1").await?;
        let s1 = "320700/S-1".to_owned();
        hook.wait_until(PATIENCE, |got| arrivals(got).iter().filter(|(c, _)| c == &s1).count() == 3).await?;
        let dead = server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner();
        assert_eq!(dead.dead_letters.len(), 2, "{dead:?}");
        assert!(
            arrivals(&hook.received()).iter().all(|(c, _)| c == &s1),
            "held cases sent past their dead letter: {:?}",
            arrivals(&hook.received())
        );

        // A restart reads the holds back from the dead letters.
        server.stop().await?;
        let (server, _) = serve(dir.path(), "2026-11-02T10:00:00+08:00", outbound).await?;
        server.intake().accept_case(accept("S-2", Route::Normal, Scenario::Unspecified)).await?;
        server
            .intake()
            .complete_approval(CompleteApprovalRequest {
                case_id: "320700/S-2".into(),
                license_no: "JY-S-2".into(),
                approval_opinion: "同意".into(),
                document_refs: vec![],
            })
            .await?;
        let s2 = "320700/S-2".to_owned();
        hook.wait_until(PATIENCE, |got| arrivals(got).iter().any(|(c, _)| c == &s2)).await?;
        assert!(
            arrivals(&hook.received()).iter().all(|(c, _)| c == &s1 || c == &s2),
            "after a restart: {:?}",
            arrivals(&hook.received())
        );

        // Retried (in bulk, by destination): H-1's approval record first, then the rest.
        refusing.store(false, std::sync::atomic::Ordering::SeqCst);
        let h1_key = dead
            .dead_letters
            .iter()
            .find(|d| d.instance_id == h1)
            .map(|d| d.message.clone().unwrap_or_default().key)
            .unwrap_or_default();
        let h2_key = dead
            .dead_letters
            .iter()
            .find(|d| d.instance_id == "320700/H-2")
            .map(|d| d.message.clone().unwrap_or_default().key)
            .unwrap_or_default();
        let discarded = server
            .admin()
            .discard_dead_letters(pb::DeadLetterSelection { keys: vec![h2_key.clone()], ..Default::default() })
            .await?
            .into_inner();
        assert_eq!(discarded.keys, vec![h2_key.clone()]);
        let h2 = "320700/H-2".to_owned();
        hook.wait_until(PATIENCE, |got| arrivals(got).iter().filter(|(c, _)| c == &h2).count() == 2).await?;
        let e = server.admin().retry_dead_letters(pb::DeadLetterSelection::default()).await.expect_err("nothing named");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // Hostile selections are refused whole: nothing is retried by a call that fails.
        for (keys, code) in [
            (vec!["x".repeat(513)], tonic::Code::InvalidArgument),
            (vec![String::new()], tonic::Code::InvalidArgument),
            (vec![h1_key.clone(); 10_001], tonic::Code::InvalidArgument),
            (vec![h1_key.clone(), "320700/H-1:1:9".into()], tonic::Code::NotFound),
        ] {
            let selection = pb::DeadLetterSelection { keys, ..Default::default() };
            let e = server.admin().retry_dead_letters(selection).await.expect_err("refused");
            assert_eq!(e.code(), code, "{e:?}");
        }
        let long = pb::DeadLetterSelection { destination: "d".repeat(65), ..Default::default() };
        let e = server.admin().discard_dead_letters(long).await.expect_err("too long");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let dead_now = server.admin().list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner();
        assert_eq!(dead_now.dead_letters.len(), 1, "H-1's is still dead: {dead_now:?}");
        let retried = server
            .admin()
            .retry_dead_letters(pb::DeadLetterSelection { destination: "platform".into(), ..Default::default() })
            .await?
            .into_inner();
        assert_eq!(retried.keys, vec![h1_key], "the discarded one is no longer a dead letter");
        hook.wait_until(PATIENCE, |got| arrivals(got).iter().filter(|(c, _)| c == &h1).count() == 3).await?;
        let got: Vec<String> =
            arrivals(&hook.received()).into_iter().filter(|(c, _)| c == &h1).map(|(_, t)| t).collect();
        assert_eq!(got, ["approval_record", "revocation_decision", "revocation_requested"], "in the order written");
        let got: Vec<String> =
            arrivals(&hook.received()).into_iter().filter(|(c, _)| c == &h2).map(|(_, t)| t).collect();
        assert_eq!(got, ["revocation_decision", "revocation_requested"], "discarded: never sent, the rest go on");
        let timeline = server.admin().get_timeline(pb::GetTimelineRequest { case_id: h2.clone() }).await?.into_inner();
        assert!(timeline.entries.iter().flat_map(|e| e.outbound.clone()).any(|m| m.state == "discarded"));
        server.stop().await?;
    }
    Ok(())
}
