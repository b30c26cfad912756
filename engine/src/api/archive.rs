//! `AdminService.ExportArchive` and `RemoveArchived`: the data lifecycle over gRPC, for
//! `shenguan archive`. What may be archived and the line each case becomes are
//! [`crate::archive`]'s; removal is the writer's.

use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, Shared};
use crate::archive::{self, Examined};
use crate::auth::Right;
use crate::clock::Millis;
use crate::proto::{
    ArchivableCase, ArchivedInstance, ExportArchiveReply, ExportArchiveRequest, HeldBackCase, RemoveArchivedReply,
    RemoveArchivedRequest,
};

/// Cases an export page looks at when the caller does not say.
const DEFAULT_PAGE: u32 = 100;

/// Longest archive name recorded.
const MAX_NAME: usize = 256;

/// The start of `text` (a `YYYY-MM-DD` day) in China Standard Time: the instant cases must have
/// closed before. A day still to come is refused: "closed before tomorrow" would take cases
/// closed a moment ago, which is never what an archive of old years means.
fn before(shared: &Shared, text: &str) -> Result<Millis, Status> {
    let day = super::date("before", text)?;
    let calendars = shared.calendars();
    let today = shared.today(calendars.region(""));
    if day > today {
        return Err(invalid("before", format!("{day} is after today ({today}); archive what closed in the past")));
    }
    let start = day.and_time(chrono::NaiveTime::MIN).and_local_timezone(crate::calendar::DEFAULT_TZ).single();
    start
        .map(|t| crate::clock::from_datetime(t.with_timezone(&chrono::Utc)))
        .ok_or_else(|| invalid("before", "has no start of day in China Standard Time"))
}

fn instances(removal: &crate::store::Removal) -> Vec<ArchivedInstance> {
    removal.instances.iter().map(|(id, seq)| ArchivedInstance { id: id.clone(), seq: *seq }).collect()
}

/// `ExportArchive`.
pub(crate) async fn export(
    shared: &Shared,
    request: Request<ExportArchiveRequest>,
) -> Result<Response<ExportArchiveReply>, Status> {
    authorize(shared, &request, Right::Archive)?;
    let r = request.into_inner();
    let before = before(shared, &r.before)?;
    let limit = match r.limit {
        0 => DEFAULT_PAGE,
        n if n > archive::MAX_PAGE => return Err(invalid("limit", format!("at most {}", archive::MAX_PAGE))),
        n => n,
    };
    if r.after.len() > 256 {
        return Err(invalid("after", "a case id (at most 256 characters)"));
    }
    let after = (!r.after.is_empty()).then_some(r.after.as_str());
    let page = archive::export_page(shared.reader.as_ref(), shared.registry(), before, after, limit)
        .await
        .map_err(|e| status::read_error(&e))?;
    let mut cases = Vec::with_capacity(page.ready.len());
    for ready in page.ready {
        let record = serde_json::to_string(&ready.record)
            .map_err(|e| Status::internal(format!("case {} does not serialise: {e}", ready.record.case_id)))?;
        cases.push(ArchivableCase { case_id: ready.record.case_id, record, instances: instances(&ready.removal) });
    }
    Ok(Response::new(ExportArchiveReply {
        cases,
        held_back: page.held_back.into_iter().map(|(case_id, reason)| HeldBackCase { case_id, reason }).collect(),
        next: page.next.unwrap_or_default(),
    }))
}

/// `RemoveArchived`.
pub(crate) async fn remove(
    shared: &Shared,
    request: Request<RemoveArchivedRequest>,
) -> Result<Response<RemoveArchivedReply>, Status> {
    let who = authorize(shared, &request, Right::Archive)?;
    let r = request.into_inner();
    let before = before(shared, &r.before)?;
    if r.archive.trim().is_empty() || r.archive.chars().count() > MAX_NAME || r.archive.chars().any(char::is_control) {
        return Err(invalid(
            "archive",
            format!("the archive file's name: 1 to {MAX_NAME} characters, no control characters"),
        ));
    }
    if r.cases.len() > archive::MAX_PAGE as usize {
        return Err(invalid("cases", format!("at most {} a call", archive::MAX_PAGE)));
    }
    let mut reply = RemoveArchivedReply::default();
    // Each case is examined again as it is now: only what is still closed and settled is
    // removed, whatever the caller sends; the writer then requires the versions archived.
    let mut removals = Vec::new();
    let read = |e: crate::store::Error| status::read_error(&e);
    let consumers = shared.reader.consumers().await.map_err(read)?;
    for (i, case) in r.cases.iter().enumerate() {
        let field = format!("cases[{i}]");
        if case.instances.is_empty() || case.instances.len() > 10_000 {
            return Err(invalid(&field, "name the case and its tasks, each with its history length"));
        }
        let tasks = format!("{}/", case.case_id);
        if case.instances.iter().any(|n| n.id != case.case_id && !n.id.starts_with(&tasks)) {
            return Err(invalid(&field, "an instance that is neither the case nor one of its tasks"));
        }
        match archive::examine_id(shared.reader.as_ref(), shared.registry(), &consumers, before, &case.case_id)
            .await
            .map_err(read)?
        {
            Examined::Ready(ready) => {
                let mut removal = ready.removal;
                removal.instances = case.instances.iter().map(|n| (n.id.clone(), n.seq)).collect();
                removals.push(removal);
            }
            Examined::Open | Examined::HeldBack(..) => reply.changed.push(case.case_id.clone()),
        }
    }
    let writer = shared.engine.handle();
    for chunk in removals.chunks(archive::REMOVE_CHUNK) {
        let removed = writer
            .remove_archived(chunk.to_vec(), r.archive.clone())
            .await
            .map_err(|e| status::write_error("archive", &r.archive, &e))?;
        reply.removed += removed.removed.len() as u32;
        reply.changed.extend(removed.changed);
    }
    tracing::info!(
        archive = %r.archive,
        removed = reply.removed,
        changed = reply.changed.len(),
        by = %who.actor(),
        "archived cases removed"
    );
    Ok(Response::new(reply))
}
