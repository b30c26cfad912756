//! The gRPC server: [`run`] starts the engine and serves it on a listener until `shutdown`
//! completes. `main` and the tests call the same function (tests bind port 0).
//!
//! Until the domain API lands this serves the gRPC health service (`grpc.health.v1.Health`,
//! SERVING once the engine has started) and server reflection for every shenguan.v1 file.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::calendar::Calendars;
use crate::clock::Clock;
use crate::definition::Registry;
use crate::engine::{self, Engine};

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine did not start.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// The reflection service could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Everything the server needs.
pub struct Options {
    /// Engine settings.
    pub engine: engine::Config,
    /// Definitions.
    pub registry: Arc<Registry>,
    /// Calendars.
    pub calendars: Arc<Calendars>,
    /// The clock (virtual in sandbox mode).
    pub clock: Arc<dyn Clock>,
}

/// Starts the engine and serves gRPC on `listener` until `shutdown` completes; then stops the
/// engine. Everything acknowledged before is durable.
pub async fn run(
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let engine = Engine::start(options.engine, options.registry, options.calendars, options.clock).await?;
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
    let served = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    engine.shutdown().await;
    served.map_err(Error::from)
}
