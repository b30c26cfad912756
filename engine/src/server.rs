//! The gRPC server: [`run`] starts the engine and serves it on a listener until `shutdown`
//! completes. `main` and the tests call the same function (tests bind port 0).
//!
//! It serves the domain services (`IntakeService`, `SupervisionService`, `AdminService`), the
//! outbox stream (`EventsService`), the generic `EngineService`, the
//! gRPC health service (`grpc.health.v1.Health`, SERVING once the engine has started) and
//! server reflection for every shenguan.v1 file.
//!
//! Every domain call passes, in order: the accept loop and connection limits ([`net`]), TLS
//! (rustls, optional client certificates), HTTP/2 limits (streams per connection, header
//! size), the body gate ([`body`]: the whole message within a time and memory budget), the
//! authenticator ([`crate::auth::layer`]) and the handler's authorisation. Health, reflection
//! and `GET /metrics` are not authenticated: probes and scrapers carry no tokens.
//!
//! The same port answers JSON over HTTP ([`json`]: `POST /v1/<Service>/<Method>`, transcoded to
//! the same gRPC routes, and `GET /openapi.json`) and serves the web console ([`console`],
//! `GET /console/`: embedded assets that call the JSON routes).
//!
//! # Layout
//! - this file: [`Options`], [`Security`], [`run`].
//! - [`net`]: the accept loop, connection limits, idle and handshake timeouts.
//! - [`body`]: the request-body gate.
//! - [`json`]: JSON over HTTP and the OpenAPI document.
//! - [`console`]: the web console's assets and its dev-mode sign-in.

pub mod body;
pub mod console;
pub mod json;
pub mod net;
pub mod pki;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;

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
    /// The TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A push destination cannot be set up.
    #[error(transparent)]
    Outbound(#[from] crate::outbound::send::SetupError),
    /// The outbound configuration does not fit the loaded workflows.
    #[error("outbound configuration: {0}")]
    Routes(String),
    /// The SQLite file cannot be locked for this server: another server holds it, or the
    /// file cannot be opened.
    #[error(transparent)]
    Lock(#[from] crate::store::backup::BackupError),
}

/// Everything the server needs.
pub struct Options {
    /// Engine settings.
    pub engine: engine::Config,
    /// Where messages are pushed (none by default: every message is stream only).
    pub outbound: crate::outbound::Config,
    /// Definitions, calendars, the clock (virtual in sandbox mode) and metrics.
    pub context: Context,
    /// In sandbox mode, the same clock as `clock`, which `AdvanceClock` moves.
    pub virtual_clock: Option<VirtualClock>,
    /// The credit grades, and which of them may not take the commitment route.
    pub credit: crate::domain::credit::CreditGrades,
    /// From this month and day, a missing notice for next year is warned about (log, metric,
    /// `calendar status`).
    pub calendar_warn_from: (u32, u32),
    /// Authentication, TLS and limits.
    pub security: Security,
}

/// TLS on the gRPC port.
#[derive(Clone)]
pub struct Tls {
    /// The server's certificate chain (PEM).
    pub cert: Vec<u8>,
    /// Its private key (PEM).
    pub key: Vec<u8>,
    /// With this CA (PEM), clients may present certificates (mTLS); a certificate is then
    /// verified against it and mapped to a service account ([`crate::auth::layer::Accounts`]).
    pub client_ca: Option<Vec<u8>>,
    /// Refuse clients without a certificate (otherwise a bearer token is enough).
    pub client_required: bool,
}

/// Who may call, over what, within which limits.
pub struct Security {
    /// How callers are proved.
    pub auth: crate::auth::layer::Mode,
    /// Service accounts proved by client certificates.
    pub accounts: crate::auth::layer::Accounts,
    /// TLS, or plain HTTP/2.
    pub tls: Option<Tls>,
    /// Calls per second per principal (bursts of twice that); 0: no limit.
    pub rate: u32,
    /// Failed authentications per second per IP address (bursts of twice that) before the
    /// address is refused without checking its tokens; 0: no limit.
    pub failed_auth_rate: u32,
    /// Connection limits.
    pub connections: net::Limits,
    /// Request-body limits.
    pub bodies: body::BodyLimits,
    /// Concurrent streams (calls) per HTTP/2 connection.
    pub streams_per_connection: u32,
    /// How often the key files are checked for changes.
    pub key_reload: std::time::Duration,
    /// Dev mode's engine-admin token, offered to a browser on this machine by the console
    /// (`None` with real token keys: the console then asks for a token).
    pub dev_token: Option<String>,
}

impl Security {
    /// No authentication, no TLS, default limits: every caller is an engine administrator.
    /// For benchmarks and tests that are not about identity; `shenguan serve` never uses it.
    pub fn open() -> Security {
        // One anonymous principal: a rate limit per principal would throttle everyone together.
        Security { rate: 0, ..Security::with(crate::auth::layer::Mode::Open) }
    }

    /// Callers proved by `auth`, default limits, no TLS.
    pub fn with(auth: crate::auth::layer::Mode) -> Security {
        Security {
            auth,
            accounts: Default::default(),
            tls: None,
            rate: 20_000,
            failed_auth_rate: 20,
            connections: net::Limits::default(),
            bodies: body::BodyLimits::default(),
            streams_per_connection: 256,
            key_reload: std::time::Duration::from_secs(2),
            dev_token: None,
        }
    }
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
            outbound: Default::default(),
            context: Context::new(registry, calendars, clock),
            virtual_clock,
            credit: Default::default(),
            calendar_warn_from: crate::calendar::WARN_FROM,
            security: Security::open(),
        }
    }
}

