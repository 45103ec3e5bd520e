//! The Postgres side of the writer alone: a generated workload's entries
//! applied batch after batch through the same path the consumer uses
//! (`Ingest::process`: notices, event rows, cascade), on one connection at a
//! time, then the analytics drained as the worker does. No Redis and no
//! concurrency, so each statement's time is its own cost: the harness for
//! finding where Postgres spends its time per event.
//!
//! ```sh
//! cargo bench --bench apply -- --events 100000
//! cargo bench --bench apply -- --events 100000 --log-statements 2>statements.jsonl
//! cargo bench --bench apply -- --events 1000000 --keep   # then EXPLAIN in bench_apply_<pid>
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use testkit::workload::{Spec, generate, stream_entries};
use writer::apply::{Partitioning, ReadModel};
use writer::config::RetryConfig;
use writer::ingest::Ingest;
use writer::retry::Circuit;

mod common;
use common::*;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    reorgs: usize,
    /// Entries per batch (the consumer's BATCH_SIZE × streams read at once).
    #[arg(long, default_value_t = 2500)]
    batch: usize,
    /// Log every statement with its duration (JSON lines on stderr).
    #[arg(long)]
    log_statements: bool,
    /// Afterwards, times a reorg's vault rebuild (`vault::recompute`) of the
    /// N vaults with the most SharePriceChanged events, reading their whole
    /// history and reading the blocks near the chain's tip first (rolled
    /// back; 0: skip).
    #[arg(long, default_value_t = 10)]
    rebuild_hot: i64,
    /// Keeps the schema (`bench_apply_<pid>`) for inspection instead of
    /// dropping it.
    #[arg(long)]
    keep: bool,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.log_statements {
        writer::telemetry::init(writer::config::LogFormat::Json, "warn,sqlx::query=debug");
    }
    let schema = format!("bench_apply_{}", std::process::id());
    let db = pool(&schema).await;
    let workload = generate(&Spec::rindexer(args.seed, args.events, args.reorgs));
    let entries = stream_entries(&workload.entries);
    let published: usize = workload.entries.iter().map(|e| e.events).sum();
    let ingest = Ingest {
        read_model: ReadModel::new(db.clone(), schema.as_str()),
        max_deliveries: 5,
        retry: RetryConfig {
            max_retries: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        },
        circuit: Arc::new(Circuit::new(5)),
        // One connection, batch after batch: the Postgres side alone.
        split: Partitioning::NONE,
    };
    let never = tokio_util::sync::CancellationToken::new();
    // The writer's own recorder: the stage timings below are the ones its
    // `/metrics` reports.
    let metrics = writer::http::metrics::install();

    let started = Instant::now();
    for batch in entries.chunks(args.batch) {
        let processed = ingest.process(batch, &never).await.expect("applied");
        assert!(
            processed.dead_letters.is_empty(),
            "{:?}",
            processed.dead_letters
        );
    }
    let applied = started.elapsed();
    let analytics_started = Instant::now();
    let triples = testkit::drain_analytics(&db, &schema)
        .await
        .expect("analytics");
    let analytics = analytics_started.elapsed();
    println!("\n== apply, one batch at a time ==");
    println!("machine: {}", machine());
    println!("server: {}", server(&db).await);
    println!(
        "workload: rindexer shape, {} reorgs, seed {}; {} events of the final chain, {published} delivered in {} entries, batches of {} entries",
        workload.reorgs.len(),
        args.seed,
        workload.unique_events,
        entries.len(),
        args.batch
    );
    println!(
        "events, notices and cascade: {:.2}s → {:.0} events/s ({:.1} µs per delivered event)",
        applied.as_secs_f64(),
        published as f64 / applied.as_secs_f64(),
        applied.as_secs_f64() * 1e6 / published as f64
    );
    println!(
        "analytics ({triples} triples, batches of 2,000): {:.2}s ({:.1} µs per event)",
        analytics.as_secs_f64(),
        analytics.as_secs_f64() * 1e6 / published as f64
    );
    let rendered = metrics.render();
    println!("stages (sum over batches, count of batches):");
    let counts = samples(&rendered, "writer_stage_seconds_count");
    for (key, sum) in samples(&rendered, "writer_stage_seconds_sum") {
        let label = key.trim_start_matches("writer_stage_seconds_sum");
        let n = counts
            .iter()
            .find(|(k, _)| k.ends_with(label))
            .map_or(0.0, |(_, n)| *n);
        println!(
            "  {label:20} {sum:8.2}s in {n:>5} ({:.1} ms each)",
            sum * 1e3 / n.max(1.0)
        );
    }
    if args.rebuild_hot > 0 {
        rebuild_hot(&db, args.rebuild_hot).await;
    }
    let stats: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
         WHERE schemaname = $1 AND n_tup_upd + n_tup_ins > 0 ORDER BY n_tup_upd DESC",
    )
    .bind(&schema)
    .fetch_all(&db)
    .await
    .expect("table statistics");
    println!("rows inserted / updated (of which HOT) per table:");
    for (table, ins, upd, hot) in stats {
        println!("  {table:28} {ins:>9} {upd:>9} ({hot})");
    }
    if args.keep {
        println!("schema {schema} kept");
        return;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&db)
    .await
    .expect("drop schema");
}

/// Times the rebuild of the `n` hottest vaults (most SharePriceChanged
/// events) as a reorg at the chain's tip runs it, with and without reading
/// the recent blocks first; each in a transaction rolled back, twice (the
/// second warm).
async fn rebuild_hot(db: &sqlx::PgPool, n: i64) {
    let keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT term_id, curve_id::text FROM share_price_changed_events
         GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT $1",
    )
    .bind(n)
    .fetch_all(db)
    .await
    .expect("hot vaults");
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM share_price_changed_events s
         JOIN unnest($1::text[], $2::text[]::numeric[]) AS k(term_id, curve_id)
           USING (term_id, curve_id)",
    )
    .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .fetch_one(db)
    .await
    .expect("their events");
    let tip: i64 = sqlx::query_scalar("SELECT max(block_number) FROM share_price_changed_events")
        .fetch_one(db)
        .await
        .expect("tip");
    let from = tip - writer::apply::RECENT_BLOCKS;
    let mut times = Vec::new();
    for recent_from in [None, Some(from), None, Some(from)] {
        let mut tx = db.begin().await.expect("begin");
        let started = Instant::now();
        writer::apply::vault::recompute(&mut tx, &keys, recent_from)
            .await
            .expect("recompute");
        times.push(started.elapsed().as_secs_f64() * 1e3);
        tx.rollback().await.expect("rollback");
    }
    println!(
        "rebuild of the {} hottest vaults ({events} SharePriceChanged): whole history {:.1} ms, then {:.1} ms warm; from block {from} first {:.1} ms, then {:.1} ms warm",
        keys.len(),
        times[0],
        times[2],
        times[1],
        times[3]
    );
}
