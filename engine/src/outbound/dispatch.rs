//! The dispatchers: one task per push destination, delivering its pending messages at least
//! once, in order per instance, with retries, backoff and dead letters.
//!
//! A task keeps a bounded *window* of its destination's pending messages in memory (at most
//! `queue`, read only while fewer than twice `concurrency` lanes are ready to send), walked
//! from the database in id order with a cursor; the rest wait in the database, so a dead
//! destination costs little memory and no reads, and holds no other destination. In
//! the window, each case has a lane (a case and its supervision tasks share one,
//! [`crate::domain::case_of`]): only its oldest message is in flight or waiting to be retried,
//! so one case's messages arrive in the order they were written. Up to `concurrency` lanes
//! deliver at once.
//!
//! A dead letter *holds* its case at a destination whose `on_dead_letter` is `hold` (the
//! default): the case's later messages there are not sent until an administrator retries or
//! discards it, so a receiver never gets a case's revocation before its approval record. The
//! held cases are read from the dead letters in the database at start and after every retry
//! or discard (a rescan), so a restart holds them too.
//!
//! Every outcome (delivered, retry at, dead) goes to the writer ([`Outbound::Marks`]) and is
//! durable shortly after; a message stays in the window until its outcome is, so a walk from
//! the start (after an administrator's retry) never sends it again. A crash between a delivery
//! and its mark sends it again after restart, with the same key: that is the at-least-once the
//! receivers deduplicate on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::config::{Config, Policy};
use super::send::{Delivered, Failed, Sender, SetupError};
use crate::clock::{Clock, Millis};
use crate::store::{DeliveryState, OutboxMark, ReadStore, StoredMessage};
use crate::telemetry::Metrics;
use crate::writer::{Handle, Outbound, WriteError};

/// Most messages one walk of the database reads.
const PAGE: u32 = 1_000;
/// With nothing to wake it, a dispatcher looks at the database this often anyway.
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// After a failed read or write of the database, wait this long.
const STORE_RETRY: Duration = Duration::from_millis(500);
/// Outcomes are written together: after this long, or once there are [`FLUSH_MARKS`] of them,
/// with one write in flight at a time. Each write rides in a writer batch beside callers'
/// commands; written one by one they made extra commits (and fsyncs) that callers queued
/// behind. Nothing waits on them: a delivery is done when the receiver answers, and a crash
/// before its mark is durable only sends it again, with the same key.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// See [`FLUSH_AFTER`].
const FLUSH_MARKS: usize = 1_024;

/// The running dispatchers.
#[derive(Debug)]
pub struct Dispatchers {
    tasks: Vec<JoinHandle<()>>,
    /// The engine's [`crate::context::Context::rescans`]: what other nodes' retries bump too.
    rescans: Arc<watch::Sender<u64>>,
}

impl Dispatchers {
    /// Tells every dispatcher to walk its messages from the start and re-read its holds (dead
    /// letters were made pending again, behind their cursors, or discarded).
    pub fn rescan(&self) {
        self.rescans.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for Dispatchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one dispatcher per destination of `config`.
///
/// With several nodes on one database (`ownership` given), only the node holding shard 0
/// delivers: one dispatcher per destination in the whole city, so per-instance order holds and
/// no message is sent twice in the normal course. The lease of shard 0 moves like any other;
/// the node that takes it walks the pending messages from the start.
pub fn start(
    config: &Config,
    reader: Arc<dyn ReadStore>,
    writer: Handle,
    context: &crate::context::Context,
    ownership: Option<Arc<crate::cluster::ownership::Ownership>>,
) -> Result<Dispatchers, SetupError> {
    let mut out = Dispatchers { tasks: Vec::new(), rescans: context.rescans.clone() };
    for d in &config.destinations {
        let sender = Arc::new(Sender::new(d, reader.clone())?);
        let worker = Worker {
            name: d.name.clone(),
            sender,
            reader: reader.clone(),
            writer: writer.clone(),
            policy: config.delivery.clone(),
            concurrency: d.concurrency,
            queue: d.queue,
            published: context.published.subscribe(),
            rescans: context.rescans.subscribe(),
            metrics: context.metrics.clone(),
            clock: context.clock.clone(),
            window: Window::default(),
            leadership: ownership.as_ref().map(|o| o.subscribe()),
            ownership: ownership.clone(),
            hold: d.on_dead_letter == super::config::OnDeadLetter::Hold,
            held_cases: HashSet::new(),
            dying: HashMap::new(),
        };
        tracing::info!(destination = %d.name, kind = ?d.kind, url = %d.url, channels = ?d.channels, "delivering");
        out.tasks.push(tokio::spawn(worker.run()));
    }
    Ok(out)
}

/// Wall-clock milliseconds: retries and delivery times belong to the real world, whatever the
/// engine's clock says.
fn wall_ms() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// The delay before attempt `attempts + 1`: doubling from the initial delay up to the maximum,
/// then a random half of it taken off ("equal jitter"), so that receivers coming back are not
/// hit by every sender at once.
pub fn backoff(policy: &Policy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = policy.backoff_initial_ms.saturating_mul(1u64 << exp).min(policy.backoff_max_ms);
    let half = full / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=half.max(1)).min(full - half))
}

