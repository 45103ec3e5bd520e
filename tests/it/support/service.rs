//! Running the writer as a process against a private schema and private
//! streams, publishing workloads, and waiting for it to drain.

use super::CleanEnv;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use testkit::model::Model;
use testkit::workload::{Spec, Workload};
use writer::config::RedisTls;
use writer::event::ChainEvent;

use super::db::{TestDb, database_url, unique_name};
pub use super::private::free_port;
use super::proxy::Proxy;

/// How long a test waits for a writer to drain its streams: the largest
/// workloads (50,000 events, killed and restarted, under coverage
/// instrumentation) need about a minute.
pub const DRAIN: Duration = Duration::from_secs(180);

/// Polls `probe` every `every` until it returns `Ok`; once `within` has
/// passed, the probe's last `Err`: what is not so yet.
pub async fn poll<T>(
    within: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(done) => return Ok(done),
            Err(seen) if started.elapsed() >= within => {
                return Err(format!("{seen} (after {within:?})"));
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// [`poll`], failing the test with what is not so yet.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    poll(within, every, probe)
        .await
        .unwrap_or_else(|seen| panic!("{seen}"))
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A schema, five streams and a consumer group of one test's own.
pub struct Env {
    pub db: TestDb,
    pub group: String,
    pub spec: Spec,
    pub redis: MultiplexedConnection,
    pub redis_url: String,
}

impl Env {
    pub async fn new(seed: u64, events: usize) -> Env {
        Env::new_at(seed, events, &database_url(), &redis_url()).await
    }

    /// An environment for a workload of `spec` (its streams get this
    /// test's prefix).
    pub async fn for_spec(spec: Spec) -> Env {
        Env::with_spec_at(spec, &database_url(), &redis_url(), &RedisTls::default()).await
    }

    /// An environment on other servers (private ones that a test breaks).
    pub async fn new_at(seed: u64, events: usize, database: &str, redis_url: &str) -> Env {
        Env::new_with_tls(seed, events, database, redis_url, &RedisTls::default()).await
    }

    /// An environment on a Redis reached with `tls` (a `rediss://` URL).
    pub async fn new_with_tls(
        seed: u64,
        events: usize,
        database: &str,
        redis_url: &str,
        tls: &RedisTls,
    ) -> Env {
        Env::with_spec_at(Spec::new(seed, events), database, redis_url, tls).await
    }

    async fn with_spec_at(spec: Spec, database: &str, redis_url: &str, tls: &RedisTls) -> Env {
        let prefix = format!("{}_", unique_name("s"));
        let spec = spec.with_stream_prefix(&prefix);
        let client = writer::redis_client::open(redis_url, tls).unwrap();
        let redis = testkit::publisher(&client).await.unwrap();
        Env {
            db: TestDb::new_at(database).await,
            group: format!("{prefix}group"),
            spec,
            redis,
            redis_url: redis_url.to_owned(),
        }
    }

    pub fn streams(&self) -> String {
        self.spec.streams.join(",")
    }

    /// Environment for a writer process on this test's schema and streams.
    pub fn writer_env(&self, consumer: &str) -> HashMap<String, String> {
        let pairs = [
            ("DATABASE_URL", self.db.url.clone()),
            ("DATABASE_SCHEMA", self.db.schema.clone()),
            ("DATABASE_POOL_SIZE", "6".to_owned()),
            ("REDIS_URL", self.redis_url.clone()),
            ("REDIS_STREAMS", self.streams()),
            ("CONSUMER_GROUP", self.group.clone()),
            ("CONSUMER_NAME", consumer.to_owned()),
            ("HTTP_HOST", "127.0.0.1".to_owned()),
            ("HTTP_PORT", free_port().to_string()),
            ("BATCH_SIZE", "100".to_owned()),
            ("BATCH_TIMEOUT_MS", "20".to_owned()),
            ("CLAIM_IDLE_MS", "1000".to_owned()),
            ("CLAIM_INTERVAL_MS", "250".to_owned()),
            ("ANALYTICS_SWEEP_INTERVAL_MS", "200".to_owned()),
            ("MIN_BATCH_INTERVAL_MS", "0".to_owned()),
            ("RETRY_BASE_DELAY_MS", "20".to_owned()),
            ("RETRY_MAX_DELAY_MS", "500".to_owned()),
            ("SHUTDOWN_TIMEOUT_MS", "10000".to_owned()),
            ("LOG_LEVEL", "info,writer=debug".to_owned()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// [`Env::writer_env`] with some settings overridden.
    pub fn writer_env_with(
        &self,
        consumer: &str,
        overrides: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let mut vars = self.writer_env(consumer);
        vars.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        vars
    }

    /// Writer settings with Postgres reached through `proxy` (which a test
    /// can cut).
    pub fn writer_env_through(&self, proxy: &Proxy, consumer: &str) -> HashMap<String, String> {
        let mut vars = self.writer_env(consumer);
        vars.insert("DATABASE_URL".into(), proxy.database_url(&self.db.url));
        vars.insert("DATABASE_ACQUIRE_TIMEOUT_MS".into(), "500".into());
        vars
    }

    /// Publishes `entries` in `kills` slices and, before each slice is
    /// done, SIGKILLs the writer started for it after a random 100–600 ms
    /// (so every kill can hit a writer with work in hand, however fast it
    /// drains); then one last writer drains everything. Returns how many
    /// kills hit a writer with work outstanding.
    pub async fn drain_through_kills(
        &mut self,
        vars: &HashMap<String, String>,
        entries: &[testkit::workload::Entry],
        kills: u32,
        seed: u64,
    ) -> u32 {
        // Each kill may hit the same page of pending entries (a slow start,
        // as under coverage instrumentation, makes it likely; the reader's
        // lookahead holds several batches): the kills must not make an entry
        // look like poison by its delivery count alone.
        let mut vars = vars.clone();
        vars.entry("MAX_DELIVERIES".into())
            .or_insert_with(|| (kills + 10).to_string());
        let vars = &vars;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut slices = entries.chunks(entries.len().div_ceil(kills.max(1) as usize).max(1));
        let (mut done, mut busy) = (0, 0);
        while done < kills {
            if let Some(slice) = slices.next() {
                self.publish(slice).await;
            }
            let mut writer = Writer::start(vars);
            tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
            let backlog = self.backlog().await.unwrap_or(u64::MAX);
            if writer.is_running() {
                writer.signal("KILL");
                writer
                    .wait_exit(Duration::from_secs(5))
                    .await
                    .expect("killed");
                done += 1;
                busy += u32::from(backlog > 0);
            }
        }
        for slice in slices {
            self.publish(slice).await;
        }
        let _last = Writer::start(vars);
        self.wait_drained().await;
        busy
    }

    /// The usual run: a writer started with `vars`, this environment's
    /// workload published to it, everything drained.
    pub async fn consume_workload(&mut self, vars: &HashMap<String, String>) -> (Writer, Workload) {
        let writer = Writer::start(vars);
        let workload = self.publish_workload().await;
        self.wait_drained().await;
        (writer, workload)
    }

    /// XADDs the workload generated for this environment's spec; returns it.
    pub async fn publish_workload(&mut self) -> Workload {
        let workload = testkit::workload::generate(&self.spec);
        self.publish(&workload.entries).await;
        workload
    }

    /// Creates the group on `stream` and has a consumer `ghost` read up to
    /// `count` entries that it never acknowledges: a consumer that died.
    pub async fn ghost_reads(&mut self, stream: &str, count: usize) {
        self.create_group(stream).await;
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg("ghost")
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut self.redis)
            .await
            .unwrap();
    }

    /// Creates this test's consumer group on `stream`, from its start.
    pub async fn create_group(&mut self, stream: &str) {
        let () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.redis)
            .await
            .unwrap();
    }

    /// XADDs entries, pipelined.
    pub async fn publish<'e>(
        &mut self,
        entries: impl IntoIterator<Item = &'e testkit::workload::Entry>,
    ) {
        let entries: Vec<&testkit::workload::Entry> = entries.into_iter().collect();
        for chunk in entries.chunks(500) {
            let pipe = self.spec.xadd(chunk.iter().copied());
            let () = pipe.query_async(&mut self.redis).await.unwrap();
        }
    }

    /// XADDs one entry with arbitrary fields.
    pub async fn publish_raw(&mut self, stream: usize, fields: &[(&str, &[u8])]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.spec.streams[stream]).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query_async(&mut self.redis).await.unwrap()
    }

    /// Lag + pending of the group over all streams (None if a group is
    /// missing).
    pub async fn backlog(&mut self) -> Option<u64> {
        let groups = self.groups().await?;
        Some(
            groups
                .iter()
                .map(|g| g.lag.unwrap_or(u64::MAX / 8) + g.pending)
                .sum(),
        )
    }

    /// The group's state on each stream (None if a group is missing).
    async fn groups(&mut self) -> Option<Vec<writer::stream::GroupInfo>> {
        let mut groups = Vec::new();
        for s in self.spec.streams.clone() {
            groups.push(
                writer::stream::group_info(&mut self.redis, &s, &self.group)
                    .await
                    .ok()??,
            );
        }
        Some(groups)
    }

    /// Waits until `n` entries over all streams are delivered to the group
    /// and not yet acknowledged.
    pub async fn wait_pending(&mut self, n: u64) {
        eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || {
                let pending: Option<u64> = self
                    .groups()
                    .await
                    .map(|g| g.iter().map(|g| g.pending).sum());
                match pending {
                    Some(p) if p == n => Ok(()),
                    p => Err(format!("{p:?} entries pending, not {n}")),
                }
            },
        )
        .await;
    }

    /// Waits until every entry is acknowledged (analytics aside).
    pub async fn wait_streams_drained(&mut self) {
        eventually(DRAIN, Duration::from_millis(100), async || {
            match self.backlog().await {
                Some(0) => Ok(()),
                backlog => Err(format!("stream backlog {backlog:?}")),
            }
        })
        .await;
    }

    /// Waits until every entry is acknowledged and the analytics backlog is
    /// empty.
    pub async fn wait_drained(&mut self) {
        eventually(DRAIN, Duration::from_millis(100), async || {
            let backlog = self.backlog().await;
            let dirty = self
                .db
                .scalar_i64("SELECT count(*) FROM analytics_dirty")
                .await;
            if backlog == Some(0) && dirty == 0 {
                Ok(())
            } else {
                Err(format!(
                    "not drained: stream backlog {backlog:?}, dirty {dirty}"
                ))
            }
        })
        .await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let streams = self.spec.streams.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = writer::redis_client::open(&redis_url(), &RedisTls::default())
                .and_then(|c| c.get_connection())
            {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&streams[..]).query(&mut conn);
            }
        })
        .join();
    }
}

