//! The outbound configuration: push destinations, which channels each takes, and the retry
//! policy. A TOML file (`shenguan serve --outbound FILE`); see `ops/outbound.example.toml`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading the configuration; each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong (with its line).
        message: String,
    },
    /// A value is not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and what to set.
        message: String,
    },
}

/// What a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A signed JSON POST per message.
    Webhook,
    /// An SMS gateway: the recipient is a mobile number, the text the message.
    Sms,
    /// The public credit platform: credit records keyed by the Unified Social Credit Code.
    Credit,
}

/// What a dead letter does to the later messages of its case to the same destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDeadLetter {
    /// They wait until an administrator retries or discards it: the receiver never sees a
    /// case's revocation before its approval record.
    #[default]
    Hold,
    /// They go on: the dead letter is skipped (order across it is lost).
    Skip,
}

/// How retries go. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Attempts before a message becomes a dead letter.
    pub max_attempts: u32,
    /// Seconds (real time) after its first failed attempt before a message becomes a dead
    /// letter, however few attempts were made.
    pub max_age_secs: u64,
    /// The first retry's delay (ms); doubled per attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// The longest delay between two attempts (ms).
    pub backoff_max_ms: u64,
    /// Days a delivered (or stream-only) message is kept before it is pruned — and, whatever
    /// its age, until every stream consumer that wants its channel has acknowledged it.
    pub retention_days: u32,
    /// A stream consumer that has neither subscribed nor acknowledged for this many days is
    /// warned about (daily, in the log): retention keeps everything it has not read.
    pub consumer_idle_warn_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 12,
            max_age_secs: 24 * 3600,
            backoff_initial_ms: 500,
            backoff_max_ms: 5 * 60 * 1000,
            retention_days: 30,
            consumer_idle_warn_days: 3,
        }
    }
}

/// One push destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Its name: in metrics, dead letters and timelines.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Where to POST (http or https).
    pub url: String,
    /// The channels routed here (each channel to at most one destination).
    pub channels: Vec<String>,
    /// A file holding the shared secret the HMAC-SHA256 signature is made with (required for
    /// webhooks and the credit platform; optional for an SMS gateway).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for https, beside the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds one attempt may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Deliveries in flight at once (to different instances; one instance's are in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most messages the dispatcher holds in memory; the rest wait in the database.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Most messages per second (an SMS gateway's contract); none by default for webhooks.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// What a dead letter does to its case's later messages here (default `hold`).
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
}

fn default_timeout() -> u64 {
    10
}
fn default_concurrency() -> usize {
    32
}
fn default_queue() -> usize {
    10_000
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The retry policy, for every destination.
    #[serde(default)]
    pub delivery: Policy,
    /// Push destinations.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Destination>,
    /// Texts by message name or type: a message they name says this text, filled from its
    /// instance's variables and its record's data when it is written ([`super::texts`]).
    #[serde(default)]
    pub sms_templates: BTreeMap<String, String>,
}

/// SMS gateways are held to this rate unless the configuration says otherwise.
pub const DEFAULT_SMS_RATE: f64 = 50.0;

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: shown.clone(), message: e.to_string() })?;
        Config::parse(&text, &shown)
    }

    /// Parses and checks configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        if text.len() > 1 << 20 {
            return Err(ConfigError::Invalid { path: path.into(), message: "larger than 1 MiB".into() });
        }
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.check().map_err(|message| ConfigError::Invalid { path: path.into(), message })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let p = &self.delivery;
        if p.max_attempts == 0 {
            return Err("delivery.max_attempts must be at least 1".into());
        }
        if p.backoff_initial_ms == 0 || p.backoff_max_ms < p.backoff_initial_ms {
            return Err("delivery.backoff_initial_ms must be positive and at most backoff_max_ms".into());
        }
        if p.consumer_idle_warn_days == 0 {
            return Err("delivery.consumer_idle_warn_days must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut routed: HashMap<&str, &str> = HashMap::new();
        for d in &self.destinations {
            let valid_name = !d.name.is_empty()
                && d.name.len() <= 64
                && d.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(format!("destination name {:?}: use 1–64 letters, digits, '-' or '_'", d.name));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("destination {:?} is named twice", d.name));
            }
            let url =
                reqwest::Url::parse(&d.url).map_err(|e| format!("destination {}: url {:?}: {e}", d.name, d.url))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(format!("destination {}: url {:?} must be http:// or https:// with a host", d.name, d.url));
            }
            if d.channels.is_empty() {
                return Err(format!("destination {}: name at least one channel", d.name));
            }
            for c in &d.channels {
                if let Some(other) = routed.insert(c.as_str(), d.name.as_str()) {
                    return Err(format!("channel {c:?} is routed to both {other} and {}: route it to one", d.name));
                }
            }
            if d.secret_file.is_none() && d.kind != Kind::Sms {
                return Err(format!("destination {}: set secret_file (the HMAC key receivers verify with)", d.name));
            }
            if d.timeout_secs == 0 || d.timeout_secs > 300 {
                return Err(format!("destination {}: timeout_secs must be 1–300", d.name));
            }
            if d.concurrency == 0 || d.concurrency > 1024 {
                return Err(format!("destination {}: concurrency must be 1–1024", d.name));
            }
            if d.queue < d.concurrency || d.queue > 1_000_000 {
                return Err(format!(
                    "destination {}: queue must be at least concurrency and at most 1,000,000",
                    d.name
                ));
            }
            if let Some(r) = d.rate_per_second {
                if !(r > 0.0 && r.is_finite()) {
                    return Err(format!("destination {}: rate_per_second must be positive", d.name));
                }
            }
        }
        for (name, text) in &self.sms_templates {
            if text.trim().is_empty() || text.chars().count() > 500 {
                return Err(format!("sms_templates.{name}: 1–500 characters"));
            }
            super::send::placeholders(text).map_err(|e| format!("sms_templates.{name}: {e}"))?;
        }
        Ok(())
    }

    /// Channel → destination name, for the writer to route messages by.
    pub fn routes(&self) -> HashMap<String, String> {
        self.destinations.iter().flat_map(|d| d.channels.iter().map(move |c| (c.clone(), d.name.clone()))).collect()
    }
}

