//! Logs and traces: the tracing subscriber every command installs — human-readable or JSON
//! lines on stderr, filtered by `RUST_LOG` (default `info`) — and, for `serve --otlp-endpoint`,
//! the engine's spans exported over OTLP/gRPC to a collector (Jaeger, Tempo, an OpenTelemetry
//! Collector).
//!
//! The export has its own filter: the engine's spans at debug level (a span per gRPC call with
//! its method, request id, principal and case; the writer's batches), whatever `RUST_LOG` says
//! of the logs. Spans go out in batches from a task on the server's own runtime: the
//! OpenTelemetry SDK's default batch processor exports from a thread of its own, where tonic's
//! client finds no runtime to run on.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// Where spans go: an OTLP/gRPC endpoint, and the name this process gives itself there.
#[derive(Debug, Clone)]
pub(crate) struct Otlp {
    /// `http://collector:4317`.
    pub(crate) endpoint: String,
    /// `service.instance.id` (the node's name).
    pub(crate) instance: String,
}

/// What must be flushed before the process ends.
#[derive(Default)]
pub(crate) struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Exports the spans still buffered, then stops the exporter. A collector that does not
    /// answer costs at most the exporter's timeout.
    pub(crate) async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK waits for its export task: from a thread of its own, not a runtime worker.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                eprintln!("traces: the last spans were not all exported: {e}");
            }
        }
    }
}

/// Installs the subscriber: logs always, and spans to `otlp` if given.
pub(crate) fn init(json: bool, otlp: Option<&Otlp>) -> Result<Traces, opentelemetry_otlp::ExporterBuildError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A span's close is logged with its busy and idle time: at debug level, one line per gRPC
    // call and per writer batch says how long it took.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let logs = if json { logs.json().boxed() } else { logs.boxed() };
    let Some(otlp) = otlp else {
        let _ = tracing_subscriber::registry().with(logs.with_filter(filter)).try_init();
        return Ok(Traces::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let batches = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("shenguan")
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", otlp.instance.clone()))
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder().with_span_processor(batches).with_resource(resource).build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shenguan"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("shenguan", tracing::Level::DEBUG));
    let _ = tracing_subscriber::registry().with(logs.with_filter(filter)).with(spans).try_init();
    Ok(Traces { provider: Some(provider) })
}
