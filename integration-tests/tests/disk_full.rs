//! A disk that fills up under concurrent callers, through the gRPC API: every caller is told
//! the truth (OK only for what is durable, UNAVAILABLE for the rest), the engine goes on once
//! space is freed, and after a restart every acknowledged write is there — the timer path
//! included.
//!
//! Two ways to fill a disk: a real tmpfs of a few MiB (needs the right to mount: root, as in
//! CI, where it must run), and SQLite's `max_page_count`, which runs anywhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use integration_tests::{fixtures, TestServer, Tmpfs};
use shenguan::proto::{AcceptCaseRequest, GetCaseRequest, GetTimelineRequest, Route, Scenario};
use tonic::Code;

const START: &str = "2026-09-28T10:00:00+08:00";
const CALLERS: usize = 16;
/// Cases whose commitment timers fall due while the disk is full.
const TIMER_CASES: usize = 40;

fn accept(case_no: &str) -> AcceptCaseRequest {
    fixtures::accept(case_no, Route::Normal, Scenario::Unspecified)
}

fn deferral(case_no: &str) -> AcceptCaseRequest {
    let mut r = fixtures::deferral(case_no, "2026-10-09");
    r.deferred_materials = vec!["设备布局图".into()];
    r
}

/// What the callers saw.
#[derive(Default)]
struct Seen {
    acked: BTreeSet<String>,
    refused: usize,
    /// Answers that are neither OK-and-readable nor UNAVAILABLE.
    wrong: Vec<String>,
}

/// `CALLERS` concurrent callers accept cases until `refusals` UNAVAILABLE answers have come
/// back (or each has made `per_caller` attempts). Every OK is read back at once from the read
/// side, which sees only what is committed.
async fn load(server: &TestServer, tag: &str, per_caller: usize, refusals: usize) -> Result<Seen> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let (seen, refused) = (seen.clone(), refused.clone());
        let (mut intake, tag) = (server.intake(), tag.to_owned());
        callers.push(tokio::spawn(async move {
            for i in 0..per_caller {
                if refused.load(Ordering::Relaxed) >= refusals {
                    break;
                }
                let case_no = format!("{tag}-{caller}-{i}");
                let id = format!("320700/{case_no}");
                let outcome = match intake.accept_case(accept(&case_no)).await {
                    Ok(_) => match intake.get_case(GetCaseRequest { case_id: id.clone() }).await {
                        Ok(_) => Ok(true),
                        Err(s) => Err(format!("{id}: acknowledged, then GetCase said {:?} {}", s.code(), s.message())),
                    },
                    Err(s) if s.code() == Code::Unavailable => Ok(false),
                    Err(s) => Err(format!("{id}: {:?} {}", s.code(), s.message())),
                };
                let mut seen = seen.lock().expect("lock");
                match outcome {
                    Ok(true) => {
                        seen.acked.insert(id);
                    }
                    Ok(false) => {
                        seen.refused += 1;
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(wrong) => {
                        // Acknowledged all the same: it must survive the restart.
                        if wrong.contains("acknowledged") {
                            seen.acked.insert(id);
                        }
                        seen.wrong.push(wrong);
                    }
                }
            }
        }));
    }
    for c in callers {
        c.await?;
    }
    let seen = Arc::try_unwrap(seen).ok().context("callers done")?;
    Ok(seen.into_inner().expect("lock"))
}

/// The cases whose reminder and deadline fall due while the disk is full.
async fn accept_timer_cases(server: &TestServer) -> Result<()> {
    let mut intake = server.intake();
    for i in 0..TIMER_CASES {
        intake.accept_case(deferral(&format!("TM-{i}"))).await?;
    }
    Ok(())
}

