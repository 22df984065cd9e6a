//! Micro benchmarks of the per-tick hot path: decoding a framed `ProtoOASpotEvent` from the TCP
//! byte stream, merging it into a quote, and writing the tick JSON frame that the gateway sends
//! to every subscriber. Run with `cargo bench --bench protocol`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tickgate::gateway::protocol::tick_frame;
use tickgate::protocol::pb;
use tickgate::protocol::{FrameCodec, Message};
use tickgate::session::spot::{SpotBook, SpotUpdate};
use tokio_util::codec::{Decoder, Encoder};

/// A spot event as cTrader sends it with `subscribeToSpotTimestamp`: both sides and a timestamp.
fn spot_event() -> pb::ProtoOaSpotEvent {
    pb::ProtoOaSpotEvent {
        payload_type: Some(pb::ProtoOaPayloadType::ProtoOaSpotEvent as i32),
        ctid_trader_account_id: 44_000_123,
        symbol_id: 1,
        bid: Some(108_567),
        ask: Some(108_573),
        timestamp: Some(1_733_340_000_123),
        ..Default::default()
    }
}

/// Returns the event as it arrives on the socket: length prefix plus `ProtoMessage` envelope.
fn framed_spot_event() -> BytesMut {
    let mut bytes = BytesMut::new();
    FrameCodec::default()
        .encode(Message::SpotEvent(spot_event()).encode(None), &mut bytes)
        .expect("a spot event fits in a frame");
    bytes
}

fn decode_spot_event(codec: &mut FrameCodec, bytes: &mut BytesMut) -> Message {
    let frame = codec.decode(bytes).expect("valid frame").expect("whole frame");
    Message::decode(&frame).expect("valid spot event")
}

fn bench_decode(c: &mut Criterion) {
    let framed = framed_spot_event();
    let mut codec = FrameCodec::default();
    assert!(matches!(decode_spot_event(&mut codec, &mut framed.clone()), Message::SpotEvent(_)));

    // The copy of the input buffer is made in the setup closure, outside the timed part.
    c.bench_function("spot_event_decode", |b| {
        b.iter_batched(
            || framed.clone(),
            |mut bytes| black_box(decode_spot_event(&mut codec, &mut bytes)),
            BatchSize::SmallInput,
        )
    });
}

/// One-sided and two-sided updates in turn, as cTrader sends only the side that changed.
const UPDATES: [(Option<u64>, Option<u64>); 4] =
    [(Some(108_567), Some(108_573)), (Some(108_568), None), (None, Some(108_575)), (Some(108_566), Some(108_572))];

fn update(index: usize) -> SpotUpdate {
    let (bid, ask) = UPDATES[index % UPDATES.len()];
    SpotUpdate { symbol_id: 1, bid, ask, timestamp_ms: Some(1_733_340_000_123) }
}

fn bench_merge(c: &mut Criterion) {
    let symbol: Arc<str> = Arc::from("EURUSD");
    let mut book = SpotBook::new();
    book.apply(update(0), &symbol, 5, 0).expect("a two-sided update makes a tick");

    let mut index = 0;
    c.bench_function("spot_merge", |b| {
        b.iter(|| {
            index += 1;
            black_box(book.apply(update(index), &symbol, 5, 1_733_340_000_124))
        })
    });

    // The driver's path per spot event: frame, envelope, typed message, then the merge.
    let framed = framed_spot_event();
    let mut codec = FrameCodec::default();
    c.bench_function("spot_decode_merge", |b| {
        b.iter_batched(
            || framed.clone(),
            |mut bytes| {
                let Message::SpotEvent(event) = decode_spot_event(&mut codec, &mut bytes) else {
                    unreachable!("the input is a spot event")
                };
                let update = SpotUpdate { symbol_id: event.symbol_id, bid: event.bid, ask: event.ask, timestamp_ms: event.timestamp };
                black_box(book.apply(update, &symbol, 5, 1_733_340_000_124))
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench_tick_json(c: &mut Criterion) {
    let symbol: Arc<str> = Arc::from("EURUSD");
    let mut book = SpotBook::new();
    let tick = book.apply(update(0), &symbol, 5, 1_733_340_000_124).expect("a two-sided update makes a tick");

    // The gateway writes each tick once and shares the bytes among its subscribers.
    c.bench_function("tick_json", |b| b.iter(|| black_box(tick_frame(black_box(&tick)))));

    // Bytes from the socket to the JSON frame, once per upstream tick.
    let framed = framed_spot_event();
    let mut codec = FrameCodec::default();
    c.bench_function("spot_decode_merge_json", |b| {
        b.iter_batched(
            || framed.clone(),
            |mut bytes| {
                let Message::SpotEvent(event) = decode_spot_event(&mut codec, &mut bytes) else {
                    unreachable!("the input is a spot event")
                };
                let update = SpotUpdate { symbol_id: event.symbol_id, bid: event.bid, ask: event.ask, timestamp_ms: event.timestamp };
                book.apply(update, &symbol, 5, 1_733_340_000_124).map(|tick| black_box(tick_frame(&tick)))
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_decode, bench_merge, bench_tick_json);
criterion_main!(benches);
