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
//! - [`admin`]: `AdminService` (timelines, queries, statistics, the sandbox clock);
//!   [`calendar`]: its calendar calls (load, status).
//! - [`engine`]: `EngineService` (any workflow: start, signal).
//! - [`events`]: `EventsService` (the outbox as a stream with durable cursors).
//! - [`view`]: domain → proto. [`status`]: errors → `tonic::Status`.

pub mod admin;
pub mod archive;
pub mod calendar;
pub mod catalog;
pub mod engine;
pub mod events;
pub mod intake;
pub mod status;
pub mod supervision;
pub mod view;

use std::sync::Arc;

use chrono::NaiveDate;
use tonic::{Request, Status};

use crate::auth::layer::Caller;
use crate::auth::{Denied, Grant, Right, Scope};
use crate::calendar::{Calendar, Calendars};
use crate::clock::VirtualClock;
use crate::domain::credit::CreditGrades;
use crate::engine::{Context, Engine};
use crate::machine::{Command, Idempotency};
use crate::store::ReadStore;

/// Largest page a listing returns.
pub const MAX_PAGE: u32 = 500;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE: u32 = 50;

/// What every service shares.
pub struct Shared {
    /// The engine (writer and timers).
    pub engine: Arc<Engine>,
    /// Read-only queries, through the storage boundary.
    pub reader: Arc<dyn ReadStore>,
    /// Present in sandbox mode (`--virtual-clock`): the clock `AdvanceClock` moves.
    pub virtual_clock: Option<VirtualClock>,
    /// The credit grades, and which may not take the commitment route.
    pub credit: CreditGrades,
    /// From this month and day, a missing notice for next year is warned about.
    pub calendar_warn_from: (u32, u32),
    /// A stream consumer idle this many days is warned about.
    pub consumer_idle_warn_days: u32,
    /// The push dispatchers (one per configured destination).
    pub dispatchers: crate::outbound::Dispatchers,
    /// Set when the server begins to stop: long-lived streams end so the shutdown need not
    /// wait for them.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Draws the spot-check runs that fell due.
    pub spotchecks: crate::timer::spotcheck::Runner,
}

impl Shared {
    /// Today in the region's time zone.
    pub fn today(&self, calendar: &Calendar) -> NaiveDate {
        calendar.local_date(crate::clock::to_datetime(self.context().clock.now()))
    }

    /// Definitions, calendars, the clock, metrics: the engine's own handles.
    pub fn context(&self) -> &Context {
        self.engine.context()
    }

    /// The loaded definitions.
    pub fn registry(&self) -> &crate::definition::Registry {
        &self.context().registry
    }

    /// The working-day calendars.
    pub fn calendars(&self) -> std::sync::Arc<Calendars> {
        self.context().calendars.current()
    }
}

/// A call's authorised caller: who (proved by the interceptor), the role that allowed the
/// call and the scope it may touch.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// Who, on behalf of whom, which request.
    pub caller: Caller,
    /// The role and scope.
    pub grant: Grant,
}

impl Authorized {
    /// What history records as the actor: the verified principal, never what the caller claims.
    pub fn actor(&self) -> String {
        self.grant.attribution(&self.caller.principal, &self.caller.on_behalf_of, &self.caller.request_id).encode()
    }

    /// Whose idempotency keys these are: one namespace per principal.
    pub fn caller(&self) -> &str {
        &self.caller.principal.subject
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.grant.scope
    }

    /// PERMISSION_DENIED for `what` (logged and counted) unless `inside`.
    pub fn require(&self, shared: &Shared, inside: bool, what: impl FnOnce() -> String) -> Result<(), Status> {
        if inside {
            return Ok(());
        }
        Err(self.outside(shared, what))
    }

    /// PERMISSION_DENIED for `what`, outside the caller's scope (logged and counted).
    pub fn outside(&self, shared: &Shared, what: impl FnOnce() -> String) -> Status {
        let denied = Denied::Scope { what: what(), scope: self.grant.scope.to_string() };
        deny(shared, &self.caller, "scope", &denied)
    }

    /// PERMISSION_DENIED for `what` (logged and counted) unless it belongs to the caller.
    pub fn require_owner(&self, shared: &Shared, owner: &str, what: impl FnOnce() -> String) -> Result<(), Status> {
        if owner == self.caller() {
            return Ok(());
        }
        Err(deny(shared, &self.caller, "owner", &Denied::Owner { what: what() }))
    }

    /// The region of a case or task id must be in scope.
    pub fn require_region(&self, shared: &Shared, region: &str, what: &str, id: &str) -> Result<(), Status> {
        self.require(shared, self.grant.scope.has_region(region), || format!("{what} {id}"))
    }
}

fn deny(shared: &Shared, caller: &Caller, right: &str, denied: &Denied) -> Status {
    shared.context().metrics.denied.with_label_values(&[right]).inc();
    tracing::warn!(subject = %caller.principal.subject, request_id = %caller.request_id, %denied, "permission denied");
    Status::permission_denied(format!("{}: {denied}", caller.principal.subject))
}

