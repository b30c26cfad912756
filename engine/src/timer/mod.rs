//! Durable timers: rows in the `timers` table are the truth; the [`wheel`] holds those due
//! within the horizon; the [`service`] fires them.
//!
//! # Contract (the horizon)
//! [`TimerIndex::horizon`] names a position in `(due_at, instance_id, name)` order. Every
//! stored timer at or before that position is in the wheel (or has fired); none after it is.
//! Both sides of that line are kept by the writer task alone:
//! - after a commit, the writer inserts a newly armed timer into the wheel only if its key is
//!   inside the horizon (otherwise a later page brings it in);
//! - the horizon is extended by the writer task (a [`crate::writer::Handle::extend`] request, served
//!   by [`Paging::extend`]), which reads the next page and moves the line in one step, so no
//!   commit can slip between the read and the move and be missed. Shards taken or lost
//!   ([`Paging::change_shards`]) are loaded and dropped the same way, between batches.
//!
//! A timer fires as a command whose transaction deletes its row; `decide` refuses a timer that
//! is no longer armed with that due time, so a stale wheel entry is harmless and a crash before
//! the commit makes it fire again after restart — never twice.

pub mod service;
pub mod spotcheck;
pub mod wheel;

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::cluster::ownership::Ownership;

use crate::clock::Millis;
use crate::store::{Store, TimerFrom};

/// The wheel's key for a timer: the due time is part of it, so a re-armed timer is a new key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerKey {
    /// Instance id.
    pub instance: String,
    /// Timer name.
    pub name: String,
    /// The due time it was armed with.
    pub due: Millis,
}

/// How far the wheel has been loaded (see the module contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// Timers due strictly before this instant are loaded…
    pub due: Millis,
    /// …and, when set, those due exactly at `due` up to and including this (instance, name).
    pub after: Option<(String, String)>,
}

impl Horizon {
    /// Nothing loaded yet.
    pub fn start() -> Self {
        Horizon { due: Millis::MIN, after: None }
    }

    /// Whether a stored timer at this position is inside the loaded range.
    pub fn contains(&self, due: Millis, instance: &str, name: &str) -> bool {
        due < self.due
            || (due == self.due
                && self.after.as_ref().is_some_and(|(i, n)| (instance, name) <= (i.as_str(), n.as_str())))
    }
}

/// The in-memory side of the timers, shared by the writer and the service.
#[derive(Debug)]
pub struct TimerIndex {
    /// Timers due within the horizon.
    pub wheel: wheel::Wheel<TimerKey>,
    /// What has been loaded.
    pub horizon: Horizon,
}

impl TimerIndex {
    /// An empty index whose wheel starts at `now`.
    pub fn new(now: Millis) -> Self {
        TimerIndex { wheel: wheel::Wheel::new(now), horizon: Horizon::start() }
    }
}

/// A change to the wheel that a committed batch made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelOp {
    /// A timer armed: into the wheel if it falls inside the loaded horizon.
    Insert(TimerKey),
    /// A timer cancelled, fired or replaced.
    Cancel(TimerKey),
}

impl TimerIndex {
    /// Applies a committed batch's changes; true when a timer went into the wheel (the service
    /// should look again). Keeps the contract: an armed timer outside the horizon stays out,
    /// and the page that reaches it brings it in.
    pub fn apply(&mut self, ops: Vec<WheelOp>) -> bool {
        let mut inserted = false;
        for op in ops {
            match op {
                WheelOp::Cancel(key) => {
                    self.wheel.cancel(&key);
                }
                WheelOp::Insert(key) => {
                    if self.horizon.contains(key.due, &key.instance, &key.name) {
                        let due = key.due;
                        self.wheel.insert(key, due);
                        inserted = true;
                    }
                }
            }
        }
        inserted
    }
}

/// Shards whose timers the wheel must take in or let go of.
#[derive(Debug, Clone, Default)]
pub struct ShardChange {
    /// Load these shards' timers up to the horizon.
    pub load: Vec<u32>,
    /// Drop these shards' timers.
    pub drop: Vec<u32>,
}

/// What the writer lends the timers between two batches: the shared index, the service's
/// wake-up, and the page size.
pub struct Paging<'a> {
    /// The index.
    pub timers: &'a Mutex<TimerIndex>,
    /// Woken when timers went into the wheel.
    pub wake: &'a Notify,
    /// Most timers read per page.
    pub page: u32,
}

