//! The CLI as a gRPC client: `case …`, `task …`, `stats`, `clock advance`. Readable tables by
//! default, `--json` for scripts. A failed call prints one line (`error: CODE: message`) and
//! exits with a code scripts can rely on (see [`exit_code`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use tonic::transport::Channel;

use shenguan::proto::admin_service_client::AdminServiceClient;
use shenguan::proto::intake_service_client::IntakeServiceClient;
use shenguan::proto::supervision_service_client::SupervisionServiceClient;
use shenguan::proto::{self, Case, Task};

/// Where the server is.
#[derive(Debug, Args, Clone)]
pub(crate) struct Conn {
    /// The server's gRPC address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051", env = "SHENGUAN_SERVER")]
    pub(crate) server: String,
    /// Print the response as JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The bearer token (a JWT). Default: $SHENGUAN_TOKEN, else --token-file, else the dev
    /// server's `shenguan.db.dev-token` in this folder.
    #[arg(long, global = true, env = "SHENGUAN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, value_name = "FILE", env = "SHENGUAN_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// TLS (an https:// server): the CA certificate (PEM) that signed the server's.
    #[arg(long, global = true, value_name = "FILE", env = "SHENGUAN_CA_CERT")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// mTLS: this client's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// mTLS: this client's private key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub(crate) struct Bearer(pub(crate) Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub(crate) type Ch = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

impl Conn {
    /// The token: --token / $SHENGUAN_TOKEN, --token-file, the dev token beside shenguan.db.
    fn token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_owned()));
        }
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("--token-file {}", f.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        let dev = crate::security::beside(std::path::Path::new("shenguan.db"), "dev-token");
        let found = std::fs::read_to_string(&dev).ok().map(|t| t.trim().to_owned());
        if found.is_none() {
            let here = std::env::current_dir().map(|d| d.join(&dev)).unwrap_or(dev);
            let _ = NO_TOKEN.set(format!(
                "the CLI sent no token: none was given (--token or SHENGUAN_TOKEN, --token-file or \
                 SHENGUAN_TOKEN_FILE) and there is no dev token at {}; pass --token-file with the \
                 `<db>.dev-token` a dev server wrote beside its database, or a token from `shenguan token issue`",
                here.display()
            ));
        }
        Ok(found)
    }

    fn bearer(&self) -> Result<Bearer> {
        let Some(token) = self.token()? else { return Ok(Bearer(None)) };
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the token is not printable ASCII (is it a JWT?)"))?;
        Ok(Bearer(Some(value)))
    }
}

