//! JSON over HTTP on the serve listener (`POST /v1/<Service>/<Method>`, `GET /openapi.json`),
//! against a real server over loopback: the answers are the gRPC answers, as JSON; refusals
//! carry the gRPC code, its name and message with the mapped HTTP status; every method on its
//! happy path answers as over gRPC (two twin servers, one called over JSON, one over gRPC); the
//! same tokens and authorisation apply; malformed, oversized and hostile bodies are refused
//! whole; a stream comes as Server-Sent Events.

use anyhow::{ensure, Context, Result};
use integration_tests::fixtures::accept;
use integration_tests::{TestServer, Who};
use prost::Message as _;
use shenguan::proto::{self as pb, Route, Scenario};
use shenguan::server::json;

const START: &str = "2026-09-28T10:00:00+08:00";

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().expect("client")
}

/// POSTs `body` to `/v1/<path>` with an optional bearer token; answers the status, the JSON
/// body (Null if none) and the headers.
async fn post(
    server: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value, reqwest::header::HeaderMap)> {
    let mut request = client()
        .post(format!("http://{}/v1/{path}", server.addr))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let value = if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).context(text)? };
    Ok((status, value, headers))
}

/// The gRPC answer `reply` as the gateway writes it.
fn as_json<M: prost::Message>(reply: &M, service: &str, name: &str) -> serde_json::Value {
    let text = json::encode_json(&json::method(service, name).expect("method").output(), reply.encode_to_vec().into())
        .expect("encodes");
    serde_json::from_str(&text).expect("json")
}

/// An AcceptCase request as a JSON body, in proto3's JSON mapping.
fn body(request: &pb::AcceptCaseRequest) -> String {
    json::encode_json(
        &json::method("IntakeService", "AcceptCase").expect("method").input(),
        request.encode_to_vec().into(),
    )
    .expect("encodes")
}

