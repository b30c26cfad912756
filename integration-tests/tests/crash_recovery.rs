//! Kill -9 the engine at random points while commands stream in and timers fire; after each
//! restart on the same SQLite file, every acknowledged command must be in history, no timer
//! may be lost or fire twice, and `admin verify` must be clean.
//!
//! The kill point is "after the K-th acknowledgement" with K random, so the test needs no
//! sleeps; the seed is printed (and can be pinned with SHENGUAN_CRASH_SEED) to reproduce a run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use chrono::{Duration, NaiveDate, TimeZone};
use integration_tests::{Child, Db};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shenguan::calendar::Calendars;
use shenguan::definition::Registry;

const HOUR: i64 = 3_600_000;

fn shanghai_date(ms: i64) -> NaiveDate {
    shenguan::clock::to_datetime(ms).with_timezone(&chrono_tz_shanghai()).date_naive()
}

fn chrono_tz_shanghai() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(8 * 3600).expect("offset")
}

/// The last millisecond of the deadline date in Shanghai: the commitment_case deadline timer.
fn deadline_due(date: NaiveDate) -> i64 {
    let next = date.succ_opt().expect("date").and_hms_opt(0, 0, 0).expect("midnight");
    chrono_tz_shanghai().from_local_datetime(&next).single().expect("instant").timestamp_millis() - 1
}

#[derive(Default)]
struct Acked {
    starts: BTreeMap<String, NaiveDate>,
    materials: BTreeSet<String>,
    requests: BTreeSet<String>,
}

async fn settle(child: &mut Child) -> Result<()> {
    child.send("settle").await?;
    loop {
        let line = child.next_line().await?;
        if line == "settled" {
            return Ok(());
        }
        // Answers to commands sent before are fine to see here; they were counted already.
    }
}

