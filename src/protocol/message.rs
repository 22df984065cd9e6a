//! Typed cTrader messages: the payload of a [`pb::ProtoMessage`] decoded by its payload type.

use prost::Message as _;

use super::pb;
use super::pb::ProtoOaPayloadType as Oa;
use super::pb::ProtoPayloadType as Common;

/// A payload that does not decode as the message its payload type announces.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("invalid {name} payload (payload type {payload_type}): {source}")]
    InvalidPayload {
        payload_type: u32,
        name: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// Declares [`Message`] and its conversions from one table, so the payload type, the protocol
/// name and the inner type of each variant are written once.
macro_rules! messages {
    (
        units { $( $unit:ident = $unit_code:expr, $unit_name:literal, $unit_ty:ty; )* }
        payloads { $( $variant:ident = $code:expr, $name:literal, $ty:ty; )* }
    ) => {
        /// One cTrader message, with the inner protobuf type of its payload.
        ///
        /// Messages without fields are unit variants; their payload is still checked on decode.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Message {
            $( $unit, )*
            $( $variant($ty), )*
            /// A payload type this crate does not model. Callers skip it.
            Unknown { payload_type: u32 },
        }

        impl Message {
            /// Returns the payload type number that goes into `ProtoMessage.payloadType`.
            pub fn payload_type(&self) -> u32 {
                match self {
                    $( Message::$unit => $unit_code as u32, )*
                    $( Message::$variant(_) => $code as u32, )*
                    Message::Unknown { payload_type } => *payload_type,
                }
            }

            /// Returns the protocol's name for the message, such as `ProtoOASpotEvent`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Message::$unit => $unit_name, )*
                    $( Message::$variant(_) => $name, )*
                    Message::Unknown { .. } => "Unknown",
                }
            }

            /// Decodes the payload of `frame` according to its payload type.
            ///
            /// An unknown payload type gives [`Message::Unknown`]; a payload that is not valid
            /// for a known type gives an error naming that type.
            pub fn decode(frame: &pb::ProtoMessage) -> Result<Message, MessageError> {
                let payload = frame.payload.as_deref().unwrap_or_default();
                let payload_type = frame.payload_type;
                $(
                    if payload_type == $unit_code as u32 {
                        <$unit_ty>::decode(payload).map_err(|source| MessageError::InvalidPayload {
                            payload_type,
                            name: $unit_name,
                            source,
                        })?;
                        return Ok(Message::$unit);
                    }
                )*
                $(
                    if payload_type == $code as u32 {
                        let inner = <$ty>::decode(payload).map_err(|source| MessageError::InvalidPayload {
                            payload_type,
                            name: $name,
                            source,
                        })?;
                        return Ok(Message::$variant(inner));
                    }
                )*
                Ok(Message::Unknown { payload_type })
            }

            /// Wraps the message in an envelope. `client_msg_id` correlates a response with its
            /// request; pushed events and heartbeats go without one.
            pub fn encode(&self, client_msg_id: Option<String>) -> pb::ProtoMessage {
                let payload = match self {
                    $( Message::$unit => <$unit_ty>::default().encode_to_vec(), )*
                    $( Message::$variant(inner) => inner.encode_to_vec(), )*
                    Message::Unknown { .. } => Vec::new(),
                };
                pb::ProtoMessage {
                    payload_type: self.payload_type(),
                    payload: Some(payload),
                    client_msg_id,
                }
            }
        }
    };
}

