//! Loading a calendar into a running engine, and the re-plans it starts ([`Planner`]).
//!
//! A loaded file is stored in a transaction of its own with the re-plan job it starts (the
//! range of days whose working-day status changed); the new set is then in force for every
//! later batch. The re-plan moves every working-day timer in that range, a page per writer
//! batch: [`Planner::next_page`] names the instances, the writer decides a `Replan` command
//! for each in the batch, and [`Planner::page_committed`] moves the job on once it commits.
//!
//! The writer owns the [`Planner`] and calls it between batches, so a load is ordered after
//! the commands queued before it (they were sent under the old calendar), and re-planning
//! shares the database's one writer with callers.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{CalendarFile, Calendars, Live};
use crate::clock::Millis;
use crate::machine::{Command, CommandKind};
use crate::store::{Batch, ReplanJob, Store, StoredCalendarFile};

/// After a failed re-plan page, the next is tried this much later (commands go on meanwhile).
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Fewest re-plans in a batch that also carries callers' commands.
const BESIDE_COMMANDS: u32 = 25;

/// A calendar file to load.
#[derive(Debug, Clone)]
pub struct CalendarLoad {
    /// The file, checked alone ([`CalendarFile::parse`]).
    pub file: CalendarFile,
    /// Who loads it.
    pub loaded_by: String,
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The stored file.
    pub stored: StoredCalendarFile,
    /// The re-plan it started (`None`: no working day changed, nothing to re-plan).
    pub replan: Option<ReplanJob>,
}

