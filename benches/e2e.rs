//! End-to-end benchmark: generated events in Redis → the writer process →
//! committed tables and converged analytics; then the tables are checked
//! against the same events applied directly plus a from-scratch analytics
//! recomputation.
//!
//! ```sh
//! cargo bench --bench e2e -- --events 100000                 # backlog: events/s, peak RSS
//! cargo bench --bench e2e -- --mode steady --rate 1000 --seconds 60   # latency at a steady rate
//! ```
//!
//! Needs local PostgreSQL and Redis (`scripts/services.sh`). Figures and the
//! machine they were taken on: benches/README.md.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use redis::aio::MultiplexedConnection;
use sqlx::{AssertSqlSafe, PgPool};
use writer::analytics::{Claim, refresh};
use writer::apply::ReadModel;
use writer::config::{DatabaseConfig, Secret};
use writer::decode::decode_json;
use writer::workload::{Spec, Workload, generate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Publish everything first, then start the writer and time the drain.
    Backlog,
    /// Start the writer, then publish at `--rate` for `--seconds`.
    Steady,
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
    /// Events per second (steady mode).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
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

const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379";

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL.to_owned())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| REDIS_URL.to_owned())
}

async fn pool(schema: &str) -> PgPool {
    let config = DatabaseConfig {
        url: Secret::new(database_url()),
        schema: schema.to_owned(),
        pool_size: 4,
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: Duration::ZERO,
    };
    let pool = writer::db::pool(&config).expect("pool");
    writer::migrate::run(&pool, schema).await.expect("migrate");
    pool
}

async fn publish(
    conn: &mut MultiplexedConnection,
    spec: &Spec,
    entries: &[writer::workload::Entry],
) {
    let mut pipe = redis::pipe();
    for e in entries {
        pipe.cmd("XADD")
            .arg(&spec.streams[e.stream])
            .arg("*")
            .arg(e.field)
            .arg(&e.payload)
            .ignore();
    }
    let () = pipe.query_async(conn).await.expect("XADD");
}

/// Undelivered + unacknowledged entries over all streams.
async fn backlog(conn: &mut MultiplexedConnection, spec: &Spec, group: &str) -> Option<u64> {
    let mut total = 0;
    for s in &spec.streams {
        let info = writer::stream::group_info(conn, s, group).await.ok()??;
        total += info.lag.unwrap_or(u64::MAX / 8) + info.pending;
    }
    Some(total)
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sum of utime+stime (seconds) of processes named `name`.
fn cpu_seconds(name: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            // After the command: state(0) … utime(11) stime(12) cutime(13) cstime(14)
            for i in [11, 12, 13, 14] {
                total += fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / ticks
}

fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get(11) + get(12)) as f64 / 100.0
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// `name{labels} value` lines of a metric family.
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// Quantile of a Prometheus histogram, interpolating within the bucket.
fn quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = samples(text, &format!("{name}_bucket"))
        .into_iter()
        .filter_map(|(key, count)| {
            let le = key.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count))
        })
        .collect();
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return Some(lower);
            }
            let within = (target - below) / (count - below).max(1e-9);
            return Some(lower + (bound - lower) * within);
        }
        lower = bound;
        below = count;
    }
    None
}

