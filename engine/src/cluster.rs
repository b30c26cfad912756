//! Several nodes on one PostgreSQL: who holds which shard.
//!
//! Instances are spread over a fixed number of shards ([`crate::store::shard_of`]); each shard
//! has a lease row (owner, epoch, expiry on the database's clock). A node loads and fires only
//! the timers of the shards it holds ([`Ownership`]), and every transaction that fires a timer
//! checks its shard's epoch (see [`crate::store::postgres`]: fencing), so a node that lost a
//! lease — frozen, partitioned, slow — writes nothing with it.
//!
//! The [`Keeper`] runs on every node, once per tick:
//! 1. heartbeat: its row in `nodes`; the live nodes are those with a heartbeat within the lease
//!    time, and a node's fair share is the shard count divided by them, rounded up;
//! 2. renew: every lease it holds, at the epoch it holds it (a lease taken over meanwhile is
//!    not renewed, and is dropped here);
//! 3. hand back what is above its share (a node joined): the wheel drops those timers first,
//!    then the lease is freed;
//! 4. take free or expired leases up to its share (`FOR UPDATE SKIP LOCKED`, so two nodes
//!    taking at once do not wait on each other), bumping each epoch; the writer then loads the
//!    new shards' timers.
//!
//! A node that stops renewing loses its shards when their leases expire; another node takes
//! them at its next tick, and their overdue timers fire at once. On graceful shutdown a node
//! frees its leases at once (after its writer and timer service have stopped).
//!
//! Calls are not routed: any node accepts any call and writes through optimistic concurrency on
//! the instance's history (see `docs/ARCHITECTURE.md`, "Several nodes").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::store::Error;
use crate::writer::Handle;

pub mod ownership;
pub use ownership::Ownership;

/// Lease timings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name: unique among the nodes on the database.
    pub node: String,
    /// How long a lease lasts without renewal: a dead node's shards move after at most this
    /// (plus a tick). Shorter moves faster; too short and a long pause (a stalled disk, a
    /// stop-the-world) costs the node its shards, which fencing makes safe but not free.
    pub lease: Duration,
    /// How often the keeper renews, rebalances and looks for expired leases.
    pub tick: Duration,
}

/// Default lease time: a killed node's deadlines are fired by another within about this.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default tick: a tenth of the lease, so a renewal survives several lost round trips.
pub const DEFAULT_TICK: Duration = Duration::from_millis(500);

impl Settings {
    /// Defaults for a node named `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Settings { node: node.into(), lease: DEFAULT_LEASE, tick: DEFAULT_TICK }
    }
}

/// Makes sure the database has its cluster rows: the shard count (fixed by the first node) and
/// a lease row per shard. Refuses a node configured with another shard count.
pub async fn prepare(pool: &PgPool, shards: u32) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO cluster (id, shards) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
        .bind(i64::from(shards))
        .execute(&mut *tx)
        .await?;
    let stored: i64 = sqlx::query_scalar("SELECT shards FROM cluster WHERE id = 1").fetch_one(&mut *tx).await?;
    if stored != i64::from(shards) {
        return Err(Error::Open {
            path: "cluster".into(),
            message: format!(
                "this database was set up with {stored} shards and this node with {shards}: every node must use \
                 the same count (start it with --shards {stored})"
            ),
        });
    }
    sqlx::query("INSERT INTO shard_leases (shard) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING")
        .bind(i64::from(shards))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The lease keeper of one node.
pub struct Keeper {
    pool: PgPool,
    ownership: Arc<Ownership>,
    writer: Handle,
    settings: Settings,
    metrics: Arc<crate::telemetry::Metrics>,
    /// Held shards whose timers could not be loaded yet.
    unloaded: Mutex<Vec<u32>>,
}

