//! The timer service: sleeps until the wheel's next due time (or until woken by a commit that
//! armed something sooner), fires what is due as commands to the writer, and keeps the
//! horizon paged in ahead of the clock.
//!
//! # Important
//! - Firing is "send a `Timer` command and wait for its commit". A fire whose commit fails is
//!   put back in the wheel to be retried after `retry`; its row is still in the database, so a
//!   crash instead of a retry fires it after restart.
//! - Everything due is fired in `(due, key)` order, page by page, so after a long outage the
//!   overdue timers fire at once, oldest first.
//! - One instance's fires are in the order they were due: a round sends at most one fire per
//!   instance (its earliest), and a fire that must be decided again or retried keeps the
//!   instance's later ones behind it. Sent together, a reminder decided again after a lease
//!   moved could commit after its deadline, which then cancelled it unsent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::{Clock, Millis};
use crate::machine::{Command, CommandKind, Rejection};
use crate::timer::{lock, TimerIndex, TimerKey};
use crate::writer::{Handle, WriteError};

/// Settings of the timer service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How far ahead of the clock timers are kept in memory.
    pub horizon: Millis,
    /// Delay before a fire whose commit failed is tried again.
    pub retry: Millis,
}

/// A request to the service from outside its loop.
#[derive(Debug)]
pub enum Control {
    /// Answer once nothing is due at the current clock time and every fire has committed.
    Settle(oneshot::Sender<()>),
}

/// The timer service task.
pub struct Service {
    clock: Arc<dyn Clock>,
    timers: Arc<Mutex<TimerIndex>>,
    writer: Handle,
    wake: Arc<Notify>,
    metrics: Arc<crate::telemetry::Metrics>,
    control: mpsc::Receiver<Control>,
    settings: Settings,
    /// Per instance, the fire waiting to be retried and when: its later fires wait behind it.
    retrying: HashMap<String, (TimerKey, Millis)>,
}

impl Service {
    /// A service and the sender to control it.
    pub fn new(
        clock: Arc<dyn Clock>,
        timers: Arc<Mutex<TimerIndex>>,
        writer: Handle,
        wake: Arc<Notify>,
        metrics: Arc<crate::telemetry::Metrics>,
        settings: Settings,
    ) -> (Self, mpsc::Sender<Control>) {
        let (tx, control) = mpsc::channel(64);
        (Service { clock, timers, writer, wake, metrics, control, settings, retrying: HashMap::new() }, tx)
    }

    /// Runs until the writer goes away or the control channel closes.
    pub async fn run(mut self) {
        let mut settle_waiters: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let mut extend_failed = false;
            let now = self.clock.now();
            // Fire what the wheel holds first: everything in it is inside the horizon, so it
            // precedes (in due order) anything a next page could bring.
            match self.fire_due(now).await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(()) => return,
            }
            // Then keep the horizon ahead of the clock, a page at a time.
            let horizon_due = lock(&self.timers).horizon.due;
            if horizon_due <= now.saturating_add(self.settings.horizon / 2) {
                match self.writer.extend(now.saturating_add(self.settings.horizon)).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(WriteError::ShuttingDown) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot page timers in; will retry");
                        extend_failed = true;
                    }
                }
            }
            for waiter in settle_waiters.drain(..) {
                let _ = waiter.send(());
            }
            let (next, horizon_due) = {
                let index = lock(&self.timers);
                (index.wheel.next_wake(), index.horizon.due)
            };
            let refresh = if extend_failed {
                now.saturating_add(self.settings.retry)
            } else {
                horizon_due.saturating_sub(self.settings.horizon / 2).max(now.saturating_add(1))
            };
            let wake_at = next.map_or(refresh, |n| n.min(refresh));
            tokio::select! {
                () = self.clock.sleep_until(wake_at) => {}
                () = self.wake.notified() => {}
                control = self.control.recv() => match control {
                    Some(Control::Settle(waiter)) => settle_waiters.push(waiter),
                    None => return,
                },
            }
        }
    }

    /// Fires everything due at `now`; returns how many fired. `Err` when the writer is gone.
    async fn fire_due(&mut self, now: Millis) -> Result<usize, ()> {
        let polled: Vec<(TimerKey, Millis)> = lock(&self.timers).wheel.poll(now);
        if polled.is_empty() {
            return Ok(0);
        }
        let due = self.one_per_instance(polled, now);
        if due.is_empty() {
            return Ok(0);
        }
        let mut waiting = Vec::with_capacity(due.len());
        for (key, _) in &due {
            let command = Command {
                instance: key.instance.clone(),
                kind: CommandKind::Timer { name: key.name.clone(), due: key.due },
                actor: "timer".to_owned(),
                request_id: None,
                idempotency: None,
            };
            match self.writer.send(command).await {
                Ok(rx) => waiting.push((key.clone(), rx)),
                Err(_) => return Err(()),
            }
        }
        let mut retry = Vec::new();
        let mut again = Vec::new();
        for (key, rx) in waiting {
            match rx.await {
                Ok(Ok(_)) | Ok(Err(WriteError::Rejected(Rejection::StaleTimer { .. }))) => {}
                Ok(Err(WriteError::Rejected(r))) => {
                    let reason = format!("{r:?}");
                    let reason = reason.split([' ', '{', '(']).next().unwrap_or("other");
                    self.metrics.timer_fires_rejected.with_label_values(&[reason]).inc();
                    tracing::warn!(instance = %key.instance, timer = %key.name, rejection = %r, "timer fire refused; dropped");
                }
                Ok(Err(WriteError::ShuttingDown)) | Err(_) => return Err(()),
                // The shard's lease moved on: its new holder fires this one.
                Ok(Err(WriteError::NotHeld(shard))) => {
                    tracing::debug!(instance = %key.instance, timer = %key.name, shard, "timer left to the shard's holder");
                }
                // Another node changed the instance first, or the batch was fenced for another
                // fire's shard: decide again at once, on fresh rows (a shard this node lost is
                // then refused as NotHeld before it is decided).
                Ok(Err(e)) if e.decide_again() => again.push(key),
                Ok(Err(e)) => {
                    tracing::warn!(instance = %key.instance, timer = %key.name, error = %e, "timer fire not committed; will retry");
                    retry.push(key);
                }
            }
        }
        if !retry.is_empty() || !again.is_empty() {
            let now = self.clock.now();
            let at = now.saturating_add(self.settings.retry);
            let mut index = lock(&self.timers);
            for key in retry {
                self.retrying.insert(key.instance.clone(), (key.clone(), at));
                index.wheel.insert(key, at);
            }
            for key in again {
                index.wheel.insert(key, now);
            }
        }
        Ok(due.len())
    }

    /// Of the fires polled, those to send this round ([`pick`]); the others go back into the
    /// wheel.
    fn one_per_instance(&mut self, polled: Vec<(TimerKey, Millis)>, now: Millis) -> Vec<(TimerKey, Millis)> {
        let (due, later) = pick(polled, &mut self.retrying, now);
        if !later.is_empty() {
            let mut index = lock(&self.timers);
            for (key, at) in later {
                index.wheel.insert(key, at);
            }
        }
        due
    }
}