/// Tables compared row for row (timestamps aside).
const TABLES: &[&str] = &[
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
    "atom",
    "triple",
    "position",
    "vault",
    "term",
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

/// Applies the workload directly into `schema`, then recomputes all
/// analytics from scratch: the reference the writer's tables must equal.
async fn reference(workload: &Workload, schema: &str) -> PgPool {
    let pool = pool(schema).await;
    let decoded: Vec<_> = workload
        .entries
        .iter()
        .filter(|e| !e.duplicate)
        .map(|e| decode_json(&e.payload))
        .collect();
    let mut events: Vec<_> = decoded
        .iter()
        .flat_map(|d| d.events.iter().cloned())
        .collect();
    events.sort_by_key(|e| e.chain.order());
    let rm = ReadModel::new(pool.clone(), schema);
    for chunk in events.chunks(1000) {
        rm.apply(chunk).await.expect("direct apply");
    }
    let triples: Vec<String> = sqlx::query_scalar("SELECT term_id FROM triple")
        .fetch_all(&pool)
        .await
        .unwrap();
    let ids: Vec<&str> = triples.iter().map(String::as_str).collect();
    for chunk in ids.chunks(5000) {
        refresh(&pool, schema, Claim::Listed(&[]), chunk, true)
            .await
            .expect("analytics");
    }
    pool
}

/// Rows in one schema's table and not the other's, both ways.
async fn differences(pool: &PgPool, a: &str, b: &str) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let row = |s: &str| {
            format!("SELECT to_jsonb(t) - 'created_at' - 'updated_at' FROM \"{s}\".{table} t")
        };
        let sql = format!(
            "SELECT count(*) FROM (({} EXCEPT ALL {}) UNION ALL ({} EXCEPT ALL {})) d",
            row(a),
            row(b),
            row(b),
            row(a)
        );
        out.insert(*table, scalar(pool, &sql).await);
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1048576.0
            })
        })
        .unwrap_or(0.0);
    format!(
        "{cores} cores ({cpu}), {mem:.0} GiB RAM; Postgres, Redis and the writer on the same machine"
    )
}

struct WriterProcess(Child);

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tag = format!("bench_{}", std::process::id());
    let (schema, reference_schema) = (tag.clone(), format!("{tag}_ref"));
    let mut spec = Spec::new(args.seed, args.events).with_stream_prefix(&format!("{tag}_"));
    spec.duplicate_ratio = args.duplicates;
    let group = format!("{tag}_group");

    let redis = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis (scripts/services.sh)");
    let db = pool(&schema).await;

    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_writer"));
    command
        .arg("run")
        .env("DATABASE_URL", database_url())
        .env("REDIS_URL", redis_url())
        .env("DATABASE_SCHEMA", &schema)
        .env("REDIS_STREAMS", spec.streams.join(","))
        .env("CONSUMER_GROUP", &group)
        .env("CONSUMER_NAME", "bench")
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

    let workload;
    let pg_cpu_start = cpu_seconds("postgres");
    let started;
    let writer;
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
            writer = WriterProcess(command.spawn().expect("writer binary"));
        }
        Mode::Steady => {
            spec.events = (args.rate * args.seconds) as usize;
            workload = generate(&spec);
            writer = WriterProcess(command.spawn().expect("writer binary"));
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

    let pid = writer.0.id();
    let mut streams_done = None;
    let mut peak_rss = 0.0f64;
    loop {
        peak_rss = peak_rss.max(peak_rss_mib(pid));
        let pending = backlog(&mut conn, &spec, &group).await;
        if pending == Some(0) && streams_done.is_none() {
            streams_done = Some(started.elapsed());
        }
        if pending == Some(0) && scalar(&db, "SELECT count(*) FROM analytics_dirty").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    peak_rss = peak_rss.max(peak_rss_mib(pid));
    let writer_cpu = process_cpu_seconds(pid);
    let pg_cpu = cpu_seconds("postgres") - pg_cpu_start;
    let metrics = metrics_text(port).await;
    drop(writer);

    let unique = workload.unique_events;
    println!("\n== writer end to end ({:?}) ==", args.mode);
    println!("machine: {}", machine());
    println!("events: {unique} unique, {published} published (with duplicates)");
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
    println!("peak RSS of the writer: {peak_rss:.1} MiB");
    println!("CPU: writer {writer_cpu:.1}s, postgres {pg_cpu:.1}s (all backends)");
    println!("where the time goes (sum over batches, seconds):");
    for (key, value) in samples(&metrics, "writer_stage_seconds_sum") {
        println!("  {key} = {value:.2}");
    }
    for name in [
        "writer_analytics_batch_seconds_sum",
        "writer_analytics_batch_seconds_count",
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
        let _reference = reference(&workload, &reference_schema).await;
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