/// `shenguan case …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CaseCommand {
    /// Accept a case described by a JSON file (see README: API).
    Accept {
        /// The JSON file; `-` reads standard input.
        #[arg(long = "json-file", short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a case, its deadlines and its tasks.
    Show {
        /// Case id, e.g. 320700/SP-2026-0001.
        id: String,
    },
    /// The whole history of a case and its tasks.
    Timeline {
        /// Case id.
        id: String,
    },
    /// The deferred materials were handed in.
    Materials {
        /// Case id.
        id: String,
    },
    /// Complete the approval (licence issued); creates the supervision tasks.
    Complete {
        /// Case id.
        id: String,
        /// Licence number.
        #[arg(long)]
        license_no: String,
        /// Approval opinion.
        #[arg(long, default_value = "同意")]
        opinion: String,
        /// Document references (repeatable).
        #[arg(long = "doc")]
        docs: Vec<String>,
    },
    /// Revoke the approval.
    Revoke {
        /// Case id.
        id: String,
        /// Reason.
        #[arg(long)]
        reason: String,
        /// Legal basis.
        #[arg(long)]
        basis: String,
    },
    /// List cases.
    List {
        /// Region code.
        #[arg(long)]
        region: Option<String>,
        /// Approval department.
        #[arg(long)]
        department: Option<String>,
        /// State.
        #[arg(long)]
        state: Option<String>,
        /// Only cases whose commitment deadline passed.
        #[arg(long)]
        overdue: bool,
        /// Only cases with a deadline counted on a provisional calendar.
        #[arg(long)]
        provisional: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `shenguan task …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// List supervision tasks.
    List {
        /// Region code.
        #[arg(long)]
        region: Option<String>,
        /// Supervising department.
        #[arg(long)]
        department: Option<String>,
        /// Office.
        #[arg(long)]
        office: Option<String>,
        /// State.
        #[arg(long)]
        state: Option<String>,
        /// Only tasks with a missed deadline.
        #[arg(long)]
        overdue: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The office viewed the approval record.
    Ack {
        /// Task id, e.g. 320700/SP-2026-0001/T1.
        id: String,
    },
    /// Report what the office did.
    #[command(subcommand)]
    Report(ReportCommand),
}

/// `shenguan task report …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReportCommand {
    /// Supervision work finished on a date.
    Inspection {
        /// Task id.
        id: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        finished_on: String,
    },
    /// The result: compliant, non-compliant (with a rectification deadline) or revocation.
    Result {
        /// Task id.
        id: String,
        /// compliant | non-compliant | revocation
        #[arg(long)]
        outcome: String,
        /// YYYY-MM-DD, for non-compliant.
        #[arg(long)]
        rectification_deadline: Option<String>,
        /// Notes.
        #[arg(long)]
        notes: Option<String>,
    },
    /// Rectification outcome.
    Rectification {
        /// Task id.
        id: String,
        /// true: rectified; false: still not compliant.
        #[arg(long, action = clap::ArgAction::Set)]
        rectified: bool,
    },
}

/// The JSON a `case accept` file holds: the request with readable enums.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptFile {
    case_no: String,
    region_code: String,
    /// Optional once catalogs are imported: the approval item's department.
    #[serde(default)]
    approval_department: String,
    approval_item_code: String,
    handling_item_code: String,
    applicant: ApplicantFile,
    route: String,
    #[serde(default)]
    scenario: Option<String>,
    credit_grade: String,
    #[serde(default)]
    commitment_deadline: Option<String>,
    #[serde(default)]
    commitment_period_working_days: Option<u32>,
    #[serde(default)]
    deferred_materials: Vec<String>,
    /// Optional once catalogs are imported: the linkage catalog's.
    #[serde(default)]
    supervisors: Vec<SupervisorFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicantFile {
    name: String,
    #[serde(default)]
    credit_code: Option<String>,
    #[serde(default)]
    citizen_id: Option<String>,
    mobile: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SupervisorFile {
    department: String,
    office: String,
    #[serde(default)]
    office_admin_mobile: String,
}

fn accept_request(text: &str) -> Result<proto::AcceptCaseRequest> {
    let f: AcceptFile = serde_json::from_str(text).context("the case file is not valid")?;
    let route = match f.route.as_str() {
        "normal" => proto::Route::Normal,
        "commitment" => proto::Route::Commitment,
        other => bail!("route {other:?}: expected \"normal\" or \"commitment\""),
    };
    let scenario = match f.scenario.as_deref() {
        None | Some("") => proto::Scenario::Unspecified,
        Some("material_deferral") => proto::Scenario::MaterialDeferral,
        Some("material_verification") => proto::Scenario::MaterialVerification,
        Some("post_approval_verification") => proto::Scenario::PostApprovalVerification,
        Some(other) => {
            bail!("scenario {other:?}: expected material_deferral, material_verification or post_approval_verification")
        }
    };
    let id = match (f.applicant.credit_code, f.applicant.citizen_id) {
        (Some(c), None) => Some(proto::applicant::Id::CreditCode(c)),
        (None, Some(c)) => Some(proto::applicant::Id::CitizenId(c)),
        (None, None) => None,
        (Some(_), Some(_)) => bail!("applicant: give credit_code or citizen_id, not both"),
    };
    Ok(proto::AcceptCaseRequest {
        case_no: f.case_no,
        region_code: f.region_code,
        approval_department: f.approval_department,
        approval_item_code: f.approval_item_code,
        handling_item_code: f.handling_item_code,
        applicant: Some(proto::Applicant { name: f.applicant.name, id, mobile: f.applicant.mobile }),
        route: route as i32,
        scenario: scenario as i32,
        credit_grade: f.credit_grade,
        commitment_deadline: f.commitment_deadline.unwrap_or_default(),
        commitment_period_working_days: f.commitment_period_working_days.unwrap_or(0),
        deferred_materials: f.deferred_materials,
        supervisors: f
            .supervisors
            .into_iter()
            .map(|s| proto::Supervisor {
                department: s.department,
                office: s.office,
                office_admin_mobile: s.office_admin_mobile,
            })
            .collect(),
    })
}

/// The exit code for a failed call: 3 invalid argument, 4 not found, 5 already exists,
/// 6 failed precondition (wrong state), 7 unavailable (server down or storage trouble),
/// 8 permission denied, 1 anything else. Clap's usage errors exit 2.
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    let status = error.chain().find_map(|c| c.downcast_ref::<tonic::Status>());
    let transport = error.chain().any(|c| c.downcast_ref::<tonic::transport::Error>().is_some());
    match status.map(tonic::Status::code) {
        Some(tonic::Code::InvalidArgument | tonic::Code::OutOfRange) => 3,
        Some(tonic::Code::NotFound) => 4,
        Some(tonic::Code::AlreadyExists) => 5,
        Some(tonic::Code::FailedPrecondition) => 6,
        Some(tonic::Code::Unavailable) => 7,
        Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated) => 8,
        _ if transport => 7,
        _ => 1,
    }
}

/// A gRPC status as one line: `NOT_FOUND: case 320700/X does not exist`.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct CallError {
    code: String,
    message: String,
    #[source]
    status: tonic::Status,
}

/// Set when a call goes out without a token: where the CLI looked, for an UNAUTHENTICATED answer.
static NO_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn call_error(status: tonic::Status) -> anyhow::Error {
    let status = match NO_TOKEN.get() {
        Some(hint) if status.code() == tonic::Code::Unauthenticated => {
            tonic::Status::unauthenticated(format!("{} ({hint})", status.message()))
        }
        _ => status,
    };
    let code = format!("{:?}", status.code());
    // Upper snake case, as gRPC names the codes.
    let mut upper = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            upper.push('_');
        }
        upper.push(c.to_ascii_uppercase());
    }
    anyhow::Error::new(CallError { code: upper, message: status.message().to_owned(), status })
}