/// Checks that every channel a destination takes is one the loaded workflows emit on (`emitted`):
/// a misspelt channel would otherwise route nothing, silently.
pub fn check_channels(config: &Config, emitted: &BTreeSet<String>) -> Result<(), String> {
    for d in &config.destinations {
        for c in &d.channels {
            if !emitted.contains(c) {
                let known = emitted.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
                return Err(format!(
                    "destination {} takes channel {c:?}, which no loaded workflow emits on; the channels are: {known}",
                    d.name
                ));
            }
        }
    }
    Ok(())
}

/// The channels the workflows emit on (`emitted`) that neither a destination nor a stream
/// consumer takes.
pub fn untaken<'a>(
    config: &Config,
    emitted: &'a BTreeSet<String>,
    consumers: &[crate::store::StoredConsumer],
) -> Vec<&'a str> {
    if consumers.iter().any(|c| c.channels.is_empty()) {
        return Vec::new();
    }
    let routes = config.routes();
    emitted
        .iter()
        .filter(|c| !routes.contains_key(*c) && !consumers.iter().any(|k| k.channels.contains(c)))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[delivery]
max_attempts = 5

[[destination]]
name = "supervision"
kind = "webhook"
url = "http://127.0.0.1:9000/hook"
channels = ["supervision", "escalation"]
secret_file = "/etc/shenguan/hook.secret"

[[destination]]
name = "sms"
kind = "sms"
url = "https://sms.example.gov.cn/send"
channels = ["sms"]
rate_per_second = 20
"#;

    #[test]
    fn a_good_file_routes_each_channel_to_its_destination() {
        let c = Config::parse(GOOD, "t.toml").expect("valid");
        assert_eq!(c.delivery.max_attempts, 5);
        assert_eq!(c.delivery.backoff_initial_ms, 500, "unset fields keep their defaults");
        let routes = c.routes();
        assert_eq!(routes.get("escalation").map(String::as_str), Some("supervision"));
        assert_eq!(routes.get("sms").map(String::as_str), Some("sms"));
        assert_eq!(routes.get("credit"), None);
    }

    #[test]
    fn a_channel_no_workflow_emits_is_refused_and_untaken_channels_are_named() {
        let c = Config::parse(GOOD, "t.toml").expect("valid");
        let emitted: BTreeSet<String> =
            ["supervision", "escalation", "sms", "credit"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(check_channels(&c, &emitted), Ok(()));
        let mut missing = emitted.clone();
        missing.remove("escalation");
        let e = check_channels(&c, &missing).expect_err("escalation is not emitted");
        assert!(e.contains("\"escalation\"") && e.contains("supervision"), "{e}");
        assert_eq!(untaken(&c, &emitted, &[]), vec!["credit"]);
        let consumer = |channels: &[&str]| crate::store::StoredConsumer {
            name: "c".into(),
            owner: "o".into(),
            acked: 0,
            channels: channels.iter().map(|s| (*s).to_owned()).collect(),
            updated_at: 0,
        };
        assert!(untaken(&c, &emitted, &[consumer(&["credit"])]).is_empty());
        assert!(untaken(&c, &emitted, &[consumer(&[])]).is_empty(), "a consumer of every channel takes it");
        assert_eq!(untaken(&c, &emitted, &[consumer(&["sms"])]), vec!["credit"]);
    }

    #[test]
    fn bad_files_are_refused_with_what_to_change() {
        let cases = [
            (GOOD.replace("channels = [\"sms\"]", "channels = [\"supervision\"]"), "routed to both"),
            (GOOD.replace("name = \"sms\"", "name = \"supervision\""), "named twice"),
            (GOOD.replace("http://127.0.0.1:9000/hook", "ftp://x/y"), "must be http"),
            (GOOD.replace("http://127.0.0.1:9000/hook", "not a url"), "url"),
            (GOOD.replace("secret_file = \"/etc/shenguan/hook.secret\"", ""), "secret_file"),
            (GOOD.replace("rate_per_second = 20", "rate_per_second = -1"), "positive"),
            (GOOD.replace("max_attempts = 5", "max_attempts = 0"), "at least 1"),
            (GOOD.replace("kind = \"webhook\"", "kind = \"carrier-pigeon\""), "unknown variant"),
            (format!("{GOOD}\nsurprise = 1\n"), "unknown field"),
            (format!("{GOOD}\n[sms_templates]\nx = \"{{unclosed\"\n"), "sms_templates.x"),
        ];
        for (text, needle) in cases {
            let e = Config::parse(&text, "t.toml").expect_err(needle).to_string();
            assert!(e.contains(needle) && e.starts_with("t.toml: "), "{needle}: {e}");
        }
    }
}
