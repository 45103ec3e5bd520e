//! What an operator sees (issue 13): entries lost from a stream before the
//! group read them, `starting` before readiness, progress lines.

use std::time::Duration;

use testkit::workload::generate;

use crate::support::proxy::Proxy;
use crate::support::service::{Env, Writer, eventually, healthy_and_idle, json_body};

/// The `writer_stream_entries_lost_total` sample of `stream` (None if absent).
async fn lost_metric(writer: &Writer, stream: &str) -> Option<u64> {
    let (_, text) = writer.get("/metrics", None).await?;
    let prefix = format!("writer_stream_entries_lost_total{{stream=\"{stream}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn xlen(env: &mut Env, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut env.redis)
        .await
        .unwrap()
}

async fn trim(env: &mut Env, stream: &str, maxlen: u64) {
    let _: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(maxlen)
        .query_async(&mut env.redis)
        .await
        .unwrap();
}

/// Entries trimmed after the group read them are no loss; a healthy run
/// reports none; unread entries trimmed while the writer runs are counted
/// exactly once, /health names the stream, the log says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_entries_trimmed_while_running_are_reported() {
    let mut env = Env::new(61, 1_000).await;
    let (writer, workload) = env.consume_workload(&env.writer_env("w1")).await;
    writer
        .wait_health_until(Duration::from_secs(20), healthy_and_idle)
        .await;

    // Read, then trimmed (what MAXLEN does to a stream that is kept up with).
    for s in env.spec.streams.clone() {
        trim(&mut env, &s, 0).await;
    }
    tokio::time::sleep(Duration::from_millis(4500)).await; // two looks
    let h = writer
        .wait_health_until(Duration::from_secs(10), healthy_and_idle)
        .await;
    for s in &env.spec.streams {
        assert_eq!(h["streams"][s]["lost"], 0, "{h}");
        assert_eq!(lost_metric(&writer, s).await, Some(0), "{s}");
    }
    assert!(!writer.log().contains("removed from the stream before"));

    // 50 entries added and all but 5 trimmed before the writer could read
    // them: one MULTI, so the reader cannot come in between. Payloads of
    // entries applied before: re-applying them changes nothing.
    let stream = env.spec.streams[2].clone();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for e in workload.entries.iter().filter(|e| e.stream == 2).take(50) {
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(e.field)
            .arg(&e.payload)
            .ignore();
    }
    pipe.cmd("XTRIM").arg(&stream).arg("MAXLEN").arg(5).ignore();
    let () = pipe.query_async(&mut env.redis).await.unwrap();

    let h = writer
        .wait_health_until(Duration::from_secs(15), |h| h["status"] == "degraded")
        .await;
    assert_eq!(h["streams"][&stream]["lost"], 45, "{h}");
    let reasons = h["reasons"].to_string();
    assert!(reasons.contains(&stream) && reasons.contains("45"), "{h}");
    assert_eq!(lost_metric(&writer, &stream).await, Some(45));
    // Counted once: later looks find nothing more.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(lost_metric(&writer, &stream).await, Some(45));
    let log = writer.log();
    assert_eq!(
        log.matches("removed from the stream before the writer read them")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("re-index this network with rindexer from block"));
}

/// Entries trimmed while no writer runs are found at start, before the
/// writer reads on past the gap; a second writer process and a restart do
/// not count them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_entries_trimmed_while_down_are_reported_once() {
    let mut env = Env::new(62, 2_000).await;
    let workload = generate(&env.spec);
    let half = workload.entries.len() / 2;
    let vars = env.writer_env("w1");
    let mut writer = Writer::start(&vars);
    env.publish(&workload.entries[..half]).await;
    env.wait_drained().await;
    writer.signal("TERM");
    assert_eq!(
        writer
            .wait_exit(Duration::from_secs(15))
            .await
            .unwrap()
            .code(),
        Some(0)
    );

    env.publish(&workload.entries[half..]).await;
    let stream = env.spec.streams[1].clone();
    let unread = xlen(&mut env, &stream).await
        - workload.entries[..half]
            .iter()
            .filter(|e| e.stream == 1)
            .count() as u64;
    assert!(unread > 10, "too few entries to trim: {unread}");
    // Keep the 3 newest: every trimmed entry from the second half is unread.
    let before = xlen(&mut env, &stream).await;
    trim(&mut env, &stream, 3).await;
    let expected = unread - 3;
    assert!(before - 3 >= expected);

    let writer = Writer::start(&vars);
    let h = writer
        .wait_health_until(Duration::from_secs(30), |h| {
            h["streams"][&stream]["lost"].as_u64().unwrap_or(0) > 0
        })
        .await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["streams"][&stream]["lost"], expected, "{h}");
    assert!(h["reasons"].to_string().contains(&stream), "{h}");
    assert_eq!(lost_metric(&writer, &stream).await, Some(expected));
    for s in env.spec.streams.iter().filter(|s| **s != stream) {
        assert_eq!(h["streams"][s]["lost"], 0, "{h}");
    }
    // A second process on the same group does not count it again.
    let mut other_vars = env.writer_env("w2");
    other_vars.insert("DATABASE_POOL_SIZE".into(), "4".into());
    let other = Writer::start(&other_vars);
    other.wait_health(200, Duration::from_secs(20)).await;
    env.wait_drained().await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(lost_metric(&other, &stream).await, Some(0));
    assert_eq!(lost_metric(&writer, &stream).await, Some(expected));
    drop(writer);
    drop(other);
    // Nor does a restart.
    let again = Writer::start(&vars);
    let h = again
        .wait_health_until(Duration::from_secs(20), healthy_and_idle)
        .await;
    assert_eq!(h["streams"][&stream]["lost"], 0, "{h}");
}

