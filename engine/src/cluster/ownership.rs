//! Which shards this node holds and at which epoch ([`Ownership`]): the one piece of the
//! cluster the writer, the timer service and delivery read.
//!
//! A leaf: the [`Keeper`](super::Keeper) changes it; everything else only asks it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The shards this node holds, with the epoch it took each at. Shared by the writer (fencing,
/// which timers go into the wheel), the timer service (which timers to fire) and delivery (the
/// holder of shard 0 dispatches).
#[derive(Debug)]
pub struct Ownership {
    node: String,
    shards: u32,
    held: Mutex<BTreeMap<u32, u64>>,
    /// Shards whose lease moved on without this node handing them back, not yet told about:
    /// the node may have armed timers in them while it still thought it held them.
    taken: Mutex<Vec<u32>>,
    /// Until when, on this node's monotonic clock, every lease held is surely still its own:
    /// the start of the last round that renewed them, plus the lease time. The database judges
    /// expiry by its own clock at the renewal, which is later, so this errs early.
    sure_until: Mutex<Option<std::time::Instant>>,
    changed: watch::Sender<u64>,
}

impl Ownership {
    /// Holding nothing yet.
    pub fn new(node: impl Into<String>, shards: u32) -> Arc<Self> {
        Arc::new(Ownership {
            node: node.into(),
            shards: shards.max(1),
            held: Mutex::new(BTreeMap::new()),
            taken: Mutex::new(Vec::new()),
            sure_until: Mutex::new(None),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u64>> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Whether the node holds `shard`.
    pub fn holds(&self, shard: u32) -> bool {
        self.lock().contains_key(&shard)
    }

    /// Whether the node holds `shard` and its lease surely has not expired meanwhile: what a
    /// node must ask before it acts alone on a shard with nothing to fence it (sending what
    /// shard 0's holder delivers). A node frozen past its lease, or cut off from the database,
    /// stops at once, before its keeper learns that the lease moved.
    pub fn surely_holds(&self, shard: u32) -> bool {
        let sure = *self.sure_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.holds(shard) && sure.is_some_and(|until| std::time::Instant::now() < until)
    }

    /// Not told through `subscribe`: a renewal changes nothing held, and whoever asks
    /// [`Ownership::surely_holds`] asks again before each act.
    pub(super) fn renewed(&self, until: std::time::Instant) {
        *self.sure_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(until);
    }

    /// Whether the node holds the shard of instance `id`.
    pub fn holds_instance(&self, id: &str) -> bool {
        self.holds(crate::store::shard_of(id, self.shards))
    }

    /// The epoch the node holds `shard` at.
    pub fn epoch(&self, shard: u32) -> Option<u64> {
        self.lock().get(&shard).copied()
    }

    /// The shards held, ascending.
    pub fn held(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    /// The shards held with their epochs, ascending.
    pub(super) fn held_epochs(&self) -> Vec<(u32, u64)> {
        self.lock().iter().map(|(s, e)| (*s, *e)).collect()
    }

    /// Shards taken from this node whose new holders could not be told yet: told at the next
    /// tick.
    pub(super) fn still_to_tell(&self, shards: Vec<u32>) {
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(shards);
    }

    /// Changes whenever the held set does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(super) fn gain(&self, shards: &[(u32, u64)]) {
        self.lock().extend(shards.iter().copied());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets `shards`, whose leases were taken from this node (a batch met the fence, or a
    /// renewal failed): the keeper tells their new holders at its next tick.
    pub(crate) fn taken(&self, shards: &[u32]) {
        self.lose(shards);
        self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(shards);
    }

    pub(super) fn take_taken(&self) -> Vec<u32> {
        let mut all = std::mem::take(&mut *self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        all.sort_unstable();
        all.dedup();
        all
    }

    pub(super) fn lose(&self, shards: &[u32]) {
        let mut held = self.lock();
        for s in shards {
            held.remove(s);
        }
        drop(held);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}
