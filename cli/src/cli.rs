//! The `shenguan` command line: the server, the calendar and workflow tools, and offline admin
//! commands. `main` parses and calls [`run`]; this is the only module besides `main` that
//! uses `anyhow`, because its errors end at a person's terminal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use shenguan::calendar::Calendars;
use shenguan::clock::{self, Clock, SystemClock, VirtualClock};
use shenguan::definition::{render, Registry};
use shenguan::engine;

/// shenguan: durable workflows for approval–supervision linkage.
#[derive(Debug, Parser)]
#[command(name = "shenguan", version, about)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the server (gRPC) on a SQLite file or, with several nodes, on PostgreSQL.
    Serve(Box<ServeArgs>),
    /// Apply the schema migrations this release has to a database (a SQLite file or a
    /// PostgreSQL URL), then exit. `serve` also applies them at start; run this first to
    /// upgrade a database while its nodes are stopped or to see what an upgrade changes.
    Migrate {
        /// The database: a SQLite file or `postgres://user:password@host:port/db`.
        #[arg(long, env = "SHENGUAN_DATABASE", default_value = "shenguan.db")]
        database: String,
    },
    /// Copy a SQLite database to a new file while servers keep writing to it: one consistent
    /// snapshot, everything committed before the backup began. PostgreSQL is backed up with
    /// its own tools (ops/runbook.md).
    Backup {
        /// The database to copy.
        #[arg(long, visible_alias = "database", env = "SHENGUAN_DATABASE", default_value = "shenguan.db")]
        db: String,
        /// The backup file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Put a backup in place of a SQLite database no server has open, then replay every case
    /// in it (as `admin verify` does). The database replaced is moved aside, not deleted.
    Restore {
        /// The backup file.
        backup: PathBuf,
        /// The database to replace (or create).
        #[arg(long, visible_alias = "database", env = "SHENGUAN_DATABASE", default_value = "shenguan.db")]
        db: String,
        /// Definitions and calendars, for the replay.
        #[command(flatten)]
        data: DataArgs,
    },
    /// Write the cases that closed before a day (revoked, or licensed and supervised to the
    /// end) from a running server to a compressed archive, then remove them from its database;
    /// `archive show FILE CASE` reads one back. The statistics keep counting them.
    Archive(Box<crate::archive::ArchiveArgs>),
    /// `serve`'s configuration file: the effective configuration, or a file checked.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Working-day calendar questions.
    #[command(subcommand)]
    Calendar(CalendarCommand),
    /// Print the OpenAPI document of the JSON API, as `GET /openapi.json` serves it (the
    /// repository keeps it in docs/openapi.json).
    Openapi,
    /// Workflow definition tools.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Offline administration of a database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Cases on a running server: accept, show, timeline, materials, complete, revoke, list.
    Case {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::client::CaseCommand,
    },
    /// Supervision tasks on a running server: list, ack, report.
    Task {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::client::TaskCommand,
    },
    /// Timeliness statistics per department and office, from a running server.
    Stats {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// The period and filters.
        #[command(flatten)]
        args: crate::client::StatsArgs,
    },
    /// The sandbox clock of a server started with --virtual-clock.
    #[command(subcommand)]
    Clock(ClockCommand),
    /// Dev-mode tokens, for trying roles against a server started without keys.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Development TLS certificates: a CA, a server certificate, client certificates.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Outbound messages on a running server: dead letters, and retrying them.
    Outbox {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::client::OutboxCommand,
    },
    /// Stream consumers on a running server: who reads the stream, how far behind, and dropping
    /// one that is gone for good (retention keeps what a consumer has not acknowledged).
    Consumer {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::client::ConsumerCommand,
    },
    /// The organisation and catalogs on a running server: import, export, history, linkage
    /// problems, relinking a case.
    Catalog {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::catalog::CatalogCommand,
    },
    /// An enterprise's profile across approval and supervision, from a running server.
    Enterprise {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::catalog::EnterpriseCommand,
    },
    /// Credit-graded spot-check plans (双随机、一公开) on a running server.
    Spotcheck {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// What to do.
        #[command(subcommand)]
        command: crate::catalog::SpotCheckCommand,
    },
    /// Webhook receivers' tools.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// A tour: a real server on a temporary database with a virtual clock, a few hundred cases
    /// over two months that include National Day, then a summary and one full timeline; then,
    /// in December, a small catalog, catalogued cases and four weekly spot-check runs.
    Demo(crate::demo::DemoArgs),
}