/// /health answers 503 `starting` until migrations ran and the groups are
/// joined, then 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_until_ready() {
    let env = Env::new(63, 10).await;
    let proxy = Proxy::to_postgres(&env.db.url).await;
    proxy.cut();
    let writer = Writer::start(&env.writer_env_through(&proxy, "w1"));
    let h = writer.wait_health(503, Duration::from_secs(20)).await;
    assert_eq!(h["status"], "starting", "{h}");
    assert_eq!(h["healthy"], false, "{h}");
    assert!(
        h["reasons"][0].as_str().unwrap().starts_with("starting"),
        "{h}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(writer.get("/health", None).await.unwrap().0, 503);
    proxy.restore();
    let h = writer.wait_health(200, Duration::from_secs(20)).await;
    assert_ne!(h["status"], "starting", "{h}");
    assert!(
        writer
            .log()
            .contains("ready: schema current, consumer groups joined")
    );
}

/// One progress line per interval while events are applied; none while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_under_load_and_none_while_idle() {
    let mut env = Env::new(64, 5_000).await;
    let workload = generate(&env.spec);
    let mut vars = env.writer_env("w1");
    vars.insert("PROGRESS_LOG_INTERVAL_MS".into(), "300".into());
    vars.insert("LOG_LEVEL".into(), "info".into());
    let writer = Writer::start(&vars);
    writer.wait_health(200, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let progress = |log: &str| log.matches("progress: ").count();
    assert_eq!(progress(&writer.log()), 0, "idle before any input");
    env.publish(&workload.entries).await;
    env.wait_drained().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = writer.log();
    let line = log
        .lines()
        .find(|l| l.contains("progress: ") && l.contains("events applied ("))
        .unwrap_or_else(|| panic!("no progress line:\n{log}"));
    for part in [
        "entries acknowledged",
        "stream lag",
        "analytics backlog",
        "dead letters",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    let lines = progress(&log);
    tokio::time::sleep(Duration::from_millis(1500)).await; // five idle intervals
    assert_eq!(progress(&writer.log()), lines, "progress logged while idle");
}

/// A stream deleted (or evicted) with entries the group had not read yet,
/// then created again: the undelivered entries of the last look are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_stream_is_reported() {
    let mut env = Env::new(65, 8_000).await;
    let workload = generate(&env.spec);
    let proxy = Proxy::to_postgres(&env.db.url).await;
    let writer = Writer::start(&env.writer_env_through(&proxy, "w1"));
    writer.wait_health(200, Duration::from_secs(20)).await;
    // Postgres away: the writer stops reading with its workers' batches in
    // flight, and the rest of the stream waits undelivered.
    proxy.cut();
    let stream = env.spec.streams[0].clone();
    let entries: Vec<_> = workload
        .entries
        .iter()
        .filter(|e| e.stream == 0)
        .take(250)
        .cloned()
        .collect();
    assert_eq!(entries.len(), 250);
    env.publish(&entries).await;
    let lag_of = |h: &serde_json::Value| h["streams"][&stream]["lag"].as_u64().unwrap_or(0);
    let mut last = 0;
    // Settled: two looks, one refresh (two seconds) apart, agree.
    let lag = eventually(
        Duration::from_secs(30),
        Duration::from_millis(2500),
        async || {
            let (_, body) = writer.get("/health", None).await.unwrap();
            let lag = lag_of(&json_body(&body));
            if lag > 0 && lag == last {
                return Ok(lag);
            }
            last = lag;
            Err(format!("lag never settled: {body}"))
        },
    )
    .await;
    let _: u64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut env.redis)
        .await
        .unwrap();
    env.publish(&entries[..1]).await;
    let h = eventually(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            let (_, body) = writer.get("/health", None).await.unwrap();
            let h = json_body(&body);
            match h["streams"][&stream]["lost"].as_u64().unwrap_or(0) {
                0 => Err(format!("nothing lost yet: {h}")),
                _ => Ok(h),
            }
        },
    )
    .await;
    assert_eq!(h["streams"][&stream]["lost"], lag, "{h}");
    assert!(
        h["reasons"].to_string().contains("deleted or evicted"),
        "{h}"
    );
    assert_eq!(lost_metric(&writer, &stream).await, Some(lag));
    proxy.restore();
    writer.wait_health(200, Duration::from_secs(30)).await;
}
