//! A hierarchical timing wheel: the in-memory index of the timers due within the horizon.
//!
//! Pure data structure — no clock, no I/O. Six levels of 64 slots at millisecond resolution
//! (level `k` slots span 64^k ms), so any due time within 64^6 ms (about 2.2 years) of the
//! wheel's current time has a slot; later ones wait in a small ordered overflow set. Insert
//! and cancel are O(1); [`Wheel::poll`] costs O(expired + slots visited) and returns what fell
//! due in `(due, key)` order.
//!
//! # Contract
//! - Nothing is returned before its due instant: `poll(now)` returns exactly the entries with
//!   `due <= now`, and an entry inserted with a due time already past comes out of the next poll.
//! - A key is in the wheel at most once: inserting a key again replaces it; `cancel` removes it.
//!
//! The design follows the hashed hierarchical wheels of Varghese & Lauck, in the shape tokio's
//! time driver uses (levels of 64 slots with an occupancy bitmap per level), with cancellation
//! by generation so that a cancelled entry costs nothing until its slot is visited.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Distance from the wheel's time beyond which an entry waits in the overflow set.
const MAX_RANGE: u64 = 1 << (SLOT_BITS * LEVELS as u32);

#[derive(Debug)]
struct Entry<K> {
    key: K,
    due: u64,
    generation: u32,
    live: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Slab(usize),
    Overflow(u64),
}

#[derive(Debug)]
struct Level {
    occupied: u64,
    slots: Vec<Vec<(usize, u32)>>,
}

impl Level {
    fn new() -> Self {
        Level { occupied: 0, slots: (0..SLOTS).map(|_| Vec::new()).collect() }
    }
}

/// A hierarchical timing wheel keyed by `K`.
#[derive(Debug)]
pub struct Wheel<K> {
    elapsed: u64,
    levels: Vec<Level>,
    entries: Vec<Entry<K>>,
    free: Vec<usize>,
    ready: Vec<(usize, u32)>,
    overflow: BTreeSet<(u64, K)>,
    index: HashMap<K, Loc>,
}

