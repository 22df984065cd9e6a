//! Cost of the connection machine's hot paths: a tick while streaming (the per-tick cost the
//! driver pays), a whole connect cycle, and the backoff computation.
//!
//! Run with `cargo bench --bench fsm`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tickgate::fsm::backoff::{base_delay, Jitter};
use tickgate::fsm::{Config, Input, Machine, Timer};

const T0: u64 = 1_700_000_000_000;

fn streaming_machine() -> Machine {
    let mut machine = Machine::new(Config::default());
    let mut out = Vec::new();
    machine.handle(T0, Input::SubscriptionsChanged { count: 3 }, &mut out);
    for input in [Input::Start, Input::TransportUp, Input::AppAuthOk, Input::AccountAuthOk] {
        machine.handle(T0, input, &mut out);
    }
    machine.handle(T0, Input::SymbolsLoaded { count: 40 }, &mut out);
    machine
}

fn tick_in_streaming(c: &mut Criterion) {
    let mut machine = streaming_machine();
    let mut out = Vec::with_capacity(16);
    let mut now = T0;
    c.bench_function("fsm/tick_in_streaming", |b| {
        b.iter(|| {
            now += 1;
            machine.handle(black_box(now), black_box(Input::Tick), &mut out);
            out.clear();
        })
    });
}

/// Start, auth, streaming, socket closed, backoff and back to Connecting: every transition
/// of a reconnect, with its allocations for broadcasts and log lines.
fn connect_cycle(c: &mut Criterion) {
    c.bench_function("fsm/connect_cycle", |b| {
        b.iter_batched(
            || (Machine::new(Config::default()), Vec::with_capacity(64)),
            |(mut machine, mut out)| {
                let mut now = T0;
                let inputs = [
                    Input::Start,
                    Input::TransportUp,
                    Input::AppAuthOk,
                    Input::AccountAuthOk,
                    Input::SymbolsLoaded { count: 40 },
                    Input::SocketClosed { reason: "eof".to_string() },
                ];
                for input in inputs {
                    now += 10;
                    machine.handle(now, input, &mut out);
                }
                let retry_at = machine.timer_deadline(Timer::Backoff).unwrap_or(now);
                machine.handle(retry_at, Input::TimerFired(Timer::Backoff), &mut out);
                black_box((machine, out))
            },
            BatchSize::SmallInput,
        )
    });
}

fn backoff_delay(c: &mut Criterion) {
    let config = Config::default();
    let mut jitter = Jitter::new(42);
    let mut attempt = 0u32;
    c.bench_function("fsm/backoff_base_delay", |b| {
        b.iter(|| {
            attempt = attempt.wrapping_add(1) % 12;
            base_delay(black_box(&config), black_box(attempt))
        })
    });
    c.bench_function("fsm/backoff_delay_with_jitter", |b| {
        b.iter(|| {
            attempt = attempt.wrapping_add(1) % 12;
            jitter.delay(black_box(&config), black_box(attempt))
        })
    });
}

criterion_group!(benches, tick_in_streaming, connect_cycle, backoff_delay);
criterion_main!(benches);
