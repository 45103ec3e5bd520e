//! Operating the writer: /health, /metrics, admin auth, graceful shutdown,
//! schema isolation, secrets, logs, documentation (issue 5).

use std::time::{Duration, Instant};

use testkit::workload::generate;

use crate::support::TestDb;
use crate::support::private::{PrivatePostgres, RedisProcess};
use crate::support::proxy::Proxy;
use crate::support::service::{
    Env, Writer, assert_core_exact, eventually, free_port, healthy_and_idle, json_body, poll,
    redis_url, writer_once,
};

/// /health is 200 with every field; Postgres unreachable makes it 503
/// within seconds, and it returns to 200 after Postgres does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_postgres() {
    let mut env = Env::new(31, 500).await;
    let proxy = Proxy::to_postgres(&env.db.url).await;
    let (writer, _) = env
        .consume_workload(&env.writer_env_through(&proxy, "w1"))
        .await;

    // Stream figures are refreshed every two seconds.
    let health = writer
        .wait_health_until(Duration::from_secs(15), healthy_and_idle)
        .await;
    for field in [
        "healthy",
        "status",
        "postgres_sync_healthy",
        "redis_consumer_healthy",
        "analytics_worker_healthy",
        "circuit_breaker_closed",
        "last_check",
        "counters",
        "streams",
    ] {
        assert!(health.get(field).is_some(), "{field} missing: {health}");
    }
    assert!(health["counters"]["events_applied"].as_u64().unwrap() > 0);

    proxy.cut();
    let cut_at = Instant::now();
    let down = writer.wait_health(503, Duration::from_secs(10)).await;
    assert!(
        cut_at.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        cut_at.elapsed()
    );
    assert_eq!(down["postgres_sync_healthy"], false);
    assert_eq!(down["status"], "unhealthy");
    proxy.restore();
    let up = writer.wait_health(200, Duration::from_secs(15)).await;
    assert_eq!(up["postgres_sync_healthy"], true);
}

/// /metrics carries every metric family after a workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_every_stage() {
    let mut env = Env::new(32, 2_000).await;
    env.publish_raw(2, &[("payload", b"not json")]).await;
    let (writer, _) = env.consume_workload(&env.writer_env("w1")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // one refresh of polled gauges
    let (code, text) = writer.get("/metrics", None).await.unwrap();
    assert_eq!(code, 200);
    for family in [
        "writer_events_applied_total{event_type=\"Deposited\"}",
        "writer_events_applied_total{event_type=\"AtomCreated\"}",
        "writer_events_failed_total{event_type=\"undecodable\"}",
        "writer_stage_seconds_bucket{stage=\"decode\"",
        "writer_stage_seconds_bucket{stage=\"apply\"",
        "writer_stage_seconds_bucket{stage=\"commit\"",
        "writer_stage_seconds_bucket{stage=\"ack\"",
        "writer_batch_events_bucket",
        "writer_end_to_end_seconds_bucket",
        "writer_stream_lag{stream=",
        "writer_stream_pending{stream=",
        "writer_db_pool_size",
        "writer_db_pool_idle",
        "writer_db_pool_in_use",
        "writer_db_acquire_seconds_bucket",
        "writer_analytics_backlog",
        "writer_analytics_batch_seconds_bucket",
        "writer_dead_letters_total",
        "writer_circuit_open",
        "writer_entries_acked_total",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
}

/// SIGTERM while a large workload is consumed: exit 0 within the timeout;
/// a fresh start finishes the stream; tables exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_and_doubles_nothing() {
    let mut env = Env::new(33, 30_000).await;
    let workload = env.publish_workload().await;
    let vars = env.writer_env("w1");
    let mut writer = Writer::start(&vars);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(10),
        async || match env
            .db
            .scalar_i64("SELECT count(*) FROM deposited_events")
            .await
        {
            applied if applied >= 500 => Ok(()),
            applied => Err(format!("only {applied} deposits applied")),
        },
    )
    .await;
    writer.signal("TERM");
    let signalled = Instant::now();
    let status = writer
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited within SHUTDOWN_TIMEOUT_MS");
    assert_eq!(status.code(), Some(0), "{}", writer.log());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(
        env.backlog().await.unwrap() > 0,
        "shutdown came too late to prove anything"
    );
    assert!(writer.log().contains("in-flight batches finished"));

    let _again = Writer::start(&vars);
    env.wait_drained().await;
    assert_core_exact(&env.db, &workload).await;
}

/// A second signal exits at once, even when the first shutdown is stuck
/// waiting for an unreachable Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut env = Env::new(34, 3_000).await;
    let proxy = Proxy::to_postgres(&env.db.url).await;
    let mut vars = env.writer_env_through(&proxy, "w1");
    vars.insert("SHUTDOWN_TIMEOUT_MS".into(), "60000".into());
    let mut writer = Writer::start(&vars);
    writer.wait_http(Duration::from_secs(20)).await;
    env.publish_workload().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        writer.is_running(),
        "shutdown should be waiting for Postgres"
    );
    writer.signal("TERM");
    let status = writer
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("second signal exits at once");
    assert_eq!(status.code(), Some(130));
}

