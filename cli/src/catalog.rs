//! `shenguan catalog …`, `enterprise …` and `spotcheck …`: the organisation and catalogs, the
//! enterprise profile, and spot-check plans on a running server (AdminService).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use shenguan::proto;
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::supervision_service_client::SupervisionServiceClient;

use crate::client::{call_error, channel, print_json, table, Conn};

/// `catalog …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Import catalog files as one import: CSV (named after their kind, e.g. offices.csv) or
    /// JSON (one kind, or a bundle {"regions": […], …}). Every bad row is listed as
    /// FILE:LINE: FIELD: REASON and nothing is imported; a directory imports its *.csv and
    /// *.json files.
    Import {
        /// Files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The kind of a single file whose name does not say it.
        #[arg(long)]
        kind: Option<String>,
        /// Why, recorded with every new version.
        #[arg(long, default_value = "")]
        comment: String,
        /// Check and show what would change; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a kind as CSV (or JSON): the version in force, or --version N.
    Export {
        /// regions, departments, offices, inspectors, approval_items, handling_items,
        /// supervision_items, supervision_subitems, linkage or commitment.
        kind: String,
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
        /// A past version (0: in force).
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Every version of a kind: who imported it, when, why, and what changed.
    History {
        /// The kind.
        kind: String,
    },
    /// Cases accepted on items nobody supervises, and catalogued items with no linkage.
    Problems {
        /// Only this region.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// Give a case its supervisors from the linkage catalog in force (an unlinked case, once
    /// its item is linked).
    Relink {
        /// The case id.
        case_id: String,
    },
}

/// `enterprise …`.
#[derive(Debug, Subcommand)]
pub(crate) enum EnterpriseCommand {
    /// Everything about one enterprise: cases, tasks, inspections, results, rectifications,
    /// revocations, credit records, its credit grade and open deadlines.
    Show {
        /// Unified Social Credit Code.
        code: String,
    },
}

/// `spotcheck …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SpotCheckCommand {
    /// Create a plan: a cron schedule (Asia/Shanghai) whose runs draw licensed enterprises of a
    /// supervision item by credit grade, and inspectors of an office.
    Create {
        /// The plan's code, unique in its region.
        code: String,
        /// Region code.
        #[arg(long)]
        region: String,
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The supervising office whose inspectors are drawn.
        #[arg(long)]
        office: String,
        /// The supervision item whose licensed enterprises are drawn.
        #[arg(long)]
        item: String,
        /// Cron: "0 9 * * MON" (minute hour day-of-month month day-of-week).
        #[arg(long)]
        schedule: String,
        /// Move a run on a day off to the next working day.
        #[arg(long)]
        working_days_only: bool,
        /// "A=0.05,B=0.1,C=0.2,D=0.5,dishonest=1" (the default).
        #[arg(long, default_value = "")]
        ratios: String,
        /// Inspectors per target.
        #[arg(long, default_value_t = 2)]
        inspectors: u32,
    },
    /// The plans.
    List {
        /// Only this region.
        #[arg(long, default_value = "")]
        region: String,
    },
    /// A plan's runs: seed, population per grade, targets, inspectors and results.
    Runs {
        /// The plan id ("SC/<region>/<code>").
        plan_id: String,
        /// With --json: each run's whole record (seed, ratios, population, inspectors,
        /// targets), to check a draw independently.
        #[arg(long)]
        records: bool,
    },
    /// End a plan: no more runs.
    End {
        /// The plan id.
        plan_id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Report the result of a spot-check inspection.
    Result {
        /// The task id.
        task_id: String,
        /// compliant or non_compliant.
        #[arg(long)]
        outcome: String,
        /// Findings.
        #[arg(long, default_value = "")]
        findings: String,
    },
}

fn when(i: Option<&proto::Instant>) -> String {
    i.map(|i| i.shanghai.clone()).unwrap_or_default()
}

fn files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "csv" || x == "json"))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// The import request for files on disk.
pub(crate) fn import_request(
    paths: &[PathBuf],
    kind: Option<&str>,
    comment: &str,
    dry_run: bool,
) -> Result<proto::ImportCatalogsRequest> {
    let mut files = Vec::new();
    for path in files_of(paths)? {
        let content = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        files.push(proto::CatalogFile { name, kind: kind.unwrap_or_default().to_owned(), content });
    }
    Ok(proto::ImportCatalogsRequest { files, comment: comment.to_owned(), dry_run })
}

fn print_versions(versions: &[proto::CatalogVersion]) {
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.kind.clone(),
                format!("v{}", v.version),
                v.rows.to_string(),
                format!("+{} -{} ~{}", v.added.len(), v.removed.len(), v.changed.len()),
                v.imported_by.clone(),
                when(v.imported_at.as_ref()),
                v.comment.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["KIND", "VERSION", "ROWS", "CHANGES", "BY", "AT", "COMMENT"], &rows));
}

