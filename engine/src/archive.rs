//! Data lifecycle: closed cases written to an archive file, then removed (issue 25).
//!
//! This module owns what "archivable" means, the archive's format and reading one back. The
//! export reads through [`ReadStore`] (what is committed); the removal goes through the writer
//! ([`crate::writer::Handle::remove_archived`]), which alone writes the database and holds the
//! instance cache, a few cases per transaction between batches; the statements are the store's
//! ([`crate::store::Store::remove_archived`]).
//!
//! A case is archivable when it closed before the given instant: the case is in a terminal
//! state (revoked, or licensed and closed) and so is every one of its supervision tasks, none
//! of them changed since, none has a timer armed, and every message of theirs has been settled
//! — delivered, discarded, or (stream only) acknowledged by every consumer that wants its
//! channel. Retention never prunes what a consumer has not read; nor does the archive. A closed
//! case that fails the last two tests is held back, with the reason, for a later run.
//!
//! The statistics counters are left as they are: the figures of archived periods keep counting
//! the archived cases (§21), and a figure's ids then lead to the archive (`archive show`).
//!
//! # The file
//! gzip-compressed JSON lines: a [`Header`], one [`CaseRecord`] per case, a [`Trailer`] with
//! the number of cases. A file without its trailer is incomplete (the writer was interrupted):
//! nothing in it was removed from the database (the command line asks for a removal only once
//! the file is whole and synced).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::definition::Registry;
use crate::machine::{HistoryEntry, Message};
use crate::store::{DeliveryState, Error, Filter, InstanceRow, ReadStore, Removal, StoredConsumer, StoredMessage};

/// The format's version, in every header.
pub const FORMAT: u32 = 1;

/// Most cases one export page holds.
pub const MAX_PAGE: u32 = 1_000;

/// Most cases removed in one writer transaction: the writer serves other requests between two.
pub const REMOVE_CHUNK: usize = 20;

/// The archive's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`] for files this version writes.
    pub shenguan_archive: u32,
    /// Cases closed before this day (`YYYY-MM-DD`, China Standard Time).
    pub before: String,
    /// When the archive was written (RFC 3339).
    pub written_at: String,
    /// The server it was taken from.
    pub server: String,
}

/// The archive's last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Number of [`CaseRecord`] lines.
    pub cases: u64,
}

/// One line of the archive: a case with its tasks, each with its history and messages.
/// `case_id` comes first, so that a reader looking for one case can skip the others cheaply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The case id.
    pub case_id: String,
    /// Its final state.
    pub state: String,
    /// When it started (ms since the epoch, UTC).
    pub created_at: Millis,
    /// The last change of the case or of one of its tasks.
    pub closed_at: Millis,
    /// The case first, then its tasks in id order.
    pub instances: Vec<InstanceRecord>,
}

/// An instance as stored, with its history and messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// The row: id, workflow, version, final state, variables, timers (none), history length,
    /// shard, start and last change.
    #[serde(flatten)]
    pub row: InstanceRow,
    /// Every history entry, in order.
    pub history: Vec<HistoryEntry>,
    /// Every message its transitions wrote that the outbox still held, in order.
    pub messages: Vec<MessageRecord>,
}

/// A message as the outbox held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The key receivers deduplicated on.
    pub key: String,
    /// The history entry that wrote it.
    pub seq: u64,
    /// Channel, recipient, text, record.
    pub message: Message,
    /// When it was written.
    pub created_at: Millis,
    /// Where it was pushed, if anywhere.
    pub destination: Option<String>,
    /// `delivered`, `stream` or `discarded`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The receiver's answer.
    pub receipt: Option<String>,
    /// When it was delivered (wall-clock ms).
    pub delivered_at: Option<Millis>,
}

impl MessageRecord {
    fn of(m: &StoredMessage) -> Self {
        MessageRecord {
            key: m.key.clone(),
            seq: m.seq,
            message: m.message.clone(),
            created_at: m.created_at,
            destination: m.destination.clone(),
            status: m.status.as_str().to_owned(),
            attempts: m.attempts,
            receipt: m.receipt.clone(),
            delivered_at: m.delivered_at,
        }
    }
}

/// A case ready to archive: its line, and what removing it must find unchanged.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The archive line.
    pub record: CaseRecord,
    /// The removal it becomes once the line is durable.
    pub removal: Removal,
}

/// One page of an export.
#[derive(Debug, Default)]
pub struct Page {
    /// Cases ready to archive, in id order.
    pub ready: Vec<Ready>,
    /// Closed cases kept back this time: (case id, why).
    pub held_back: Vec<(String, String)>,
    /// The last case id this page looked at: the next page starts after it. `None`: no more.
    pub next: Option<String>,
}