/// A writer process, killed when dropped.
pub struct Writer {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Writer {
    pub fn start(env: &HashMap<String, String>) -> Writer {
        let dir = std::env::temp_dir().join("writer-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{}.log", unique_name("writer")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_writer"))
            .arg("run")
            .clean_env()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start writer");
        let port = env["HTTP_PORT"].parse().unwrap();
        Writer { child, log, port }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// GET a path on the writer's HTTP port: (status, body).
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
        http_get(self.port, path, bearer).await
    }

    /// Fails the test: what is not so, then this writer's log.
    pub fn fail_with_log(&self, seen: String) -> ! {
        panic!("{seen}\n{}", self.log())
    }

    /// Waits until /health answers `code`; returns its body.
    pub async fn wait_health(&self, code: u16, within: Duration) -> serde_json::Value {
        poll(within, Duration::from_millis(100), async || {
            match self.get("/health", None).await {
                Some((c, body)) if c == code => Ok(json_body(&body)),
                answer => Err(format!("/health answered {answer:?}, not {code}")),
            }
        })
        .await
        .unwrap_or_else(|seen| self.fail_with_log(seen))
    }

    /// Waits until /health answers 200 with a body that satisfies `done`;
    /// returns the body.
    pub async fn wait_health_until(
        &self,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        poll(within, Duration::from_millis(200), async || {
            let h = self.wait_health(200, Duration::from_secs(30)).await;
            if done(&h) {
                Ok(h)
            } else {
                Err(format!("/health: {h}"))
            }
        })
        .await
        .unwrap_or_else(|seen| self.fail_with_log(seen))
    }

    /// Waits until /health answers at all.
    pub async fn wait_http(&self, within: Duration) {
        poll(within, Duration::from_millis(50), async || {
            match self.get("/health", None).await {
                Some(_) => Ok(()),
                None => Err("HTTP did not come up".to_owned()),
            }
        })
        .await
        .unwrap_or_else(|seen| self.fail_with_log(seen));
    }
}

impl Drop for Writer {
    /// SIGTERM first, SIGKILL after three seconds: a clean exit also writes
    /// the coverage profile of an instrumented binary.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A secret file as a container runtime mounts one (the `*_FILE`
/// settings), in a directory of its own that goes with it.
pub struct SecretFile(PathBuf);

impl SecretFile {
    pub fn new(content: &str) -> SecretFile {
        let dir = std::env::temp_dir().join(unique_name("secrets"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = SecretFile(dir.join("secret"));
        file.replace(content);
        file
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }

    /// Replaces the content the way a container runtime does: a new file
    /// renamed over the old one.
    pub fn replace(&self, content: &str) {
        let next = self.0.with_extension("next");
        std::fs::write(&next, format!("{content}\n")).unwrap();
        std::fs::rename(&next, &self.0).unwrap();
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// /health's verdict with nothing to do: healthy, and every one of the
/// five streams without lag or pending entries.
pub fn healthy_and_idle(h: &serde_json::Value) -> bool {
    h["status"] == "healthy"
        && h["streams"]
            .as_object()
            .is_some_and(|s| s.len() == 5 && s.values().all(|v| v["lag"] == 0 && v["pending"] == 0))
}

/// A `writer` command that ran to its end: its exit code and output.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Everything it printed: stdout, then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `writer <args>` to its end with exactly `vars` set (and PATH).
pub fn writer_once<K, V>(args: &[&str], vars: impl IntoIterator<Item = (K, V)>) -> Finished
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_writer"))
        .args(args)
        .clean_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .output()
        .expect("run writer");
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A minimal HTTP/1.1 GET (no client dependency needed).
pub async fn http_get(port: u16, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies: good enough to search in; tests parse JSON from the
    // first '{' to the last '}'.
    Some((code, body))
}

/// The JSON object inside an HTTP body (chunked or not).
pub fn json_body(body: &str) -> serde_json::Value {
    let start = body.find('{').expect("json body");
    let end = body.rfind('}').expect("json body");
    serde_json::from_str(&body[start..=end]).expect("valid json")
}

/// A schema with the workload applied directly, in chain order.
pub async fn applied_directly(workload: &Workload) -> TestDb {
    let db = TestDb::new().await;
    workload.apply_directly(&db.read_model()).await.unwrap();
    db
}

/// Asserts `db`'s core tables equal `workload`'s final chain applied
/// directly.
pub async fn assert_core_exact(db: &TestDb, workload: &Workload) {
    assert_same_core(db, &applied_directly(workload).await).await;
}

/// Asserts `db` holds what `workload` must end in: its final chain's core
/// tables and their analytics.
pub async fn assert_exact(db: &TestDb, workload: &Workload) {
    assert_core_exact(db, workload).await;
    assert_analytics(db, &model_of(&workload.canonical_events())).await;
}

/// Asserts two schemas hold the same core tables.
pub async fn assert_same_core(actual: &TestDb, expected: &TestDb) {
    let (a, b) = (actual.dump_core().await, expected.dump_core().await);
    for ((table, rows_a), (_, rows_b)) in a.iter().zip(&b) {
        if rows_a != rows_b {
            let missing: Vec<_> = rows_b
                .iter()
                .filter(|r| !rows_a.contains(r))
                .take(3)
                .collect();
            let extra: Vec<_> = rows_a
                .iter()
                .filter(|r| !rows_b.contains(r))
                .take(3)
                .collect();
            panic!(
                "{table}: {} rows vs {} expected\n  missing: {missing:?}\n  unexpected: {extra:?}",
                rows_a.len(),
                rows_b.len()
            );
        }
    }
}

/// The independent model of the invariants, from events.
pub fn model_of<'a>(events: impl IntoIterator<Item = &'a ChainEvent<'a>>) -> Model {
    let mut m = Model::default();
    m.apply_all(events);
    m
}

/// Asserts the four analytics tables equal the model's (and are not empty).
pub async fn assert_analytics(db: &TestDb, model: &Model) {
    let (actual, expected) = (db.dump_analytics().await, model.analytics());
    for (name, a, e) in [
        ("triple_vault", &actual.triple_vault, &expected.triple_vault),
        ("triple_term", &actual.triple_term, &expected.triple_term),
        (
            "predicate_object",
            &actual.predicate_object,
            &expected.predicate_object,
        ),
        (
            "subject_predicate",
            &actual.subject_predicate,
            &expected.subject_predicate,
        ),
    ] {
        if a != e {
            let missing: Vec<_> = e.iter().filter(|r| !a.contains(r)).take(3).collect();
            let extra: Vec<_> = a.iter().filter(|r| !e.contains(r)).take(3).collect();
            panic!(
                "{name}: {} rows, expected {}\n  missing {missing:?}\n  unexpected {extra:?}",
                a.len(),
                e.len()
            );
        }
    }
    assert!(!expected.triple_vault.is_empty() && !expected.predicate_object.is_empty());
}
