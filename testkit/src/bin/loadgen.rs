//! Load generator: XADDs a seeded, realistic MultiVault workload in
//! rindexer's format (see `testkit::workload`) to the five streams.
//!
//! ```sh
//! cargo run --release -p testkit --bin loadgen -- --events 100000 --seed 7
//! cargo run --release -p testkit --bin loadgen -- --events 60000 --rate 1000   # steady 1,000 events/s
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use testkit::workload::{Spec, generate};

#[derive(Debug, Parser)]
#[command(about = "Publish a generated MultiVault workload to Redis streams")]
struct Args {
    /// Chain events to generate (duplicates come on top).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of entries published twice.
    #[arg(long, default_value_t = 0.1)]
    duplicates: f64,
    /// Prefix for the stream names (default: rindexer's testnet names).
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Events per second to publish at (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Entries per pipelined round trip.
    #[arg(long, default_value_t = 500)]
    pipeline: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut spec = Spec::new(args.seed, args.events).with_stream_prefix(&args.prefix);
    spec.duplicate_ratio = args.duplicates;
    let workload = generate(&spec);
    let client = writer::redis_client::open(&args.redis, &Default::default())?;
    let mut conn = client.get_connection()?;
    let started = Instant::now();
    let mut published_events = 0usize;
    for chunk in workload.entries.chunks(args.pipeline.max(1)) {
        spec.xadd(chunk).exec(&mut conn)?;
        published_events += chunk.iter().map(|e| e.events).sum::<usize>();
        if args.rate > 0 {
            let due = Duration::from_secs_f64(published_events as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {} entries ({} events, {} unique) in {:.2}s ({:.0} events/s)",
        workload.entries.len(),
        published_events,
        workload.unique_events,
        secs,
        published_events as f64 / secs
    );
    Ok(())
}