/// `shenguan clock …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClockCommand {
    /// Move the virtual clock forward; answers once everything due has fired.
    Advance {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// By or to.
        #[command(flatten)]
        args: crate::client::AdvanceArgs,
    },
}

/// `shenguan webhook …`.
#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Check a received webhook's signature, as a receiver must: exit 0 and "valid", or exit 1
    /// and why not. The body is read from a file (or stdin with `-`), byte for byte.
    Verify {
        /// The file holding the shared secret (the destination's secret_file).
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
        /// The X-Shenguan-Timestamp header.
        #[arg(long)]
        timestamp: String,
        /// The X-Shenguan-Signature header.
        #[arg(long)]
        signature: String,
        /// The raw body.
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// Seconds the timestamp may be from now.
        #[arg(long, default_value_t = shenguan::outbound::sign::DEFAULT_TOLERANCE_SECS)]
        tolerance: i64,
    },
}

/// `shenguan tls …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TlsCommand {
    /// Write a development CA (`ca.pem`, `ca.key`), a server certificate for the names given
    /// (`server.pem`, `server.key`) and, with `--client`, client certificates for mTLS
    /// (`client-NAME.pem`, `client-NAME.key`) into DIR. Then: `serve --tls-cert DIR/server.pem
    /// --tls-key DIR/server.key` and a client with `--server https://… --ca-cert DIR/ca.pem`.
    /// Keys are written readable by their owner only. Not for production: use the
    /// organisation's CA there.
    DevCert {
        /// The folder to write into (made if missing); files already there are not overwritten.
        dir: PathBuf,
        /// A name the server is reached by: a DNS name or an IP address (repeatable).
        #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        names: Vec<String>,
        /// A client certificate to make, named by its subject (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
}

/// `shenguan token …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token signed with the dev-mode key of a local server (`<db>.dev-key`). A server
    /// started with keys (`--jwt-keys`, `--jwks`) does not accept these.
    Issue(TokenArgs),
}

/// What a dev token says.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// A role (repeatable): engine_admin, region_admin, auditor, department_admin,
    /// office_admin, platform, supervisor.
    #[arg(long = "role", required = true, value_name = "ROLE")]
    pub(crate) roles: Vec<String>,
    /// Region code (six digits; `000000`: the whole country).
    #[arg(long, default_value = "")]
    pub(crate) region: String,
    /// Department.
    #[arg(long, default_value = "")]
    pub(crate) department: String,
    /// Office.
    #[arg(long, default_value = "")]
    pub(crate) office: String,
    /// The subject (default: made from the role and scope).
    #[arg(long)]
    pub(crate) subject: Option<String>,
    /// May act on behalf of a named person (`x-shenguan-on-behalf-of`).
    #[arg(long)]
    pub(crate) on_behalf: bool,
    /// How long the token is valid.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: std::time::Duration,
    /// The server's database: its dev key is `<db>.dev-key`.
    #[arg(long, default_value = "shenguan.db")]
    pub(crate) db: PathBuf,
}

