//! The web console (`/console/`) in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver), against a real server over loopback. An official signs in (with the
//! dev-mode token, or by pasting a token), finds a case and reads its timeline and diagram; a
//! supervisor acknowledges a task; a statistic is clicked through to its cases; a dead letter is
//! retried; a hostile applicant name is shown as text; the security headers are checked.
//!
//! chromedriver must be installed (`.ci/run` installs `chromium` and `chromium-driver`): without
//! it the tests fail under `CI=true` and are skipped, saying so, elsewhere. With
//! `SHENGUAN_CONSOLE_SCREENSHOTS=DIR` they also write the screenshots of `docs/console/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use integration_tests::fixtures::accept;
use integration_tests::receiver::{Answer, Receiver};
use integration_tests::{TestServer, Who};
use shenguan::proto::{self as pb, Route, Scenario};
use tokio::io::AsyncBufReadExt;

const START: &str = "2026-09-28T10:00:00+08:00";
/// How long the browser may take to show what a step waits for (a loaded CI machine); the
/// tests wait on what the page shows, never on this.
const PATIENCE: Duration = Duration::from_secs(30);
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// A headless chromium under chromedriver, for one test.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (the test is skipped) when chromedriver is not installed outside CI.
    async fn start() -> Result<Option<Browser>> {
        let Some(driver) = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        else {
            if std::env::var_os("CI").is_some() {
                bail!("chromedriver is not installed: apt-get install chromium chromium-driver");
            }
            eprintln!("skipped: chromedriver is not installed (apt-get install chromium chromium-driver)");
            return Ok(None);
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let mut child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start chromedriver")?;
        // chromedriver says when it listens.
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("started successfully") {
                    return Ok(());
                }
            }
            bail!("chromedriver ended before it listened")
        })
        .await
        .context("chromedriver did not start")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let profile = tempfile::tempdir()?;
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists());
        let mut options = serde_json::json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if let Some(binary) = chromium {
            options["binary"] = binary.into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("a chromium session")?;
        Ok(Some(Browser { client, driver: child, _profile: profile }))
    }

    async fn open(&self, server: &TestServer, fragment: &str) -> Result<()> {
        self.client.goto(&format!("http://{}/console/{fragment}", server.addr)).await?;
        Ok(())
    }

    async fn wait(&self, css: &str) -> Result<fantoccini::elements::Element> {
        match self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await {
            Ok(e) => Ok(e),
            Err(e) => bail!("waiting for {css}: {e}; the page says: {}", self.main_text().await),
        }
    }

    async fn text(&self, css: &str) -> Result<String> {
        Ok(self.wait(css).await?.text().await?)
    }

    async fn main_text(&self) -> String {
        match self.client.find(Locator::Css("main")).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Signs in by pasting `token`, as an official given one by their administrator would.
    async fn sign_in(&self, server: &TestServer, token: &str) -> Result<()> {
        self.open(server, "").await?;
        self.wait("#token").await?.send_keys(token).await?;
        self.wait("#signin").await?.click().await?;
        self.wait("#signout").await?;
        Ok(())
    }

    async fn screenshot(&self, name: &str) -> Result<()> {
        if let Some(dir) = std::env::var_os("SHENGUAN_CONSOLE_SCREENSHOTS") {
            let png = self.client.screenshot().await?;
            std::fs::write(Path::new(&dir).join(format!("{name}.png")), png)?;
        }
        Ok(())
    }

    async fn close(mut self) -> Result<()> {
        self.client.clone().close().await?;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// A server that verifies dev-key tokens and, like `shenguan serve` in dev mode, offers an
/// engine-admin token to the console on this machine; pushing as `outbound` says.
async fn serve(dir: &Path, outbound: shenguan::outbound::Config) -> Result<(TestServer, String)> {
    use shenguan::auth::verify;
    let db = dir.join("console.db");
    let key = verify::DevKey::load_or_create(&db.with_extension("dev-key"))?;
    let admin = key.mint(&Who::new("dev-admin", "engine_admin", "", "", "").claims());
    let verifier = verify::Verifier::new(verify::Config::dev(key.clone()))?;
    let mut security =
        shenguan::server::Security::with(shenguan::auth::layer::Mode::Verify(std::sync::Arc::new(verifier)));
    security.dev_token = Some(admin.clone());
    let server = TestServer::start_full(START, &db, |_| {}, security, Some(key), outbound).await?;
    Ok((server, admin))
}

fn token(server: &TestServer, who: &Who) -> String {
    server.key.as_ref().expect("a keyed server").mint(&who.claims())
}

async fn licensed(server: &TestServer, admin: &Who, case_no: &str, applicant: &str) -> Result<pb::Case> {
    let authed = server.as_who(admin);
    let mut intake = pb::intake_service_client::IntakeServiceClient::new(authed);
    let mut request = accept(case_no, Route::Normal, Scenario::Unspecified);
    if let Some(a) = request.applicant.as_mut() {
        a.name = applicant.into();
    }
    intake.accept_case(request).await?;
    let reply = intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: format!("320700/{case_no}"),
            license_no: format!("JY-{case_no}"),
            approval_opinion: "同意".into(),
            document_refs: vec!["doc://licence/1".into()],
        })
        .await?
        .into_inner();
    reply.case.context("a case")
}

