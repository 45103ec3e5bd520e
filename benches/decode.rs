//! Decode and validate throughput: entry payload → validated events.
//!
//! `cargo bench --bench decode` — figures in benches/README.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use testkit::workload::{Shape, Spec, generate};
use writer::decode::decode_json;

/// Entries of one kind from a generated workload, and their event count.
fn sample(kind: &str, vary: bool) -> (Vec<String>, u64) {
    let mut spec = Spec::new(9, 20_000);
    spec.shape = if vary { Shape::Varied } else { Shape::Rindexer };
    spec.duplicate_ratio = 0.0;
    let entries: Vec<_> = generate(&spec)
        .entries
        .into_iter()
        .filter(|e| e.payload.contains(&format!("\"event_name\":\"{kind}\"")))
        .collect();
    let events = entries.iter().map(|e| e.events as u64).sum();
    (entries.into_iter().map(|e| e.payload).collect(), events)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for kind in [
        "Deposited",
        "Redeemed",
        "SharePriceChanged",
        "AtomCreated",
        "TripleCreated",
    ] {
        for vary in [false, true] {
            let (payloads, events) = sample(kind, vary);
            group.throughput(Throughput::Elements(events));
            let name = format!(
                "{kind}/{}",
                if vary {
                    "mixed-encodings"
                } else {
                    "rindexer-form"
                }
            );
            group.bench_function(name, |b| {
                b.iter(|| {
                    for p in &payloads {
                        black_box(decode_json(black_box(p)));
                    }
                })
            });
        }
    }
    let (payloads, events) = {
        let mut spec = Spec::new(9, 20_000);
        spec.duplicate_ratio = 0.0;
        let w = generate(&spec);
        (
            w.entries.into_iter().map(|e| e.payload).collect::<Vec<_>>(),
            20_000u64,
        )
    };
    group.throughput(Throughput::Elements(events));
    group.bench_function("workload-mix", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(decode_json(black_box(p)));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = decode
}
criterion_main!(benches);
