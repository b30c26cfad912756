//! `shenguan archive`: cases closed before a day written from a running server to a
//! gzip-compressed JSON-lines file, then removed from it; `archive show` reads the file back.
//!
//! Nothing is removed before the whole file is on disk: it is written as `FILE.partial`,
//! synced, renamed and its directory synced, and only then does the server get the list. A
//! run that fails before that leaves the database as it was and no file; one that fails while
//! removing leaves a whole archive and the cases not yet removed in the database, for the next
//! run. The format and the rule for what may be archived are the engine's
//! ([`shenguan::archive`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use chrono::NaiveDate;
use clap::{Args, Subcommand};
use shenguan::archive::{CaseRecord, Header, Reader, Trailer, FORMAT};
use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::{ExportArchiveRequest, RemovableCase, RemoveArchivedRequest};

use crate::client::{call_error, channel, Conn};

/// `shenguan archive …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ArchiveArgs {
    /// Read an archive back.
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
    /// Archive the cases that closed before this day (YYYY-MM-DD, China Standard Time).
    #[arg(long, value_parser = parse_day, required_unless_present = "older_than_years")]
    before: Option<NaiveDate>,
    /// Or: the cases that closed more than this many years before today.
    #[arg(long, value_name = "YEARS", conflicts_with = "before", value_parser = clap::value_parser!(u32).range(1..=100))]
    older_than_years: Option<u32>,
    /// The archive to write (must not exist): gzip-compressed JSON lines.
    #[arg(long, value_name = "FILE", required = true)]
    out: Option<PathBuf>,
    /// Write the archive and remove nothing (to look at what would go).
    #[arg(long)]
    keep: bool,
    /// Cases the server reads per page.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    page: u32,
    /// Server and output.
    #[command(flatten)]
    conn: Conn,
}

/// `shenguan archive show …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ArchiveCommand {
    /// Print one archived case's timeline (the case and its tasks, every step and message;
    /// `--json`: the archived record), or without a case, the cases the archive holds.
    Show {
        /// The archive file.
        file: PathBuf,
        /// The case id.
        case: Option<String>,
    },
}

fn parse_day(s: &str) -> Result<NaiveDate, String> {
    shenguan::calendar::parse_date(s).ok_or_else(|| format!("{s:?} is not a date; expected YYYY-MM-DD"))
}

/// Runs `archive …`.
pub(crate) async fn run(args: ArchiveArgs) -> Result<ExitCode> {
    if let Some(ArchiveCommand::Show { file, case }) = args.command {
        return show(&file, case.as_deref(), args.conn.json);
    }
    let out = args.out.ok_or_else(|| anyhow!("--out FILE is required"))?;
    let today = chrono::Utc::now().with_timezone(&shenguan::calendar::DEFAULT_TZ).date_naive();
    let before = match (args.before, args.older_than_years) {
        (Some(day), _) => day,
        (None, Some(years)) => today
            .checked_sub_months(chrono::Months::new(years * 12))
            .ok_or_else(|| anyhow!("{years} years before {today} is out of range"))?,
        (None, None) => bail!("--before DAY or --older-than-years N is required"),
    };
    archive(&args.conn, before, &out, args.keep, args.page).await
}