/// Whether the server at `uri` (an `http://` one) answers the HTTP/2 preface with a TLS record:
/// a plaintext client would otherwise get an HTTP/2 protocol error, or nothing at all.
async fn speaks_tls(uri: &tonic::transport::Uri) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        // The client preface and an empty SETTINGS frame: what a plaintext gRPC client sends first.
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        // TLS records of type alert (21) or handshake (22); an HTTP/2 frame starts with a length.
        Some(matches!(first[0], 0x15 | 0x16))
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), probe).await.ok().flatten().unwrap_or(false)
}

pub(crate) async fn channel(conn: &Conn) -> Result<Ch> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(conn.server.clone())
        .map_err(|_| anyhow!("--server {:?} is not a URL such as http://127.0.0.1:50051", conn.server))?;
    if conn.server.starts_with("http://") && speaks_tls(endpoint.uri()).await {
        let https = conn.server.replacen("http://", "https://", 1);
        return Err(call_error(tonic::Status::unavailable(format!(
            "the server at {} speaks TLS: use --server {https} (with --ca-cert FILE when its certificate is \
             not signed by a CA this machine trusts)",
            conn.server
        ))));
    }
    if conn.server.starts_with("https://") || conn.ca_cert.is_some() {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &conn.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&conn.client_cert, &conn.client_key) {
            let cert = std::fs::read(cert).with_context(|| format!("--client-cert {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("--client-key {}", key.display()))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach the server at {}", conn.server))?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel, conn.bearer()?))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Rows as aligned columns. Widths are display widths (a Chinese character takes two
/// columns), as comfy-table measures them; `--json` is for machines.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().map(comfy_table::Cell::new));
    for row in rows {
        t.add_row(row.iter().map(comfy_table::Cell::new));
    }
    for column in t.column_iter_mut() {
        // One space between columns, none at the edges.
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn at(i: &Option<proto::Instant>) -> String {
    i.as_ref().map(|i| i.shanghai.clone()).unwrap_or_default()
}

fn deadline_rows(deadlines: &[proto::Deadline]) -> String {
    deadlines
        .iter()
        .map(|d| {
            format!(
                "{}{} {}{}",
                d.name,
                if d.is_deadline { "" } else { " (reminder)" },
                at(&d.due),
                if d.provisional { " (PROVISIONAL)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn task_rows(tasks: &[Task]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.task_id.clone(),
                t.state.clone(),
                format!("{}/{}", t.department, t.office),
                if t.overdue { "OVERDUE".into() } else { String::new() },
                deadline_rows(&t.deadlines),
            ]
        })
        .collect()
}

/// A case as text.
pub(crate) fn case_text(c: &Case) -> String {
    let mut out = String::new();
    let fields = [
        ("case", c.case_id.clone()),
        ("state", c.state.clone() + if c.overdue { "  (OVERDUE)" } else { "" }),
        ("route", format!("{} {}", c.route, c.scenario).trim().to_owned()),
        ("applicant", format!("{} ({})", c.applicant_name, c.applicant_code)),
        ("approval", c.approval_department.clone()),
        ("credit grade", c.credit_grade.clone()),
        (
            "commitment deadline",
            c.commitment_deadline.clone()
                + if c.commitment_deadline_provisional { "  (counted on a PROVISIONAL calendar)" } else { "" },
        ),
        ("licence", c.license_no.clone()),
        ("supervisors", c.variables.get("supervisors").cloned().unwrap_or_default()),
        (
            "linkage",
            if c.unlinked {
                "UNLINKED: no supervising department in the linkage catalog (escalated; `catalog relink` once linked)"
                    .to_owned()
            } else {
                String::new()
            },
        ),
        ("linkage override", c.linkage_override.clone()),
        ("catalogs", c.catalog_versions.clone()),
        ("accepted", at(&c.accepted_at)),
        ("deadlines", deadline_rows(&c.deadlines)),
    ];
    for (k, v) in fields {
        if !v.is_empty() {
            out.push_str(&format!("{k:<20} {v}\n"));
        }
    }
    if !c.tasks.is_empty() {
        out.push('\n');
        out.push_str(&table(&["TASK", "STATE", "DEPARTMENT/OFFICE", "", "DEADLINES"], &task_rows(&c.tasks)));
    }
    out
}

fn status_name(s: i32) -> &'static str {
    match proto::DeadlineStatus::try_from(s) {
        Ok(proto::DeadlineStatus::Armed) => "armed",
        Ok(proto::DeadlineStatus::Met) => "met",
        Ok(proto::DeadlineStatus::Breached) => "BREACHED",
        Ok(proto::DeadlineStatus::Cancelled) => "cancelled",
        Ok(proto::DeadlineStatus::Fired) => "fired",
        _ => "?",
    }
}

/// A timeline as text.
pub(crate) fn timeline_text(entries: &[proto::TimelineEntry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut deadlines: Vec<String> = e
                .deadlines
                .iter()
                .map(|d| {
                    let mark = if d.provisional { " (PROVISIONAL)" } else { "" };
                    format!("{} {} {}{mark}", d.name, status_name(d.status), at(&d.due))
                })
                .collect();
            if !e.note.is_empty() {
                // A re-plan's own words say what moved; its armed/cancelled pairs would repeat it.
                deadlines = vec![e.note.clone()];
            }
            vec![
                at(&e.at),
                e.instance_id.clone(),
                match &e.principal {
                    Some(p) if !p.on_behalf_of.is_empty() => {
                        format!("{} ({}) for {}", p.subject, p.role, p.on_behalf_of)
                    }
                    Some(p) => format!("{} ({})", p.subject, p.role),
                    None => e.actor.clone(),
                },
                e.event.clone(),
                if e.from_state.is_empty() {
                    e.to_state.clone()
                } else {
                    format!("{} → {}", e.from_state, e.to_state)
                },
                deadlines.join("; "),
            ]
        })
        .collect();
    let mut text = table(&["TIME (Asia/Shanghai)", "INSTANCE", "ACTOR", "EVENT", "STATE", "DEADLINES"], &rows);
    // Messages to other systems, below: their texts are too long for a column.
    let messages: Vec<Vec<String>> = entries
        .iter()
        .flat_map(|e| {
            e.outbound.iter().map(move |m| {
                let to = if m.recipient.is_empty() {
                    m.channel.clone()
                } else {
                    format!("{} → {}", m.channel, m.recipient)
                };
                let state = delivery_state(m);
                vec![at(&e.at), e.instance_id.clone(), to, state, m.text.clone()]
            })
        })
        .collect();
    if !messages.is_empty() {
        text.push('\n');
        text.push_str(&table(
            &["MESSAGE (Asia/Shanghai)", "INSTANCE", "CHANNEL → RECIPIENT", "DELIVERY", "TEXT"],
            &messages,
        ));
    }
    text
}

/// A message's delivery in a few words: state, destination, attempts, last error.
fn delivery_state(m: &proto::OutboundMessage) -> String {
    let mut s = m.state.clone();
    if !m.destination.is_empty() {
        s.push_str(&format!(" → {}", m.destination));
    }
    if m.attempts > 0 {
        s.push_str(&format!(" ({} attempts)", m.attempts));
    }
    if !m.last_error.is_empty() && m.state != "delivered" {
        s.push_str(&format!("; last error: {}", m.last_error.chars().take(80).collect::<String>()));
    }
    s
}

/// `shenguan outbox …`.
#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Messages given up on, oldest first, each with its whole last error.
    Dead {
        /// Only ids after this one.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Make dead letters pending again; their destination delivers them with the same keys, and
    /// a case held behind one goes on, in order.
    Retry {
        /// Which ones.
        #[command(flatten)]
        which: DeadLetters,
    },
    /// Give dead letters up for good (`discarded`): never sent; their case's later messages go on.
    Discard {
        /// Which ones.
        #[command(flatten)]
        which: DeadLetters,
    },
}

/// Which dead letters: keys, a destination's (since an instant), or all.
#[derive(Debug, clap::Args)]
pub(crate) struct DeadLetters {
    /// Message keys (`<instance>:<seq>:<index>`, as `outbox dead` shows them).
    keys: Vec<String>,
    /// Every dead letter of this destination.
    #[arg(long, conflicts_with = "keys")]
    destination: Option<String>,
    /// With --destination or --all: only those given up at or after this instant (RFC 3339, or
    /// a date: its midnight in China Standard Time).
    #[arg(long)]
    since: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["keys", "destination"])]
    all: bool,
}

