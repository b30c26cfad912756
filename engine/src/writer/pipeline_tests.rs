//! The pipeline on its own: a writer over an in-memory store whose commits the test holds and
//! fails at will, so that what is decided while a commit runs, and what becomes of it when that
//! commit fails, can be watched step by step. The real stores are exercised by the integration
//! suites (SIGKILL, full disk, several nodes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex as StdMutex;

use tokio::sync::{watch, Semaphore};

use super::batch::tests::{event, keyed, start, DEF, LATER, NOW};
use super::*;
use crate::calendar::Calendars;
use crate::clock::VirtualClock;
use crate::store::{
    Error as StoreError, IdempotencyRow, InstanceRow, StoredCalendarFile, TimerFrom, TimerId, TimerRow,
};

/// What the fake database holds and how its commits go.
#[derive(Default)]
struct Db {
    instances: HashMap<String, InstanceRow>,
    keys: HashMap<String, IdempotencyRow>,
    /// Cases archived and removed.
    archived: HashMap<String, crate::store::ArchivedRow>,
    /// Each committed batch's history: (instance, seq).
    committed: Vec<Vec<(String, u64)>>,
    /// Outcomes of the next commits (then `Ok`).
    outcomes: VecDeque<StoreError>,
}

/// An in-memory [`Store`]; [`Store::beside`] shares its data.
#[derive(Clone)]
struct Fake {
    db: Arc<StdMutex<Db>>,
    /// One permit per commit allowed to finish.
    gate: Arc<Semaphore>,
    /// Commits started so far.
    started: Arc<watch::Sender<usize>>,
    /// Whether a commit is running.
    running: Arc<AtomicBool>,
    /// Reads made while a commit was running.
    reads_meanwhile: Arc<watch::Sender<usize>>,
}

impl Fake {
    fn new() -> Self {
        Fake {
            db: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::new(watch::Sender::new(0)),
            running: Arc::default(),
            reads_meanwhile: Arc::new(watch::Sender::new(0)),
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) {
        if self.running.load(Ordering::SeqCst) {
            self.reads_meanwhile.send_modify(|n| *n += 1);
        }
    }
}

impl Store for Fake {
    fn beside(&self) -> Self {
        self.clone()
    }

    async fn load_instances(&mut self, ids: &[&str]) -> Result<HashMap<String, InstanceRow>, StoreError> {
        self.read();
        let db = self.db();
        Ok(ids.iter().filter_map(|id| db.instances.get(*id).map(|r| ((*id).to_owned(), r.clone()))).collect())
    }

    async fn load_archived(&mut self, ids: &[&str]) -> Result<HashMap<String, crate::store::ArchivedRow>, StoreError> {
        let db = self.db();
        Ok(ids.iter().filter_map(|id| db.archived.get(*id).map(|r| ((*id).to_owned(), r.clone()))).collect())
    }

    async fn load_idempotency(&mut self, keys: &[&str]) -> Result<HashMap<String, IdempotencyRow>, StoreError> {
        self.read();
        let db = self.db();
        Ok(keys.iter().filter_map(|k| db.keys.get(*k).map(|r| ((*k).to_owned(), r.clone()))).collect())
    }

    async fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.running.store(true, Ordering::SeqCst);
        self.started.send_modify(|n| *n += 1);
        let permit = self.gate.acquire().await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        permit.forget();
        let mut db = self.db();
        let outcome = match db.outcomes.pop_front() {
            Some(e) => Err(e),
            None => {
                for row in &batch.instances {
                    db.instances.insert(row.id.clone(), row.clone());
                }
                for (key, row) in &batch.idempotency {
                    db.keys.insert(key.clone(), row.clone());
                }
                db.committed.push(batch.history.iter().map(|(id, h)| (id.clone(), h.seq)).collect());
                Ok(())
            }
        };
        self.running.store(false, Ordering::SeqCst);
        outcome
    }

