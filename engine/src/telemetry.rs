//! Prometheus metrics: every name in one place, one registry per engine (so several engines in
//! one test process do not share counters), rendered in the text format for `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What every metric's name starts with (`shenguan_…`).
const PREFIX: &str = "shenguan";

/// The engine's metrics.
pub struct Metrics {
    registry: Registry,
    /// Every metric family's full name, whether or not it has a sample yet.
    names: Vec<String>,
    /// Commands by kind (start, event, timer, replan) and result (applied, duplicate, rejected,
    /// failed; `unchanged` for a re-plan that found nothing to move).
    pub commands: IntCounterVec,
    /// Commands per group commit.
    pub batch_size: Histogram,
    /// Seconds from BEGIN to durable COMMIT.
    pub commit_seconds: Histogram,
    /// Seconds from a domain call's arrival (its whole message received) to its response, by
    /// method (`unknown` for a path no service has).
    pub call_seconds: prometheus::HistogramVec,
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
        let registry = Registry::new_custom(Some(PREFIX.into()), None).unwrap_or_default();
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
        let call_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new("call_seconds", "Seconds from a domain call's arrival to its response, by method")
                .buckets(buckets(0.0005, 2.0, 16)),
            &["method"],
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
        let mut m = Metrics {
            registry,
            names: Vec::new(),
            commands,
            batch_size,
            commit_seconds,
            call_seconds,
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
            Box::new(m.call_seconds.clone()),
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
            // The registry adds the prefix when it gathers.
            m.names.extend(c.desc().iter().map(|d| format!("{PREFIX}_{}", d.fq_name)));
            // Names are distinct constants, so registration cannot collide.
            let _ = m.registry.register(c);
        }
        m
    }

    /// Every metric family's full name (`shenguan_…`), also of those with no sample yet: the
    /// alert rules and the dashboard in ops/ are checked against these.
    pub fn names(&self) -> &[String] {
        &self.names
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops").join(path);
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
    }

    /// Every `shenguan_…` name in `text`, with a histogram's `_bucket`, `_sum` and `_count`
    /// taken back to its family.
    fn used(text: &str, names: &[String]) -> Vec<(String, bool)> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(i) = text[at..].find("shenguan_") {
            let start = at + i;
            let end = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                    .count();
            let name = &text[start..end];
            at = end;
            // "shenguan_*" in prose names no metric.
            if name == "shenguan_" {
                continue;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| names.iter().any(|n| n == f)))
                .unwrap_or(name);
            out.push((name.to_owned(), names.iter().any(|n| n == family)));
        }
        out
    }

    #[test]
    fn the_alert_rules_and_the_dashboard_name_only_real_metrics() {
        let metrics = Metrics::new();
        let names = metrics.names();
        assert!(names.iter().any(|n| n == "shenguan_call_seconds"), "{names:?}");
        for file in ["monitoring/shenguan-alerts.yml", "monitoring/shenguan-dashboard.json"] {
            let used = used(&ops(file), names);
            assert!(used.len() >= 15, "{file} names {} metrics", used.len());
            let unknown: Vec<&String> = used.iter().filter(|(_, known)| !known).map(|(n, _)| n).collect();
            assert!(unknown.is_empty(), "{file} names metrics the engine does not have: {unknown:?}");
        }
        // A misspelt name is caught.
        assert!(!used("rate(shenguan_comit_seconds_bucket[5m])", names)[0].1);
    }

    #[test]
    fn every_alert_says_what_it_is_and_where_the_runbook_says_what_to_do() {
        let rules = ops("monitoring/shenguan-alerts.yml");
        let runbook = ops("runbook.md");
        // GitHub's heading anchors: lower case, spaces to '-', punctuation dropped.
        let anchors: Vec<String> = runbook
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(|h| {
                h.to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let alerts = rules.matches("- alert: ").count();
        assert!(alerts >= 12, "{alerts} alerts");
        assert_eq!(rules.matches("\n        expr: ").count(), alerts, "each alert has an expression");
        assert_eq!(rules.matches("summary: ").count(), alerts, "each alert has a summary");
        let links: Vec<&str> =
            rules.lines().filter_map(|l| l.trim().strip_prefix("runbook: \"ops/runbook.md#")).collect();
        assert_eq!(links.len(), alerts, "each alert links the runbook");
        for link in links {
            let anchor = link.trim_end_matches('"');
            assert!(anchors.iter().any(|a| a == anchor), "no runbook heading for #{anchor}: {anchors:?}");
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&ops("monitoring/shenguan-dashboard.json")).expect("the dashboard is JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 12);
        for p in panels {
            let targets = p["targets"].as_array().expect("targets");
            assert!(
                !targets.is_empty() && targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
                "{p}"
            );
        }
    }
}
