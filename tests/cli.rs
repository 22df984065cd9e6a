//! The `tickgate` binary as a user runs it. Configuration errors exit with code 2 and name the
//! value and the fix, and `history` writes CSV from the embedded simulator.

use std::process::{Command, Output};

fn tickgate(args: &[&str]) -> Output {
    tickgate_with_env(args, &[])
}

fn tickgate_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .args(args)
        // Keep a developer's own credentials and .env out of the test.
        .env_remove("CTRADER_CLIENT_ID")
        .env_remove("CTRADER_CLIENT_SECRET")
        .env_remove("CTRADER_ACCESS_TOKEN")
        .env_remove("CTRADER_REFRESH_TOKEN")
        .env_remove("CTRADER_ACCOUNT_ID")
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("tickgate binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn malformed_date_exits_2_naming_value() {
    let output = tickgate(&["history", "EURUSD", "--from", "2024-13-01"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("`2024-13-01`"), "{}", stderr(&output));
    assert!(stderr(&output).contains("YYYY-MM-DD"), "{}", stderr(&output));
}

#[test]
fn unknown_period_exits_2() {
    let output = tickgate(&["history", "EURUSD", "--from", "2024-01-01", "--period", "M7"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("M7"), "{}", stderr(&output));
}

#[test]
fn reversed_range_exits_2() {
    let output = tickgate(&["history", "EURUSD", "--from", "2024-01-02", "--to", "2024-01-01"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("is not before"), "{}", stderr(&output));
}

#[test]
fn partial_credentials_exit_2_naming_missing() {
    let output = tickgate_with_env(&["history", "EURUSD", "--from", "2024-01-01"], &[("CTRADER_CLIENT_ID", "my-app")]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("CTRADER_CLIENT_SECRET"), "{text}");
    assert!(text.contains("CTRADER_ACCOUNT_ID"), "{text}");
}

#[test]
fn history_writes_csv_from_simulator() {
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::hours(2);
    let from = from.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let to = to.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let output = tickgate(&["history", "EUR/USD", "--period", "m5", "--from", &from, "--to", &to]);
    assert!(output.status.success(), "{}", stderr(&output));

    let stdout = String::from_utf8(output.stdout).expect("CSV is UTF-8");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("timestamp,open,high,low,close,volume"));
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 20, "expected about 24 five-minute bars in two hours, got {}", rows.len());

    let mut previous = String::new();
    for row in rows {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 6, "row {row}");
        assert!(fields[0] > previous.as_str(), "rows must be in time order: {row}");
        previous = fields[0].to_string();

        // EURUSD has 5 digits, so every price keeps exactly five decimals.
        for price in &fields[1..5] {
            assert_eq!(price.split('.').nth(1).map(str::len), Some(5), "price {price} in row {row}");
        }
        let [open, high, low, close]: [f64; 4] = [1, 2, 3, 4].map(|i| fields[i].parse().expect("price"));
        assert!(low <= open, "low above open in row {row}");
        assert!(low <= close, "low above close in row {row}");
        assert!(high >= open, "high below open in row {row}");
        assert!(high >= close, "high below close in row {row}");
    }
}

#[test]
fn unknown_symbol_lists_available() {
    let output = tickgate(&["history", "NOPE", "--from", "2024-01-01", "--to", "2024-01-02"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("EURUSD"), "{}", stderr(&output));
}

/// Runs `serve` with settings that must stop it at start. A regression here means `serve` keeps
/// running with a session that never starts, so the run is bounded by a timeout.
fn serve_rejected(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut command = Command::new("timeout");
    command.arg("20").arg(env!("CARGO_BIN_EXE_tickgate")).args(&all);
    for name in ["CTRADER_CLIENT_ID", "CTRADER_CLIENT_SECRET", "CTRADER_ACCESS_TOKEN", "CTRADER_REFRESH_TOKEN", "CTRADER_ACCOUNT_ID"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied()).current_dir(env!("CARGO_TARGET_TMPDIR")).output().expect("timeout and tickgate run")
}

#[test]
fn unwritable_journal_exits_2() {
    let output = serve_rejected(&["--journal", "/nonexistent-dir/journal.jsonl"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("/nonexistent-dir/journal.jsonl"), "{}", stderr(&output));
}

#[test]
fn missing_ca_file_exits_2() {
    let credentials = [
        ("CTRADER_CLIENT_ID", "app"),
        ("CTRADER_CLIENT_SECRET", "secret"),
        ("CTRADER_ACCESS_TOKEN", "token"),
        ("CTRADER_ACCOUNT_ID", "1"),
        ("CTRADER_HOST", "localhost"),
        ("CTRADER_CA_FILE", "/nonexistent/ca.pem"),
    ];
    let output = serve_rejected(&[], &credentials);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("/nonexistent/ca.pem"), "{}", stderr(&output));
    assert_eq!(stderr(&output).matches("os error 2").count(), 1, "cause printed once: {}", stderr(&output));
}

#[test]
fn zero_limits_exit_2() {
    for flag in ["--max-clients", "--max-message-bytes", "--max-subscriptions", "--client-queue"] {
        let output = serve_rejected(&[flag, "0"], &[]);
        assert_eq!(output.status.code(), Some(2), "{flag}: {}", stderr(&output));
        assert!(stderr(&output).contains("at least 1"), "{flag}: {}", stderr(&output));
    }
}

#[test]
fn backoff_cap_below_base_exits_2() {
    let output = serve_rejected(&["--backoff-base-ms", "1000", "--backoff-cap-ms", "500"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("backoff_cap_ms (500)"), "{}", stderr(&output));
}

#[test]
fn negative_duration_names_value() {
    let output = serve_rejected(&["--connect-timeout-ms", "-5"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("`-5`"), "{}", stderr(&output));
}

#[test]
fn stream_ends_quietly_on_closed_pipe() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .args(["stream", "EURUSD"])
        .env_remove("CTRADER_CLIENT_ID")
        .env_remove("CTRADER_ACCESS_TOKEN")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tickgate stream starts");

    // Read the first line, then close both pipes as `| head -1` would.
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped")).read_line(&mut first).expect("first line");
    drop(child.stderr.take());
    assert!(first.starts_with("state "), "first line: {first}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("stream kept running after its output was closed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a closed pipe must end stream without a panic (exit 101)");
}