/// The database's clock, in ms: leases are judged by one clock, whatever the nodes' say.
const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Keeper {
    /// A keeper for `ownership`, telling `writer` what it gains and loses.
    pub fn new(
        pool: PgPool,
        ownership: Arc<Ownership>,
        writer: Handle,
        settings: Settings,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Self {
        Keeper { pool, ownership, writer, settings, metrics, unloaded: Mutex::new(Vec::new()) }
    }

    /// Ticks until `stop` turns true; a failed tick is logged and the next one tries again (the
    /// leases held stay held until they expire; fencing covers the rest).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(self.settings.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(node = %self.settings.node, error = %e, "cannot renew shard leases; will try again");
            }
        }
    }

    /// One round: heartbeat, renew, hand back, take. Public so that a starting node takes its
    /// share before it loads timers.
    pub async fn tick(&self) -> Result<(), Error> {
        let node = &self.settings.node;
        let lease = ms(self.settings.lease);
        // Before the first statement: the renewal below happens later on the database's clock.
        let started = std::time::Instant::now();
        let now: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO nodes (name, heartbeat_at, started_at) VALUES ($1, {DB_NOW}, {DB_NOW}) \
             ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at RETURNING heartbeat_at"
        ))
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        // Nodes silent for a day are forgotten (a node named by host and pid is a new row at
        // every start).
        sqlx::query("DELETE FROM nodes WHERE heartbeat_at < $1").bind(now - 86_400_000).execute(&self.pool).await?;
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes WHERE heartbeat_at > $1")
            .bind(now - lease)
            .fetch_one(&self.pool)
            .await?;
        let shards = i64::from(self.ownership.shards());
        let share = usize::try_from((shards + live.max(1) - 1) / live.max(1)).unwrap_or(usize::MAX);

        // Renew at the epochs held: a lease someone else took (after ours expired) stays theirs.
        let held: Vec<(u32, u64)> = self.ownership.held_epochs();
        let (shard_list, epochs): (Vec<i64>, Vec<i64>) =
            held.iter().map(|(s, e)| (i64::from(*s), i64::try_from(*e).unwrap_or(i64::MAX))).unzip();
        let renewed: Vec<i64> = if held.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(&format!(
                "UPDATE shard_leases l SET expires_at = {DB_NOW} + $2 \
                 FROM UNNEST($3::bigint[], $4::bigint[]) AS h(shard, epoch) \
                 WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1 RETURNING l.shard"
            ))
            .bind(node)
            .bind(lease)
            .bind(&shard_list)
            .bind(&epochs)
            .fetch_all(&self.pool)
            .await?
        };
        self.ownership.renewed(started + self.settings.lease);
        let lost: Vec<u32> = held.iter().map(|(s, _)| *s).filter(|s| !renewed.contains(&i64::from(*s))).collect();
        if !lost.is_empty() {
            tracing::warn!(%node, shards = ?lost, "shard leases were taken over (this node missed its renewals)");
            self.ownership.taken(&lost);
        }
        self.tell_new_holders().await;
        self.retry_loads().await;

        let mut kept: Vec<u32> = held.iter().map(|(s, _)| *s).filter(|s| !lost.contains(s)).collect();
        if kept.len() > share {
            // Hand back the highest shards: the wheel lets go first, then the lease is freed
            // (its epoch stays: the next owner bumps it).
            let extra: Vec<u32> = kept.split_off(share);
            self.drop_shards(&extra).await;
            let list: Vec<i64> = extra.iter().map(|s| i64::from(*s)).collect();
            sqlx::query(
                "UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE owner = $1 AND shard = ANY($2::bigint[])",
            )
            .bind(node)
            .bind(&list)
            .execute(&self.pool)
            .await?;
            tracing::info!(%node, shards = ?extra, share, live, "handed shards back for a fair share");
        } else if kept.len() < share {
            let want = i64::try_from(share - kept.len()).unwrap_or(0);
            let taken: Vec<(i64, i64)> = sqlx::query_as(&format!(
                "UPDATE shard_leases l SET owner = $1, epoch = l.epoch + 1, expires_at = {DB_NOW} + $2 \
                 WHERE l.shard IN (SELECT shard FROM shard_leases \
                     WHERE (owner IS NULL OR expires_at < {DB_NOW} OR (owner = $1 AND NOT shard = ANY($4::bigint[]))) \
                     ORDER BY shard LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING l.shard, l.epoch"
            ))
            .bind(node)
            .bind(lease)
            .bind(want)
            .bind(kept.iter().map(|s| i64::from(*s)).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
            if !taken.is_empty() {
                let taken: Vec<(u32, u64)> = taken
                    .into_iter()
                    .map(|(s, e)| (u32::try_from(s).unwrap_or(0), u64::try_from(e).unwrap_or(0)))
                    .collect();
                self.ownership.gain(&taken);
                let shards: Vec<u32> = taken.iter().map(|(s, _)| *s).collect();
                tracing::info!(%node, shards = ?shards, share, live, "took shard leases");
                self.load(shards).await;
            }
        }
        self.metrics.shards_held.set(self.ownership.held().len() as i64);
        Ok(())
    }

    /// Loads `shards`' timers into the wheel; what fails is tried again at every tick until it
    /// loads (or the shard is no longer held): a held shard whose timers are not in the wheel
    /// would fire nothing.
    async fn load(&self, shards: Vec<u32>) {
        if let Err(e) = self.writer.shards(shards.clone(), Vec::new()).await {
            tracing::warn!(node = %self.settings.node, error = %e, shards = ?shards, "cannot load the timers of held shards yet; will try again");
            self.unloaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(shards);
        }
    }

    async fn retry_loads(&self) {
        let waiting = std::mem::take(&mut *self.unloaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let held: Vec<u32> = waiting.into_iter().filter(|s| self.ownership.holds(*s)).collect();
        if !held.is_empty() {
            self.load(held).await;
        }
    }

    /// Tells the holders of shards taken from this node to load their timers again: a call on
    /// this node may have armed one there while it still thought it held the shard, and put it
    /// only in its own wheel. The writer is asked first, so that every batch decided before the
    /// loss has committed when the holders read.
    async fn tell_new_holders(&self) {
        let taken = self.ownership.take_taken();
        if taken.is_empty() {
            return;
        }
        if let Err(e) = self.writer.shards(Vec::new(), taken.clone()).await {
            tracing::warn!(error = %e, "cannot drop the timers of lost shards from the wheel");
        }
        let notice = crate::store::postgres::Notice::Timers(taken.clone());
        if let Err(e) = crate::store::postgres::notify_now(&self.pool, &notice).await {
            // Told at the next tick instead; the rest of this tick (renewing, taking) goes on.
            tracing::warn!(error = %e, shards = ?taken, "cannot tell the new holders of taken shards yet");
            self.ownership.still_to_tell(taken);
        }
    }

    /// Stops firing `shards`' timers: out of the ownership first (the service checks it before
    /// each fire), then out of the wheel.
    async fn drop_shards(&self, shards: &[u32]) {
        self.ownership.lose(shards);
        if let Err(e) = self.writer.shards(Vec::new(), shards.to_vec()).await {
            tracing::warn!(error = %e, "cannot drop the timers of lost shards from the wheel");
        }
    }
}