/// Who may call `serve`, over what.
#[derive(Debug, clap::Args)]
pub(crate) struct SecurityArgs {
    /// Refuse to start without token keys, with the dev key, or with an unset issuer.
    #[arg(long, env = "SHENGUAN_PRODUCTION")]
    pub(crate) production: bool,
    /// Public keys that sign tokens (RS256 or ES256, PEM): a file, or a directory of `*.pem`
    /// whose file names (without `.pem`) are the key ids. Re-read when they change.
    #[arg(long, value_name = "PATH")]
    pub(crate) jwt_keys: Option<PathBuf>,
    /// A JWKS file of token keys. Re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub(crate) jwks: Option<PathBuf>,
    /// The issuer (`iss`) tokens must name.
    #[arg(long, value_name = "ISS")]
    pub(crate) issuer: Option<String>,
    /// The audience (`aud`) tokens must name.
    #[arg(long, value_name = "AUD", default_value = shenguan::auth::verify::AUDIENCE)]
    pub(crate) audience: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) token_leeway: std::time::Duration,
    /// TLS: the server's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS: the server's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// mTLS: the CA (PEM) that signs client certificates; clients may then present one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) client_ca: Option<PathBuf>,
    /// mTLS: refuse clients without a certificate.
    #[arg(long, requires = "client_ca")]
    pub(crate) require_client_cert: bool,
    /// Service accounts proved by client certificates (TOML, see README: Security).
    #[arg(long, value_name = "FILE")]
    pub(crate) service_accounts: Option<PathBuf>,
    /// Calls per second per principal (bursts of twice that); 0: no limit.
    #[arg(long, value_name = "N", default_value = "20000")]
    pub(crate) rate_limit: u32,
    /// Failed authentications per second from one IP address (bursts of twice that) before
    /// the address is refused without its tokens being checked; 0: no limit.
    #[arg(long, value_name = "N", default_value = "20")]
    pub(crate) failed_auth_rate: u32,
    /// Connections open at once; keep below the file-descriptor limit (LimitNOFILE).
    #[arg(long, value_name = "N", default_value = "10000")]
    pub(crate) max_connections: usize,
    /// Connections from one IP address.
    #[arg(long, value_name = "N", default_value = "512")]
    pub(crate) max_connections_per_peer: usize,
    /// A connection with no call running is closed after this long without a byte from it
    /// (and a new connection that sends nothing, after this or 10 s, whichever is shorter).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub(crate) idle_timeout: std::time::Duration,
    /// A request's message must have arrived within this (a trickling stream is answered
    /// DEADLINE_EXCEEDED).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) body_timeout: std::time::Duration,
}

/// Where definitions and calendars come from.
#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// Load workflow definitions from this folder instead of the ones built in.
    #[arg(long, value_name = "DIR")]
    pub(crate) workflows: Option<PathBuf>,
    /// Load calendars from this folder (`<year>.toml`, `regions/`) instead of the ones built in.
    #[arg(long, value_name = "DIR")]
    pub(crate) calendars: Option<PathBuf>,
}

impl DataArgs {
    fn registry(&self) -> Result<Registry> {
        Ok(match &self.workflows {
            Some(dir) => Registry::from_dir(dir)?,
            None => Registry::embedded()?,
        })
    }

    fn calendars(&self) -> Result<Calendars> {
        Ok(match &self.calendars {
            Some(dir) => Calendars::from_dir(dir)?,
            None => Calendars::embedded()?,
        })
    }
}