    async fn prune_idempotency(&mut self, _: Millis, _: u32) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn prune_outbox(&mut self, _: Millis, _: u32) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn timers_page(
        &mut self,
        _: &TimerFrom,
        _: Millis,
        _: u32,
        _: Option<&[u32]>,
    ) -> Result<Vec<TimerRow>, StoreError> {
        Ok(Vec::new())
    }

    async fn calendar_files(&mut self) -> Result<Vec<StoredCalendarFile>, StoreError> {
        Ok(Vec::new())
    }

    async fn catalogs(&mut self) -> Result<Vec<crate::catalog::Version>, StoreError> {
        Ok(Vec::new())
    }

    async fn replans(&mut self) -> Result<Vec<ReplanJob>, StoreError> {
        Ok(Vec::new())
    }

    async fn planned_timers(
        &mut self,
        _: chrono::NaiveDate,
        _: chrono::NaiveDate,
        _: Option<&TimerId>,
        _: u32,
    ) -> Result<Vec<TimerId>, StoreError> {
        Ok(Vec::new())
    }

    async fn figures_built(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn instances_page(&mut self, _: &[&str], _: Option<&str>, _: u32) -> Result<Vec<InstanceRow>, StoreError> {
        Ok(Vec::new())
    }

    async fn install_figures(
        &mut self,
        _: &[(crate::domain::figures::CounterKey, i64)],
        _: u64,
        _: Millis,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn remove_archived(
        &mut self,
        _: &[crate::store::Removal],
        _: &str,
        _: Millis,
    ) -> Result<crate::store::Removed, StoreError> {
        Ok(crate::store::Removed::default())
    }
}

/// A running writer over `fake`.
fn writer(fake: &Fake) -> Handle {
    let registry = Arc::new(Registry::from_sources(&[("t.toml", DEF)]).expect("definition"));
    let context = crate::context::Context::new(
        registry,
        Calendars::embedded().expect("calendars"),
        Arc::new(VirtualClock::new(NOW)),
    );
    let settings = Settings {
        max_batch: 64,
        shards: 8,
        page: 100,
        cache: 1_000,
        idempotency_retention: 7 * 86_400_000,
        replan_page: 100,
        routes: Arc::default(),
        texts: Arc::default(),
        outbox_retention: 7 * 86_400_000,
        horizon: 60_000,
        ownership: None,
    };
    let timers = Arc::new(Mutex::new(TimerIndex::new(NOW)));
    let (writer, handle) = channel(fake.clone(), &context, timers, Arc::new(Notify::new()), settings);
    tokio::spawn(writer.run());
    handle
}

/// A bound on each wait, so that a writer that never does what is waited for fails the test
/// instead of hanging it.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits until `n` commits have started.
async fn commits_started(fake: &Fake, n: usize) {
    let mut started = fake.started.subscribe();
    tokio::time::timeout(PATIENCE, started.wait_for(|s| *s >= n))
        .await
        .unwrap_or_else(|_| panic!("commit {n} never started"))
        .expect("the fake lives");
}

/// Waits until a read was made while a commit ran: the writer is deciding the next batch.
async fn read_meanwhile(fake: &Fake) {
    let mut reads = fake.reads_meanwhile.subscribe();
    tokio::time::timeout(PATIENCE, reads.wait_for(|n| *n >= 1))
        .await
        .unwrap_or_else(|_| panic!("nothing was decided while a commit ran"))
        .expect("the fake lives");
}

/// While batch 1 commits, batch 2 is decided on top of it (a command to the instance batch 1
/// creates is applied, as its second step), and batch 2 commits only after batch 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_decided_while_one_commits_and_commits_after_it() {
    let fake = Fake::new();
    let handle = writer(&fake);
    let first = handle.send(start("a", LATER)).await.expect("queued");
    commits_started(&fake, 1).await;
    let second = handle.send(keyed(event("a", "poke"), "k-2")).await.expect("queued");
    read_meanwhile(&fake).await;
    assert_eq!(*fake.started.borrow(), 1, "batch 2 waits for batch 1's commit");
    assert!(fake.db().committed.is_empty());

    fake.gate.add_permits(2);
    let first = first.await.expect("answered").expect("applied");
    let second = second.await.expect("answered").expect("applied on top of batch 1");
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(
        fake.db().committed,
        vec![vec![("a".to_owned(), 1)], vec![("a".to_owned(), 2)]],
        "committed in order, each once"
    );
}

/// Batch 2 was decided on batch 1's instance; batch 1 fails: batch 2 is decided again on what
/// is stored (no instance) and refused — never written on top of a write that did not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decided_on_one_that_fails_is_decided_again() {
    let fake = Fake::new();
    fake.db().outcomes.push_back(StoreError::Unavailable("disk full".into()));
    let handle = writer(&fake);
    let first = handle.send(start("a", LATER)).await.expect("queued");
    commits_started(&fake, 1).await;
    let second = handle.send(keyed(event("a", "poke"), "k-2")).await.expect("queued");
    read_meanwhile(&fake).await;

