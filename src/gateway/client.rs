//! One task per WebSocket client: writes its queued frames and reads its requests.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tracing::{debug, trace};

use super::hub::{self, ClientId, Eviction, HubRequest, Outbound};
use super::protocol::{self, ClientError, ClientRequest, ErrorCode};
use super::GatewayState;

/// WebSocket close code for a connection without the required client token.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;

/// WebSocket close code when the server shuts down ("going away", RFC 6455 section 7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// WebSocket close code for a message too big to process (RFC 6455 section 7.4.1).
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// WebSocket close code when the server is at its client limit ("try again later").
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The smallest client queue; the hub queues two frames at registration and needs room for them.
const MIN_QUEUE_CAPACITY: usize = 4;

/// The end of a client loop: a close frame to send, or nothing more to send.
enum Stop {
    /// Close with this code and reason.
    Close { code: u16, reason: String },
    /// The peer closed or the connection failed; nothing more to send.
    Gone,
}

/// Runs one accepted client until it leaves, is closed as slow, or the server shuts down.
/// Maximum number of queued frames written between two flushes, so one busy client still
/// yields to its own requests and to eviction.
const MAX_FRAMES_PER_FLUSH: usize = 64;

pub(crate) async fn run(socket: WebSocket, state: Arc<GatewayState>, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let id = state.next_client_id.fetch_add(1, Ordering::Relaxed);
    state.metrics.clients_accepted.fetch_add(1, Ordering::Relaxed);
    state.metrics.clients.fetch_add(1, Ordering::Relaxed);
    debug!(client = id, %peer, "client connected");

    let (sink, mut stream) = socket.split();
    let capacity = state.config.client_queue_capacity.max(MIN_QUEUE_CAPACITY);
    let (queue_tx, queue_rx) = mpsc::channel(capacity);
    let (evict_tx, evict_rx) = oneshot::channel();
    let mut connection = Connection {
        id,
        state: state.clone(),
        sink,
        queue: queue_rx,
        evict: Some(evict_rx),
        shutdown: state.shutdown.clone(),
    };

    let registered = state.hub.send(HubRequest::Register { id, queue: queue_tx, evict: evict_tx }).await.is_ok();
    let stop = if registered {
        connection.serve(&mut stream).await
    } else {
        Stop::Close { code: CLOSE_GOING_AWAY, reason: "server is shutting down".into() }
    };

    // Deregister before the close handshake so the hub stops queueing and can unsubscribe
    // upstream at once.
    let _ = state.hub.send(HubRequest::Deregister { id }).await;
    if let Stop::Close { code, reason } = stop {
        debug!(client = id, code, %reason, "closing client");
        connection.close(code, reason).await;
        drain_until_closed(&mut stream, state.config.close_timeout).await;
    }

    state.metrics.clients.fetch_sub(1, Ordering::Relaxed);
    debug!(client = id, "client disconnected");
    drop(permit);
}

/// Closes a client right after the upgrade, before it gets any other frame.
pub(crate) async fn reject(socket: WebSocket, code: u16, reason: String, close_timeout: Duration) {
    let (mut sink, mut stream) = socket.split();
    close_sink(&mut sink, code, reason, close_timeout).await;
    drain_until_closed(&mut stream, close_timeout).await;
}

/// The first of the things a client loop waits on.
enum Next {
    Evicted(Eviction),
    ShuttingDown,
    Outbound(Option<Outbound>),
    Incoming(Option<Result<Message, axum::Error>>),
}