/// `shenguan serve`. Every option here may also be set in the configuration file
/// ([`crate::config`]), under its long name.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A configuration file (TOML): each key a serve option without its dashes, e.g.
    /// `listen = "0.0.0.0:50051"` (ops/shenguan.example.toml). The environment and flags
    /// override it; `shenguan config print` shows the result.
    #[arg(long, env = "SHENGUAN_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// SQLite database file (created if missing). The dev key and token are kept beside it,
    /// also when the state is on PostgreSQL.
    #[arg(long, default_value = "shenguan.db")]
    pub(crate) db: PathBuf,
    /// The state on PostgreSQL instead: `postgres://user:password@host:port/db` (or a SQLite
    /// path). Several nodes may serve one PostgreSQL database.
    #[arg(long, env = "SHENGUAN_DATABASE", value_name = "URL")]
    pub(crate) database: Option<String>,
    /// This node's name among several on one PostgreSQL (default: host name and process id).
    #[arg(long, env = "SHENGUAN_NODE", value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// How long a shard lease lasts without renewal: a stopped node's deadlines move to the
    /// others after about this long.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) lease: std::time::Duration,
    /// How often leases are renewed and rebalanced.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub(crate) lease_tick: std::time::Duration,
    /// Shards instances are spread over; fixed when a PostgreSQL database is first used, and
    /// every node must use the same count.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) shards: u32,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub(crate) listen: SocketAddr,
    /// Sandbox mode: time moves only when an admin advances it. Optionally the start
    /// instant (RFC 3339); default: now.
    #[arg(long, value_name = "START", num_args = 0..=1, default_missing_value = "now")]
    pub(crate) virtual_clock: Option<String>,
    /// Cap the database at this many pages (writes beyond fail as unavailable).
    #[arg(long, hide = true)]
    pub(crate) max_db_pages: Option<u32>,
    /// Log as JSON lines.
    #[arg(long)]
    pub(crate) log_json: bool,
    /// Export traces over OTLP/gRPC to this collector, e.g. `http://127.0.0.1:4317`: a span per
    /// call (method, request id, principal, case) and per writer batch. Off by default.
    #[arg(long, env = "SHENGUAN_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_endpoint)]
    pub(crate) otlp_endpoint: Option<String>,
    /// The credit grades AcceptCase accepts (repeatable). Matched ignoring case, surrounding
    /// space and full-width forms; any other grade is refused.
    #[arg(long, value_name = "GRADE", default_values = shenguan::domain::credit::DEFAULT_GRADES)]
    pub(crate) credit_grade: Vec<String>,
    /// A credit grade that may not take the commitment route (repeatable). Must be one of the
    /// credit grades.
    #[arg(long, value_name = "GRADE", default_values = shenguan::domain::credit::DEFAULT_BARRED)]
    pub(crate) barred_credit_grade: Vec<String>,
    /// How long a request id is remembered, so that a retry gets the first answer
    /// (e.g. `7d`, `36h`).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub(crate) idempotency_retention: std::time::Duration,
    /// Deadlines in a year whose State Council notice is not loaded: `provisional` computes
    /// them on the statutory days off and marks them provisional (they are re-planned when the
    /// notice is loaded); `refuse` refuses them.
    #[arg(long, value_name = "POLICY", default_value = "provisional")]
    pub(crate) calendar_policy: shenguan::calendar::Policy,
    /// From this date each year (MM-DD), warn while next year has no official calendar.
    #[arg(long, value_name = "MM-DD", default_value = "11-01", value_parser = parse_month_day)]
    pub(crate) calendar_warn_from: (u32, u32),
    /// Definitions and calendars. The calendars seed a new database only; an existing one keeps
    /// what it holds (load new files with `shenguan calendar load`).
    #[command(flatten)]
    pub(crate) data: DataArgs,
    /// Identity, TLS and limits.
    #[command(flatten)]
    pub(crate) security: SecurityArgs,
    /// Where messages are pushed: webhooks, an SMS gateway, the credit platform, with the retry
    /// policy and the SMS templates (ops/outbound.example.toml). Without it every message is
    /// served by EventsService.Subscribe only.
    #[arg(long, value_name = "FILE")]
    pub(crate) outbound: Option<PathBuf>,
}

fn parse_month_day(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a month and day such as 11-01");
    let (m, d) = s.split_once('-').ok_or_else(bad)?;
    let (m, d) = (m.parse::<u32>().map_err(|_| bad())?, d.parse::<u32>().map_err(|_| bad())?);
    NaiveDate::from_ymd_opt(2000, m, d).map(|_| (m, d)).ok_or_else(bad)
}

