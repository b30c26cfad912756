//! Row decoding shared by both backends: a stored instance, history entry, timer, message,
//! calendar file or re-plan means the same on SQLite and PostgreSQL, so it is decoded by one
//! function. [`Get`] is the little each backend's row type must answer (every integer column is
//! read as `i64`, every boolean as `bool`, on both).

use sqlx::Row;

use super::{
    DeliveryState, Error, IdempotencyRow, InstanceRow, ReplanJob, StoredCalendarFile, StoredConsumer, StoredMessage,
    TimerRow,
};
use crate::calendar::CalendarFile;
use crate::machine::{CommandKind, HistoryEntry};

/// Typed column access on a backend's row.
pub(crate) trait Get {
    /// A text column.
    fn text(&self, column: &str) -> Result<String, Error>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, Error>;
    /// An integer column.
    fn int(&self, column: &str) -> Result<i64, Error>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, Error>;
    /// A boolean column.
    fn flag(&self, column: &str) -> Result<bool, Error>;
}

macro_rules! get_for {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, column: &str) -> Result<String, Error> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, Error> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64, Error> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, Error> {
                Ok(self.try_get(column)?)
            }
            fn flag(&self, column: &str) -> Result<bool, Error> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

get_for!(sqlx::sqlite::SqliteRow);
get_for!(sqlx::postgres::PgRow);

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("{what}: {e}"))
}

fn unsigned<T: TryFrom<i64>>(r: &impl Get, column: &str, what: &str) -> Result<T, Error>
where
    T::Error: std::fmt::Display,
{
    T::try_from(r.int(column)?).map_err(|e| corrupt(what, e))
}

