//! The JSON protocol between the gateway and its WebSocket clients.
//!
//! Field names follow the Node tick backend this service replaces (`status`, `ready`, `tick`,
//! `error` frames with `symbol: "system"` when no symbol applies), so its clients keep working.
//! New here: the `connecting`, `authenticating`, `stale` and `reconnecting` status values, the
//! `since`/`attempt`/`retryInMs`/`reason` status fields, error `code`s, `subscribeResponse`,
//! `unsubscribeResponse`, `pong`, `heartbeat` and `transition` frames.

use std::fmt::Write as _;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::fsm::StateName;
use crate::protocol::Tick;
use crate::session::{SessionStatus, TransitionRecord};

/// Value of `symbol` on frames that concern the whole feed, as the Node backend sent it.
pub const SYSTEM_SYMBOL: &str = "system";

/// Maximum length of a client's symbol name in bytes, after normalisation.
pub const MAX_SYMBOL_LEN: usize = 32;

/// The stable `code` of an `error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    InvalidMessage,
    InvalidSymbol,
    SymbolNotFound,
    MessageTooLarge,
    TooManySubscriptions,
    SubscriptionFailed,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::InvalidSymbol => "INVALID_SYMBOL",
            ErrorCode::SymbolNotFound => "SYMBOL_NOT_FOUND",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::SubscriptionFailed => "SUBSCRIPTION_FAILED",
        }
    }
}

/// An error to report to one client. The client stays connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    /// Description of the problem, naming the value and the fix.
    pub message: String,
    /// The symbol the error is about, when there is one.
    pub symbol: Option<String>,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), symbol: None }
    }

    pub fn for_symbol(code: ErrorCode, symbol: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), symbol: Some(symbol.into()) }
    }
}

/// A valid request from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Symbols are normalised and deduplicated; malformed ones are in `rejected` instead.
    Subscribe { symbols: Vec<String>, rejected: Vec<ClientError> },
    Unsubscribe { symbols: Vec<String>, rejected: Vec<ClientError> },
    Ping,
}

/// Parses one text message from a client, checking its size against `max_bytes` first.
pub fn parse_client_message(text: &str, max_bytes: usize) -> Result<ClientRequest, ClientError> {
    if text.len() > max_bytes {
        return Err(message_too_large(text.len(), max_bytes));
    }

    let value: Value = serde_json::from_str(text).map_err(|err| {
        ClientError::new(
            ErrorCode::InvalidJson,
            format!("invalid JSON: {err}; send one JSON object per message"),
        )
    })?;

    let Value::Object(object) = value else {
        return Err(ClientError::new(
            ErrorCode::InvalidMessage,
            format!("expected a JSON object with a \"type\" field, got {}", json_kind(&value)),
        ));
    };

    let kind = match object.get("type") {
        None => {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                "missing field \"type\"; expected \"subscribe\", \"unsubscribe\" or \"ping\"",
            ))
        }
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("field \"type\" is {}; expected a string such as \"subscribe\"", json_kind(other)),
            ))
        }
    };

    match kind {
        "subscribe" => {
            let (symbols, rejected) = parse_symbols(kind, &object)?;
            Ok(ClientRequest::Subscribe { symbols, rejected })
        }
        "unsubscribe" => {
            let (symbols, rejected) = parse_symbols(kind, &object)?;
            Ok(ClientRequest::Unsubscribe { symbols, rejected })
        }
        "ping" => Ok(ClientRequest::Ping),
        other => Err(ClientError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {other:?}; expected \"subscribe\", \"unsubscribe\" or \"ping\""),
        )),
    }
}

/// Returns the error for a message of `len` bytes over the `max` limit.
pub fn message_too_large(len: usize, max: usize) -> ClientError {
    ClientError::new(
        ErrorCode::MessageTooLarge,
        format!("message is {len} bytes, over the limit of {max} bytes; send fewer symbols per message"),
    )
}

