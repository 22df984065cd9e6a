//! Properties of the frame codec and the typed messages: split input, round trips, and
//! garbage, truncated or oversized input.

use bytes::{BufMut, BytesMut};
use quickcheck::{Arbitrary, Gen, TestResult};
use quickcheck_macros::quickcheck;
use tokio_util::codec::{Decoder, Encoder};

use tickgate::protocol::pb;
use tickgate::protocol::{FrameCodec, FrameError, Message, MessageError};

/// Number of distinct message shapes that [`AnyMessage`] builds.
const SHAPES: u32 = 35;

#[derive(Clone, Debug)]
struct AnyMessage(Message);

fn text(g: &mut Gen) -> String {
    String::arbitrary(g)
}

fn ids(g: &mut Gen) -> Vec<i64> {
    Vec::<i64>::arbitrary(g)
}

fn trendbar(g: &mut Gen) -> pb::ProtoOaTrendbar {
    pb::ProtoOaTrendbar {
        volume: i64::arbitrary(g),
        period: Option::<u8>::arbitrary(g).map(|p| i32::from(p % 14) + 1),
        low: Option::arbitrary(g),
        delta_open: Option::arbitrary(g),
        delta_close: Option::arbitrary(g),
        delta_high: Option::arbitrary(g),
        utc_timestamp_in_minutes: Option::arbitrary(g),
    }
}

