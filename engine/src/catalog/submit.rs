//! A catalog import taken from the API to the database: read what is stored, check the files
//! and the importer's scope against it, and hand the writer a prepared batch.
//!
//! Everything that costs time — parsing and checking up to 32 MiB of files, diffing them
//! against the versions in force — happens here, on a blocking thread, before the writer sees
//! the import: the writer only commits the new versions (in a transaction of their own, after
//! the batches queued before) and puts them in force. If another import committed in between
//! (a kind's version taken, or a newer version in force on this node), the writer refuses it as
//! a conflict and it is checked again on what is stored now.

use std::sync::Arc;

use super::{Catalogs, ImportFile, Imported, Kind, Live, RowError, Version, KINDS};
use crate::clock::Millis;
use crate::store::{Batch, ReadStore};
use crate::writer::{Handle, Prepared, WriteError};

/// How often an import that met another import is checked again before the caller is told.
const CONFLICT_RETRIES: usize = 8;

/// A catalog import.
#[derive(Debug, Clone)]
pub struct CatalogImport {
    /// The files.
    pub files: Vec<ImportFile>,
    /// Who imports (recorded with every version).
    pub actor: String,
    /// Why (recorded with every version).
    pub comment: String,
    /// Check only; store nothing.
    pub dry_run: bool,
    /// The importer's region prefix, if their scope is one region: every region of the
    /// catalogs as the import would leave them must be inside it (the catalogs are one set for
    /// the area they cover; a county's administrator may not replace the city's).
    pub region_scope: Option<String>,
}

/// Why a catalog import was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ImportError {
    /// Rows are wrong; every one found is listed, and nothing was imported.
    #[error("{} problem(s) in the import; nothing was imported:\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<RowError>),
    /// The catalogs would hold a region outside the importer's scope; nothing was imported.
    #[error("the catalogs would hold region {0}, outside the importer's scope")]
    OutsideScope(String),
    /// It could not be stored; nothing changed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Checks `import` against the stored catalogs and, unless it is a dry run or changes
/// nothing, stores every kind that changed as a new version, in one transaction; the versions
/// are in force on this node when this answers.
pub async fn import(
    reader: &dyn ReadStore,
    writer: &Handle,
    live: &Arc<Live>,
    now: Millis,
    import: CatalogImport,
) -> Result<Imported, ImportError> {
    let import = Arc::new(import);
    let mut tries = 0;
    loop {
        let (imported, batch) = prepare(reader, live, now, import.clone()).await?;
        let Some(batch) = batch else { return Ok(imported) };
        match writer.prepared(batch).await {
            Ok(()) => {
                for v in &imported.versions {
                    tracing::info!(kind = %v.kind, version = v.version, changes = %v.changes.summary(), by = %v.actor, "catalog imported");
                }
                return Ok(imported);
            }
            Err(e) if e.decide_again() && tries < CONFLICT_RETRIES => {
                tracing::debug!(error = %e, "a catalog import met another; checking it again on what is stored now");
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks `import` against the catalogs stored now, on a blocking thread; answers what it
/// would import and, unless it is a dry run or changes nothing, the batch for the writer.
pub async fn prepare(
    reader: &dyn ReadStore,
    live: &Arc<Live>,
    now: Millis,
    import: Arc<CatalogImport>,
) -> Result<(Imported, Option<Prepared>), ImportError> {
    // Against what is stored, not what this node last saw: another node may have imported.
    let stored = Catalogs::new(reader.catalogs().await.map_err(WriteError::from)?);
    let dry_run = import.dry_run;
    let (based, imported) = tokio::task::spawn_blocking(move || check(stored, &import, now))
        .await
        .map_err(|e| WriteError::Internal(format!("the import's check stopped: {e}")))??;
    if dry_run || imported.versions.is_empty() {
        return Ok((imported, None));
    }
    let batch = prepared(based, imported.versions.clone(), live.clone());
    Ok((imported, Some(batch)))
}

/// The check itself: the files against `stored`, then the scope against the catalogs as the
/// import leaves them. Answers the catalogs the import was checked against, with its outcome.
fn check(stored: Catalogs, import: &CatalogImport, now: Millis) -> Result<(Catalogs, Imported), ImportError> {
    let imported =
        super::import(&stored, &import.files, &import.actor, &import.comment, now).map_err(ImportError::Invalid)?;
    // The API checked the catalogs in force as this node saw them; the stored ones are the
    // truth, and the import's own regions count too.
    if let Some(prefix) = &import.region_scope {
        let imported_regions = imported.versions.iter().filter(|v| v.kind == Kind::Regions).flat_map(|v| v.rows.iter());
        let outside = stored.region_outside(prefix).or_else(|| super::region_outside(imported_regions, prefix));
        if let Some(code) = outside {
            return Err(ImportError::OutsideScope(code.to_owned()));
        }
    }
    Ok((stored, imported))
}

/// The batch that stores `versions`, checked against `based` (the catalogs they were checked
/// against) when the writer's turn comes.
fn prepared(based: Catalogs, versions: Vec<Version>, live: Arc<Live>) -> Prepared {
    // Shared by both closures: a catalog's indexes are as large as its rows.
    let based = Arc::new(based);
    let check_live = live.clone();
    let check_based = based.clone();
    Prepared {
        batch: Batch { catalogs: versions, ..Batch::default() },
        // A version in force here that the check did not see: another import on this node
        // committed since (a newer one from another node is met by the store instead).
        still_valid: Box::new(move || {
            let now = check_live.current();
            match KINDS.iter().find(|k| now.version(**k) > check_based.version(**k)) {
                Some(kind) => Err(format!("{kind} v{} was imported meanwhile", now.version(*kind))),
                None => Ok(()),
            }
        }),
        // On top of what is in force (imports of other kinds may have come in since the read),
        // with anything newer the read saw (another node's, not yet told here).
        then: Box::new(move |committed: &Batch| {
            let now = live.current();
            let mut newer: Vec<Version> =
                based.all().filter(|v| v.version > now.version(v.kind)).map(|v| Version::clone(v)).collect();
            newer.extend(committed.catalogs.iter().cloned());
            live.replace(now.with(&newer));
        }),
    }
}
