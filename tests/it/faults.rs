//! Failure modes, proven by breaking things on purpose (issue 7): a crash
//! loop, dependency faults, hostile input.

use std::time::Duration;

use testkit::workload::generate;
use writer::decode::decode_payload;

use crate::support::private::{PrivatePostgres, PrivateRedis};
use crate::support::service::{
    Env, Writer, assert_core_exact, assert_exact, eventually, healthy_and_idle,
};

/// 50,000 events; the writer is SIGKILLed at 20 random moments and restarted
/// each time; core and analytics tables end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_twenty_kills() {
    let mut env = Env::new(41, 50_000).await;
    let workload = generate(&env.spec);
    let vars = env.writer_env("w1");
    let busy_kills = env
        .drain_through_kills(&vars, &workload.entries, 20, 41)
        .await;
    assert!(
        busy_kills >= 10,
        "only {busy_kills} of 20 kills hit a busy writer"
    );
    assert_exact(&env.db, &workload).await;
    eprintln!("crash loop: 20 kills ({busy_kills} mid-stream), 50,000 events, tables exact");
}

/// Postgres restarted, Redis killed and restarted (its data kept), the
/// writer's connections terminated server-side, statements timing out
/// behind a lock — all mid-load. The writer survives each without a restart,
/// reports it on /health, and the tables end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_dependency_faults_without_restart() {
    let pg = PrivatePostgres::start();
    let mut redis = PrivateRedis::start().await;
    let mut env = Env::new_at(42, 40_000, &pg.url(), &redis.url()).await;
    let workload = generate(&env.spec);
    let mut vars = env.writer_env("w1");
    vars.insert("DATABASE_ACQUIRE_TIMEOUT_MS".into(), "500".into());
    vars.insert("DATABASE_STATEMENT_TIMEOUT_MS".into(), "1000".into());
    let mut writer = Writer::start(&vars);
    writer.wait_http(Duration::from_secs(30)).await;
    let pid = writer.child.id();

    // Publish in slices between faults, so every fault meets work in flight.
    let slices: Vec<&[testkit::workload::Entry]> = workload
        .entries
        .chunks(workload.entries.len() / 5 + 1)
        .collect();
    env.publish(slices[0]).await;

    // 1. Postgres restarted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop();
    let down = writer.wait_health(503, Duration::from_secs(10)).await;
    assert_eq!(down["postgres_sync_healthy"], false);
    env.publish(slices[1]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();
    writer.wait_health(200, Duration::from_secs(30)).await;
    env.db.reconnect();

    // 2. Redis killed (SIGKILL) and restarted with its append-only file,
    //    rewritten once first (as Redis does by itself as the file grows).
    let _: redis::Value = redis::cmd("BGREWRITEAOF")
        .query_async(&mut env.redis)
        .await
        .unwrap();
    env.publish(&slices[1][..slices[1].len() / 2]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let down = writer.wait_health(503, Duration::from_secs(15)).await;
    assert_eq!(down["redis_consumer_healthy"], false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.start_again().await;
    writer.wait_health(200, Duration::from_secs(30)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    env.redis = testkit::publisher(&client).await.unwrap();
    env.publish(slices[2]).await;

    // 3. The writer's connections terminated from the server side.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'writer' AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert!(terminated > 0, "no writer connection to terminate");
    env.db.reconnect();
    env.publish(slices[3]).await;

    // 4. Statements time out behind a lock held for three seconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut blocker = env.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE position IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    for slice in &slices[4..] {
        env.publish(*slice).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    blocker.rollback().await.unwrap();

    env.wait_drained().await;
    assert!(
        writer.is_running() && writer.child.id() == pid,
        "the writer had to restart"
    );
    let log = writer.log();
    assert!(
        log.contains("statement timeout"),
        "no statement timed out:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    assert_exact(&env.db, &workload).await;
    // Healthy again, and the lag it reports is real: Redis's own counter
    // can stay off by a constant after reloading its append-only file.
    writer
        .wait_health_until(Duration::from_secs(20), healthy_and_idle)
        .await;
    // And Redis's own counter was repaired (its raw XINFO lag is right).
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(300),
        async || {
            let mut raw_lag = 0;
            for s in env.spec.streams.clone() {
                let groups: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&s)
                    .query_async(&mut env.redis)
                    .await
                    .unwrap();
                for g in groups {
                    if let Some(i) = g
                        .iter()
                        .position(|v| *v == redis::Value::BulkString(b"lag".to_vec()))
                    {
                        raw_lag += redis::from_redis_value::<i64>(g[i + 1].clone()).unwrap_or(-1);
                    }
                }
            }
            match raw_lag {
                0 => Ok(()),
                _ => Err(format!("Redis still reports lag {raw_lag}")),
            }
        },
    )
    .await;
    assert_eq!(
        env.db.scalar_i64("SELECT count(*) FROM dead_letter").await,
        0,
        "a fault dead-lettered valid input"
    );
}

/// Hostile entries of every kind, each certain to fail validation.
fn hostile(valid: &[String], n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(n);
    // A value made hostile: (where it starts, what it starts with instead).
    let edits = [
        ("\"termId\":\"", "\"termId\":{\"x\":\"".to_owned()),
        ("\"termId\":", "\"termId\":true,\"y\":".to_owned()),
        (
            "\"assets\":",
            format!("\"assets\":\"0x1{}\",\"y\":", "0".repeat(64)),
        ),
        (
            "\"totalShares\":",
            format!("\"totalShares\":{},\"y\":", "9".repeat(90)),
        ),
        ("\"network\":\"", "\"network\":\"nul\\u0000".to_owned()),
        ("\"vaultType\":", "\"vaultType\":-7,\"y\":".to_owned()),
        (
            "\"block_number\":",
            "\"block_number\":\"0x\",\"y\":".to_owned(),
        ),
        (
            "\"transaction_hash\":\"0x",
            "\"transaction_hash\":\"0xZ".to_owned(),
        ),
        ("\"event_data\":", "\"event_data\":7,\"z\":".to_owned()),
        // About 1 MB of garbage hex in a field.
        (
            "\"termId\":\"",
            format!("\"termId\":\"{}", "zz".repeat(500_000)),
        ),
    ];
    let megabyte = edits.len() - 1;
    while out.len() < n {
        let base = &valid[rng.usize(..valid.len())];
        // 0–9 an edit (the megabyte one only a few times in 10,000), 10–12
        // broken bytes or nesting, the rest cut in half.
        let candidate: Vec<u8> = match usize::from(rng.u8(..14)) {
            i if i < megabyte || (i == megabyte && out.len() % 500 == 7) => {
                let (from, to) = &edits[i];
                base.replacen(from, to, 1).into_bytes()
            }
            10 => {
                let mut b = base.clone().into_bytes();
                let at = rng.usize(..b.len());
                b.insert(at, 0);
                b
            }
            11 => {
                let mut b = base.clone().into_bytes();
                b.extend_from_slice(&[0xff, 0xfe, 0xc3]);
                b
            }
            12 => format!(
                "{{\"event_name\":\"Deposited\",\"event_data\":{}{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            )
            .into_bytes(),
            _ => base.as_bytes()[..base.len() / 2].to_vec(),
        };
        // Only what really fails validation counts as hostile here.
        let d = decode_payload(&candidate);
        if !d.errors.is_empty() {
            out.push(candidate);
        }
    }
    out
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// 10,000 hostile messages among valid ones, through a running writer: every
/// hostile one dead-lettered, every valid one applied, memory bounded, the
/// service healthy throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_messages() {
    let mut env = Env::new(43, 5_000).await;
    let workload = generate(&env.spec);
    let valid: Vec<String> = workload.entries.iter().map(|e| e.payload.clone()).collect();
    let hostile = hostile(&valid, 10_000, 43);
    let writer = Writer::start(&env.writer_env("w1"));
    writer.wait_health(200, Duration::from_secs(30)).await;

    let mut rng = fastrand::Rng::with_seed(43);
    let mut pending_valid = workload.entries.as_slice();
    let mut hostile_left = hostile.as_slice();
    while !hostile_left.is_empty() || !pending_valid.is_empty() {
        let take = rng.usize(1..40).min(pending_valid.len());
        env.publish(&pending_valid[..take]).await;
        pending_valid = &pending_valid[take..];
        let n = rng.usize(1..200).min(hostile_left.len());
        if n == 0 {
            continue;
        }
        let mut pipe = redis::pipe();
        for h in &hostile_left[..n] {
            pipe.cmd("XADD")
                .arg(&env.spec.streams[rng.usize(..5)])
                .arg("*")
                .arg("payload")
                .arg(h.as_slice())
                .ignore();
        }
        let () = pipe.query_async(&mut env.redis).await.unwrap();
        hostile_left = &hostile_left[n..];
        let (code, _) = writer.get("/health", None).await.expect("health answers");
        assert_eq!(code, 200, "unhealthy under hostile input");
    }
    env.wait_drained().await;
    let (code, body) = writer.get("/health", None).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        env.db.scalar_i64("SELECT count(*) FROM dead_letter").await,
        hostile.len() as i64
    );
    assert_core_exact(&env.db, &workload).await;
    let rss = peak_rss_mib(writer.child.id());
    assert!(rss < 200.0, "peak RSS {rss:.0} MiB");
    eprintln!(
        "hostile: {} messages dead-lettered, peak RSS {rss:.1} MiB",
        hostile.len()
    );
}