#[tokio::test]
async fn a_case_accepted_and_read_over_json_is_the_grpc_case() -> Result<()> {
    let server = TestServer::start(START).await?;
    let request = accept("JS-1", Route::Normal, Scenario::Unspecified);
    let (status, accepted, headers) = post(&server, "IntakeService/AcceptCase", body(&request), None).await?;
    ensure!(status == 200, "{status}: {accepted}");
    ensure!(headers["content-type"].to_str()?.starts_with("application/json"));
    ensure!(accepted["case"]["caseId"] == "320700/JS-1", "{accepted}");
    ensure!(accepted["case"]["state"] == "awaiting_approval", "{accepted}");
    // Answers in lowerCamelCase, with every field (defaults too).
    ensure!(accepted["case"].get("unlinked") == Some(&serde_json::Value::Bool(false)), "{accepted}");

    // GetCase over JSON is GetCase over gRPC.
    let get = r#"{"caseId":"320700/JS-1"}"#;
    let (status, over_json, _) = post(&server, "IntakeService/GetCase", get, None).await?;
    ensure!(status == 200, "{status}: {over_json}");
    let over_grpc = server.intake().get_case(pb::GetCaseRequest { case_id: "320700/JS-1".into() }).await?.into_inner();
    ensure!(over_json == as_json(&over_grpc, "IntakeService", "GetCase"), "{over_json}");

    // The same request again is the same answer (idempotent on the case number), as over gRPC.
    let (status, again, _) = post(&server, "IntakeService/AcceptCase", body(&request), None).await?;
    ensure!(status == 200 && again["case"]["caseId"] == "320700/JS-1", "{status}: {again}");

    // A list, camelCase in.
    let (status, listed, _) =
        post(&server, "AdminService/QueryCases", r#"{"regionCode":"320700","page":{"pageSize":10}}"#, None).await?;
    ensure!(status == 200, "{status}: {listed}");
    ensure!(listed["cases"].as_array().is_some_and(|c| c.len() == 1), "{listed}");
    server.stop().await
}

#[tokio::test]
async fn refusals_carry_the_grpc_code_name_and_message_with_the_mapped_http_status() -> Result<()> {
    let server = TestServer::start(START).await?;
    let mut bad = accept("JS-2", Route::Normal, Scenario::Unspecified);
    bad.region_code = "32".into();
    let grpc = server.intake().accept_case(bad.clone()).await.expect_err("refused over gRPC");
    let (status, refused, _) = post(&server, "IntakeService/AcceptCase", body(&bad), None).await?;
    ensure!(status == 400, "{status}: {refused}");
    ensure!(refused["code"] == 3 && refused["status"] == "INVALID_ARGUMENT", "{refused}");
    ensure!(refused["message"] == grpc.message(), "{refused} vs {}", grpc.message());
    ensure!(refused["details"] == serde_json::json!([]), "{refused}");

    let (status, missing, _) = post(&server, "IntakeService/GetCase", r#"{"caseId":"320700/NOPE"}"#, None).await?;
    ensure!(status == 404 && missing["status"] == "NOT_FOUND", "{status}: {missing}");

    // Nothing was written by the refusal.
    let (status, listed, _) = post(&server, "AdminService/QueryCases", "{}", None).await?;
    ensure!(status == 200 && listed["cases"] == serde_json::json!([]), "{listed}");
    server.stop().await
}

#[tokio::test]
async fn the_same_tokens_and_roles_apply_and_the_request_id_is_recorded() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("j.db"), |_| {}, |_| {}).await?;
    let key = server.key.clone().expect("dev key");
    let request = body(&accept("JS-3", Route::Normal, Scenario::Unspecified));

    let (status, e, _) = post(&server, "IntakeService/AcceptCase", request.clone(), None).await?;
    ensure!(status == 401 && e["status"] == "UNAUTHENTICATED", "{status}: {e}");
    let (status, e, _) = post(&server, "IntakeService/AcceptCase", request.clone(), Some("not-a-token")).await?;
    ensure!(status == 401 && e["status"] == "UNAUTHENTICATED", "{status}: {e}");

    let auditor = key.mint(&Who::new("auditor-1", "auditor", "320700", "", "").claims());
    let (status, e, _) = post(&server, "IntakeService/AcceptCase", request.clone(), Some(&auditor)).await?;
    ensure!(status == 403 && e["status"] == "PERMISSION_DENIED", "{status}: {e}");
    ensure!(e["message"].as_str().is_some_and(|m| m.contains("the right intake is missing")), "{e}");

    // A platform of another region: refused on the case's region, as over gRPC.
    let elsewhere = key.mint(&Who::new("zwfw-320800", "platform", "320800", "", "").claims());
    let (status, e, _) = post(&server, "IntakeService/AcceptCase", request.clone(), Some(&elsewhere)).await?;
    ensure!(status == 403, "{status}: {e}");

    let platform = key.mint(&Who::new("zwfw-320700", "platform", "320700", "", "").claims());
    let response = client()
        .post(format!("http://{}/v1/IntakeService/AcceptCase", server.addr))
        .bearer_auth(&platform)
        .header("x-request-id", "json-req-1")
        .body(request)
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.text().await?);
    let root = key.mint(&Who::new("root", "engine_admin", "", "", "").claims());
    let (status, timeline, _) =
        post(&server, "AdminService/GetTimeline", r#"{"caseId":"320700/JS-3"}"#, Some(&root)).await?;
    ensure!(status == 200, "{status}: {timeline}");
    let first = &timeline["entries"][0];
    ensure!(first["principal"]["subject"] == "zwfw-320700", "recorded as the token's subject: {first}");
    ensure!(first["requestId"] == "json-req-1", "the request id passed: {first}");
    server.stop().await
}