async fn check(db: &Path, clock: i64, acked: &Acked) -> Result<()> {
    let mut conn = Db::open(db).await?;
    let states: HashMap<String, String> = conn.states().await?.into_iter().collect();
    for id in acked.starts.keys() {
        ensure!(states.contains_key(id), "acknowledged case {id} is missing");
    }
    let recorded: BTreeSet<String> = conn.request_ids().await?.into_iter().collect();
    let lost: Vec<&String> = acked.requests.difference(&recorded).collect();
    ensure!(lost.is_empty(), "acknowledged requests missing from history: {lost:?}");

    let mut fired: BTreeMap<(String, String), u32> = BTreeMap::new();
    for (id, name, _due) in conn.fires().await? {
        *fired.entry((id, name)).or_default() += 1;
    }
    let twice: Vec<_> = fired.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "timers fired more than once: {twice:?}");
    let overdue_rows: Vec<_> = conn.timers().await?.into_iter().filter(|(_, _, due)| *due <= clock).collect();
    ensure!(overdue_rows.is_empty(), "timers due by now that never fired: {overdue_rows:?}");

    for (id, deadline) in &acked.starts {
        if deadline_due(*deadline) > clock {
            continue;
        }
        let state = states.get(id).map(String::as_str).unwrap_or("");
        let deadline_fired = fired.contains_key(&(id.clone(), "deadline".to_owned()));
        match state {
            "overdue" => ensure!(deadline_fired, "{id} is overdue without its deadline having fired"),
            "licensed" => {}
            other => bail!("{id}: deadline {deadline} has passed but the case is {other:?}"),
        }
    }
    let report = shenguan::admin::verify_file(db, &Registry::embedded()?, &Calendars::embedded()?).await?;
    ensure!(report.divergent.is_empty(), "admin verify found divergence: {:?}", report.divergent);
    ensure!(report.instances as usize == states.len(), "verify saw {} of {} instances", report.instances, states.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_and_fires_nothing_twice() -> Result<()> {
    let seed: u64 = std::env::var("SHENGUAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("SHENGUAN_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = Path::new(env!("CARGO_BIN_EXE_crash_child"));
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("crash.db");
    let mut clock = chrono::DateTime::parse_from_rfc3339("2026-09-28T08:00:00+08:00")?.timestamp_millis();
    let mut acked = Acked::default();
    let mut next_case = 0u32;
    let mut next_req = 0u32;
    let mut kills = 0;

    for round in 0..6 {
        let mut child = Child::start(exe, &db, clock).await.with_context(|| format!("round {round}: start"))?;
        settle(&mut child).await?;
        check(&db, clock, &acked).await.with_context(|| format!("after restart {round} (seed {seed})"))?;

        // A stream of commands with clock advances among them, so timers fire while cases arrive.
        let mut pending: HashMap<String, (String, Option<NaiveDate>)> = HashMap::new();
        let mut lines = Vec::new();
        for _ in 0..200 {
            let roll = rng.random_range(0..100);
            if roll < 60 {
                next_case += 1;
                next_req += 1;
                let id = format!("case-{next_case:05}");
                let req = format!("req-{next_req:06}");
                let deadline = shanghai_date(clock) + Duration::days(rng.random_range(0..4));
                lines.push(format!("start {id} {deadline} {req}"));
                pending.insert(req, (id, Some(deadline)));
            } else if roll < 85 && !acked.starts.is_empty() {
                let n = rng.random_range(0..acked.starts.len());
                let id = acked.starts.keys().nth(n).cloned().unwrap_or_default();
                next_req += 1;
                let req = format!("req-{next_req:06}");
                lines.push(format!("materials {id} {req}"));
                pending.insert(req, (id, None));
            } else {
                let by = rng.random_range(1..8) * HOUR;
                clock += by;
                lines.push(format!("advance {by}"));
            }
        }
        let expected = pending.len();
        let kill_after = rng.random_range(1..=expected.max(1));
        let mut stdin = child.take_stdin()?;
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for line in lines {
                // The child may be killed while we write: a broken pipe ends the stream.
                if stdin.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = stdin.flush().await;
        });
        let mut answers = 0;
        let mut acks = 0;
        while answers < expected && acks < kill_after {
            let line = child.next_line().await?;
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next()) {
                (Some("ack"), Some(req)) => {
                    let (id, deadline) = pending.get(req).cloned().with_context(|| format!("ack for unknown {req}"))?;
                    acked.requests.insert(req.to_owned());
                    match deadline {
                        Some(d) => {
                            acked.starts.insert(id, d);
                        }
                        None => {
                            acked.materials.insert(id);
                        }
                    }
                    acks += 1;
                    answers += 1;
                }
                (Some("rej"), Some(_)) => answers += 1,
                _ => bail!("unexpected line from child: {line:?}"),
            }
        }
        child.kill().await?;
        let _ = writer.await;
        kills += 1;
        println!(
            "round {round}: killed after {acks} acknowledgements of {expected} commands; {} cases so far",
            acked.starts.len()
        );
    }

    // Last restart: run the clock past every deadline and check everything ended as it must.
    let mut child = Child::start(exe, &db, clock).await?;
    settle(&mut child).await?;
    clock += 10 * 24 * HOUR;
    child.send(&format!("advance {}", 10 * 24 * HOUR)).await?;
    settle(&mut child).await?;
    check(&db, clock, &acked).await.context("final")?;
    let mut conn = Db::open(&db).await?;
    let states = conn.states().await?;
    ensure!(states.iter().all(|(_, s)| s == "licensed" || s == "overdue"), "every case ended licensed or overdue");
    ensure!(conn.timers().await?.is_empty(), "no timer is left");
    ensure!(conn.outbox_len().await? > 0, "messages were written");
    ensure!(kills == 6 && !acked.starts.is_empty());
    child.kill().await?;
    Ok(())
}