/// The lane a message goes in: its case's.
fn lane_of(m: &StoredMessage) -> String {
    crate::domain::case_of(&m.instance).to_owned()
}

/// The messages in memory.
#[derive(Default)]
struct Window {
    /// Per case, its messages in id order; the front one is the one being delivered.
    lanes: HashMap<String, VecDeque<StoredMessage>>,
    /// Every message id in the window or whose outcome is not yet durable.
    held: HashSet<u64>,
    /// Lanes whose front message may be sent now.
    ready: VecDeque<String>,
    /// Lanes whose front message waits for its retry time (wall ms).
    sleeping: BinaryHeap<Reverse<(Millis, String)>>,
    /// Lanes with a delivery in flight.
    busy: HashSet<String>,
}

impl Window {
    /// Drops a lane whose case is held behind a dead letter: its other messages leave the
    /// window (they are read again once the hold ends). `keep` — the dead letter itself —
    /// stays held until its mark is durable.
    fn drop_lane(&mut self, lane: &str, keep: u64) {
        if let Some(messages) = self.lanes.remove(lane) {
            for m in messages {
                if m.id != keep {
                    self.held.remove(&m.id);
                }
            }
        }
    }

    /// Queues the front of `instance`'s lane, now or at its retry time.
    fn schedule(&mut self, instance: &str, now: Millis) {
        let Some(front) = self.lanes.get(instance).and_then(VecDeque::front) else {
            self.lanes.remove(instance);
            return;
        };
        if front.next_attempt_at <= now {
            self.ready.push_back(instance.to_owned());
        } else {
            self.sleeping.push(Reverse((front.next_attempt_at, instance.to_owned())));
        }
    }

    fn add(&mut self, m: StoredMessage, now: Millis) {
        if !self.held.insert(m.id) {
            return;
        }
        let instance = lane_of(&m);
        let lane = self.lanes.entry(instance.clone()).or_default();
        lane.push_back(m);
        if lane.len() == 1 && !self.busy.contains(&instance) {
            self.schedule(&instance, now);
        }
    }

    /// Moves the sleepers whose time has come to the ready queue; answers the next wake-up.
    fn wake(&mut self, now: Millis) -> Option<Millis> {
        while let Some(Reverse((at, _))) = self.sleeping.peek() {
            if *at > now {
                return Some(*at);
            }
            if let Some(Reverse((_, instance))) = self.sleeping.pop() {
                self.ready.push_back(instance);
            }
        }
        None
    }
}

struct Worker {
    name: String,
    sender: Arc<Sender>,
    reader: Arc<dyn ReadStore>,
    writer: Handle,
    policy: Policy,
    concurrency: usize,
    queue: usize,
    published: watch::Receiver<u64>,
    /// Bumped when dead letters were retried or discarded, here or on another node.
    rescans: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    window: Window,
    /// Several nodes: deliver only while holding shard 0.
    ownership: Option<Arc<crate::cluster::ownership::Ownership>>,
    /// Changes when the shards held do.
    leadership: Option<watch::Receiver<u64>>,
    /// Whether a dead letter holds its case's later messages (`on_dead_letter = "hold"`).
    hold: bool,
    /// Cases held behind a dead letter.
    held_cases: HashSet<String>,
    /// Dead letters whose mark is not yet durable, and their lanes: a reload of the held cases
    /// from the database keeps them.
    dying: HashMap<u64, String>,
}