struct Connection {
    id: ClientId,
    state: Arc<GatewayState>,
    sink: SplitSink<WebSocket, Message>,
    queue: mpsc::Receiver<Outbound>,
    evict: Option<oneshot::Receiver<Eviction>>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>) -> Stop {
        loop {
            // Unbiased on purpose: with a steady tick stream the queue is always ready, and a
            // fixed order would starve the client's own requests.
            let next = tokio::select! {
                eviction = evicted(&mut self.evict) => Next::Evicted(eviction),
                () = hub::stopped(&mut self.shutdown) => Next::ShuttingDown,
                outbound = self.queue.recv() => Next::Outbound(outbound),
                incoming = stream.next() => Next::Incoming(incoming),
            };

            let result = match next {
                Next::Evicted(eviction) => Err(Stop::Close { code: eviction.code, reason: eviction.reason }),
                Next::ShuttingDown => Err(going_away()),
                // The hub dropped the queue: either it evicted this client, sending the order
                // first, or it stopped.
                Next::Outbound(None) => match self.evict.as_mut().map(oneshot::Receiver::try_recv) {
                    Some(Ok(eviction)) => Err(Stop::Close { code: eviction.code, reason: eviction.reason }),
                    _ => Err(going_away()),
                },
                Next::Outbound(Some(outbound)) => self.write_queued(outbound).await,
                Next::Incoming(Some(Ok(message))) => self.handle_message(message).await,
                Next::Incoming(Some(Err(err))) => Err(self.read_failed(&err)),
                Next::Incoming(None) => Err(Stop::Gone),
            };
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    /// Chooses how to end after a read error. A message over the transport limit gets close
    /// 1009 so the client learns why; other errors leave nothing to send.
    fn read_failed(&self, err: &axum::Error) -> Stop {
        // axum does not expose the tungstenite error type, so the capacity error is recognised
        // by its text ("Space limit exceeded: Message too long: N > MAX" in tungstenite 0.29).
        // If the text changes, the client is dropped without a close frame, as for other errors.
        if err.to_string().starts_with("Space limit exceeded") {
            debug!(client = self.id, error = %err, "client message over the transport limit");
            let limit = self.state.config.max_transport_message_bytes;
            let reason = format!("message over the limit of {limit} bytes; send smaller messages");
            return Stop::Close { code: CLOSE_MESSAGE_TOO_BIG, reason };
        }
        debug!(client = self.id, error = %err, "client connection failed");
        Stop::Gone
    }

    /// Writes `first` and whatever else is already queued, then flushes once. A client
    /// subscribed to many symbols gets ticks in bursts, so one flush per burst instead of one
    /// per frame saves a write call per tick and most of the gateway's CPU time.
    async fn write_queued(&mut self, first: Outbound) -> Result<(), Stop> {
        let mut pending_ticks = Vec::new();
        self.feed_outbound(first, &mut pending_ticks).await?;
        for _ in 1..MAX_FRAMES_PER_FLUSH {
            match self.queue.try_recv() {
                Ok(next) => self.feed_outbound(next, &mut pending_ticks).await?,
                Err(_) => break,
            }
        }
        self.flush().await?;

        // Count ticks once they are flushed to the socket, so the latency covers the write.
        let now = hub::now_ms();
        for timestamp_ms in pending_ticks {
            self.state.metrics.ticks_sent.fetch_add(1, Ordering::Relaxed);
            self.state.metrics.record_tick_latency(now - timestamp_ms);
        }
        Ok(())
    }

    async fn feed_outbound(&mut self, outbound: Outbound, pending_ticks: &mut Vec<i64>) -> Result<(), Stop> {
        match outbound {
            Outbound::Frame(frame) => self.feed(frame).await,
            Outbound::Tick { frame, timestamp_ms } => {
                self.feed(frame).await?;
                pending_ticks.push(timestamp_ms);
                Ok(())
            }
        }
    }

    async fn handle_message(&mut self, message: Message) -> Result<(), Stop> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(bytes) => {
                let error = ClientError::new(
                    ErrorCode::InvalidMessage,
                    format!("binary frame of {} bytes is not supported; send JSON in a text frame", bytes.len()),
                );
                return self.write_error(&error).await;
            }
            // The WebSocket layer replies to pings itself, and a close frame is followed by the end of the stream.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };

        trace!(client = self.id, bytes = text.len(), "client message");
        let request = match protocol::parse_client_message(&text, self.state.config.max_message_bytes) {
            Ok(request) => request,
            Err(error) => return self.write_error(&error).await,
        };

        match request {
            ClientRequest::Ping => self.write(protocol::pong_frame(hub::now_ms())).await,
            ClientRequest::Subscribe { symbols, rejected } => {
                for error in &rejected {
                    self.write_error(error).await?;
                }
                let limit = self.state.config.max_subscriptions_per_client;
                if symbols.len() > limit {
                    let error = ClientError::new(
                        ErrorCode::TooManySubscriptions,
                        format!("subscribe lists {} symbols, over the limit of {limit} per connection; send fewer symbols", symbols.len()),
                    );
                    return self.write_error(&error).await;
                }
                self.send_to_hub(HubRequest::Subscribe { id: self.id, symbols }).await
            }
            ClientRequest::Unsubscribe { symbols, rejected } => {
                for error in &rejected {
                    self.write_error(error).await?;
                }
                self.send_to_hub(HubRequest::Unsubscribe { id: self.id, symbols }).await
            }
        }
    }

    async fn send_to_hub(&mut self, request: HubRequest) -> Result<(), Stop> {
        self.state.hub.send(request).await.map_err(|_| going_away())
    }

    async fn write_error(&mut self, error: &ClientError) -> Result<(), Stop> {
        self.state.metrics.record_client_error(error.code);
        debug!(client = self.id, code = error.code.as_str(), message = %error.message, "client request rejected");
        self.write(protocol::error_frame(error)).await
    }

    /// Writes one text frame and flushes it.
    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), Stop> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Queues one text frame in the socket's write buffer without flushing it. Like
    /// [`Connection::flush`], it gives up when the hub evicts the client or the server shuts
    /// down first, so a stalled peer cannot block the task.
    async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), Stop> {
        tokio::select! {
            biased;

            eviction = evicted(&mut self.evict) => Err(Stop::Close { code: eviction.code, reason: eviction.reason }),

            () = hub::stopped(&mut self.shutdown) => Err(going_away()),

            result = self.sink.feed(Message::Text(frame)) => result.map_err(|err| {
                debug!(client = self.id, error = %err, "write to client failed");
                Stop::Gone
            }),
        }
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        tokio::select! {
            biased;

            eviction = evicted(&mut self.evict) => Err(Stop::Close { code: eviction.code, reason: eviction.reason }),

            () = hub::stopped(&mut self.shutdown) => Err(going_away()),

            result = self.sink.flush() => result.map_err(|err| {
                debug!(client = self.id, error = %err, "write to client failed");
                Stop::Gone
            }),
        }
    }

    async fn close(&mut self, code: u16, reason: String) {
        close_sink(&mut self.sink, code, reason, self.state.config.close_timeout).await;
    }
}

/// Waits for the hub's eviction notice; pends forever once the hub dropped the sender.
async fn evicted(slot: &mut Option<oneshot::Receiver<Eviction>>) -> Eviction {
    if let Some(receiver) = slot.as_mut() {
        match receiver.await {
            Ok(eviction) => return eviction,
            Err(_) => *slot = None,
        }
    }
    std::future::pending().await
}

fn going_away() -> Stop {
    Stop::Close { code: CLOSE_GOING_AWAY, reason: "server is shutting down".into() }
}

/// Sends a close frame, giving up after `timeout` when the peer does not read.
async fn close_sink(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: String, timeout: Duration) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(truncate_reason(reason)) };
    match tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(error = %err, code, "close frame not sent"),
        Err(_) => debug!(code, "close frame timed out: peer not reading"),
    }
}

/// Reads until the peer replies to the close, so its side ends with a clean close, not a reset.
async fn drain_until_closed(stream: &mut SplitStream<WebSocket>, timeout: Duration) {
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// Cuts a close reason to the 123 bytes a close frame can carry, at a character boundary.
fn truncate_reason(mut reason: String) -> String {
    const MAX_REASON_BYTES: usize = 123;
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
