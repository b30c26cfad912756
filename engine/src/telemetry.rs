//! Prometheus metrics: every name in one place, one registry per engine (so several engines in
//! one test process do not share counters), rendered in the text format for `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The engine's metrics.
pub struct Metrics {
    registry: Registry,
    /// Commands by kind (start, event, timer, replan) and result (applied, duplicate, rejected,
    /// failed; `unchanged` for a re-plan that found nothing to move).
    pub commands: IntCounterVec,
    /// Commands per group commit.
    pub batch_size: Histogram,
    /// Seconds from BEGIN to durable COMMIT.
    pub commit_seconds: Histogram,
    /// Timers fired (committed).
    pub timers_fired: IntCounter,
    /// Seconds between a timer's due instant and the commit of its transition.
    pub fire_lateness_seconds: Histogram,
    /// When the last batch that fired timers committed (engine time, Unix ms): with a set of
    /// timers due at one instant, this minus the instant is the exact lateness of the last.
    pub last_fire_commit_ms: IntGauge,
    /// Deadlines breached, by workflow and responsible department.
    pub breaches: IntCounterVec,
    /// Outbox messages written.
    pub outbox_written: IntCounter,
    /// Timers held in the in-memory wheel (set at scrape).
    pub timers_in_memory: IntGauge,
    /// Outbox messages not yet delivered (set at scrape).
    pub outbox_backlog: IntGauge,
    /// Messages not yet delivered, by destination (set at scrape).
    pub outbound_backlog: IntGaugeVec,
    /// Delivery attempts, by destination and result (`delivered`, `retry`, `dead`).
    pub outbound_attempts: IntCounterVec,
    /// Per stream consumer: the newest message's id minus its acknowledged position (set at
    /// scrape; an upper bound of what it has not read).
    pub consumer_lag: IntGaugeVec,
    /// Per stream consumer: seconds (engine time) since it last subscribed or acknowledged (set
    /// at scrape).
    pub consumer_idle_seconds: IntGaugeVec,
    /// Seconds from a message's commit to its receiver's acceptance (real time; a virtual
    /// engine clock makes this meaningless, so it is observed only when the two agree).
    pub outbound_latency_seconds: Histogram,
    /// Messages a destination's dispatcher holds in memory (in flight or waiting to retry).
    pub outbound_window: IntGaugeVec,
    /// Timers armed in the database (set at scrape).
    pub timers_pending: IntGauge,
    /// Instances whose working-day timers a new calendar moved or confirmed.
    pub replanned: IntCounter,
    /// Re-plans not finished (set at scrape).
    pub replans_running: IntGauge,
    /// Armed timers computed on a provisional calendar (set at scrape).
    pub timers_provisional: IntGauge,
    /// Days from today to the last day with an official calendar, by region (set at scrape;
    /// negative once past it).
    pub official_calendar_days_left: IntGaugeVec,
    /// Calls refused before any handler ran, by gRPC code (`unauthenticated`,
    /// `resource_exhausted`, …) and reason (`expired`, `signature`, `rate_limit`, …).
    pub calls_refused: IntCounterVec,
    /// Calls denied by authorisation (PERMISSION_DENIED), by the right that was missing or the
    /// scope that was left.
    pub denied: IntCounterVec,
    /// Connections closed by the server's limits, by reason (`total`, `per_peer`, `idle`,
    /// `accept_error`).
    pub connections_refused: IntCounterVec,
    /// Connections open.
    pub connections_open: IntGauge,
    /// Bytes of request messages received and not yet handed to a handler (the body gate).
    pub request_bytes_held: IntGauge,
    /// Shards this node holds (several nodes on PostgreSQL; 0 on SQLite).
    pub shards_held: IntGauge,
    /// Batches rolled back because another node wrote an instance first (decided again).
    pub conflicts: IntCounter,
    /// Batches of timer fires (or single fires) refused because this node no longer held a shard.
    pub fenced: IntCounter,
    /// Spot-check runs drawn by this node, and draws that failed (retried), by `result`.
    pub spot_check_draws: IntCounterVec,
    /// Timer fires the machine refused for another reason than a stale timer (the timer was
    /// re-armed or its instance moved on), by `reason`: each is also logged.
    pub timer_fires_rejected: IntCounterVec,
    /// Times a scrape read the database-backed gauges (at most once a second while commits go
    /// on, whatever the scrape rate).
    pub gauge_refreshes: IntCounter,
}

