//! `tickgate stream`: connects to cTrader (or the simulator) and prints ticks until Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::connection::{upstream, ConnectionArgs, TimingArgs, Upstream};
use super::UsageError;
use crate::protocol::Tick;
use crate::session::{self, SessionConfig, SessionEvent, SessionStatus};
use crate::simulator::SimulatorConfig;

/// Prints live ticks for the given symbols, and a line for each connection state change.
#[derive(clap::Args, Debug)]
pub struct StreamArgs {
    /// Symbols to stream, such as EURUSD USDJPY (also `EUR/USD`; commas separate too).
    #[arg(required = true, value_delimiter = ',')]
    pub symbols: Vec<String>,

    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub timing: TimingArgs,

    /// Record every state machine input and transition to this JSON Lines file.
    #[arg(long, env = "TICKGATE_JOURNAL")]
    pub journal: Option<PathBuf>,
}

/// Streams until Ctrl-C, then unsubscribes, closes the connection and returns. Without cTrader
/// credentials it streams from an embedded simulator.
pub async fn run(args: StreamArgs) -> anyhow::Result<()> {
    let simulator = SimulatorConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..SimulatorConfig::default() };
    let Upstream { mut config, simulator } = upstream(&args.connection, simulator).await?;
    config.fsm = args.timing.fsm_config(config.refresh_token.is_some());
    config.journal = args.journal.clone();

    let stop = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C, streaming until the session stops");
            std::future::pending::<()>().await;
        }
    };
    let result = stream(config, args.symbols, args.json, std::io::stdout(), stop).await;
    if let Some(simulator) = simulator {
        simulator.shutdown().await;
    }
    result
}

/// Runs a session for `symbols` and writes one line per tick, status change and subscription
/// failure to `out` until `stop` resolves or the session ends.
pub async fn stream<W: Write>(
    config: SessionConfig,
    symbols: Vec<String>,
    json: bool,
    mut out: W,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Subscribe to events before the driver starts, so the first state change is printed too.
    let (handle, ends) = session::SessionHandle::channel(config.event_capacity.max(1));
    let mut events = handle.events();
    let prepared = session::driver::prepare(config, ends).map_err(|error| UsageError(format!("{error:#}")))?;
    let task = tokio::spawn(prepared.run());
    handle.subscribe(symbols).await?;

    // A failed write (for example a closed pipe) ends the loop like Ctrl-C does, so the session
    // still shuts down in order before the error is returned.
    let mut write_error = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = events.recv() => match event {
                Ok(event) => {
                    if let Some(line) = format_event(&event, json) {
                        if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                            write_error = Some(error);
                            break;
                        }
                    }
                }
                Err(RecvError::Lagged(skipped)) => tracing::warn!(skipped, "output fell behind; events skipped"),
                Err(RecvError::Closed) => break,
            },
        }
    }

    // The session may already have stopped (for example on an invalid configuration).
    let _ = handle.shutdown().await;
    let result = task.await;
    if let Some(error) = write_error {
        result?;
        return Err(error.into());
    }

    // Print what happened during shutdown, such as the final state change.
    while let Ok(event) = events.try_recv() {
        if let Some(line) = format_event(&event, json) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    result?;
    Ok(())
}

/// Formats an event as one output line; events other than ticks, status and failures print
/// nothing.
fn format_event(event: &SessionEvent, json: bool) -> Option<String> {
    match (event, json) {
        (SessionEvent::Tick(tick), false) => Some(tick_text(tick)),
        (SessionEvent::Tick(tick), true) => Some(
            json!({
                "type": "tick",
                "symbol": &*tick.symbol,
                "bid": tick.bid.to_string(),
                "ask": tick.ask.to_string(),
                "timestamp": tick.timestamp_ms(),
                "serverTime": tick.server_time_ms,
                "receivedAt": tick.received_at_ms,
            })
            .to_string(),
        ),
        (SessionEvent::Status(status), false) => Some(status_text(status)),
        (SessionEvent::Status(status), true) => {
            Some(json!({ "type": "status", "status": status }).to_string())
        }
        (SessionEvent::SubscriptionFailed { symbol, code, message }, false) => {
            Some(format!("subscription failed: {symbol}: {code}: {message}"))
        }
        (SessionEvent::SubscriptionFailed { symbol, code, message }, true) => Some(
            json!({ "type": "subscriptionFailed", "symbol": symbol, "code": code, "message": message }).to_string(),
        ),
        _ => None,
    }
}

fn tick_text(tick: &Tick) -> String {
    let time = chrono::DateTime::from_timestamp_millis(tick.timestamp_ms())
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| tick.timestamp_ms().to_string());
    format!("{time} {} bid {} ask {}", tick.symbol, tick.bid, tick.ask)
}

fn status_text(status: &SessionStatus) -> String {
    let mut line = format!("state {} attempt {}", status.state, status.attempt);
    if let Some(retry_in_ms) = status.retry_in_ms {
        line.push_str(&format!(" retry in {retry_in_ms} ms"));
    }
    if let Some(reason) = &status.reason {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::fsm::StateName;
    use crate::protocol::Price;

    fn tick() -> Tick {
        Tick {
            symbol: Arc::from("EURUSD"),
            bid: Price::new(108_560, 5),
            ask: Price::new(108_570, 5),
            server_time_ms: Some(1_764_878_400_123),
            received_at_ms: 1_764_878_400_200,
        }
    }

    #[test]
    fn tick_text_has_exact_prices_and_server_time() {
        let line = format_event(&SessionEvent::Tick(tick()), false).unwrap();

        assert_eq!(line, "2025-12-04T20:00:00.123Z EURUSD bid 1.08560 ask 1.08570");
    }

    #[test]
    fn tick_json_keeps_prices_as_strings() {
        let line = format_event(&SessionEvent::Tick(tick()), true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();

        assert_eq!(value["type"], "tick");
        assert_eq!(value["bid"], "1.08560");
        assert_eq!(value["ask"], "1.08570");
        assert_eq!(value["timestamp"], 1_764_878_400_123i64);
    }

    #[test]
    fn status_text_shows_retry_and_reason() {
        let mut status = SessionStatus::initial();
        status.state = StateName::Backoff;
        status.attempt = 2;
        status.retry_in_ms = Some(400);
        status.reason = Some("connection reset".into());

        let line = format_event(&SessionEvent::Status(status), false).unwrap();

        assert_eq!(line, "state Backoff attempt 2 retry in 400 ms (connection reset)");
    }
}