fn shape(g: &mut Gen, index: u32) -> Message {
    let account = i64::arbitrary(g);
    match index {
        0 => Message::Heartbeat,
        1 => Message::ErrorRes(pb::ProtoErrorRes {
            payload_type: None,
            error_code: text(g),
            description: Option::<String>::arbitrary(g),
            maintenance_end_timestamp: Option::arbitrary(g),
        }),
        2 => Message::OaErrorRes(pb::ProtoOaErrorRes {
            ctid_trader_account_id: Option::arbitrary(g),
            error_code: text(g),
            description: Option::<String>::arbitrary(g),
            maintenance_end_timestamp: Option::arbitrary(g),
            retry_after: Option::arbitrary(g),
            ..Default::default()
        }),
        3 => Message::ApplicationAuthReq(pb::ProtoOaApplicationAuthReq {
            client_id: text(g),
            client_secret: text(g),
            ..Default::default()
        }),
        4 => Message::ApplicationAuthRes,
        5 => Message::AccountAuthReq(pb::ProtoOaAccountAuthReq {
            ctid_trader_account_id: account,
            access_token: text(g),
            ..Default::default()
        }),
        6 => Message::AccountAuthRes(pb::ProtoOaAccountAuthRes { ctid_trader_account_id: account, ..Default::default() }),
        7 => Message::VersionReq,
        8 => Message::VersionRes(pb::ProtoOaVersionRes { version: text(g), ..Default::default() }),
        9 => Message::GetAccountListReq(pb::ProtoOaGetAccountListByAccessTokenReq { access_token: text(g), ..Default::default() }),
        10 => Message::GetAccountListRes(pb::ProtoOaGetAccountListByAccessTokenRes {
            access_token: text(g),
            permission_scope: Some(i32::from(bool::arbitrary(g))),
            ctid_trader_account: vec![pb::ProtoOaCtidTraderAccount {
                ctid_trader_account_id: u64::arbitrary(g),
                is_live: Option::arbitrary(g),
                trader_login: Option::arbitrary(g),
                last_closing_deal_timestamp: None,
                last_balance_update_timestamp: None,
                broker_title_short: Option::<String>::arbitrary(g),
            }],
            ..Default::default()
        }),
        11 => Message::RefreshTokenReq(pb::ProtoOaRefreshTokenReq { refresh_token: text(g), ..Default::default() }),
        12 => Message::RefreshTokenRes(pb::ProtoOaRefreshTokenRes {
            access_token: text(g),
            token_type: "bearer".into(),
            expires_in: i64::arbitrary(g),
            refresh_token: text(g),
            ..Default::default()
        }),
        13 => Message::SymbolsListReq(pb::ProtoOaSymbolsListReq {
            ctid_trader_account_id: account,
            include_archived_symbols: Option::arbitrary(g),
            ..Default::default()
        }),
        14 => Message::SymbolsListRes(pb::ProtoOaSymbolsListRes {
            ctid_trader_account_id: account,
            symbol: vec![pb::ProtoOaLightSymbol {
                symbol_id: i64::arbitrary(g),
                symbol_name: Option::<String>::arbitrary(g),
                enabled: Option::arbitrary(g),
                base_asset_id: Option::arbitrary(g),
                quote_asset_id: Option::arbitrary(g),
                symbol_category_id: Option::arbitrary(g),
                description: Option::<String>::arbitrary(g),
                // NaN never equals itself, so the round trip uses a finite value.
                sorting_number: Some(f64::from(u16::arbitrary(g))),
            }],
            archived_symbol: vec![pb::ProtoOaArchivedSymbol {
                symbol_id: i64::arbitrary(g),
                name: text(g),
                utc_last_update_timestamp: i64::arbitrary(g),
                description: None,
            }],
            ..Default::default()
        }),
        15 => Message::SymbolByIdReq(pb::ProtoOaSymbolByIdReq { ctid_trader_account_id: account, symbol_id: ids(g), ..Default::default() }),
        16 => Message::SymbolByIdRes(pb::ProtoOaSymbolByIdRes {
            ctid_trader_account_id: account,
            symbol: vec![pb::ProtoOaSymbol {
                symbol_id: i64::arbitrary(g),
                digits: i32::arbitrary(g),
                pip_position: i32::arbitrary(g),
                enable_short_selling: Option::arbitrary(g),
                ..Default::default()
            }],
            ..Default::default()
        }),
        17 => Message::SymbolChangedEvent(pb::ProtoOaSymbolChangedEvent { ctid_trader_account_id: account, symbol_id: ids(g), ..Default::default() }),
        18 => Message::SubscribeSpotsReq(pb::ProtoOaSubscribeSpotsReq {
            ctid_trader_account_id: account,
            symbol_id: ids(g),
            subscribe_to_spot_timestamp: Option::arbitrary(g),
            ..Default::default()
        }),
        19 => Message::SubscribeSpotsRes(pb::ProtoOaSubscribeSpotsRes { ctid_trader_account_id: account, ..Default::default() }),
        20 => Message::UnsubscribeSpotsReq(pb::ProtoOaUnsubscribeSpotsReq { ctid_trader_account_id: account, symbol_id: ids(g), ..Default::default() }),
        21 => Message::UnsubscribeSpotsRes(pb::ProtoOaUnsubscribeSpotsRes { ctid_trader_account_id: account, ..Default::default() }),
        22 => Message::SpotEvent(pb::ProtoOaSpotEvent {
            ctid_trader_account_id: account,
            symbol_id: i64::arbitrary(g),
            bid: Option::arbitrary(g),
            ask: Option::arbitrary(g),
            trendbar: (0..u8::arbitrary(g) % 3).map(|_| trendbar(g)).collect(),
            session_close: Option::arbitrary(g),
            timestamp: Option::arbitrary(g),
            ..Default::default()
        }),
        23 => Message::SubscribeLiveTrendbarReq(pb::ProtoOaSubscribeLiveTrendbarReq {
            ctid_trader_account_id: account,
            period: 1,
            symbol_id: i64::arbitrary(g),
            ..Default::default()
        }),
        24 => Message::SubscribeLiveTrendbarRes(pb::ProtoOaSubscribeLiveTrendbarRes { ctid_trader_account_id: account, ..Default::default() }),
        25 => Message::UnsubscribeLiveTrendbarReq(pb::ProtoOaUnsubscribeLiveTrendbarReq {
            ctid_trader_account_id: account,
            period: 9,
            symbol_id: i64::arbitrary(g),
            ..Default::default()
        }),
        26 => Message::UnsubscribeLiveTrendbarRes(pb::ProtoOaUnsubscribeLiveTrendbarRes { ctid_trader_account_id: account, ..Default::default() }),
        27 => Message::GetTrendbarsReq(pb::ProtoOaGetTrendbarsReq {
            ctid_trader_account_id: account,
            from_timestamp: Option::arbitrary(g),
            to_timestamp: Option::arbitrary(g),
            period: 1,
            symbol_id: i64::arbitrary(g),
            count: Option::arbitrary(g),
            ..Default::default()
        }),
        28 => Message::GetTrendbarsRes(pb::ProtoOaGetTrendbarsRes {
            ctid_trader_account_id: account,
            period: 12,
            trendbar: (0..u8::arbitrary(g) % 4).map(|_| trendbar(g)).collect(),
            symbol_id: Option::arbitrary(g),
            has_more: Option::arbitrary(g),
            ..Default::default()
        }),
        29 => Message::GetTickDataReq(pb::ProtoOaGetTickDataReq {
            ctid_trader_account_id: account,
            symbol_id: i64::arbitrary(g),
            r#type: 2,
            from_timestamp: Option::arbitrary(g),
            to_timestamp: Option::arbitrary(g),
            ..Default::default()
        }),
        30 => Message::GetTickDataRes(pb::ProtoOaGetTickDataRes {
            ctid_trader_account_id: account,
            tick_data: vec![pb::ProtoOaTickData { timestamp: i64::arbitrary(g), tick: i64::arbitrary(g) }],
            has_more: bool::arbitrary(g),
            ..Default::default()
        }),
        31 => Message::ClientDisconnectEvent(pb::ProtoOaClientDisconnectEvent { reason: Option::<String>::arbitrary(g), ..Default::default() }),
        32 => Message::AccountsTokenInvalidatedEvent(pb::ProtoOaAccountsTokenInvalidatedEvent {
            ctid_trader_account_ids: ids(g),
            reason: Option::<String>::arbitrary(g),
            ..Default::default()
        }),
        33 => Message::AccountDisconnectEvent(pb::ProtoOaAccountDisconnectEvent { ctid_trader_account_id: account, ..Default::default() }),
        _ => Message::Unknown { payload_type: 3000 + u32::from(u8::arbitrary(g)) },
    }
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let index = u32::arbitrary(g) % SHAPES;
        AnyMessage(shape(g, index))
    }
}