/// The caller of `request` if they hold `right`: PERMISSION_DENIED naming the missing right
/// (logged and counted) if not; UNAUTHENTICATED if no interceptor proved anyone.
pub fn authorize<T>(shared: &Shared, request: &Request<T>, right: Right) -> Result<Authorized, Status> {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return Err(Status::unauthenticated("no authenticated caller"));
    };
    match caller.principal.authorize(right) {
        Ok(mut grant) => {
            // A department or office is known by code and by name: the scope carries both.
            grant.scope.resolve(&shared.context().catalogs.current());
            Ok(Authorized { caller, grant })
        }
        Err(denied) => Err(deny(shared, &caller, right.name(), &denied)),
    }
}

/// A caller's request id and the key under which the writer remembers it.
#[derive(Debug, Clone)]
pub struct Key {
    /// The id as the caller sent it (recorded in history).
    pub request_id: String,
    /// Scoped to the method and the caller, fingerprinted by the message as received.
    pub idempotency: Idempotency,
}

impl Key {
    /// The key `id` of `caller` for `method`, for the received `message`; `None` when `id` is
    /// empty. `field` names where the id came from, for the error.
    pub fn parse(
        field: &str,
        id: &str,
        method: &str,
        caller: &str,
        message: &impl prost::Message,
    ) -> Result<Option<Self>, Status> {
        let Some(id) = checked_id(field, id)? else { return Ok(None) };
        let scope = format!("{method}\u{1f}{caller}");
        Ok(Some(Key { request_id: id.to_owned(), idempotency: Idempotency::new(&scope, id, &message.encode_to_vec()) }))
    }
}

/// `command`, made idempotent under `key` when there is one.
pub fn keyed(command: Command, key: Option<Key>) -> Command {
    match key {
        Some(k) => Command { request_id: Some(k.request_id), idempotency: Some(k.idempotency), ..command },
        None => command,
    }
}

/// The `x-request-id` metadata as sent, checked (empty when absent).
fn header_id<T>(request: &Request<T>) -> Result<&str, Status> {
    match request.metadata().get("x-request-id") {
        None => Ok(""),
        Some(v) => v.to_str().map_err(|_| status::invalid("x-request-id", "must be ASCII")),
    }
}

/// The `x-request-id` as sent, for history only (a call keyed otherwise, as AcceptCase is on
/// its case number).
pub fn request_id<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    Ok(checked_id("x-request-id", header_id(request)?)?.map(str::to_owned))
}

/// A request id as sent: `None` when empty, else checked text of at most 128 characters.
fn checked_id<'a>(field: &str, id: &'a str) -> Result<Option<&'a str>, Status> {
    if id.is_empty() {
        return Ok(None);
    }
    crate::domain::check_text(id, 128).map_err(|e| status::invalid(field, e))?;
    Ok(Some(id))
}

/// The caller's idempotency key for a call of `method`, from `x-request-id` metadata: one
/// namespace per method and caller, so that one client's ids never answer another's calls.
pub fn request_key<T: prost::Message>(request: &Request<T>, method: &str, caller: &str) -> Result<Option<Key>, Status> {
    Key::parse("x-request-id", header_id(request)?, method, caller, request.get_ref())
}

/// A date field: `YYYY-MM-DD`, in the years the domain allows.
pub fn date(field: &str, text: &str) -> Result<NaiveDate, Status> {
    crate::domain::date(text).map_err(|e| status::invalid(field, e))
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
    let token = p.page_token.as_bytes();
    // Checked as bytes: a token is hex digits only, so nothing is ever sliced mid-character.
    if token.len() > 512 || token.len() % 2 != 0 || !token.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let after = String::from_utf8(hex::decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    Ok((size, Some(after)))
}

/// The token that continues after `last`.
pub fn next_token(last: Option<&str>, full: bool) -> String {
    match last {
        Some(id) if full => hex::encode(id),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PageRequest;

    fn token(t: &str) -> Result<(u32, Option<String>), Status> {
        page(Some(&PageRequest { page_size: 10, page_token: t.to_owned() }))
    }

    #[test]
    fn page_tokens_round_trip_and_hostile_ones_are_invalid_not_a_panic() {
        let t = next_token(Some("320700/A-1"), true);
        assert_eq!(token(&t).expect("ours").1.as_deref(), Some("320700/A-1"));
        for hostile in ["中a", "a中", "zz", "0", "éé", "\u{0}\u{0}", "+1", "0x", &"00".repeat(300)] {
            let e = token(hostile).expect_err(hostile);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{hostile:?}");
        }
    }

    #[test]
    fn dates_outside_the_supported_years_are_invalid() {
        assert!(date("to", "2026-10-01").is_ok());
        for d in ["9999-12-31", "1899-12-31", "2200-01-01", "+10000-01-01"] {
            assert_eq!(date("to", d).expect_err(d).code(), tonic::Code::InvalidArgument, "{d}");
        }
    }
}