fn engine_admin() -> Who {
    Who::new("dev-admin", "engine_admin", "", "", "")
}

#[tokio::test]
async fn an_official_signs_in_finds_a_case_reads_its_timeline_and_a_hostile_name_stays_text() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _) = serve(dir.path(), Default::default()).await?;
    let case = licensed(&server, &engine_admin(), "WEB-1", HOSTILE).await?;
    let Some(browser) = Browser::start().await? else { return Ok(()) };

    // Dev mode offers the local admin token to a browser on this machine.
    browser.open(&server, "").await?;
    browser.screenshot("sign-in").await?;
    browser.wait("#dev-signin").await?.click().await?;
    browser.wait("#signout").await?;

    // Find the case by its number.
    browser.open(&server, "#/cases").await?;
    browser.wait("#case-search input[name=region]").await?.send_keys("320700").await?;
    browser.wait("#case-search input[name=caseNo]").await?.send_keys("WEB-1").await?;
    browser.wait("#case-search button[type=submit]").await?.click().await?;
    let timeline = browser.text("#timeline").await?;
    ensure!(timeline.contains("accepted") && timeline.contains("complete_approval"), "{timeline}");
    // The deadlines armed on the way are there, with the working day they fall on.
    ensure!(timeline.contains("计时中") && timeline.contains("星期"), "{timeline}");
    ensure!(timeline.contains("dev-admin"), "the principal who acted: {timeline}");
    // The diagram marks the state the case is in.
    let current = browser.wait(".diagram[data-instance='320700/WEB-1'] g.current").await?;
    ensure!(current.attr("data-state").await?.as_deref() == Some(case.state.as_str()), "{:?}", case.state);
    // The messages the case wrote, with their delivery state.
    let messages = browser.text("#messages").await?;
    ensure!(messages.contains("320700/WEB-1:"), "{messages}");

    // The hostile name is text: shown as sent, no element made of it, no script run.
    ensure!(browser.text("#applicant").await? == HOSTILE);
    let images = browser.client.find_all(Locator::Css("main img")).await?;
    ensure!(images.is_empty(), "an <img> was made from the applicant's name");
    ensure!(browser.client.get_alert_text().await.is_err(), "an alert ran");
    browser.screenshot("case").await?;

    // The token is never in the URL.
    let url = browser.client.current_url().await?;
    let admin = token(&server, &engine_admin());
    ensure!(!url.as_str().contains(&admin[..20]), "{url}");

    // The same search as a form: the case is listed, its hostile name as text.
    browser.open(&server, "#/cases?region=320700&q=1").await?;
    let row = browser.text("#case-table tr[data-case='320700/WEB-1'] td.applicant").await?;
    ensure!(row == HOSTILE, "{row}");
    browser.screenshot("cases").await?;

    // The enterprise's profile by its credit code lists the case.
    let code = browser.text("#case-table tr[data-case='320700/WEB-1'] td:nth-child(3)").await?;
    browser.open(&server, &format!("#/enterprise?code={code}")).await?;
    // `#profile` is on the page before its answer: wait for what the answer fills in.
    browser.wait("#profile dl.facts").await?;
    let profile = browser.text("#profile").await?;
    ensure!(profile.contains("320700/WEB-1") && profile.contains(HOSTILE), "{profile}");
    browser.screenshot("enterprise").await?;
    // The calendars in force, official or provisional.
    browser.open(&server, "#/calendar").await?;
    let calendar = browser.text("#calendars").await?;
    ensure!(calendar.contains("全国") && calendar.contains("正式"), "{calendar}");
    browser.screenshot("calendar").await?;
    // The department's board counts the task not viewed within its three working days once
    // they have passed (National Day in between: 8 October), and links to it.
    browser.open(&server, "#/boards?region=320700").await?;
    ensure!(browser.text("[data-tile=unviewed] .count").await? == "0");
    let mut admin = pb::admin_service_client::AdminServiceClient::new(server.as_who(&engine_admin()));
    admin.advance_clock(pb::AdvanceClockRequest { by_millis: 0, to: "2026-10-09T10:00:00+08:00".into() }).await?;
    browser.open(&server, "#/boards?region=320700&x=1").await?;
    let count = browser.wait("[data-tile=unviewed] .count a").await?;
    ensure!(count.text().await? == "1", "{}", browser.main_text().await);
    browser.screenshot("board").await?;
    count.click().await?;
    let listed = browser.text("#task-table").await?;
    ensure!(listed.contains("320700/WEB-1/T"), "{listed}");
    browser.close().await?;
    server.stop().await
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_the_dev_token_only_to_this_machine() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, admin) = serve(dir.path(), Default::default()).await?;
    let http = reqwest::Client::builder().http1_only().redirect(reqwest::redirect::Policy::none()).build()?;
    for path in ["/console/", "/console/app.js", "/console/app.css"] {
        let r = http.get(format!("http://{}{path}", server.addr)).send().await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
        let csp = r.headers()["content-security-policy"].to_str()?.to_owned();
        ensure!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        ensure!(csp.contains("frame-ancestors 'none'"), "{csp}");
        ensure!(r.headers()["x-content-type-options"] == "nosniff");
        let body = r.text().await?;
        // No inline script or style in the page: the policy would refuse it anyway.
        if path == "/console/" {
            ensure!(!body.contains("<script>") && !body.contains("style="), "{body}");
        }
    }
    let r = http.get(format!("http://{}/console", server.addr)).send().await?;
    ensure!(r.status().is_redirection() && r.headers()["location"] == "/console/");
    // The dev token: to a loopback peer that names a loopback host; never to another host
    // name (a DNS-rebinding page reaches the server under its own name).
    let r = http.get(format!("http://{}/console/dev-token", server.addr)).send().await?;
    ensure!(r.status() == 200 && r.headers()["cache-control"] == "no-store");
    ensure!(r.text().await? == admin);
    let r = http.get(format!("http://{}/console/dev-token", server.addr)).header("host", "evil.example").send().await?;
    ensure!(r.status() == 403, "{}", r.status());
    server.stop().await?;

    // Without dev mode there is no dev token to hand out.
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("k.db"), |_| {}, |_| {}).await?;
    let r = http.get(format!("http://{}/console/dev-token", server.addr)).send().await?;
    ensure!(r.status() == 404, "{}", r.status());
    server.stop().await
}

