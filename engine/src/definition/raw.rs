//! The raw TOML shape of a definition file, as serde reads it: names and expressions still
//! text, with spans for `file:line` diagnostics. [`super::validate`] turns it into a
//! [`super::Definition`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDef {
    pub(super) name: Spanned<String>,
    pub(super) version: Spanned<i64>,
    #[serde(default)]
    pub(super) description: String,
    pub(super) initial: Spanned<String>,
    #[serde(default)]
    pub(super) terminal: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub(super) events: BTreeMap<String, Spanned<RawEvent>>,
    #[serde(default)]
    pub(super) states: Vec<Spanned<RawState>>,
    #[serde(default)]
    pub(super) transitions: Vec<Spanned<RawTransition>>,
    #[serde(default)]
    pub(super) index: Option<Spanned<RawIndex>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIndex {
    pub(super) subject: String,
    #[serde(default)]
    pub(super) item: Option<String>,
    #[serde(default)]
    pub(super) grade: Option<String>,
}

/// `working_days_only = true` or the name of a bool variable.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawFlag {
    Literal(bool),
    Var(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvent {
    #[serde(default)]
    pub(super) fields: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) internal: bool,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default)]
    pub(super) timers: Vec<Spanned<RawTimer>>,
    #[serde(default)]
    pub(super) emit: Vec<RawEmit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimer {
    pub(super) name: String,
    #[serde(default)]
    pub(super) at: Option<String>,
    #[serde(default)]
    pub(super) cron: Option<String>,
    #[serde(default)]
    pub(super) working_days_only: Option<RawFlag>,
    pub(super) event: String,
    #[serde(default)]
    pub(super) deadline: bool,
    #[serde(default)]
    pub(super) responsible: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmit {
    pub(super) channel: String,
    #[serde(default)]
    pub(super) to: Option<String>,
    pub(super) template: String,
    /// The name a configuration's templates know this message by (an SMS gateway's Chinese
    /// text); the `template` here is the text used when none is configured.
    #[serde(default)]
    pub(super) name: Option<String>,
    /// The record's type (`approval_record`, `credit_record`, …): what a receiver dispatches on.
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// The version of the type's schema (default 1).
    #[serde(default)]
    pub(super) schema_version: Option<u32>,
    /// The record's typed fields: name → a variable, an event field, a literal, `now`,
    /// `instance`, or `objects(VAR: field, …)`.
    #[serde(default)]
    pub(super) data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransition {
    pub(super) from: OneOrMany,
    pub(super) event: Spanned<String>,
    pub(super) to: Spanned<String>,
    #[serde(default)]
    pub(super) guard: Option<String>,
    #[serde(default)]
    pub(super) set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) emit: Vec<RawEmit>,
    #[serde(default)]
    pub(super) arm: Vec<RawTimer>,
    #[serde(default)]
    pub(super) cancel: Vec<String>,
}
