//! `EventsService`: the outbox as a stream, for platforms that pull.
//!
//! A consumer is a name with a durable cursor (`consumers` table: the outbox id up to which it
//! has acknowledged). `Subscribe` walks the outbox from just after that cursor, in id order
//! (ids grow in commit order, because one writer commits them), filtered by channel and region,
//! and then waits for the writer's next commit; at most `max_in_flight` messages are sent and
//! not acknowledged. `Ack` moves the cursor through the writer (durable when answered) and
//! lets the live stream send more. A reconnect resumes after the last acknowledgement, so it
//! misses nothing and sees nothing it acknowledged again; what it had not acknowledged it
//! sees again (at least once).
//!
//! The stream serving a consumer may run on another node than its `Ack` or a newer `Subscribe`:
//! both reach it through [`crate::outbound::live`].
//!
//! A caller scoped to a department or office (a supervision platform's account) sees only the
//! messages of its own tasks and of the cases it has tasks in (or approves), as ListTasks and
//! GetCase would show them: decided by reading each message's instance once per stream.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::outbound::live::Ended;
use tonic::{Request, Response, Status};

use super::{authorize, status, Shared};
use crate::auth::Right;
use crate::proto;
use crate::proto::events_service_server::EventsService;
use crate::store::{ConsumerCursor, StoredConsumer, StoredMessage};
use crate::writer::Outbound;

/// Unacknowledged messages a stream sends when the request names no limit.
pub const DEFAULT_IN_FLIGHT: u32 = 1_000;
/// The most a request may ask for.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Messages read per walk of the outbox.
const PAGE: u32 = 1_000;

/// The service.
pub struct Events {
    shared: Arc<Shared>,
}

impl Events {
    /// The service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Events { shared }
    }
}

impl Events {
    /// The stored consumer `name`, if any: PERMISSION_DENIED (logged and counted) when it
    /// belongs to another subject.
    async fn owned(&self, auth: &super::Authorized, name: &str) -> Result<Option<StoredConsumer>, Status> {
        let stored = self.shared.reader.consumer(name).await.map_err(|e| status::read_error(&e))?;
        if let Some(c) = &stored {
            auth.require_owner(&self.shared, &c.owner, || format!("consumer {name}"))?;
        }
        Ok(stored)
    }

    /// Records (creating it if new) a consumer's position and, from a Subscribe, the channels it
    /// wants and the stream it starts; answers once durable.
    async fn save(
        &self,
        name: &str,
        owner: String,
        acked: u64,
        channels: Option<Vec<String>>,
        stream: Option<String>,
    ) -> Result<(), Status> {
        let at = self.shared.context().clock.now();
        let cursor = ConsumerCursor { name: name.to_owned(), owner, acked, at, channels, stream };
        self.shared
            .engine
            .handle()
            .outbound(Outbound::Cursor(cursor))
            .await
            .map_err(|e| status::write_error("consumer", name, &e))
    }
}

/// A consumer's name: 1–64 letters, digits, '-', '_' or '.'.
pub(crate) fn check_consumer(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(status::invalid("consumer", "use 1–64 letters, digits, '-', '_' or '.'"))
    }
}

