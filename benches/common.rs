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

/// The samples of several processes' metrics added up, key by key (in the
/// order first seen, so histogram buckets stay in order): counters,
/// histograms and sums of all writer processes of a run.
pub fn added_up(texts: &[String]) -> String {
    let mut keys: Vec<&str> = Vec::new();
    let mut totals: std::collections::HashMap<&str, f64> = Default::default();
    for text in texts {
        // The metrics after the HTTP response's head.
        let body = text
            .split_once("\r\n\r\n")
            .map_or(text.as_str(), |(_, b)| b);
        for (key, value) in samples(body, "") {
            *totals.entry(key).or_insert_with(|| {
                keys.push(key);
                0.0
            }) += value;
        }
    }
    keys.iter()
        .map(|k| format!("{k} {}\n", totals[k]))
        .collect()
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
        refresh(
            pool,
            schema,
            Claim::Listed {
                ids: &[],
                age: None,
            },
            chunk,
            true,
        )
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

/// The server and the settings a sync's speed depends on most (ADR 0017):
/// figures from differently configured servers are not comparable.
pub async fn server(pool: &PgPool) -> String {
    match writer::db::ServerSettings::read(pool).await {
        Ok(settings) => settings.to_string(),
        Err(e) => format!("Postgres settings not read: {e}"),
    }
}

pub struct WriterProcess(pub Child);

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rows in PostgreSQL's binary COPY format, for the ceiling measurement: what
/// Postgres can take when nothing but the rows is asked of it.
pub struct CopyRows {
    buf: Vec<u8>,
}

impl Default for CopyRows {
    fn default() -> Self {
        let mut buf = b"PGCOPY\n\xff\r\n\0".to_vec();
        buf.extend(0i32.to_be_bytes()); // flags
        buf.extend(0i32.to_be_bytes()); // header extension
        CopyRows { buf }
    }
}

impl CopyRows {
    pub fn row(&mut self, fields: i16) {
        self.buf.extend(fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.buf.extend((bytes.len() as i32).to_be_bytes());
        self.buf.extend(bytes);
    }

    pub fn null(&mut self) {
        self.buf.extend((-1i32).to_be_bytes());
    }

    pub fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    pub fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    pub fn opt_int8(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    pub fn int2(&mut self, v: i16) {
        self.field(&v.to_be_bytes());
    }

    pub fn opt_text(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn opt_bytea(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => self.field(v),
            None => self.null(),
        }
    }

    /// A non-negative integer given in decimal, as NUMERIC: base-10000
    /// digit groups, most significant first, no trailing zero groups.
    pub fn numeric(&mut self, decimal: &str) {
        let digits = decimal.as_bytes();
        let mut groups: Vec<i16> = Vec::with_capacity(digits.len() / 4 + 1);
        let mut end = digits.len();
        while end > 0 {
            let start = end.saturating_sub(4);
            let group = digits[start..end]
                .iter()
                .fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0'));
            groups.push(group);
            end = start;
        }
        groups.reverse();
        let leading = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..leading);
        let weight = groups.len() as i16 - 1;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        let weight = if groups.is_empty() { 0 } else { weight };
        let mut bytes = Vec::with_capacity(8 + 2 * groups.len());
        bytes.extend((groups.len() as i16).to_be_bytes());
        bytes.extend(weight.to_be_bytes());
        bytes.extend(0i16.to_be_bytes()); // sign: positive
        bytes.extend(0i16.to_be_bytes()); // display scale
        for g in groups {
            bytes.extend(g.to_be_bytes());
        }
        self.field(&bytes);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend((-1i16).to_be_bytes());
        self.buf
    }
}

/// The ceiling: `events` binary-COPYed into the five MultiVault event tables
/// of a fresh schema (no cascade, no conflict handling). Returns the time it
/// took.
pub async fn copy_ceiling(
    events: &[writer::event::ChainEvent<'_>],
    database: &str,
    schema: &str,
) -> Duration {
    use writer::event::EventKind;
    let pool = pool_at(database, schema).await;
    let chain_columns = "transaction_hash, log_index, block_number, block_hash, block_timestamp, \
                         transaction_index, address, network";
    let tables = [
        (
            "atom_created_events",
            "creator, term_id, atom_data, raw_data, atom_wallet",
        ),
        (
            "triple_created_events",
            "creator, term_id, subject_id, predicate_id, object_id, counter_term_id",
        ),
        (
            "deposited_events",
            "sender, receiver, term_id, curve_id, assets, assets_after_fees, shares, total_shares, vault_type",
        ),
        (
            "redeemed_events",
            "sender, receiver, term_id, curve_id, shares, total_shares, assets, fees, vault_type",
        ),
        (
            "share_price_changed_events",
            "term_id, curve_id, share_price, total_assets, total_shares, vault_type",
        ),
    ];
    let mut streams: Vec<CopyRows> = (0..5).map(|_| CopyRows::default()).collect();
    for e in events {
        let table = e.kind.table();
        if table >= 5 {
            continue;
        }
        let rows = &mut streams[table];
        let own = [5i16, 6, 9, 9, 6][table];
        rows.row(8 + own);
        let c = &e.chain;
        rows.text(c.transaction_hash.as_str());
        rows.int8(c.log_index);
        rows.int8(c.block_number);
        rows.text(c.block_hash.as_str());
        rows.opt_int8(c.block_timestamp);
        rows.int8(c.transaction_index);
        rows.text(c.address.as_str());
        rows.text(&c.network);
        match &e.kind {
            EventKind::AtomCreated(a) => {
                rows.text(a.creator.as_str());
                rows.text(a.term_id.as_str());
                rows.opt_text(a.atom_data.text());
                rows.opt_bytea(a.atom_data.raw());
                rows.text(a.atom_wallet.as_str());
            }
            EventKind::TripleCreated(t) => {
                for v in [
                    &t.creator.as_str(),
                    &t.term_id.as_str(),
                    &t.subject_id.as_str(),
                    &t.predicate_id.as_str(),
                    &t.object_id.as_str(),
                    &t.counter_term_id.as_str(),
                ] {
                    rows.text(v);
                }
            }
            EventKind::Deposited(d) => {
                rows.text(d.sender.as_str());
                rows.text(d.receiver.as_str());
                rows.text(d.term_id.as_str());
                for v in [
                    &d.curve_id,
                    &d.assets,
                    &d.assets_after_fees,
                    &d.shares,
                    &d.total_shares,
                ] {
                    rows.numeric(v.as_str());
                }
                rows.int2(d.vault_type.code());
            }
            EventKind::Redeemed(r) => {
                rows.text(r.sender.as_str());
                rows.text(r.receiver.as_str());
                rows.text(r.term_id.as_str());
                for v in [&r.curve_id, &r.shares, &r.total_shares, &r.assets, &r.fees] {
                    rows.numeric(v.as_str());
                }
                rows.int2(r.vault_type.code());
            }
            EventKind::SharePriceChanged(s) => {
                rows.text(s.term_id.as_str());
                for v in [
                    &s.curve_id,
                    &s.share_price,
                    &s.total_assets,
                    &s.total_shares,
                ] {
                    rows.numeric(v.as_str());
                }
                rows.int2(s.vault_type.code());
            }
            EventKind::Generic(_) => {}
        }
    }
    let mut conn = pool.acquire().await.expect("connection");
    let started = std::time::Instant::now();
    for ((table, own), rows) in tables.iter().zip(streams) {
        let statement = format!("COPY {table} ({chain_columns}, {own}) FROM STDIN (FORMAT binary)");
        let mut copy = conn.copy_in_raw(&statement).await.expect("COPY");
        copy.send(rows.finish()).await.expect("COPY data");
        copy.finish().await.expect("COPY end");
    }
    let took = started.elapsed();
    drop(conn);
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
    took
}

/// Where the writer's Postgres backends are, sampled: each sample counts
/// every active or in-transaction backend of `application_name = 'writer'`
/// once, by what it is doing — `CPU` (running or runnable), a wait event
/// (`Lock:advisory`, `IO:DataFileWrite`, …) or `Client` (idle in a
/// transaction: waiting for the writer's next statement) — and in which
/// statement. Time per statement (pg_stat_statements) says what is
/// expensive; this says what the connections wait on, under the real
/// concurrency.
#[derive(Debug, Default)]
pub struct WaitProfile {
    /// (what, statement) → samples.
    counts: BTreeMap<(String, String), u64>,
    samples: u64,
}

impl WaitProfile {
    pub async fn sample(&mut self, pool: &PgPool) {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT CASE WHEN state = 'idle in transaction' THEN 'Client'
                         WHEN wait_event_type IS NULL THEN 'CPU'
                         ELSE wait_event_type || ':' || wait_event END,
                    query
             FROM pg_stat_activity
             WHERE application_name = 'writer' AND datname = current_database()
               AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        self.samples += 1;
        for (what, query) in rows {
            *self.counts.entry((what, statement(&query))).or_default() += 1;
        }
    }

    /// Shares of all backend samples, largest first: by what the
    /// connections did, and by statement.
    pub fn print(&self) {
        let total: u64 = self.counts.values().sum();
        if total == 0 {
            return;
        }
        println!(
            "where the writer's connections were while draining ({} samples, {:.1} busy on average):",
            self.samples,
            total as f64 / self.samples as f64
        );
        for (title, by_statement) in [("doing", false), ("in", true)] {
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for ((what, statement), n) in &self.counts {
                let name = if by_statement { statement } else { what };
                *by.entry(name).or_default() += n;
            }
            let mut shares: Vec<(&str, u64)> = by.into_iter().collect();
            shares.sort_by_key(|s| std::cmp::Reverse(s.1));
            let line: Vec<String> = shares
                .iter()
                .filter(|(_, n)| n * 200 >= total)
                .map(|(k, n)| format!("{k} {:.0} %", 100.0 * *n as f64 / total as f64))
                .collect();
            println!("  {title}: {}", line.join(", "));
        }
    }
}

/// A short name for a statement of the writer (its text as
/// pg_stat_activity shows it: the first kilobyte).
fn statement(query: &str) -> String {
    let named = [
        ("pg_advisory_xact_lock(k)", "term locks"),
        ("pg_advisory_xact_lock_shared", "reorg lock (shared)"),
        // After the two above: `BEGIN; SELECT pg_advisory_xact_lock(<key>)`.
        ("pg_advisory_xact_lock(", "reorg lock (exclusive: a notice)"),
        ("moved AS", "event resolve"),
        ("One primary-key probe per id", "analytics"),
        ("DELETE FROM analytics_dirty", "analytics"),
        (
            "SELECT t.subject_id, t.predicate_id, t.object_id",
            "analytics",
        ),
    ];
    if let Some((_, name)) = named.iter().find(|(text, _)| query.contains(text)) {
        return (*name).to_owned();
    }
    for verb in ["INSERT INTO ", "DELETE FROM ", "UPDATE "] {
        if let Some(at) = query.find(verb) {
            let table: String = query[at + verb.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            return table;
        }
    }
    query
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