/// A file created for writing that is removed unless kept.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn archive(conn: &Conn, before: NaiveDate, out: &Path, keep: bool, page: u32) -> Result<ExitCode> {
    if out.exists() {
        bail!("{} exists; an archive is never written over a file", out.display());
    }
    let mut partial_name = out.as_os_str().to_owned();
    partial_name.push(".partial");
    let partial = Partial { path: PathBuf::from(partial_name), kept: false };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial.path)
        .with_context(|| format!("creating {}", partial.path.display()))?;
    let mut admin = AdminServiceClient::new(channel(conn).await?);

    let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let header = Header {
        shenguan_archive: FORMAT,
        before: before.to_string(),
        written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        server: conn.server.clone(),
    };
    let write_err = || format!("writing {}", partial.path.display());
    writeln!(gz, "{}", serde_json::to_string(&header)?).with_context(write_err)?;
    let (mut removable, mut held_back, mut instances) = (Vec::new(), Vec::new(), 0usize);
    let mut after = String::new();
    loop {
        let request = ExportArchiveRequest { before: before.to_string(), after: after.clone(), limit: page };
        let reply = admin.export_archive(request).await.map_err(call_error)?.into_inner();
        for case in reply.cases {
            writeln!(gz, "{}", case.record).with_context(write_err)?;
            instances += case.instances.len();
            removable.push(RemovableCase { case_id: case.case_id, instances: case.instances });
        }
        held_back.extend(reply.held_back);
        eprint!("\rarchive: {} cases written, {} held back", removable.len(), held_back.len());
        if reply.next.is_empty() {
            break;
        }
        after = reply.next;
    }
    eprintln!();
    writeln!(gz, "{}", serde_json::to_string(&Trailer { cases: removable.len() as u64 })?).with_context(write_err)?;
    let file =
        gz.finish().with_context(write_err)?.into_inner().map_err(|e| anyhow!("{}: {}", write_err(), e.error()))?;
    file.sync_all().with_context(write_err)?;
    drop(file);
    std::fs::rename(&partial.path, out).with_context(|| format!("renaming the archive to {}", out.display()))?;
    let mut partial = partial;
    partial.kept = true;
    sync_dir(out)?;
    println!("{} cases ({instances} instances) closed before {before} written to {}", removable.len(), out.display());
    for h in held_back.iter().take(20) {
        println!("held back: {}: {}", h.case_id, h.reason);
    }
    if held_back.len() > 20 {
        println!("held back: … and {} more", held_back.len() - 20);
    }
    if keep || removable.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }

    // The name recorded with every case, where `archive show` will find it.
    let name = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned()).display().to_string();
    let (mut removed, mut changed) = (0u64, Vec::new());
    for chunk in removable.chunks(page as usize) {
        let request =
            RemoveArchivedRequest { archive: name.clone(), before: before.to_string(), cases: chunk.to_vec() };
        let reply = match admin.remove_archived(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                return Err(call_error(status).context(format!(
                    "the archive {} is whole; {removed} of its {} cases were removed before this error, the rest \
                     are still in the database (run the archive again to take them)",
                    out.display(),
                    removable.len()
                )))
            }
        };
        removed += u64::from(reply.removed);
        changed.extend(reply.changed);
        eprint!("\rarchive: {removed} of {} cases removed", removable.len());
    }
    eprintln!();
    println!("{removed} cases removed from the database");
    if !changed.is_empty() {
        println!(
            "{} cases changed after they were written and were kept in the database (their lines in the archive are \
             stale): {}",
            changed.len(),
            changed.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Syncs the directory holding `path`, so that its new name survives a crash.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

fn open(file: &Path) -> Result<(Reader<std::io::BufReader<flate2::read::GzDecoder<std::fs::File>>>, Header)> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let input = std::io::BufReader::new(flate2::read::GzDecoder::new(f));
    Reader::new(input).with_context(|| format!("{} is not a readable shenguan archive", file.display()))
}

fn show(file: &Path, case: Option<&str>, json: bool) -> Result<ExitCode> {
    let (mut reader, header) = open(file)?;
    let context = || format!("reading {}", file.display());
    let Some(case) = case else {
        println!(
            "archive of cases closed before {}, written {} from {}",
            header.before, header.written_at, header.server
        );
        let mut n = 0;
        while let Some(record) = reader.next_case().with_context(context)? {
            n += 1;
            println!("{}\t{}\tclosed {}", record.case_id, record.state, local(record.closed_at));
        }
        println!("{n} cases");
        return Ok(ExitCode::SUCCESS);
    };
    let Some(record) = reader.next_matching(|id| id == case).with_context(context)? else {
        bail!("case {case} is not in {}", file.display());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print!("{}", timeline(&record));
    }
    Ok(ExitCode::SUCCESS)
}

fn local(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.with_timezone(&shenguan::calendar::DEFAULT_TZ).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| at.to_string())
}

/// A case's archived timeline, for people: the case, then each task, every step with its
/// messages.
fn timeline(record: &CaseRecord) -> String {
    let mut out = format!(
        "case {} — {} (started {}, closed {})\n",
        record.case_id,
        record.state,
        local(record.created_at),
        local(record.closed_at)
    );
    for i in &record.instances {
        out += &format!("\n{} — {} v{}, {}\n", i.row.id, i.row.workflow, i.row.version, i.row.state);
        for h in &i.history {
            let what = match &h.command {
                shenguan::machine::CommandKind::Start { .. } => "start".to_owned(),
                shenguan::machine::CommandKind::Event { name, .. } => format!("event {name}"),
                shenguan::machine::CommandKind::Timer { name, .. } => format!("timer {name}"),
                shenguan::machine::CommandKind::Replan { calendar } => format!("replan ({calendar})"),
            };
            let from = h.from.as_deref().unwrap_or("—");
            out += &format!("  #{:<3} {}  {from} → {}  {what}  by {}\n", h.seq, local(h.at), h.to, h.actor);
            for m in i.messages.iter().filter(|m| m.seq == h.seq) {
                let to = m.message.recipient.as_deref().unwrap_or("");
                out += &format!("        {} {to} [{}]: {}\n", m.message.channel, m.status, m.message.body);
            }
        }
    }
    out
}