/// Reads `symbols` (array of strings) and `symbol` (string); at least one must be present.
fn parse_symbols(
    kind: &str,
    object: &serde_json::Map<String, Value>,
) -> Result<(Vec<String>, Vec<ClientError>), ClientError> {
    let mut raw: Vec<&str> = Vec::new();

    match object.get("symbols") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let Value::String(symbol) = item else {
                    return Err(ClientError::new(
                        ErrorCode::InvalidMessage,
                        format!("{kind}: symbols[{index}] is {}; expected a string such as \"EURUSD\"", json_kind(item)),
                    ));
                };
                raw.push(symbol);
            }
        }
        Some(other) => {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("{kind}: field \"symbols\" is {}; expected an array of strings such as [\"EURUSD\"]", json_kind(other)),
            ))
        }
    }

    match object.get("symbol") {
        None | Some(Value::Null) => {}
        Some(Value::String(symbol)) => raw.push(symbol),
        Some(other) => {
            return Err(ClientError::new(
                ErrorCode::InvalidMessage,
                format!("{kind}: field \"symbol\" is {}; expected a string such as \"EURUSD\"", json_kind(other)),
            ))
        }
    }

    if raw.is_empty() {
        return Err(ClientError::new(
            ErrorCode::InvalidMessage,
            format!("{kind} names no symbol; send \"symbols\": [\"EURUSD\"] or \"symbol\": \"EURUSD\""),
        ));
    }

    let mut symbols: Vec<String> = Vec::with_capacity(raw.len());
    let mut rejected = Vec::new();
    for original in raw {
        match normalize_symbol(original) {
            Ok(symbol) if symbols.contains(&symbol) => {}
            Ok(symbol) => symbols.push(symbol),
            Err(error) => rejected.push(error),
        }
    }
    Ok((symbols, rejected))
}

/// Normalises a client's symbol the way the session names them, then checks its characters.
pub fn normalize_symbol(original: &str) -> Result<String, ClientError> {
    let symbol = crate::protocol::symbol_name::normalise(original);

    if symbol.is_empty() {
        return Err(ClientError::for_symbol(
            ErrorCode::InvalidSymbol,
            original,
            format!("invalid symbol {original:?}: it is empty; use a name from availableSymbols, such as \"EURUSD\""),
        ));
    }
    if symbol.len() > MAX_SYMBOL_LEN {
        return Err(ClientError::for_symbol(
            ErrorCode::InvalidSymbol,
            original,
            format!("invalid symbol {original:?}: longer than {MAX_SYMBOL_LEN} bytes; use a name from availableSymbols"),
        ));
    }
    if let Some(bad) = symbol.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ClientError::for_symbol(
            ErrorCode::InvalidSymbol,
            original,
            format!(
                "invalid symbol {original:?}: character {bad:?} is not allowed; use letters, digits, '.', '_' or '-' as in availableSymbols"
            ),
        ));
    }
    Ok(symbol)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client frames

