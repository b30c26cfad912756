//! The handles every part of a running engine shares ([`Context`]): definitions, calendars,
//! catalogs, the clock, metrics and the watch channels that wake delivery and the stream.
//!
//! A leaf: it names only the modules whose values it holds, so the writer, the timer service,
//! delivery and the gRPC services can all take it without depending on one another.

use std::sync::Arc;

use crate::calendar::{Calendars, Live};
use crate::clock::Clock;
use crate::definition::Registry;

/// The handles every part of a running engine shares — the writer, the timer service, the
/// gRPC services: one struct, cloned cheaply (every field is an `Arc`).
#[derive(Clone)]
pub struct Context {
    /// The loaded definitions.
    pub registry: Arc<Registry>,
    /// The working-day calendars.
    pub calendars: Arc<Live>,
    /// The organisation and the catalogs in force.
    pub catalogs: Arc<crate::catalog::Live>,
    /// The engine's clock (virtual in sandbox mode and in tests).
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Bumped by the writer after each commit that wrote outbox messages (or revived a dead
    /// letter): what dispatchers and stream subscribers wait on.
    pub published: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped when dead letters were retried or discarded, here or (notified) on another node:
    /// every dispatcher then walks its messages again from the start and re-reads its holds.
    pub rescans: Arc<tokio::sync::watch::Sender<u64>>,
    /// The stream consumers served on this node, told of acknowledgements and take-overs
    /// from every node.
    pub streams: Arc<crate::outbound::live::Live>,
}

impl Context {
    /// The handles, with fresh metrics.
    pub fn new(registry: Arc<Registry>, calendars: Calendars, clock: Arc<dyn Clock>) -> Self {
        let calendars = Arc::new(Live::new(calendars));
        Context {
            registry,
            calendars,
            catalogs: Arc::new(crate::catalog::Live::default()),
            clock,
            metrics: Arc::new(crate::telemetry::Metrics::new()),
            published: Arc::new(tokio::sync::watch::Sender::new(0)),
            rescans: Arc::new(tokio::sync::watch::Sender::new(0)),
            streams: Arc::new(crate::outbound::live::Live::default()),
        }
    }
}
