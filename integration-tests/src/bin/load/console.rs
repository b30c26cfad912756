//! The console's benchmarks (issue 24): the server time of its heaviest pages at a million
//! cases, and JSON AcceptCase's throughput against gRPC AcceptCase in the same run.
//!
//! A page is measured as the console loads it: the JSON calls it makes, sent together, timed
//! from the first request to the last answer on loopback (so the figure is the server's time plus
//! a loopback round trip).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use prost::Message as _;

use super::{connect, drive, spawn_exe, stats_prefill, Phase};

/// One console page: its name and its calls (`Service/Method`, JSON body).
struct Page {
    name: &'static str,
    calls: Vec<(&'static str, String)>,
}

fn pages() -> Vec<Page> {
    let month = |m: u32| {
        let last = chrono::NaiveDate::from_ymd_opt(2026, m % 12 + 1, 1)
            .map_or(31, |d| d.pred_opt().map_or(31, |p| chrono::Datelike::day(&p)));
        let last = if m == 12 { 31 } else { last };
        format!(r#"{{"regionCode":"320700","from":"2026-{m:02}-01","to":"2026-{m:02}-{last:02}"}}"#)
    };
    let mut statistics = vec![(
        "AdminService/GetStatistics",
        r#"{"regionCode":"320700","from":"2026-01-01","to":"2026-12-31"}"#.to_owned(),
    )];
    statistics.extend((1..=12).map(|m| ("AdminService/GetStatistics", month(m))));
    vec![
        Page {
            name: "case search: a region, first page of 50",
            calls: vec![("AdminService/QueryCases", r#"{"regionCode":"320700","page":{"pageSize":50}}"#.into())],
        },
        Page {
            name: "case search: region, department, state, dates",
            calls: vec![(
                "AdminService/QueryCases",
                r#"{"regionCode":"320700","approvalDepartment":"市市场监督管理局","state":"licensed","acceptedFrom":"2026-06-01","acceptedTo":"2026-06-30","page":{"pageSize":50}}"#.into(),
            )],
        },
        Page {
            name: "case search: overdue only",
            calls: vec![("AdminService/QueryCases", r#"{"regionCode":"320700","overdueOnly":true,"page":{"pageSize":50}}"#.into())],
        },
        Page {
            name: "case search: by credit code",
            calls: vec![("AdminService/QueryCases", r#"{"applicantCode":"91320700MA1XXXXX0X","page":{"pageSize":50}}"#.into())],
        },
        Page {
            name: "department board (4 calls)",
            calls: vec![
                ("AdminService/QueryCases", r#"{"regionCode":"320700","approvalDepartment":"市市场监督管理局","commitmentDueWithinWorkingDays":3,"page":{"pageSize":200}}"#.into()),
                ("AdminService/QueryCases", r#"{"regionCode":"320700","approvalDepartment":"市市场监督管理局","state":"overdue","page":{"pageSize":200}}"#.into()),
                ("SupervisionService/ListTasks", r#"{"regionCode":"320700","department":"市市场监督管理局","state":"pushed","missed":"view","page":{"pageSize":200}}"#.into()),
                ("SupervisionService/ListTasks", r#"{"regionCode":"320700","department":"市市场监督管理局","missed":"result","page":{"pageSize":200}}"#.into()),
            ],
        },
        Page { name: "statistics: the year and its 12 months (13 calls)", calls: statistics },
        Page {
            name: "statistics: one figure's ids (a department, a month)",
            calls: vec![(
                "AdminService/GetStatistics",
                r#"{"regionCode":"320700","department":"市市场监督管理局","from":"2026-06-01","to":"2026-06-30","withIds":true}"#.into(),
            )],
        },
    ]
}

/// `load --console N --db PATH`: writes N cases (the statistics benchmark's data, with a share of
/// open commitments and tasks) if PATH does not exist, serves it, and times each page 7 times.
pub(super) async fn console(n: usize, db: &Path, exe: &Path) -> Result<()> {
    if !db.exists() {
        let mut server = spawn_exe(exe, &["serve".as_ref(), db.as_os_str()]).await?;
        super::ready(&server.addr).await?;
        server.child.kill().await?;
        stats_prefill(db, n, true).await?;
    }
    let mut server = spawn_exe(exe, &["serve".as_ref(), db.as_os_str()]).await?;
    super::ready(&server.addr).await?;
    let http = reqwest::Client::builder().http1_only().pool_max_idle_per_host(64).build()?;
    let base = format!("http://{}", server.addr);
    println!("console pages over {n} cases ({}), JSON over loopback; median of 6 after a first load:", db.display());
    for page in pages() {
        let mut times = Vec::new();
        let mut rows = 0usize;
        for _ in 0..7 {
            let started = Instant::now();
            let mut calls = tokio::task::JoinSet::new();
            for &(path, ref body) in &page.calls {
                let request = http
                    .post(format!("{base}/v1/{path}"))
                    .header("content-type", "application/json")
                    .body(body.clone());
                calls.spawn(async move {
                    let response = request.send().await?;
                    let status = response.status();
                    let text = response.text().await?;
                    ensure!(status.is_success(), "{path}: {status} {text}");
                    Ok::<_, anyhow::Error>(text.len())
                });
            }
            let mut answered = 0;
            while let Some(r) = calls.join_next().await {
                answered += r??;
            }
            times.push(started.elapsed());
            rows = answered;
        }
        let first = times[0];
        let mut warm = times[1..].to_vec();
        warm.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {:<58} first {:>6.0} ms, median {:>6.1} ms, max {:>6.1} ms ({} bytes answered)",
            page.name,
            ms(first),
            ms(warm[warm.len() / 2]),
            ms(warm[warm.len() - 1]),
            rows
        );
    }
    server.child.kill().await?;
    Ok(())
}

/// `load --json-intake --cases N --rounds R`: AcceptCase over gRPC and over JSON, alternately, R
/// rounds of N cases each on one server; prints each round's rate and the ratio of the medians.
pub(super) async fn json_intake(n: usize, rounds: usize, concurrency: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("json.db");
    let (mut server, _) = super::spawn_server(&db).await?;
    let intake = shenguan::proto::intake_service_client::IntakeServiceClient::new(connect(&server.addr).await?);
    let http = reqwest::Client::builder().http1_only().pool_max_idle_per_host(concurrency).build()?;
    let url = format!("http://{}/v1/IntakeService/AcceptCase", server.addr);
    let input = shenguan::server::json::method("IntakeService", "AcceptCase").context("method")?.input();
    let request = |tag: &str, round: usize, i: usize| super::w6_accept(&format!("{tag}{round}-{i:07}"));
    let (mut grpc_rates, mut json_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let client = intake.clone();
        let requests: std::sync::Arc<Vec<_>> = std::sync::Arc::new((0..n).map(|i| request("G", round, i)).collect());
        let grpc: Phase = drive("gRPC AcceptCase", n, concurrency, move |i| {
            let mut client = client.clone();
            let r = requests[i].clone();
            async move {
                let reply = client.accept_case(r).await?.into_inner();
                ensure!(reply.case.is_some_and(|c| c.state == "awaiting_approval"), "not accepted");
                Ok(())
            }
        })
        .await?;
        // The bodies are written before the clock starts: the server's work is measured, not
        // the load generator's JSON encoding.
        let bodies: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
            (0..n)
                .map(|i| {
                    shenguan::server::json::encode_json(&input, request("J", round, i).encode_to_vec().into())
                        .map_err(anyhow::Error::msg)
                })
                .collect::<Result<_>>()?,
        );
        let (http, url) = (http.clone(), url.clone());
        let json: Phase = drive("JSON AcceptCase", n, concurrency, move |i| {
            let request = http.post(&url).header("content-type", "application/json").body(bodies[i].clone());
            async move {
                let response = request.send().await?;
                let status = response.status();
                let text = response.text().await?;
                ensure!(status.is_success() && text.contains("awaiting_approval"), "{status}: {text}");
                Ok(())
            }
        })
        .await?;
        println!(
            "round {}: gRPC {:>7.0}/s (p50 {:.1} ms, p99 {:.1} ms)   JSON {:>7.0}/s (p50 {:.1} ms, p99 {:.1} ms)   JSON ÷ gRPC {:.2}",
            round + 1,
            grpc.rate(),
            grpc.pct(0.5),
            grpc.pct(0.99),
            json.rate(),
            json.pct(0.5),
            json.pct(0.99),
            json.rate() / grpc.rate()
        );
        grpc_rates.push(grpc.rate());
        json_rates.push(json.rate());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (g, j) = (median(&mut grpc_rates), median(&mut json_rates));
    println!("median of {rounds} rounds: gRPC {g:.0}/s, JSON {j:.0}/s, JSON ÷ gRPC {:.2}", j / g);
    server.child.kill().await?;
    Ok(())
}
