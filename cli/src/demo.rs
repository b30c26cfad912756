//! `shenguan demo`: the quickest tour. Starts the real server in-process on a temporary SQLite
//! file with a virtual clock, drives a few hundred realistic cases through every branch over
//! two simulated months that include National Day — all over real gRPC on loopback — and prints
//! a summary and one full timeline. Every message for another system is delivered, signed, to
//! local stand-ins for the supervision platform, the SMS gateway and the credit platform
//! ([`crate::inbox`]), and the tour shows what each received.
//!
//! The simulation is seeded (`--seed`), so a run can be repeated exactly — except the December
//! spot checks, whose seeds are fresh random numbers as in production (each is recorded, and
//! every draw is verified against its record).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{Duration, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shenguan::auth::verify::DevKey;
use tonic::transport::Channel;

use crate::client::{Bearer, Ch};

use crate::client::{stats_text, table, timeline_text};
use shenguan::calendar::Calendars;
use shenguan::clock::VirtualClock;
use shenguan::definition::Registry;
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::supervision_service_client::SupervisionServiceClient;
use shenguan::proto::{self, Route, Scenario};

/// `shenguan demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many cases to accept.
    #[arg(long, default_value_t = 300)]
    pub(crate) cases: u32,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 2026)]
    pub(crate) seed: u64,
    /// Keep the database here instead of a temporary file (inspect it with `admin verify`).
    #[arg(long, value_name = "FILE")]
    pub(crate) db: Option<PathBuf>,
    /// Run on this PostgreSQL database instead (it must hold no cases yet):
    /// `postgres://user:password@host:port/db`.
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub(crate) database: Option<String>,
}

const REGION: &str = "320700";
const APPROVAL: [&str; 3] = ["市行政审批局", "赣榆区行政审批局", "海州区行政审批局"];
const SUPERVISORS: [(&str, &str); 4] = [
    ("市市场监督管理局", "食品生产监管处"),
    ("市市场监督管理局", "特种设备安全监察处"),
    ("市卫生健康委", "综合监督处"),
    ("市生态环境局", "执法监督处"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    OnTime,
    Late,
    Never,
}

struct SimCase {
    id: String,
    state: String,
    next: NaiveDate,
    materials: Plan,
    deadline: Option<NaiveDate>,
}

struct SimTask {
    id: String,
    department: String,
    state: String,
    next: NaiveDate,
    inspected_on: Option<NaiveDate>,
}

/// One client per party, each with its own real token: the platform's service account (intake
/// in the region), each supervising department (its tasks only), an engine administrator
/// (statistics, timelines, the sandbox clock).
struct Clients {
    intake: IntakeServiceClient<Ch>,
    supervision: std::collections::HashMap<String, SupervisionServiceClient<Ch>>,
    admin: AdminServiceClient<Ch>,
}

fn authed(channel: &Channel, key: &DevKey, roles: &[&str], region: &str, department: &str) -> Result<Ch> {
    let args = crate::cli::TokenArgs {
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        region: region.into(),
        department: department.into(),
        office: String::new(),
        subject: None,
        on_behalf: false,
        ttl: std::time::Duration::from_secs(3600),
        db: PathBuf::new(),
    };
    let token = key.mint(&crate::security::dev_claims(&args)?);
    let value = format!("Bearer {token}").parse().context("token")?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel.clone(), Bearer(Some(value))))
}