    fake.gate.add_permits(4);
    let first = first.await.expect("answered");
    assert!(matches!(first, Err(WriteError::Unavailable(_))), "{first:?}");
    let second = second.await.expect("answered");
    assert!(
        matches!(second, Err(WriteError::Rejected(crate::machine::Rejection::NotFound { .. }))),
        "decided again on what is stored: {second:?}"
    );
    assert!(fake.db().committed.is_empty(), "nothing written");
    assert!(fake.db().instances.is_empty());

    // The writer goes on: the instance can be started now, and poked.
    fake.gate.add_permits(2);
    handle.submit(start("a", LATER)).await.expect("started");
    assert_eq!(handle.submit(event("a", "poke")).await.expect("poked").seq, 2);
}

/// A request repeated while its first application commits is answered as the duplicate it
/// is (the batch in flight's request ids are the next batch's too), not applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_repeated_while_its_first_commits_is_a_duplicate() {
    let fake = Fake::new();
    let handle = writer(&fake);
    fake.gate.add_permits(1);
    handle.submit(start("a", LATER)).await.expect("started");
    let first = handle.send(keyed(event("a", "poke"), "k-1")).await.expect("queued");
    commits_started(&fake, 2).await;
    let again = handle.send(keyed(event("a", "poke"), "k-1")).await.expect("queued");
    read_meanwhile(&fake).await;

    fake.gate.add_permits(2);
    let first = first.await.expect("answered").expect("applied");
    let again = again.await.expect("answered").expect("answered");
    assert!(!first.duplicate);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.seq, first.seq);
    let db = fake.db();
    assert_eq!(db.committed.iter().flatten().filter(|(_, seq)| *seq == 2).count(), 1, "applied once");
    assert_eq!(db.instances["a"].seq, 2);
}

/// An archived case's number stays taken, whoever starts it: the writer refuses the start in the
/// batch that would commit it (so no archiving slips between a check and the commit), and
/// writes nothing; another id in the same batch starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_under_an_archived_number_is_refused_by_the_writer() {
    let fake = Fake::new();
    let archived = crate::store::ArchivedRow {
        id: "a".into(),
        state: "revoked".into(),
        instances: 1,
        created_at: 0,
        closed_at: 1,
        archive: "2024.jsonl.gz".into(),
        archived_at: 2,
    };
    fake.db().archived.insert("a".into(), archived.clone());
    let handle = writer(&fake);
    fake.gate.add_permits(2);
    let refused = handle.send(start("a", LATER)).await.expect("queued");
    let other = handle.send(start("b", LATER)).await.expect("queued");
    let refused = refused.await.expect("answered");
    assert!(matches!(&refused, Err(WriteError::Archived(a)) if **a == archived), "{refused:?}");
    other.await.expect("answered").expect("another number starts");
    let db = fake.db();
    assert!(!db.instances.contains_key("a"), "nothing written under the archived number");
    assert!(db.instances.contains_key("b"));
}