/// Admin endpoints: 404 without ADMIN_TOKEN; 401 without or with a wrong
/// token; 200 with the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token() {
    let env = Env::new(35, 10).await;
    let open = Writer::start(&env.writer_env("w1"));
    open.wait_http(Duration::from_secs(20)).await;
    assert_eq!(open.get("/admin/status", None).await.unwrap().0, 404);
    assert_eq!(
        open.get("/admin/status", Some("anything-at-all-123"))
            .await
            .unwrap()
            .0,
        404
    );
    drop(open);

    let token = "correct-horse-battery-staple";
    let mut vars = env.writer_env("w2");
    vars.insert("ADMIN_TOKEN".into(), token.into());
    let guarded = Writer::start(&vars);
    guarded.wait_http(Duration::from_secs(20)).await;
    for path in ["/admin/status", "/admin/dead-letters"] {
        assert_eq!(guarded.get(path, None).await.unwrap().0, 401, "{path}");
        assert_eq!(
            guarded
                .get(path, Some("wrong-token-wrong-token"))
                .await
                .unwrap()
                .0,
            401,
            "{path}"
        );
        assert_eq!(
            guarded.get(path, Some(token)).await.unwrap().0,
            200,
            "{path}"
        );
    }
    let (_, body) = guarded.get("/admin/status", Some(token)).await.unwrap();
    let status = json_body(&body);
    assert!(status["pool"]["max"].as_u64().is_some(), "{status}");
    assert!(!body.contains(token), "the token itself is never shown");
    // Health and metrics stay open.
    guarded.wait_health(200, Duration::from_secs(20)).await;
    assert_eq!(guarded.get("/metrics", None).await.unwrap().0, 200);
}

/// No password from DATABASE_URL or REDIS_URL appears in logs, errors,
/// /health, /metrics, admin output or check-config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_leak() {
    let (db_secret, redis_secret, token) = (
        "pg-Secret-4711",
        "redis-Secret-0815",
        "admin-token-for-the-test",
    );
    let port = free_port();
    let dir = std::env::temp_dir();
    let _redis = RedisProcess::start(
        port,
        &[
            "--port",
            &port.to_string(),
            "--requirepass",
            redis_secret,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .await;
    let env = Env::new(36, 500).await;
    let workload = generate(&env.spec);
    let redis_url = format!("redis://:{redis_secret}@127.0.0.1:{port}");
    let client = writer::redis_client::open(&redis_url, &Default::default()).unwrap();
    let mut conn = testkit::publisher(&client).await.unwrap();
    let () = env
        .spec
        .xadd(&workload.entries)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&env.spec.streams[2])
        .arg("*")
        .arg("payload")
        .arg("{broken")
        .query_async(&mut conn)
        .await
        .unwrap();

    // Trust auth ignores the password, so the writer connects with it.
    let proxy = Proxy::to_postgres(&env.db.url).await;
    let mut vars = env.writer_env_through(&proxy, "w1");
    let with_password =
        env.db
            .url
            .replacen("://postgres@", &format!("://postgres:{db_secret}@"), 1);
    vars.insert("DATABASE_URL".into(), proxy.database_url(&with_password));
    vars.insert("REDIS_URL".into(), redis_url.clone());
    vars.insert("ADMIN_TOKEN".into(), token.into());
    vars.insert("LOG_LEVEL".into(), "debug".into());
    vars.insert("DATABASE_ACQUIRE_TIMEOUT_MS".into(), "300".into());
    let writer = Writer::start(&vars);
    writer.wait_http(Duration::from_secs(20)).await;
    let dead_lettered = async || match env.db.scalar_i64("SELECT count(*) FROM dead_letter").await {
        0 => Err("nothing dead-lettered".to_owned()),
        _ => Ok(()),
    };
    poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        dead_lettered,
    )
    .await
    .unwrap_or_else(|seen| writer.fail_with_log(seen));
    // Errors on purpose: Postgres away for a moment.
    proxy.cut();
    let (_, unhealthy) = writer.get("/health", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut seen = vec![writer.log(), unhealthy];
    for path in [
        "/health",
        "/metrics",
        "/admin/status",
        "/admin/dead-letters",
    ] {
        seen.push(writer.get(path, Some(token)).await.unwrap().1);
    }
    let check = writer_once(&["check-config"], &vars);
    seen.extend([check.stdout, check.stderr]);
    let mut bad = vars.clone();
    bad.insert("BATCH_SIZE".into(), "zero".into());
    bad.insert(
        "DATABASE_URL".into(),
        format!("postgresql://u:{db_secret}@[broken"),
    );
    let failed = writer_once(&["check-config"], &bad);
    assert_eq!(failed.code, Some(2));
    seen.push(failed.stderr);

    assert!(
        seen[0].contains("Postgres is failing") || seen[0].contains("retrying"),
        "no error was logged"
    );
    for (i, text) in seen.iter().enumerate() {
        for secret in [db_secret, redis_secret, token] {
            assert!(
                !text.contains(secret),
                "secret {secret} leaked in output #{i}:\n{text}"
            );
        }
    }
}