#[tokio::test]
async fn malformed_oversized_and_hostile_bodies_are_refused_whole() -> Result<()> {
    let server = TestServer::start(START).await?;
    let cases = [
        ("IntakeService/AcceptCase", "{".to_owned(), 400, "INVALID_ARGUMENT"),
        ("IntakeService/AcceptCase", "[]".to_owned(), 400, "INVALID_ARGUMENT"),
        ("IntakeService/AcceptCase", r#"{"caseNo":"X","nope":1}"#.to_owned(), 400, "INVALID_ARGUMENT"),
        ("IntakeService/AcceptCase", r#"{"caseNo":5}"#.to_owned(), 400, "INVALID_ARGUMENT"),
        ("IntakeService/AcceptCase", r#"{"route":"ROUTE_NO_SUCH"}"#.to_owned(), 400, "INVALID_ARGUMENT"),
        (
            "IntakeService/AcceptCase",
            format!(r#"{{"caseNo":"{}"}}"#, "x".repeat(2 * 1024 * 1024)),
            429,
            "RESOURCE_EXHAUSTED",
        ),
        ("IntakeService/NoSuchMethod", "{}".to_owned(), 404, "NOT_FOUND"),
        ("NoSuchService/AcceptCase", "{}".to_owned(), 404, "NOT_FOUND"),
        ("grpc.health.v1.Health/Check", "{}".to_owned(), 404, "NOT_FOUND"),
    ];
    for (path, body, want, code) in cases {
        let shown: String = body.chars().take(40).collect();
        let (status, e, _) = post(&server, path, body, None).await?;
        ensure!(status == want && e["status"] == code, "{path} {shown}: {status} {e}");
    }
    // A hostile applicant name is data like any other: stored and answered as it was sent.
    let mut hostile = accept("JS-4", Route::Normal, Scenario::Unspecified);
    if let Some(a) = hostile.applicant.as_mut() {
        a.name = "<img src=x onerror=alert(1)>\"'\\u0000".into();
    }
    let (status, accepted, _) = post(&server, "IntakeService/AcceptCase", body(&hostile), None).await?;
    ensure!(status == 200, "{status}: {accepted}");
    ensure!(accepted["case"]["applicantName"] == "<img src=x onerror=alert(1)>\"'\\u0000", "{accepted}");
    // Not JSON at all, and the wrong method.
    let response = client()
        .post(format!("http://{}/v1/IntakeService/GetCase", server.addr))
        .header("content-type", "application/xml")
        .body("<x/>")
        .send()
        .await?;
    ensure!(response.status() == 400, "{}", response.status());
    let response = client().get(format!("http://{}/v1/IntakeService/GetCase", server.addr)).send().await?;
    ensure!(response.status() == 405, "{}", response.status());
    // Nothing half-written: only the hostile case, which was valid, is there.
    let (_, listed, _) = post(&server, "AdminService/QueryCases", "{}", None).await?;
    ensure!(listed["cases"].as_array().map(Vec::len) == Some(1), "{listed}");
    server.stop().await
}

#[tokio::test]
async fn the_openapi_document_lists_every_path_and_a_stream_comes_as_server_sent_events() -> Result<()> {
    let server = TestServer::start(START).await?;
    let text = client().get(format!("http://{}/openapi.json", server.addr)).send().await?.text().await?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(doc["openapi"] == "3.1.0", "{}", doc["openapi"]);
    for path in ["/v1/IntakeService/AcceptCase", "/v1/SupervisionService/ListTasks", "/v1/EventsService/Subscribe"] {
        ensure!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    ensure!(doc == json::document(), "the served document is the generated one");

    let mut intake = server.intake();
    intake.accept_case(accept("JS-5", Route::Normal, Scenario::Unspecified)).await?;
    intake
        .complete_approval(pb::CompleteApprovalRequest {
            case_id: "320700/JS-5".into(),
            license_no: "JY-JS-5".into(),
            approval_opinion: "准予许可".into(),
            document_refs: vec![],
        })
        .await?;
    let mut response = client()
        .post(format!("http://{}/v1/EventsService/Subscribe", server.addr))
        .body(r#"{"consumer":"sse-1","maxInFlight":10}"#)
        .send()
        .await?;
    ensure!(response.status() == 200, "{}", response.status());
    ensure!(response.headers()["content-type"].to_str()?.starts_with("text/event-stream"));
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), response.chunk())
            .await
            .context("no event within 30 s")??
            .context("the stream ended")?;
        text.push_str(std::str::from_utf8(&chunk)?);
    }
    let first = text.split("\n\n").next().unwrap_or_default();
    ensure!(first.starts_with("event: message\ndata: "), "{first}");
    let event: serde_json::Value = serde_json::from_str(first.trim_start_matches("event: message\ndata: "))?;
    ensure!(event["instanceId"].as_str().is_some_and(|i| i.starts_with("320700/JS-5")), "{event}");
    ensure!(event["type"].as_str().is_some_and(|t| !t.is_empty()), "a typed record: {event}");
    drop(response);
    server.stop().await
}

/// Bytes in, bytes out: a gRPC call of any method, for comparing with its JSON twin.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Every unary method of every service, called with an empty request over JSON and over gRPC,
/// with no token, with an auditor's and with the engine administrator's: the JSON answer is the
/// gRPC answer — the same reply, or the same code and message — each time.
#[tokio::test]
async fn every_method_answers_over_json_as_it_answers_over_grpc() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = TestServer::start_secured(START, &dir.path().join("e.db"), |_| {}, |_| {}).await?;
    let key = server.key.clone().expect("dev key");
    let tokens = [
        None,
        Some(key.mint(&Who::new("auditor-1", "auditor", "320700", "", "").claims())),
        Some(key.mint(&Who::new("root", "engine_admin", "", "", "").claims())),
    ];
    let mut services: Vec<_> = json::pool().services().filter(|s| s.package_name() == "shenguan.v1").collect();
    services.sort_by(|a, b| a.name().cmp(b.name()));
    let mut compared = 0;
    let mut codes = std::collections::BTreeSet::new();
    for service in services {
        for m in service.methods().filter(|m| !m.is_server_streaming() && !m.is_client_streaming()) {
            for token in &tokens {
                let (status, over_json, _) =
                    post(&server, &format!("{}/{}", service.name(), m.name()), "{}", token.as_deref()).await?;
                let mut grpc = tonic::client::Grpc::new(server.channel.clone());
                grpc.ready().await?;
                let mut request = tonic::Request::new(bytes::Bytes::new());
                if let Some(t) = token {
                    request.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
                }
                let path: http::uri::PathAndQuery = format!("/{}/{}", service.full_name(), m.name()).parse()?;
                let what = format!(
                    "{}/{} as {}",
                    service.name(),
                    m.name(),
                    if token.is_some() { "someone" } else { "nobody" }
                );
                match grpc.unary(request, path, Raw).await {
                    Ok(reply) => {
                        let text = json::encode_json(&m.output(), reply.into_inner()).expect("encodes");
                        let want: serde_json::Value = serde_json::from_str(&text)?;
                        ensure!(status == 200 && over_json == want, "{what}: {status} {over_json} vs {want}");
                        codes.insert(0);
                    }
                    Err(e) => {
                        ensure!(
                            over_json["code"] == e.code() as i32 && over_json["message"] == e.message(),
                            "{what}: {status} {over_json} vs {e:?}"
                        );
                        ensure!(status == json::http_status(e.code()).as_u16(), "{what}: {status} for {:?}", e.code());
                        codes.insert(e.code() as i32);
                    }
                }
                compared += 1;
            }
        }
    }
    let unary = json::pool()
        .services()
        .filter(|s| s.package_name() == "shenguan.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .filter(|m| !m.is_server_streaming() && !m.is_client_streaming())
        .count();
    ensure!(unary >= 30 && compared == unary * tokens.len(), "{compared} calls compared for {unary} methods");
    // Replies, refusals of the input, missing tokens and missing rights all came up.
    for code in [0, 3, 7, 16] {
        ensure!(codes.contains(&code), "no answer with code {code}: {codes:?}");
    }
    server.stop().await
}

/// A JSON body is held by the same body gate as a gRPC message: counted against the server's
/// budget for unfinished requests, and refused in JSON when it would pass it.
#[tokio::test]
async fn a_json_body_counts_against_the_servers_budget_for_unfinished_requests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut security = shenguan::server::Security::open();
    security.bodies.budget = 1_000;
    let server = TestServer::start_with(START, &dir.path().join("b.db"), |_| {}, security, None).await?;
    let small = r#"{"caseId":"320700/NOPE"}"#;
    let (status, e, _) = post(&server, "IntakeService/GetCase", small, None).await?;
    ensure!(status == 404, "a small body passes the gate: {status} {e}");
    let big = format!(r#"{{"caseId":"{}"}}"#, "x".repeat(2_000));
    let (status, e, _) = post(&server, "IntakeService/GetCase", big, None).await?;
    ensure!(status == 429 && e["status"] == "RESOURCE_EXHAUSTED", "{status}: {e}");
    ensure!(e["message"].as_str().is_some_and(|m| m.contains("limit of unfinished requests")), "{e}");
    server.stop().await
}

/// A server for the happy-path comparison: tokens checked, supervision messages pushed to
/// `hook` (which refuses them, so that there are dead letters to list, retry and discard).
async fn twin(dir: &std::path::Path, hook: &str) -> Result<(TestServer, String)> {
    use shenguan::auth::verify;
    use shenguan::outbound::{Config, Destination, Kind, Policy};
    let db = dir.join("twin.db");
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "a shared secret for the test receiver")?;
    let key = verify::DevKey::load_or_create(&db.with_extension("dev-key"))?;
    let admin = key.mint(&Who::new("root", "engine_admin", "", "", "").claims());
    let verifier = verify::Verifier::new(verify::Config::dev(key.clone()))?;
    let security = shenguan::server::Security::with(shenguan::auth::layer::Mode::Verify(std::sync::Arc::new(verifier)));
    let outbound = Config {
        delivery: Policy { max_attempts: 1, backoff_initial_ms: 10, backoff_max_ms: 50, ..Policy::default() },
        destinations: vec![Destination {
            name: "platform".into(),
            kind: Kind::Webhook,
            url: hook.into(),
            channels: vec!["supervision".into()],
            secret_file: Some(secret),
            ca_file: None,
            timeout_secs: 1,
            concurrency: 4,
            queue: 100,
            rate_per_second: None,
            on_dead_letter: shenguan::outbound::OnDeadLetter::Skip,
        }],
        ..Config::default()
    };
    let server = TestServer::start_full(START, &db, |_| {}, security, Some(key), outbound).await?;
    Ok((server, admin))
}

/// What two servers may answer differently for the same calls: wall-clock times, delivery's
/// progress (it runs beside the calls), and what a spot-check draw takes at random.
fn settled(mut v: serde_json::Value) -> serde_json::Value {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.contains_key("channel") && map.contains_key("recipient") {
                    for k in ["state", "attempts", "lastError", "receipt", "deliveredAtMs"] {
                        map.remove(k);
                    }
                }
                for k in ["deadAtMs", "seed", "inspectors", "recordJson"] {
                    map.remove(k);
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// The same call on the JSON twin and the gRPC twin; both must succeed, with the same answer.
struct Twins {
    json: TestServer,
    json_token: String,
    grpc: TestServer,
    grpc_token: String,
    called: std::collections::BTreeSet<String>,
    step: usize,
}

impl Twins {
    async fn call<M: prost::Message>(&mut self, service: &str, method: &str, request: &M) -> Result<serde_json::Value> {
        self.step += 1;
        let m = json::method(service, method).with_context(|| format!("no {service}/{method}"))?;
        let bytes = bytes::Bytes::from(request.encode_to_vec());
        let body = json::encode_json(&m.input(), bytes.clone()).map_err(anyhow::Error::msg)?;
        let request_id = format!("happy-{}", self.step);
        let response = client()
            .post(format!("http://{}/v1/{service}/{method}", self.json.addr))
            .header("content-type", "application/json")
            .header("x-request-id", &request_id)
            .bearer_auth(&self.json_token)
            .body(body.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        ensure!(status == 200, "{service}/{method} {body} over JSON: {status} {text}");
        let over_json: serde_json::Value = serde_json::from_str(&text)?;

        let mut grpc = tonic::client::Grpc::new(self.grpc.channel.clone());
        grpc.ready().await?;
        let mut call = tonic::Request::new(bytes);
        call.metadata_mut().insert("authorization", format!("Bearer {}", self.grpc_token).parse()?);
        call.metadata_mut().insert("x-request-id", request_id.parse()?);
        let path: http::uri::PathAndQuery = format!("/{}/{method}", m.parent_service().full_name()).parse()?;
        let reply =
            grpc.unary(call, path, Raw).await.map_err(|e| anyhow::anyhow!("{service}/{method} over gRPC: {e:?}"))?;
        let over_grpc: serde_json::Value =
            serde_json::from_str(&json::encode_json(&m.output(), reply.into_inner()).map_err(anyhow::Error::msg)?)?;
        ensure!(
            settled(over_json.clone()) == settled(over_grpc.clone()),
            "{service}/{method}: over JSON {over_json}\n  over gRPC {over_grpc}"
        );
        self.called.insert(format!("{service}/{method}"));
        Ok(over_json)
    }

    /// Both twins' dead letters, once each has `n`.
    async fn dead_letters(&self, n: usize) -> Result<()> {
        for (server, token) in [(&self.json, &self.json_token), (&self.grpc, &self.grpc_token)] {
            let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
                server.channel.clone(),
                integration_tests::bearer(token),
            );
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let dead = admin.list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner();
                if dead.dead_letters.len() >= n {
                    break;
                }
                ensure!(tokio::time::Instant::now() < deadline, "{} dead letters, not {n}", dead.dead_letters.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

/// Every unary method once on its happy path, over JSON on one server and over gRPC on its twin
/// (same clock, same calls, same request ids): the answers are the same, up to wall-clock times,
/// delivery's progress and a draw's random choices. A method added to the proto without a step
/// here fails the test.
#[tokio::test]
async fn every_method_on_its_happy_path_answers_over_json_as_over_grpc() -> Result<()> {
    use integration_tests::fixtures::{catalogued, deferral, example_catalog, uscc};
    let hook =
        integration_tests::receiver::Receiver::start(|_, _| integration_tests::receiver::Answer::Status(400)).await?;
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (json_server, json_token) = twin(a.path(), &hook.url()).await?;
    let (grpc_server, grpc_token) = twin(b.path(), &hook.url()).await?;
    let mut t =
        Twins { json: json_server, json_token, grpc: grpc_server, grpc_token, called: Default::default(), step: 0 };
    let code = uscc("91320700MA2000001");

    // Cases before the catalogs (free-form items), then the organisation and catalogs.
    let licence = |id: String| pb::CompleteApprovalRequest {
        case_id: id,
        license_no: "JY-H".into(),
        approval_opinion: "准予许可".into(),
        document_refs: vec![],
    };
    t.call("IntakeService", "AcceptCase", &deferral("H-2", "2026-10-30")).await?;
    t.call("IntakeService", "SubmitMaterials", &pb::SubmitMaterialsRequest { case_id: "320700/H-2".into() }).await?;
    t.call("IntakeService", "AcceptCase", &accept("H-3", Route::Normal, Scenario::Unspecified)).await?;
    t.call("IntakeService", "CompleteApproval", &licence("320700/H-3".into())).await?;
    let revoke = pb::RevokeApprovalRequest {
        case_id: "320700/H-3".into(),
        reason: "以欺骗手段取得许可".into(),
        basis: "《行政许可法》第六十九条".into(),
    };
    t.call("IntakeService", "RevokeApproval", &revoke).await?;
    let mut dry = example_catalog();
    dry.dry_run = true;
    t.call("AdminService", "ImportCatalogs", &dry).await?;
    t.call("AdminService", "ImportCatalogs", &example_catalog()).await?;
    let kind = |k: &str| pb::CatalogHistoryRequest { kind: k.into() };
    t.call("AdminService", "CatalogHistory", &kind("linkage")).await?;
    let export = pb::ExportCatalogRequest { kind: "linkage".into(), format: "csv".into(), version: 0 };
    t.call("AdminService", "ExportCatalog", &export).await?;
    t.call("AdminService", "ListLinkageProblems", &pb::ListLinkageProblemsRequest::default()).await?;

    // Intake.
    t.call("IntakeService", "AcceptCase", &catalogued("H-1", "FOOD-PROD-NEW", &code, "A")).await?;
    let h1 = || "320700/H-1".to_string();
    t.call("IntakeService", "GetCase", &pb::GetCaseRequest { case_id: h1() }).await?;
    t.call("AdminService", "RelinkCase", &pb::RelinkCaseRequest { case_id: h1() }).await?;
    let licensed = t.call("IntakeService", "CompleteApproval", &licence(h1())).await?;
    ensure!(licensed["case"]["state"] == "licensed", "{licensed}");
    let task = licensed["case"]["tasks"][0]["taskId"].as_str().context("a task")?.to_owned();

    // Supervision.
    t.call("SupervisionService", "ListTasks", &pb::ListTasksRequest::default()).await?;
    t.call("SupervisionService", "AcknowledgeTask", &pb::AcknowledgeTaskRequest { task_id: task.clone() }).await?;
    let inspected = pb::ReportInspectionRequest { task_id: task.clone(), finished_on: "2026-09-28".into() };
    t.call("SupervisionService", "ReportInspection", &inspected).await?;
    let result = pb::ReportResultRequest {
        task_id: task.clone(),
        outcome: pb::Outcome::NonCompliant as i32,
        rectification_deadline: "2026-10-30".into(),
        notes: "仓储温度超标".into(),
    };
    t.call("SupervisionService", "ReportResult", &result).await?;
    let rectified = pb::ReportRectificationRequest { task_id: task, rectified: true, notes: "已整改".into() };
    t.call("SupervisionService", "ReportRectification", &rectified).await?;

    // What admins read.
    t.call("AdminService", "GetTimeline", &pb::GetTimelineRequest { case_id: h1() }).await?;
    t.call("AdminService", "QueryCases", &pb::QueryCasesRequest::default()).await?;
    let year = pb::GetStatisticsRequest { region_code: "320700".into(), with_ids: true, ..Default::default() };
    t.call("AdminService", "GetStatistics", &year).await?;
    t.call("AdminService", "GetEnterpriseProfile", &pb::GetEnterpriseProfileRequest { credit_code: code }).await?;
    t.call("AdminService", "GetWorkflow", &pb::GetWorkflowRequest { name: "approval_case".into(), version: 0 }).await?;
    t.call("AdminService", "CalendarStatus", &pb::CalendarStatusRequest {}).await?;
    let calendar = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/calendars/2026.toml"))?;
    let load = pb::LoadCalendarRequest { name: "2026.toml".into(), text: calendar, dry_run: true, wait: false };
    t.call("AdminService", "LoadCalendar", &load).await?;

    // Dead letters: the hook refused every supervision message.
    t.dead_letters(3).await?;
    let dead = t.call("AdminService", "ListDeadLetters", &pb::ListDeadLettersRequest::default()).await?;
    let keys: Vec<String> = dead["deadLetters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["message"]["key"].as_str())
        .map(str::to_owned)
        .collect();
    ensure!(keys.len() >= 3, "{dead}");
    t.call("AdminService", "RetryDeadLetter", &pb::RetryDeadLetterRequest { key: keys[0].clone() }).await?;
    let some = |k: &str| pb::DeadLetterSelection { keys: vec![k.to_owned()], ..Default::default() };
    t.call("AdminService", "RetryDeadLetters", &some(&keys[1])).await?;
    t.call("AdminService", "DiscardDeadLetters", &some(&keys[2])).await?;

    // A stream consumer: made by a Subscribe on each twin, then acknowledged, listed, dropped.
    let mut first_id = 0;
    for (server, token) in [(&t.json, &t.json_token), (&t.grpc, &t.grpc_token)] {
        let mut events = pb::events_service_client::EventsServiceClient::with_interceptor(
            server.channel.clone(),
            integration_tests::bearer(token),
        );
        let request = pb::SubscribeRequest { consumer: "happy".into(), max_in_flight: 10, ..Default::default() };
        let mut stream = events.subscribe(request).await?.into_inner();
        let event = stream.message().await?.context("an event")?;
        first_id = event.id;
    }
    t.call("EventsService", "Ack", &pb::AckRequest { consumer: "happy".into(), up_to: first_id }).await?;
    t.call("AdminService", "ListConsumers", &pb::ListConsumersRequest {}).await?;
    t.call("AdminService", "DropConsumer", &pb::DropConsumerRequest { name: "happy".into() }).await?;
    // The data lifecycle: nothing closed before today; a case still open is kept, said so.
    let export = pb::ExportArchiveRequest { before: "2026-09-28".into(), after: String::new(), limit: 10 };
    t.call("AdminService", "ExportArchive", &export).await?;
    let open = pb::RemovableCase {
        case_id: "320700/H-2".into(),
        instances: vec![pb::ArchivedInstance { id: "320700/H-2".into(), seq: 2 }],
    };
    let remove =
        pb::RemoveArchivedRequest { archive: "h.jsonl.gz".into(), before: "2026-09-28".into(), cases: vec![open] };
    let kept = t.call("AdminService", "RemoveArchived", &remove).await?;
    ensure!(kept["changed"][0] == "320700/H-2", "{kept}");

    // The generic engine.
    let start = pb::StartRequest {
        workflow: "bench_case".into(),
        instance_id: "H-E1".into(),
        vars_json: r#"{"reminder_at":"2026-10-01T09:00:00+08:00","deadline_at":"2026-10-02T09:00:00+08:00"}"#.into(),
        request_id: "happy-start".into(),
    };
    t.call("EngineService", "Start", &start).await?;
    let signal = pb::SignalRequest {
        instance_id: "H-E1".into(),
        event: "materials_submitted".into(),
        fields_json: String::new(),
        request_id: "happy-signal".into(),
    };
    t.call("EngineService", "Signal", &signal).await?;

    // Spot checks: a plan, its first draw (the runner draws on its own once the clock is
    // there), a result, the end.
    let plan = pb::CreateSpotCheckPlanRequest {
        code: "H-FOOD".into(),
        region_code: "320700".into(),
        name: "食品生产企业抽查".into(),
        office: "SJJ-FOOD".into(),
        supervision_item: "SJ-FOOD-PROD".into(),
        schedule: "0 9 * * MON".into(),
        working_days_only: false,
        ratios: "A=1".into(),
        inspectors_per_target: 1,
    };
    let plan = t.call("AdminService", "CreateSpotCheckPlan", &plan).await?;
    let plan_id = plan["planId"].as_str().context("plan id")?.to_owned();
    t.call("AdminService", "ListSpotCheckPlans", &pb::ListSpotCheckPlansRequest::default()).await?;
    let to = pb::AdvanceClockRequest { by_millis: 0, to: "2026-10-05T09:00:01+08:00".into() };
    t.call("AdminService", "AdvanceClock", &to).await?;
    let runs = pb::ListSpotCheckRunsRequest { plan_id: plan_id.clone(), include_records: false };
    for (server, token) in [(&t.json, &t.json_token), (&t.grpc, &t.grpc_token)] {
        let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
            server.channel.clone(),
            integration_tests::bearer(token),
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while admin.list_spot_check_runs(runs.clone()).await?.into_inner().runs.is_empty() {
            ensure!(tokio::time::Instant::now() < deadline, "no draw");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let drawn = t.call("AdminService", "ListSpotCheckRuns", &runs).await?;
    let target = drawn["runs"][0]["targets"][0]["taskId"].as_str().context("a target")?.to_owned();
    let report = pb::ReportSpotCheckResultRequest {
        task_id: target,
        outcome: "compliant".into(),
        findings: "未发现问题".into(),
    };
    let reported = t.call("SupervisionService", "ReportSpotCheckResult", &report).await?;
    ensure!(reported["result"] == "compliant" && reported["state"] == "closed", "{reported}");
    t.call("AdminService", "EndSpotCheckPlan", &pb::EndSpotCheckPlanRequest { plan_id, reason: "季度结束".into() })
        .await?;

    // Every unary method was called.
    let all: std::collections::BTreeSet<String> = json::pool()
        .services()
        .filter(|s| s.package_name() == "shenguan.v1")
        .flat_map(|s| {
            s.methods()
                .filter(|m| !m.is_server_streaming() && !m.is_client_streaming())
                .map(|m| format!("{}/{}", s.name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<&String> = all.difference(&t.called).collect();
    ensure!(missing.is_empty(), "no happy path over JSON for {missing:?}");
    t.json.stop().await?;
    t.grpc.stop().await
}

/// Each domain call's time is measured by method, over gRPC and over JSON alike; a path no
/// service has is counted under one `unknown` label, so a caller cannot add label values.
#[tokio::test]
async fn call_times_are_measured_by_method_and_unknown_paths_share_one_label() -> Result<()> {
    let server = TestServer::start(START).await?;
    server.intake().accept_case(accept("M-1", Route::Normal, Scenario::Unspecified)).await?;
    let (status, _, _) =
        post(&server, "IntakeService/AcceptCase", body(&accept("M-2", Route::Normal, Scenario::Unspecified)), None)
            .await?;
    ensure!(status == 200, "accepted over JSON: {status}");
    for hostile in ["IntakeService/NoSuchMethod-1", "NoSuchService-2/Call", "IntakeService/%E5%AE%A1-3"] {
        let (status, _, _) = post(&server, hostile, "{}", None).await?;
        ensure!(status == 404 || status == 501, "{hostile}: {status}");
    }
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static("/shenguan.v1.IntakeService/NoSuchMethod-4");
    let codec = tonic_prost::ProstCodec::<pb::AcceptCaseRequest, pb::CaseReply>::default();
    let answer =
        grpc.unary(tonic::Request::new(accept("M-3", Route::Normal, Scenario::Unspecified)), path, codec).await;
    ensure!(answer.as_ref().err().map(tonic::Status::code) == Some(tonic::Code::Unimplemented), "{answer:?}");

    let metrics = integration_tests::scrape(server.addr).await?;
    let count = |method: &str| {
        let prefix = format!("shenguan_call_seconds_count{{method=\"{method}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::to_owned)
    };
    ensure!(count("/shenguan.v1.IntakeService/AcceptCase").as_deref() == Some("1"), "{metrics}");
    ensure!(count("/v1/IntakeService/AcceptCase").as_deref() == Some("1"), "{metrics}");
    ensure!(count("unknown").as_deref() == Some("4"), "{metrics}");
    ensure!(!metrics.contains("NoSuch"), "no label from a caller's path: {metrics}");
    server.stop().await
}
