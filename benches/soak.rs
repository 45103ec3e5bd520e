//! Soak: the writer at a steady rate for a long time, with random SIGKILLs
//! and dependency restarts, sampling lag, memory and errors over time; then
//! the tables are checked exact.
//!
//! ```sh
//! cargo bench --bench soak -- --minutes 30 --rate 2000
//! ```
//!
//! Runs its own PostgreSQL cluster and Redis (append-only file) so that
//! restarting them disturbs nothing else. Not part of CI (it takes the
//! whole duration); results go to benches/README.md.

// A benchmark whose set-up fails stops there.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use testkit::workload::{Spec, Workload, generate};
use writer::apply::ReadModel;

mod common;
use common::private::{PrivatePostgres, PrivateRedis};
use common::*;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Events per second, published steadily.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Seconds between SIGKILLs of the writer, at random within this range.
    #[arg(long, default_value_t = 60)]
    kill_min: u64,
    #[arg(long, default_value_t = 180)]
    kill_max: u64,
    /// Seconds between Postgres restarts (5 s down each time).
    #[arg(long, default_value_t = 420)]
    postgres_every: u64,
    /// Seconds between Redis kills (3 s down each time).
    #[arg(long, default_value_t = 540)]
    redis_every: u64,
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    #[arg(long, hide = true)]
    bench: bool,
}

const SCHEMA: &str = "soak";

/// The workload of minute `i`: independent terms and accounts per minute.
fn minute(args: &Args, i: u64) -> Workload {
    let mut spec = Spec::new(args.seed + i, (args.rate * 60) as usize).with_stream_prefix("soak_");
    spec.first_block = 1_000 + i as i64 * 1_000_000;
    generate(&spec)
}

fn streams() -> Spec {
    Spec::new(0, 0).with_stream_prefix("soak_")
}

async fn redis_conn(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = writer::redis_client::open(url, &Default::default()).ok()?;
    tokio::time::timeout(Duration::from_secs(2), testkit::publisher(&client))
        .await
        .ok()?
        .ok()
}

