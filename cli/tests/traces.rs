//! `serve --otlp-endpoint` against a real OTLP/gRPC collector on loopback (a tonic server of
//! OpenTelemetry's own trace service): a call's span arrives with its method, request id,
//! principal and case; a collector that is down costs the server nothing.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::fixtures;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::{Route, Scenario};

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().expect("received").push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

struct Server {
    process: integration_tests::ServeProcess,
    token: String,
}

impl Server {
    fn start(db: &Path, endpoint: &str) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shenguan"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--virtual-clock", "2026-09-28T10:00:00+08:00"])
            .args(["--node", "节点-a", "--otlp-endpoint", endpoint, "--db"])
            .arg(db)
            .env("RUST_LOG", "info");
        let process = integration_tests::ServeProcess::spawn(command);
        Server { process, token: integration_tests::ServeProcess::dev_token(db) }
    }

    async fn accept(&self, case_no: &str, request_id: &str) -> String {
        let channel = tonic::transport::Channel::from_shared(self.process.url.clone()).expect("url").connect_lazy();
        let mut intake = IntakeServiceClient::with_interceptor(channel, integration_tests::bearer(&self.token));
        let mut request = tonic::Request::new(fixtures::accept(case_no, Route::Normal, Scenario::Unspecified));
        request.metadata_mut().insert("x-request-id", request_id.parse().expect("ascii"));
        intake.accept_case(request).await.expect("accepted").into_inner().case.expect("case").case_id
    }

    /// SIGINT, as a terminal or systemd stops it; answers how long it took to exit.
    fn interrupt(&mut self) -> Duration {
        let started = std::time::Instant::now();
        let status = Command::new("kill").arg("-INT").arg(self.process.child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let exit = self.process.child.wait().expect("wait");
        assert!(exit.success(), "{exit}");
        started.elapsed()
    }
}

fn text(kv: &[KeyValue], key: &str) -> Option<String> {
    kv.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_span_reaches_the_collector_with_its_method_request_principal_and_case() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("traced.db"), &format!("http://{addr}"));
    let case_id = server.accept("OT-1", "req-otlp-1").await;
    // Stopping flushes what is buffered: no waiting on the exporter's schedule.
    server.interrupt();

    let received = collector.received.lock().expect("received").clone();
    let resource = received
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|r| r.resource.as_ref())
        .next()
        .expect("spans arrived");
    assert_eq!(text(&resource.attributes, "service.name").as_deref(), Some("shenguan"));
    assert_eq!(text(&resource.attributes, "service.instance.id").as_deref(), Some("节点-a"));
    let spans: Vec<_> =
        received.iter().flat_map(|r| &r.resource_spans).flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
    let call = spans
        .iter()
        .find(|s| s.name == "grpc" && text(&s.attributes, "request_id").as_deref() == Some("req-otlp-1"))
        .unwrap_or_else(|| panic!("no span of the call among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()));
    assert_eq!(text(&call.attributes, "method").as_deref(), Some("/shenguan.v1.IntakeService/AcceptCase"));
    assert_eq!(text(&call.attributes, "instance").as_deref(), Some(case_id.as_str()));
    let principal = text(&call.attributes, "principal").unwrap_or_default();
    assert!(!principal.is_empty(), "the principal is named: {:?}", call.attributes);
    assert!(call.end_time_unix_nano >= call.start_time_unix_nano && call.start_time_unix_nano > 0);
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_server_nothing() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("untraced.db"), &format!("http://127.0.0.1:{port}"));
    for i in 0..20 {
        server.accept(&format!("OT-DOWN-{i}"), &format!("req-down-{i}")).await;
    }
    let took = server.interrupt();
    assert!(took < Duration::from_secs(20), "stopping waited {took:?} on a collector that is down");
}

#[test]
fn an_endpoint_that_is_not_a_url_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(env!("CARGO_BIN_EXE_shenguan"))
        .args(["serve", "--listen", "127.0.0.1:0", "--otlp-endpoint", "collector:4317", "--db"])
        .arg(dir.path().join("x.db"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an http:// or https:// URL"), "{o:?}");
    assert!(!dir.path().join("x.db").exists());
}
