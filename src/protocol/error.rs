//! Errors that cTrader reports in-band, as `ProtoErrorRes` (50) or `ProtoOAErrorRes` (2142).
//!
//! The error code travels as a string holding an enum name such as `ALREADY_SUBSCRIBED`, so
//! codes are matched as strings and unknown ones are kept as they came.

use std::fmt;

use super::message::Message;
use super::pb;

/// An error response from the server, from either of the two error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The enum name, such as `CH_ACCESS_TOKEN_INVALID`.
    pub code: String,
    /// The server's description, or an empty string when it sent none.
    pub description: String,
    /// Seconds until a `BLOCKED_PAYLOAD_TYPE` block lifts.
    pub retry_after_s: Option<u64>,
    /// End of a maintenance window in Unix milliseconds.
    pub maintenance_end: Option<i64>,
}

impl ApiError {
    pub fn new(code: impl Into<String>, description: impl Into<String>) -> Self {
        Self { code: code.into(), description: description.into(), retry_after_s: None, maintenance_end: None }
    }

    /// Extracts the error from a message, or returns `None` for any other message.
    pub fn from_message(message: &Message) -> Option<ApiError> {
        match message {
            Message::ErrorRes(error) => Some(ApiError::from(error)),
            Message::OaErrorRes(error) => Some(ApiError::from(error)),
            _ => None,
        }
    }

    /// Returns true for an expired or invalid access token; the fix is a refresh and a new
    /// account auth. cTrader reports expiry as `CH_ACCESS_TOKEN_INVALID` with the description
    /// "Access token expired", and the protocol also defines `OA_AUTH_TOKEN_EXPIRED`.
    pub fn is_token_expired(&self) -> bool {
        matches!(self.code.as_str(), "CH_ACCESS_TOKEN_INVALID" | "OA_AUTH_TOKEN_EXPIRED")
    }

    /// Returns true when the request was rejected by a rate limit and may be retried later.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self.code.as_str(), "REQUEST_FREQUENCY_EXCEEDED" | "BLOCKED_PAYLOAD_TYPE")
    }

    /// Returns true when the symbol was already subscribed on this connection, which callers
    /// treat as success.
    pub fn is_already_subscribed(&self) -> bool {
        self.code == "ALREADY_SUBSCRIBED"
    }

    /// Returns true when the server does not know the symbol id.
    pub fn is_unknown_symbol(&self) -> bool {
        matches!(self.code.as_str(), "SYMBOL_NOT_FOUND" | "UNKNOWN_SYMBOL")
    }
}

impl From<&pb::ProtoErrorRes> for ApiError {
    fn from(error: &pb::ProtoErrorRes) -> Self {
        Self {
            code: error.error_code.clone(),
            description: error.description.clone().unwrap_or_default(),
            retry_after_s: None,
            // ProtoErrorRes states this timestamp in Unix milliseconds.
            maintenance_end: error.maintenance_end_timestamp.and_then(|ms| i64::try_from(ms).ok()),
        }
    }
}

impl From<&pb::ProtoOaErrorRes> for ApiError {
    fn from(error: &pb::ProtoOaErrorRes) -> Self {
        Self {
            code: error.error_code.clone(),
            description: error.description.clone().unwrap_or_default(),
            retry_after_s: error.retry_after,
            // NOTE: the proto comment gives Unix seconds here but milliseconds in ProtoErrorRes,
            // and no live capture confirms either; this converts seconds to milliseconds.
            maintenance_end: error.maintenance_end_timestamp.map(|s| s.saturating_mul(1000)),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.description.is_empty() {
            write!(f, "cTrader error {}", self.code)
        } else {
            write!(f, "cTrader error {}: {}", self.code, self.description)
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_from_oa_error_res() {
        let res = pb::ProtoOaErrorRes {
            error_code: "REQUEST_FREQUENCY_EXCEEDED".into(),
            description: Some("You have reached the rate limit of requests".into()),
            retry_after: Some(3),
            maintenance_end_timestamp: Some(1_700_000_000),
            ..Default::default()
        };
        let error = ApiError::from_message(&Message::OaErrorRes(res)).expect("an error message");
        assert!(error.is_rate_limited());
        assert!(!error.is_token_expired());
        assert_eq!(error.retry_after_s, Some(3));
        assert_eq!(error.maintenance_end, Some(1_700_000_000_000));
        assert_eq!(error.to_string(), "cTrader error REQUEST_FREQUENCY_EXCEEDED: You have reached the rate limit of requests");
    }

    #[test]
    fn api_error_from_common_error_res() {
        let res = pb::ProtoErrorRes { error_code: "ALREADY_SUBSCRIBED".into(), ..Default::default() };
        let error = ApiError::from_message(&Message::ErrorRes(res)).expect("an error message");
        assert!(error.is_already_subscribed());
        assert_eq!(error.to_string(), "cTrader error ALREADY_SUBSCRIBED");
    }

    #[test]
    fn api_error_predicates() {
        assert!(ApiError::new("CH_ACCESS_TOKEN_INVALID", "Access token expired").is_token_expired());
        assert!(ApiError::new("OA_AUTH_TOKEN_EXPIRED", "").is_token_expired());
        assert!(ApiError::new("BLOCKED_PAYLOAD_TYPE", "").is_rate_limited());
        assert!(ApiError::new("SYMBOL_NOT_FOUND", "").is_unknown_symbol());
        assert!(ApiError::new("UNKNOWN_SYMBOL", "").is_unknown_symbol());
        assert!(!ApiError::new("SOMETHING_NEW", "").is_unknown_symbol());
        assert!(ApiError::from_message(&Message::Heartbeat).is_none());
    }
}
