//! Client-side helpers for the end-to-end tests: a WebSocket client that reads JSON frames with
//! deadlines, a hand-written HTTP/1.1 client, and a Prometheus text reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything that should happen within a second or two on an idle machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// Connects a WebSocket client, failing the test after [`WAIT`].
pub async fn connect(url: &str) -> Client {
    let (client, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|_| panic!("timed out connecting to {url}"))
        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
    client
}

/// Reads the next text frame as raw text, skipping pings and pongs, before `deadline`.
pub async fn next_text_before(client: &mut Client, deadline: Instant, expected: &str) -> String {
    loop {
        let message = match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => panic!("timed out waiting for {expected}"),
            Ok(None) => panic!("connection ended while waiting for {expected}"),
            Ok(Some(Err(err))) => panic!("connection failed while waiting for {expected}: {err}"),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame while waiting for {expected}, got {other:?}"),
        }
    }
}

/// Reads frames until one satisfies `matches`, skipping the others, and returns it with its raw
/// text. Fails the test when none arrives within [`WAIT`], so a steady stream of other frames
/// (ticks, heartbeats) cannot keep it waiting forever.
pub async fn wait_frame(client: &mut Client, expected: &str, mut matches: impl FnMut(&Value) -> bool) -> (Value, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = next_text_before(client, deadline, expected).await;
        let frame: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("frame is not JSON ({err}): {text}"));
        if matches(&frame) {
            return (frame, text);
        }
    }
}

/// Waits for the next frame of type `kind`.
pub async fn frame_of_type(client: &mut Client, kind: &str) -> Value {
    wait_frame(client, &format!("a {kind} frame"), |frame| frame["type"] == kind).await.0
}

/// Waits for a `status` frame whose `status` is `status`.
pub async fn status_frame(client: &mut Client, status: &str) -> Value {
    wait_frame(client, &format!("status {status:?}"), |frame| frame["type"] == "status" && frame["status"] == status)
        .await
        .0
}

/// Waits for a tick of `symbol` and returns it with its raw text.
pub async fn tick_of(client: &mut Client, symbol: &str) -> (Value, String) {
    wait_frame(client, &format!("a {symbol} tick"), |frame| frame["type"] == "tick" && frame["symbol"] == symbol).await
}

pub async fn send_text(client: &mut Client, text: &str) {
    tokio::time::timeout(WAIT, client.send(Message::text(text.to_string())))
        .await
        .expect("timed out sending a frame")
        .expect("sending a frame failed");
}

/// Subscribes and returns the `subscribeResponse`.
pub async fn subscribe(client: &mut Client, symbols: &[&str]) -> Value {
    let request = serde_json::json!({ "type": "subscribe", "symbols": symbols }).to_string();
    send_text(client, &request).await;
    frame_of_type(client, "subscribeResponse").await
}

/// Unsubscribes and returns the `unsubscribeResponse`.
pub async fn unsubscribe(client: &mut Client, symbols: &[&str]) -> Value {
    let request = serde_json::json!({ "type": "unsubscribe", "symbols": symbols }).to_string();
    send_text(client, &request).await;
    frame_of_type(client, "unsubscribeResponse").await
}

/// Reads frames until the close frame and returns its code and reason.
pub async fn close_code(client: &mut Client) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await.expect("timed out waiting for a close frame") {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("connection failed before the close frame: {err}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// Counts the decimals of the JSON number written after `"field":` in a raw frame.
pub fn decimals_of(text: &str, field: &str) -> usize {
    let key = format!("\"{field}\":");
    let start = text.find(&key).unwrap_or_else(|| panic!("no {field} in {text}")) + key.len();
    let number: String = text[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-').collect();
    number.split_once('.').map_or(0, |(_, fraction)| fraction.len())
}

/// A parsed HTTP response.
pub struct HttpResponse {
    pub code: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole response.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
        let body = body.unwrap_or("");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).await.unwrap();

        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {addr} timed out"));

    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response has no header end");
    let code: u16 = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status line has a code");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    HttpResponse { code, head: head.to_string(), body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size is hex");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Returns the value of one sample, such as `tickgate_clients` or `x_total{code="A"}`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `condition` every 20 ms until it is true, failing the test after [`WAIT`] with `expected`.
pub async fn eventually(expected: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