/// Whether `row` is in a terminal state of the definition it runs on.
fn terminal(registry: &Registry, row: &InstanceRow) -> bool {
    registry.get(&row.workflow, row.version).and_then(|d| d.state(&row.state)).is_some_and(|s| s.terminal)
}

/// Why a message keeps its instance in the database, if it does: not yet settled, or (stream
/// only) not yet acknowledged by a consumer that wants its channel.
fn unsettled(m: &StoredMessage, consumers: &[StoredConsumer]) -> Option<String> {
    match m.status {
        DeliveryState::Pending => Some(format!("message {} is still to be delivered", m.key)),
        DeliveryState::Dead => Some(format!("message {} is a dead letter (retry or discard it first)", m.key)),
        DeliveryState::Stream => consumers
            .iter()
            .find(|c| c.acked < m.id && (c.channels.is_empty() || c.channels.contains(&m.message.channel)))
            .map(|c| format!("stream consumer {} has not acknowledged message {}", c.name, m.key)),
        DeliveryState::Delivered | DeliveryState::Discarded => None,
    }
}

/// Up to `limit` cases after `after` (in id order) that closed before `before`, each read
/// whole. Cases that are not closed, or closed later, are passed over; closed ones that cannot
/// go yet are held back with the reason.
pub async fn export_page(
    reader: &dyn ReadStore,
    registry: &Registry,
    before: Millis,
    after: Option<&str>,
    limit: u32,
) -> Result<Page, Error> {
    let case_workflow = crate::domain::CASE_WORKFLOW;
    let states: BTreeSet<String> = registry
        .all()
        .filter(|d| d.name == case_workflow)
        .flat_map(|d| d.states.iter().filter(|s| s.terminal).map(|s| s.name.clone()))
        .collect();
    let filter = Filter {
        workflow: case_workflow.to_owned(),
        states_in: states.into_iter().collect(),
        created_before: Some(before),
        after: after.map(str::to_owned),
        limit: Some(limit.clamp(1, MAX_PAGE)),
        ..Filter::default()
    };
    let cases = reader.list(&filter).await?;
    let consumers = reader.consumers().await?;
    let mut page = Page { next: cases.last().map(|c| c.id.clone()), ..Page::default() };
    for case in cases {
        match examine(reader, registry, &consumers, before, case).await? {
            Examined::Open => {}
            Examined::HeldBack(id, why) => page.held_back.push((id, why)),
            Examined::Ready(ready) => page.ready.push(*ready),
        }
    }
    Ok(page)
}

/// What [`examine`] found.
#[derive(Debug)]
pub enum Examined {
    /// Not closed before the day (or not at all): not a candidate.
    Open,
    /// Closed, and cannot go yet: (case id, why).
    HeldBack(String, String),
    /// Ready to archive.
    Ready(Box<Ready>),
}

/// Whether the case `id` can be archived as closed before `before`, read whole if so;
/// `consumers` are the stream's, read once for every case a call examines.
pub async fn examine_id(
    reader: &dyn ReadStore,
    registry: &Registry,
    consumers: &[StoredConsumer],
    before: Millis,
    id: &str,
) -> Result<Examined, Error> {
    let Some(case) = reader.instance(id).await?.filter(|r| r.workflow == crate::domain::CASE_WORKFLOW) else {
        return Ok(Examined::Open);
    };
    examine(reader, registry, consumers, before, case).await
}

async fn examine(
    reader: &dyn ReadStore,
    registry: &Registry,
    consumers: &[StoredConsumer],
    before: Millis,
    case: InstanceRow,
) -> Result<Examined, Error> {
    let tasks = crate::auth::visibility::tasks_of(reader, &case.id).await?;
    let mut rows = vec![case];
    rows.extend(tasks);
    let closed_at = rows.iter().map(|r| r.updated_at).max().unwrap_or(0);
    if closed_at >= before || !rows.iter().all(|r| terminal(registry, r)) {
        return Ok(Examined::Open);
    }
    Ok(match read_case(reader, registry, rows, consumers).await? {
        Ok(ready) => Examined::Ready(Box::new(ready)),
        Err((id, why)) => Examined::HeldBack(id, why),
    })
}

