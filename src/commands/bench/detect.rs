//! Detection timings: how long the gateway takes to notice a fault that the simulator injects,
//! as one WebSocket client sees it in the gateway's status frames.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::info;

use super::clients;
use super::wire::{self, Frame};
use crate::simulator::{Fault, SimulatorHandle};

/// Extra time, beyond a fault's threshold, that the monitor waits for the expected status.
const DETECTION_SLACK: Duration = Duration::from_secs(10);

/// Time the feed gets to come back after a fault is lifted.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Interval at which the simulator's connection count is read while waiting for a reconnect.
const STATS_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Ticks the monitor waits for before injecting a fault. The first spot event after a
/// subscription is the server's snapshot of the current price, which the session does not count
/// as a live tick, so a fault right after it would be measured from the wrong tick.
const FLOWING_TICKS: u32 = 3;

/// Capacity of the queue between the monitor's socket reader and the detection logic.
const EVENT_QUEUE: usize = 65_536;

/// The thresholds the gateway was started with.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Thresholds {
    pub stale_after_ms: u64,
    pub liveness_timeout_ms: u64,
    pub backoff_base_ms: u64,
}

/// Timings of one detection round, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectionRound {
    /// `stall_ticks` injected → `stale` status received.
    pub stall_to_stale_ms: f64,
    /// Last tick's simulator timestamp → `stale` status received, minus the stale threshold.
    /// The gateway got that tick after the simulator sent it, so this is an upper bound of its
    /// delay beyond the threshold (by the tick's transit time plus up to 1 ms of timestamp
    /// truncation).
    pub stale_beyond_threshold_ms: f64,
    /// `silence` injected → `reconnecting` status received.
    pub silence_to_reconnecting_ms: f64,
    /// Last tick's simulator timestamp → `reconnecting` status received, minus the liveness
    /// timeout; an upper bound in the same way as `stale_beyond_threshold_ms`.
    pub silence_beyond_threshold_ms: f64,
    /// `drop` injected → `reconnecting` status received; `None` when the gateway went straight to
    /// `connecting`.
    pub drop_to_reconnecting_ms: Option<f64>,
    /// `drop` injected → `connecting` status received: the first reconnect attempt.
    pub drop_to_connecting_ms: f64,
    /// `drop` injected → the simulator counted a new connection.
    pub drop_to_simulator_connection_ms: f64,
}

enum MonitorEvent {
    /// A tick; `sent_ms` is its simulator timestamp in Unix milliseconds.
    Tick { sent_ms: i64 },
    /// A status frame; `at_unix_us` is its receive time in Unix microseconds.
    Status { at: Instant, at_unix_us: u64, status: String },
    Ended { error: String },
}

/// One WebSocket client that reports every tick and status frame with its receive time.
pub struct Monitor {
    events: mpsc::Receiver<MonitorEvent>,
    reader: JoinHandle<()>,
    status: Option<String>,
    /// Simulator timestamp of the last tick received, in Unix milliseconds.
    last_tick_sent_ms: Option<i64>,
}

