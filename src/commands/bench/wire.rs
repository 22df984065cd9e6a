//! The few parts of the gateway's WebSocket protocol that the bench clients speak: the subscribe
//! request, and tick and status frames. Everything else a client receives is counted as other.

use std::borrow::Cow;

use serde::Deserialize;

/// The parts of one JSON frame that a bench client uses.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A tick; `timestamp_ms` is the simulator's send time in Unix milliseconds.
    Tick { timestamp_ms: i64 },
    /// A connection status, as `StateName::client_status` spells it (`connected`, `stale`, ...).
    Status { status: String },
    /// Any other frame (heartbeats, acknowledgements, errors).
    Other,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    timestamp: Option<i64>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
}

/// Returns the request that subscribes a client to `symbols`.
pub fn subscribe_request(symbols: &[String]) -> String {
    serde_json::json!({ "type": "subscribe", "symbols": symbols }).to_string()
}

/// Parses one text frame. A frame that is not JSON, or has no `type`, is an error naming it.
pub fn parse_frame(text: &str) -> Result<Frame, String> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|error| format!("invalid frame {text:?}: {error}"))?;
    match (raw.kind.as_ref(), raw.timestamp, raw.status) {
        ("tick", Some(timestamp_ms), _) => Ok(Frame::Tick { timestamp_ms }),
        ("tick", None, _) => Err(format!("tick frame without a timestamp: {text:?}")),
        ("status", _, Some(status)) => Ok(Frame::Status { status: status.into_owned() }),
        _ => Ok(Frame::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_frame_gives_timestamp() {
        let text = r#"{"type":"tick","symbol":"EURUSD","bid":"1.08567","ask":"1.08573","timestamp":1733340000123}"#;
        assert_eq!(parse_frame(text), Ok(Frame::Tick { timestamp_ms: 1_733_340_000_123 }));
    }

    #[test]
    fn status_frame_gives_status() {
        let text = r#"{"type":"status","status":"reconnecting","attempt":1}"#;
        assert_eq!(parse_frame(text), Ok(Frame::Status { status: "reconnecting".into() }));
    }

    #[test]
    fn unknown_frame_is_other() {
        assert_eq!(parse_frame(r#"{"type":"heartbeat"}"#), Ok(Frame::Other));
    }

    #[test]
    fn garbage_is_error() {
        assert!(parse_frame("not json").is_err());
        assert!(parse_frame(r#"{"type":"tick"}"#).is_err());
    }

    #[test]
    fn subscribe_lists_symbols() {
        let request = subscribe_request(&["EURUSD".into(), "USDJPY".into()]);
        let value: serde_json::Value = serde_json::from_str(&request).unwrap();
        assert_eq!(value["type"], "subscribe");
        assert_eq!(value["symbols"][1], "USDJPY");
    }
}
