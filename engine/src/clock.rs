//! Time, injected: the [`Clock`] trait, the [`SystemClock`] used in production and the
//! [`VirtualClock`] that tests and sandbox servers (`--virtual-clock`) advance by hand.
//!
//! All engine time is UTC milliseconds since the Unix epoch ([`Millis`]); conversion to
//! Asia/Shanghai happens only at the edges (calendar arithmetic and display).
//!
//! # Important
//! Nothing in the engine calls `SystemTime::now()` or `tokio::time::sleep` directly: every wait
//! for a due time goes through [`Clock::sleep_until`], so a virtual clock that jumps a month
//! wakes every sleeper whose instant has passed, and nothing fires before its due instant.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// A boxed future, as returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current instant and a way to wait for a later one.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Millis;
    /// A future that completes once `now() >= at`.
    fn sleep_until(&self, at: Millis) -> Sleep;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let wait = at.saturating_sub(self.now()).max(0);
        // +1 ms so that a sleep never completes a hair before `at` through rounding.
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0) + 1);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to. Cheap to clone; clones share the same time.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Arc<watch::Sender<Millis>>,
}

impl VirtualClock {
    /// A clock standing at `start`.
    pub fn new(start: Millis) -> Self {
        let (tx, _rx) = watch::channel(start);
        VirtualClock { now: Arc::new(tx) }
    }

    /// Moves time forward by `by` milliseconds and wakes every sleeper now due. Returns the new time.
    pub fn advance(&self, by: Millis) -> Millis {
        let by = by.max(0);
        let mut new = 0;
        self.now.send_modify(|t| {
            *t = t.saturating_add(by);
            new = *t;
        });
        new
    }

    /// Moves time to `at` if that is later than now (time never goes back). Returns the new time.
    pub fn advance_to(&self, at: Millis) -> Millis {
        let mut new = 0;
        self.now.send_modify(|t| {
            *t = (*t).max(at);
            new = *t;
        });
        new
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Millis {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // wait_for only fails when the sender is gone, and then time will never move again.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Converts engine time to a chrono instant.
pub fn to_datetime(at: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Converts a chrono instant to engine time.
pub fn from_datetime(at: DateTime<Utc>) -> Millis {
    at.timestamp_millis()
}

/// Formats an instant in Asia/Shanghai, the way people read deadlines: `2026-10-10 23:59:59 +08:00`.
pub fn display(at: Millis) -> String {
    to_datetime(at).with_timezone(&crate::calendar::DEFAULT_TZ).format("%Y-%m-%d %H:%M:%S %:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_sleepers_wake_only_when_their_instant_passes() {
        let clock = VirtualClock::new(1_000);
        let mut early = tokio::spawn(clock.sleep_until(1_500));
        let late = tokio::spawn(clock.sleep_until(5_000));
        clock.advance(400);
        // Not yet due: the task must still be pending after the runtime has had a chance to run it.
        tokio::task::yield_now().await;
        assert!(!early.is_finished());
        assert_eq!(clock.advance(100), 1_500);
        (&mut early).await.expect("woke");
        assert!(!late.is_finished());
        clock.advance_to(4_000);
        clock.advance_to(3_000); // never backwards
        assert_eq!(clock.now(), 4_000);
        clock.advance_to(5_000);
        late.await.expect("woke");
    }

    #[test]
    fn display_is_shanghai_time() {
        assert_eq!(display(0), "1970-01-01 08:00:00 +08:00");
    }
}
