//! The engine assembled: store → writer → timer service, started and stopped as one.
//!
//! [`Engine::start`] opens the database, pages in the first horizon of timers (so overdue
//! timers fire at once, oldest first) and spawns the writer and the timer service. The gRPC
//! server, the crash-test child and the tests all start the engine through here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::calendar::{Calendars, Live};
use crate::clock::{Clock, Millis};
use crate::definition::Registry;
use crate::machine::Command;
use crate::store::sqlite::{Options, SqliteStore};
use crate::timer::service::{Control, Service};
use crate::timer::{self, TimerIndex};
use crate::writer::{self, Applied, Handle, WriteError};

/// The handles every part of a running engine shares — the writer, the timer service, the
/// gRPC services: one struct, cloned cheaply (every field is an `Arc`).
#[derive(Clone)]
pub struct Context {
    /// The loaded definitions.
    pub registry: Arc<Registry>,
    /// The working-day calendars.
    pub calendars: Arc<Live>,
    /// The engine's clock (virtual in sandbox mode and in tests).
    pub clock: Arc<dyn Clock>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Bumped by the writer after each commit that wrote outbox messages (or revived a dead
    /// letter): what dispatchers and stream subscribers wait on.
    pub published: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Context {
    /// The handles, with fresh metrics.
    pub fn new(registry: Arc<Registry>, calendars: Calendars, clock: Arc<dyn Clock>) -> Self {
        let calendars = Arc::new(Live::new(calendars));
        Context {
            registry,
            calendars,
            clock,
            metrics: Arc::new(crate::telemetry::Metrics::new()),
            published: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// Engine settings; each is also a `shenguan serve` option (see `shenguan serve --help`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite database file.
    pub db: PathBuf,
    /// Most commands committed in one transaction.
    pub max_batch: usize,
    /// Number of shards.
    pub shards: u32,
    /// How far ahead timers are held in memory (ms).
    pub horizon: Millis,
    /// Most timers read per page.
    pub page: u32,
    /// Delay before retrying a timer whose commit failed (ms).
    pub retry: Millis,
    /// Optional cap on the database size in pages.
    pub max_db_pages: Option<u32>,
    /// Most committed instances the writer keeps in memory to skip re-reading them.
    pub cache_instances: usize,
    /// How long a request id is remembered, so that a retry gets the first answer (ms).
    pub idempotency_retention: Millis,
    /// Deadlines in a year with no notice loaded: computed provisionally (default) or refused.
    pub calendar_policy: crate::calendar::Policy,
    /// Most working-day timers re-planned per batch after a calendar load.
    pub replan_page: u32,
    /// Channel → push destination (from the outbound configuration); other channels are
    /// served by the stream only.
    pub routes: std::collections::HashMap<String, String>,
    /// How long delivered and stream-only outbox messages are kept (ms).
    pub outbox_retention: Millis,
}

/// Request ids are remembered for a week by default: longer than any client's retry loop,
/// short enough that the table stays small.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Millis = 7 * 24 * 60 * 60 * 1000;

/// Delivered and stream-only messages are kept for 30 days by default: timelines show them,
/// and a stream consumer that was away for weeks can still catch up.
pub const DEFAULT_OUTBOX_RETENTION: Millis = 30 * 24 * 60 * 60 * 1000;

impl Config {
    /// Defaults for a database at `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Config {
            db: db.into(),
            max_batch: 4096,
            shards: 64,
            horizon: 5 * 60 * 1000,
            page: 10_000,
            retry: 1_000,
            max_db_pages: None,
            cache_instances: 50_000,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            calendar_policy: crate::calendar::Policy::Provisional,
            replan_page: 1_000,
            routes: std::collections::HashMap::new(),
            outbox_retention: DEFAULT_OUTBOX_RETENTION,
        }
    }
}

/// Errors starting the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The first page of timers could not be loaded.
    #[error("cannot load timers: {0}")]
    Timers(WriteError),
}

/// A running engine.
pub struct Engine {
    writer: Handle,
    control: mpsc::Sender<Control>,
    context: Context,
    timers: Arc<Mutex<TimerIndex>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Opens the database and starts the writer and the timer service.
    pub async fn start(config: Config, context: Context) -> Result<Engine, Error> {
        // A new database starts with the calendars the engine was given; an existing one keeps
        // what it holds.
        let options = Options {
            max_pages: config.max_db_pages,
            calendar_seed: context.calendars.current().files().to_vec(),
            seeded_at: context.clock.now(),
        };
        let store = SqliteStore::open(&config.db, &options).await?;
        let clock = context.clock.clone();
        let timers = Arc::new(Mutex::new(TimerIndex::new(clock.now())));
        let wake = Arc::new(Notify::new());
        context.calendars.set_policy(config.calendar_policy);
        let (mut writer, handle) = writer::channel(
            store,
            &context,
            timers.clone(),
            wake.clone(),
            writer::Settings {
                max_batch: config.max_batch,
                shards: config.shards,
                page: config.page,
                cache: config.cache_instances,
                idempotency_retention: config.idempotency_retention,
                replan_page: config.replan_page,
                routes: Arc::new(config.routes.clone()),
                outbox_retention: config.outbox_retention,
            },
        );
        writer.prepare().await?;
        let writer_task = tokio::spawn(writer.run());
        handle.extend(clock.now().saturating_add(config.horizon)).await.map_err(Error::Timers)?;
        let (service, control) = Service::new(
            clock.clone(),
            timers.clone(),
            handle.clone(),
            wake,
            timer::service::Settings { horizon: config.horizon, retry: config.retry },
        );
        let service_task = tokio::spawn(service.run());
        tracing::info!(db = %config.db.display(), "engine started");
        Ok(Engine { writer: handle, control, context, timers, tasks: vec![writer_task, service_task] })
    }

    /// Applies a command; answers once it is durable.
    pub async fn submit(&self, command: Command) -> Result<Applied, WriteError> {
        self.writer.submit(command).await
    }

    /// A handle for submitting commands from other tasks.
    pub fn handle(&self) -> Handle {
        self.writer.clone()
    }

    /// Waits until no timer is due at the clock's current time and every fire has committed.
    /// With a virtual clock: advance, then settle, then look.
    pub async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Settle(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The shared handles: definitions, calendars, clock, metrics.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Timers currently held in memory.
    pub fn timers_in_memory(&self) -> usize {
        self.timers.lock().map_or(0, |t| t.wheel.len())
    }

    /// Stops the tasks. Commands already answered are durable; queued ones are dropped
    /// unanswered (their callers see `ShuttingDown`).
    pub async fn shutdown(self) {
        let Engine { writer, control, tasks, .. } = self;
        drop(writer);
        drop(control);
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