impl Paging<'_> {
    /// One page of the horizon towards `until` ([`page_in`]), the service woken if it brought
    /// timers.
    pub async fn extend<S: Store>(
        &self,
        store: &mut S,
        until: Millis,
        held: Option<&[u32]>,
    ) -> Result<usize, crate::store::Error> {
        let loaded = page_in(store, self.timers, until, self.page, held).await?;
        if loaded > 0 {
            self.wake.notify_one();
        }
        Ok(loaded)
    }

    /// Drops the timers of the shards lost and loads those of the shards taken (of these, the
    /// ones `ownership` still holds: it may have moved on since the change was sent).
    pub async fn change_shards<S: Store>(
        &self,
        store: &mut S,
        change: &ShardChange,
        shards: u32,
        ownership: Option<&Ownership>,
    ) -> Result<(), crate::store::Error> {
        if !change.drop.is_empty() {
            let dropped = drop_shards(self.timers, &change.drop, shards);
            tracing::debug!(shards = ?change.drop, timers = dropped, "dropped lost shards' timers");
        }
        let held: Vec<u32> = match ownership {
            Some(o) => change.load.iter().copied().filter(|s| o.holds(*s)).collect(),
            None => change.load.clone(),
        };
        if !held.is_empty() {
            let loaded = self.reload(store, &held).await?;
            tracing::debug!(shards = ?held, timers = loaded, "loaded shards' timers");
        }
        Ok(())
    }

    /// Loads again every timer of `shards` the horizon covers ([`rescan`]), the service woken
    /// if it brought timers: shards taken, or a commit whose outcome was unknown.
    pub async fn reload<S: Store>(&self, store: &mut S, shards: &[u32]) -> Result<usize, crate::store::Error> {
        let loaded = rescan(store, self.timers, shards, self.page).await?;
        if loaded > 0 {
            self.wake.notify_one();
        }
        Ok(loaded)
    }
}

/// Moves the horizon towards `until` by one page of at most `page` stored timers, read from
/// `store` and put into the wheel; answers how many. The read and the move happen with no
/// commit in between because only the writer task calls this, between batches (see the
/// contract above). A full page stops at its last key; the caller asks again.
pub async fn page_in<S: Store>(
    store: &mut S,
    timers: &Mutex<TimerIndex>,
    until: Millis,
    page: u32,
    shards: Option<&[u32]>,
) -> Result<usize, crate::store::Error> {
    let horizon = lock(timers).horizon.clone();
    if horizon.after.is_none() && horizon.due >= until {
        return Ok(0);
    }
    let from = match &horizon.after {
        Some((instance, name)) => TimerFrom::After(horizon.due, instance.clone(), name.clone()),
        None => TimerFrom::Due(horizon.due),
    };
    let rows = store.timers_page(&from, until, page, shards).await?;
    let full = rows.len() >= page as usize;
    let mut index = lock(timers);
    index.horizon = match rows.last() {
        Some(last) if full => Horizon { due: last.due, after: Some((last.instance.clone(), last.name.clone())) },
        _ => Horizon { due: until, after: None },
    };
    let n = rows.len();
    for row in rows {
        let key = TimerKey { instance: row.instance, name: row.name, due: row.due };
        index.wheel.insert(key, row.due);
    }
    Ok(n)
}

/// Loads the timers of `shards` that the horizon covers (a node took those shards, or another
/// node armed timers in them): every one at or before the horizon line goes into the wheel.
/// Re-inserting a timer already there is harmless (the wheel replaces its key), and so is one
/// just past the line (a timer due exactly at the line's instant): it is the same key a later
/// page would bring.
pub async fn rescan<S: Store>(
    store: &mut S,
    timers: &Mutex<TimerIndex>,
    shards: &[u32],
    page: u32,
) -> Result<usize, crate::store::Error> {
    let horizon = lock(timers).horizon.clone();
    let before = if horizon.after.is_some() { horizon.due.saturating_add(1) } else { horizon.due };
    let mut from = TimerFrom::Due(Millis::MIN);
    let mut loaded = 0;
    loop {
        let rows = store.timers_page(&from, before, page, Some(shards)).await?;
        let full = rows.len() >= page as usize;
        let next = rows.last().map(|l| TimerFrom::After(l.due, l.instance.clone(), l.name.clone()));
        loaded += rows.len();
        let mut index = lock(timers);
        for row in rows {
            let due = row.due;
            index.wheel.insert(TimerKey { instance: row.instance, name: row.name, due }, due);
        }
        drop(index);
        match next {
            Some(next) if full => from = next,
            _ => return Ok(loaded),
        }
    }
}

/// Takes the timers of `shards` out of the wheel (the node no longer holds them); answers how
/// many.
pub fn drop_shards(timers: &Mutex<TimerIndex>, shards: &[u32], count: u32) -> usize {
    let mut index = lock(timers);
    let gone: Vec<TimerKey> =
        index.wheel.keys().filter(|k| shards.contains(&crate::store::shard_of(&k.instance, count))).cloned().collect();
    for key in &gone {
        index.wheel.cancel(key);
    }
    gone.len()
}

/// Locks the shared index. A panic while it was held cannot leave the wheel in a state that
/// loses timers (the database is the truth), so a poisoned lock is still used.
pub fn lock(timers: &std::sync::Mutex<TimerIndex>) -> std::sync::MutexGuard<'_, TimerIndex> {
    timers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizon_containment_follows_key_order() {
        let h = Horizon { due: 100, after: Some(("b".into(), "t".into())) };
        assert!(h.contains(99, "z", "z"));
        assert!(h.contains(100, "a", "z"));
        assert!(h.contains(100, "b", "t"));
        assert!(!h.contains(100, "b", "u"));
        assert!(!h.contains(101, "a", "a"));
        let whole = Horizon { due: 100, after: None };
        assert!(!whole.contains(100, "a", "a"));
        assert!(!Horizon::start().contains(Millis::MIN, "a", "a"));
    }
}
