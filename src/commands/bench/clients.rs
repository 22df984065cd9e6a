//! WebSocket clients of the load phase. Each one subscribes to every bench symbol, and the fast
//! ones record the end-to-end latency of every tick they receive inside the measurement window.
//! Slow ones never read until the end, so the gateway has to close them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::wire::{self, Frame};

/// Time one WebSocket connect and handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client waits for the gateway's close reply, or a slow client reads its backlog, at the
/// end of the run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer of a slow client's socket, in bytes. A small one makes the gateway's queue for
/// it fill within seconds instead of after the kernel has buffered megabytes.
const SLOW_CLIENT_RECV_BUFFER: u32 = 4096;

/// Highest latency the histogram holds, in microseconds; larger samples are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// The close code the gateway sends to a client whose queue overflowed.
pub const SLOW_CLIENT_CLOSE_CODE: u16 = 4002;

/// The stage of the run the clients are in; the orchestrator moves it forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected, no subscriptions: the gateway's memory per idle client is measured here.
    Idle,
    /// Subscribed to every bench symbol.
    Subscribed,
    /// Close the connection and report.
    Stop,
}

/// The measurement window in Unix microseconds; `u64::MAX` until the orchestrator sets it.
#[derive(Debug)]
pub struct Window {
    start_us: AtomicU64,
    end_us: AtomicU64,
}

impl Window {
    pub fn new() -> Self {
        Self { start_us: AtomicU64::new(u64::MAX), end_us: AtomicU64::new(u64::MAX) }
    }

    pub fn open(&self, at_us: u64) {
        self.start_us.store(at_us, Ordering::Relaxed);
    }

    pub fn close(&self, at_us: u64) {
        self.end_us.store(at_us, Ordering::Relaxed);
    }

    fn contains(&self, at_us: u64) -> bool {
        self.start_us.load(Ordering::Relaxed) <= at_us && at_us < self.end_us.load(Ordering::Relaxed)
    }
}

/// The way a client's connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEnd {
    /// The client closed it at the end of the run, as planned.
    ClosedByClient,
    /// The gateway sent a close frame with this code.
    ClosedByGateway { code: u16 },
    /// The connection ended without a close frame, or with an error.
    Lost { error: String },
}

/// Measurements of one client.
pub struct ClientOutcome {
    /// Ticks received inside the measurement window.
    pub window_ticks: u64,
    /// Ticks received over the whole run.
    pub total_ticks: u64,
    /// Frames that were not valid JSON of a known shape.
    pub invalid_frames: u64,
    /// Receive time minus the tick's `timestamp`, in microseconds, for window ticks.
    pub latency_us: Histogram<u64>,
    pub end: ClientEnd,
    /// Unix microseconds when the connection ended early (closed by the gateway or lost).
    pub ended_early_at_us: Option<u64>,
}

/// Returns the current Unix time in microseconds.
pub fn unix_now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn new_latency_histogram() -> Histogram<u64> {
    // Three significant digits keep every percentile within 0.1 % of the recorded value.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Opens a WebSocket connection to the gateway from a socket with an optional receive buffer.
pub async fn connect(url: &str, recv_buffer: Option<u32>) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let addr = loopback_addr(url)?;
    let socket = TcpSocket::new_v4().context("cannot create a client socket")?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).context("cannot set the client's receive buffer")?;
    }

    let handshake = async {
        let stream = socket.connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let (ws, _response) = tokio_tungstenite::client_async(url, stream)
            .await
            .with_context(|| format!("WebSocket handshake with {url} failed"))?;
        anyhow::Ok(ws)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => bail!("connecting to {url} timed out after {} s", CONNECT_TIMEOUT.as_secs()),
    }
}

/// Returns the socket address of a `ws://127.0.0.1:PORT/...` URL; anything but loopback is an
/// error, because the bench only ever talks to its own child process.
pub fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("gateway URL {url:?} does not start with ws://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("gateway URL {url:?} has no IP:PORT address"))?;
    if !addr.ip().is_loopback() {
        bail!("gateway URL {url:?} is not on loopback; the bench only connects to 127.0.0.1");
    }
    Ok(addr)
}

/// Runs a client that reads every frame as it arrives.
pub async fn run_fast_client(
    mut ws: WebSocketStream<TcpStream>,
    subscribe: Arc<str>,
    mut phase: watch::Receiver<Phase>,
    window: Arc<Window>,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        window_ticks: 0,
        total_ticks: 0,
        invalid_frames: 0,
        latency_us: new_latency_histogram(),
        end: ClientEnd::ClosedByClient,
        ended_early_at_us: None,
    };

    loop {
        tokio::select! {
            changed = phase.changed() => {
                let next = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Stop };
                match next {
                    Phase::Idle => {}
                    Phase::Subscribed => {
                        if let Err(error) = ws.send(Message::text(subscribe.as_ref())).await {
                            outcome.end = ClientEnd::Lost { error: format!("subscribe failed: {error}") };
                            return outcome;
                        }
                    }
                    Phase::Stop => break,
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => record_text(&text, &window, &mut outcome),
                Some(Ok(Message::Close(frame))) => {
                    outcome.end = ClientEnd::ClosedByGateway { code: frame.map_or(1005, |f| u16::from(f.code)) };
                    outcome.ended_early_at_us = Some(unix_now_us());
                    return outcome;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    outcome.end = ClientEnd::Lost { error: error.to_string() };
                    outcome.ended_early_at_us = Some(unix_now_us());
                    return outcome;
                }
                None => {
                    outcome.end = ClientEnd::Lost { error: "connection ended without a close frame".into() };
                    outcome.ended_early_at_us = Some(unix_now_us());
                    return outcome;
                }
            }
        }
    }

    close(&mut ws).await;
    outcome
}

