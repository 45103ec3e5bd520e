//! Helpers shared by the bench harnesses.

// Each harness uses a part of these.
#![allow(dead_code)]
// A benchmark whose set-up fails stops there.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sqlx::{AssertSqlSafe, PgPool};
use testkit::workload::{Spec, Workload};
use writer::analytics::{Claim, refresh};
use writer::apply::ReadModel;
use writer::config::{DatabaseConfig, Secret};

#[path = "../tests/it/support/private.rs"]
pub mod private;

pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL.to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| REDIS_URL.to_owned())
}

pub async fn pool(schema: &str) -> PgPool {
    pool_at(&database_url(), schema).await
}

pub async fn pool_at(database: &str, schema: &str) -> PgPool {
    let config = DatabaseConfig {
        url: Secret::new(database),
        schema: writer::schema::Schema::parse(schema).expect("a bench schema name"),
        pool_size: 4,
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: Duration::ZERO,
        ..DatabaseConfig::default()
    };
    let pool = writer::db::pool(&config).expect("pool");
    writer::migrate::run(&pool, &config.schema)
        .await
        .expect("migrate");
    pool
}

pub async fn publish(
    conn: &mut MultiplexedConnection,
    spec: &Spec,
    entries: &[testkit::workload::Entry],
) {
    let () = spec.xadd(entries).query_async(conn).await.expect("XADD");
}

/// Undelivered + unacknowledged entries over all streams.
pub async fn backlog(conn: &mut MultiplexedConnection, spec: &Spec, group: &str) -> Option<u64> {
    let mut total = 0;
    for s in &spec.streams {
        let info = writer::stream::group_info(conn, s, group).await.ok()??;
        total += info.lag.unwrap_or(u64::MAX / 8) + info.pending;
    }
    Some(total)
}

pub async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Sum of utime+stime (seconds) of processes named `name`.
pub fn cpu_seconds(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|e| stat_cpu_seconds(&e.path().join("stat"), true))
        .sum()
}

pub fn process_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")), false)
}

/// utime + stime (+ the children's, with `children`) from a /proc stat file.
fn stat_cpu_seconds(path: &std::path::Path, children: bool) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // After "(command)": state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let wanted: &[usize] = if children {
        &[11, 12, 13, 14]
    } else {
        &[11, 12]
    };
    let ticks: u64 = wanted
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum();
    ticks as f64 / 100.0 // USER_HZ
}

/// A memory figure of a process from /proc/<pid>/status (`VmHWM:` for the
/// peak resident set, `VmRSS:` for the current one), in MiB.
pub fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident set size of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

pub async fn metrics_text(port: u16) -> String {
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
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// Quantile of a Prometheus histogram, interpolating within the bucket.
pub fn quantile(text: &str, name: &str, q: f64) -> Option<f64> {
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

/// Recomputes every triple's analytics from scratch.
pub async fn recompute_all_analytics(pool: &PgPool, schema: &str) {
    let triples: Vec<String> = sqlx::query_scalar("SELECT term_id FROM triple")
        .fetch_all(pool)
        .await
        .unwrap();
    let ids: Vec<&str> = triples.iter().map(String::as_str).collect();
    for chunk in ids.chunks(5000) {
        refresh(pool, schema, Claim::Listed(&[]), chunk, true)
            .await
            .expect("analytics");
    }
}

/// The reference for workloads: applied directly, analytics from scratch.
pub async fn reference(workloads: &[Workload], database: &str, schema: &str) -> PgPool {
    let pool = pool_at(database, schema).await;
    let rm = ReadModel::new(pool.clone(), schema);
    for workload in workloads {
        workload.apply_directly(&rm).await.expect("direct apply");
    }
    recompute_all_analytics(&pool, schema).await;
    pool
}

/// Rows in one schema's table and not the other's, both ways.
pub async fn differences(pool: &PgPool, a: &str, b: &str) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in testkit::model::TABLES {
        let row = |s: &str| {
            // Where an event was delivered from differs between the writer
            // and a direct application; everything else must not.
            format!(
                "SELECT to_jsonb(t) - 'created_at' - 'updated_at' - 'source_stream' \
                 - 'source_entry_ms' - 'source_entry_seq' FROM \"{s}\".{table} t"
            )
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

pub fn machine() -> String {
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

pub struct WriterProcess(pub Child);

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
