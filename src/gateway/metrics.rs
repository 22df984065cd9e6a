//! Gateway counters and their Prometheus text exposition (format version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::fsm::StateName;
use crate::session::SessionStatus;

use super::protocol::ErrorCode;

/// Upper bounds of the tick latency histogram buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

const ERROR_CODES: [ErrorCode; 8] = [
    ErrorCode::InvalidJson,
    ErrorCode::UnknownType,
    ErrorCode::InvalidMessage,
    ErrorCode::InvalidSymbol,
    ErrorCode::SymbolNotFound,
    ErrorCode::MessageTooLarge,
    ErrorCode::TooManySubscriptions,
    ErrorCode::SubscriptionFailed,
];

/// Counters shared by the hub, the client tasks and the HTTP handlers.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ticks_received: AtomicU64,
    pub ticks_sent: AtomicU64,
    /// Clients connected now.
    pub clients: AtomicU64,
    pub clients_accepted: AtomicU64,
    pub clients_rejected_token: AtomicU64,
    pub clients_rejected_capacity: AtomicU64,
    pub slow_client_disconnects: AtomicU64,
    /// Session events the hub lost because it fell behind the broadcast.
    pub hub_lagged_events: AtomicU64,
    /// Transitions from Backoff to Connecting, that is, connect attempts after a failure.
    pub reconnect_attempts: AtomicU64,
    pub admin_reconnects: AtomicU64,
    client_errors: [AtomicU64; ERROR_CODES.len()],
    transitions: Mutex<BTreeMap<(StateName, StateName), u64>>,
    latency: LatencyHistogram,
}

#[derive(Debug, Default)]
struct LatencyHistogram {
    /// Non-cumulative counts per bucket; the last slot is the +Inf overflow.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    /// Counts one machine transition, and a reconnect attempt when it leaves Backoff to connect.
    pub fn record_transition(&self, from: StateName, to: StateName) {
        if from == StateName::Backoff && to == StateName::Connecting {
            self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
        }
        let mut transitions = self.transitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *transitions.entry((from, to)).or_insert(0) += 1;
    }