type Attempt = (StoredMessage, Result<Delivered, Failed>);

impl Worker {
    /// Reads which cases are held behind a dead letter (at start and after a rescan).
    async fn load_holds(&mut self) -> Result<(), crate::store::Error> {
        if !self.hold {
            return Ok(());
        }
        let dead = self.reader.dead_instances(&self.name).await?;
        self.held_cases = dead.iter().map(|i| crate::domain::case_of(i).to_owned()).collect();
        self.held_cases.extend(self.dying.values().cloned());
        Ok(())
    }

    async fn run(mut self) {
        let mut cursor = 0u64;
        let mut look = true;
        let mut reload_holds = true;
        let mut in_flight: JoinSet<Attempt> = JoinSet::new();
        // Which instance each delivery task is for: a task that panics answers only its id.
        let mut tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut marks: Vec<OutboxMark> = Vec::new();
        let mut flushing: JoinSet<(Vec<OutboxMark>, Result<(), WriteError>)> = JoinSet::new();
        let mut store_pause: Option<tokio::time::Instant> = None;
        // When the oldest unwritten outcome was settled.
        let mut marks_since: Option<tokio::time::Instant> = None;
        // One timer, moved each turn (a new one per turn was a timer-wheel insert per message).
        let sleep = tokio::time::sleep(IDLE_LOOK);
        let mut next_look = tokio::time::Instant::now() + IDLE_LOOK;
        tokio::pin!(sleep);
        loop {
            let now = wall_ms();
            if store_pause.is_some_and(|until| until <= tokio::time::Instant::now()) {
                store_pause = None;
            }
            // Fill the window from the database — only while fewer lanes are ready than twice
            // what may be in flight: a destination that does not answer then stops reading
            // (its messages wait in the database), instead of paying to hold every new one.
            let wanted = self.window.ready.len() < 2 * self.concurrency;
            // Asked each turn: a node frozen past its lease, or cut off from the database, stops
            // sending at once, before its keeper learns that shard 0 moved.
            let leads = self.ownership.as_ref().is_none_or(|o| o.surely_holds(0));
            if reload_holds && leads && store_pause.is_none() {
                match self.load_holds().await {
                    Ok(()) => reload_holds = false,
                    Err(e) => {
                        tracing::warn!(destination = %self.name, error = %e, "cannot read the dead letters; will try again");
                        store_pause = Some(tokio::time::Instant::now() + STORE_RETRY);
                    }
                }
            }
            if look && wanted && leads && !reload_holds && store_pause.is_none() && self.window.held.len() < self.queue
            {
                next_look = tokio::time::Instant::now() + IDLE_LOOK;
                let room = u32::try_from(self.queue - self.window.held.len()).unwrap_or(PAGE).min(PAGE);
                match self.reader.outbox_pending(&self.name, cursor, room).await {
                    Ok(rows) => {
                        look = rows.len() == room as usize;
                        for m in rows {
                            cursor = cursor.max(m.id);
                            if self.held_cases.contains(crate::domain::case_of(&m.instance)) {
                                continue;
                            }
                            self.window.add(m, now);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %self.name, error = %e, "cannot read pending messages; will try again");
                        store_pause = Some(tokio::time::Instant::now() + STORE_RETRY);
                    }
                }
            }
            let next_wake = self.window.wake(now);
            // Only shard 0's holder sends: a node that lost it leaves the rest to the new one.
            while leads && in_flight.len() < self.concurrency {
                let Some(instance) = self.window.ready.pop_front() else { break };
                let Some(m) = self.window.lanes.get(&instance).and_then(VecDeque::front).cloned() else { continue };
                self.window.busy.insert(instance.clone());
                let sender = self.sender.clone();
                let task = in_flight.spawn(async move {
                    let result = sender.send(&m, m.attempts + 1).await;
                    (m, result)
                });
                tasks.insert(task.id(), instance);
            }
            if marks.is_empty() {
                marks_since = None;
            } else {
                marks_since.get_or_insert_with(tokio::time::Instant::now);
            }
            let flush_due = marks_since.map(|since| since + FLUSH_AFTER);
            let flush_now =
                flush_due.is_some_and(|due| due <= tokio::time::Instant::now()) || marks.len() >= FLUSH_MARKS;
            if flush_now && flushing.is_empty() && store_pause.is_none() {
                marks_since = None;
                let batch = std::mem::take(&mut marks);
                let writer = self.writer.clone();
                flushing.spawn(async move {
                    let result = writer.outbound(Outbound::Marks(batch.clone())).await;
                    (batch, result)
                });
            }
            self.metrics.outbound_window.with_label_values(&[self.name.as_str()]).set(self.window.held.len() as i64);

            let sleep_until = next_wake
                .map(|at| tokio::time::Instant::now() + Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
                .into_iter()
                .chain(store_pause)
                .chain(flush_due.filter(|_| flushing.is_empty()))
                .chain(std::iter::once(next_look))
                .min()
                .unwrap_or_else(tokio::time::Instant::now);
            // Waking a little early is harmless (the loop looks again); late is not.
            let current = sleep.deadline();
            if sleep_until < current || sleep_until.duration_since(current) > Duration::from_millis(1) {
                sleep.as_mut().reset(sleep_until);
            }
            tokio::select! {
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    // Take every other finished one too, so their marks share a write.
                    let mut next = Some(done);
                    while let Some(done) = next {
                        let mark = match done {
                            Ok((id, attempt)) => {
                                tasks.remove(&id);
                                Some(self.settle(attempt))
                            }
                            Err(e) => tasks.remove(&e.id()).and_then(|instance| self.settle_lost(&instance, &e)),
                        };
                        marks.extend(mark);
                        next = in_flight.try_join_next_with_id();
                    }
                }
                Some(flushed) = flushing.join_next(), if !flushing.is_empty() => {
                    if let Ok((batch, result)) = flushed {
                        match result {
                            Ok(()) => {
                                for m in &batch {
                                    if m.status != DeliveryState::Pending {
                                        self.window.held.remove(&m.id);
                                        self.dying.remove(&m.id);
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(destination = %self.name, error = %e, marks = batch.len(), "cannot record delivery outcomes; will try again");
                                marks.extend(batch);
                                store_pause = Some(tokio::time::Instant::now() + STORE_RETRY);
                            }
                        }
                    }
                }
                changed = self.published.changed() => {
                    if changed.is_err() {
                        // The engine is gone.
                        return;
                    }
                    look = true;
                }
                Ok(()) = self.rescans.changed() => {
                    cursor = 0;
                    look = true;
                    reload_holds = true;
                }
                Ok(()) = async {
                    match self.leadership.as_mut() {
                        Some(rx) => rx.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Shard 0 may have come here: what is pending is read from the start. Or
                    // it went elsewhere: what the window holds is its new holder's to send
                    // now, so nothing more goes out from here (what is in flight is stopped;
                    // outcomes already known are still written).
                    if self.ownership.as_ref().is_some_and(|o| !o.holds(0)) {
                        in_flight.abort_all();
                        tasks.clear();
                        self.window = Window::default();
                        self.dying.clear();
                        self.held_cases.clear();
                    }
                    cursor = 0;
                    look = true;
                    reload_holds = true;
                }
                () = &mut sleep => {
                    look = true;
                }
            }
        }
    }

    /// Records an attempt's outcome in the window and answers the mark to write.
    fn settle(&mut self, (m, result): Attempt) -> OutboxMark {
        let now = wall_ms();
        let lane = lane_of(&m);
        self.window.busy.remove(&lane);
        let attempts = m.attempts + 1;
        let dest = self.name.as_str();
        // (state, retry at, last error, receipt)
        let (status, next_attempt_at, last_error, receipt) = match result {
            Ok(delivered) => {
                self.metrics.outbound_attempts.with_label_values(&[dest, "delivered"]).inc();
                // Commit-to-receipt is real time; with a virtual engine clock it means nothing.
                if (self.clock.now() - now).abs() < 5_000 {
                    self.metrics.outbound_latency_seconds.observe((now - m.created_at).max(0) as f64 / 1000.0);
                }
                self.pop(&m, now);
                (DeliveryState::Delivered, 0, m.last_error.clone(), delivered.receipt)
            }
            Err(failed) => {
                let since = m.first_failed_at.unwrap_or(now);
                let age = now.saturating_sub(since);
                let too_old = age > i64::try_from(self.policy.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                let dead = failed.permanent || attempts >= self.policy.max_attempts || too_old;
                let error = if failed.permanent || !dead {
                    failed.error
                } else if too_old {
                    format!("{} (gave up: older than {} s)", failed.error, self.policy.max_age_secs)
                } else {
                    format!("{} (gave up after {attempts} attempts)", failed.error)
                };
                if dead {
                    self.metrics.outbound_attempts.with_label_values(&[dest, "dead"]).inc();
                    if self.hold {
                        tracing::warn!(destination = dest, key = %m.key, attempts, error = %error, case = %lane, "message is a dead letter; its case's later messages wait until it is retried or discarded");
                        self.window.drop_lane(&lane, m.id);
                        self.held_cases.insert(lane.clone());
                        self.dying.insert(m.id, lane);
                    } else {
                        tracing::warn!(destination = dest, key = %m.key, attempts, error = %error, "message is a dead letter");
                        self.pop(&m, now);
                    }
                    (DeliveryState::Dead, 0, Some(error), None)
                } else {
                    self.metrics.outbound_attempts.with_label_values(&[dest, "retry"]).inc();
                    let at = now
                        .saturating_add(i64::try_from(backoff(&self.policy, attempts).as_millis()).unwrap_or(i64::MAX));
                    tracing::debug!(destination = dest, key = %m.key, attempts, error = %error, retry_in_ms = at - now, "delivery failed; will retry");
                    if let Some(front) = self.window.lanes.get_mut(&lane).and_then(VecDeque::front_mut) {
                        front.attempts = attempts;
                        front.next_attempt_at = at;
                        front.last_error = Some(error.clone());
                        front.first_failed_at = Some(since);
                    }
                    self.window.schedule(&lane, now);
                    (DeliveryState::Pending, at, Some(error), None)
                }
            }
        };
        OutboxMark { id: m.id, status, attempts, next_attempt_at, last_error, receipt, at: now }
    }

    /// A delivery task that ended without an answer (it panicked): the attempt failed, and its
    /// message — still the front of its lane — is retried like any other failure, so the lane
    /// does not stall with the instance marked busy forever.
    fn settle_lost(&mut self, instance: &str, error: &tokio::task::JoinError) -> Option<OutboxMark> {
        tracing::error!(destination = %self.name, %instance, %error, "a delivery task failed");
        let m = self.window.lanes.get(instance).and_then(VecDeque::front).cloned()?;
        let failed = Failed { error: format!("the delivery task failed: {error}"), permanent: false };
        Some(self.settle((m, Err(failed))))
    }

    /// Takes a settled message off the front of its lane and schedules the next.
    fn pop(&mut self, m: &StoredMessage, now: Millis) {
        let key = lane_of(m);
        if let Some(lane) = self.window.lanes.get_mut(&key) {
            if lane.front().is_some_and(|f| f.id == m.id) {
                lane.pop_front();
            }
        }
        self.window.schedule(&key, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let p = Policy { backoff_initial_ms: 100, backoff_max_ms: 1_000, ..Policy::default() };
        for _ in 0..200 {
            let first = backoff(&p, 1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(&p, 3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let late = backoff(&p, 40).as_millis();
            assert!((500..=1_000).contains(&late), "{late}");
        }
    }

    fn message(id: u64, instance: &str, next: Millis) -> StoredMessage {
        StoredMessage {
            id,
            key: format!("{instance}:{id}:0"),
            instance: instance.into(),
            seq: id,
            message: crate::machine::Message::text("c", None, ""),
            created_at: 0,
            destination: Some("d".into()),
            status: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: next,
            last_error: None,
            receipt: None,
            delivered_at: None,
            first_failed_at: None,
        }
    }

    #[test]
    fn a_lane_sends_one_message_of_an_instance_at_a_time_and_skips_what_it_holds() {
        let mut w = Window::default();
        w.add(message(1, "a", 0), 10);
        w.add(message(2, "a", 0), 10);
        w.add(message(3, "b", 50), 10);
        w.add(message(1, "a", 0), 10);
        assert_eq!(w.ready, VecDeque::from(vec!["a".to_owned()]), "a once; b waits for its retry time");
        assert_eq!(w.held.len(), 3);
        assert_eq!(w.wake(20), Some(50));
        assert_eq!(w.wake(50), None);
        assert_eq!(w.ready.back().map(String::as_str), Some("b"));
    }
}