/// SIGKILL while a loaded calendar re-plans many deadlines: after the kill every instance is
/// either re-planned (one history entry, the new due) or not (the old due); after a restart
/// the re-plan resumes and finishes, every timer is at its new due, none twice re-planned,
/// and `admin verify` is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_re_plan_leaves_each_instance_whole_and_the_re_plan_resumes() -> Result<()> {
    const TASKS: usize = 400;
    let exe = Path::new(env!("CARGO_BIN_EXE_crash_child"));
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("replan.db");
    let notice = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/2027-made-up.toml");
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis());
    let clock = at("2026-12-29T10:00:00+08:00")?;
    // Armed on Tuesday 29 December: the provisional third working day is Monday 4 January; the
    // made-up notice's make-up Saturday makes it Saturday 2 January.
    let (old_due, new_due) = (at("2027-01-04T23:59:59.999+08:00")?, at("2027-01-02T23:59:59.999+08:00")?);

    // One re-plan batch per two instances: hundreds of commits, so the kill lands inside.
    let mut child = Child::start_with(exe, &db, clock, &["replan_page=2"]).await?;
    for i in 0..TASKS {
        child.send(&format!("task T{i:04} r{i}")).await?;
    }
    let mut acks = 0;
    while acks < TASKS {
        let line = child.next_line().await?;
        ensure!(line.starts_with("ack "), "task refused: {line}");
        acks += 1;
    }
    child.send(&format!("load {}", notice.display())).await?;
    let loaded = child.next_line().await?;
    let generation = loaded.strip_prefix("loaded ").context("loaded")?.to_owned();
    // The kill point: after the K-th of a stream of new tasks, one at a time, each acknowledged
    // once its batch — which carries a page of the re-plan — committed. No sleeps: the count of
    // acknowledged batches is the clock.
    let seed: u64 = std::env::var("SHENGUAN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let kill_after = StdRng::seed_from_u64(seed).random_range(5..40);
    println!("seed {seed}: kill after {kill_after} acknowledged commands during the re-plan");
    for j in 0..kill_after {
        child.send(&format!("task U{j:04} u{j}")).await?;
        let line = child.next_line().await?;
        ensure!(line.starts_with("ack "), "task refused: {line}");
    }
    child.kill().await?;

    let mut conn = Db::open(&db).await?;
    ensure!(conn.replans_done().await? == [false], "the kill was meant to land inside the re-plan");
    // Tasks started after the load were armed on the new calendar: the re-plan leaves them be.
    let timers: HashMap<String, i64> = conn
        .timers()
        .await?
        .into_iter()
        .filter(|(id, _, _)| id.starts_with('T'))
        .map(|(id, _, due)| (id, due))
        .collect();
    let replanned: Vec<String> = conn.replan_entries().await?.into_iter().map(|(id, _)| id).collect();
    ensure!(timers.len() == TASKS, "{} timers", timers.len());
    for (id, due) in &timers {
        let entries = replanned.iter().filter(|r| *r == id).count();
        match (*due == new_due, *due == old_due, entries) {
            (true, false, 1) | (false, true, 0) => {}
            other => bail!("{id}: due {due}, {entries} re-plan entries: half re-planned ({other:?})"),
        }
    }
    let done_before = replanned.len();
    ensure!(done_before > 0 && done_before < TASKS, "{done_before} of {TASKS} were re-planned before the kill");
    drop(conn);

    let mut child = Child::start_with(exe, &db, clock, &["replan_page=50"]).await?;
    child.send(&format!("replanned {generation}")).await?;
    ensure!(child.next_line().await? == "replanned");
    child.kill().await?;

    let mut conn = Db::open(&db).await?;
    ensure!(conn.replans_done().await? == [true]);
    let timers: Vec<(String, String, i64)> =
        conn.timers().await?.into_iter().filter(|(id, _, _)| id.starts_with('T')).collect();
    ensure!(timers.len() == TASKS && timers.iter().all(|(_, _, due)| *due == new_due), "not all at the new due");
    let mut replanned: Vec<String> = conn.replan_entries().await?.into_iter().map(|(id, _)| id).collect();
    let total = replanned.len();
    replanned.dedup();
    ensure!(total == TASKS && replanned.len() == TASKS, "{total} re-plan entries for {} instances", replanned.len());
    println!("killed after {done_before} of {TASKS} instances were re-planned; the restart finished the rest");
    let report = shenguan::admin::verify_file(&db, &Registry::embedded()?, &Calendars::embedded()?).await?;
    ensure!(report.divergent.is_empty(), "verify: {:?}", report.divergent);
    Ok(())
}
