//! One delivery attempt over HTTP, per kind of receiver: the JSON each receives, the headers,
//! and what its answer means (accepted, try again, refused for good).
//!
//! Every body carries the record: `type`, `schema_version` and `data` (the typed fields the
//! workflow declares; `docs/schemas/` has a JSON Schema per type), beside the text.
//!
//! - **webhook**: the message as JSON, signed ([`super::sign`]), `Idempotency-Key` = its key.
//! - **sms**: `{key, mobile, text, …}` to the gateway, the mobile number checked first (a message
//!   to a number that is not a mainland mobile is a dead letter at once, never sent); the text is
//!   the message's own, which a configured template filled when it was written
//!   ([`super::texts`]); paced to the gateway's rate; the gateway's answer kept as the receipt.
//! - **credit**: a credit record keyed by the Unified Social Credit Code (README: "The
//!   credit-platform push"), its `record_type` as the transition that wrote it declared, signed
//!   like a webhook.
//!
//! A 2xx answer is delivery. 408, 429, 5xx, a timeout or a dropped connection is tried again;
//! any other 4xx means the receiver will never take this message: a dead letter at once.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::config::{Destination, Kind, DEFAULT_SMS_RATE};
use super::sign;
use crate::definition::template::{pieces, Piece};
use crate::store::{ReadStore, StoredMessage};

/// A delivery the receiver accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// What the receiver answered, when it is worth keeping (an SMS gateway's message id).
    pub receipt: Option<String>,
}

/// An attempt that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// Why, for the dead-letter list and the timeline.
    pub error: String,
    /// True when trying again cannot help (a 4xx, an invalid mobile number).
    pub permanent: bool,
}

impl Failed {
    fn retry(error: impl Into<String>) -> Self {
        Failed { error: error.into(), permanent: false }
    }
    fn permanent(error: impl Into<String>) -> Self {
        Failed { error: error.into(), permanent: true }
    }
}

/// Why a destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Its secret or CA file cannot be read.
    #[error("destination {name}: {path}: {message}")]
    File {
        /// The destination.
        name: String,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The HTTP client cannot be built (TLS roots).
    #[error("destination {name}: {message}")]
    Client {
        /// The destination.
        name: String,
        /// Why.
        message: String,
    },
}

/// The record every body carries: its type, the version of the type's schema and its data
/// (all null for a message written before records were typed).
#[derive(Debug, Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    schema_version: u32,
    data: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Record<'a> {
    fn of(m: &'a StoredMessage) -> Self {
        Record {
            kind: m.message.kind.as_deref(),
            schema_version: m.message.schema_version,
            data: m.message.data.as_ref(),
        }
    }
}

/// The body a webhook receives.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    key: &'a str,
    channel: &'a str,
    instance: &'a str,
    seq: u64,
    recipient: Option<&'a str>,
    text: &'a str,
    created_at: String,
    attempt: u32,
    #[serde(flatten)]
    record: Record<'a>,
}

/// The body an SMS gateway receives.
#[derive(Debug, Serialize)]
struct SmsBody<'a> {
    key: &'a str,
    mobile: String,
    text: &'a str,
    #[serde(flatten)]
    record: Record<'a>,
}

/// The body the credit platform receives: one credit record.
#[derive(Debug, Serialize)]
struct CreditRecord<'a> {
    record_id: &'a str,
    uscc: String,
    record_type: String,
    case_id: &'a str,
    case_no: Option<String>,
    subject_name: Option<String>,
    text: &'a str,
    recorded_at: String,
    #[serde(flatten)]
    record: Record<'a>,
}

/// Spaces requests to a rate, one at a time (`governor`, a burst of one).
struct Pace(governor::DefaultDirectRateLimiter);

impl std::fmt::Debug for Pace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pace")
    }
}

impl Pace {
    /// `None` when `per_second` is too high to space anything.
    fn new(per_second: f64) -> Option<Pace> {
        let every = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
        governor::Quota::with_period(every).map(|q| Pace(governor::RateLimiter::direct(q)))
    }

    async fn wait(&self) {
        self.0.until_ready().await;
    }
}

/// A destination's sender.
pub struct Sender {
    kind: Kind,
    url: reqwest::Url,
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
    pace: Option<Pace>,
    reader: Arc<dyn ReadStore>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("kind", &self.kind).field("url", &self.url.as_str()).finish()
    }
}