/// Frees every lease `node` holds and forgets its heartbeat: the other nodes take its shards at
/// their next tick instead of waiting for the leases to expire. Called once the node has
/// stopped firing.
pub async fn release(pool: &PgPool, node: &str) -> Result<u64, Error> {
    let freed = sqlx::query("UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE owner = $1")
        .bind(node)
        .execute(pool)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM nodes WHERE name = $1").bind(node).execute(pool).await?;
    Ok(freed)
}

/// Listens for other nodes' notifications and passes them on: new messages wake dispatchers and
/// subscribers, timers armed in a shard this node holds are loaded, a new calendar is put in
/// force, a stream consumer's acknowledgement, take-over or drop reaches its stream here. A
/// lost connection may have lost notifications: after reconnecting, the first three are done
/// as if notified, and the streams served here end (their consumers subscribe again and
/// resume from their durable cursors; an acknowledgement or a take-over missed meanwhile
/// cannot be told apart from none).
pub async fn listen(
    pool: PgPool,
    ownership: Arc<Ownership>,
    writer: Handle,
    published: Arc<watch::Sender<u64>>,
    rescans: Arc<watch::Sender<u64>>,
    streams: Arc<crate::outbound::live::Live>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::outbound::live::Ended;
    use crate::store::postgres::{Notice, CHANNEL};
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    // Whether notifications may have been missed (not listening while serving).
    let mut missed = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let l = match listener.as_mut() {
            Some(l) => l,
            None => match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => {
                        // Whatever was said while nobody listened.
                        if std::mem::take(&mut missed) {
                            streams.end_all(Ended::LostContact);
                        }
                        catch_up(&ownership, &writer, &published).await;
                        rescans.send_modify(|n| *n = n.wrapping_add(1));
                        listener.insert(l)
                    }
                    Err(e) => {
                        missed = true;
                        tracing::warn!(error = %e, "cannot listen for other nodes' notifications; will try again");
                        pause(&mut stop).await;
                        continue;
                    }
                },
                Err(e) => {
                    missed = true;
                    tracing::warn!(error = %e, "cannot connect to listen for other nodes' notifications; will try again");
                    pause(&mut stop).await;
                    continue;
                }
            },
        };
        let received = tokio::select! {
            r = l.try_recv() => r,
            _ = stop.changed() => return,
        };
        match received {
            Ok(Some(n)) => match Notice::parse(n.payload()) {
                Some(Notice::Outbox) => published.send_modify(|n| *n = n.wrapping_add(1)),
                // Dead letters retried or discarded on another node: the dispatchers of shard
                // 0's holder (this one, perhaps) read them and the cases they held again.
                Some(Notice::Rescan) => rescans.send_modify(|n| *n = n.wrapping_add(1)),
                Some(Notice::Timers(shards)) => {
                    let mine: Vec<u32> = shards.into_iter().filter(|s| ownership.holds(*s)).collect();
                    if !mine.is_empty() {
                        if let Err(e) = writer.shards(mine, Vec::new()).await {
                            tracing::warn!(error = %e, "cannot load timers another node armed");
                        }
                    }
                }
                Some(Notice::Calendar) => {
                    if let Err(e) = writer.reload_calendars().await {
                        tracing::warn!(error = %e, "cannot put another node's calendar in force");
                    }
                }
                Some(Notice::Catalogs) => {
                    if let Err(e) = writer.reload_catalogs().await {
                        tracing::warn!(error = %e, "cannot put another node's catalogs in force");
                    }
                }
                Some(Notice::Acked { consumer, acked }) => streams.acked(&consumer, acked),
                Some(Notice::Subscribed { consumer, stream }) => streams.subscribed(&consumer, &stream),
                Some(Notice::Dropped(consumer)) => streams.end(&consumer, Ended::Dropped),
                None => tracing::debug!(payload = n.payload(), "unknown notification"),
            },
            Ok(None) => {
                tracing::warn!("lost the notification connection; reconnecting and catching up");
                missed = true;
                listener = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "notification connection failed; reconnecting");
                missed = true;
                listener = None;
                pause(&mut stop).await;
            }
        }
    }
}