    pub fn record_client_error(&self, code: ErrorCode) {
        if let Some(index) = ERROR_CODES.iter().position(|known| *known == code) {
            self.client_errors[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the time from a tick's server timestamp to its send. Clock skew that makes it
    /// negative counts as zero.
    pub fn record_tick_latency(&self, latency_ms: i64) {
        let latency_ms = u64::try_from(latency_ms).unwrap_or(0);
        let index = LATENCY_BUCKETS_MS.iter().position(|bound| latency_ms <= *bound).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.latency.sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
        self.latency.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes every metric in the Prometheus text format, with the session's current status.
    pub fn render(&self, status: &SessionStatus) -> String {
        let mut out = String::with_capacity(4096);

        header(&mut out, "tickgate_state", "gauge", "1 for the connection machine's current state, 0 for the others.");
        for state in StateName::ALL {
            let value = u8::from(state == status.state);
            line(&mut out, &format!("tickgate_state{{state=\"{}\"}}", state.as_str()), value);
        }

        header(&mut out, "tickgate_state_since_seconds", "gauge", "Unix time when the current state was entered.");
        let _ = writeln!(out, "tickgate_state_since_seconds {}", seconds(status.since_ms));

        header(&mut out, "tickgate_connect_attempt", "gauge", "Current connect attempt number; 0 while streaming.");
        line(&mut out, "tickgate_connect_attempt", status.attempt);

        header(&mut out, "tickgate_transitions_total", "counter", "Connection machine transitions by source and target state.");
        {
            let transitions = self.transitions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for ((from, to), count) in transitions.iter() {
                let name = format!("tickgate_transitions_total{{from=\"{}\",to=\"{}\"}}", from.as_str(), to.as_str());
                line(&mut out, &name, *count);
            }
        }

        counter(&mut out, "tickgate_reconnect_attempts_total", "Connect attempts made after a failure (Backoff to Connecting).", &self.reconnect_attempts);
        counter(&mut out, "tickgate_admin_reconnects_total", "Reconnects forced through POST /admin/reconnect.", &self.admin_reconnects);

        header(&mut out, "tickgate_upstream_subscriptions", "gauge", "Symbols cTrader confirmed on the current connection.");
        line(&mut out, "tickgate_upstream_subscriptions", status.upstream_subscriptions);
        header(&mut out, "tickgate_desired_subscriptions", "gauge", "Symbols clients want, confirmed upstream or not.");
        line(&mut out, "tickgate_desired_subscriptions", status.desired_subscriptions);

        counter(&mut out, "tickgate_ticks_received_total", "Ticks the gateway received from the session.", &self.ticks_received);
        counter(&mut out, "tickgate_ticks_sent_total", "Tick frames written to WebSocket clients.", &self.ticks_sent);

        header(&mut out, "tickgate_clients", "gauge", "WebSocket clients connected now.");
        line(&mut out, "tickgate_clients", self.clients.load(Ordering::Relaxed));
        counter(&mut out, "tickgate_clients_accepted_total", "WebSocket clients accepted.", &self.clients_accepted);

        header(&mut out, "tickgate_clients_rejected_total", "counter", "WebSocket clients closed at connect, by reason.");
        line(&mut out, "tickgate_clients_rejected_total{reason=\"token\"}", self.clients_rejected_token.load(Ordering::Relaxed));
        line(&mut out, "tickgate_clients_rejected_total{reason=\"capacity\"}", self.clients_rejected_capacity.load(Ordering::Relaxed));

        counter(&mut out, "tickgate_slow_client_disconnects_total", "Clients closed with 4002 because their send queue was full.", &self.slow_client_disconnects);
        counter(&mut out, "tickgate_hub_lagged_events_total", "Session events lost because the fan-out hub fell behind.", &self.hub_lagged_events);

        header(&mut out, "tickgate_client_errors_total", "counter", "Error frames sent to clients, by code.");
        for (code, count) in ERROR_CODES.iter().zip(self.client_errors.iter()) {
            line(&mut out, &format!("tickgate_client_errors_total{{code=\"{}\"}}", code.as_str()), count.load(Ordering::Relaxed));
        }

        self.render_latency(&mut out);
        out
    }

    fn render_latency(&self, out: &mut String) {
        let name = "tickgate_tick_latency_seconds";
        header(out, name, "histogram", "Time from a tick's server timestamp to its send to a client.");

        let mut cumulative = 0;
        for (bound_ms, bucket) in LATENCY_BUCKETS_MS.iter().zip(self.latency.buckets.iter()) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", seconds(*bound_ms as i64));
        }
        cumulative += self.latency.buckets[LATENCY_BUCKETS_MS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", seconds(self.latency.sum_ms.load(Ordering::Relaxed) as i64));
        // The count is the +Inf bucket by definition; reading the buckets keeps the two equal
        // even while sends are being recorded concurrently.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Formats milliseconds as decimal seconds without float rounding, for example 1500 as 1.5.
fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (whole, fraction) = (ms / 1000, ms % 1000);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let fraction = format!("{fraction:03}");
    format!("{sign}{whole}.{}", fraction.trim_end_matches('0'))
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn line(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, "counter", help);
    line(out, name, value.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1), "0.001");
        assert_eq!(seconds(1500), "1.5");
        assert_eq!(seconds(10_000), "10");
        assert_eq!(seconds(-250), "-0.25");
    }

    #[test]
    fn latency_histogram_is_cumulative() {
        let metrics = Metrics::default();
        metrics.record_tick_latency(3);
        metrics.record_tick_latency(3);
        metrics.record_tick_latency(20_000);
        metrics.record_tick_latency(-5);
        let text = metrics.render(&SessionStatus::initial());
        assert!(text.contains("tickgate_tick_latency_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("tickgate_tick_latency_seconds_bucket{le=\"0.005\"} 3\n"), "{text}");
        assert!(text.contains("tickgate_tick_latency_seconds_bucket{le=\"10\"} 3\n"), "{text}");
        assert!(text.contains("tickgate_tick_latency_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("tickgate_tick_latency_seconds_count 4\n"), "{text}");
        assert!(text.contains("tickgate_tick_latency_seconds_sum 20.006\n"), "{text}");
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let metrics = Metrics::default();
        metrics.record_transition(StateName::Backoff, StateName::Connecting);
        let text = metrics.render(&SessionStatus::initial());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|base| declared.contains(*base)))
                .unwrap_or(name);
            assert!(declared.contains(family), "sample {line:?} has no TYPE line before it");
        }
        assert!(text.contains("tickgate_transitions_total{from=\"Backoff\",to=\"Connecting\"} 1\n"), "{text}");
        assert!(text.contains("tickgate_reconnect_attempts_total 1\n"), "{text}");
        assert!(text.contains("tickgate_state{state=\"Disconnected\"} 1\n"), "{text}");
    }
}