/// Runs `catalog …`.
pub(crate) async fn catalog(conn: &Conn, cmd: CatalogCommand) -> Result<ExitCode> {
    // Catalogs are the one thing sent and received whole that may be large.
    let mut admin = AdminServiceClient::new(channel(conn).await?)
        .max_encoding_message_size(shenguan::server::MAX_IMPORT)
        .max_decoding_message_size(4 * shenguan::server::MAX_IMPORT);
    match cmd {
        CatalogCommand::Import { files, kind, comment, dry_run } => {
            let request = import_request(&files, kind.as_deref(), &comment, dry_run)?;
            let reply = admin.import_catalogs(request).await.map_err(call_error)?.into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                if reply.versions.is_empty() {
                    println!("nothing changed");
                } else {
                    print_versions(&reply.versions);
                }
                if !reply.unchanged.is_empty() {
                    println!("unchanged: {}", reply.unchanged.join(", "));
                }
                if reply.dry_run {
                    println!("dry run: nothing was stored");
                }
            }
        }
        CatalogCommand::Export { kind, format, version, output } => {
            let reply = admin
                .export_catalog(proto::ExportCatalogRequest { kind, format, version })
                .await
                .map_err(call_error)?
                .into_inner();
            match output {
                Some(path) => {
                    std::fs::write(&path, &reply.content).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("{} v{} written to {}", reply.kind, reply.version, path.display());
                }
                None => print!("{}", String::from_utf8_lossy(&reply.content)),
            }
        }
        CatalogCommand::History { kind } => {
            let reply =
                admin.catalog_history(proto::CatalogHistoryRequest { kind }).await.map_err(call_error)?.into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                print_versions(&reply.versions);
                for v in &reply.versions {
                    for key in &v.added {
                        println!("v{}  + {key}", v.version);
                    }
                    for key in &v.removed {
                        println!("v{}  - {key}", v.version);
                    }
                    for c in &v.changed {
                        for f in &c.fields {
                            println!("v{}  ~ {} {}: {:?} → {:?}", v.version, c.key, f.field, f.old_value, f.new_value);
                        }
                    }
                }
            }
        }
        CatalogCommand::Problems { region } => {
            let reply = admin
                .list_linkage_problems(proto::ListLinkageProblemsRequest { region_code: region })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                let rows: Vec<Vec<String>> = reply
                    .problems
                    .iter()
                    .map(|p| {
                        vec![
                            p.kind.clone(),
                            p.case_id.clone(),
                            p.handling_item.clone(),
                            p.state.clone(),
                            p.detail.clone(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["PROBLEM", "CASE", "HANDLING ITEM", "STATE", "DETAIL"], &rows));
            }
        }
        CatalogCommand::Relink { case_id } => {
            let reply = admin.relink_case(proto::RelinkCaseRequest { case_id }).await.map_err(call_error)?.into_inner();
            if conn.json {
                print_json(&reply)?;
            } else if let Some(c) = reply.case {
                println!(
                    "{}: {} — supervisors {}",
                    c.case_id,
                    c.state,
                    c.variables.get("supervisors").cloned().unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `enterprise …`.
pub(crate) async fn enterprise(conn: &Conn, cmd: EnterpriseCommand) -> Result<ExitCode> {
    let mut admin = AdminServiceClient::new(channel(conn).await?);
    let EnterpriseCommand::Show { code } = cmd;
    let p = admin
        .get_enterprise_profile(proto::GetEnterpriseProfileRequest { credit_code: code })
        .await
        .map_err(call_error)?
        .into_inner();
    if conn.json {
        print_json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} {}", p.credit_code, p.name);
    println!(
        "credit grade: {} (case {})",
        if p.credit_grade.is_empty() { "-" } else { &p.credit_grade },
        p.credit_grade_case
    );
    let var = |i: &proto::ProfileInstance, n: &str| i.variables.get(n).cloned().unwrap_or_default();
    println!("\ncases");
    let rows: Vec<Vec<String>> = p
        .cases
        .iter()
        .map(|c| {
            vec![
                c.instance_id.clone(),
                c.state.clone(),
                var(c, "handling_item"),
                var(c, "route"),
                var(c, "credit_grade"),
                var(c, "license_no"),
                when(c.created_at.as_ref()),
            ]
        })
        .collect();
    print!("{}", table(&["CASE", "STATE", "ITEM", "ROUTE", "GRADE", "LICENCE", "ACCEPTED"], &rows));
    println!("\ntasks and inspections");
    let rows: Vec<Vec<String>> = p
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.instance_id.clone(),
                t.workflow.clone(),
                t.state.clone(),
                format!("{}/{}", var(t, "department"), var(t, "office")),
                var(t, "result"),
            ]
        })
        .collect();
    print!("{}", table(&["TASK", "KIND", "STATE", "SUPERVISOR", "RESULT"], &rows));
    println!("\nevents");
    let rows: Vec<Vec<String>> = p
        .events
        .iter()
        .map(|e| vec![when(e.at.as_ref()), e.kind.clone(), e.instance_id.clone(), e.detail.chars().take(80).collect()])
        .collect();
    print!("{}", table(&["AT", "EVENT", "INSTANCE", "DETAIL"], &rows));
    println!("\ncredit records");
    for m in &p.credit_records {
        println!("  [{}] {}", m.state, m.text);
    }
    println!("\nopen deadlines");
    for d in &p.open_deadlines {
        if let Some(dl) = &d.deadline {
            println!("  {} {} due {}", d.instance_id, dl.name, when(dl.due.as_ref()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plans(plans: &[proto::SpotCheckPlan]) {
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|p| {
            vec![
                p.plan_id.clone(),
                p.state.clone(),
                p.supervision_item.clone(),
                p.office.clone(),
                format!("{}{}", p.schedule, if p.working_days_only { " (working days)" } else { "" }),
                p.ratios.clone(),
                format!("{}/{}", p.drawn, p.runs),
                when(p.next_run.as_ref()),
            ]
        })
        .collect();
    print!("{}", table(&["PLAN", "STATE", "ITEM", "OFFICE", "SCHEDULE", "RATIOS", "DRAWN", "NEXT RUN"], &rows));
}

/// Runs `spotcheck …`.
pub(crate) async fn spotcheck(conn: &Conn, cmd: SpotCheckCommand) -> Result<ExitCode> {
    let ch = channel(conn).await?;
    let mut admin = AdminServiceClient::new(ch.clone());
    match cmd {
        SpotCheckCommand::Create {
            code,
            region,
            name,
            office,
            item,
            schedule,
            working_days_only,
            ratios,
            inspectors,
        } => {
            let plan = admin
                .create_spot_check_plan(proto::CreateSpotCheckPlanRequest {
                    code,
                    region_code: region,
                    name,
                    office,
                    supervision_item: item,
                    schedule,
                    working_days_only,
                    ratios,
                    inspectors_per_target: inspectors,
                })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&plan)?;
            } else {
                print_plans(&[plan]);
            }
        }
        SpotCheckCommand::List { region } => {
            let reply = admin
                .list_spot_check_plans(proto::ListSpotCheckPlansRequest { region_code: region })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                print_plans(&reply.plans);
            }
        }
        SpotCheckCommand::Runs { plan_id, records } => {
            let reply = admin
                .list_spot_check_runs(proto::ListSpotCheckRunsRequest { plan_id, include_records: records })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                print_runs(&reply);
            }
        }
        SpotCheckCommand::End { plan_id, reason } => {
            let plan = admin
                .end_spot_check_plan(proto::EndSpotCheckPlanRequest { plan_id, reason })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&plan)?;
            } else {
                print_plans(&[plan]);
            }
        }
        SpotCheckCommand::Result { task_id, outcome, findings } => {
            let mut supervision = SupervisionServiceClient::new(ch);
            let t = supervision
                .report_spot_check_result(proto::ReportSpotCheckResultRequest { task_id, outcome, findings })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&t)?;
            } else {
                println!("{}: {} ({})", t.task_id, t.state, t.result);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A plan's runs as tables.
pub(crate) fn print_runs(reply: &proto::ListSpotCheckRunsReply) {
    for r in &reply.runs {
        let by_grade: std::collections::BTreeMap<&String, &u32> = r.population_by_grade.iter().collect();
        let population: Vec<String> = by_grade.iter().map(|(g, n)| format!("{g}:{n}")).collect();
        println!(
            "run {} due {} drawn {} — seed {} ({}), population {}, {} drawn, {}",
            r.run,
            when(r.due_at.as_ref()),
            when(r.drawn_at.as_ref()),
            r.seed,
            r.algorithm,
            population.join(" "),
            r.targets.len(),
            if r.verified { "verified: the draw repeats from its record" } else { "NOT VERIFIED" }
        );
        let rows: Vec<Vec<String>> = r
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.credit_code.clone(),
                    t.credit_grade.clone(),
                    t.applicant_name.clone(),
                    t.inspectors.join(", "),
                    t.task_id.clone(),
                    t.state.clone(),
                    t.result.clone(),
                ]
            })
            .collect();
        print!("{}", table(&["ENTERPRISE", "GRADE", "NAME", "INSPECTORS", "TASK", "STATE", "RESULT"], &rows));
    }
}
