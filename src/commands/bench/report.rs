//! The bench results: the JSON document written to `--out`, and the table printed to stdout.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::detect::{DetectionRound, Thresholds};

/// Everything one `tickgate bench` run measured, with the settings and machine behind it.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub tickgate_version: &'static str,
    /// `release` or `debug`: the build of the bench process, and of the gateway unless
    /// `--serve-exe` pointed elsewhere.
    pub build: &'static str,
    /// Unix milliseconds when the run started.
    pub started_at_ms: i64,
    pub machine: Machine,
    pub settings: Settings,
    pub load: Load,
    pub gateway: GatewayUsage,
    pub slow_clients: SlowClients,
    pub detection: Detection,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs this process may run on.
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_kib: u64,
    pub kernel: String,
    /// The 1-minute load average when the run started; other work on the machine shares the
    /// cores with the gateway and the clients.
    pub load_average_1m: f64,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub symbols: usize,
    /// Spot events per second per symbol from the simulator.
    pub tick_rate_per_symbol: f64,
    pub clients: usize,
    pub slow_clients: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub detection_rounds: u32,
    /// The `tickgate` executable that ran as the gateway.
    pub serve_exe: String,
    /// The flags the gateway was started with.
    pub serve_args: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Load {
    /// Window over which the rates are computed, in seconds.
    pub window_s: f64,
    /// Spot events the simulator sent per second in the window.
    pub upstream_ticks_per_s: f64,
    /// Tick messages all fast clients received in the window.
    pub delivered_messages: u64,
    pub delivered_per_s: f64,
    /// Upstream ticks per second times the number of fast clients.
    pub expected_per_s: f64,
    /// Delivered divided by expected; below 1 means ticks were lost or late.
    pub delivery_ratio: f64,
    /// Frames no client could parse as a known JSON frame.
    pub invalid_frames: u64,
    /// Fast clients whose connection ended before the end of the run, by any cause.
    pub fast_clients_lost: usize,
    /// Fast clients the gateway closed as slow (4002).
    pub fast_clients_closed_4002: usize,
    /// Seconds from subscribing to the first fast client's early end; `None` when none ended.
    pub first_client_lost_after_s: Option<f64>,
    /// Tick messages all fast clients received from subscribing to the end of the window,
    /// including the warm-up and any client lost on the way.
    pub delivered_messages_whole_run: u64,
    /// Session events the gateway's fan-out hub lost by falling behind, from its `/metrics`;
    /// `None` when the metrics could not be read.
    pub hub_lagged_events: Option<u64>,
    pub latency_us: Percentiles,
    /// Resolution of the tick `timestamp` that latency is measured from, in microseconds. The
    /// simulator's timestamp is whole milliseconds, so each sample is up to this much above the
    /// true latency.
    pub latency_resolution_us: u64,
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        Self {
            samples: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GatewayUsage {
    pub pid: u32,
    /// User plus system CPU seconds of the gateway process in the window.
    pub cpu_s: f64,
    /// Share of one core the gateway used in the window.
    pub cpu_cores: f64,
    /// Share of one core the bench process (simulator and clients) used in the window. Near
    /// the machine's core count minus the gateway's share, the clients are the bottleneck.
    pub bench_process_cpu_cores: f64,
    pub cpu_s_per_million_messages: f64,
    /// RSS once the session is streaming, before any client connects.
    pub rss_idle_kib: u64,
    /// RSS with every client connected and not yet subscribed.
    pub rss_with_idle_clients_kib: u64,
    /// (with idle clients − idle) / number of clients.
    pub rss_per_idle_client_kib: f64,
    /// RSS at the end of the window.
    pub rss_under_load_kib: u64,
    /// Highest RSS of the process up to the end of the window (VmHWM).
    pub rss_peak_kib: u64,
}

#[derive(Debug, Serialize)]
pub struct SlowClients {
    pub clients: usize,
    /// Slow clients the gateway closed with code 4002.
    pub closed_4002: usize,
    /// Slow clients closed with another code, or dropped without a close frame.
    pub closed_otherwise: usize,
    /// Slow clients still open at the end of the run.
    pub still_open: usize,
    /// The gateway's own count of 4002 closes, from its `/metrics`; `None` when unreadable.
    pub gateway_count: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Detection {
    pub thresholds: Thresholds,
    pub rounds: Vec<DetectionRound>,
}

impl BenchReport {
    /// Renders the results as a table for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let l = &self.load;
        let g = &self.gateway;
        let m = &self.machine;

        let _ = writeln!(
            out,
            "tickgate bench ({} build) on {} CPUs, {}, {} MiB, load average {:.2} at start",
            self.build,
            m.cpus,
            m.cpu_model,
            m.memory_total_kib / 1024,
            m.load_average_1m
        );
        let _ = writeln!(
            out,
            "{} symbols x {} ticks/s, {} clients (+{} slow), {} s window after {} s warm-up",
            s.symbols, s.tick_rate_per_symbol, s.clients, s.slow_clients, l.window_s, s.warmup_s
        );
        let _ = writeln!(out);
        let rows: Vec<(&str, String)> = vec![
            ("upstream ticks/s", format!("{:.0}", l.upstream_ticks_per_s)),
            ("delivered messages/s", format!("{:.0} ({:.1} % of expected {:.0})", l.delivered_per_s, l.delivery_ratio * 100.0, l.expected_per_s)),
            ("latency p50", format!("{} µs", l.latency_us.p50)),
            ("latency p99", format!("{} µs", l.latency_us.p99)),
            ("latency p99.9", format!("{} µs", l.latency_us.p999)),
            ("latency max", format!("{} µs", l.latency_us.max)),
            ("latency samples", format!("{} (timestamps in whole ms: each sample up to {} µs high)", l.latency_us.samples, l.latency_resolution_us)),
            ("gateway CPU", format!("{:.2} s ({:.2} cores)", g.cpu_s, g.cpu_cores)),
            ("bench process CPU", format!("{:.2} cores (simulator and clients)", g.bench_process_cpu_cores)),
            ("gateway CPU per 1M messages", format!("{:.3} s", g.cpu_s_per_million_messages)),
            ("gateway RSS idle", format!("{} KiB", g.rss_idle_kib)),
            ("gateway RSS per idle client", format!("{:.1} KiB", g.rss_per_idle_client_kib)),
            ("gateway RSS under load", format!("{} KiB (peak {} KiB)", g.rss_under_load_kib, g.rss_peak_kib)),
            (
                "fast clients lost / closed 4002",
                match l.first_client_lost_after_s {
                    Some(after_s) => format!("{} / {} (first {after_s:.2} s after subscribing)", l.fast_clients_lost, l.fast_clients_closed_4002),
                    None => format!("{} / {}", l.fast_clients_lost, l.fast_clients_closed_4002),
                },
            ),
            ("hub lagged events", l.hub_lagged_events.map_or("unknown".into(), |n| n.to_string())),
            (
                "slow clients closed 4002",
                format!(
                    "{} of {} ({} otherwise, {} still open; gateway counted {})",
                    self.slow_clients.closed_4002,
                    self.slow_clients.clients,
                    self.slow_clients.closed_otherwise,
                    self.slow_clients.still_open,
                    self.slow_clients.gateway_count.map_or("unknown".into(), |n| n.to_string())
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<32} {value}");
        }

        let t = &self.detection.thresholds;
        let _ = writeln!(out);
        if self.detection.rounds.is_empty() {
            let _ = writeln!(out, "detection: skipped (--detection-rounds 0)");
            return out;
        }
        let _ = writeln!(
            out,
            "detection (stale after {} ms, liveness timeout {} ms, backoff base {} ms), per round:",
            t.stale_after_ms, t.liveness_timeout_ms, t.backoff_base_ms
        );
        let column = |f: &dyn Fn(&DetectionRound) -> String| -> String {
            self.detection.rounds.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        let rows: Vec<(&str, String)> = vec![
            ("stall_ticks → stale", column(&|r| format!("{:.1} ms", r.stall_to_stale_ms))),
            ("  beyond stale threshold", column(&|r| format!("{:.1} ms", r.stale_beyond_threshold_ms))),
            ("silence → reconnecting", column(&|r| format!("{:.1} ms", r.silence_to_reconnecting_ms))),
            ("  beyond liveness timeout", column(&|r| format!("{:.1} ms", r.silence_beyond_threshold_ms))),
            ("drop → reconnecting", column(&|r| r.drop_to_reconnecting_ms.map_or("not seen".into(), |ms| format!("{ms:.1} ms")))),
            ("drop → connecting", column(&|r| format!("{:.1} ms", r.drop_to_connecting_ms))),
            ("drop → simulator connection", column(&|r| format!("{:.1} ms", r.drop_to_simulator_connection_ms))),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<32} {value}");
        }
        out
    }
}

impl Machine {
    /// Describes this machine from `/proc`. A field that cannot be read is reported as unknown (or 0).
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU model".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_total_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "unknown kernel".into());
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let load_average_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self { cpus, cpu_model, memory_total_kib, kernel, load_average_1m }
    }
}