/// Runs a client that subscribes and then reads nothing until the end of the run, when it reads
/// its backlog to find out whether and how the gateway closed it.
pub async fn run_slow_client(mut ws: WebSocketStream<TcpStream>, subscribe: Arc<str>, mut phase: watch::Receiver<Phase>) -> ClientEnd {
    loop {
        let next = match phase.changed().await {
            Ok(()) => *phase.borrow_and_update(),
            Err(_) => Phase::Stop,
        };
        match next {
            Phase::Idle => {}
            Phase::Subscribed => {
                if let Err(error) = ws.send(Message::text(subscribe.as_ref())).await {
                    return ClientEnd::Lost { error: format!("subscribe failed: {error}") };
                }
            }
            Phase::Stop => break,
        }
    }

    let drain = async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return ClientEnd::ClosedByGateway { code: frame.map_or(1005, |f| u16::from(f.code)) };
                }
                Ok(_) => {}
                Err(error) => return ClientEnd::Lost { error: error.to_string() },
            }
        }
        ClientEnd::Lost { error: "connection ended without a close frame".into() }
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, drain).await {
        Ok(end) => end,
        Err(_) => {
            // Still open with data flowing: the gateway never gave up on this client.
            close(&mut ws).await;
            ClientEnd::ClosedByClient
        }
    }
}

pub fn slow_client_recv_buffer() -> Option<u32> {
    Some(SLOW_CLIENT_RECV_BUFFER)
}

/// Records the ticks of one text frame. The gateway may put several JSON lines in one frame.
fn record_text(text: &str, window: &Window, outcome: &mut ClientOutcome) {
    let received_us = unix_now_us();
    for line in text.split('\n').filter(|line| !line.trim().is_empty()) {
        match wire::parse_frame(line) {
            Ok(Frame::Tick { timestamp_ms }) => {
                outcome.total_ticks += 1;
                if window.contains(received_us) {
                    outcome.window_ticks += 1;
                    let sent_us = u64::try_from(timestamp_ms).unwrap_or(0).saturating_mul(1000);
                    outcome.latency_us.saturating_record(received_us.saturating_sub(sent_us));
                }
            }
            Ok(_) => {}
            Err(error) => {
                if outcome.invalid_frames == 0 {
                    debug!(error = %error, "invalid frame from the gateway");
                }
                outcome.invalid_frames += 1;
            }
        }
    }
}

/// Sends a normal close and waits, bounded, for the gateway's reply.
async fn close(ws: &mut WebSocketStream<TcpStream>) {
    let close = async {
        let _ = ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "bench done".into() })).await;
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addr_accepts_printed_url() {
        assert_eq!(loopback_addr("ws://127.0.0.1:4321/ws").unwrap(), "127.0.0.1:4321".parse().unwrap());
    }

    #[test]
    fn loopback_addr_rejects_other_hosts() {
        assert!(loopback_addr("ws://10.0.0.1:80/ws").is_err());
        assert!(loopback_addr("wss://127.0.0.1:80/ws").is_err());
        assert!(loopback_addr("ws://localhost:80/ws").is_err());
    }

    #[test]
    fn window_counts_only_ticks_inside() {
        let window = Window::new();
        let mut outcome = ClientOutcome {
            window_ticks: 0,
            total_ticks: 0,
            invalid_frames: 0,
            latency_us: new_latency_histogram(),
            end: ClientEnd::ClosedByClient,
            ended_early_at_us: None,
        };
        let now_ms = (unix_now_us() / 1000) as i64;
        let tick = format!(r#"{{"type":"tick","symbol":"EURUSD","timestamp":{now_ms}}}"#);

        record_text(&tick, &window, &mut outcome);
        assert_eq!(outcome.total_ticks, 1);
        assert_eq!(outcome.window_ticks, 0);

        window.open(0);
        record_text(&format!("{tick}\n{tick}\nnot json"), &window, &mut outcome);
        assert_eq!(outcome.total_ticks, 3);
        assert_eq!(outcome.window_ticks, 2);
        assert_eq!(outcome.invalid_frames, 1);
        assert_eq!(outcome.latency_us.len(), 2);
        assert!(outcome.latency_us.max() < 60_000_000);
    }
}
