//! shenguan (审管): a workflow orchestration engine with durable state machines for
//! approval–supervision linkage.
//!
//! # Layout
//! - [`calendar`]: working-day calendars per region, from the State Council notices.
//! - [`catalog`]: the organisation and the catalogs (approval, supervision, linkage,
//!   commitment), versioned; importing them from CSV and JSON.
//! - [`clock`]: the `Clock` trait, the system clock and the virtual clock.
//! - [`definition`]: the workflow language — TOML in, validated `Definition` out; Mermaid output.
//! - [`machine`]: the pure core, `decide`, and replay. No I/O.
//! - [`store`]: durable state (SQLite, the embedded default, or PostgreSQL) behind the `Store`
//!   (write) and `ReadStore` (read) traits.
//! - [`cluster`]: several nodes on one PostgreSQL — shard leases, fencing epochs, the
//!   notifications between nodes.
//! - [`writer`]: group commit — the one path every change takes: a pure batch builder
//!   ([`writer::batch`]) and the task that loads, commits and answers.
//! - [`timer`]: the timing wheel, the horizon contract and its paging, the timer service.
//! - [`engine`]: store + writer + timers, started as one.
//! - [`context`]: [`context::Context`], the handles every part shares (a leaf module).
//! - [`outbound`]: delivery of the outbox — routing by channel, webhooks, the SMS gateway, the
//!   credit platform, retries and dead letters.
//! - [`archive`]: the data lifecycle — which closed cases may be archived, the archive file's
//!   format and reading it back.
//! - [`admin`]: offline operations on a database (`admin verify`), through the read side.
//! - [`server`]: the gRPC server: the services, health and reflection.
//! - [`api`]: the gRPC services (intake, supervision, admin, engine): proto ↔ domain, errors →
//!   status.
//! - [`domain`]: what approval and supervision mean: cases, supervision tasks, the case ↔ task
//!   fan-out the writer derives, credit grades, identifiers and text checks.
//! - [`auth`]: identity (bearer JWTs, client certificates), roles, rights and scopes, the one
//!   visibility rule every read path asks ([`auth::visibility`]), the attribution history
//!   records.
//! - [`telemetry`]: Prometheus metrics.
//! - [`proto`]: generated gRPC types; [`codec`]: their codec (bad bodies are INVALID_ARGUMENT).
//!
//! The command line (`shenguan serve`, the client commands, the demo) is the `shenguan-cli`
//! crate in `cli/`; this library has no UI.
//!
//! The rules the code cites as `§N` are in `docs/DOMAIN.md`.
//!
//! Where to start reading: `docs/ARCHITECTURE.md`, then [`writer`] and [`machine`].

pub mod admin;
pub mod api;
pub mod archive;
pub mod auth;
pub mod calendar;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod context;
pub mod definition;
pub mod domain;
pub mod engine;
pub mod machine;
pub mod outbound;
pub mod proto;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timer;
pub mod writer;