fn encode_all(messages: &[AnyMessage]) -> BytesMut {
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    for (i, message) in messages.iter().enumerate() {
        let id = (i % 2 == 0).then(|| format!("req-{i}"));
        codec.encode(message.0.encode(id), &mut wire).expect("encode within the default limit");
    }
    wire
}

/// Feeds `wire` to a fresh decoder in chunks of the given sizes and collects every frame.
fn decode_in_chunks(wire: &[u8], chunk_sizes: &[usize]) -> Result<Vec<pb::ProtoMessage>, FrameError> {
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut offset = 0;
    let mut sizes = chunk_sizes.iter().cycle();
    while offset < wire.len() {
        let size = sizes.next().map_or(wire.len(), |s| s % 64 + 1);
        let end = (offset + size).min(wire.len());
        buffer.extend_from_slice(&wire[offset..end]);
        offset = end;
        while let Some(frame) = codec.decode(&mut buffer)? {
            frames.push(frame);
        }
    }
    assert!(buffer.is_empty(), "a complete stream leaves no bytes behind");
    Ok(frames)
}

#[quickcheck]
fn split_frames_decode_to_same_messages(messages: Vec<AnyMessage>, chunk_sizes: Vec<usize>) -> bool {
    let wire = encode_all(&messages);
    let frames = decode_in_chunks(&wire, &chunk_sizes).expect("valid frames decode");
    let decoded: Vec<Message> = frames.iter().map(|f| Message::decode(f).expect("valid payload")).collect();
    let ids_match = frames.iter().enumerate().all(|(i, f)| f.client_msg_id == (i % 2 == 0).then(|| format!("req-{i}")));
    ids_match && decoded == messages.into_iter().map(|m| m.0).collect::<Vec<_>>()
}

#[test]
fn every_message_shape_round_trips() {
    let mut g = Gen::new(8);
    for index in 0..SHAPES {
        for _ in 0..20 {
            let message = shape(&mut g, index);
            let frame = message.encode(Some("id".into()));
            assert_eq!(frame.payload_type, message.payload_type(), "{}", message.name());

            let mut wire = BytesMut::new();
            FrameCodec::default().encode(frame, &mut wire).unwrap();
            let back = FrameCodec::default().decode(&mut wire).unwrap().expect("one whole frame");
            assert_eq!(Message::decode(&back).unwrap(), message, "{} round trip", message.name());
        }
    }
}

#[test]
fn heartbeat_wire_form_matches_capture() {
    let mut wire = BytesMut::new();
    FrameCodec::default().encode(Message::Heartbeat.encode(None), &mut wire).unwrap();
    assert_eq!(&wire[..], &[0x00, 0x00, 0x00, 0x04, 0x08, 0x33, 0x12, 0x00]);
}

#[test]
fn payload_type_numbers_match_protocol() {
    let cases = [
        (Message::Heartbeat, 51),
        (Message::ApplicationAuthRes, 2101),
        (Message::VersionReq, 2104),
        (Message::SpotEvent(Default::default()), 2131),
        (Message::GetAccountListReq(Default::default()), 2149),
        (Message::SubscribeLiveTrendbarRes(Default::default()), 2165),
        (Message::GetTickDataRes(Default::default()), 2146),
        (Message::RefreshTokenRes(Default::default()), 2174),
        (Message::ErrorRes(Default::default()), 50),
        (Message::OaErrorRes(Default::default()), 2142),
    ];
    for (message, number) in cases {
        assert_eq!(message.payload_type(), number, "{}", message.name());
    }
}