async fn catch_up(ownership: &Ownership, writer: &Handle, published: &watch::Sender<u64>) {
    published.send_modify(|n| *n = n.wrapping_add(1));
    let held = ownership.held();
    if !held.is_empty() {
        if let Err(e) = writer.shards(held, Vec::new()).await {
            tracing::warn!(error = %e, "cannot reload held shards' timers");
        }
    }
    if let Err(e) = writer.reload_calendars().await {
        tracing::warn!(error = %e, "cannot reload calendars");
    }
    if let Err(e) = writer.reload_catalogs().await {
        tracing::warn!(error = %e, "cannot reload catalogs");
    }
}

async fn pause(stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_surely_held_only_until_the_last_renewal_plus_the_lease_time() {
        let o = Ownership::new("n1", 4);
        o.gain(&[(0, 1)]);
        assert!(o.holds(0));
        assert!(!o.surely_holds(0), "never renewed: not sure");
        o.renewed(std::time::Instant::now() + Duration::from_secs(60));
        assert!(o.surely_holds(0) && !o.surely_holds(1));
        // A node frozen past its lease: the renewal's time is over, whatever it still holds.
        o.renewed(std::time::Instant::now().checked_sub(Duration::from_millis(1)).expect("an instant"));
        assert!(o.holds(0) && !o.surely_holds(0));
    }
}