messages! {
    units {
        Heartbeat = Common::HeartbeatEvent, "ProtoHeartbeatEvent", pb::ProtoHeartbeatEvent;
        ApplicationAuthRes = Oa::ProtoOaApplicationAuthRes, "ProtoOAApplicationAuthRes", pb::ProtoOaApplicationAuthRes;
        VersionReq = Oa::ProtoOaVersionReq, "ProtoOAVersionReq", pb::ProtoOaVersionReq;
    }
    payloads {
        ErrorRes = Common::ErrorRes, "ProtoErrorRes", pb::ProtoErrorRes;
        OaErrorRes = Oa::ProtoOaErrorRes, "ProtoOAErrorRes", pb::ProtoOaErrorRes;
        ApplicationAuthReq = Oa::ProtoOaApplicationAuthReq, "ProtoOAApplicationAuthReq", pb::ProtoOaApplicationAuthReq;
        AccountAuthReq = Oa::ProtoOaAccountAuthReq, "ProtoOAAccountAuthReq", pb::ProtoOaAccountAuthReq;
        AccountAuthRes = Oa::ProtoOaAccountAuthRes, "ProtoOAAccountAuthRes", pb::ProtoOaAccountAuthRes;
        VersionRes = Oa::ProtoOaVersionRes, "ProtoOAVersionRes", pb::ProtoOaVersionRes;
        GetAccountListReq = Oa::ProtoOaGetAccountsByAccessTokenReq, "ProtoOAGetAccountListByAccessTokenReq", pb::ProtoOaGetAccountListByAccessTokenReq;
        GetAccountListRes = Oa::ProtoOaGetAccountsByAccessTokenRes, "ProtoOAGetAccountListByAccessTokenRes", pb::ProtoOaGetAccountListByAccessTokenRes;
        RefreshTokenReq = Oa::ProtoOaRefreshTokenReq, "ProtoOARefreshTokenReq", pb::ProtoOaRefreshTokenReq;
        RefreshTokenRes = Oa::ProtoOaRefreshTokenRes, "ProtoOARefreshTokenRes", pb::ProtoOaRefreshTokenRes;
        SymbolsListReq = Oa::ProtoOaSymbolsListReq, "ProtoOASymbolsListReq", pb::ProtoOaSymbolsListReq;
        SymbolsListRes = Oa::ProtoOaSymbolsListRes, "ProtoOASymbolsListRes", pb::ProtoOaSymbolsListRes;
        SymbolByIdReq = Oa::ProtoOaSymbolByIdReq, "ProtoOASymbolByIdReq", pb::ProtoOaSymbolByIdReq;
        SymbolByIdRes = Oa::ProtoOaSymbolByIdRes, "ProtoOASymbolByIdRes", pb::ProtoOaSymbolByIdRes;
        SymbolChangedEvent = Oa::ProtoOaSymbolChangedEvent, "ProtoOASymbolChangedEvent", pb::ProtoOaSymbolChangedEvent;
        SubscribeSpotsReq = Oa::ProtoOaSubscribeSpotsReq, "ProtoOASubscribeSpotsReq", pb::ProtoOaSubscribeSpotsReq;
        SubscribeSpotsRes = Oa::ProtoOaSubscribeSpotsRes, "ProtoOASubscribeSpotsRes", pb::ProtoOaSubscribeSpotsRes;
        UnsubscribeSpotsReq = Oa::ProtoOaUnsubscribeSpotsReq, "ProtoOAUnsubscribeSpotsReq", pb::ProtoOaUnsubscribeSpotsReq;
        UnsubscribeSpotsRes = Oa::ProtoOaUnsubscribeSpotsRes, "ProtoOAUnsubscribeSpotsRes", pb::ProtoOaUnsubscribeSpotsRes;
        SpotEvent = Oa::ProtoOaSpotEvent, "ProtoOASpotEvent", pb::ProtoOaSpotEvent;
        SubscribeLiveTrendbarReq = Oa::ProtoOaSubscribeLiveTrendbarReq, "ProtoOASubscribeLiveTrendbarReq", pb::ProtoOaSubscribeLiveTrendbarReq;
        SubscribeLiveTrendbarRes = Oa::ProtoOaSubscribeLiveTrendbarRes, "ProtoOASubscribeLiveTrendbarRes", pb::ProtoOaSubscribeLiveTrendbarRes;
        UnsubscribeLiveTrendbarReq = Oa::ProtoOaUnsubscribeLiveTrendbarReq, "ProtoOAUnsubscribeLiveTrendbarReq", pb::ProtoOaUnsubscribeLiveTrendbarReq;
        UnsubscribeLiveTrendbarRes = Oa::ProtoOaUnsubscribeLiveTrendbarRes, "ProtoOAUnsubscribeLiveTrendbarRes", pb::ProtoOaUnsubscribeLiveTrendbarRes;
        GetTrendbarsReq = Oa::ProtoOaGetTrendbarsReq, "ProtoOAGetTrendbarsReq", pb::ProtoOaGetTrendbarsReq;
        GetTrendbarsRes = Oa::ProtoOaGetTrendbarsRes, "ProtoOAGetTrendbarsRes", pb::ProtoOaGetTrendbarsRes;
        GetTickDataReq = Oa::ProtoOaGetTickdataReq, "ProtoOAGetTickDataReq", pb::ProtoOaGetTickDataReq;
        GetTickDataRes = Oa::ProtoOaGetTickdataRes, "ProtoOAGetTickDataRes", pb::ProtoOaGetTickDataRes;
        ClientDisconnectEvent = Oa::ProtoOaClientDisconnectEvent, "ProtoOAClientDisconnectEvent", pb::ProtoOaClientDisconnectEvent;
        AccountsTokenInvalidatedEvent = Oa::ProtoOaAccountsTokenInvalidatedEvent, "ProtoOAAccountsTokenInvalidatedEvent", pb::ProtoOaAccountsTokenInvalidatedEvent;
        AccountDisconnectEvent = Oa::ProtoOaAccountDisconnectEvent, "ProtoOAAccountDisconnectEvent", pb::ProtoOaAccountDisconnectEvent;
    }
}

/// Returns the protocol name for a payload type number, or `None` when this crate does not model it.
pub fn payload_type_name(payload_type: u32) -> Option<&'static str> {
    let probe = pb::ProtoMessage { payload_type, payload: None, client_msg_id: None };
    match Message::decode(&probe) {
        Ok(Message::Unknown { .. }) | Err(_) => None,
        Ok(message) => Some(message.name()),
    }
}
