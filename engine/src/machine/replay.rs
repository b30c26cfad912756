//! Replay: fold an instance's history back through [`decide`](super::decide) and compare what
//! comes out with what was stored. `shenguan admin verify` runs this over every instance.
//!
//! A divergence means the stored row or history does not follow from the commands, with the
//! definition loaded now and, for each entry, the calendar set it was computed with (its
//! generation): a bug, or a hand edit of the database.

use super::{decide, Command, CommandKind, HistoryEntry, Instance};
use crate::calendar::Calendars;
use crate::definition::Definition;

/// How replay disagrees with what was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    /// History is empty or does not start with a start command, or has a gap.
    #[error("history entry {seq}: {message}")]
    Malformed {
        /// Where.
        seq: u64,
        /// What.
        message: String,
    },
    /// `decide` refused a recorded command.
    #[error("history entry {seq}: replay rejected the recorded command: {message}")]
    Rejected {
        /// Where.
        seq: u64,
        /// The rejection.
        message: String,
    },
    /// `decide` produced another history entry than the recorded one.
    #[error("history entry {seq}: recorded {recorded}, replay gives {replayed}")]
    Entry {
        /// Where.
        seq: u64,
        /// The stored entry, summarised.
        recorded: String,
        /// The replayed entry, summarised.
        replayed: String,
    },
    /// The final replayed instance differs from the stored row.
    #[error("stored instance differs from replay: {field}: stored {stored}, replay gives {replayed}")]
    Row {
        /// The differing field.
        field: &'static str,
        /// Stored value.
        stored: String,
        /// Replayed value.
        replayed: String,
    },
}

fn summary(e: &HistoryEntry) -> String {
    format!(
        "{:?} -> {} armed {:?} cancelled {:?} messages {} handled {}",
        e.from, e.to, e.armed, e.cancelled, e.messages, e.handled
    )
}

/// Replays `history` (ascending seq) and checks it rebuilds `stored` exactly.
pub fn verify(
    def: &Definition,
    stored: &Instance,
    history: &[HistoryEntry],
    calendars: &dyn Fn(u64) -> Option<std::sync::Arc<Calendars>>,
) -> Result<(), Divergence> {
    let mut current: Option<Instance> = None;
    for (i, entry) in history.iter().enumerate() {
        let want_seq = i as u64 + 1;
        if entry.seq != want_seq {
            return Err(Divergence::Malformed {
                seq: entry.seq,
                message: format!("expected sequence number {want_seq}"),
            });
        }
        if i == 0 && !matches!(entry.command, CommandKind::Start { .. }) {
            return Err(Divergence::Malformed { seq: entry.seq, message: "the first entry is not a start".into() });
        }
        let command = Command {
            instance: stored.id.clone(),
            kind: entry.command.clone(),
            actor: entry.actor.clone(),
            request_id: entry.request_id.clone(),
            idempotency: None,
        };
        let Some(calendars) = calendars(entry.calendar) else {
            return Err(Divergence::Malformed {
                seq: entry.seq,
                message: format!("calendar generation {} is not in the database", entry.calendar),
            });
        };
        let t = decide(def, current.as_ref(), &command, entry.at, &calendars)
            .map_err(|r| Divergence::Rejected { seq: entry.seq, message: r.to_string() })?;
        if t.history != *entry {
            return Err(Divergence::Entry { seq: entry.seq, recorded: summary(entry), replayed: summary(&t.history) });
        }
        current = Some(t.instance);
    }
    let Some(replayed) = current else {
        return Err(Divergence::Malformed { seq: 0, message: "no history".into() });
    };
    let row = |field, stored: String, replayed: String| {
        if stored == replayed {
            Ok(())
        } else {
            Err(Divergence::Row { field, stored, replayed })
        }
    };
    row("state", stored.state.clone(), replayed.state.clone())?;
    row("seq", stored.seq.to_string(), replayed.seq.to_string())?;
    row("vars", format!("{:?}", stored.vars), format!("{:?}", replayed.vars))?;
    // Timers armed before timers carried their plan have none stored: compare them without.
    let mut replayed_timers = replayed.timers.clone();
    for (name, timer) in &mut replayed_timers {
        if stored.timers.get(name).is_some_and(|s| s.plan.is_none()) {
            timer.plan = None;
        }
    }
    row("timers", format!("{:?}", stored.timers), format!("{replayed_timers:?}"))?;
    row("version", stored.version.to_string(), replayed.version.to_string())?;
    row("created_at", stored.created_at.to_string(), replayed.created_at.to_string())?;
    row("updated_at", stored.updated_at.to_string(), replayed.updated_at.to_string())?;
    Ok(())
}
