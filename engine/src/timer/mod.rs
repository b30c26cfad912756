//! Durable timers: rows in the `timers` table are the truth; the [`wheel`] holds those due
//! within the horizon; the [`service`] fires them.
//!
//! # Contract (the horizon)
//! [`TimerIndex::horizon`] names a position in `(due_at, instance_id, name)` order. Every
//! stored timer at or before that position is in the wheel (or has fired); none after it is.
//! Both sides of that line are kept by the writer task alone:
//! - after a commit, the writer inserts a newly armed timer into the wheel only if its key is
//!   inside the horizon (otherwise a later page brings it in);
//! - the horizon is extended by the writer task (a [`crate::writer::Request::Extend`]), which
//!   reads the next page and moves the line in one step, so no commit can slip between the
//!   read and the move and be missed.
//!
//! A timer fires as a command whose transaction deletes its row; `decide` refuses a timer that
//! is no longer armed with that due time, so a stale wheel entry is harmless and a crash before
//! the commit makes it fire again after restart — never twice.

pub mod service;
pub mod wheel;

use crate::clock::Millis;

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