/// Two writers on two schemas of one database, each with its own streams,
/// stay fully separate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schemas_stay_separate() {
    let mut a = Env::new(37, 2_000).await;
    let mut b = Env::new(38, 2_500).await;
    let _writer_a = Writer::start(&a.writer_env("a"));
    let _writer_b = Writer::start(&b.writer_env("b"));
    let wa = a.publish_workload().await;
    let wb = b.publish_workload().await;
    a.wait_drained().await;
    b.wait_drained().await;
    assert_core_exact(&a.db, &wa).await;
    assert_core_exact(&b.db, &wb).await;
    // Each schema holds only its own workload.
    let (na, nb) = (
        a.db.scalar_i64("SELECT count(*) FROM term").await,
        b.db.scalar_i64("SELECT count(*) FROM term").await,
    );
    assert!(na > 0 && nb > 0 && na != nb);
}

/// At start the writer logs the server settings a sync's speed depends on,
/// as the server reports them, with a hint naming exactly those below what
/// a sync wants: read from real servers, the suite's and one of our own set
/// below, across and at the marks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logs_the_settings_a_sync_depends_on() {
    use sqlx::Connection;

    /// The writer's "postgres server" line against `env`'s database.
    async fn server_line(env: &Env) -> String {
        let writer = Writer::start(&env.writer_env("w1"));
        let line = poll(
            Duration::from_secs(20),
            Duration::from_millis(50),
            async || {
                writer
                    .log()
                    .lines()
                    .find(|l| l.contains("postgres server version="))
                    .map(str::to_owned)
                    .ok_or_else(|| "no postgres server line".to_owned())
            },
        )
        .await;
        line.unwrap_or_else(|seen| writer.fail_with_log(seen))
    }

    // The suite's server, whatever it is set to: the values it reports.
    let env = Env::new(40, 10).await;
    let line = server_line(&env).await;
    let shown = env
        .db
        .rows("SELECT current_setting('shared_buffers') || ' ' || current_setting('max_wal_size')")
        .await
        .remove(0);
    let (buffers, wal) = shown.split_once(' ').unwrap();
    assert!(
        line.contains(&format!("shared_buffers={buffers} max_wal_size={wal}")),
        "{line}"
    );

    // A server of our own. `-c` options on its command line would override
    // ALTER SYSTEM; PrivatePostgres sets neither of these two.
    let pg = PrivatePostgres::start();
    let set = async |sql: &'static str| {
        let mut admin = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
        sqlx::raw_sql(sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    // Buffers below the mark (set: initdb may pick less than 128MB), WAL at it.
    set("ALTER SYSTEM SET shared_buffers = '128MB'").await;
    set("ALTER SYSTEM SET max_wal_size = '4GB'").await;
    pg.stop();
    pg.start_again();
    let env = Env::new_at(40, 10, &pg.url(), &redis_url()).await;
    let line = server_line(&env).await;
    assert!(
        line.contains("shared_buffers=128MB max_wal_size=4GB"),
        "{line}"
    );
    assert!(
        line.contains("hint=") && line.contains("shared_buffers to 1GB or more"),
        "{line}"
    );
    assert!(!line.contains("max_wal_size to"), "{line}");

    // Both at the mark: no hint. (1GB of buffers is reserved, not touched.)
    set("ALTER SYSTEM SET shared_buffers = '1GB'").await;
    pg.stop();
    pg.start_again();
    let line = server_line(&env).await;
    assert!(
        line.contains("shared_buffers=1GB max_wal_size=4GB"),
        "{line}"
    );
    assert!(!line.contains("hint="), "{line}");
}

/// LOG_FORMAT=json writes one JSON object per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs() {
    let env = Env::new(39, 10).await;
    let mut vars = env.writer_env("w1");
    vars.insert("LOG_FORMAT".into(), "json".into());
    let writer = Writer::start(&vars);
    writer.wait_http(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = writer.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
}

/// Every metric the alert rules and the Grafana dashboard query is one the
/// writer emits: a renamed metric must not leave a silent panel or an alert
/// that can never fire.
#[test]
fn deploy_files_query_only_emitted_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap();
    fn rust_sources(dir: &std::path::Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut source = String::new();
    rust_sources(&std::path::Path::new(root).join("src"), &mut source);
    let mut queried = std::collections::BTreeSet::new();
    for file in ["deploy/alerts.yml", "deploy/grafana/dashboards/writer.json"] {
        let text = read(file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("writer_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            queried.insert(family.to_owned());
        }
    }
    assert!(queried.len() >= 10, "found only {queried:?}");
    for family in &queried {
        assert!(
            source.contains(&format!("\"{family}\"")),
            "{family} is queried in deploy/ but the writer never emits it"
        );
    }
}

/// Test schemas do not outlive their test.
#[tokio::test]
async fn test_schemas_are_dropped() {
    let schema = {
        let db = TestDb::new().await;
        db.schema.clone()
    };
    let db = TestDb::new().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(&schema)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}