/// After a restart: every acknowledged case is there, every timer case fired its reminder and
/// its deadline exactly once, and `admin verify` finds nothing wrong.
async fn check_after_restart(db: &Path, acked: &BTreeSet<String>) -> Result<()> {
    let server = TestServer::start_on("2026-10-10T00:00:01+08:00", db, |_| {}).await?;
    // Overdue timers fire at start; this returns once they have.
    server.advance_to("2026-10-10T00:00:01+08:00").await?;
    let mut intake = server.intake();
    let mut missing = Vec::new();
    for id in acked {
        match intake.get_case(GetCaseRequest { case_id: id.clone() }).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => missing.push(id.clone()),
            Err(s) => return Err(s.into()),
        }
    }
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged cases are lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let mut admin = server.admin();
    for i in 0..TIMER_CASES {
        let id = format!("320700/TM-{i}");
        let case = intake.get_case(GetCaseRequest { case_id: id.clone() }).await?.into_inner().case.context("case")?;
        ensure!(case.state == "overdue", "{id} is {} after its deadline", case.state);
        let entries = admin.get_timeline(GetTimelineRequest { case_id: id.clone() }).await?.into_inner().entries;
        for timer in ["timer:material_reminder", "timer:commitment_deadline"] {
            let fired = entries.iter().filter(|e| e.event == timer).count();
            ensure!(fired == 1, "{id}: {timer} fired {fired} times");
        }
    }
    server.stop().await?;
    let report = shenguan::admin::verify_file(
        db,
        &shenguan::definition::Registry::embedded()?,
        &shenguan::calendar::Calendars::embedded()?,
    )
    .await?;
    ensure!(report.divergent.is_empty(), "verify: {:?}", report.divergent);
    ensure!(report.instances as usize >= acked.len() + TIMER_CASES, "verify saw {} instances", report.instances);
    Ok(())
}

/// A real file system of 8 MiB: filled, then space is freed while the server runs.
#[tokio::test]
async fn a_full_tmpfs_loses_no_acknowledged_write_and_recovers_when_space_is_freed() -> Result<()> {
    let Some(fs) = Tmpfs::mount_or_skip(8 * 1024, " (the max_page_count variant still runs)") else {
        return Ok(());
    };
    // Room to free later. Freed space must hold a checkpoint of the write-ahead log into the
    // database file as well as new writes, so the ballast takes most of the disk.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 5 * 1024 * 1024])?;
    let db = fs.path().join("shenguan.db");
    let server = TestServer::start_on(START, &db, |_| {}).await?;
    accept_timer_cases(&server).await?;

    // Fill the disk: callers go on until many batches have failed in a row.
    let full = load(&server, "FULL", 5_000, 300).await?;
    ensure!(full.wrong.is_empty(), "wrong answers while the disk filled: {:?}", &full.wrong[..full.wrong.len().min(5)]);
    ensure!(full.refused >= 300, "the disk never filled: {} acknowledged, {} refused", full.acked.len(), full.refused);

    // The timers fall due while the disk is full: their fires fail and are retried.
    server.advance_to("2026-10-08T09:00:00+08:00").await?;

    // Space comes back: the engine goes on by itself, and what it acknowledges is durable.
    std::fs::remove_file(&ballast)?;
    let after = load(&server, "FREED", 8, usize::MAX).await?;
    ensure!(
        after.wrong.is_empty(),
        "wrong answers after space was freed: {:?}",
        &after.wrong[..after.wrong.len().min(5)]
    );
    ensure!(after.refused == 0, "{} calls refused after space was freed", after.refused);
    ensure!(after.acked.len() == CALLERS * 8, "{} acknowledged after space was freed", after.acked.len());
    server.advance_to("2026-10-10T00:00:00+08:00").await?;
    server.stop().await?;

    let acked: BTreeSet<String> = full.acked.union(&after.acked).cloned().collect();
    eprintln!(
        "tmpfs: {} acknowledged while filling, {} refused, {} after freeing",
        full.acked.len(),
        full.refused,
        after.acked.len()
    );
    check_after_restart(&db, &acked).await
}