/// Serialises a frame that `serde_json` can always write (string keys, no non-finite floats).
fn to_frame<T: Serialize>(frame: &T) -> Utf8Bytes {
    match serde_json::to_string(frame) {
        Ok(text) => Utf8Bytes::from(text),
        // Unreachable for the frame types below, which hold only strings, integers and arrays.
        Err(err) => Utf8Bytes::from(format!(r#"{{"type":"error","code":"INTERNAL","message":"{err}"}}"#)),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusFrame<'a> {
    r#type: &'static str,
    status: &'static str,
    /// Machine state name, finer than `status`.
    state: StateName,
    since: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// The Node backend's name for the reason; kept for its clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    available_symbols: &'a [String],
    symbol: &'static str,
}

/// Writes a `status` frame for a session snapshot.
pub fn status_frame(status: &SessionStatus) -> Utf8Bytes {
    let reconnecting = status.state == StateName::Backoff;
    to_frame(&StatusFrame {
        r#type: "status",
        status: status.state.client_status(),
        state: status.state,
        since: status.since_ms,
        attempt: reconnecting.then_some(status.attempt),
        retry_in_ms: if reconnecting { status.retry_in_ms } else { None },
        reason: status.reason.as_deref(),
        message: status.reason.as_deref(),
        available_symbols: &status.available_symbols,
        symbol: SYSTEM_SYMBOL,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReadyFrame<'a> {
    r#type: &'static str,
    available_symbols: &'a [String],
    symbol: &'static str,
}

/// Writes a `ready` frame listing the symbols clients may subscribe to.
pub fn ready_frame(symbols: &[String]) -> Utf8Bytes {
    to_frame(&ReadyFrame { r#type: "ready", available_symbols: symbols, symbol: SYSTEM_SYMBOL })
}

/// Writes a `tick` frame. Prices are written as JSON numbers at the symbol's digits, straight
/// from [`Price`](crate::protocol::Price)'s exact `Display`, so 1.08567 stays 1.08567.
pub fn tick_frame(tick: &Tick) -> Utf8Bytes {
    let mut text = String::with_capacity(96 + tick.symbol.len());
    text.push_str(r#"{"type":"tick","source":"ctrader","symbol":"#);
    push_json_string(&mut text, &tick.symbol);
    // Writing into a String cannot fail.
    let _ = write!(text, r#","bid":{},"ask":{},"timestamp":{}}}"#, tick.bid, tick.ask, tick.timestamp_ms());
    Utf8Bytes::from(text)
}

fn push_json_string(out: &mut String, value: &str) {
    match serde_json::to_string(value) {
        Ok(quoted) => out.push_str(&quoted),
        // A &str always serialises; keep the frame valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

/// One machine transition as clients and `GET /api/transitions` see it.
#[derive(Clone, Debug, Serialize)]
pub struct TransitionView {
    pub from: StateName,
    pub to: StateName,
    pub cause: String,
    /// Unix milliseconds.
    pub at: i64,
}

impl From<&TransitionRecord> for TransitionView {
    fn from(record: &TransitionRecord) -> Self {
        Self { from: record.from, to: record.to, cause: record.cause.clone(), at: record.at_ms }
    }
}

#[derive(Serialize)]
struct TransitionFrame<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    transition: &'a TransitionView,
}

/// Writes a `transition` frame.
pub fn transition_frame(transition: &TransitionView) -> Utf8Bytes {
    to_frame(&TransitionFrame { r#type: "transition", transition })
}

#[derive(Serialize)]
struct HeartbeatFrame {
    r#type: &'static str,
    timestamp: i64,
    status: &'static str,
}

/// Writes a `heartbeat` frame with the server time and the current client status.
pub fn heartbeat_frame(now_ms: i64, state: StateName) -> Utf8Bytes {
    to_frame(&HeartbeatFrame { r#type: "heartbeat", timestamp: now_ms, status: state.client_status() })
}

#[derive(Serialize)]
struct PongFrame {
    r#type: &'static str,
    timestamp: i64,
}

/// Writes a `pong` frame with the server time.
pub fn pong_frame(now_ms: i64) -> Utf8Bytes {
    to_frame(&PongFrame { r#type: "pong", timestamp: now_ms })
}

#[derive(Serialize)]
struct SubscriptionFrame<'a> {
    r#type: &'static str,
    /// Symbols this request added or removed.
    symbols: &'a [String],
    /// Every symbol the client is subscribed to after the request.
    subscriptions: &'a [String],
}

/// Writes a `subscribeResponse` frame.
pub fn subscribe_response_frame(accepted: &[String], subscriptions: &[String]) -> Utf8Bytes {
    to_frame(&SubscriptionFrame { r#type: "subscribeResponse", symbols: accepted, subscriptions })
}

/// Writes an `unsubscribeResponse` frame.
pub fn unsubscribe_response_frame(removed: &[String], subscriptions: &[String]) -> Utf8Bytes {
    to_frame(&SubscriptionFrame { r#type: "unsubscribeResponse", symbols: removed, subscriptions })
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    r#type: &'static str,
    code: &'static str,
    message: &'a str,
    symbol: &'a str,
}

/// Writes an `error` frame; `symbol` is `"system"` when the error is about no symbol.
pub fn error_frame(error: &ClientError) -> Utf8Bytes {
    to_frame(&ErrorFrame {
        r#type: "error",
        code: error.code.as_str(),
        message: &error.message,
        symbol: error.symbol.as_deref().unwrap_or(SYSTEM_SYMBOL),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::Price;

    fn parse(text: &str) -> Result<ClientRequest, ClientError> {
        parse_client_message(text, 4096)
    }

    fn code_of(text: &str) -> ErrorCode {
        parse(text).unwrap_err().code
    }

    #[test]
    fn subscribe_accepts_symbols_and_symbol() {
        let request = parse(r#"{"type":"subscribe","symbols":["EURUSD","gbp/usd"],"symbol":"EURUSD"}"#).unwrap();
        assert_eq!(
            request,
            ClientRequest::Subscribe { symbols: vec!["EURUSD".into(), "GBPUSD".into()], rejected: vec![] }
        );
    }

    #[test]
    fn unsubscribe_accepts_single_symbol() {
        let request = parse(r#"{"type":"unsubscribe","symbol":"USDJPY"}"#).unwrap();
        assert_eq!(request, ClientRequest::Unsubscribe { symbols: vec!["USDJPY".into()], rejected: vec![] });
    }

    #[test]
    fn malformed_symbol_is_rejected_alone() {
        let Ok(ClientRequest::Subscribe { symbols, rejected }) =
            parse(r#"{"type":"subscribe","symbols":["EURUSD","EUR USD",""]}"#)
        else {
            panic!("expected a subscribe request");
        };
        assert_eq!(symbols, vec!["EURUSD".to_string()]);
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].code, ErrorCode::InvalidSymbol);
        assert_eq!(rejected[0].symbol.as_deref(), Some("EUR USD"));
        assert!(rejected[0].message.contains("' '"), "{}", rejected[0].message);
    }

    #[test]
    fn bad_messages_get_stable_codes() {
        assert_eq!(code_of("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"symbols":["EURUSD"]}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":7}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"subscribe"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"subscribe","symbols":"EURUSD"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"subscribe","symbols":[1]}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"subscribe","symbol":5}"#), ErrorCode::InvalidMessage);
        assert_eq!(code_of(r#"{"type":"history"}"#), ErrorCode::UnknownType);
        assert_eq!(parse_client_message(&"x".repeat(20), 10).unwrap_err().code, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn unknown_type_message_names_value() {
        let error = parse(r#"{"type":"history"}"#).unwrap_err();
        assert!(error.message.contains("\"history\""), "{}", error.message);
    }

    #[test]
    fn tick_frame_keeps_exact_prices() {
        let tick = Tick {
            symbol: Arc::from("EURUSD"),
            bid: Price::new(108_567, 5),
            ask: Price::new(108_570, 5),
            server_time_ms: Some(1_701_234_567_890),
            received_at_ms: 1_701_234_567_999,
        };
        let frame = tick_frame(&tick);
        assert_eq!(
            frame.as_str(),
            r#"{"type":"tick","source":"ctrader","symbol":"EURUSD","bid":1.08567,"ask":1.08570,"timestamp":1701234567890}"#
        );
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["bid"].as_f64(), Some(1.08567));
    }

    #[test]
    fn error_frame_defaults_symbol_to_system() {
        let frame = error_frame(&ClientError::new(ErrorCode::UnknownType, "bad"));
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(value["symbol"], "system");
        assert_eq!(value["code"], "UNKNOWN_TYPE");
    }

    #[quickcheck_macros::quickcheck]
    fn any_text_parses_or_gets_parse_error(text: String) -> bool {
        match parse(&text) {
            Ok(_) => true,
            Err(error) => {
                let parse_codes = [ErrorCode::InvalidJson, ErrorCode::InvalidMessage, ErrorCode::UnknownType];
                parse_codes.contains(&error.code) && !error.message.is_empty()
            }
        }
    }

    #[quickcheck_macros::quickcheck]
    fn subscribe_symbols_come_out_normalised(names: Vec<String>) -> bool {
        let text = serde_json::json!({ "type": "subscribe", "symbols": names }).to_string();
        match parse_client_message(&text, usize::MAX) {
            // An empty list names no symbol, which is an error of its own.
            Err(error) => names.is_empty() && error.code == ErrorCode::InvalidMessage,
            Ok(ClientRequest::Subscribe { symbols, rejected }) => {
                let normalised_again = symbols.iter().all(|symbol| normalize_symbol(symbol).as_ref() == Ok(symbol));
                let all_rejections_name_symbol =
                    rejected.iter().all(|error| error.code == ErrorCode::InvalidSymbol && error.symbol.is_some());
                normalised_again && all_rejections_name_symbol && symbols.len() + rejected.len() <= names.len()
            }
            Ok(_) => false,
        }
    }

    #[quickcheck_macros::quickcheck]
    fn tick_frame_writes_price_display(bid_raw: u32, ask_raw: u32, digits: u8) -> bool {
        let digits = digits % 6;
        let tick = Tick {
            symbol: Arc::from("EUR\"quoted\""),
            bid: Price::new(u64::from(bid_raw), digits),
            ask: Price::new(u64::from(ask_raw), digits),
            server_time_ms: None,
            received_at_ms: 42,
        };
        let frame = tick_frame(&tick);
        let Ok(value) = serde_json::from_str::<Value>(frame.as_str()) else { return false };
        let bid_text = format!(r#""bid":{},"#, tick.bid);
        let ask_text = format!(r#""ask":{},"#, tick.ask);
        frame.as_str().contains(&bid_text)
            && frame.as_str().contains(&ask_text)
            && value["symbol"] == "EUR\"quoted\""
            && value["timestamp"] == 42
    }

    #[test]
    fn status_frame_shows_backoff_fields() {
        let mut status = SessionStatus::initial();
        status.state = StateName::Backoff;
        status.attempt = 3;
        status.retry_in_ms = Some(4000);
        status.reason = Some("socket closed".into());
        let value: Value = serde_json::from_str(status_frame(&status).as_str()).unwrap();
        assert_eq!(value["status"], "reconnecting");
        assert_eq!(value["attempt"], 3);
        assert_eq!(value["retryInMs"], 4000);
        assert_eq!(value["reason"], "socket closed");

        status.state = StateName::Streaming;
        let value: Value = serde_json::from_str(status_frame(&status).as_str()).unwrap();
        assert_eq!(value["status"], "connected");
        assert!(value.get("attempt").is_none());
    }
}