/// A closed case's line and removal, or why it is held back.
async fn read_case(
    reader: &dyn ReadStore,
    registry: &Registry,
    rows: Vec<InstanceRow>,
    consumers: &[StoredConsumer],
) -> Result<Result<Ready, (String, String)>, Error> {
    let case_id = rows[0].id.clone();
    let mut tally = crate::domain::figures::Tally::default();
    for row in &rows {
        tally.change(None::<&InstanceRow>, Some(row));
    }
    let mut instances = Vec::with_capacity(rows.len());
    let mut subjects = Vec::new();
    let mut keyed_at = std::collections::BTreeSet::new();
    for row in rows {
        if let Some(name) = row.timers.keys().next() {
            return Ok(Err((case_id, format!("{} still has timer {name} armed", row.id))));
        }
        let messages = reader.outbox_of(&row.id).await?;
        if let Some(why) = messages.iter().find_map(|m| unsettled(m, consumers)) {
            return Ok(Err((case_id, why)));
        }
        let history = reader.history(&row.id).await?;
        if history.len() as u64 != row.seq {
            return Err(Error::Corrupt(format!(
                "instance {} has {} history entries, its row says {}",
                row.id,
                history.len(),
                row.seq
            )));
        }
        keyed_at.extend(history.iter().map(|h| (row.id.clone(), h.at)));
        let index = registry.get(&row.workflow, row.version).and_then(|d| d.index.as_ref());
        if let Some(code) = index.and_then(|spec| spec.code(|name| row.vars.get(name).and_then(|v| v.as_str()))) {
            subjects.push((code, row.id.clone()));
        }
        instances.push(InstanceRecord { row, history, messages: messages.iter().map(MessageRecord::of).collect() });
    }
    let case = &instances[0];
    let removal = Removal {
        case: case_id.clone(),
        instances: instances.iter().map(|i| (i.row.id.clone(), i.row.seq)).collect(),
        subjects,
        keyed_at: keyed_at.into_iter().collect(),
        state: case.row.state.clone(),
        created_at: case.row.created_at,
        closed_at: instances.iter().map(|i| i.row.updated_at).max().unwrap_or(0),
        figures: tally.rows(),
    };
    let record = CaseRecord {
        case_id,
        state: removal.state.clone(),
        created_at: removal.created_at,
        closed_at: removal.closed_at,
        instances,
    };
    Ok(Ok(Ready { record, removal }))
}

/// Why an archive file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read, or is not gzip.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Line `line` is not what the format says.
    #[error("line {line}: {message}")]
    Format {
        /// 1-based.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The file ends without its trailer: its writing was interrupted.
    #[error("the archive ends after {cases} cases without its closing line: it is incomplete")]
    Incomplete {
        /// Cases read.
        cases: u64,
    },
}

/// Longest line read back: a case with its tasks, history and messages is far below this; a
/// longer line is not an archive's.
const MAX_LINE: usize = 64 << 20;

/// Reads an archive line by line: the header first, then each case in turn.
pub struct Reader<R: std::io::BufRead> {
    input: R,
    line: u64,
    cases: u64,
    ended: bool,
    buf: String,
}