fn at(date: NaiveDate, hour: u32) -> String {
    format!("{date}T{hour:02}:00:00+08:00")
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let db = args.db.clone().unwrap_or_else(|| dir.path().join("demo.db"));
    if args.db.is_some() && db.exists() {
        anyhow::bail!("{} exists; the demo starts from an empty database", db.display());
    }
    let first = NaiveDate::from_ymd_opt(2026, 9, 1).context("date")?;
    let last = NaiveDate::from_ymd_opt(2026, 10, 31).context("date")?;
    let clock = VirtualClock::new(chrono::DateTime::parse_from_rfc3339(&at(first, 8))?.timestamp_millis());
    let calendars = Calendars::embedded()?;
    let calendar = calendars.region(REGION).clone();
    let config = match &args.database {
        Some(url) => {
            let database = shenguan::store::Database::parse(url);
            if let Ok(reader) = database.reader(1).await {
                if reader.count(shenguan::store::Table::Instances).await.unwrap_or(0) > 0 {
                    anyhow::bail!(
                        "{} already holds cases; the demo starts from an empty database",
                        database.describe()
                    );
                }
            }
            shenguan::engine::Config::with_database(database)
        }
        None => shenguan::engine::Config::new(&db),
    };
    let mut options = shenguan::server::Options::new(config, Arc::new(Registry::embedded()?), calendars, Some(clock));
    // The other systems: local receivers, one path each, every channel routed to one of them.
    let secret = b"demo secret shared with the receivers";
    let (inbox_addr, inbox) = crate::inbox::start(secret).await?;
    std::fs::write(crate::security::beside(&db, "hook-secret"), secret).context("receiver secret")?;
    options.outbound = demo_outbound(&inbox_addr, &crate::security::beside(&db, "hook-secret"))?;
    // Dev mode, as `serve` without keys: a local HS256 key, and every party with a real token.
    let key = DevKey::load_or_create(&crate::security::beside(&db, "dev-key")).context("dev key")?;
    let verifier = shenguan::auth::verify::Verifier::new(shenguan::auth::verify::Config::dev(key.clone()))?;
    options.security = shenguan::server::Security::with(shenguan::auth::layer::Mode::Verify(Arc::new(verifier)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shenguan::server::run(options, listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut supervision = std::collections::HashMap::new();
    for (department, _) in SUPERVISORS {
        let ch = authed(&channel, &key, &["supervisor"], REGION, department)?;
        supervision.insert(department.to_owned(), SupervisionServiceClient::new(ch));
    }
    let mut c = Clients {
        intake: IntakeServiceClient::new(authed(&channel, &key, &["platform"], REGION, "")?),
        supervision,
        admin: AdminServiceClient::new(authed(&channel, &key, &["engine_admin"], "", "")?),
    };
    println!(
        "shenguan demo: server on {addr}, database {}, virtual clock from {first} 08:00 Asia/Shanghai",
        db.display()
    );

    let mut rng = StdRng::seed_from_u64(args.seed);
    let working: Vec<NaiveDate> =
        first.iter_days().take_while(|d| *d <= last).filter(|d| calendar.is_working_day(*d).unwrap_or(false)).collect();
    let per_day = (f64::from(args.cases) / working.len().max(1) as f64).ceil() as u32;
    let mut cases: Vec<SimCase> = Vec::new();
    let mut tasks: Vec<SimTask> = Vec::new();
    let mut accepted = 0u32;
    let mut refused_credit = 0u32;
    let mut day = first;
    while day <= last {
        advance(&mut c, &at(day, 9)).await?;
        let is_working = calendar.is_working_day(day)?;
        if is_working {
            for _ in 0..per_day.min(args.cases - accepted) {
                accepted += 1;
                let (case, refused) = accept(&mut c, &mut rng, accepted, day, &calendar).await?;
                refused_credit += u32::from(refused);
                cases.push(case);
            }
            for case in cases.iter_mut().filter(|x| x.next <= day) {
                step_case(&mut c, &mut rng, case, day, &mut tasks).await?;
            }
            for task in tasks.iter_mut().filter(|t| t.next <= day) {
                step_task(&mut c, &mut rng, task, day, &calendar).await?;
            }
        }
        advance(&mut c, &at(day, 17)).await?;
        day = day.succ_opt().context("date")?;
    }
    // A month more for the last deadlines to run out.
    advance(&mut c, &at(NaiveDate::from_ymd_opt(2026, 11, 30).context("date")?, 17)).await?;

    // Summary.
    let all_cases = list_cases(&mut c).await?;
    let mut by_state: BTreeMap<(String, String), usize> = BTreeMap::new();
    for case in &all_cases {
        let route = format!("{} {}", case.route, case.scenario).trim().to_owned();
        *by_state.entry((route, case.state.clone())).or_default() += 1;
    }
    println!(
        "\nCases accepted: {} ({} commitment requests refused for credit and taken on the normal route)",
        all_cases.len(),
        refused_credit
    );
    let rows: Vec<Vec<String>> = by_state.iter().map(|((r, s), n)| vec![r.clone(), s.clone(), n.to_string()]).collect();
    print!("{}", table(&["ROUTE", "STATE", "CASES"], &rows));
    let mut task_states: BTreeMap<String, usize> = BTreeMap::new();
    for case in &all_cases {
        for t in &case.tasks {
            *task_states.entry(t.state.clone()).or_default() += 1;
        }
    }
    println!();
    let rows: Vec<Vec<String>> = task_states.iter().map(|(s, n)| vec![s.clone(), n.to_string()]).collect();
    print!("{}", table(&["TASK STATE", "TASKS"], &rows));
    let stats = c
        .admin
        .get_statistics(proto::GetStatisticsRequest {
            region_code: REGION.into(),
            from: first.to_string(),
            to: last.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("\nStatistics for {REGION}, {first} to {last}");
    print!("{}", stats_text(&stats));

    // What the other systems received (delivery is real time, beside the virtual clock).
    let received = delivered(&addr, &inbox).await?;
    println!("\nMessages delivered to the local receivers (signed; a receiver deduplicates on the key)");
    let rows: Vec<Vec<String>> = received
        .iter()
        .map(|(path, r)| {
            vec![
                format!("/{path}"),
                r.messages.to_string(),
                r.keys.len().to_string(),
                if r.bad_signatures == 0 { "all valid".into() } else { format!("{} invalid", r.bad_signatures) },
            ]
        })
        .collect();
    print!("{}", table(&["RECEIVER", "MESSAGES", "DISTINCT KEYS", "SIGNATURES"], &rows));
    // Every message is a typed record (docs/schemas): what each receiver got, by type.
    let rows: Vec<Vec<String>> = received
        .iter()
        .flat_map(|(path, r)| {
            r.types.iter().map(move |(kind, keys)| vec![kind.clone(), format!("/{path}"), keys.len().to_string()])
        })
        .collect();
    println!("\nTyped records received (each with `type`, `schema_version` and `data`, beside its Chinese text)");
    print!("{}", table(&["TYPE", "RECEIVER", "RECORDS"], &rows));
    for (path, kind, label) in [
        ("supervision", "approval_record", "First approval record"),
        ("sms", "task_pushed", "First SMS (the configured Chinese template)"),
        ("credit", "credit_record", "First credit record"),
    ] {
        if let Some(body) = received.get(path).and_then(|r| r.first_of.get(kind)) {
            println!("{label}: {body}");
        }
    }

    // The fullest story: the case whose timeline is longest.
    let mut best = (0usize, String::new());
    for case in all_cases.iter().filter(|x| x.scenario == "material_deferral" || x.tasks.len() > 1).take(60) {
        let n = c
            .admin
            .get_timeline(proto::GetTimelineRequest { case_id: case.case_id.clone() })
            .await?
            .into_inner()
            .entries
            .len();
        if n > best.0 {
            best = (n, case.case_id.clone());
        }
    }
    if !best.1.is_empty() {
        let timeline = c.admin.get_timeline(proto::GetTimelineRequest { case_id: best.1.clone() }).await?.into_inner();
        println!("\nTimeline of {} ({} entries)", best.1, timeline.entries.len());
        print!("{}", timeline_text(&timeline.entries));
    }
    catalog_tour(&mut c, &mut rng).await?;
    let _ = stop.send(());
    server.await.context("server task")??;
    println!("\nDone in {:.1} s of wall time. Every step above was a durable gRPC call; deadlines fired on the virtual clock.", started.elapsed().as_secs_f64());
    if let Some(db) = &args.db {
        println!("The database is kept at {}: try `shenguan admin verify --db {}`.", db.display(), db.display());
    }
    if let Some(url) = &args.database {
        println!(
            "The cases are kept in {}: try `shenguan admin verify --database <that URL>`.",
            shenguan::store::postgres::redact(url)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The example catalog of ops/examples/catalog (embedded in the library) as import files.
fn example_catalog() -> Vec<proto::CatalogFile> {
    shenguan::catalog::example_files()
        .into_iter()
        .map(|f| proto::CatalogFile { name: f.name, kind: String::new(), content: f.content.into_bytes() })
        .collect()
}

/// December: a small catalog is imported, catalogued cases are accepted (supervisors from the
/// linkage catalog; one unlinked item escalated), and a weekly spot-check plan runs for four
/// weeks, drawing licensed food producers by credit grade.
async fn catalog_tour(c: &mut Clients, rng: &mut StdRng) -> Result<()> {
    println!("\nCatalogs (ops/examples/catalog), imported on 2026-12-01");
    advance(c, "2026-12-01T09:00:00+08:00").await?;
    let imported = c
        .admin
        .import_catalogs(proto::ImportCatalogsRequest {
            files: example_catalog(),
            comment: "demo catalog".into(),
            dry_run: false,
        })
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> =
        imported.versions.iter().map(|v| vec![v.kind.clone(), format!("v{}", v.version), v.rows.to_string()]).collect();
    print!("{}", table(&["KIND", "VERSION", "ROWS"], &rows));
    let grades = ["A", "A", "A", "A", "B", "B", "C", "dishonest"];
    let mut licensed = 0;
    for i in 0..40u32 {
        let item = if i % 2 == 0 { "FOOD-PROD-NEW" } else { "FOOD-PROD-CHG" };
        let grade = grades[rng.random_range(0..grades.len())];
        let request = proto::AcceptCaseRequest {
            case_no: format!("FP-2026-{i:04}"),
            region_code: REGION.into(),
            approval_item_code: "FOOD-PROD".into(),
            handling_item_code: item.into(),
            applicant: Some(proto::Applicant {
                name: format!("连云港食品生产企业{i:02}"),
                id: Some(proto::applicant::Id::CreditCode(uscc(rng))),
                mobile: "13800138000".into(),
            }),
            route: Route::Normal as i32,
            credit_grade: grade.into(),
            ..Default::default()
        };
        let case = c.intake.accept_case(request).await?.into_inner().case.context("case")?;
        c.intake
            .complete_approval(proto::CompleteApprovalRequest {
                case_id: case.case_id,
                license_no: format!("SC1320700{i:06}"),
                approval_opinion: "同意".into(),
                document_refs: vec![],
            })
            .await?;
        licensed += 1;
    }
    let unlinked = proto::AcceptCaseRequest {
        case_no: "FS-2026-0001".into(),
        region_code: REGION.into(),
        approval_item_code: "FOOD-SALE".into(),
        handling_item_code: "FOOD-SALE-NEW".into(),
        applicant: Some(proto::Applicant {
            name: "连云港某食品经营部".into(),
            id: Some(proto::applicant::Id::CreditCode(uscc(rng))),
            mobile: "13800138000".into(),
        }),
        route: Route::Normal as i32,
        credit_grade: "A".into(),
        ..Default::default()
    };
    c.intake.accept_case(unlinked).await?;
    let problems = c.admin.list_linkage_problems(proto::ListLinkageProblemsRequest::default()).await?.into_inner();
    println!(
        "{licensed} food production licences on catalogued items: the linkage catalog named their supervisors. \
         Linkage problems now: {}",
        problems
            .problems
            .iter()
            .map(|p| if p.case_id.is_empty() {
                format!("{} {}", p.kind, p.handling_item)
            } else {
                format!("{} {} ({})", p.kind, p.case_id, p.handling_item)
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let plan = c
        .admin
        .create_spot_check_plan(proto::CreateSpotCheckPlanRequest {
            code: "FOOD-2026-12".into(),
            region_code: REGION.into(),
            name: "Food producers, December".into(),
            office: "SJJ-FOOD".into(),
            supervision_item: "SJ-FOOD-PROD".into(),
            schedule: "0 9 * * MON".into(),
            working_days_only: true,
            ratios: "A=0.05,B=0.1,C=0.3,D=0.5,dishonest=1".into(),
            inspectors_per_target: 2,
        })
        .await?
        .into_inner();
    println!(
        "\nSpot-check plan {} ({}, every Monday 09:00 on working days), four weeks on the virtual clock",
        plan.plan_id, plan.ratios
    );
    let mut day = NaiveDate::from_ymd_opt(2026, 12, 2).context("date")?;
    let end = NaiveDate::from_ymd_opt(2026, 12, 28).context("date")?;
    while day <= end {
        advance(c, &at(day, 10)).await?;
        day = day.succ_opt().context("date")?;
    }
    let runs = c
        .admin
        .list_spot_check_runs(proto::ListSpotCheckRunsRequest { plan_id: plan.plan_id.clone(), include_records: false })
        .await?
        .into_inner();
    crate::catalog::print_runs(&runs);
    Ok(())
}

/// Every channel of the shipped workflows routed to a local receiver, with the Chinese SMS
/// templates of `ops/outbound.example.toml`.
fn demo_outbound(addr: &std::net::SocketAddr, secret: &std::path::Path) -> Result<shenguan::outbound::Config> {
    let example = include_str!("../../ops/outbound.example.toml");
    let templates: shenguan::outbound::Config =
        shenguan::outbound::Config::parse(example, "ops/outbound.example.toml")?;
    let text = format!(
        "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 1000\n\
         # The tour shows timelines months of virtual time later: keep every message.\n\
         retention_days = 3650\n\n\
         [[destination]]\nname = \"supervision-platform\"\nkind = \"webhook\"\nurl = \"http://{addr}/supervision\"\n\
         channels = [\"supervision\", \"escalation\", \"approval_department\", \"result\"]\nsecret_file = {secret:?}\n\n\
         [[destination]]\nname = \"sms-gateway\"\nkind = \"sms\"\nurl = \"http://{addr}/sms\"\nchannels = [\"sms\"]\n\
         rate_per_second = 1000\n\n\
         [[destination]]\nname = \"credit-platform\"\nkind = \"credit\"\nurl = \"http://{addr}/credit\"\n\
         channels = [\"credit\"]\nsecret_file = {secret:?}\n"
    );
    let mut config = shenguan::outbound::Config::parse(&text, "demo outbound")?;
    config.sms_templates = templates.sms_templates;
    Ok(config)
}

/// Waits (real time, at most a minute) until nothing is left to deliver; answers what each
/// receiver got.
async fn delivered(
    addr: &std::net::SocketAddr,
    inbox: &crate::inbox::Inbox,
) -> Result<BTreeMap<String, crate::inbox::Received>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let until = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        if text.lines().any(|l| l == "shenguan_outbox_backlog 0") || Instant::now() > until {
            return Ok(inbox.snapshot());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn advance(c: &mut Clients, to: &str) -> Result<()> {
    c.admin.advance_clock(proto::AdvanceClockRequest { by_millis: 0, to: to.to_owned() }).await?;
    Ok(())
}

async fn list_cases(c: &mut Clients) -> Result<Vec<proto::Case>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .admin
            .query_cases(proto::QueryCasesRequest {
                page: Some(proto::PageRequest { page_size: 500, page_token: token.clone() }),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.cases);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

fn uscc(rng: &mut StdRng) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    const W: [usize; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    let mut code: Vec<u8> = b"91320700".to_vec();
    while code.len() < 17 {
        code.push(A[rng.random_range(0..A.len())]);
    }
    let sum: usize = code.iter().zip(W).map(|(c, w)| A.iter().position(|a| a == c).unwrap_or(0) * w).sum();
    code.push(A[(31 - sum % 31) % 31]);
    code.into_iter().map(char::from).collect()
}

async fn accept(
    c: &mut Clients,
    rng: &mut StdRng,
    n: u32,
    today: NaiveDate,
    calendar: &shenguan::calendar::Calendar,
) -> Result<(SimCase, bool)> {
    let roll = rng.random_range(0..100);
    let (route, scenario) = match roll {
        0..40 => (Route::Normal, Scenario::Unspecified),
        40..72 => (Route::Commitment, Scenario::MaterialDeferral),
        72..86 => (Route::Commitment, Scenario::MaterialVerification),
        _ => (Route::Commitment, Scenario::PostApprovalVerification),
    };
    let grade = if rng.random_range(0..100) < 6 { "dishonest" } else { ["A", "A", "B", "C"][rng.random_range(0..4)] };
    let deadline = calendar.add_working_days(today, rng.random_range(3..12))?;
    let n_sup = if rng.random_range(0..100) < 25 { 2 } else { 1 };
    let first_sup = rng.random_range(0..SUPERVISORS.len());
    let supervisors = (0..n_sup)
        .map(|i| {
            let (department, office) = SUPERVISORS[(first_sup + i) % SUPERVISORS.len()];
            proto::Supervisor {
                department: department.into(),
                office: office.into(),
                office_admin_mobile: format!("139{:08}", rng.random_range(0..100_000_000)),
            }
        })
        .collect();
    let mut request = proto::AcceptCaseRequest {
        case_no: format!("LYG-2026-{n:05}"),
        region_code: REGION.into(),
        approval_department: APPROVAL[rng.random_range(0..APPROVAL.len())].into(),
        approval_item_code: format!("XK-{:03}", rng.random_range(1..40)),
        handling_item_code: format!("BL-{:03}", rng.random_range(1..90)),
        applicant: Some(proto::Applicant {
            name: format!(
                "连云港{}有限公司",
                ["海鲜", "食品", "机械", "港口物流", "医药", "化工"][rng.random_range(0..6)]
            ),
            id: Some(proto::applicant::Id::CreditCode(uscc(rng))),
            mobile: format!("138{:08}", rng.random_range(0..100_000_000)),
        }),
        route: route as i32,
        scenario: scenario as i32,
        credit_grade: grade.into(),
        commitment_deadline: if scenario == Scenario::MaterialDeferral { deadline.to_string() } else { String::new() },
        commitment_period_working_days: 0,
        deferred_materials: if scenario == Scenario::MaterialDeferral {
            vec!["消防验收意见".into(), "场所平面图".into()]
        } else {
            vec![]
        },
        supervisors,
    };
    let mut refused = false;
    let reply = match c.intake.accept_case(request.clone()).await {
        Ok(r) => r,
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            // §7: a dishonest applicant is accepted on the normal route instead.
            refused = true;
            request.route = Route::Normal as i32;
            request.scenario = Scenario::Unspecified as i32;
            request.commitment_deadline.clear();
            request.deferred_materials.clear();
            c.intake.accept_case(request).await?
        }
        Err(status) => return Err(status.into()),
    };
    let case = reply.into_inner().case.context("case")?;
    let materials = match rng.random_range(0..100) {
        0..70 => Plan::OnTime,
        70..85 => Plan::Late,
        _ => Plan::Never,
    };
    let wait = i64::from(rng.random_range(0..4u32));
    Ok((
        SimCase {
            id: case.case_id,
            state: case.state,
            next: today + Duration::days(wait),
            materials,
            deadline: (!refused && scenario == Scenario::MaterialDeferral).then_some(deadline),
        },
        refused,
    ))
}

async fn step_case(
    c: &mut Clients,
    rng: &mut StdRng,
    case: &mut SimCase,
    today: NaiveDate,
    tasks: &mut Vec<SimTask>,
) -> Result<()> {
    let current = c
        .intake
        .get_case(proto::GetCaseRequest { case_id: case.id.clone() })
        .await?
        .into_inner()
        .case
        .context("case")?;
    case.state = current.state.clone();
    let later = |rng: &mut StdRng, lo: i64, hi: i64| today + Duration::days(rng.random_range(lo..=hi));
    let reply = match case.state.as_str() {
        "commitment_pending" | "reminded" => match (case.materials, case.deadline) {
            (Plan::OnTime, Some(d)) if today <= d => {
                Some(c.intake.submit_materials(proto::SubmitMaterialsRequest { case_id: case.id.clone() }).await)
            }
            _ => {
                case.next = case.deadline.map_or(later(rng, 1, 3), |d| d + Duration::days(1));
                None
            }
        },
        "overdue" => match case.materials {
            Plan::Late => {
                Some(c.intake.submit_materials(proto::SubmitMaterialsRequest { case_id: case.id.clone() }).await)
            }
            _ => Some(
                c.intake
                    .revoke_approval(proto::RevokeApprovalRequest {
                        case_id: case.id.clone(),
                        reason: "逾期未补交承诺材料".into(),
                        basis: "《行政许可法》第六十九条".into(),
                    })
                    .await,
            ),
        },
        "awaiting_approval" | "materials_received" => Some(
            c.intake
                .complete_approval(proto::CompleteApprovalRequest {
                    case_id: case.id.clone(),
                    license_no: format!("JY1320700{:07}", rng.random_range(0..10_000_000)),
                    approval_opinion: "符合条件,准予许可".into(),
                    document_refs: vec![format!("doc://{}/licence.pdf", case.id)],
                })
                .await,
        ),
        "revocation_pending" => Some(
            c.intake
                .revoke_approval(proto::RevokeApprovalRequest {
                    case_id: case.id.clone(),
                    reason: "监管部门作出撤销决定".into(),
                    basis: "告知承诺制相关规定".into(),
                })
                .await,
        ),
        _ => {
            case.next = later(rng, 3, 6);
            None
        }
    };
    if let Some(reply) = reply {
        let after = reply?.into_inner().case.context("case")?;
        if case.state != "licensed" && after.state == "licensed" {
            for t in &after.tasks {
                tasks.push(SimTask {
                    id: t.task_id.clone(),
                    department: t.department.clone(),
                    state: t.state.clone(),
                    next: later(rng, 0, 5),
                    inspected_on: None,
                });
            }
        }
        case.state = after.state;
        case.next = later(rng, 1, 3);
    }
    Ok(())
}

async fn step_task(
    c: &mut Clients,
    rng: &mut StdRng,
    task: &mut SimTask,
    today: NaiveDate,
    calendar: &shenguan::calendar::Calendar,
) -> Result<()> {
    let sup = c.supervision.get_mut(&task.department).context("a client for the task's department")?;
    let reply = match task.state.as_str() {
        "pushed" => sup.acknowledge_task(proto::AcknowledgeTaskRequest { task_id: task.id.clone() }).await,
        "viewed" => {
            task.inspected_on = Some(today);
            sup.report_inspection(proto::ReportInspectionRequest {
                task_id: task.id.clone(),
                finished_on: today.to_string(),
            })
            .await
        }
        "inspected" => {
            let roll = rng.random_range(0..100);
            let (outcome, deadline) = match roll {
                0..80 => (proto::Outcome::Compliant, String::new()),
                80..95 => (proto::Outcome::NonCompliant, calendar.add_working_days(today, 10)?.to_string()),
                _ => (proto::Outcome::Revocation, String::new()),
            };
            sup.report_result(proto::ReportResultRequest {
                task_id: task.id.clone(),
                outcome: outcome as i32,
                rectification_deadline: deadline,
                notes: if roll >= 80 { "现场核查与承诺不符".into() } else { String::new() },
            })
            .await
        }
        "rectifying" => {
            let rectified = rng.random_range(0..100) < 80;
            sup.report_rectification(proto::ReportRectificationRequest {
                task_id: task.id.clone(),
                rectified,
                notes: String::new(),
            })
            .await
        }
        _ => {
            task.next = NaiveDate::MAX;
            return Ok(());
        }
    };
    match reply {
        Ok(r) => {
            let t = r.into_inner().task.context("task")?;
            task.state = t.state;
        }
        // The case may have been revoked meanwhile, ending the task: fine, it is recorded.
        Err(status) if status.code() == tonic::Code::FailedPrecondition => task.state = "ended".into(),
        Err(status) => return Err(status.into()),
    }
    // Offices are usually prompt, sometimes not: some views and results come late.
    let wait = if rng.random_range(0..100) < 15 { rng.random_range(4..9) } else { rng.random_range(0..3) };
    task.next = today + Duration::days(wait);
    Ok(())
}
