//! The live side of stream consumers: which stream serves a consumer now, and how far it has
//! acknowledged — kept in step across the nodes of a cluster.
//!
//! A consumer's durable cursor is a database row (see [`crate::api::events`]); this is what the
//! stream serving it waits on. On one node every change is told here directly. With several
//! nodes, a consumer's `Ack` or a new `Subscribe` may land on another node than its stream: the
//! writer's transaction that records it also notifies every node ([`Notice`]), and each node's
//! listener passes it on here, so a stream stalled at `max_in_flight` goes on when its
//! acknowledgements land elsewhere, and a stream taken over elsewhere ends.
//!
//! Taking over is ordered by the database: notifications reach a listener in commit order, so a
//! stream started here learns that a Subscribe elsewhere is newer only from a notice that
//! arrives after this node heard its own stream's notice. A notice from elsewhere that arrives
//! before that was committed before this stream's Subscribe, and is ignored.
//!
//! [`Notice`]: crate::store::postgres::Notice

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

/// Why a stream was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Another Subscribe for the same consumer, on this node or another.
    TakenOver,
    /// An administrator dropped the consumer.
    Dropped,
    /// This node lost its connection to the other nodes' notifications: what they told it
    /// meanwhile is unknown, so its streams start again from their durable cursors.
    LostContact,
}

/// What a stream is given when it starts.
#[derive(Debug)]
pub struct Stream {
    /// This stream's token (told to the other nodes in the Subscribe's transaction).
    pub token: String,
    /// The consumer's acknowledged position, as it moves.
    pub acked: watch::Receiver<u64>,
    /// Set when the stream must end, and why.
    pub ended: watch::Receiver<Option<Ended>>,
}

#[derive(Debug)]
struct Consumer {
    acked: watch::Sender<u64>,
    ended: watch::Sender<Option<Ended>>,
    token: String,
    /// Whether this node has heard its own stream's notice back: from then on, a Subscribe
    /// another node tells of is newer than this stream.
    heard: bool,
}

/// The consumers that have a stream on this node.
#[derive(Debug)]
pub struct Live {
    consumers: Mutex<HashMap<String, Consumer>>,
    /// This process's prefix of stream tokens: tells its own notices from other nodes'.
    origin: String,
    next: AtomicU64,
}

impl Default for Live {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // Unique per process with overwhelming likelihood: the process id and a random hash key.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Live { consumers: Mutex::default(), origin: format!("{:016x}", h.finish()), next: AtomicU64::new(0) }
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Consumer>> {
        self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn own(&self, token: &str) -> bool {
        token.strip_prefix(self.origin.as_str()).is_some_and(|rest| rest.starts_with('.'))
    }

    /// Starts a stream for `name` acknowledged up to `acked`: ends the consumer's previous
    /// stream on this node.
    pub fn take_over(&self, name: &str, acked: u64) -> Stream {
        let token = format!("{}.{}", self.origin, self.next.fetch_add(1, Ordering::Relaxed));
        let (ended, ended_rx) = watch::channel(None);
        let mut all = self.lock();
        let acked_rx = match all.get_mut(name) {
            Some(c) => {
                c.ended.send_replace(Some(Ended::TakenOver));
                c.ended = ended;
                c.token.clone_from(&token);
                c.heard = false;
                c.acked.send_modify(|a| *a = (*a).max(acked));
                c.acked.subscribe()
            }
            None => {
                let (acked_tx, acked_rx) = watch::channel(acked);
                all.insert(name.to_owned(), Consumer { acked: acked_tx, ended, token: token.clone(), heard: false });
                acked_rx
            }
        };
        Stream { token, acked: acked_rx, ended: ended_rx }
    }

    /// A Subscribe for `name` was committed with stream `token` (here or on another node).
    pub fn subscribed(&self, name: &str, token: &str) {
        let mut all = self.lock();
        let Some(c) = all.get_mut(name) else { return };
        if self.own(token) {
            if c.token == token {
                c.heard = true;
            }
        } else if c.heard {
            c.ended.send_replace(Some(Ended::TakenOver));
            all.remove(name);
        }
    }

    /// `name` acknowledged up to `acked` (here or on another node).
    pub fn acked(&self, name: &str, acked: u64) {
        if let Some(c) = self.lock().get(name) {
            c.acked.send_modify(|a| *a = (*a).max(acked));
        }
    }

    /// Ends the stream of `name` on this node, if any.
    pub fn end(&self, name: &str, why: Ended) {
        if let Some(c) = self.lock().remove(name) {
            c.ended.send_replace(Some(why));
        }
    }

    /// Ends every stream on this node.
    pub fn end_all(&self, why: Ended) {
        for (_, c) in self.lock().drain() {
            c.ended.send_replace(Some(why));
        }
    }

    /// Forgets `name` once its stream with `token` is over (unless another took it over).
    pub fn finished(&self, name: &str, token: &str) {
        let mut all = self.lock();
        if all.get(name).is_some_and(|c| c.token == token) {
            all.remove(name);
        }
    }

    /// Consumers with a stream on this node.
    pub fn streams(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_elsewhere_ends_a_stream_only_once_its_own_notice_was_heard() {
        let live = Live::default();
        let s = live.take_over("平台", 5);
        // A notice committed before this stream's own: older, ignored.
        live.subscribed("平台", "elsewhere.1");
        assert_eq!(*s.ended.borrow(), None);
        live.subscribed("平台", &s.token);
        live.subscribed("平台", "elsewhere.2");
        assert_eq!(*s.ended.borrow(), Some(Ended::TakenOver));
        assert_eq!(live.streams(), 0);
    }

    #[test]
    fn an_older_own_notice_does_not_confirm_a_newer_stream() {
        let live = Live::default();
        let first = live.take_over("c", 0);
        let second = live.take_over("c", 0);
        assert_eq!(*first.ended.borrow(), Some(Ended::TakenOver));
        live.subscribed("c", &first.token);
        live.subscribed("c", "other.9");
        assert_eq!(*second.ended.borrow(), None, "the second stream's own notice was not heard yet");
    }

    #[test]
    fn acknowledgements_only_move_forward_and_reach_the_stream() {
        let live = Live::default();
        let s = live.take_over("c", 10);
        live.acked("c", 30);
        live.acked("c", 20);
        assert_eq!(*s.acked.borrow(), 30);
        live.acked("unknown", 99);
        live.finished("c", "not-its-token");
        assert_eq!(live.streams(), 1);
        live.finished("c", &s.token);
        assert_eq!(live.streams(), 0);
    }

    #[test]
    fn losing_contact_ends_every_stream() {
        let live = Live::default();
        let a = live.take_over("a", 0);
        let b = live.take_over("b", 0);
        live.end_all(Ended::LostContact);
        assert_eq!(*a.ended.borrow(), Some(Ended::LostContact));
        assert_eq!(*b.ended.borrow(), Some(Ended::LostContact));
    }
}
