//! The engine in a child process, for the crash tests. Usage:
//! `crash_child DB CLOCK_MS [replan_page=N]`.
//!
//! Prints `ready` once the engine has started (overdue timers are firing by then). Then reads
//! commands, one per line, and answers each on stdout once it is durable — in completion
//! order, since commands run concurrently and are group-committed together:
//! - `start ID DEADLINE REQ` — a `commitment_case` in region 320700 → `ack REQ` or `rej REQ why`
//! - `materials ID REQ` — materials submitted → `ack REQ` or `rej REQ why`
//! - `task ID REQ` — a `supervision_task` in region 320700 (its view deadline counts 3 working
//!   days) → `ack REQ` or `rej REQ why`
//! - `load PATH` — load a calendar file → `loaded GENERATION` (its re-plan runs on)
//! - `replanned GENERATION` — wait until that generation's re-plan finished → `replanned`
//! - `advance MS` — move the virtual clock (timers then fire in the background) → no answer
//! - `settle` — wait until nothing is due and every fire committed → `settled`
//!
//! At the end of its input it answers every command still in flight, then exits.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use shenguan::engine::{Config, Engine};
use shenguan::machine::{Command, CommandKind};
use tokio::io::{AsyncBufReadExt, BufReader};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (db, clock, settings) = match args.as_slice() {
        [_, db, clock, settings @ ..] => (db, clock, settings),
        _ => bail!("usage: crash_child DB CLOCK_MS [replan_page=N]"),
    };
    let clock = VirtualClock::new(clock.parse().context("CLOCK_MS")?);
    let mut config = Config::new(db);
    for setting in settings {
        match setting.split_once('=') {
            Some(("replan_page", n)) => config.replan_page = n.parse().context("replan_page")?,
            _ => bail!("unknown setting {setting:?}"),
        }
    }
    // A short horizon and small pages exercise the loader on every advance.
    config.horizon = 6 * 3_600_000;
    config.page = 50;
    let engine = Arc::new(
        Engine::start(
            config,
            shenguan::engine::Context::new(
                Arc::new(Registry::embedded()?),
                Calendars::embedded()?,
                Arc::new(clock.clone()),
            ),
        )
        .await?,
    );
    say("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let command = match words.as_slice() {
            ["start", id, deadline, req] => Some((
                Command {
                    instance: (*id).to_owned(),
                    kind: CommandKind::Start {
                        workflow: "commitment_case".into(),
                        version: None,
                        vars: object(
                            json!({"region": "320700", "commitment_deadline": deadline, "applicant_mobile": "13800000000"}),
                        ),
                    },
                    actor: "crash-test".into(),
                    request_id: Some((*req).to_owned()),
                    idempotency: None,
                }
                .keyed("crash-test"),
                (*req).to_owned(),
            )),
            ["materials", id, req] => Some((
                Command {
                    instance: (*id).to_owned(),
                    kind: CommandKind::Event { name: "materials_submitted".into(), fields: serde_json::Map::new() },
                    actor: "crash-test".into(),
                    request_id: Some((*req).to_owned()),
                    idempotency: None,
                }
                .keyed("crash-test"),
                (*req).to_owned(),
            )),
            ["task", id, req] => Some((
                Command {
                    instance: (*id).to_owned(),
                    kind: CommandKind::Start {
                        workflow: "supervision_task".into(),
                        version: None,
                        vars: object(json!({
                            "region": "320700", "case_id": "320700/X", "case_no": "X", "task_no": 1,
                            "department": "市市场监督管理局", "office": "食品生产监管处",
                            "approval_department": "市行政审批局", "applicant_name": "某公司",
                            "applicant_code": "91110000600037341L", "route": "normal", "credit_grade": "A",
                            "license_no": "JY1",
                        })),
                    },
                    actor: "crash-test".into(),
                    request_id: Some((*req).to_owned()),
                    idempotency: None,
                }
                .keyed("crash-test"),
                (*req).to_owned(),
            )),
            ["load", path] => {
                let text = std::fs::read_to_string(path).context("calendar file")?;
                let file = shenguan::calendar::CalendarFile::parse(path, &text)?;
                let load = shenguan::calendar::replan::CalendarLoad { file, loaded_by: "crash-test".into() };
                let loaded = engine.handle().load_calendar(load).await?;
                say(&format!("loaded {}", loaded.stored.generation));
                None
            }
            ["replanned", generation] => {
                engine.handle().replanned(generation.parse().context("GENERATION")?).await?;
                say("replanned");
                None
            }
            ["advance", ms] => {
                clock.advance(ms.parse().context("advance MS")?);
                None
            }
            ["settle"] => {
                engine.settle().await;
                say("settled");
                None
            }
            _ => bail!("unknown command {line:?}"),
        };
        if let Some((command, req)) = command {
            let handle = engine.handle();
            in_flight.spawn(async move {
                match handle.submit(command).await {
                    Ok(_) => say(&format!("ack {req}")),
                    Err(e) => say(&format!("rej {req} {e}")),
                }
            });
        }
    }
    // End of input: answer everything still in flight before exiting.
    while in_flight.join_next().await.is_some() {}
    Ok(())
}