impl<R: std::io::BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<(Self, Header), ReadError> {
        let mut reader = Reader { input, line: 0, cases: 0, ended: false, buf: String::new() };
        if !reader.next_line()? {
            return Err(ReadError::Format { line: 1, message: "empty: not a shenguan archive".into() });
        }
        let header: Header = serde_json::from_str(&reader.buf)
            .map_err(|e| ReadError::Format { line: 1, message: format!("not a shenguan archive header: {e}") })?;
        if header.shenguan_archive != FORMAT {
            return Err(ReadError::Format {
                line: 1,
                message: format!("archive format {} (this version reads format {FORMAT})", header.shenguan_archive),
            });
        }
        Ok((reader, header))
    }

    fn next_line(&mut self) -> Result<bool, ReadError> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        let n = (&mut self.input).take(MAX_LINE as u64 + 1).read_line(&mut self.buf)?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        if self.buf.len() > MAX_LINE {
            return Err(ReadError::Format { line: self.line, message: format!("longer than {MAX_LINE} bytes") });
        }
        Ok(true)
    }

    /// The next case, `None` after the trailer. A file that ends before its trailer is
    /// [`ReadError::Incomplete`].
    pub fn next_case(&mut self) -> Result<Option<CaseRecord>, ReadError> {
        self.next_matching(|_| true)
    }

    /// The next case whose line `wanted` accepts (given the case id), skipping the others
    /// without decoding them whole.
    pub fn next_matching(&mut self, wanted: impl Fn(&str) -> bool) -> Result<Option<CaseRecord>, ReadError> {
        #[derive(Deserialize)]
        struct Id {
            case_id: String,
        }
        loop {
            if self.ended {
                return Ok(None);
            }
            if !self.next_line()? {
                return Err(ReadError::Incomplete { cases: self.cases });
            }
            let line = self.line;
            let bad = |e: serde_json::Error| ReadError::Format { line, message: e.to_string() };
            if self.buf.starts_with("{\"cases\":") {
                let trailer: Trailer = serde_json::from_str(&self.buf).map_err(bad)?;
                if trailer.cases != self.cases {
                    return Err(ReadError::Format {
                        line,
                        message: format!(
                            "the closing line counts {} cases, the file holds {}",
                            trailer.cases, self.cases
                        ),
                    });
                }
                self.ended = true;
                return Ok(None);
            }
            self.cases += 1;
            // Only the id is decoded of the cases passed over (serde stops at the first field
            // it needs and skips the rest without building it).
            let Id { case_id } = serde_json::from_str(&self.buf).map_err(bad)?;
            if wanted(&case_id) {
                return serde_json::from_str(&self.buf).map(Some).map_err(bad);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> CaseRecord {
        CaseRecord { case_id: id.into(), state: "revoked".into(), created_at: 1, closed_at: 2, instances: Vec::new() }
    }

    fn file(lines: &[String]) -> std::io::Cursor<Vec<u8>> {
        std::io::Cursor::new(lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes())
    }

    fn header() -> String {
        serde_json::to_string(&Header {
            shenguan_archive: FORMAT,
            before: "2021-01-01".into(),
            written_at: "2026-12-07T00:00:00Z".into(),
            server: "http://127.0.0.1:50051".into(),
        })
        .expect("json")
    }

    fn line<T: Serialize>(t: &T) -> String {
        serde_json::to_string(t).expect("json")
    }

    #[test]
    fn a_whole_file_reads_back_case_by_case_and_one_case_is_found_by_id() {
        let lines = [header(), line(&record("A")), line(&record("B")), line(&Trailer { cases: 2 })];
        let (mut r, h) = Reader::new(file(&lines)).expect("header");
        assert_eq!(h.before, "2021-01-01");
        assert_eq!(r.next_case().expect("A"), Some(record("A")));
        assert_eq!(r.next_case().expect("B"), Some(record("B")));
        assert_eq!(r.next_case().expect("end"), None);
        let (mut r, _) = Reader::new(file(&lines)).expect("header");
        assert_eq!(r.next_matching(|id| id == "B").expect("B"), Some(record("B")));
        let (mut r, _) = Reader::new(file(&lines)).expect("header");
        assert_eq!(r.next_matching(|id| id == "C").expect("none"), None);
    }

    #[test]
    fn a_file_cut_short_or_miscounted_or_foreign_is_refused_with_its_line() {
        let cut = [header(), line(&record("A"))];
        let (mut r, _) = Reader::new(file(&cut)).expect("header");
        r.next_case().expect("A");
        assert!(matches!(r.next_case(), Err(ReadError::Incomplete { cases: 1 })));

        let miscounted = [header(), line(&record("A")), line(&Trailer { cases: 3 })];
        let (mut r, _) = Reader::new(file(&miscounted)).expect("header");
        r.next_case().expect("A");
        assert!(matches!(r.next_case(), Err(ReadError::Format { line: 3, .. })));

        assert!(matches!(Reader::new(file(&["{\"a\":1}".into()])), Err(ReadError::Format { line: 1, .. })));
        assert!(matches!(Reader::new(file(&[])), Err(ReadError::Format { line: 1, .. })));
        let future = header().replace("\"shenguan_archive\":1", "\"shenguan_archive\":9");
        assert!(matches!(Reader::new(file(&[future])), Err(ReadError::Format { line: 1, .. })));
        let garbage = [header(), "not json".into()];
        let (mut r, _) = Reader::new(file(&garbage)).expect("header");
        assert!(matches!(r.next_case(), Err(ReadError::Format { line: 2, .. })));
    }

    #[test]
    fn a_removal_goes_ahead_only_on_what_was_archived() {
        let removal = Removal {
            case: "C".into(),
            instances: vec![("C".into(), 4), ("C/T1".into(), 6)],
            subjects: Vec::new(),
            keyed_at: Vec::new(),
            state: "closed".into(),
            created_at: 0,
            closed_at: 0,
            figures: Vec::new(),
        };
        let same = [("C/T1".to_owned(), 6), ("C".to_owned(), 4)];
        assert!(removal.unchanged(&same, 0));
        assert!(!removal.unchanged(&same, 1), "a message waiting for delivery");
        assert!(!removal.unchanged(&[("C".into(), 5), ("C/T1".into(), 6)], 0), "a step more");
        assert!(!removal.unchanged(&[("C".into(), 4)], 0), "a task gone");
        let more = [("C".to_owned(), 4), ("C/T1".to_owned(), 6), ("C/T2".to_owned(), 1)];
        assert!(!removal.unchanged(&more, 0), "a task more");
        assert!(!removal.unchanged(&[], 0), "gone");
    }
}
