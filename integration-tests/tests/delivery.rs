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

/// Every message the outbox holds: key → (instance, seq).
async fn outbox(db: &Path) -> Result<HashMap<String, (String, i64)>> {
    let mut db = integration_tests::Db::open(db).await?;
    db.outbox().await
}

#[tokio::test]
async fn webhooks_get_every_message_through_500s_timeouts_and_drops_signed_and_in_order_per_case() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET)?;
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
    let db = dir.path().join("d.db");
    let server = TestServer::start_full(
        "2026-09-30T10:00:00+08:00",
        &db,
        |_| {},
        shenguan::server::Security::open(),
        None,
        outbound,
    )
    .await?;
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
        assert_eq!(r.json["key"], r.key.as_str(), "the body names its key");
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
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET)?;
    // The SMS (task) messages fail with 503 until told otherwise; the approval records are
    // refused for good (400) the first time.
    let receiver = Receiver::start(|r, before| match (r.json["channel"].as_str(), before) {
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
    let db = dir.path().join("d.db");
    let server = TestServer::start_full(
        "2026-09-30T10:00:00+08:00",
        &db,
        |_| {},
        shenguan::server::Security::open(),
        None,
        outbound,
    )
    .await?;
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
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET)?;
    let receiver = Receiver::start(|_, _| Answer::Ok).await?;
    let addr = receiver.stop().await;
    let outbound = Config {
        delivery: fast_policy(1_000),
        destinations: vec![destination("platform", &format!("http://{addr}/hook"), ALL, &secret)],
        ..Config::default()
    };
    let db = dir.path().join("d.db");
    let server = TestServer::start_full(
        "2026-09-30T10:00:00+08:00",
        &db,
        |_| {},
        shenguan::server::Security::open(),
        None,
        outbound,
    )
    .await?;
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
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, SECRET)?;
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
    let db = dir.path().join("d.db");
    let server = TestServer::start_full(
        "2026-09-30T10:00:00+08:00",
        &db,
        |_| {},
        shenguan::server::Security::open(),
        None,
        outbound,
    )
    .await?;
    // 60 cases: 60 SMS for a destination that takes two requests and answers neither.
    licensed_cases(&server, "S", 60).await?;
    let accepted = fine.wait_accepted(60, PATIENCE).await?;
    assert_eq!(accepted.len(), 60, "every approval record reached the destination that answers");
    let stuck_requests = stuck.received().len();
    assert!(stuck_requests <= 2, "the stuck destination has only its concurrency in flight: {stuck_requests}");
    // It holds at most its queue in memory; the rest waits in the database.
    let metrics = reqwest_free_scrape(&server).await?;
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

/// `GET /metrics` over a plain socket.
async fn reqwest_free_scrape(server: &TestServer) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