impl Monitor {
    /// Connects to the gateway and subscribes to `symbol`.
    pub async fn connect(url: &str, symbol: &str) -> anyhow::Result<Monitor> {
        let mut ws = clients::connect(url, None).await?;
        ws.send(Message::text(wire::subscribe_request(&[symbol.to_string()])))
            .await
            .context("monitor cannot send its subscribe request")?;

        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let reader = tokio::spawn(async move {
            while let Some(message) = ws.next().await {
                let at = Instant::now();
                let at_unix_us = clients::unix_now_us();
                let text = match message {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(frame)) => {
                        let _ = tx.send(MonitorEvent::Ended { error: format!("gateway closed the monitor: {frame:?}") }).await;
                        return;
                    }
                    Ok(_) => continue,
                    Err(error) => {
                        let _ = tx.send(MonitorEvent::Ended { error: error.to_string() }).await;
                        return;
                    }
                };
                for line in text.split('\n').filter(|line| !line.trim().is_empty()) {
                    let event = match wire::parse_frame(line) {
                        Ok(Frame::Tick { timestamp_ms }) => MonitorEvent::Tick { sent_ms: timestamp_ms },
                        Ok(Frame::Status { status }) => MonitorEvent::Status { at, at_unix_us, status },
                        Ok(Frame::Other) | Err(_) => continue,
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(MonitorEvent::Ended { error: "connection ended".into() }).await;
        });

        Ok(Monitor { events, reader, status: None, last_tick_sent_ms: None })
    }

    /// Waits for the next event, or fails when the deadline passes or the connection ends.
    async fn next_event(&mut self, deadline: Instant, waiting_for: &str) -> anyhow::Result<MonitorEvent> {
        match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
            Ok(Some(MonitorEvent::Ended { error })) => bail!("monitor connection ended while waiting for {waiting_for}: {error}"),
            Ok(Some(event)) => {
                self.note(&event);
                Ok(event)
            }
            Ok(None) => bail!("monitor connection ended while waiting for {waiting_for}"),
            Err(_) => bail!(
                "timed out waiting for {waiting_for}; last status seen: {}",
                self.status.as_deref().unwrap_or("none")
            ),
        }
    }

    fn note(&mut self, event: &MonitorEvent) {
        match event {
            MonitorEvent::Tick { sent_ms, .. } => self.last_tick_sent_ms = Some(*sent_ms),
            MonitorEvent::Status { status, .. } => self.status = Some(status.clone()),
            MonitorEvent::Ended { .. } => {}
        }
    }

    /// Waits for a status frame with `wanted`; returns its receive time as an [`Instant`] and
    /// in Unix microseconds.
    async fn wait_status(&mut self, wanted: &str, timeout: Duration) -> anyhow::Result<(Instant, u64)> {
        let deadline = Instant::now() + timeout;
        let waiting_for = format!("status {wanted:?}");
        loop {
            if let MonitorEvent::Status { at, at_unix_us, status } = self.next_event(deadline, &waiting_for).await? {
                if status == wanted {
                    return Ok((at, at_unix_us));
                }
            }
        }
    }

    /// Waits until the status is `connected` and [`FLOWING_TICKS`] ticks have arrived after that.
    async fn wait_flowing(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut ticks = 0;
        loop {
            let event = self.next_event(deadline, "status \"connected\" and ticks").await?;
            if self.status.as_deref() != Some("connected") {
                ticks = 0;
            } else if matches!(event, MonitorEvent::Tick { .. }) {
                ticks += 1;
                if ticks >= FLOWING_TICKS {
                    return Ok(());
                }
            }
        }
    }

    /// Takes every event already queued, so the status and last tick are current.
    fn catch_up(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.note(&event);
        }
    }

