//! Runs `tickgate bench` with tiny settings and checks that its JSON report is complete and its
//! values are consistent. No timing or throughput threshold is asserted: the numbers depend on
//! the machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound on the whole bench run; with these settings it takes about 15 s in a debug build.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn run_bench(out: &Path) -> (std::process::ExitStatus, String, String) {
    let dir = out.parent().unwrap();
    let stdout_path = dir.join("stdout.txt");
    let stderr_path = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .args(["bench", "--symbols", "2", "--tick-rate", "50", "--clients", "2", "--slow-clients", "1"])
        .args(["--duration-s", "2", "--warmup-s", "0.5", "--detection-rounds", "1"])
        .args(["--stale-after-ms", "500", "--liveness-timeout-ms", "800", "--backoff-base-ms", "200"])
        .arg("--out")
        .arg(out)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("tickgate starts");

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tickgate bench did not finish within {} s; stderr:\n{}",
                RUN_TIMEOUT.as_secs(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    (status, stdout, stderr)
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("report has no number at {pointer}: {report:#}"))
}

#[test]
fn bench_writes_complete_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let (status, stdout, stderr) = run_bench(&out);
    assert!(status.success(), "tickgate bench failed with {status}; stderr:\n{stderr}");
    assert!(stdout.contains("delivered messages/s"), "no table on stdout:\n{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    // Settings are echoed as given.
    assert_eq!(number(&report, "/settings/symbols"), 2.0);
    assert_eq!(number(&report, "/settings/clients"), 2.0);
    assert_eq!(number(&report, "/settings/slow_clients"), 1.0);
    assert!(number(&report, "/machine/cpus") >= 1.0);
    assert!(number(&report, "/machine/memory_total_kib") > 0.0);
    assert!(report.pointer("/machine/cpu_model").and_then(Value::as_str).is_some());

    // Ticks flowed from the simulator through the gateway to both clients.
    let delivered = number(&report, "/load/delivered_messages");
    assert!(number(&report, "/load/upstream_ticks_per_s") > 0.0);
    assert!(delivered > 0.0);
    assert!(number(&report, "/load/delivered_per_s") > 0.0);
    assert!(number(&report, "/load/expected_per_s") > 0.0);
    let ratio = number(&report, "/load/delivery_ratio");
    assert!(ratio > 0.0, "delivery ratio {ratio}");
    assert!(ratio < 1.5, "delivery ratio {ratio}");
    assert_eq!(number(&report, "/load/invalid_frames"), 0.0);
    assert_eq!(number(&report, "/load/fast_clients_lost"), 0.0);

    // Every delivered tick has one latency sample, and the percentiles are ordered.
    assert_eq!(number(&report, "/load/latency_us/samples"), delivered);
    let p50 = number(&report, "/load/latency_us/p50");
    let p99 = number(&report, "/load/latency_us/p99");
    let p999 = number(&report, "/load/latency_us/p999");
    let max = number(&report, "/load/latency_us/max");
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}");
    assert!(p99 <= p999, "p99 {p99} > p99.9 {p999}");
    assert!(p999 <= max, "p99.9 {p999} > max {max}");
    assert!(max < 60_000_000.0, "latency max {max} µs");
    assert_eq!(number(&report, "/load/latency_resolution_us"), 1000.0);

    // The gateway's own process was measured.
    assert!(number(&report, "/gateway/pid") > 0.0);
    assert!(number(&report, "/gateway/cpu_s") >= 0.0);
    assert!(number(&report, "/gateway/cpu_s_per_million_messages") >= 0.0);
    assert!(number(&report, "/gateway/rss_idle_kib") > 0.0);
    assert!(number(&report, "/gateway/rss_with_idle_clients_kib") > 0.0);
    assert!(report.pointer("/gateway/rss_per_idle_client_kib").and_then(Value::as_f64).is_some());
    let under_load = number(&report, "/gateway/rss_under_load_kib");
    assert!(under_load > 0.0);
    assert!(number(&report, "/gateway/rss_peak_kib") >= under_load);

    // The slow client ended one way or another, and is counted once.
    let slow = number(&report, "/slow_clients/closed_4002")
        + number(&report, "/slow_clients/closed_otherwise")
        + number(&report, "/slow_clients/still_open");
    assert_eq!(slow, 1.0);

    // One detection round, run with the thresholds given.
    assert_eq!(number(&report, "/detection/thresholds/stale_after_ms"), 500.0);
    assert_eq!(number(&report, "/detection/thresholds/liveness_timeout_ms"), 800.0);
    let rounds = report.pointer("/detection/rounds").and_then(Value::as_array).expect("rounds array");
    assert_eq!(rounds.len(), 1);
    for field in ["stall_to_stale_ms", "silence_to_reconnecting_ms", "drop_to_connecting_ms", "drop_to_simulator_connection_ms"] {
        let value = number(&report, &format!("/detection/rounds/0/{field}"));
        assert!(value > 0.0, "{field} = {value}");
    }
    for field in ["stale_beyond_threshold_ms", "silence_beyond_threshold_ms"] {
        assert!(report.pointer(&format!("/detection/rounds/0/{field}")).and_then(Value::as_f64).is_some(), "{field}");
    }
}

#[test]
fn bench_rejects_bad_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .args(["bench", "--clients", "0"])
        .stdin(Stdio::null())
        .output()
        .expect("tickgate starts");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--clients 0"), "{stderr}");
}