/// Why a load was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file does not fit the calendars in force (a year twice, a day both off and on…).
    #[error(transparent)]
    Invalid(#[from] super::Error),
    /// It could not be stored; nothing changed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The engine is stopping.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// The label history entries give a calendar file: `national 2027 v2, <source>`.
pub fn calendar_label(stored: &StoredCalendarFile) -> String {
    format!("{} v{}, {}", stored.file.key, stored.version, stored.file.source)
}

/// The calendar set that loading `file` on top of `files` gives, as of the next generation.
pub fn calendars_with(
    files: &[StoredCalendarFile],
    file: &CalendarFile,
    policy: super::Policy,
) -> Result<(Calendars, u64, u32), super::Error> {
    let generation = files.last().map_or(0, |f| f.generation) + 1;
    let version = u32::try_from(files.iter().filter(|f| f.file.key == file.key).count()).unwrap_or(u32::MAX - 1) + 1;
    let mut all: Vec<CalendarFile> = files.iter().map(|f| f.file.clone()).collect();
    all.push(file.clone());
    Ok((Calendars::from_files(&all, generation)?.with_policy(policy), generation, version))
}

/// A page of a re-plan: the instances whose working-day timers it moves in this batch.
#[derive(Debug, Clone)]
pub struct Page {
    /// The instances, each once.
    pub instances: Vec<String>,
    /// The job as it stands if the page commits; the writer adds the instances it moved to
    /// `moved` before recording it.
    pub job: ReplanJob,
}

impl Page {
    /// The command that re-plans `instance`.
    pub fn command(&self, instance: &str) -> Command {
        Command {
            instance: instance.to_owned(),
            kind: CommandKind::Replan { calendar: self.job.label.clone() },
            actor: "calendar".to_owned(),
            request_id: None,
            idempotency: None,
        }
    }
}

/// The calendar files the database holds and the re-plans still to run.
#[derive(Debug)]
pub struct Planner {
    live: Arc<Live>,
    /// Every calendar file the database holds, in generation order.
    files: Vec<StoredCalendarFile>,
    /// Re-plans to run, oldest first; the front one advances a page per batch.
    jobs: VecDeque<ReplanJob>,
    /// After a failed re-plan page, the next waits until then.
    paused_until: Option<tokio::time::Instant>,
    /// How far re-planning got: the newest generation with nothing left to re-plan up to it.
    replanned: tokio::sync::watch::Sender<u64>,
}

impl Planner {
    /// A planner putting calendars in force in `live`, and a receiver of how far re-planning got.
    pub fn new(live: Arc<Live>) -> (Self, tokio::sync::watch::Receiver<u64>) {
        let (replanned, rx) = tokio::sync::watch::channel(0);
        (Planner { live, files: Vec::new(), jobs: VecDeque::new(), paused_until: None, replanned }, rx)
    }

    /// Whether a re-plan is running.
    pub fn running(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Until when the next page waits after a failure, if it does.
    pub fn paused_until(&self) -> Option<tokio::time::Instant> {
        self.paused_until
    }

    /// The pause is over.
    pub fn resume(&mut self) {
        self.paused_until = None;
    }

    /// The next page waits [`RETRY`] (a page could not be read, or its batch failed).
    pub fn pause(&mut self) {
        self.paused_until = Some(tokio::time::Instant::now() + RETRY);
    }

    /// Puts the stored calendars in force; with `resume`, also picks up unfinished re-plans
    /// (at start: a re-plan is run by the node that loaded the calendar, or resumed by any
    /// node that starts while it is unfinished). Without, only a newer generation than the one
    /// in force changes anything (another node loaded a file).
    pub async fn prepare<S: Store>(&mut self, store: &mut S, resume: bool) -> Result<(), crate::store::Error> {
        let files = store.calendar_files().await?;
        if !resume && files.last().map(|f| f.generation) == self.files.last().map(|f| f.generation) {
            return Ok(());
        }
        // A database opened without a seed holds no calendar: the calendars given stay in force.
        if !files.is_empty() {
            let generation = files.last().map_or(0, |f| f.generation);
            let all: Vec<CalendarFile> = files.iter().map(|f| f.file.clone()).collect();
            let calendars = Calendars::from_files(&all, generation)
                .map_err(|e| crate::store::Error::Corrupt(format!("stored calendars: {e}")))?;
            self.live.replace(calendars);
        }
        self.files = files;
        if !resume {
            tracing::info!(
                generation = self.files.last().map_or(0, |f| f.generation),
                "put a calendar another node loaded in force"
            );
            return Ok(());
        }
        self.jobs = store.replans().await?.into_iter().filter(|j| !j.done).collect();
        if let Some(job) = self.jobs.front() {
            tracing::info!(calendar = %job.label, after = ?job.after, "resuming an unfinished re-plan");
        }
        self.publish();
        Ok(())
    }

    /// Stores a calendar file in a transaction of its own with the re-plan it starts, then puts
    /// the new set in force: every later batch computes with it.
    pub async fn load<S: Store>(
        &mut self,
        store: &mut S,
        load: CalendarLoad,
        now: Millis,
    ) -> Result<Loaded, LoadError> {
        let current = self.live.current();
        let (calendars, generation, version) = calendars_with(&self.files, &load.file, current.policy())?;
        let stored =
            StoredCalendarFile { generation, version, file: load.file, loaded_by: load.loaded_by, loaded_at: now };
        let label = calendar_label(&stored);
        let replan = super::changed_range(&current, &calendars).map(|(first, last)| ReplanJob {
            generation,
            first,
            last,
            label: label.clone(),
            after: None,
            moved: 0,
            done: false,
        });
        let batch = Batch { calendar_file: Some(stored.clone()), replan: replan.clone(), ..Batch::default() };
        store.commit(&batch).await?;
        tracing::info!(calendar = %label, generation, replan = ?replan.as_ref().map(|j| (j.first, j.last)), "calendar loaded");
        self.live.replace(calendars);
        self.files.push(stored.clone());
        self.jobs.extend(replan.clone());
        self.publish();
        Ok(Loaded { stored, replan })
    }

    /// The next page of the running re-plan, sized for a batch carrying `commands` callers'
    /// commands: alone, a full `max_page`; beside commands, one re-plan per two commands — a
    /// re-plan costs about one and a half commands (BENCHMARKS.md), so callers keep more than
    /// half their rate. `None` when no re-plan runs or the page could not be read (the next
    /// then waits).
    pub async fn next_page<S: Store>(&mut self, store: &mut S, commands: usize, max_page: u32) -> Option<Page> {
        let job = self.jobs.front()?.clone();
        let page = match commands {
            0 => max_page,
            n => u32::try_from(n / 2).unwrap_or(u32::MAX).max(BESIDE_COMMANDS).min(max_page),
        }
        .max(1);
        let ids = match store.planned_timers(job.first, job.last, job.after.as_ref(), page).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, calendar = %job.label, "cannot read the next timers to re-plan; will try again");
                self.pause();
                return None;
            }
        };
        let mut instances: Vec<String> = ids.iter().map(|(i, _)| i.clone()).collect();
        instances.dedup();
        let job = ReplanJob { after: ids.last().cloned().or(job.after), done: ids.len() < page as usize, ..job };
        Some(Page { instances, job })
    }

    /// A page's batch committed, leaving the job as `job` (its `moved` counting the page's):
    /// the job advances, or is finished and dropped. Answers how many instances the page moved.
    pub fn page_committed(&mut self, job: ReplanJob) -> u64 {
        let moved = job.moved.saturating_sub(self.jobs.front().map_or(0, |j| j.moved));
        if job.done {
            tracing::info!(calendar = %job.label, instances = job.moved, "re-plan finished");
            self.jobs.pop_front();
            self.publish();
        } else if let Some(front) = self.jobs.front_mut() {
            *front = job;
        }
        moved
    }

    /// Publishes the newest generation with nothing left to re-plan up to it.
    fn publish(&self) {
        let newest = self.files.last().map_or(0, |f| f.generation);
        let done = self.jobs.front().map_or(newest, |j| j.generation.saturating_sub(1));
        self.replanned.send_replace(done);
    }
}