fn read_file(name: &str, path: &std::path::Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| SetupError::File {
        name: name.into(),
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Sender {
    /// The sender of `d`; `reader` finds what a credit record written before records were
    /// typed needs from its case.
    pub fn new(d: &Destination, reader: Arc<dyn ReadStore>) -> Result<Sender, SetupError> {
        let (secret, client) = (secret_of(d)?, client_of(d)?);
        let url = reqwest::Url::parse(&d.url)
            .map_err(|e| SetupError::Client { name: d.name.clone(), message: format!("url: {e}") })?;
        let rate = d.rate_per_second.or((d.kind == Kind::Sms).then_some(DEFAULT_SMS_RATE));
        let pace = rate.and_then(Pace::new);
        Ok(Sender { kind: d.kind, url, client, secret, pace, reader })
    }

    /// One attempt (`attempt` counts from 1).
    pub async fn send(&self, m: &StoredMessage, attempt: u32) -> Result<Delivered, Failed> {
        let body = match self.kind {
            Kind::Webhook => serde_json::to_vec(&WebhookBody {
                key: &m.key,
                channel: &m.message.channel,
                instance: &m.instance,
                seq: m.seq,
                recipient: m.message.recipient.as_deref(),
                text: &m.message.body,
                created_at: rfc3339(m.created_at),
                attempt,
                record: Record::of(m),
            }),
            Kind::Sms => {
                let mobile = m.message.recipient.as_deref().and_then(mobile).ok_or_else(|| {
                    Failed::permanent(format!("not a mainland mobile number: {:?}", m.message.recipient))
                })?;
                serde_json::to_vec(&SmsBody { key: &m.key, mobile, text: &m.message.body, record: Record::of(m) })
            }
            Kind::Credit => serde_json::to_vec(&self.credit_record(m).await?),
        }
        .map_err(|e| Failed::permanent(format!("cannot encode the message: {e}")))?;
        if let Some(pace) = &self.pace {
            pace.wait().await;
        }
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(sign::KEY_HEADER, &m.key);
        if let Some(secret) = &self.secret {
            let now = chrono::Utc::now().timestamp();
            request = request
                .header(sign::TIMESTAMP_HEADER, now.to_string())
                .header(sign::SIGNATURE_HEADER, sign::sign(secret, now, &body));
        }
        let response = request.body(body).send().await.map_err(|e| Failed::retry(describe(&e)))?;
        let status = response.status();
        // The answer is read whatever the status (bounded: a receiver may answer anything).
        let answer = read_bounded(response, 1024).await;
        if status.is_success() {
            let receipt = (self.kind == Kind::Sms && !answer.is_empty()).then_some(answer);
            return Ok(Delivered { receipt });
        }
        let error = format!("HTTP {status}: {}", answer.chars().take(200).collect::<String>());
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(Failed::retry(error))
        } else {
            Err(Failed::permanent(error))
        }
    }

    /// The credit record of a credit message: its type as the transition that wrote it
    /// declared (`data.record_type`), never worked out from the case as it is now.
    async fn credit_record<'a>(&self, m: &'a StoredMessage) -> Result<CreditRecord<'a>, Failed> {
        let data = m.message.data.as_ref();
        let field = |name: &str| data.and_then(|d| d.get(name)).and_then(|v| v.as_str()).map(str::to_owned);
        if let (Some(record_type), Some(uscc)) = (field("record_type"), field("applicant_code")) {
            return Ok(CreditRecord {
                record_id: &m.key,
                uscc,
                record_type,
                case_id: &m.instance,
                case_no: field("case_no"),
                subject_name: field("applicant_name"),
                text: &m.message.body,
                recorded_at: field("recorded_at").unwrap_or_else(|| rfc3339(m.created_at)),
                record: Record::of(m),
            });
        }
        self.untyped_credit_record(m).await
    }

    /// A credit message written before records were typed: its type from the transition that
    /// wrote it (the state it left and entered), its subject from the case.
    async fn untyped_credit_record<'a>(&self, m: &'a StoredMessage) -> Result<CreditRecord<'a>, Failed> {
        let unavailable = |e: crate::store::Error| Failed::retry(format!("cannot read the case: {e}"));
        let row = self
            .reader
            .instance(&m.instance)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Failed::permanent(format!("the case {} does not exist", m.instance)))?;
        let history = self.reader.history(&m.instance).await.map_err(unavailable)?;
        let entry = history
            .iter()
            .find(|h| h.seq == m.seq)
            .ok_or_else(|| Failed::permanent(format!("the case {} has no history entry {}", m.instance, m.seq)))?;
        let text_var = |name: &str| row.vars.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let uscc = text_var("applicant_code")
            .ok_or_else(|| Failed::permanent(format!("the case {} names no applicant code", m.instance)))?;
        let record_type = match (entry.from.as_deref(), entry.to.as_str()) {
            (_, "closed") => "commitment_fulfilled",
            (Some("overdue"), "revoked") => "dishonesty",
            _ => "commitment_not_fulfilled",
        };
        Ok(CreditRecord {
            record_id: &m.key,
            uscc,
            record_type: record_type.to_owned(),
            case_id: &m.instance,
            case_no: text_var("case_no"),
            subject_name: text_var("applicant_name"),
            text: &m.message.body,
            recorded_at: rfc3339(entry.at),
            record: Record::of(m),
        })
    }
}