pub(crate) fn instance(r: &impl Get) -> Result<InstanceRow, Error> {
    Ok(InstanceRow {
        id: r.text("id")?,
        workflow: r.text("workflow")?,
        version: unsigned(r, "version", "instances.version")?,
        state: r.text("state")?,
        vars: serde_json::from_str(&r.text("vars")?).map_err(|e| corrupt("instances.vars", e))?,
        timers: serde_json::from_str(&r.text("timers")?).map_err(|e| corrupt("instances.timers", e))?,
        seq: unsigned(r, "seq", "instances.seq")?,
        shard: unsigned(r, "shard", "instances.shard")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn history(r: &impl Get) -> Result<HistoryEntry, Error> {
    Ok(HistoryEntry {
        seq: unsigned(r, "seq", "history.seq")?,
        at: r.int("at")?,
        actor: r.text("actor")?,
        request_id: r.opt_text("request_id")?,
        command: serde_json::from_str::<CommandKind>(&r.text("command")?).map_err(|e| corrupt("history.command", e))?,
        from: r.opt_text("from_state")?,
        to: r.text("to_state")?,
        armed: serde_json::from_str(&r.text("armed")?).map_err(|e| corrupt("history.armed", e))?,
        cancelled: serde_json::from_str(&r.text("cancelled")?).map_err(|e| corrupt("history.cancelled", e))?,
        messages: unsigned(r, "messages", "history.messages")?,
        handled: r.flag("handled")?,
        calendar: unsigned(r, "calendar", "history.calendar")?,
    })
}

/// The columns [`idempotency`] reads.
pub(crate) const IDEMPOTENCY_COLUMNS: &str = "key, instance_id, seq, fingerprint, created_at";

/// A stored idempotency key (selected with [`IDEMPOTENCY_COLUMNS`]): its key and row.
pub(crate) fn idempotency(r: &impl Get) -> Result<(String, IdempotencyRow), Error> {
    let row = IdempotencyRow {
        instance: r.text("instance_id")?,
        seq: unsigned(r, "seq", "idempotency.seq")?,
        fingerprint: r.text("fingerprint")?,
        created_at: r.int("created_at")?,
    };
    Ok((r.text("key")?, row))
}

pub(crate) fn timer(r: &impl Get) -> Result<TimerRow, Error> {
    Ok(TimerRow { due: r.int("due_at")?, instance: r.text("instance_id")?, name: r.text("name")? })
}

/// A stored message; a state the schema does not know is damaged data, not a default.
pub(crate) fn message(r: &impl Get) -> Result<StoredMessage, Error> {
    let status = r.text("status")?;
    let status = DeliveryState::parse(&status)
        .ok_or_else(|| Error::Corrupt(format!("outbox message with the unknown state {status:?}")))?;
    let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(StoredMessage {
        id: unsigned(r.int("id")?),
        key: r.text("key")?,
        instance: r.text("instance_id")?,
        seq: unsigned(r.int("seq")?),
        message: crate::machine::Message {
            channel: r.text("channel")?,
            recipient: r.opt_text("recipient")?,
            body: r.text("body")?,
            template: r.opt_text("template")?,
            kind: r.opt_text("kind")?,
            schema_version: u32::try_from(r.int("schema_version")?).unwrap_or(0),
            data: r
                .opt_text("data")?
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| corrupt("an outbox message's data", e))?,
        },
        created_at: r.int("created_at")?,
        destination: r.opt_text("destination")?,
        status,
        attempts: u32::try_from(r.int("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: r.int("next_attempt_at")?,
        last_error: r.opt_text("last_error")?,
        receipt: r.opt_text("receipt")?,
        delivered_at: r.opt_int("delivered_at")?,
        first_failed_at: r.opt_int("first_failed_at")?,
    })
}

/// The columns [`consumer`] reads, on both backends.
pub(crate) const CONSUMER_COLUMNS: &str = "name, owner, acked, channels, updated_at";

pub(crate) fn consumer(r: &impl Get) -> Result<StoredConsumer, Error> {
    Ok(StoredConsumer {
        name: r.text("name")?,
        owner: r.text("owner")?,
        acked: u64::try_from(r.int("acked")?).unwrap_or(0),
        channels: super::channels_of_column(&r.text("channels")?),
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn calendar_file(r: &impl Get) -> Result<StoredCalendarFile, Error> {
    let name = r.text("name")?;
    let text = r.text("text")?;
    // Stored files were checked when loaded; one that no longer parses is damage.
    let file = CalendarFile::parse(&name, &text).map_err(|e| corrupt("calendar_files.text", e))?;
    Ok(StoredCalendarFile {
        generation: unsigned(r, "generation", "calendar_files.generation")?,
        version: unsigned(r, "version", "calendar_files.version")?,
        file,
        loaded_by: r.text("loaded_by")?,
        loaded_at: r.int("loaded_at")?,
    })
}

fn date(text: &str, what: &str) -> Result<chrono::NaiveDate, Error> {
    crate::calendar::parse_date(text).ok_or_else(|| corrupt(what, text))
}

pub(crate) fn replan(r: &impl Get) -> Result<ReplanJob, Error> {
    Ok(ReplanJob {
        generation: unsigned(r, "generation", "replans.generation")?,
        first: date(&r.text("first")?, "replans.first")?,
        last: date(&r.text("last")?, "replans.last")?,
        label: r.text("label")?,
        after: r.opt_text("after_instance")?.zip(r.opt_text("after_name")?),
        moved: unsigned(r, "moved", "replans.moved")?,
        done: r.flag("done")?,
    })
}

/// The text a calendar file's key is stored as.
pub(crate) fn key_text(key: &crate::calendar::FileKey) -> String {
    match key {
        crate::calendar::FileKey::Year(y) => format!("year:{y}"),
        crate::calendar::FileKey::Region(code) => format!("region:{code}"),
    }
}

pub(crate) fn catalog_version(r: &impl Get) -> Result<crate::catalog::Version, Error> {
    let kind = r.text("kind")?;
    Ok(crate::catalog::Version {
        kind: crate::catalog::Kind::parse(&kind)
            .filter(|k| k.name() == kind)
            .ok_or_else(|| corrupt("catalog_versions.kind", &kind))?,
        version: unsigned(r, "version", "catalog_versions.version")?,
        actor: r.text("actor")?,
        at: r.int("at")?,
        comment: r.text("comment")?,
        changes: serde_json::from_str(&r.text("changes")?).map_err(|e| corrupt("catalog_versions.changes", e))?,
        rows: serde_json::from_str(&r.text("rows")?).map_err(|e| corrupt("catalog_versions.rows", e))?,
    })
}

pub(crate) fn subject(r: &impl Get) -> Result<super::Subject, Error> {
    Ok(super::Subject {
        row: super::SubjectRow {
            code: r.text("code")?,
            instance: r.text("instance_id")?,
            workflow: r.text("workflow")?,
            item: r.text("item")?,
            grade: r.text("grade")?,
            created_at: r.int("created_at")?,
        },
        state: r.text("state")?,
    })
}

/// The columns of a catalog version, as a literal both statements below are made from.
macro_rules! catalog_columns {
    () => {
        "SELECT kind, version, actor, at, comment, changes, rows FROM catalog_versions c "
    };
}

/// The newest version of every kind (the same text on both backends).
pub(crate) const LATEST_CATALOGS: &str = concat!(
    catalog_columns!(),
    "WHERE version = (SELECT max(version) FROM catalog_versions d WHERE d.kind = c.kind) ORDER BY kind"
);

/// Every version of one kind, oldest first; the kind is the one parameter, written as the
/// backend's `placeholder` (`?` or `$1`).
pub(crate) fn catalog_history_sql(placeholder: &str) -> String {
    format!("{}WHERE kind = {placeholder} ORDER BY version", catalog_columns!())
}

/// The columns of a subject joined with its instance's state.
pub(crate) const SUBJECT_COLUMNS: &str =
    "SELECT s.code, s.instance_id, s.workflow, s.item, s.grade, s.created_at, i.state FROM subjects s \
     JOIN instances i ON i.id = s.instance_id ";

/// The columns [`archived`] decodes, for [`ARCHIVED_COLUMNS`] and [`ARCHIVED`] alike.
macro_rules! archived_columns {
    () => {
        "id, state, instances, created_at, closed_at, archive, archived_at"
    };
}

/// The columns [`archived`] decodes.
pub(crate) const ARCHIVED_COLUMNS: &str = archived_columns!();

/// An archived case's record, by id (`$1` on both backends).
pub(crate) const ARCHIVED: &str = concat!("SELECT ", archived_columns!(), " FROM archived WHERE id = $1");

/// A row of `archived`.
pub(crate) fn archived(r: &impl Get) -> Result<super::ArchivedRow, Error> {
    Ok(super::ArchivedRow {
        id: r.text("id")?,
        state: r.text("state")?,
        instances: u32::try_from(r.int("instances")?).unwrap_or(u32::MAX),
        created_at: r.int("created_at")?,
        closed_at: r.int("closed_at")?,
        archive: r.text("archive")?,
        archived_at: r.int("archived_at")?,
    })
}
