//! End-to-end benchmark: generated events in Redis → the writer process →
//! committed tables and converged analytics; then the tables are checked
//! against the same events applied directly plus a from-scratch analytics
//! recomputation.
//!
//! ```sh
//! cargo bench --bench e2e -- --events 100000                 # backlog: events/s, peak RSS
//! cargo bench --bench e2e -- --events 100000 --shape varied --reorgs 0   # v0.1's workload
//! cargo bench --bench e2e -- --mode steady --rate 1000 --seconds 60   # latency at a steady rate
//! ```
//!
//! Needs local PostgreSQL and Redis (`scripts/services.sh`). Figures and the
//! machine they were taken on: benches/README.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use sqlx::AssertSqlSafe;
use testkit::workload::{Shape, Spec, generate};

mod common;
use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Publish everything first, then start the writer and time the drain.
    Backlog,
    /// Start the writer, then publish at `--rate` for `--seconds`.
    Steady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShapeArg {
    /// Exactly what rindexer publishes (testkit's `Shape::Rindexer`).
    Rindexer,
    /// Every accepted encoding, varied (v0.1's benchmark workload).
    Varied,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "backlog")]
    mode: Mode,
    /// Chain events (backlog mode; duplicates come on top).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 0.1)]
    duplicates: f64,
    /// How entries are encoded.
    #[arg(long, value_enum, default_value = "rindexer")]
    shape: ShapeArg,
    /// Chain reorganisations in the workload (notices on every stream, the
    /// new fork re-including abandoned transactions).
    #[arg(long, default_value_t = 3)]
    reorgs: usize,
    /// Events per second (steady mode).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Writer processes in the consumer group.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Skip the ceiling measurement (a binary COPY of the same events).
    #[arg(long)]
    no_ceiling: bool,
    /// Extra settings for the writer, `NAME=value`.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Skip the exactness check (it applies the workload a second time).
    #[arg(long)]
    no_verify: bool,
    /// Keep the schemas and streams afterwards.
    #[arg(long)]
    keep: bool,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tag = format!("bench_{}", std::process::id());
    let (schema, reference_schema) = (tag.clone(), format!("{tag}_ref"));
    let mut spec = Spec::new(args.seed, args.events).with_stream_prefix(&format!("{tag}_"));
    spec.duplicate_ratio = args.duplicates;
    spec.reorgs = args.reorgs;
    spec.shape = match args.shape {
        ShapeArg::Rindexer => Shape::Rindexer,
        ShapeArg::Varied => Shape::Varied,
    };
    let group = format!("{tag}_group");

    let redis = writer::redis_client::open(&redis_url(), &Default::default()).expect("redis url");
    let mut conn = testkit::publisher(&redis)
        .await
        .expect("redis (scripts/services.sh)");
    let db = pool(&schema).await;

    let ports: Vec<u16> = (0..args.writers.max(1))
        .map(|_| private::free_port())
        .collect();
    let commands: Vec<Command> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_writer"));
            command
                .arg("run")
                .env("DATABASE_URL", database_url())
                .env("REDIS_URL", redis_url())
                .env("DATABASE_SCHEMA", &schema)
                .env("REDIS_STREAMS", spec.streams.join(","))
                .env("CONSUMER_GROUP", &group)
                .env("CONSUMER_NAME", format!("bench{i}"))
                .env("HTTP_HOST", "127.0.0.1")
                .env("HTTP_PORT", port.to_string())
                .env("LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            for kv in &args.env {
                if let Some((k, v)) = kv.split_once('=') {
                    command.env(k, v);
                }
            }
            command
        })
        .collect();
    let spawn = |commands: Vec<Command>| -> Vec<WriterProcess> {
        commands
            .into_iter()
            .map(|mut c| WriterProcess(c.spawn().expect("writer binary")))
            .collect()
    };

    let workload;
    let pg_cpu_start = cpu_seconds("postgres");
    let started;
    let writers;
    let mut published = 0usize;
    match args.mode {
        Mode::Backlog => {
            workload = generate(&spec);
            let t = Instant::now();
            for chunk in workload.entries.chunks(1000) {
                publish(&mut conn, &spec, chunk).await;
            }
            published = workload.entries.iter().map(|e| e.events).sum();
            println!(
                "published {published} events ({} entries) in {:.2}s",
                workload.entries.len(),
                t.elapsed().as_secs_f64()
            );
            started = Instant::now();
            writers = spawn(commands);
        }
        Mode::Steady => {
            spec.events = (args.rate * args.seconds) as usize;
            workload = generate(&spec);
            writers = spawn(commands);
            // Let it create its groups and settle.
            while backlog(&mut conn, &spec, &group).await.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started = Instant::now();
            let mut next = 0;
            while next < workload.entries.len() {
                let due = (started.elapsed().as_secs_f64() * args.rate as f64) as usize;
                let mut end = next;
                while end < workload.entries.len() && published < due {
                    published += workload.entries[end].events;
                    end += 1;
                }
                if end > next {
                    publish(&mut conn, &spec, &workload.entries[next..end]).await;
                    next = end;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!(
                "published {published} events at {} events/s for {:.1}s",
                args.rate,
                started.elapsed().as_secs_f64()
            );
        }
    }

    let pids: Vec<u32> = writers.iter().map(|w| w.0.id()).collect();
    let peak_of = |pids: &[u32]| pids.iter().map(|&p| peak_rss_mib(p)).fold(0.0, f64::max);
    let mut streams_done = None;
    let mut peak_rss = 0.0f64;
    let mut waits = WaitProfile::default();
    loop {
        peak_rss = peak_rss.max(peak_of(&pids));
        let pending = backlog(&mut conn, &spec, &group).await;
        if pending == Some(0) && streams_done.is_none() {
            streams_done = Some(started.elapsed());
        }
        if streams_done.is_none() {
            waits.sample(&db).await;
        }
        if pending == Some(0) && scalar(&db, "SELECT count(*) FROM analytics_dirty").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    peak_rss = peak_rss.max(peak_of(&pids));
    let writer_cpu: f64 = pids.iter().map(|&p| process_cpu_seconds(p)).sum();
    let pg_cpu = cpu_seconds("postgres") - pg_cpu_start;
    let mut texts = Vec::new();
    for port in &ports {
        texts.push(metrics_text(*port).await);
    }
    // Figures of all writer processes, added up.
    let metrics = added_up(&texts);
    drop(writers);

    let unique = workload.unique_events;
    println!("\n== writer end to end ({:?}) ==", args.mode);
    println!("machine: {}", machine());
    println!("server: {}", server(&db).await);
    println!(
        "workload: {:?} shape, {} reorgs (notices on every stream), seed {}",
        args.shape,
        workload.reorgs.len(),
        args.seed
    );
    println!(
        "events: {unique} of the final chain, {published} published (with duplicates and abandoned forks)"
    );
    println!(
        "drained + analytics converged in {:.2}s → {:.0} events/s (streams drained at {:.2}s)",
        elapsed.as_secs_f64(),
        unique as f64 / elapsed.as_secs_f64(),
        streams_done.unwrap_or(elapsed).as_secs_f64()
    );
    if let (Some(p50), Some(p99)) = (
        quantile(&metrics, "writer_end_to_end_seconds", 0.50),
        quantile(&metrics, "writer_end_to_end_seconds", 0.99),
    ) {
        println!(
            "end-to-end latency (XADD → commit): p50 {:.1} ms, p99 {:.1} ms",
            p50 * 1000.0,
            p99 * 1000.0
        );
    }
    println!(
        "peak RSS of the writer: {peak_rss:.1} MiB ({} writer process{})",
        pids.len(),
        if pids.len() == 1 {
            ""
        } else {
            "es, the largest"
        }
    );
    println!("CPU: writer {writer_cpu:.1}s, postgres {pg_cpu:.1}s (all backends)");
    waits.print();
    println!("where the time goes (sum over batches and writer processes, seconds):");
    for (key, value) in samples(&metrics, "writer_stage_seconds_sum") {
        println!("  {key} = {value:.2}");
    }
    for name in [
        "writer_analytics_batch_seconds_sum",
        "writer_analytics_batch_seconds_count",
        "writer_analytics_terms_total",
        "writer_analytics_messages_dropped_total",
        "writer_analytics_catch_ups_total",
        "writer_batch_events_sum",
        "writer_batch_events_count",
        "writer_db_acquire_seconds_sum",
    ] {
        for (key, value) in samples(&metrics, name) {
            println!("  {key} = {value:.2}");
        }
    }

    let mut exact = true;
    if !args.no_verify {
        let t = Instant::now();
        let _reference = reference(
            std::slice::from_ref(&workload),
            &database_url(),
            &reference_schema,
        )
        .await;
        let diff = differences(&db, &schema, &reference_schema).await;
        exact = diff.values().all(|d| *d == 0);
        println!(
            "tables exact: {} (checked {} tables against direct apply + from-scratch analytics in {:.1}s)",
            if exact { "yes" } else { "NO" },
            diff.len(),
            t.elapsed().as_secs_f64()
        );
        for (table, d) in diff.iter().filter(|(_, d)| **d != 0) {
            println!("  {table}: {d} rows differ");
        }
    }

    if args.mode == Mode::Backlog && !args.no_ceiling {
        let events = workload.canonical_events();
        let copy_schema = format!("{tag}_copy");
        let took = copy_ceiling(&events, &database_url(), &copy_schema).await;
        let ceiling = events.len() as f64 / took.as_secs_f64();
        let ours = unique as f64 / elapsed.as_secs_f64();
        println!(
            "ceiling: binary COPY of the same {} events into the five event tables alone: {:.2}s → {:.0} events/s; the writer ran at {:.0} % of it",
            events.len(),
            took.as_secs_f64(),
            ceiling,
            100.0 * ours / ceiling
        );
    }

    if !args.keep {
        for s in [&schema, &reference_schema] {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
            )))
            .execute(&db)
            .await;
        }
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&spec.streams[..])
            .query_async(&mut conn)
            .await;
    }
    if !exact {
        std::process::exit(1);
    }
}
