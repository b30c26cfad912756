//! The engine assembled: store → writer → timer service, started and stopped as one.
//!
//! [`Engine::start`] opens the database, pages in the first horizon of timers (so overdue
//! timers fire at once, oldest first) and spawns the writer and the timer service. The gRPC
//! server, the crash-test child and the tests all start the engine through here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cluster::{Keeper, Ownership};
use crate::store::{Database, Store};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::clock::Millis;
use crate::machine::Command;
use crate::store::postgres::PgStore;
use crate::store::sqlite::{Options, SqliteStore};
use crate::timer::service::{Control, Service};
use crate::timer::{self, TimerIndex};
use crate::writer::{self, Applied, Handle, WriteError};

pub use crate::context::Context;

/// Engine settings; each is also a `shenguan serve` option (see `shenguan serve --help`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the state lives.
    pub database: Database,
    /// This node among several on one PostgreSQL (name, lease timings); `None` on PostgreSQL
    /// means defaults with a name made of the host name and process id. Unused on SQLite.
    pub cluster: Option<crate::cluster::Settings>,
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
    /// Configured texts by message name or type (the outbound configuration's
    /// `sms_templates`): a message they name is written with its text filled from them.
    pub texts: std::collections::BTreeMap<String, String>,
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
    /// Defaults for a SQLite database at `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        Self::with_database(Database::Sqlite(db.into()))
    }

    /// Defaults for `database`.
    pub fn with_database(database: Database) -> Self {
        Config {
            database,
            cluster: None,
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
            texts: std::collections::BTreeMap::new(),
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
    cluster: Option<Cluster>,
}

/// What a node among several runs besides the writer and the timer service.
struct Cluster {
    pool: sqlx::PgPool,
    ownership: Arc<Ownership>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A default node name: host name and process id, unique on one machine and across machines.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// An engine starting: see [`Engine::start`].
pub type Starting = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Engine, Error>> + Send>>;

impl Engine {
    /// Opens the database and starts the writer and the timer service (and, on PostgreSQL, the
    /// lease keeper and the notification listener: the node takes its share of the shards
    /// before it loads any timer).
    ///
    /// Boxed, as [`crate::server::run`] is and for the same reason: the engine is compiled here,
    /// not again in each test binary that starts one.
    #[inline(never)]
    pub fn start(config: Config, context: Context) -> Starting {
        Box::pin(Self::open(config, context))
    }

    async fn open(config: Config, context: Context) -> Result<Engine, Error> {
        // A new database starts with the calendars the engine was given; an existing one keeps
        // what it holds.
        let seed = context.calendars.current().files().to_vec();
        match config.database.clone() {
            Database::Sqlite(path) => {
                let options =
                    Options { max_pages: config.max_db_pages, calendar_seed: seed, seeded_at: context.clock.now() };
                let store = SqliteStore::open(&path, &options).await?;
                Self::launch(store, config, context, None).await
            }
            Database::Postgres(url) => {
                let options = crate::store::postgres::Options {
                    calendar_seed: seed,
                    seeded_at: context.clock.now(),
                    ..Default::default()
                };
                let store = PgStore::open(&url, &options).await?;
                crate::cluster::prepare(store.pool(), config.shards).await?;
                let settings =
                    config.cluster.clone().unwrap_or_else(|| crate::cluster::Settings::new(default_node_name()));
                let ownership = Ownership::new(settings.node.clone(), config.shards);
                let pool = store.pool().clone();
                let mut engine = Self::launch(store, config, context, Some(ownership.clone())).await?;
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let keeper = Keeper::new(
                    pool.clone(),
                    ownership.clone(),
                    engine.handle(),
                    settings.clone(),
                    engine.context.metrics.clone(),
                );
                // The first round before serving: a node that can see the database starts with
                // its share (a failure is retried by the keeper's loop).
                if let Err(e) = keeper.tick().await {
                    tracing::warn!(error = %e, "cannot take shard leases yet; will try again");
                }
                let listener = tokio::spawn(crate::cluster::listen(
                    pool.clone(),
                    ownership.clone(),
                    engine.handle(),
                    engine.context.published.clone(),
                    engine.context.rescans.clone(),
                    engine.context.streams.clone(),
                    stopped.clone(),
                ));
                let keeper = tokio::spawn(keeper.run(stopped));
                tracing::info!(node = %settings.node, shards = ?ownership.held(), "node joined");
                engine.cluster = Some(Cluster { pool, ownership, stop, tasks: vec![keeper, listener] });
                Ok(engine)
            }
        }
    }

    async fn launch<S: Store>(
        store: S,
        config: Config,
        context: Context,
        ownership: Option<Arc<Ownership>>,
    ) -> Result<Engine, Error> {
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
                // Other nodes write too: a cached instance may be stale, and a stale one costs a
                // whole batch's conflict. Every batch reads its instances.
                cache: if ownership.is_some() { 0 } else { config.cache_instances },
                idempotency_retention: config.idempotency_retention,
                replan_page: config.replan_page,
                routes: Arc::new(config.routes.clone()),
                texts: Arc::new(config.texts.clone()),
                outbox_retention: config.outbox_retention,
                ownership: ownership.clone(),
                horizon: config.horizon,
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
            context.metrics.clone(),
            timer::service::Settings { horizon: config.horizon, retry: config.retry },
        );
        let service_task = tokio::spawn(service.run());
        tracing::info!(db = %config.database.describe(), "engine started");
        Ok(Engine { writer: handle, control, context, timers, tasks: vec![writer_task, service_task], cluster: None })
    }

    /// The shards this node holds, when it is one of several on PostgreSQL.
    pub fn ownership(&self) -> Option<Arc<Ownership>> {
        self.cluster.as_ref().map(|c| c.ownership.clone())
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
        let Engine { writer, control, tasks, mut cluster, .. } = self;
        // The keeper and the listener first: they talk to the writer.
        if let Some(c) = cluster.as_mut() {
            let _ = c.stop.send(true);
            for task in c.tasks.drain(..) {
                let _ = task.await;
            }
        }
        drop(writer);
        drop(control);
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // Only now that nothing fires: the leases go back, and the other nodes take the shards
        // at their next tick instead of after the leases expire.
        if let Some(cluster) = cluster {
            match crate::cluster::release(&cluster.pool, cluster.ownership.node()).await {
                Ok(n) => tracing::info!(node = %cluster.ownership.node(), shards = n, "handed shard leases back"),
                Err(e) => tracing::warn!(error = %e, "cannot hand shard leases back; they expire by themselves"),
            }
        }
    }
}