#[tokio::test]
async fn a_supervisor_acknowledges_a_task_from_the_inbox() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _) = serve(dir.path(), Default::default()).await?;
    let case = licensed(&server, &engine_admin(), "WEB-2", "南京某某食品有限公司").await?;
    let task = case.tasks.first().context("a task")?.clone();
    let supervisor = Who::new("inspector-1", "supervisor", "320700", &task.department, "");
    let Some(browser) = Browser::start().await? else { return Ok(()) };
    browser.sign_in(&server, &token(&server, &supervisor)).await?;
    browser.open(&server, "#/inbox").await?;
    let button = format!("#task-table tr[data-task='{}'] button.acknowledge", task.task_id);
    browser.screenshot("inbox").await?;
    browser.wait(&button).await?.click().await?;
    let said = browser.text("#inbox-message .notice").await?;
    ensure!(said.contains(&task.task_id), "{said}");

    // The engine recorded it, as the supervisor.
    let mut admin = pb::admin_service_client::AdminServiceClient::new(server.as_who(&engine_admin()));
    let timeline = admin.get_timeline(pb::GetTimelineRequest { case_id: case.case_id.clone() }).await?.into_inner();
    let step = timeline
        .entries
        .iter()
        .find(|e| e.instance_id == task.task_id && e.to_state == "viewed")
        .context("the task was not acknowledged")?;
    ensure!(step.principal.as_ref().is_some_and(|p| p.subject == "inspector-1"), "{step:?}");
    // The row now offers the next step.
    let state = browser.text(&format!("#task-table tr[data-task='{}'] td.state", task.task_id)).await?;
    ensure!(state.contains("viewed"), "{state}");
    browser.close().await?;
    server.stop().await
}