impl DeadLetters {
    fn selection(self) -> Result<proto::DeadLetterSelection> {
        if self.keys.is_empty() && self.destination.is_none() && !self.all {
            bail!("name the dead letters: KEY…, --destination D [--since T], or --all");
        }
        let since_ms = match &self.since {
            None => 0,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) => t.timestamp_millis(),
                Err(_) => {
                    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .map_err(|_| anyhow!("--since {text:?}: an RFC 3339 instant or a date such as 2026-10-01"))?;
                    day.and_time(chrono::NaiveTime::MIN)
                        .and_local_timezone(shenguan::calendar::DEFAULT_TZ)
                        .single()
                        .map_or(0, |t| t.timestamp_millis())
                }
            },
        };
        Ok(proto::DeadLetterSelection {
            keys: self.keys,
            destination: self.destination.unwrap_or_default(),
            since_ms,
            all: self.all,
        })
    }
}

/// Runs `outbox …`.
pub(crate) async fn outbox(conn: &Conn, cmd: OutboxCommand) -> Result<ExitCode> {
    let mut admin = AdminServiceClient::new(channel(conn).await?);
    match cmd {
        OutboxCommand::Dead { after, limit } => {
            let reply = admin
                .list_dead_letters(proto::ListDeadLettersRequest { after_id: after, limit })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                let rows: Vec<Vec<String>> = reply
                    .dead_letters
                    .iter()
                    .map(|d| {
                        let m = d.message.clone().unwrap_or_default();
                        let dead = chrono::DateTime::from_timestamp_millis(d.dead_at_ms)
                            .map(|t| {
                                t.with_timezone(&shenguan::calendar::DEFAULT_TZ).format("%Y-%m-%d %H:%M").to_string()
                            })
                            .unwrap_or_default();
                        vec![d.id.to_string(), m.key, d.destination.clone(), m.r#type, m.attempts.to_string(), dead]
                    })
                    .collect();
                let table = table(&["ID", "KEY", "DESTINATION", "TYPE", "ATTEMPTS", "GIVEN UP"], &rows);
                // Each row, then its whole cause on the next line: a receiver's answer is the
                // clue to what to fix, so none of it is cut.
                let mut lines = table.lines();
                if let Some(header) = lines.next() {
                    println!("{header}");
                }
                for (line, d) in lines.zip(&reply.dead_letters) {
                    println!("{line}");
                    println!("    cause: {}", d.message.as_ref().map(|m| m.last_error.as_str()).unwrap_or_default());
                }
            }
        }
        OutboxCommand::Retry { which } => {
            let reply = admin.retry_dead_letters(which.selection()?).await.map_err(call_error)?.into_inner();
            changed(conn, &reply, "pending again; their destinations deliver them next")?;
        }
        OutboxCommand::Discard { which } => {
            let reply = admin.discard_dead_letters(which.selection()?).await.map_err(call_error)?.into_inner();
            changed(conn, &reply, "discarded; their cases' later messages go on")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a bulk retry or discard changed.
fn changed(conn: &Conn, reply: &proto::DeadLettersChanged, what: &str) -> Result<()> {
    if conn.json {
        return print_json(reply);
    }
    println!("{} dead letter(s) {what}", reply.keys.len());
    if reply.more {
        println!("more match: run the command again");
    }
    Ok(())
}

/// `shenguan consumer …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConsumerCommand {
    /// Every stream consumer: its position, the channels it wants, its lag and when it last read.
    List,
    /// Forget a consumer that is gone for good: what only it held back is pruned once its
    /// retention has passed. Its live stream, if any, ends.
    Drop {
        /// The consumer's name.
        name: String,
    },
}

/// Runs `consumer …`.
pub(crate) async fn consumer(conn: &Conn, cmd: ConsumerCommand) -> Result<ExitCode> {
    let mut admin = AdminServiceClient::new(channel(conn).await?);
    match cmd {
        ConsumerCommand::List => {
            let reply = admin.list_consumers(proto::ListConsumersRequest {}).await.map_err(call_error)?.into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                let rows: Vec<Vec<String>> = reply
                    .consumers
                    .iter()
                    .map(|c| {
                        let read = chrono::DateTime::from_timestamp_millis(c.last_read_ms)
                            .map(|t| {
                                t.with_timezone(&shenguan::calendar::DEFAULT_TZ).format("%Y-%m-%d %H:%M").to_string()
                            })
                            .unwrap_or_default();
                        let channels = if c.channels.is_empty() { "(all)".to_owned() } else { c.channels.join(",") };
                        vec![c.name.clone(), c.owner.clone(), c.acked.to_string(), c.lag.to_string(), channels, read]
                    })
                    .collect();
                print!("{}", table(&["NAME", "OWNER", "ACKED", "LAG", "CHANNELS", "LAST READ"], &rows));
            }
        }
        ConsumerCommand::Drop { name } => {
            let reply = admin
                .drop_consumer(proto::DropConsumerRequest { name: name.clone() })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                println!("consumer {name} dropped (it had acknowledged up to {})", reply.acked);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a duration such as `3d`, `12h`, `90m`, `2d 12h`, `30s` into milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<i64> {
    let d = humantime::parse_duration(text)
        .map_err(|e| anyhow!("{text:?} is not a duration such as 3d, 12h, 2d 12h ({e})"))?;
    i64::try_from(d.as_millis()).map_err(|_| anyhow!("{text:?} is too long"))
}

/// Runs `case …`.
pub(crate) async fn case(conn: &Conn, cmd: CaseCommand) -> Result<ExitCode> {
    let ch = channel(conn).await?;
    let mut intake = IntakeServiceClient::new(ch.clone());
    let reply = match cmd {
        CaseCommand::Accept { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
            };
            intake.accept_case(accept_request(&text)?).await
        }
        CaseCommand::Show { id } => intake.get_case(proto::GetCaseRequest { case_id: id }).await,
        CaseCommand::Materials { id } => intake.submit_materials(proto::SubmitMaterialsRequest { case_id: id }).await,
        CaseCommand::Complete { id, license_no, opinion, docs } => {
            intake
                .complete_approval(proto::CompleteApprovalRequest {
                    case_id: id,
                    license_no,
                    approval_opinion: opinion,
                    document_refs: docs,
                })
                .await
        }
        CaseCommand::Revoke { id, reason, basis } => {
            intake.revoke_approval(proto::RevokeApprovalRequest { case_id: id, reason, basis }).await
        }
        CaseCommand::Timeline { id } => {
            let reply = AdminServiceClient::new(ch)
                .get_timeline(proto::GetTimelineRequest { case_id: id })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                print!("{}", timeline_text(&reply.entries));
            }
            return Ok(ExitCode::SUCCESS);
        }
        CaseCommand::List { region, department, state, overdue, provisional, limit } => {
            let reply = AdminServiceClient::new(ch)
                .query_cases(proto::QueryCasesRequest {
                    region_code: region.unwrap_or_default(),
                    approval_department: department.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    overdue_only: overdue,
                    provisional_only: provisional,
                    page: Some(proto::PageRequest { page_size: limit, page_token: String::new() }),
                    ..Default::default()
                })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                let rows: Vec<Vec<String>> = reply
                    .cases
                    .iter()
                    .map(|c| {
                        vec![
                            c.case_id.clone(),
                            c.state.clone(),
                            format!("{} {}", c.route, c.scenario).trim().to_owned(),
                            c.applicant_name.clone(),
                            if c.overdue { "OVERDUE".into() } else { String::new() },
                            c.tasks.len().to_string(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["CASE", "STATE", "ROUTE", "APPLICANT", "", "TASKS"], &rows));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    let reply = reply.map_err(call_error)?.into_inner();
    if conn.json {
        print_json(&reply)?;
    } else if let Some(c) = &reply.case {
        if reply.duplicate {
            println!("(already applied before; nothing new was written)");
        }
        print!("{}", case_text(c));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `task …`.
pub(crate) async fn task(conn: &Conn, cmd: TaskCommand) -> Result<ExitCode> {
    let mut sup = SupervisionServiceClient::new(channel(conn).await?);
    let reply = match cmd {
        TaskCommand::List { region, department, office, state, overdue, limit } => {
            let reply = sup
                .list_tasks(proto::ListTasksRequest {
                    region_code: region.unwrap_or_default(),
                    department: department.unwrap_or_default(),
                    office: office.unwrap_or_default(),
                    state: state.unwrap_or_default(),
                    overdue_only: overdue,
                    missed: String::new(),
                    page: Some(proto::PageRequest { page_size: limit, page_token: String::new() }),
                })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                print_json(&reply)?;
            } else {
                print!("{}", table(&["TASK", "STATE", "DEPARTMENT/OFFICE", "", "DEADLINES"], &task_rows(&reply.tasks)));
            }
            return Ok(ExitCode::SUCCESS);
        }
        TaskCommand::Ack { id } => sup.acknowledge_task(proto::AcknowledgeTaskRequest { task_id: id }).await,
        TaskCommand::Report(ReportCommand::Inspection { id, finished_on }) => {
            sup.report_inspection(proto::ReportInspectionRequest { task_id: id, finished_on }).await
        }
        TaskCommand::Report(ReportCommand::Result { id, outcome, rectification_deadline, notes }) => {
            let outcome = match outcome.as_str() {
                "compliant" => proto::Outcome::Compliant,
                "non-compliant" | "non_compliant" => proto::Outcome::NonCompliant,
                "revocation" => proto::Outcome::Revocation,
                other => bail!("--outcome {other:?}: expected compliant, non-compliant or revocation"),
            };
            sup.report_result(proto::ReportResultRequest {
                task_id: id,
                outcome: outcome as i32,
                rectification_deadline: rectification_deadline.unwrap_or_default(),
                notes: notes.unwrap_or_default(),
            })
            .await
        }
        TaskCommand::Report(ReportCommand::Rectification { id, rectified }) => {
            sup.report_rectification(proto::ReportRectificationRequest { task_id: id, rectified, notes: String::new() })
                .await
        }
    };
    let reply = reply.map_err(call_error)?.into_inner();
    if conn.json {
        print_json(&reply)?;
    } else if let Some(t) = &reply.task {
        print!(
            "{}",
            table(&["TASK", "STATE", "DEPARTMENT/OFFICE", "", "DEADLINES"], &task_rows(std::slice::from_ref(t)))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn count(f: &Option<proto::Figure>) -> String {
    f.as_ref().map_or(0, |f| f.count).to_string()
}

/// Statistics as text.
pub(crate) fn stats_text(reply: &proto::GetStatisticsReply) -> String {
    let sup: Vec<Vec<String>> = reply
        .supervision
        .iter()
        .map(|s| {
            vec![
                s.region_code.clone(),
                format!("{}/{}", s.department, s.office),
                count(&s.tasks),
                count(&s.viewed_in_time),
                count(&s.viewed_late),
                count(&s.view_overdue),
                count(&s.results_in_time),
                count(&s.results_late),
                count(&s.result_overdue),
                count(&s.rectifications_ordered),
                count(&s.rectified),
                count(&s.revocations_decided),
            ]
        })
        .collect();
    let appr: Vec<Vec<String>> = reply
        .approval
        .iter()
        .map(|a| {
            vec![
                a.region_code.clone(),
                a.department.clone(),
                count(&a.cases),
                count(&a.commitments),
                count(&a.commitments_fulfilled),
                count(&a.commitments_overdue),
                count(&a.commitments_revoked),
                count(&a.revoked),
            ]
        })
        .collect();
    let mut out = String::from("Supervision (tasks created in the period)\n");
    out.push_str(&table(
        &[
            "REGION",
            "DEPARTMENT/OFFICE",
            "TASKS",
            "VIEWED≤3WD",
            "VIEWED LATE",
            "NOT VIEWED",
            "RESULT≤5WD",
            "RESULT LATE",
            "NO RESULT",
            "RECTIFY",
            "RECTIFIED",
            "REVOKE",
        ],
        &sup,
    ));
    out.push_str("\nApproval (cases accepted in the period)\n");
    out.push_str(&table(
        &["REGION", "DEPARTMENT", "CASES", "COMMITMENT", "FULFILLED", "OVERDUE", "REVOKED(C)", "REVOKED"],
        &appr,
    ));
    out
}

/// The ids behind each figure that has any, one line per figure.
pub(crate) fn ids_text(reply: &proto::GetStatisticsReply) -> String {
    let mut out = String::from("\nIds behind the figures\n");
    let mut line = |who: String, name: &str, f: &Option<proto::Figure>| {
        if let Some(f) = f.as_ref().filter(|f| !f.ids.is_empty()) {
            out.push_str(&format!("{who} {name}: {}\n", f.ids.join(" ")));
        }
    };
    for s in &reply.supervision {
        let who = format!("{} {}/{}", s.region_code, s.department, s.office);
        for (name, f) in [
            ("tasks", &s.tasks),
            ("viewed_in_time", &s.viewed_in_time),
            ("viewed_late", &s.viewed_late),
            ("view_overdue", &s.view_overdue),
            ("results_in_time", &s.results_in_time),
            ("results_late", &s.results_late),
            ("result_overdue", &s.result_overdue),
            ("rectifications_ordered", &s.rectifications_ordered),
            ("rectified", &s.rectified),
            ("rectification_failed", &s.rectification_failed),
            ("revocations_decided", &s.revocations_decided),
        ] {
            line(who.clone(), name, f);
        }
    }
    for a in &reply.approval {
        let who = format!("{} {}", a.region_code, a.department);
        for (name, f) in [
            ("cases", &a.cases),
            ("commitments", &a.commitments),
            ("commitments_fulfilled", &a.commitments_fulfilled),
            ("commitments_overdue", &a.commitments_overdue),
            ("commitments_revoked", &a.commitments_revoked),
            ("revoked", &a.revoked),
        ] {
            line(who.clone(), name, f);
        }
    }
    out
}

/// Runs `stats`.
pub(crate) async fn stats(conn: &Conn, args: StatsArgs) -> Result<ExitCode> {
    let reply = AdminServiceClient::new(channel(conn).await?)
        .get_statistics(proto::GetStatisticsRequest {
            region_code: args.region.unwrap_or_default(),
            department: args.department.unwrap_or_default(),
            office: args.office.unwrap_or_default(),
            from: args.from.unwrap_or_default(),
            to: args.to.unwrap_or_default(),
            with_ids: args.ids,
        })
        .await
        .map_err(call_error)?
        .into_inner();
    if conn.json {
        print_json(&reply)?;
    } else {
        print!("{}", stats_text(&reply));
        if args.ids {
            print!("{}", ids_text(&reply));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `shenguan stats`: with no flags, every region, this year.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Region code (default: every region).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// First day of the period, YYYY-MM-DD (default: 1 January of the server's year).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Last day of the period, YYYY-MM-DD (default: 31 December of the server's year).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// One department.
    #[arg(long)]
    pub(crate) department: Option<String>,
    /// One office.
    #[arg(long)]
    pub(crate) office: Option<String>,
    /// Also list the ids behind each figure (up to 10,000 cases and tasks; narrow the period
    /// for more).
    #[arg(long)]
    pub(crate) ids: bool,
}

/// `shenguan clock advance`.
#[derive(Debug, Args)]
pub(crate) struct AdvanceArgs {
    /// By a duration: 3d, 12h, 2d12h, 90m.
    #[arg(long, conflicts_with = "to")]
    pub(crate) by: Option<String>,
    /// To an instant (RFC 3339).
    #[arg(long)]
    pub(crate) to: Option<String>,
}

/// What `calendar load|status` asks of a running server.
pub(crate) enum CalendarCall {
    /// Load a file (`calendar load` says what the flags mean).
    Load {
        /// The file.
        file: PathBuf,
        /// Only say what would move.
        dry_run: bool,
        /// Answer once the re-plan is done.
        wait: bool,
    },
    /// Each region's years, re-plans, warnings.
    Status,
}

/// Runs `calendar load` and `calendar status`.
pub(crate) async fn calendar(conn: &Conn, call: CalendarCall) -> Result<ExitCode> {
    let mut admin = AdminServiceClient::new(channel(conn).await?);
    match call {
        CalendarCall::Load { file, dry_run, wait } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let reply = admin
                .load_calendar(proto::LoadCalendarRequest { name, text, dry_run, wait })
                .await
                .map_err(call_error)?
                .into_inner();
            if conn.json {
                return print_json(&reply).map(|()| ExitCode::SUCCESS);
            }
            let verb = if reply.dry_run { "would load" } else { "loaded" };
            println!("{verb} {} v{} (generation {}): {}", reply.key, reply.version, reply.generation, reply.source);
            if reply.changed_from.is_empty() {
                println!("no working day changes: nothing to re-plan");
            } else if reply.dry_run {
                println!(
                    "working days change between {} and {}: {} armed timers there, {} would move",
                    reply.changed_from, reply.changed_to, reply.timers_examined, reply.timers_moved
                );
                let rows: Vec<Vec<String>> = reply
                    .groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.region_code.clone(),
                            g.department.clone(),
                            g.earlier.to_string(),
                            g.later.to_string(),
                            g.confirmed.to_string(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["REGION", "DEPARTMENT", "EARLIER", "LATER", "CONFIRMED"], &rows));
                let moves: Vec<Vec<String>> = reply
                    .first_moves
                    .iter()
                    .map(|m| vec![m.instance_id.clone(), m.timer.clone(), at(&m.old_due), at(&m.new_due)])
                    .collect();
                if !moves.is_empty() {
                    print!("{}", table(&["INSTANCE", "TIMER", "OLD DUE", "NEW DUE"], &moves));
                }
            } else if wait {
                println!(
                    "working days change between {} and {}: every deadline there is re-planned",
                    reply.changed_from, reply.changed_to
                );
            } else {
                println!(
                    "working days change between {} and {}: the deadlines there are being re-planned \
                     (shenguan calendar status shows progress)",
                    reply.changed_from, reply.changed_to
                );
            }
        }
        CalendarCall::Status => {
            let reply = admin.calendar_status(proto::CalendarStatusRequest {}).await.map_err(call_error)?.into_inner();
            if conn.json {
                return print_json(&reply).map(|()| ExitCode::SUCCESS);
            }
            println!("policy for years without a notice: {}", reply.policy);
            for region in &reply.regions {
                println!("\n{} — {} days of official calendar left", region.name, region.official_days_left);
                let rows: Vec<Vec<String>> = region
                    .years
                    .iter()
                    .map(|y| {
                        vec![
                            y.year.to_string(),
                            y.status.clone(),
                            if y.version == 0 { String::new() } else { format!("v{}", y.version) },
                            y.loaded_by.clone(),
                            y.loaded_at.as_ref().map(|_| at(&y.loaded_at)).unwrap_or_default(),
                            y.source.clone(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["YEAR", "STATUS", "VERSION", "LOADED BY", "LOADED AT", "SOURCE"], &rows));
            }
            for r in &reply.replans {
                println!(
                    "re-plan {} ({}..{}): {} instances re-planned, {}",
                    r.calendar,
                    r.changed_from,
                    r.changed_to,
                    r.instances_replanned,
                    if r.done { "done" } else { "RUNNING" }
                );
            }
            println!("armed timers on a provisional calendar: {}", reply.provisional_timers);
            for w in &reply.warnings {
                println!("WARNING: {w}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `clock advance`.
pub(crate) async fn advance(conn: &Conn, args: AdvanceArgs) -> Result<ExitCode> {
    let request = match (args.by, args.to) {
        (Some(by), None) => proto::AdvanceClockRequest { by_millis: parse_duration(&by)?, to: String::new() },
        (None, Some(to)) => proto::AdvanceClockRequest { by_millis: 0, to },
        _ => bail!("give --by DURATION or --to INSTANT"),
    };
    let reply =
        AdminServiceClient::new(channel(conn).await?).advance_clock(request).await.map_err(call_error)?.into_inner();
    if conn.json {
        print_json(&reply)?;
    } else {
        println!("{}", at(&reply.now));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3d").expect("d"), 3 * 86_400_000);
        assert_eq!(parse_duration("2d12h").expect("dh"), 2 * 86_400_000 + 12 * 3_600_000);
        assert_eq!(parse_duration("90m").expect("m"), 90 * 60_000);
        assert_eq!(parse_duration("2d 12h").expect("d h"), 2 * 86_400_000 + 12 * 3_600_000);
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    /// Columns start at the same display column on every line, Chinese text included (two
    /// columns per character).
    #[test]
    fn tables_align_chinese_text() {
        let t = table(
            &["DEPARTMENT", "STATE"],
            &[vec!["市市场监督管理局".into(), "pushed".into()], vec!["x".into(), "viewed".into()]],
        );
        let wide = |c: char| ('\u{2E80}'..='\u{9FFF}').contains(&c) || ('\u{F900}'..='\u{FAFF}').contains(&c);
        let starts: Vec<usize> = t
            .lines()
            .map(|line| {
                let before = &line[..line.rfind(' ').expect("two columns") + 1];
                before.chars().map(|c| if wide(c) { 2 } else { 1 }).sum()
            })
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{t}\n{starts:?}");
    }

    /// Statistics may span regions (no `--region`): each row names its region.
    #[test]
    fn statistics_rows_name_their_region() {
        let figure = |n: u64| Some(proto::Figure { count: n, ids: vec![] });
        let row = |region: &str, n: u64| proto::ApprovalFigures {
            region_code: region.into(),
            department: "市行政审批局".into(),
            cases: figure(n),
            ..Default::default()
        };
        let text = stats_text(&proto::GetStatisticsReply {
            supervision: vec![],
            approval: vec![row("320100", 1), row("320700", 2)],
        });
        assert!(text.lines().any(|l| l.starts_with("320100") && l.contains("市行政审批局")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("320700") && l.contains("市行政审批局")), "{text}");
    }

    #[test]
    fn accept_files_are_checked_before_anything_is_sent() {
        assert!(accept_request("{").is_err());
        assert!(accept_request(r#"{"case_no": "x"}"#).is_err());
        let ok = r#"{"case_no":"A-1","region_code":"320700","approval_department":"d","approval_item_code":"i",
            "handling_item_code":"h","applicant":{"name":"n","credit_code":"91110000600037341L","mobile":"13800138000"},
            "route":"commitment","scenario":"material_deferral","credit_grade":"A","commitment_deadline":"2026-10-09",
            "deferred_materials":["m"],"supervisors":[{"department":"s","office":"o"}]}"#;
        let r = accept_request(ok).expect("valid");
        assert_eq!(r.route, proto::Route::Commitment as i32);
        assert!(accept_request(&ok.replace("\"commitment\",", "\"fast\","))
            .expect_err("route")
            .to_string()
            .contains("route"));
        assert!(accept_request(&ok.replace("\"case_no\"", "\"extra\":1,\"case_no\"")).is_err());
    }
}
