//! The gRPC surface. INVARIANT: the only module that knows tonic and proto types (besides the
//! generated `proto` and the server that mounts these services).
//!
//! Each handler: validate the request (InvalidArgument naming the field, before anything is
//! written) → build commands → submit them (one atomic group when a call changes several
//! instances, e.g. a case and its tasks) → answer from what was committed.
//!
//! # Layout
//! - [`intake`]: `IntakeService` (the integrated government service platform).
//! - [`supervision`]: `SupervisionService` (supervision platforms).
//! - [`admin`]: `AdminService` (timelines, queries, statistics, the sandbox clock).
//! - [`engine`]: `EngineService` (any workflow: start, signal).
//! - [`view`]: domain → proto. [`status`]: errors → `tonic::Status`.

pub mod admin;
pub mod engine;
pub mod intake;
pub mod status;
pub mod supervision;
pub mod view;

use std::sync::Arc;

use chrono::NaiveDate;
use tonic::{Request, Status};

use crate::calendar::{Calendar, Calendars};
use crate::clock::{Clock, VirtualClock};
use crate::definition::Registry;
use crate::engine::Engine;
use crate::machine::{Command, CommandKind};
use crate::store::read::Reader;

/// Largest page a listing returns.
pub const MAX_PAGE: u32 = 500;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE: u32 = 50;

/// What every service shares.
pub struct Shared {
    /// The engine (writer and timers).
    pub engine: Arc<Engine>,
    /// Read-only queries.
    pub reader: Reader,
    /// Definitions.
    pub registry: Arc<Registry>,
    /// Calendars.
    pub calendars: Arc<Calendars>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Present in sandbox mode (`--virtual-clock`): the clock `AdvanceClock` moves.
    pub virtual_clock: Option<VirtualClock>,
    /// Credit grades that may not take the commitment route.
    pub barred_grades: Vec<String>,
}

impl Shared {
    /// Today in the region's time zone.
    pub fn today(&self, calendar: &Calendar) -> NaiveDate {
        calendar.local_date(crate::clock::to_datetime(self.clock.now()))
    }
}

/// Who is calling: the `x-shenguan-actor` metadata, else the service's default.
pub fn actor<T>(request: &Request<T>, default: &str) -> Result<String, Status> {
    match request.metadata().get("x-shenguan-actor") {
        None => Ok(default.to_owned()),
        Some(v) => {
            let s = v.to_str().map_err(|_| status::invalid("x-shenguan-actor", "must be ASCII"))?;
            crate::domain::check_text(s, 128).map_err(|e| status::invalid("x-shenguan-actor", e))?;
            Ok(s.to_owned())
        }
    }
}

/// The caller's idempotency key, from `x-request-id` metadata.
pub fn request_id<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    match request.metadata().get("x-request-id") {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| status::invalid("x-request-id", "must be ASCII"))?;
            crate::domain::check_text(s, 128).map_err(|e| status::invalid("x-request-id", e))?;
            Ok(Some(s.to_owned()))
        }
    }
}

/// A JSON object from a `json!` literal built by a handler (anything else is no fields).
pub fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A command delivering event `name` with `fields` to `instance`.
pub fn event(
    instance: &str,
    name: &str,
    fields: serde_json::Value,
    actor: &str,
    request_id: Option<String>,
) -> Command {
    Command {
        instance: instance.to_owned(),
        kind: CommandKind::Event { name: name.to_owned(), fields: object(fields) },
        actor: actor.to_owned(),
        request_id,
    }
}

/// A date field: `YYYY-MM-DD`.
pub fn date(field: &str, text: &str) -> Result<NaiveDate, Status> {
    crate::calendar::parse_date(text)
        .ok_or_else(|| status::invalid(field, format!("{text:?} is not a date YYYY-MM-DD")))
}

/// Checks a field with a `domain` check, naming the field on failure.
pub fn check(field: &str, result: Result<(), String>) -> Result<(), Status> {
    result.map_err(|e| status::invalid(field, e))
}

/// Page size and position from a `PageRequest`.
pub fn page(page: Option<&crate::proto::PageRequest>) -> Result<(u32, Option<String>), Status> {
    let Some(p) = page else { return Ok((DEFAULT_PAGE, None)) };
    let size = match p.page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    if p.page_token.is_empty() {
        return Ok((size, None));
    }
    let bad = || status::invalid("page.page_token", "is not a token this server issued");
    if p.page_token.len() > 512 || p.page_token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> =
        (0..p.page_token.len()).step_by(2).map(|i| u8::from_str_radix(&p.page_token[i..i + 2], 16)).collect();
    let after = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    Ok((size, Some(after)))
}

/// The token that continues after `last`.
pub fn next_token(last: Option<&str>, full: bool) -> String {
    match last {
        Some(id) if full => id.bytes().map(|b| format!("{b:02x}")).collect(),
        _ => String::new(),
    }
}