fn level_for(elapsed: u64, due: u64) -> usize {
    let masked = (elapsed ^ due) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

fn slot_for(due: u64, level: usize) -> usize {
    ((due >> (level as u32 * SLOT_BITS)) & (SLOTS as u64 - 1)) as usize
}

fn to_u64(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}

impl<K: Clone + Eq + Hash + Ord> Wheel<K> {
    /// An empty wheel whose time is `now` (ms).
    pub fn new(now: i64) -> Self {
        Wheel {
            elapsed: to_u64(now),
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            entries: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            overflow: BTreeSet::new(),
            index: HashMap::new(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the wheel holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every key in the wheel, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.index.keys()
    }

    /// Whether `key` is in the wheel.
    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// The wheel's current time: every entry due at or before it has been returned.
    pub fn now(&self) -> i64 {
        i64::try_from(self.elapsed).unwrap_or(i64::MAX)
    }

    /// Inserts `key` due at `due` (ms), replacing any entry with the same key.
    pub fn insert(&mut self, key: K, due: i64) {
        self.cancel(&key);
        let due = to_u64(due);
        if due > self.elapsed && due - self.elapsed >= MAX_RANGE {
            self.overflow.insert((due, key.clone()));
            self.index.insert(key, Loc::Overflow(due));
            return;
        }
        let id = match self.free.pop() {
            Some(id) => {
                let e = &mut self.entries[id];
                e.key = key.clone();
                e.due = due;
                e.live = true;
                id
            }
            None => {
                self.entries.push(Entry { key: key.clone(), due, generation: 0, live: true });
                self.entries.len() - 1
            }
        };
        self.index.insert(key, Loc::Slab(id));
        self.place(id);
    }

    fn place(&mut self, id: usize) {
        let (due, generation) = (self.entries[id].due, self.entries[id].generation);
        if due <= self.elapsed {
            self.ready.push((id, generation));
            return;
        }
        let level = level_for(self.elapsed, due);
        let slot = slot_for(due, level);
        let l = &mut self.levels[level];
        l.slots[slot].push((id, generation));
        l.occupied |= 1 << slot;
    }

    /// Removes `key`; returns whether it was there.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.index.remove(key) {
            None => false,
            Some(Loc::Overflow(due)) => {
                self.overflow.remove(&(due, key.clone()));
                true
            }
            Some(Loc::Slab(id)) => {
                self.release(id);
                true
            }
        }
    }

    fn release(&mut self, id: usize) {
        let e = &mut self.entries[id];
        e.live = false;
        // Slot lists still hold (id, old generation); bumping it makes those references dead.
        e.generation = e.generation.wrapping_add(1);
        self.free.push(id);
    }

    /// The earliest instant at which [`poll`](Self::poll) may return something: the due time
    /// of what is ready, or the start of the next occupied slot (a slot of a higher level
    /// cascades then and may hold nothing due yet). `None` when empty.
    pub fn next_wake(&self) -> Option<i64> {
        if self.index.is_empty() {
            return None;
        }
        if !self.ready.is_empty() {
            return Some(self.now());
        }
        let slot = self.next_slot().map(|(_, _, deadline)| deadline);
        let overflow = self.overflow.first().map(|(due, _)| due.saturating_sub(MAX_RANGE - 1));
        let next = match (slot, overflow) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(i64::try_from(next).unwrap_or(i64::MAX))
    }

    /// The next occupied slot: (level, slot, its start instant).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level, l) in self.levels.iter().enumerate() {
            if l.occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let now_slot = ((self.elapsed >> shift) & (SLOTS as u64 - 1)) as u32;
            let slot = (l.occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + slot as u64 * slot_range;
            if deadline < self.elapsed {
                deadline += level_range;
            }
            return Some((level, slot, deadline));
        }
        None
    }

    /// Advances the wheel to `now` and returns every entry with `due <= now`, ordered by
    /// `(due, key)`. Time never goes back: a `now` earlier than the wheel's time only drains
    /// what is ready.
    pub fn poll(&mut self, now: i64) -> Vec<(K, i64)> {
        let now = to_u64(now).max(self.elapsed);
        let mut fired: Vec<(u64, K)> = Vec::new();
        let take_ready = |wheel: &mut Self, fired: &mut Vec<(u64, K)>| {
            for (id, generation) in std::mem::take(&mut wheel.ready) {
                wheel.fire(id, generation, fired);
            }
        };
        take_ready(self, &mut fired);
        loop {
            self.pull_overflow();
            let Some((level, slot, deadline)) = self.next_slot() else { break };
            if deadline > now {
                break;
            }
            let l = &mut self.levels[level];
            let entries = std::mem::take(&mut l.slots[slot]);
            l.occupied &= !(1 << slot);
            self.elapsed = self.elapsed.max(deadline);
            for (id, generation) in entries {
                let e = &self.entries[id];
                if !e.live || e.generation != generation {
                    continue;
                }
                if e.due <= self.elapsed {
                    self.fire(id, generation, &mut fired);
                } else {
                    self.place(id);
                }
            }
            take_ready(self, &mut fired);
        }
        self.elapsed = now;
        self.pull_overflow();
        take_ready(self, &mut fired);
        fired.sort_unstable();
        fired.into_iter().map(|(due, key)| (key, i64::try_from(due).unwrap_or(i64::MAX))).collect()
    }

    fn fire(&mut self, id: usize, generation: u32, fired: &mut Vec<(u64, K)>) {
        let e = &self.entries[id];
        if !e.live || e.generation != generation {
            return;
        }
        let (key, due) = (e.key.clone(), e.due);
        self.index.remove(&key);
        self.release(id);
        fired.push((due, key));
    }

    fn pull_overflow(&mut self) {
        while let Some((due, _)) = self.overflow.first() {
            if *due > self.elapsed && *due - self.elapsed >= MAX_RANGE {
                break;
            }
            let Some((due, key)) = self.overflow.pop_first() else { break };
            self.index.remove(&key);
            self.insert(key, i64::try_from(due).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_in_due_order_never_early() {
        let mut w = Wheel::new(1_000);
        for (k, due) in [(1u32, 1_500), (2, 1_200), (3, 1_200), (4, 70_000), (5, 5_000_000), (6, 900)] {
            w.insert(k, due);
        }
        assert_eq!(w.len(), 6);
        assert_eq!(w.poll(1_000), vec![(6, 900)], "already past when inserted: out at once");
        let wake = w.next_wake().expect("not empty");
        assert!((1_000..=1_200).contains(&wake), "wake at {wake}");
        assert_eq!(w.poll(1_199), vec![]);
        assert_eq!(w.poll(1_200), vec![(2, 1_200), (3, 1_200)]);
        assert_eq!(w.poll(69_999), vec![(1, 1_500)]);
        assert_eq!(w.poll(70_000), vec![(4, 70_000)]);
        assert_eq!(w.poll(4_999_999), vec![]);
        assert_eq!(w.poll(10_000_000), vec![(5, 5_000_000)]);
        assert!(w.is_empty());
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn cancel_and_replace() {
        let mut w = Wheel::new(0);
        w.insert("a", 100);
        w.insert("b", 100);
        w.insert("c", 300);
        assert!(w.cancel(&"b"));
        assert!(!w.cancel(&"b"));
        w.insert("c", 50); // replaces the 300
        assert_eq!(w.len(), 2);
        assert_eq!(w.poll(1_000), vec![("c", 50), ("a", 100)]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_timers_wait_in_overflow_and_still_fire_on_time() {
        let mut w = Wheel::new(0);
        let far = (MAX_RANGE * 3 + 17) as i64;
        w.insert(1u8, far);
        w.insert(2u8, 10);
        assert_eq!(w.poll(far - 1), vec![(2, 10)]);
        assert_eq!(w.poll(far), vec![(1, far)]);
        w.insert(3u8, far * 2);
        assert!(w.cancel(&3));
        assert!(w.is_empty());
    }

    #[test]
    fn a_million_timers_drain_in_order() {
        const N: u64 = 1_000_000;
        let start = 1_790_000_000_000i64; // a 2026 instant, like real due times
        let mut w = Wheel::new(start);
        // A deterministic scatter over one hour (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut want = Vec::with_capacity(N as usize);
        for key in 0..N {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let due = start + (x % 3_600_000) as i64;
            w.insert(key, due);
            want.push((due, key));
        }
        assert_eq!(w.len(), N as usize);
        want.sort_unstable();
        let mut got = Vec::with_capacity(N as usize);
        let mut now = start - 997;
        while !w.is_empty() {
            now += 997; // steps that do not line up with slot boundaries
            for (key, due) in w.poll(now) {
                assert!(due <= now, "fired early");
                assert!(due > now - 997, "fired late: due {due}, polled at {now}");
                got.push((due, key));
            }
        }
        assert_eq!(got, want);
    }

    proptest! {
        #[test]
        fn agrees_with_an_ordered_map(ops in proptest::collection::vec((0u8..4, 0u16..64, 0i64..300_000), 1..400)) {
            let mut w = Wheel::new(10_000);
            let mut model: BTreeMap<u16, i64> = BTreeMap::new();
            let mut now = 10_000i64;
            for (op, key, t) in ops {
                match op {
                    0 | 1 => { w.insert(key, now + t - 1_000); model.insert(key, now + t - 1_000); }
                    2 => { prop_assert_eq!(w.cancel(&key), model.remove(&key).is_some()); }
                    _ => {
                        now += t / 16;
                        let got = w.poll(now);
                        let mut want: Vec<(i64, u16)> = model.iter().filter(|(_, d)| **d <= now).map(|(k, d)| (*d, *k)).collect();
                        want.sort_unstable();
                        for (_, k) in &want { model.remove(k); }
                        let want: Vec<(u16, i64)> = want.into_iter().map(|(d, k)| (k, d)).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                if let (Some(wake), Some(min)) = (w.next_wake(), model.values().min()) {
                    prop_assert!(wake <= (*min).max(now), "wake {} after the earliest due {}", wake, min);
                }
            }
        }
    }
}