    /// Returns the milliseconds from the last tick's simulator timestamp to `at_unix_us`.
    fn since_last_tick_ms(&self, at_unix_us: u64) -> anyhow::Result<f64> {
        let sent_ms = self.last_tick_sent_ms.context("the monitor has received no tick")?;
        Ok(at_unix_us as f64 / 1000.0 - sent_ms as f64)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Runs `rounds` rounds of stall, silence and drop against the gateway that `url` serves.
pub async fn run_detection(
    url: &str,
    symbol: &str,
    simulator: &SimulatorHandle,
    thresholds: Thresholds,
    rounds: u32,
) -> anyhow::Result<Vec<DetectionRound>> {
    let mut monitor = Monitor::connect(url, symbol).await?;
    monitor.wait_flowing(RECOVERY_TIMEOUT).await.context("the feed did not start for the monitor")?;

    let mut results = Vec::new();
    for round in 1..=rounds {
        let mut result = DetectionRound::default();
        measure_stall(&mut monitor, simulator, thresholds, &mut result).await.context("stall_ticks")?;
        measure_silence(&mut monitor, simulator, thresholds, &mut result).await.context("silence")?;
        measure_drop(&mut monitor, simulator, thresholds, &mut result).await.context("drop")?;
        info!(round, ?result, "detection round done");
        results.push(result);
    }
    Ok(results)
}

async fn measure_stall(
    monitor: &mut Monitor,
    simulator: &SimulatorHandle,
    thresholds: Thresholds,
    result: &mut DetectionRound,
) -> anyhow::Result<()> {
    monitor.catch_up();
    let injected = Instant::now();
    simulator.inject(Fault::StallTicks);

    let threshold = Duration::from_millis(thresholds.stale_after_ms);
    let (stale_at, stale_at_unix_us) = monitor.wait_status("stale", threshold + DETECTION_SLACK).await?;
    result.stall_to_stale_ms = millis(stale_at - injected);
    result.stale_beyond_threshold_ms = monitor.since_last_tick_ms(stale_at_unix_us)? - millis(threshold);

    simulator.inject(Fault::Resume);
    monitor.wait_flowing(RECOVERY_TIMEOUT).await.context("ticks did not resume")
}

async fn measure_silence(
    monitor: &mut Monitor,
    simulator: &SimulatorHandle,
    thresholds: Thresholds,
    result: &mut DetectionRound,
) -> anyhow::Result<()> {
    monitor.catch_up();
    let injected = Instant::now();
    simulator.inject(Fault::Silence);

    // The stale status comes first when the stale threshold is the shorter one; the liveness
    // timeout then ends the connection and the gateway reports `reconnecting`.
    let threshold = Duration::from_millis(thresholds.liveness_timeout_ms);
    // The last inbound frame may be a heartbeat after the last tick, which makes the real delay
    // beyond the timeout smaller than measured here, never larger.
    let (detected_at, detected_at_unix_us) = monitor.wait_status("reconnecting", threshold + DETECTION_SLACK).await?;
    result.silence_to_reconnecting_ms = millis(detected_at - injected);
    result.silence_beyond_threshold_ms = monitor.since_last_tick_ms(detected_at_unix_us)? - millis(threshold);

    simulator.inject(Fault::Resume);
    monitor.wait_flowing(RECOVERY_TIMEOUT).await.context("the feed did not come back")
}

async fn measure_drop(
    monitor: &mut Monitor,
    simulator: &SimulatorHandle,
    thresholds: Thresholds,
    result: &mut DetectionRound,
) -> anyhow::Result<()> {
    monitor.catch_up();
    let connections_before = simulator.stats().connections_total;
    let injected = Instant::now();
    simulator.inject(Fault::Drop);

    // The simulator's own count of connections shows when the reconnect reached it.
    let wait_limit = Duration::from_millis(thresholds.backoff_base_ms) * 2 + DETECTION_SLACK;
    let simulator_saw = async {
        let deadline = injected + wait_limit;
        while Instant::now() < deadline {
            if simulator.stats().connections_total > connections_before {
                return Some(Instant::now());
            }
            tokio::time::sleep(STATS_POLL_INTERVAL).await;
        }
        None
    };

    let statuses = async {
        let deadline = injected + wait_limit;
        let mut reconnecting_at = None;
        loop {
            if let MonitorEvent::Status { at, status, .. } = monitor.next_event(deadline, "status \"connecting\"").await? {
                match status.as_str() {
                    "reconnecting" if reconnecting_at.is_none() => reconnecting_at = Some(at),
                    "connecting" => return anyhow::Ok((reconnecting_at, at)),
                    _ => {}
                }
            }
        }
    };

    let (statuses, simulator_saw) = tokio::join!(statuses, simulator_saw);
    let (reconnecting_at, connecting_at) = statuses?;
    let simulator_saw = simulator_saw.context("the simulator saw no new connection after the drop")?;
    result.drop_to_reconnecting_ms = reconnecting_at.map(|at| millis(at - injected));
    result.drop_to_connecting_ms = millis(connecting_at - injected);
    result.drop_to_simulator_connection_ms = millis(simulator_saw - injected);

    monitor.wait_flowing(RECOVERY_TIMEOUT).await.context("the feed did not come back")
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