fn event(m: &StoredMessage) -> proto::Event {
    proto::Event {
        id: m.id,
        key: m.key.clone(),
        channel: m.message.channel.clone(),
        recipient: m.message.recipient.clone().unwrap_or_default(),
        text: m.message.body.clone(),
        instance_id: m.instance.clone(),
        seq: m.seq,
        created_at_ms: m.created_at,
        template: m.message.template.clone().unwrap_or_default(),
        r#type: m.message.kind.clone().unwrap_or_default(),
        schema_version: m.message.schema_version,
        data_json: crate::store::data_column(&m.message).unwrap_or_default(),
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventsService for Events {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let auth = authorize(&self.shared, &request, Right::Subscribe)?;
        let req = request.into_inner();
        check_consumer(&req.consumer)?;
        if req.channels.len() > 32 {
            return Err(status::invalid("channels", "at most 32"));
        }
        for c in &req.channels {
            if c.is_empty() || c.len() > 64 || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(status::invalid(
                    "channels",
                    format!("{:?} is not a channel name", c.chars().take(64).collect::<String>()),
                ));
            }
        }
        if req.regions.len() > 64 {
            return Err(status::invalid("regions", "at most 64"));
        }
        // Only the regions asked for, each inside the caller's scope; none asked: the scope.
        let mut prefixes = Vec::new();
        for code in &req.regions {
            let prefix = crate::auth::region_prefix(code).ok_or_else(|| {
                status::invalid(
                    "regions",
                    format!("{:?} is not a six-digit region code", code.chars().take(16).collect::<String>()),
                )
            })?;
            auth.require_region(&self.shared, code, "region", code)?;
            prefixes.push(prefix);
        }
        let in_flight = match req.max_in_flight {
            0 => DEFAULT_IN_FLIGHT,
            n if n > MAX_IN_FLIGHT => return Err(status::invalid("max_in_flight", format!("at most {MAX_IN_FLIGHT}"))),
            n => n,
        } as usize;
        // What it wants is recorded before anything is sent: from here on, retention keeps
        // every message of these channels it has not acknowledged.
        let mut wanted = req.channels.clone();
        wanted.sort();
        wanted.dedup();
        let (owner, acked) = match self.owned(&auth, &req.consumer).await? {
            Some(c) => (c.owner, c.acked),
            None => (auth.caller().to_owned(), 0),
        };
        // Started here before it is recorded, so that its own notice finds it; the record tells
        // the stream this consumer has on another node, if any, to end.
        let streams = self.shared.context().streams.clone();
        let stream = streams.take_over(&req.consumer, acked);
        if let Err(e) = self.save(&req.consumer, owner, acked, Some(wanted), Some(stream.token.clone())).await {
            streams.finished(&req.consumer, &stream.token);
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(256);
        let walk = Walk {
            scope: (!auth.scope().is_everywhere()).then(|| auth.scope().clone()),
            seen: HashMap::new(),
            shared: self.shared.clone(),
            consumer: req.consumer,
            channels: req.channels,
            prefixes,
            in_flight,
            token: stream.token,
            acks: stream.acked,
            ended: stream.ended,
            tx,
        };
        tokio::spawn(walk.run());
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn ack(&self, request: Request<proto::AckRequest>) -> Result<Response<proto::AckReply>, Status> {
        let auth = authorize(&self.shared, &request, Right::Subscribe)?;
        let req = request.into_inner();
        check_consumer(&req.consumer)?;
        let stored =
            self.owned(&auth, &req.consumer).await?.ok_or_else(|| status::not_found("consumer", &req.consumer))?;
        let acked = stored.acked.max(req.up_to);
        if req.up_to > stored.acked {
            self.save(&req.consumer, auth.caller().to_owned(), req.up_to, None, None).await?;
        }
        // Here; a stream on another node hears it from the record's notice.
        self.shared.context().streams.acked(&req.consumer, acked);
        Ok(Response::new(proto::AckReply { acked }))
    }
}

/// Most instances a stream remembers the visibility of (then it forgets them all and reads
/// again: memory stays bounded on a long stream).
const SEEN: usize = 10_000;

/// One live stream.
struct Walk {
    /// For a caller with any limit: the scope each message's instance must be in.
    scope: Option<crate::auth::Scope>,
    /// Instances whose visibility is known.
    seen: HashMap<String, bool>,
    shared: Arc<Shared>,
    consumer: String,
    channels: Vec<String>,
    prefixes: Vec<String>,
    in_flight: usize,
    /// This stream's token among the consumer's streams.
    token: String,
    acks: watch::Receiver<u64>,
    ended: watch::Receiver<Option<Ended>>,
    tx: mpsc::Sender<Result<proto::Event, Status>>,
}

impl Walk {
    /// Whether the caller may see the messages of `instance`: the instance's visibility, by
    /// the one rule ([`crate::auth::visibility`]); always for a region-scoped caller.
    async fn visible(&mut self, instance: &str) -> Result<bool, Status> {
        if self.scope.is_none() && self.prefixes.is_empty() {
            return Ok(true);
        }
        if let Some(known) = self.seen.get(instance) {
            return Ok(*known);
        }
        let loaded = crate::auth::visibility::load(self.shared.reader.as_ref(), instance)
            .await
            .map_err(|e| status::read_error(&e))?;
        let (visible, fixed) = match loaded {
            Some((_, seen)) => {
                let asked = self.prefixes.is_empty() || self.prefixes.iter().any(|p| seen.in_region(p));
                let sees = self.scope.as_ref().is_none_or(|s| s.sees(&seen));
                // Outside the regions asked or in scope, a case stays outside.
                let outside =
                    !asked || self.scope.as_ref().is_some_and(|s| s.id_prefix().is_some_and(|p| !seen.in_region(&p)));
                (asked && sees, seen.is_final() || outside)
            }
            None => (false, false),
        };
        // A case gains tasks (and viewers) over its life: only its "yes" is final.
        if fixed || visible {
            if self.seen.len() >= SEEN {
                self.seen.clear();
            }
            self.seen.insert(instance.to_owned(), visible);
        }
        Ok(visible)
    }

    async fn run(mut self) {
        let streams = self.shared.context().streams.clone();
        let (consumer, token) = (self.consumer.clone(), self.token.clone());
        self.walk().await;
        streams.finished(&consumer, &token);
    }

    async fn walk(&mut self) {
        let mut published = self.shared.context().published.subscribe();
        let mut stopping = self.shared.stopping.subscribe();
        let mut sent_upto = *self.acks.borrow();
        let mut unacked: VecDeque<u64> = VecDeque::new();
        loop {
            if *stopping.borrow() {
                let _ = self.tx.send(Err(Status::unavailable("the server is stopping; subscribe again"))).await;
                return;
            }
            let ended = *self.ended.borrow();
            if let Some(why) = ended {
                let name = &self.consumer;
                let status = match why {
                    Ended::TakenOver => Status::aborted(format!("consumer {name} was taken over by another Subscribe")),
                    Ended::Dropped => Status::aborted(format!("consumer {name} was dropped by an administrator")),
                    Ended::LostContact => Status::unavailable(format!(
                        "this node lost contact with the other nodes; subscribe again to resume consumer {name}"
                    )),
                };
                let _ = self.tx.send(Err(status)).await;
                return;
            }
            let acked = *self.acks.borrow_and_update();
            while unacked.front().is_some_and(|id| *id <= acked) {
                unacked.pop_front();
            }
            // Anything committed after this point bumps `published` and wakes the wait below.
            published.borrow_and_update();
            let room = self.in_flight.saturating_sub(unacked.len());
            let mut more = false;
            if room > 0 {
                let limit = u32::try_from(room).unwrap_or(PAGE).min(PAGE);
                let rows = match self.shared.reader.outbox_after(sent_upto, &self.channels, limit).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = self.tx.send(Err(status::read_error(&e))).await;
                        return;
                    }
                };
                more = rows.len() == limit as usize;
                for m in rows {
                    sent_upto = m.id;
                    match self.visible(&m.instance).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(status) => {
                            let _ = self.tx.send(Err(status)).await;
                            return;
                        }
                    }
                    if self.tx.send(Ok(event(&m))).await.is_err() {
                        return;
                    }
                    unacked.push_back(m.id);
                }
            }
            if more && unacked.len() < self.in_flight {
                continue;
            }
            tokio::select! {
                r = published.changed() => if r.is_err() { return },
                // Ending a stream drops both senders after setting why: the loop says why.
                r = self.acks.changed() => if r.is_err() && self.ended.borrow().is_none() { return },
                r = self.ended.changed() => if r.is_err() && self.ended.borrow().is_none() { return },
                r = stopping.changed() => if r.is_err() { return },
                () = self.tx.closed() => return,
            }
        }
    }
}
