//! The gRPC server: [`run`] starts the engine and serves it on a listener until `shutdown`
//! completes. `main` and the tests call the same function (tests bind port 0).
//!
//! It serves the domain services (`IntakeService`, `SupervisionService`, `AdminService`), the
//! generic `EngineService`, the
//! gRPC health service (`grpc.health.v1.Health`, SERVING once the engine has started) and
//! server reflection for every shenguan.v1 file.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{self, Shared};
use crate::calendar::Calendars;
use crate::clock::{Clock, VirtualClock};
use crate::definition::Registry;
use crate::engine::{self, Context, Engine};

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine did not start.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// The reflection service could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The read side could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Everything the server needs.
pub struct Options {
    /// Engine settings.
    pub engine: engine::Config,
    /// Definitions, calendars, the clock (virtual in sandbox mode) and metrics.
    pub context: Context,
    /// In sandbox mode, the same clock as `clock`, which `AdvanceClock` moves.
    pub virtual_clock: Option<VirtualClock>,
    /// The credit grades, and which of them may not take the commitment route.
    pub credit: crate::domain::credit::CreditGrades,
    /// From this month and day, a missing notice for next year is warned about (log, metric,
    /// `calendar status`).
    pub calendar_warn_from: (u32, u32),
}

impl Options {
    /// Options with the defaults: the system clock, or a virtual clock when `virtual_clock` is
    /// given; the default credit grades (A, B, C, D, dishonest; D and dishonest barred from the
    /// commitment route).
    pub fn new(
        engine: engine::Config,
        registry: Arc<Registry>,
        calendars: Calendars,
        virtual_clock: Option<VirtualClock>,
    ) -> Self {
        let clock: Arc<dyn Clock> = match &virtual_clock {
            Some(v) => Arc::new(v.clone()),
            None => Arc::new(crate::clock::SystemClock),
        };
        Options {
            engine,
            context: Context::new(registry, calendars, clock),
            virtual_clock,
            credit: Default::default(),
            calendar_warn_from: crate::calendar::WARN_FROM,
        }
    }
}

/// Largest request a client may send. Every field has its own, smaller, limit.
const MAX_MESSAGE: usize = 1024 * 1024;

async fn metrics_text(shared: &Shared) -> String {
    let metrics = &shared.context().metrics;
    metrics.timers_in_memory.set(i64::try_from(shared.engine.timers_in_memory()).unwrap_or(i64::MAX));
    if let Ok(backlog) = shared.reader.outbox_backlog().await {
        metrics.outbox_backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }
    if let Ok(pending) = shared.reader.timers_pending().await {
        metrics.timers_pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    if let Ok(provisional) = shared.reader.provisional_timers().await {
        metrics.timers_provisional.set(i64::try_from(provisional).unwrap_or(i64::MAX));
    }
    if let Ok(replans) = shared.reader.replans().await {
        metrics.replans_running.set(replans.iter().filter(|j| !j.done).count() as i64);
    }
    let calendars = shared.calendars();
    let today = shared.today(calendars.national());
    let mut codes = vec![""];
    codes.extend(calendars.region_codes());
    for code in codes {
        let label = if code.is_empty() { "national" } else { code };
        let left = crate::calendar::official_days_left(calendars.region(code), today);
        metrics.official_calendar_days_left.with_label_values(&[label]).set(left);
    }
    metrics.render()
}

/// Logs what the calendars need from an operator at start and then once a day (real time).
async fn warn_daily(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    loop {
        every.tick().await;
        let calendars = shared.calendars();
        let today = shared.today(calendars.national());
        for warning in crate::calendar::warnings(&calendars, today, shared.calendar_warn_from) {
            tracing::warn!(%warning, "working-day calendar");
        }
    }
}

/// Starts the engine and serves gRPC on `listener` until `shutdown` completes; then stops the
/// engine. Everything acknowledged before is durable.
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let db = options.engine.db.clone();
    let engine = Arc::new(Engine::start(options.engine, options.context).await?);
    let reader = crate::store::read::Reader::open(&db, 4).await?;
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        reader: Arc::new(reader),
        virtual_clock: options.virtual_clock,
        credit: options.credit,
        calendar_warn_from: options.calendar_warn_from,
    });
    let warner = tokio::spawn(warn_daily(shared.clone()));
    use crate::proto::admin_service_server::AdminServiceServer;
    use crate::proto::intake_service_server::IntakeServiceServer;
    use crate::proto::supervision_service_server::SupervisionServiceServer;
    let intake =
        IntakeServiceServer::new(api::intake::Intake::new(shared.clone())).max_decoding_message_size(MAX_MESSAGE);
    let supervision = SupervisionServiceServer::new(api::supervision::Supervision::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE);
    let admin = AdminServiceServer::new(api::admin::Admin::new(shared.clone())).max_decoding_message_size(MAX_MESSAGE);
    let generic =
        crate::proto::engine_service_server::EngineServiceServer::new(api::engine::Engine::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving gRPC");
    }
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to every small
    // request/response pair on loopback.
    let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(intake)
        .add_service(supervision)
        .add_service(admin)
        .add_service(generic);
    // Prometheus scrapes `GET /metrics` over HTTP/1.1 on the same port.
    let scrape = shared.clone();
    let router = routes.into_axum_router().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = scrape.clone();
            async move { metrics_text(&shared).await }
        }),
    );
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        // One span per call, so that a slow or failed call can be followed in the logs: the
        // handlers record the instance, the writer's batch and command events nest inside.
        .trace_fn(|request| {
            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::debug_span!(
                "grpc",
                method = request.uri().path(),
                request_id = header("x-request-id"),
                actor = header("x-shenguan-actor"),
                instance = tracing::field::Empty,
            )
        })
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    warner.abort();
    let _ = warner.await;
    drop(shared);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    served.map_err(Error::from)
}