/// Checks what a destination needs from the file system (its secret, its CA file) and that its
/// HTTP client can be built: the server calls this before it opens the database, so a wrong
/// path is reported before anything starts.
pub fn check(d: &Destination) -> Result<(), SetupError> {
    secret_of(d)?;
    client_of(d)?;
    Ok(())
}

fn secret_of(d: &Destination) -> Result<Option<Vec<u8>>, SetupError> {
    let Some(path) = &d.secret_file else { return Ok(None) };
    let raw = read_file(&d.name, path)?;
    let trimmed = super::sign::secret_from_file(&raw);
    if trimmed.len() < 16 {
        return Err(SetupError::File {
            name: d.name.clone(),
            path: path.display().to_string(),
            message: "the secret must be at least 16 bytes".into(),
        });
    }
    Ok(Some(trimmed))
}

fn client_of(d: &Destination) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(d.timeout_secs))
        .connect_timeout(Duration::from_secs(d.timeout_secs.min(10)))
        .pool_max_idle_per_host(d.concurrency)
        .user_agent(concat!("shenguan/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &d.ca_file {
        let pem = read_file(&d.name, path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::File {
            name: d.name.clone(),
            path: path.display().to_string(),
            message: format!("not a PEM certificate bundle: {e}"),
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| SetupError::Client { name: d.name.clone(), message: e.to_string() })
}

/// A mainland mobile number, normalised; `None` if it is not one. The rule is
/// [`crate::domain::mobile`], the one intake applies.
pub fn mobile(raw: &str) -> Option<String> {
    crate::domain::mobile(raw).ok()
}

/// Longest placeholder name a configured template may use.
const MAX_NAME: usize = 64;

/// The names a template's `{placeholders}` use; an error for an unclosed or stray brace, or a
/// name longer than 64 bytes.
pub fn placeholders(template: &str) -> Result<Vec<String>, String> {
    pieces(template)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Name(name) if name.len() > MAX_NAME => Some(Err(format!("placeholder {{{name}}} is too long"))),
            Piece::Name(name) => Some(Ok(name)),
            Piece::Text(_) => None,
        })
        .collect()
}

/// `template` with each `{name}` replaced by `lookup(name)`; `{{` and `}}` are braces.
pub fn fill(template: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    for piece in pieces(template)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Name(name) if name.len() > MAX_NAME => return Err(format!("placeholder {{{name}}} is too long")),
            Piece::Name(name) => out.push_str(&lookup(&name).ok_or_else(|| format!("no value for {{{name}}}"))?),
        }
    }
    Ok(out)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339()).unwrap_or_default()
}

fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_request() || e.is_body() {
        "connection dropped"
    } else {
        "failed"
    };
    // The source chain names the socket error; the URL is the configuration's, not secret.
    let mut text = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.chars().take(300).collect()
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk[..chunk.len().min(limit - bytes.len())]);
        if bytes.len() >= limit {
            break;
        }
    }
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobile_numbers_are_checked_and_normalised() {
        assert_eq!(mobile("13800138000").as_deref(), Some("13800138000"));
        assert_eq!(mobile("+86 138-0013-8000").as_deref(), Some("13800138000"));
        assert_eq!(mobile("8613800138000").as_deref(), Some("13800138000"));
        for bad in [
            "",
            "12800138000",
            "1380013800",
            "138001380000",
            "1380013800a",
            "+1 415 555 0100",
            "１３８００１３８０００",
        ] {
            assert_eq!(mobile(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn templates_fill_and_refuse_what_they_cannot() {
        let vars = |n: &str| (n == "name").then(|| "张三".to_owned());
        assert_eq!(fill("【审管联动】{name}：{{注意}}", vars).as_deref(), Ok("【审管联动】张三：{注意}"));
        assert!(fill("{missing}", vars).is_err());
        assert!(fill("{name", vars).is_err());
        assert!(fill("name}", vars).is_err());
        assert!(fill(&format!("{{{}}}", "x".repeat(100)), vars).is_err());
        assert_eq!(placeholders("{a} and {b}").expect("valid"), vec!["a", "b"]);
    }
}