/// `shenguan calendar …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CalendarCommand {
    /// Print the n-th working day strictly after DATE.
    AddWorkingDays {
        /// The start date, YYYY-MM-DD.
        date: String,
        /// How many working days.
        n: u32,
        /// Region code (default: the national calendar).
        #[arg(long)]
        region: Option<String>,
        /// Calendar folder (default: built in).
        #[arg(long, value_name = "DIR")]
        calendars: Option<PathBuf>,
    },
    /// Print `true` if DATE is a working day, else `false`.
    IsWorkingDay {
        /// The date, YYYY-MM-DD.
        date: String,
        /// Region code.
        #[arg(long)]
        region: Option<String>,
        /// Calendar folder.
        #[arg(long, value_name = "DIR")]
        calendars: Option<PathBuf>,
    },
    /// Load a year or region file into a running server (re-plans the deadlines it moves).
    Load {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
        /// The TOML file (the format of ops/calendars).
        file: PathBuf,
        /// Change nothing; say how many deadlines would move, per region and department.
        #[arg(long)]
        dry_run: bool,
        /// Answer once every deadline it moves has been re-planned.
        #[arg(long)]
        wait: bool,
    },
    /// A running server's calendars: each region's years, official or provisional; re-plans;
    /// what to load.
    Status {
        /// Server and output.
        #[command(flatten)]
        conn: crate::client::Conn,
    },
    /// Print a year's holidays and make-up working days.
    Show {
        /// The year.
        year: i32,
        /// Region code.
        #[arg(long)]
        region: Option<String>,
        /// Calendar folder.
        #[arg(long, value_name = "DIR")]
        calendars: Option<PathBuf>,
    },
}