/// A timer to fire, and the wheel instant it was polled at (or is to be looked at again).
type Fire = (TimerKey, Millis);

/// Of the fires polled, the earliest of each instance — unless an earlier one of the instance
/// waits for its retry (`retrying`). Answers the fires to send, in `(due, key)` order, and the
/// others with when to look at them again: the next round, or after the retry they wait behind.
fn pick(
    polled: Vec<(TimerKey, Millis)>,
    retrying: &mut HashMap<String, (TimerKey, Millis)>,
    now: Millis,
) -> (Vec<Fire>, Vec<Fire>) {
    let mut first: HashMap<String, (TimerKey, Millis)> = HashMap::new();
    let mut later: Vec<TimerKey> = Vec::new();
    for (key, at) in polled {
        match first.get_mut(&key.instance) {
            None => {
                first.insert(key.instance.clone(), (key, at));
            }
            Some(kept) if (key.due, &key.name) < (kept.0.due, &kept.0.name) => {
                later.push(std::mem::replace(kept, (key, at)).0);
            }
            Some(_) => later.push(key),
        }
    }
    let mut due = Vec::with_capacity(first.len());
    for (instance, (key, at)) in first {
        match retrying.get(&instance) {
            // Still to be retried: the later fire waits.
            Some((waiting, retry_at)) if *waiting != key && *retry_at > now => later.push(key),
            // The retried fire itself, or one whose retry time passed without it (it was
            // cancelled meanwhile): the instance goes on.
            Some(_) => {
                retrying.remove(&instance);
                due.push((key, at));
            }
            None => due.push((key, at)),
        }
    }
    let later = later
        .into_iter()
        .map(|key| {
            let at = retrying.get(&key.instance).map_or(now, |(_, at)| *at);
            (key, at)
        })
        .collect();
    due.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    (due, later)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(instance: &str, name: &str, due: Millis) -> TimerKey {
        TimerKey { instance: instance.into(), name: name.into(), due }
    }

    #[test]
    fn a_round_fires_each_instances_earliest_and_the_rest_next_round() {
        let mut retrying = HashMap::new();
        // Both due (a clock moved past both); polled in wheel order, where a fire put back at
        // `now` can come before an earlier-due sibling.
        let polled =
            vec![(key("a", "deadline", 20), 50), (key("a", "reminder", 10), 50), (key("b", "deadline", 20), 50)];
        let (due, later) = pick(polled, &mut retrying, 50);
        assert_eq!(due, vec![(key("a", "reminder", 10), 50), (key("b", "deadline", 20), 50)]);
        assert_eq!(later, vec![(key("a", "deadline", 20), 50)]);
    }

    #[test]
    fn a_fire_waiting_for_its_retry_holds_its_instances_later_fires() {
        let mut retrying = HashMap::from([("a".to_owned(), (key("a", "reminder", 10), 80))]);
        let (due, later) = pick(vec![(key("a", "deadline", 20), 50)], &mut retrying, 50);
        assert!(due.is_empty());
        assert_eq!(later, vec![(key("a", "deadline", 20), 80)], "looked at again after the retry");
        // At the retry: the reminder goes, the deadline the round after.
        let (due, later) =
            pick(vec![(key("a", "reminder", 10), 80), (key("a", "deadline", 20), 80)], &mut retrying, 80);
        assert_eq!(due, vec![(key("a", "reminder", 10), 80)]);
        assert_eq!(later, vec![(key("a", "deadline", 20), 80)]);
        assert!(retrying.is_empty());
        // A retried fire that was cancelled meanwhile holds nothing once its time has passed.
        let mut retrying = HashMap::from([("a".to_owned(), (key("a", "reminder", 10), 80))]);
        let (due, _) = pick(vec![(key("a", "deadline", 20), 90)], &mut retrying, 90);
        assert_eq!(due, vec![(key("a", "deadline", 20), 90)]);
    }
}