#[tokio::test]
async fn a_statistic_clicks_through_to_its_cases() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, _) = serve(dir.path(), Default::default()).await?;
    let mut ids = std::collections::BTreeSet::new();
    for n in ["WEB-3", "WEB-4"] {
        ids.insert(licensed(&server, &engine_admin(), n, "无锡某某餐饮管理有限公司").await?.case_id);
    }
    let auditor = Who::new("audit-1", "auditor", "320700", "", "");
    let Some(browser) = Browser::start().await? else { return Ok(()) };
    browser.sign_in(&server, &token(&server, &auditor)).await?;
    browser.open(&server, "#/statistics?region=320700&from=2026-01-01&to=2026-12-31").await?;
    let figure = browser.wait("table.approval button[data-figure=cases]").await?;
    ensure!(figure.text().await? == "2", "{}", browser.main_text().await);
    browser.screenshot("statistics").await?;
    figure.click().await?;
    browser.wait("#drill li a").await?;
    let mut shown = std::collections::BTreeSet::new();
    for a in browser.client.find_all(Locator::Css("#drill li a")).await? {
        shown.insert(a.text().await?);
    }
    ensure!(shown == ids, "{shown:?} ≠ {ids:?}");
    browser.client.find(Locator::Css("#drill li a")).await?.click().await?;
    browser.wait("#timeline").await?;
    browser.close().await?;
    server.stop().await
}

#[tokio::test]
async fn a_dead_letter_is_retried_from_the_console_and_delivered() -> Result<()> {
    use shenguan::outbound::{Config, Destination, Kind, Policy};
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "a shared secret for the test receiver")?;
    // The supervision platform refuses the first delivery of each message for good (400).
    let receiver = Receiver::start(|_, before| if before == 0 { Answer::Status(400) } else { Answer::Ok }).await?;
    let platform = Destination {
        name: "platform".into(),
        kind: Kind::Webhook,
        url: receiver.url(),
        channels: vec!["supervision".into()],
        secret_file: Some(secret),
        ca_file: None,
        timeout_secs: 1,
        concurrency: 4,
        queue: 100,
        rate_per_second: None,
        on_dead_letter: shenguan::outbound::OnDeadLetter::Skip,
    };
    let outbound = Config {
        delivery: Policy { max_attempts: 2, backoff_initial_ms: 10, backoff_max_ms: 50, ..Policy::default() },
        destinations: vec![platform],
        ..Config::default()
    };
    let (server, _) = serve(dir.path(), outbound).await?;
    licensed(&server, &engine_admin(), "WEB-5", "常州某某药业有限公司").await?;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(server.as_who(&engine_admin()));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let dead = loop {
        let d = admin.list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
        if let Some(first) = d.into_iter().next() {
            break first;
        }
        ensure!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let key = dead.message.as_ref().context("message")?.key.clone();

    let Some(browser) = Browser::start().await? else { return Ok(()) };
    browser.open(&server, "").await?;
    browser.wait("#dev-signin").await?.click().await?;
    browser.wait("#signout").await?;
    browser.open(&server, "#/dead-letters").await?;
    let retry = browser.wait(&format!("#dead-table tr[data-key='{key}'] button.retry")).await?;
    browser.screenshot("dead-letters").await?;
    retry.click().await?;
    let said = browser.text("#dead-message .notice").await?;
    ensure!(said.contains(&key), "{said}");
    // Delivered with the same key.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !receiver.accepted().iter().any(|r| r.key == key) {
        ensure!(tokio::time::Instant::now() < deadline, "the retried message was not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser.close().await?;
    server.stop().await
}
