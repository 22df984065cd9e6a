//! `tickgate stream` against the simulator: tick lines with exact prices, and state lines.

mod session_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use session_support::{eventually, Fixture};
use tickgate::commands::stream::stream;

/// A `Write` whose bytes the test can read while the command is still writing.
#[derive(Clone, Default)]
struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedOutput {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_string).collect()
    }
}

async fn run_until_ticks(json: bool) -> Vec<String> {
    let fixture = Fixture::start(|_| {}).await;
    let output = SharedOutput::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(stream(
        fixture.session_config(),
        vec!["USD/JPY".into()],
        json,
        output.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));

    eventually("three tick lines", || output.lines().iter().filter(|l| l.contains("USDJPY")).count() >= 3).await;
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    fixture.sim.shutdown().await;
    output.lines()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_prints_ticks_and_states() {
    let lines = run_until_ticks(false).await;

    assert_eq!(lines[0], "state Connecting attempt 0");
    assert!(lines.contains(&"state Streaming attempt 0".to_string()), "{lines:?}");
    let tick = lines.iter().find(|l| l.contains("USDJPY")).unwrap();
    let fields: Vec<&str> = tick.split(' ').collect();
    assert_eq!(fields.len(), 6, "{tick}");
    assert_eq!(fields[1], "USDJPY");
    assert_eq!(fields[2], "bid");
    assert_eq!(fields[3].split('.').nth(1).map(str::len), Some(3), "{tick}");
    assert_eq!(fields[5].split('.').nth(1).map(str::len), Some(3), "{tick}");
    assert_eq!(lines.last().unwrap(), "state Disconnected attempt 0 (stopped: shutdown requested)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_json_lines_parse() {
    let lines = run_until_ticks(true).await;

    let values: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tick = values.iter().find(|v| v["type"] == "tick").unwrap();
    assert_eq!(tick["symbol"], "USDJPY");
    assert!(tick["bid"].as_str().unwrap().contains('.'));
    assert!(tick["serverTime"].as_i64().is_some());
    assert!(values.iter().any(|v| v["type"] == "status" && v["status"]["state"] == "Streaming"));
}