#[test]
fn unknown_payload_type_decodes_to_unknown() {
    let frame = pb::ProtoMessage { payload_type: 2189, payload: Some(vec![1, 2, 3]), client_msg_id: None };
    assert_eq!(Message::decode(&frame).unwrap(), Message::Unknown { payload_type: 2189 });
}

#[test]
fn garbage_payload_names_its_type() {
    // 0xFF starts a field with wire type 7, which does not exist.
    let frame = pb::ProtoMessage { payload_type: 2131, payload: Some(vec![0xFF, 0xFF, 0xFF]), client_msg_id: None };
    let error = Message::decode(&frame).unwrap_err();
    let MessageError::InvalidPayload { payload_type, name, .. } = &error;
    assert_eq!(*payload_type, 2131);
    assert_eq!(*name, "ProtoOASpotEvent");
    assert!(error.to_string().contains("ProtoOASpotEvent"), "{error}");
}

#[quickcheck]
fn garbage_payload_never_panics(payload_type: u16, payload: Vec<u8>) -> bool {
    let frame = pb::ProtoMessage { payload_type: 2000 + u32::from(payload_type % 200), payload: Some(payload), client_msg_id: None };
    // Either outcome is fine; the property is that decoding returns instead of panicking.
    let _ = Message::decode(&frame);
    true
}

#[quickcheck]
fn garbage_bytes_never_panic(bytes: Vec<u8>, max: u16) -> bool {
    let mut codec = FrameCodec::new(usize::from(max));
    let mut buffer = BytesMut::from(&bytes[..]);
    // Decode until the codec wants more input or reports an error.
    for _ in 0..=bytes.len() {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => {
                let _ = Message::decode(&frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
    true
}

#[quickcheck]
fn truncated_frame_waits_for_more(messages: Vec<AnyMessage>, cut: usize) -> TestResult {
    let wire = encode_all(&messages);
    if wire.is_empty() {
        return TestResult::discard();
    }
    let cut = cut % wire.len();
    let mut codec = FrameCodec::default();
    let mut buffer = BytesMut::from(&wire[..cut]);
    let mut complete = 0;
    while codec.decode(&mut buffer).expect("a prefix of valid frames is not an error").is_some() {
        complete += 1;
    }
    TestResult::from_bool(complete < messages.len())
}

#[test]
fn oversized_prefix_is_rejected_before_allocation() {
    let mut codec = FrameCodec::new(1024);
    let mut buffer = BytesMut::new();
    buffer.put_u32(u32::MAX);
    buffer.put_slice(&[0x08, 0x33]);
    let capacity_before = buffer.capacity();

    let error = codec.decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::Oversized { len, max: 1024 } if len == u32::MAX as usize));
    let text = error.to_string();
    assert!(text.contains("4294967295"), "the message names the length: {text}");
    assert!(text.contains("1024"), "the message names the limit: {text}");
    assert_eq!(buffer.capacity(), capacity_before, "the decoder must not reserve the announced length");
}

#[test]
fn oversized_message_is_not_encoded() {
    let mut codec = FrameCodec::new(16);
    let big = Message::VersionRes(pb::ProtoOaVersionRes { version: "x".repeat(100), ..Default::default() });
    let mut wire = BytesMut::new();
    let error = codec.encode(big.encode(None), &mut wire).unwrap_err();
    assert!(matches!(error, FrameError::Oversized { max: 16, .. }));
    assert!(wire.is_empty());
}

#[test]
fn zero_length_frames_are_skipped() {
    let mut wire = BytesMut::new();
    wire.put_u32(0);
    wire.put_u32(0);
    FrameCodec::default().encode(Message::VersionReq.encode(None), &mut wire).unwrap();
    wire.put_u32(0);

    let mut codec = FrameCodec::default();
    let frame = codec.decode(&mut wire).unwrap().expect("the frame after the empty ones");
    assert_eq!(Message::decode(&frame).unwrap(), Message::VersionReq);
    assert_eq!(codec.decode(&mut wire).unwrap(), None);
    assert!(wire.is_empty());
}

#[test]
fn bad_envelope_is_an_error_and_skipped() {
    let mut wire = BytesMut::new();
    wire.put_u32(3);
    wire.put_slice(&[0xFF, 0xFF, 0xFF]);
    FrameCodec::default().encode(Message::Heartbeat.encode(None), &mut wire).unwrap();

    let mut codec = FrameCodec::default();
    assert!(matches!(codec.decode(&mut wire), Err(FrameError::Protobuf(_))));
    let next = codec.decode(&mut wire).unwrap().expect("the frame after the bad one");
    assert_eq!(Message::decode(&next).unwrap(), Message::Heartbeat);
}
