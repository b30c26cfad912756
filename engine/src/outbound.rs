//! Outbound delivery: what takes the outbox's messages to the systems they are for.
//!
//! Every message is written to the outbox in the transaction of the transition that caused it
//! (see [`crate::writer`]). When it is written, the writer routes it by its channel to one *push
//! destination* of the configuration ([`config`]) — a webhook, an SMS gateway, the credit
//! platform — or to none, in which case only the stream serves it. Every message, routed or
//! not, can also be read by stream consumers (`EventsService.Subscribe`, in
//! [`crate::api::events`]), each with its own durable cursor.
//!
//! Push delivery ([`dispatch`]) is at least once: one dispatcher task per destination walks its
//! pending messages in id order, delivers each with its key as the idempotency key, keeps the
//! order of one instance's messages, retries with exponential backoff and jitter, and gives a
//! message up as a dead letter after the attempts or the age allowed. What it learns is written
//! back by the writer ([`crate::writer::Outbound`]) — delivery never writes the database itself,
//! so the writer stays its only writer. A slow or dead destination holds only its own task.
//!
//! [`send`] speaks HTTP to each kind of receiver; [`sign`] is the HMAC-SHA256 signature a
//! receiver verifies.

pub mod config;
pub mod dispatch;
pub mod live;
pub mod send;
pub mod sign;
pub mod texts;

pub use config::{Config, ConfigError, Destination, Kind, OnDeadLetter, Policy};
pub use dispatch::{start, Dispatchers};