/// Publishes minute after minute at the rate, riding out Redis restarts.
async fn publisher(
    args: Arc<Args>,
    url: String,
    published: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
) {
    let spec = streams();
    let mut conn = None;
    for i in 0..args.minutes {
        let workload = minute(&args, i);
        let start = Instant::now();
        let mut sent_events = 0usize;
        let mut next = 0;
        while next < workload.entries.len() {
            let due = (start.elapsed().as_secs_f64() * args.rate as f64) as usize;
            let mut end = next;
            let mut events = 0;
            while end < workload.entries.len() && sent_events + events < due {
                events += workload.entries[end].events;
                end += 1;
            }
            if end > next {
                loop {
                    if conn.is_none() {
                        conn = redis_conn(&url).await;
                    }
                    if let Some(c) = conn.as_mut() {
                        let pipe = spec.xadd(&workload.entries[next..end]);
                        if pipe.query_async::<()>(c).await.is_ok() {
                            break;
                        }
                        conn = None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent_events += events;
                published.fetch_add(events, Ordering::Relaxed);
                next = end;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
}

fn spawn_writer(vars: &[(String, String)], log: &std::path::Path) -> WriterProcess {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_writer"))
        .arg("run")
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("writer");
    WriterProcess(child)
}

async fn health(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split(' ').nth(1)?.to_owned();
        let status = text
            .split("\"status\":\"")
            .nth(1)?
            .split('"')
            .next()?
            .to_owned();
        Some(format!("{code} {status}"))
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "no answer".to_owned())
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let pg = PrivatePostgres::start();
    let mut redis = PrivateRedis::start().await;
    pool_at(&pg.url(), SCHEMA).await.close().await;
    let spec = streams();
    let group = "soak_group";
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let vars: Vec<(String, String)> = [
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("DATABASE_SCHEMA", SCHEMA.to_owned()),
        ("REDIS_STREAMS", spec.streams.join(",")),
        ("CONSUMER_GROUP", group.to_owned()),
        ("CONSUMER_NAME", "soak".to_owned()),
        ("HTTP_HOST", "127.0.0.1".to_owned()),
        ("HTTP_PORT", port.to_string()),
        ("LOG_LEVEL", "warn".to_owned()),
        ("CLAIM_IDLE_MS", "30000".to_owned()),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let target = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let log_path = target.join("soak-writer.log");
    let csv_path = target.join("soak.csv");
    let _ = std::fs::remove_file(&log_path);
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(
        csv,
        "seconds,published,backlog,dirty,dead_letters,rss_mib,health,warn_lines,event"
    )
    .unwrap();

    let mut writer = spawn_writer(&vars, &log_path);
    let published = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    tokio::spawn(publisher(
        args.clone(),
        redis.url(),
        published.clone(),
        done.clone(),
    ));

    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let mut next_kill = rng.u64(args.kill_min..=args.kill_max);
    let mut next_pg = args.postgres_every;
    let mut next_redis = args.redis_every;
    let mut next_sample = 0;
    let (mut kills, mut pg_restarts, mut redis_restarts) = (0, 0, 0);
    let (mut max_backlog, mut max_rss) = (0u64, 0f64);
    println!(
        "{:>6} {:>10} {:>8} {:>7} {:>5} {:>8} {:>16} {:>5}  event",
        "t/s", "published", "backlog", "dirty", "dead", "rss/MiB", "health", "warns"
    );
    loop {
        let t = started.elapsed().as_secs();
        let mut event = String::new();
        let publishing = !done.load(Ordering::Relaxed);
        if publishing && t >= next_kill {
            let _ = writer.0.kill();
            let _ = writer.0.wait();
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer = spawn_writer(&vars, &log_path);
            kills += 1;
            next_kill = t + rng.u64(args.kill_min..=args.kill_max);
            event = format!("SIGKILL #{kills}");
        } else if publishing && t >= next_pg {
            pg.stop();
            tokio::time::sleep(Duration::from_secs(5)).await;
            pg.start_again();
            pg_restarts += 1;
            next_pg = t + args.postgres_every;
            event = format!("Postgres restart #{pg_restarts}");
        } else if publishing && t >= next_redis {
            redis.kill();
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.start_again().await;
            redis_restarts += 1;
            next_redis = t + args.redis_every;
            event = format!("Redis kill+restart #{redis_restarts}");
        }
        let drained_check = !publishing;
        if t >= next_sample || !event.is_empty() || drained_check {
            next_sample = t + args.sample_every;
            let backlog = match redis_conn(&redis.url()).await {
                Some(mut c) => backlog(&mut c, &spec, group).await,
                None => None,
            };
            let fresh = pool_at(&pg.url(), SCHEMA).await;
            let dirty = scalar_or(&fresh, "SELECT count(*) FROM analytics_dirty").await;
            let dead = scalar_or(&fresh, "SELECT count(*) FROM dead_letter").await;
            fresh.close().await;
            let pid = writer.0.id();
            let rss = status_mib(pid, "VmRSS:");
            max_rss = max_rss.max(peak_rss_mib(pid));
            max_backlog = max_backlog.max(backlog.unwrap_or(0));
            let h = health(port).await;
            let warns = std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .count();
            let show = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
            println!(
                "{t:>6} {:>10} {:>8} {:>7} {:>5} {rss:>8.1} {h:>16} {warns:>5}  {event}",
                published.load(Ordering::Relaxed),
                backlog.map_or("-".to_owned(), |b| b.to_string()),
                show(dirty),
                show(dead)
            );
            writeln!(
                csv,
                "{t},{},{},{},{},{rss:.1},{h},{warns},{event}",
                published.load(Ordering::Relaxed),
                backlog.map_or(String::new(), |b| b.to_string()),
                show(dirty),
                show(dead)
            )
            .unwrap();
            if drained_check && backlog == Some(0) && dirty == Some(0) {
                break;
            }
            if drained_check && t > args.minutes * 60 + 900 {
                println!("did not drain within 15 minutes after publishing stopped");
                std::process::exit(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let soak_secs = started.elapsed().as_secs();
    drop(writer);

    // Exactness: every minute's workload applied directly into a reference
    // schema, analytics from scratch, compared row for row.
    let verify = Instant::now();
    let reference_pool = pool_at(&pg.url(), "soak_ref").await;
    let rm = ReadModel::new(reference_pool.clone(), "soak_ref");
    for i in 0..args.minutes {
        minute(&args, i)
            .apply_directly(&rm)
            .await
            .expect("direct apply");
    }
    recompute_all_analytics(&reference_pool, "soak_ref").await;
    // The first pool's connections died with the Postgres restarts.
    let pool = pool_at(&pg.url(), SCHEMA).await;
    let diff = differences(&pool, SCHEMA, "soak_ref").await;
    let exact = diff.values().all(|d| *d == 0);
    let dead = scalar_or(&pool, "SELECT count(*) FROM dead_letter")
        .await
        .unwrap_or(-1);

    println!("\n== soak ==");
    println!("machine: {}", machine());
    println!("server: {}", server(&pool).await);
    println!(
        "{} minutes at {} events/s: {} events published, drained {}s after the start",
        args.minutes,
        args.rate,
        published.load(Ordering::Relaxed),
        soak_secs
    );
    println!(
        "survived: {kills} SIGKILLs, {pg_restarts} Postgres restarts, {redis_restarts} Redis kill+restarts"
    );
    println!(
        "max backlog {max_backlog} entries; max peak RSS of a writer process {max_rss:.1} MiB; dead letters {dead}"
    );
    println!(
        "tables exact: {} ({} tables, verified in {:.0}s); samples in {}",
        if exact { "yes" } else { "NO" },
        diff.len(),
        verify.elapsed().as_secs_f64(),
        csv_path.display()
    );
    for (table, d) in diff.iter().filter(|(_, d)| **d != 0) {
        println!("  {table}: {d} rows differ");
    }
    drop(redis);
    drop(pg);
    if !exact {
        std::process::exit(1);
    }
}

async fn scalar_or(pool: &sqlx::PgPool, sql: &'static str) -> Option<i64> {
    tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::query_scalar::<_, i64>(sql).fetch_one(pool),
    )
    .await
    .ok()?
    .ok()
}