fn buckets(start: f64, factor: f64, n: usize) -> Vec<f64> {
    // Fails only for a non-positive start, a factor <= 1 or n = 0; every caller passes
    // constants that are none of these (and no buckets would still count, in +Inf).
    prometheus::exponential_buckets(start, factor, n).unwrap_or_default()
}

impl Metrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> Self {
        // Fails only for an empty or invalid prefix; "shenguan" is neither.
        let registry = Registry::new_custom(Some("shenguan".into()), None).unwrap_or_default();
        let commands =
            IntCounterVec::new(Opts::new("commands_total", "Commands by kind and result"), &["kind", "result"])
                .unwrap_or_else(|_| unreachable_metric());
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("commit_batch_size", "Commands per group commit").buckets(buckets(1.0, 2.0, 12)),
        )
        .unwrap_or_else(|_| unreachable_metric());
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new("commit_seconds", "Seconds from BEGIN to durable COMMIT")
                .buckets(buckets(0.0001, 2.0, 16)),
        )
        .unwrap_or_else(|_| unreachable_metric());
        let timers_fired = IntCounter::new("timers_fired_total", "Timers fired and committed")
            .unwrap_or_else(|_| unreachable_metric());
        let fire_lateness_seconds = Histogram::with_opts(
            HistogramOpts::new("timer_fire_lateness_seconds", "Commit instant minus due instant of fired timers")
                // Quarter-octave buckets from 1 ms to ~15 min: percentiles read from them are
                // within 19% (the benchmark quotes the bucket's upper bound, never less).
                .buckets(buckets(0.001, 2f64.powf(0.25), 80)),
        )
        .unwrap_or_else(|_| unreachable_metric());
        let last_fire_commit_ms = IntGauge::new(
            "timer_last_fire_commit_unix_ms",
            "When the last batch that fired timers committed (Unix milliseconds)",
        )
        .unwrap_or_else(|_| unreachable_metric());
        let breaches = IntCounterVec::new(
            Opts::new("deadline_breaches_total", "Deadlines breached, by workflow and responsible department"),
            &["workflow", "department"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let outbox_written = IntCounter::new("outbox_messages_total", "Outbox messages written")
            .unwrap_or_else(|_| unreachable_metric());
        let timers_in_memory = IntGauge::new("timers_in_memory", "Timers held in the in-memory wheel")
            .unwrap_or_else(|_| unreachable_metric());
        let outbox_backlog = IntGauge::new("outbox_backlog", "Outbox messages not yet delivered")
            .unwrap_or_else(|_| unreachable_metric());
        let outbound_backlog = IntGaugeVec::new(
            Opts::new("outbound_backlog", "Messages not yet delivered, by destination"),
            &["destination"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "stream_consumer_lag_messages",
                "Per stream consumer: the newest message's id minus its acknowledged position",
            ),
            &["consumer"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let consumer_idle_seconds = IntGaugeVec::new(
            Opts::new(
                "stream_consumer_idle_seconds",
                "Per stream consumer: seconds since it last subscribed or acknowledged",
            ),
            &["consumer"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let outbound_attempts = IntCounterVec::new(
            Opts::new("outbound_attempts_total", "Delivery attempts, by destination and result"),
            &["destination", "result"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let outbound_latency_seconds = Histogram::with_opts(
            HistogramOpts::new("outbound_latency_seconds", "Seconds from a message's commit to its acceptance")
                .buckets(buckets(0.000_5, 2.0, 18)),
        )
        .unwrap_or_else(|_| unreachable_metric());
        let outbound_window = IntGaugeVec::new(
            Opts::new("outbound_window", "Messages a destination's dispatcher holds in memory"),
            &["destination"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let timers_pending =
            IntGauge::new("timers_pending", "Timers armed in the database").unwrap_or_else(|_| unreachable_metric());
        let replanned = IntCounter::new(
            "replanned_instances_total",
            "Instances whose working-day timers a new calendar moved or confirmed",
        )
        .unwrap_or_else(|_| unreachable_metric());
        let spot_check_draws = IntCounterVec::new(
            Opts::new("spot_check_draws_total", "Spot-check runs drawn (drawn), refused for want of inspectors and escalated (refused), and draws that failed (failed)"),
            &["result"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let replans_running = IntGauge::new("calendar_replans_running", "Calendar re-plans not finished")
            .unwrap_or_else(|_| unreachable_metric());
        let timers_provisional =
            IntGauge::new("timers_provisional", "Armed timers computed on a provisional calendar (no notice loaded)")
                .unwrap_or_else(|_| unreachable_metric());
        let official_calendar_days_left = IntGaugeVec::new(
            Opts::new(
                "calendar_official_days_left",
                "Days from today to the last day of the last year with an official calendar, by region",
            ),
            &["region"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let calls_refused = IntCounterVec::new(
            Opts::new("calls_refused_total", "Calls refused before a handler ran, by code and reason"),
            &["code", "reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let denied =
            IntCounterVec::new(Opts::new("calls_denied_total", "Calls denied by authorisation, by right"), &["right"])
                .unwrap_or_else(|_| unreachable_metric());
        let connections_refused = IntCounterVec::new(
            Opts::new("connections_refused_total", "Connections closed by the server's limits, by reason"),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let connections_open =
            IntGauge::new("connections_open", "Connections open").unwrap_or_else(|_| unreachable_metric());
        let request_bytes_held =
            IntGauge::new("request_bytes_held", "Bytes of request messages received and not yet handed to a handler")
                .unwrap_or_else(|_| unreachable_metric());
        let shards_held =
            IntGauge::new("shards_held", "Shards whose lease this node holds").unwrap_or_else(|_| unreachable_metric());
        let conflicts =
            IntCounter::new("write_conflicts_total", "Batches rolled back by a write conflict with another node")
                .unwrap_or_else(|_| unreachable_metric());
        let fenced = IntCounter::new(
            "fenced_total",
            "Batches of timer fires (or single fires) refused because a shard's lease had moved on",
        )
        .unwrap_or_else(|_| unreachable_metric());
        let timer_fires_rejected = IntCounterVec::new(
            Opts::new(
                "timer_fires_rejected_total",
                "Timer fires refused for another reason than a stale timer (dropped, and logged)",
            ),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let gauge_refreshes = IntCounter::new(
            "metrics_gauge_refreshes_total",
            "Scrapes that read the database-backed gauges (backlog, timers pending, re-plans)",
        )
        .unwrap_or_else(|_| unreachable_metric());
        let m = Metrics {
            registry,
            commands,
            batch_size,
            commit_seconds,
            timers_fired,
            fire_lateness_seconds,
            last_fire_commit_ms,
            breaches,
            outbox_written,
            timers_in_memory,
            outbox_backlog,
            outbound_backlog,
            consumer_lag,
            consumer_idle_seconds,
            outbound_attempts,
            outbound_latency_seconds,
            outbound_window,
            timers_pending,
            replanned,
            replans_running,
            timers_provisional,
            official_calendar_days_left,
            calls_refused,
            denied,
            connections_refused,
            connections_open,
            request_bytes_held,
            shards_held,
            conflicts,
            fenced,
            timer_fires_rejected,
            gauge_refreshes,
            spot_check_draws,
        };
        for c in [
            Box::new(m.commands.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.batch_size.clone()),
            Box::new(m.commit_seconds.clone()),
            Box::new(m.timers_fired.clone()),
            Box::new(m.fire_lateness_seconds.clone()),
            Box::new(m.last_fire_commit_ms.clone()),
            Box::new(m.breaches.clone()),
            Box::new(m.outbox_written.clone()),
            Box::new(m.timers_in_memory.clone()),
            Box::new(m.outbox_backlog.clone()),
            Box::new(m.outbound_backlog.clone()),
            Box::new(m.outbound_attempts.clone()),
            Box::new(m.consumer_lag.clone()),
            Box::new(m.consumer_idle_seconds.clone()),
            Box::new(m.outbound_latency_seconds.clone()),
            Box::new(m.outbound_window.clone()),
            Box::new(m.timers_pending.clone()),
            Box::new(m.replanned.clone()),
            Box::new(m.replans_running.clone()),
            Box::new(m.timers_provisional.clone()),
            Box::new(m.official_calendar_days_left.clone()),
            Box::new(m.calls_refused.clone()),
            Box::new(m.denied.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.request_bytes_held.clone()),
            Box::new(m.shards_held.clone()),
            Box::new(m.conflicts.clone()),
            Box::new(m.fenced.clone()),
            Box::new(m.spot_check_draws.clone()),
            Box::new(m.timer_fires_rejected.clone()),
            Box::new(m.gauge_refreshes.clone()),
        ] {
            // Names are distinct constants, so registration cannot collide.
            let _ = m.registry.register(c);
        }
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        // The text encoder writes metric names, label values (our own UTF-8 strings) and numbers.
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric options above are constants that are valid by construction; this only satisfies the
/// type checker without a panic path reachable from input.
fn unreachable_metric<T>() -> T {
    unreachable!("constant metric options are valid")
}