/// `shenguan workflow …`.
#[derive(Debug, Subcommand)]
pub(crate) enum WorkflowCommand {
    /// Check definition files; prints every problem as FILE:LINE: message and exits 1.
    Validate {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a definition as a Mermaid stateDiagram-v2.
    Graph {
        /// Workflow name.
        name: String,
        /// Version (default: the newest).
        #[arg(long)]
        version: Option<u32>,
        /// Definitions folder (default: built in).
        #[arg(long, value_name = "DIR")]
        workflows: Option<PathBuf>,
    },
    /// Write the JSON Schema of every record type the workflows emit, `TYPE.vN.json`, to a
    /// folder (the repository keeps them in docs/schemas).
    Schemas {
        /// Where to write them (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Definitions folder (default: built in).
        #[arg(long, value_name = "DIR")]
        workflows: Option<PathBuf>,
    },
}

/// `shenguan config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the configuration `serve` would run with, given the same options, file and
    /// environment: a configuration file itself, each value followed by where it came from
    /// (default, file FILE:LINE, env NAME or flag); a database URL's password is hidden.
    Print {
        /// The same options as `serve`, `--config` included.
        #[command(flatten)]
        serve: Box<ServeArgs>,
        /// Each option's help above it (ops/shenguan.example.toml is this with no file, flag or
        /// environment).
        #[arg(long)]
        explain: bool,
        /// Filled in by [`crate::config::parse`].
        #[arg(skip)]
        shown: Vec<crate::config::Shown>,
    },
    /// Check a configuration file: unknown keys and values `serve` would refuse, each named
    /// FILE:LINE (exit 1).
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `shenguan admin …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Replay every instance's history and report any that differs from its stored row.
    Verify {
        /// The database: a SQLite file or a PostgreSQL URL.
        #[arg(long, visible_alias = "database", env = "SHENGUAN_DATABASE", default_value = "shenguan.db")]
        db: String,
        /// Definitions and calendars.
        #[command(flatten)]
        data: DataArgs,
    },
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    match s.parse::<hyper::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not an http:// or https:// URL with a host")),
    }
}

fn parse_date(s: &str) -> Result<NaiveDate> {
    shenguan::calendar::parse_date(s).ok_or_else(|| anyhow!("{s:?} is not a date; expected YYYY-MM-DD"))
}

fn calendars_from(dir: &Option<PathBuf>) -> Result<Calendars> {
    DataArgs { workflows: None, calendars: dir.clone() }.calendars()
}

fn out(text: impl std::fmt::Display) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("writing to stdout")
}

/// Runs a parsed command line.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate { database } => migrate(&database).await,
        Command::Config(ConfigCommand::Print { shown, explain, .. }) => {
            print!("{}", crate::config::render(&shown, explain));
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => match crate::config::check(&file) {
            Ok(n) => {
                out(format!("{}: {n} settings, all known and valid", file.display()))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Backup { db, out } => backup(&db, &out).await,
        Command::Archive(args) => crate::archive::run(*args).await,
        Command::Restore { backup, db, data } => restore(&backup, &db, &data).await,
        Command::Calendar(CalendarCommand::Load { conn, file, dry_run, wait }) => {
            crate::client::calendar(&conn, crate::client::CalendarCall::Load { file, dry_run, wait }).await
        }
        Command::Calendar(CalendarCommand::Status { conn }) => {
            crate::client::calendar(&conn, crate::client::CalendarCall::Status).await
        }
        Command::Calendar(cmd) => calendar(cmd),
        Command::Workflow(cmd) => workflow(cmd),
        Command::Openapi => {
            println!("{}", shenguan::server::json::document_text());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Case { conn, command } => crate::client::case(&conn, command).await,
        Command::Task { conn, command } => crate::client::task(&conn, command).await,
        Command::Stats { conn, args } => crate::client::stats(&conn, args).await,
        Command::Clock(ClockCommand::Advance { conn, args }) => crate::client::advance(&conn, args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Outbox { conn, command } => crate::client::outbox(&conn, command).await,
        Command::Consumer { conn, command } => crate::client::consumer(&conn, command).await,
        Command::Catalog { conn, command } => crate::catalog::catalog(&conn, command).await,
        Command::Enterprise { conn, command } => crate::catalog::enterprise(&conn, command).await,
        Command::Spotcheck { conn, command } => crate::catalog::spotcheck(&conn, command).await,
        Command::Webhook(WebhookCommand::Verify { secret_file, timestamp, signature, body, tolerance }) => {
            let secret = std::fs::read(&secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
            let secret = shenguan::outbound::sign::secret_from_file(&secret);
            let body = if body.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading stdin")?;
                b
            } else {
                std::fs::read(&body).with_context(|| format!("reading {}", body.display()))?
            };
            let now = chrono::Utc::now().timestamp();
            match shenguan::outbound::sign::verify(&secret, &timestamp, &signature, &body, now, tolerance) {
                Ok(()) => {
                    out("valid")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Tls(TlsCommand::DevCert { dir, names, clients }) => {
            for path in crate::security::dev_cert(&dir, &names, &clients)? {
                out(path.display().to_string())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Issue(args)) => {
            out(crate::security::issue(&args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(AdminCommand::Verify { db, data }) => {
            verify(&shenguan::store::Database::parse(&db), &data.registry()?, &data.calendars()?).await
        }
    }
}

fn calendar(cmd: CalendarCommand) -> Result<ExitCode> {
    match cmd {
        CalendarCommand::AddWorkingDays { date, n, region, calendars } => {
            let cals = calendars_from(&calendars)?;
            let cal = region.as_deref().map_or(cals.national(), |r| cals.region(r));
            let from = parse_date(&date)?;
            let to = cal.add_working_days(from, n)?;
            out(to)?;
            if cal.provisional_between(from, to) {
                provisional_note()?;
            }
        }
        CalendarCommand::IsWorkingDay { date, region, calendars } => {
            let cals = calendars_from(&calendars)?;
            let cal = region.as_deref().map_or(cals.national(), |r| cals.region(r));
            let day = parse_date(&date)?;
            out(cal.is_working_day(day)?)?;
            if cal.provisional_between(day, day) {
                provisional_note()?;
            }
        }
        CalendarCommand::Load { .. } | CalendarCommand::Status { .. } => {
            bail!("calendar load and calendar status are served by the running server")
        }
        CalendarCommand::Show { year, region, calendars } => {
            let cals = calendars_from(&calendars)?;
            let cal = region.as_deref().map_or(cals.national(), |r| cals.region(r));
            let holidays = cal.holidays_in(year)?;
            out(format!("{year} ({})", cal.region()))?;
            match cal.source(year) {
                Some(source) => out(format!("source: {source}"))?,
                None => out(format!(
                    "PROVISIONAL: no notice loaded for {year}; statutory days off only \
                     (《全国年节及纪念日放假办法》), no make-up working days"
                ))?,
            }
            out("holidays:")?;
            for day in holidays {
                out(format!("  {} {:<3} {}", day.date, day.date.format("%a"), day.name))?;
            }
            out("make-up working days:")?;
            for day in cal.workdays_in(year)? {
                out(format!("  {} {:<3} for {}", day.date, day.date.format("%a"), day.name))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// On stderr, so that scripts reading the answer on stdout are not disturbed.
fn provisional_note() -> Result<()> {
    writeln!(
        std::io::stderr().lock(),
        "note: PROVISIONAL — counted over a year with no State Council notice loaded (statutory days off only)"
    )
    .context("writing to stderr")
}

fn workflow(cmd: WorkflowCommand) -> Result<ExitCode> {
    match cmd {
        WorkflowCommand::Validate { files } => {
            let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
            match Registry::from_files(&paths) {
                Ok(registry) => {
                    for def in registry.all() {
                        out(format!("ok: {} v{} ({})", def.name, def.version, def.file))?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(shenguan::definition::Error::Invalid(diags)) => {
                    let mut stderr = std::io::stderr().lock();
                    for d in &diags {
                        writeln!(stderr, "{d}")?;
                    }
                    writeln!(stderr, "{} problem(s)", diags.len())?;
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        WorkflowCommand::Graph { name, version, workflows } => {
            let registry = DataArgs { workflows, calendars: None }.registry()?;
            let def = match version {
                Some(v) => registry.get(&name, v),
                None => registry.latest(&name),
            };
            let Some(def) = def else {
                let known: Vec<String> = registry.all().map(|d| format!("{} v{}", d.name, d.version)).collect();
                bail!(
                    "no workflow {name}{}; known: {}",
                    version.map_or(String::new(), |v| format!(" version {v}")),
                    known.join(", ")
                );
            };
            print!("{}", render::mermaid(def));
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Schemas { out: dir, workflows } => {
            let registry = DataArgs { workflows, calendars: None }.registry()?;
            let schemas = shenguan::definition::schema::schemas(registry.all().map(|d| d.as_ref()))
                .map_err(|e| anyhow::anyhow!(e))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for ((kind, version), schema) in &schemas {
                let path = dir.join(shenguan::definition::schema::file_name(kind, *version));
                std::fs::write(&path, format!("{}\n", serde_json::to_string_pretty(schema)?))
                    .with_context(|| format!("writing {}", path.display()))?;
                out(format!("{}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let otlp = args.otlp_endpoint.clone().map(|endpoint| crate::traces::Otlp {
        endpoint,
        instance: args.node.clone().unwrap_or_else(engine::default_node_name),
    });
    let traces = crate::traces::init(args.log_json, otlp.as_ref()).map_err(|e| anyhow!("--otlp-endpoint: {e}"))?;
    let virtual_clock = match args.virtual_clock.as_deref() {
        None => None,
        Some("now") => Some(VirtualClock::new(SystemClock.now())),
        Some(start) => {
            let t = chrono::DateTime::parse_from_rfc3339(start)
                .map_err(|_| anyhow!("--virtual-clock {start:?} is not an RFC 3339 instant"))?;
            Some(VirtualClock::new(clock::from_datetime(t.with_timezone(&chrono::Utc))))
        }
    };
    let database = match &args.database {
        Some(text) => shenguan::store::Database::parse(text),
        None => shenguan::store::Database::Sqlite(args.db.clone()),
    };
    let sqlite = matches!(database, shenguan::store::Database::Sqlite(_));
    let mut config = engine::Config::with_database(database);
    config.shards = args.shards;
    if args.lease_tick >= args.lease {
        bail!("--lease-tick ({:?}) must be shorter than --lease ({:?})", args.lease_tick, args.lease);
    }
    config.cluster = Some(shenguan::cluster::Settings {
        node: args.node.clone().unwrap_or_else(engine::default_node_name),
        lease: args.lease,
        tick: args.lease_tick,
    });
    config.max_db_pages = args.max_db_pages;
    config.idempotency_retention = i64::try_from(args.idempotency_retention.as_millis())
        .map_err(|_| anyhow!("--idempotency-retention is too long"))?;
    config.calendar_policy = args.calendar_policy;
    let mut options =
        shenguan::server::Options::new(config, Arc::new(args.data.registry()?), args.data.calendars()?, virtual_clock);
    options.calendar_warn_from = args.calendar_warn_from;
    options.credit = shenguan::domain::credit::CreditGrades::new(&args.credit_grade, &args.barred_credit_grade)
        .map_err(|e| anyhow!("credit grades: {e} (see --credit-grade and --barred-credit-grade)"))?;
    // Said before the dev key is made beside it, as the database would say it.
    if let Some(dir) = args.db.parent().filter(|d| sqlite && !d.as_os_str().is_empty() && !d.is_dir()) {
        bail!("cannot open database {}: directory {} does not exist", args.db.display(), dir.display());
    }
    if let Some(path) = &args.outbound {
        options.outbound = shenguan::outbound::Config::load(path)?;
    }
    options.security = crate::security::server(&args.security, &args.db, args.listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // SIGINT (a terminal) or SIGTERM (systemd, a rolling restart): stop serving, let the
    // engine finish, hand shard leases back.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let served = shenguan::server::run(options, listener, shutdown).await;
    traces.shutdown().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `shenguan migrate`.
/// Replays every instance of `database`; the exit code says whether all matched.
async fn verify(database: &shenguan::store::Database, registry: &Registry, calendars: &Calendars) -> Result<ExitCode> {
    let report = shenguan::admin::verify_database(database, registry, calendars).await?;
    for (id, problem) in &report.divergent {
        out(format!("DIVERGENT {id}: {problem}"))?;
    }
    out(format!(
        "verified {} instances ({} history entries): {} divergent",
        report.instances,
        report.entries,
        report.divergent.len()
    ))?;
    Ok(if report.divergent.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn mib(bytes: u64) -> String {
    // Display only: a file's size in MiB to one decimal.
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / 1_048_576.0;
    format!("{m:.1} MiB")
}

async fn backup(database: &str, to: &std::path::Path) -> Result<ExitCode> {
    use shenguan::store::backup;
    let from = backup::sqlite_path(database)?;
    // A line per tenth on stderr: the answer on stdout stays one line for scripts.
    let mut said = 0;
    let summary = backup::backup(&from, to, |p| {
        let tenth = p.written.saturating_mul(10).checked_div(p.expected).unwrap_or(0).min(10);
        if tenth > said && p.written < p.expected {
            said = tenth;
            eprintln!("backup: {} of about {} written", mib(p.written), mib(p.expected));
        }
    })
    .await?;
    out(format!(
        "backed up {} to {}: {} cases, {}, schema version {}",
        from.display(),
        summary.path.display(),
        summary.instances,
        mib(summary.bytes),
        summary.schema
    ))?;
    Ok(ExitCode::SUCCESS)
}

async fn restore(from: &std::path::Path, database: &str, data: &DataArgs) -> Result<ExitCode> {
    use shenguan::store::backup;
    let to = backup::sqlite_path(database)?;
    // Checked before anything is moved: a restore that could not replay its cases changes nothing.
    let (registry, calendars) = (data.registry()?, data.calendars()?);
    let summary = backup::restore(from, &to).await?;
    if let Some(aside) = &summary.replaced {
        out(format!("the database it replaced was moved to {}", aside.display()))?;
    }
    out(format!(
        "restored {} to {}: {} cases, schema version {}",
        from.display(),
        to.display(),
        summary.instances,
        summary.schema
    ))?;
    let database = shenguan::store::Database::Sqlite(to);
    if summary.schema < summary.newest {
        let done = shenguan::store::migrate(&database).await?;
        out(format!("migrated the schema from version {} to {}", summary.schema, done.version))?;
    }
    verify(&database, &registry, &calendars).await
}

async fn migrate(database: &str) -> Result<ExitCode> {
    let database = shenguan::store::Database::parse(database);
    let done = shenguan::store::migrate(&database).await?;
    if done.applied.is_empty() {
        println!("{}: schema is up to date (version {})", database.describe(), done.version);
    } else {
        let list: Vec<String> = done.applied.iter().map(i64::to_string).collect();
        println!(
            "{}: applied migration(s) {}; schema is at version {}",
            database.describe(),
            list.join(", "),
            done.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