/// SQLite's page cap stands in for the disk: filled, then the server restarts without it.
#[tokio::test]
async fn a_database_at_its_page_cap_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("capped.db");
    // A first start creates the schema; the cap is then its size plus ~1 MiB.
    TestServer::start_on(START, &db, |_| {}).await?.stop().await?;
    let pages = {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut conn).await?;
        conn.close().await?;
        u32::try_from(pages)?
    };
    let server = TestServer::start_on(START, &db, |c| c.max_db_pages = Some(pages + 256)).await?;
    accept_timer_cases(&server).await?;
    let full = load(&server, "FULL", 5_000, 300).await?;
    ensure!(
        full.wrong.is_empty(),
        "wrong answers while the database filled: {:?}",
        &full.wrong[..full.wrong.len().min(5)]
    );
    ensure!(
        full.refused >= 300,
        "the cap was never reached: {} acknowledged, {} refused",
        full.acked.len(),
        full.refused
    );
    server.advance_to("2026-10-08T09:00:00+08:00").await?;
    server.stop().await?;

    // Without the cap, the retried timers fire at restart; nothing acknowledged is missing.
    check_after_restart(&db, &full.acked).await
}

/// A catalog import that does not fit on the disk is UNAVAILABLE and changes nothing: neither
/// the stored versions nor the catalogs in force; after a restart with space it goes in.
#[tokio::test]
async fn a_catalog_import_on_a_full_disk_is_unavailable_and_leaves_the_catalogs_as_they_were() -> Result<()> {
    use shenguan::proto::{CatalogFile, CatalogHistoryRequest, ExportCatalogRequest, ImportCatalogsRequest};
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("catalog-capped.db");
    TestServer::start_on(START, &db, |_| {}).await?.stop().await?;
    let pages = {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&db).connect().await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut conn).await?;
        conn.close().await?;
        u32::try_from(pages)?
    };
    let server = TestServer::start_on(START, &db, |c| c.max_db_pages = Some(pages + 256)).await?;
    let mut admin = server.admin();
    admin.import_catalogs(fixtures::example_catalog()).await?;
    let inspectors = |admin: &mut shenguan::proto::admin_service_client::AdminServiceClient<_>| {
        let mut admin = admin.clone();
        async move {
            let reply = admin
                .export_catalog(ExportCatalogRequest { kind: "inspectors".into(), format: "csv".into(), version: 0 })
                .await?
                .into_inner();
            anyhow::Ok((reply.version, String::from_utf8(reply.content)?))
        }
    };
    let before = inspectors(&mut admin).await?;
    // About 4 MiB of rows, against 1 MiB of room.
    let mut big = String::from("code,office,name\n");
    for i in 0..60_000 {
        big.push_str(&format!("INSP-{i:06},SJJ-FOOD,Inspector number {i:06} of the food office\n"));
    }
    let request = ImportCatalogsRequest {
        files: vec![CatalogFile { name: "inspectors.csv".into(), kind: String::new(), content: big.into_bytes() }],
        comment: "too big for the disk".into(),
        dry_run: false,
    };
    let err = admin.import_catalogs(request.clone()).await.expect_err("the disk is full");
    ensure!(err.code() == Code::Unavailable, "a full disk is UNAVAILABLE, not {err:?}");
    ensure!(inspectors(&mut admin).await? == before, "the catalogs in force changed");
    let history = admin.catalog_history(CatalogHistoryRequest { kind: "inspectors".into() }).await?.into_inner();
    ensure!(history.versions.len() == 1, "a version was half-written: {:?}", history.versions.len());
    // The engine goes on: cases are still accepted while the import waits for space.
    server.intake().accept_case(fixtures::catalogued("AFTER-IMPORT", "FOOD-PROD-NEW", fixtures::USCC, "A")).await?;
    server.stop().await?;

    let server = TestServer::start_on(START, &db, |_| {}).await?;
    let mut admin = server.admin();
    ensure!(inspectors(&mut admin).await? == before, "the restart found another catalog");
    let imported = admin.import_catalogs(request).await?.into_inner();
    ensure!(imported.versions.first().map(|v| (v.version, v.rows)) == Some((2, 60_000)), "{imported:?}");
    server.stop().await
}