/// Largest request a client may send. Every field has its own, smaller, limit.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest catalog import (AdminService.ImportCatalogs): a city's catalogs as files are the one
/// request that is legitimately larger than [`MAX_MESSAGE`].
pub const MAX_IMPORT: usize = 32 * 1024 * 1024;
/// The one method allowed [`MAX_IMPORT`].
pub(crate) const IMPORT_PATH: &str = "/shenguan.v1.AdminService/ImportCatalogs";

/// Checks the key files for changes every `every`; a broken file leaves the old keys in use.
async fn reload_keys(verifier: Arc<crate::auth::verify::Verifier>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let v = verifier.clone();
        match tokio::task::spawn_blocking(move || v.reload_if_changed()).await {
            Ok(Ok(true)) => tracing::info!("token keys reloaded"),
            Ok(Ok(false)) | Err(_) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "token keys changed but cannot be loaded; the old keys stay in use")
            }
        }
    }
}

/// When the gauges that need the database were last read: `GET /metrics` is unauthenticated and
/// may be scraped by anyone as often as they like, so a scrape reads the database only when
/// something was committed since the last read and that read is a second old (or when it is
/// 15 s old: other nodes commit too), one scrape at a time; the others are served the gauges
/// as maintained.
#[derive(Default)]
pub(crate) struct GaugeRefresh {
    last: tokio::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

/// A refresh at most this often while commits go on.
const GAUGE_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// And at least this often (other nodes' commits are not seen here).
const GAUGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(15);

async fn metrics_text(shared: &Shared, refresh: &GaugeRefresh) -> String {
    let metrics = &shared.context().metrics;
    metrics.timers_in_memory.set(i64::try_from(shared.engine.timers_in_memory()).unwrap_or(i64::MAX));
    let commits = metrics.batch_size.get_sample_count();
    {
        // Held while reading: concurrent scrapes wait for one read instead of each making one.
        let mut last = refresh.last.lock().await;
        let stale = last.is_none_or(|(at, seen)| {
            let age = at.elapsed();
            age >= GAUGE_MAX_AGE || (seen != commits && age >= GAUGE_MIN_AGE)
        });
        if stale {
            refresh_gauges(shared).await;
            metrics.gauge_refreshes.inc();
            *last = Some((std::time::Instant::now(), commits));
        }
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

/// The gauges only the database knows: backlog per destination, timers pending and
/// provisional, re-plans running.
async fn refresh_gauges(shared: &Shared) {
    let metrics = &shared.context().metrics;
    if let Ok(backlog) = shared.reader.outbox_backlog().await {
        let total: u64 = backlog.iter().map(|(_, n)| n).sum();
        metrics.outbox_backlog.set(i64::try_from(total).unwrap_or(i64::MAX));
        metrics.outbound_backlog.reset();
        for (destination, n) in backlog {
            metrics
                .outbound_backlog
                .with_label_values(&[destination.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    if let (Ok(last), Ok(consumers)) = (shared.reader.outbox_last_id().await, shared.reader.consumers().await) {
        let now = shared.context().clock.now();
        metrics.consumer_lag.reset();
        metrics.consumer_idle_seconds.reset();
        for c in consumers {
            let lag = i64::try_from(last.saturating_sub(c.acked)).unwrap_or(i64::MAX);
            metrics.consumer_lag.with_label_values(&[c.name.as_str()]).set(lag);
            metrics
                .consumer_idle_seconds
                .with_label_values(&[c.name.as_str()])
                .set(now.saturating_sub(c.updated_at) / 1000);
        }
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
}

/// Logs every stream consumer that has not read for the configured days: retention keeps
/// everything it has not acknowledged, so a forgotten consumer makes the outbox grow.
async fn warn_idle_consumers(shared: &Shared) {
    let Ok(consumers) = shared.reader.consumers().await else { return };
    let now = shared.context().clock.now();
    let limit = i64::from(shared.consumer_idle_warn_days).saturating_mul(24 * 3600 * 1000);
    for c in consumers.iter().filter(|c| now.saturating_sub(c.updated_at) >= limit) {
        let days = now.saturating_sub(c.updated_at) / (24 * 3600 * 1000);
        tracing::warn!(
            consumer = %c.name,
            owner = %c.owner,
            acked = c.acked,
            days,
            "stream consumer has not read for {days} days: retention keeps what it has not acknowledged; \
             `shenguan consumer drop {}` if it is gone for good",
            c.name
        );
    }
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
        warn_idle_consumers(&shared).await;
    }
}

/// The server, running: a boxed future, so that what it runs is compiled in this crate.
pub type Serving = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Starts the engine and serves gRPC on `listener` until `shutdown` completes; then stops the
/// engine. Everything acknowledged before is durable.
///
/// Only the boxing of `shutdown` is generic. An `async fn`'s body is compiled in the crate that
/// awaits it, so a generic or `async` entry point here compiled the whole server (the engine,
/// both stores, the writer, every service) again in each binary that started it: the CLI, the
/// load generator and every test binary (BENCHMARKS.md, "Build and CI times").
pub fn run(options: Options, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Serving {
    serve(options, listener, Box::pin(shutdown))
}

/// [`run`]'s one instance: coercing [`serve_until`]'s future to `dyn Future` here compiles it here.
#[inline(never)]
fn serve(options: Options, listener: TcpListener, shutdown: Pin<Box<dyn Future<Output = ()> + Send>>) -> Serving {
    Box::pin(serve_until(options, listener, shutdown))
}

async fn serve_until(
    options: Options,
    listener: TcpListener,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Result<(), Error> {
    let database = options.engine.database.clone();
    // A destination's files are checked before the database is touched.
    for d in &options.outbound.destinations {
        crate::outbound::send::check(d)?;
    }
    let emitted: std::collections::BTreeSet<String> =
        options.context.registry.all().flat_map(|d| d.channels()).map(str::to_owned).collect();
    crate::outbound::config::check_channels(&options.outbound, &emitted).map_err(Error::Routes)?;
    // Held while the server runs: a second server on the file, or a restore under it, is refused.
    let _lock = match &database {
        crate::store::Database::Sqlite(path) => Some(crate::store::backup::ServerLock::take(path)?),
        crate::store::Database::Postgres(_) => None,
    };
    let mut engine_config = options.engine;
    engine_config.routes = options.outbound.routes();
    engine_config.texts = options.outbound.sms_templates.clone();
    engine_config.outbox_retention =
        i64::from(options.outbound.delivery.retention_days).saturating_mul(24 * 60 * 60 * 1000);
    let engine = Arc::new(Engine::start(engine_config, options.context).await?);
    let reader = database.reader(8).await?;
    let dispatchers = crate::outbound::start(
        &options.outbound,
        reader.clone(),
        engine.handle(),
        engine.context(),
        engine.ownership(),
    )?;
    match reader.consumers().await {
        Ok(consumers) => {
            // One line for them all: a bare server takes none, and eight lines said one thing.
            let untaken = crate::outbound::config::untaken(&options.outbound, &emitted, &consumers);
            if !untaken.is_empty() {
                tracing::warn!(
                    channels = %untaken.join(","),
                    "the loaded workflows emit on these channels, but no destination and no stream consumer takes \
                     them: their messages are kept for the retention period and then pruned unread (--outbound, or \
                     EventsService.Subscribe)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the stream consumers"),
    }
    if !engine.context().catalogs.current().in_force() {
        tracing::warn!(
            "no catalog imported: AcceptCase trusts each request's items and supervisors until `shenguan catalog import` (docs/catalogs.md)"
        );
    }
    let spotchecks = crate::timer::spotcheck::Runner {
        reader: reader.clone(),
        writer: engine.handle(),
        catalogs: engine.context().catalogs.clone(),
        lock: Arc::default(),
        metrics: engine.context().metrics.clone(),
    };
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        spotchecks: spotchecks.clone(),
        reader,
        dispatchers,
        stopping: tokio::sync::watch::Sender::new(false),
        virtual_clock: options.virtual_clock,
        credit: options.credit,
        calendar_warn_from: options.calendar_warn_from,
        consumer_idle_warn_days: options.outbound.delivery.consumer_idle_warn_days,
    });
    let warner = tokio::spawn(warn_daily(shared.clone()));
    let drawer = tokio::spawn(crate::timer::spotcheck::draw_due(spotchecks, engine.ownership()));
    let security = options.security;
    let reloader = match &security.auth {
        crate::auth::layer::Mode::Verify(v) => Some(tokio::spawn(reload_keys(v.clone(), security.key_reload))),
        crate::auth::layer::Mode::Open => None,
    };
    let metrics = shared.context().metrics.clone();
    let auth = crate::auth::layer::Authenticator::new(
        security.auth,
        security.accounts,
        security.rate,
        security.failed_auth_rate,
        metrics.clone(),
    );
    use crate::proto::admin_service_server::AdminServiceServer;
    use crate::proto::intake_service_server::IntakeServiceServer;
    use crate::proto::supervision_service_server::SupervisionServiceServer;
    use tonic::service::interceptor::InterceptedService;
    let intake = InterceptedService::new(
        IntakeServiceServer::new(api::intake::Intake::new(shared.clone())).max_decoding_message_size(MAX_MESSAGE),
        auth.clone(),
    );
    let supervision = InterceptedService::new(
        SupervisionServiceServer::new(api::supervision::Supervision::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE),
        auth.clone(),
    );
    let admin = InterceptedService::new(
        // The body gate holds every other method to MAX_MESSAGE.
        AdminServiceServer::new(api::admin::Admin::new(shared.clone())).max_decoding_message_size(MAX_IMPORT),
        auth.clone(),
    );
    let generic = InterceptedService::new(
        crate::proto::engine_service_server::EngineServiceServer::new(api::engine::Engine::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE),
        auth.clone(),
    );
    let events = InterceptedService::new(
        crate::proto::events_service_server::EventsServiceServer::new(api::events::Events::new(shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE),
        auth,
    );
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(tls = security.tls.is_some(), %addr, "serving gRPC");
    }
    let (held, call_seconds) = (metrics.request_bytes_held.clone(), metrics.call_seconds.clone());
    let conns = net::Conns::new(security.connections.clone(), metrics);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio::spawn(net::accept_loop(listener, conns.clone(), tx));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection)
        .add_service(intake)
        .add_service(supervision)
        .add_service(admin)
        .add_service(generic)
        .add_service(events);
    // Prometheus scrapes `GET /metrics` over HTTP/1.1 on the same port.
    let scrape = shared.clone();
    let refresh = Arc::new(GaugeRefresh::default());
    // JSON over HTTP calls the same gRPC routes, interceptor and handlers.
    let gateway = json::Gateway::new(routes.clone().into_axum_router());
    let console = console::Console::new(security.dev_token.clone());
    let router = routes.into_axum_router().merge(gateway.routes()).merge(console.routes()).route(
        "/metrics",
        axum::routing::get(move || {
            let (shared, refresh) = (scrape.clone(), refresh.clone());
            async move { metrics_text(&shared, &refresh).await }
        }),
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key))
            .timeout(security.connections.handshake);
        if let Some(ca) = &tls.client_ca {
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(!tls.client_required);
        }
        builder = builder.tls_config(config).map_err(|e| Error::Tls(e.to_string()))?;
    }
    let served = builder
        .accept_http1(true)
        .max_concurrent_streams(security.streams_per_connection)
        .http2_max_header_list_size(16 * 1024)
        .http2_max_pending_accept_reset_streams(Some(64))
        // Pings from the server would count as traffic and keep idle peers open; the idle
        // timeout (net) closes dead and idle connections instead.
        .http2_keepalive_interval(None)
        .layer(body::Gate::new(security.bodies.clone(), conns, held, call_seconds))
        // One span per call, so that a slow or failed call can be followed in the logs: the
        // handlers record the instance, the writer's batch and command events nest inside.
        .trace_fn(|request| {
            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::debug_span!(
                "grpc",
                method = request.uri().path(),
                request_id = header("x-request-id"),
                principal = tracing::field::Empty,
                instance = tracing::field::Empty,
            )
        })
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming, {
            let shared = shared.clone();
            async move {
                shutdown.await;
                shared.stopping.send_replace(true);
            }
        })
        .await;
    warner.abort();
    let _ = warner.await;
    drawer.abort();
    let _ = drawer.await;
    acceptor.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    drop(shared);
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    served.map_err(Error::from)
}
