//! Connecting as to managed services (issue 12): Postgres and Redis over
//! TLS with certificates checked, URLs from files, passwords rotated without
//! a restart, and refusals explained once, naming the setting, never the
//! password. Certificates are made per test with the openssl CLI; servers
//! that a test reconfigures are private to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgPool};
use testkit::workload::generate;
use writer::config::RedisTls;

use crate::support::db::{TestDb, database_url, unique_name};

use crate::support::private::{PrivatePostgres, PrivateRedis, RedisProcess, free_port};
use crate::support::service::{Env, SecretFile, Writer, assert_exact, redis_url, writer_once};

/// Certificates made with the openssl CLI in a directory of the test's own.
struct Pki {
    dir: PathBuf,
}

/// A certificate and its private key, as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique_name("pki"));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl req` with a new P-256 key, `{name}.key`, for `/CN={name}`:
    /// `-x509` for a self-signed certificate, `-new` for a signing request;
    /// either written to `out`.
    fn request(&self, name: &str, kind: &str, out: &str, extra: &[&str]) {
        let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
        let mut args = vec![
            "req",
            kind,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            out,
            "-subj",
            &subject,
        ];
        args.extend(extra);
        self.openssl(&args);
    }

    /// A self-signed CA.
    fn ca(&self, name: &str) -> Issued {
        self.request(
            name,
            "-x509",
            &format!("{name}.pem"),
            &[
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        self.files(name)
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by `ca`, for a
    /// server (`serverAuth`) or a client (`clientAuth`).
    fn issue(&self, ca: &Issued, name: &str, usage: &str) -> Issued {
        let extensions = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&extensions),
            format!(
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        let (cert, request) = (format!("{name}.pem"), format!("{name}.csr"));
        self.request(name, "-new", &request, &[]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &request,
            "-CA",
            ca.cert.to_str().unwrap(),
            "-CAkey",
            ca.key.to_str().unwrap(),
            "-set_serial",
            &fastrand::u64(1..u64::MAX / 2).to_string(),
            "-days",
            "2",
            "-extfile",
            &extensions,
            "-out",
            &cert,
        ]);
        self.files(name)
    }

    fn files(&self, name: &str) -> Issued {
        Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server that speaks only TLS (`--port 0`).
struct TlsRedis {
    port: u16,
    _server: RedisProcess,
}

impl TlsRedis {
    async fn start(pki: &Pki, ca: &Issued, server: &Issued, client_certificates: bool) -> TlsRedis {
        let port = free_port();
        let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&server.cert),
            "--tls-key-file",
            &path(&server.key),
            "--tls-ca-cert-file",
            &path(&ca.cert),
            "--tls-auth-clients",
            if client_certificates { "yes" } else { "no" },
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &path(&pki.dir),
        ];
        let _server = RedisProcess::start(port, &args).await;
        TlsRedis { port, _server }
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

/// A login role of the test's own on the local Postgres (superuser, so it
/// may use any test schema), dropped at the end: the writer's backends are
/// the role's, told apart from every other test's.
struct Role {
    name: String,
}

impl Role {
    async fn create() -> Role {
        let name = unique_name("tls");
        admin(&format!("CREATE ROLE \"{name}\" LOGIN SUPERUSER")).await;
        Role { name }
    }

    /// How many backends the role has, and whether all of them use SSL.
    async fn backends(&self) -> (i64, bool) {
        ssl_backends(&database_url(), &self.name).await
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    admin(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")).await;
                    admin(&format!("DROP ROLE IF EXISTS \"{name}\"")).await;
                });
        })
        .join();
    }
}

/// Runs one statement on the local Postgres as its administrator.
async fn admin(sql: &str) {
    let mut conn = sqlx::PgConnection::connect(&database_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// `user`'s backends on the server at `admin_url`, and whether all use SSL.
async fn ssl_backends(admin_url: &str, user: &str) -> (i64, bool) {
    let pool = PgPool::connect(admin_url).await.unwrap();
    let row: (i64, bool) = sqlx::query_as(
        "SELECT count(*), coalesce(bool_and(s.ssl), false)
         FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE a.usename = $1",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    row
}

/// `url` with another user, password, host or query.
fn edit_url(
    url: &str,
    user: Option<&str>,
    password: Option<&str>,
    host: Option<&str>,
    query: &str,
) -> String {
    let mut u = url::Url::parse(url).unwrap();
    if let Some(user) = user {
        u.set_username(user).unwrap();
    }
    if password.is_some() {
        u.set_password(password).unwrap();
    }
    if let Some(host) = host {
        u.set_host(Some(host)).unwrap();
    }
    u.set_query((!query.is_empty()).then_some(query));
    u.into()
}

/// The certificate the local Postgres presents (self-signed).
async fn local_server_certificate() -> PathBuf {
    let pool = PgPool::connect(&database_url()).await.unwrap();
    let path: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    PathBuf::from(path)
}

/// Settings for a writer that is expected to stop at start.
fn doomed_vars(database: &str, redis: &str) -> HashMap<String, String> {
    [
        ("DATABASE_URL", database.to_owned()),
        ("DATABASE_SCHEMA", unique_name("never")),
        ("REDIS_URL", redis.to_owned()),
        ("REDIS_STREAMS", unique_name("never")),
        ("HTTP_HOST", "127.0.0.1".to_owned()),
        ("HTTP_PORT", free_port().to_string()),
        ("RETRY_BASE_DELAY_MS", "20".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `writer run` stops with a non-zero exit; its output.
async fn run_fails(vars: &HashMap<String, String>) -> String {
    let mut writer = Writer::start(vars);
    let status = writer.wait_exit(Duration::from_secs(30)).await;
    let log = writer.log();
    let status = status.unwrap_or_else(|| panic!("`writer run` kept running:\n{log}"));
    assert!(!status.success(), "`writer run` succeeded:\n{log}");
    log
}

/// `writer migrate` stops with exit code 1; its output.
fn migrate_fails(vars: &HashMap<String, String>) -> String {
    let out = writer_once(&["migrate"], vars);
    let text = out.text();
    assert_eq!(out.code, Some(1), "{text}");
    text
}

/// `phrase` appears exactly once in `text` (a cause is not repeated).
fn said_once(text: &str, phrase: &str) {
    assert_eq!(
        text.matches(phrase).count(),
        1,
        "`{phrase}` not said once in:\n{text}"
    );
}

/// `sslmode=require` against the local Postgres (ssl on): every backend of
/// the writer is encrypted and a workload ends exact. Statements slower
/// than DATABASE_SLOW_STATEMENT_MS are logged with their duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_require_encrypts_every_backend() {
    let mut env = Env::new(61, 3_000).await;
    let role = Role::create().await;
    let workload = env.publish_workload().await;
    let mut vars = env.writer_env("w1");
    vars.insert(
        "DATABASE_URL".into(),
        edit_url(&env.db.url, Some(&role.name), None, None, "sslmode=require"),
    );
    vars.insert("DATABASE_SLOW_STATEMENT_MS".into(), "1".into());
    let config = writer_once(&["check-config"], &vars).text();
    said_once(
        &config,
        "# postgres TLS: require: TLS; the server's certificate is not checked",
    );
    let writer = Writer::start(&vars);
    env.wait_drained().await;
    let (backends, all_ssl) = role.backends().await;
    assert!(backends > 0, "the writer has no backend");
    assert!(all_ssl, "a backend of the writer does not use SSL");
    assert_exact(&env.db, &workload).await;
    let log = writer.log();
    assert!(
        log.contains("slow statement") && log.contains("elapsed"),
        "no slow statement logged with its duration:\n{log}"
    );
}

/// Over TLS, a statement larger than one TLS record (16 KB; every batch
/// insert) does not wait for the server's delayed ACK: the pool's sockets
/// have TCP_NODELAY (`db::disable_nagle`). Twenty 40 KB statements take
/// far less than the 20 × 40 ms that Nagle's algorithm would add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_statements_over_tls_do_not_wait_for_delayed_acks() {
    let url = edit_url(&database_url(), None, None, None, "sslmode=require");
    let pool = writer::db::pool(&TestDb::config(&url, "public")).unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted);
    // Three TLS records: without TCP_NODELAY the last ones wait for the
    // server's delayed ACK (40 ms), statement after statement.
    let text = "x".repeat(40_000);
    let started = Instant::now();
    for _ in 0..20 {
        let length: i32 = sqlx::query_scalar("SELECT length($1)")
            .bind(&text)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(length, 40_000);
    }
    let elapsed = started.elapsed();
    pool.close().await;
    assert!(
        elapsed < Duration::from_millis(500),
        "20 statements of 40 KB over TLS took {elapsed:?} (20 delayed ACKs are 800 ms): Nagle's algorithm is on"
    );
}

/// `verify-full` with the server's own certificate as root and the host
/// name it lists: the writer connects (encrypted) and a workload ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_the_right_root_works() {
    let mut env = Env::new(62, 2_000).await;
    let role = Role::create().await;
    let root = local_server_certificate().await;
    let workload = env.publish_workload().await;
    let mut vars = env.writer_env("w1");
    vars.insert(
        "DATABASE_URL".into(),
        edit_url(
            &env.db.url,
            Some(&role.name),
            None,
            Some("localhost"),
            &format!("sslmode=verify-full&sslrootcert={}", root.display()),
        ),
    );
    let _writer = Writer::start(&vars);
    env.wait_drained().await;
    let (backends, all_ssl) = role.backends().await;
    assert!(
        backends > 0 && all_ssl,
        "{backends} backends, all SSL: {all_ssl}"
    );
    assert_exact(&env.db, &workload).await;
}

/// `verify-full` with a CA that did not sign the server's certificate, or
/// with a host name the certificate does not list: `writer migrate` and
/// `writer run` stop with one clear message naming DATABASE_URL, and the
/// password is never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_refuses_a_foreign_ca_and_a_wrong_host_name() {
    let pki = Pki::new();
    let foreign = pki.ca("foreign-ca");
    let password = "pw-never-shown-1";
    let foreign_url = edit_url(
        &database_url(),
        None,
        Some(password),
        Some("localhost"),
        &format!("sslmode=verify-full&sslrootcert={}", foreign.cert.display()),
    );
    let vars = doomed_vars(&foreign_url, &redis_url());
    let migrate = migrate_fails(&vars);
    let run = run_fails(&vars).await;
    for text in [&migrate, &run] {
        said_once(text, "presented a TLS certificate that neither sslrootcert");
        assert!(text.contains("in DATABASE_URL"), "{text}");
        assert!(!text.contains(password), "the password was shown:\n{text}");
    }

    let root = local_server_certificate().await;
    let by_address = edit_url(
        &database_url(),
        None,
        Some(password),
        Some("127.0.0.1"),
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let text = migrate_fails(&doomed_vars(&by_address, &redis_url()));
    said_once(
        &text,
        "presented a TLS certificate that does not name `127.0.0.1`",
    );
    assert!(
        text.contains("sslmode=verify-ca, in DATABASE_URL") && !text.contains(password),
        "{text}"
    );
}

/// A server without TLS when `sslmode=require`, and a refused password:
/// each said once, naming the setting, without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_are_said_once() {
    let pg = PrivatePostgres::start();
    pg.require_passwords();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    sqlx::query("CREATE ROLE app LOGIN PASSWORD 'right-password-1'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let require = edit_url(
        &pg.url(),
        None,
        Some("pw-not-shown-2"),
        None,
        "sslmode=require",
    );
    let text = migrate_fails(&doomed_vars(&require, &redis_url()));
    said_once(
        &text,
        "does not accept TLS connections, but sslmode=require in DATABASE_URL requires TLS",
    );
    assert!(!text.contains("pw-not-shown-2"), "{text}");

    let wrong = edit_url(&pg.url(), Some("app"), Some("wrong-password-3"), None, "");
    let vars = doomed_vars(&wrong, &redis_url());
    let migrate = migrate_fails(&vars);
    let run = run_fails(&vars).await;
    for text in [&migrate, &run] {
        said_once(
            text,
            "refused the password of user `app`: correct it in DATABASE_URL",
        );
        assert!(!text.contains("wrong-password-3"), "{text}");
    }
}

/// Rotation: the writer's role gets a new password, DATABASE_URL_FILE is
/// rewritten, the writer's backends are terminated — it reconnects with the
/// new password, without a restart, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_password_rotation_through_the_url_file() {
    let pg = PrivatePostgres::start();
    pg.require_passwords();
    let mut env = Env::new_at(63, 6_000, &pg.url(), &redis_url()).await;
    sqlx::query("CREATE ROLE rotating LOGIN SUPERUSER PASSWORD 'first-password-1'")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let url_with = |password: &str| edit_url(&pg.url(), Some("rotating"), Some(password), None, "");
    let mut vars = env.writer_env("w1");
    vars.insert("DATABASE_ACQUIRE_TIMEOUT_MS".into(), "500".into());
    let rotation = Rotation {
        setting: "DATABASE_URL",
        urls: [url_with("first-password-1"), url_with("second-password-2")],
    };
    let writer = rotation
        .consume_across(
            &mut env,
            vars,
            async |env| {
                sqlx::query("ALTER ROLE rotating PASSWORD 'second-password-2'")
                    .execute(&env.db.pool)
                    .await
                    .unwrap();
            },
            async |env| {
                let terminated: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotating') t",
                )
                .fetch_one(&env.db.pool)
                .await
                .unwrap();
                assert!(terminated > 0, "the writer had no backend to terminate");
            },
        )
        .await;

    assert!(
        sqlx::PgConnection::connect(&url_with("first-password-1"))
            .await
            .is_err(),
        "the old password still works"
    );
    let (backends, _) = ssl_backends(&pg.url(), "rotating").await;
    assert!(backends > 0, "the writer did not reconnect");
    let log = writer.log();
    assert!(log.contains("DATABASE_URL_FILE changed"), "{log}");
    assert!(
        !log.contains("password-1") && !log.contains("password-2"),
        "a password was logged:\n{log}"
    );
}

/// A password rotated while the writer runs, with its URL read from
/// `{setting}_FILE`: from `urls[0]` to `urls[1]`.
struct Rotation {
    setting: &'static str,
    urls: [String; 2],
}

impl Rotation {
    /// The writer (started with `vars`, its URL from the file) consumes half
    /// of a workload; `change_password` makes the server take the new
    /// password, the file is rewritten the way a container runtime does it,
    /// `drop_connections` ends the writer's connections; the writer consumes
    /// the rest without a restart and the tables end exact. Returns the
    /// writer, still running.
    async fn consume_across(
        &self,
        env: &mut Env,
        mut vars: HashMap<String, String>,
        change_password: impl AsyncFnOnce(&mut Env),
        drop_connections: impl AsyncFnOnce(&mut Env),
    ) -> Writer {
        let file = SecretFile::new(&self.urls[0]);
        vars.remove(self.setting);
        vars.insert(format!("{}_FILE", self.setting), file.path().into());
        let workload = generate(&env.spec);
        let (first, second) = workload.entries.split_at(workload.entries.len() / 2);
        let mut writer = Writer::start(&vars);
        env.publish(first).await;
        env.wait_drained().await;

        change_password(env).await;
        file.replace(&self.urls[1]);
        drop_connections(env).await;
        env.publish(second).await;
        env.wait_drained().await;

        assert!(writer.is_running(), "the writer stopped:\n{}", writer.log());
        assert_exact(&env.db, &workload).await;
        writer
    }
}

/// Redis that speaks only TLS: `rediss://` with REDIS_CA_CERT consumes a
/// workload exactly; check-config says how the connection is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_its_ca_consumes_exactly() {
    let pki = Pki::new();
    let ca = pki.ca("redis-ca");
    let server = pki.issue(&ca, "redis-server", "serverAuth");
    let redis = TlsRedis::start(&pki, &ca, &server, false).await;
    let tls = RedisTls {
        ca_cert: Some(ca.cert.clone()),
        ..RedisTls::default()
    };
    let mut env = Env::new_with_tls(64, 3_000, &database_url(), &redis.url(), &tls).await;
    let workload = env.publish_workload().await;
    let mut vars = env.writer_env("w1");
    vars.insert("REDIS_CA_CERT".into(), ca.cert.display().to_string());
    let check = writer_once(&["check-config"], &vars);
    let config = check.text();
    assert_eq!(check.code, Some(0), "{config}");
    said_once(
        &config,
        &format!(
            "# redis TLS: rediss://: TLS; the server's certificate must be signed by REDIS_CA_CERT ({}) and name `localhost`",
            ca.cert.display()
        ),
    );
    let _writer = Writer::start(&vars);
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
}

/// Without REDIS_CA_CERT (the system's roots do not know the test CA), or
/// with a CA that did not sign the server: `writer run` stops with one
/// message naming REDIS_CA_CERT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_without_its_ca_names_redis_ca_cert() {
    let pki = Pki::new();
    let ca = pki.ca("redis-ca");
    let foreign = pki.ca("foreign-ca");
    let server = pki.issue(&ca, "redis-server", "serverAuth");
    let redis = TlsRedis::start(&pki, &ca, &server, false).await;
    let url = format!("rediss://:pw-not-shown-4@localhost:{}", redis.port);
    let vars = doomed_vars(&database_url(), &url);
    let text = run_fails(&vars).await;
    said_once(
        &text,
        "presented a TLS certificate that no system root CA signed: set REDIS_CA_CERT",
    );
    assert!(!text.contains("pw-not-shown-4"), "{text}");

    let mut vars = doomed_vars(&database_url(), &url);
    vars.insert("REDIS_CA_CERT".into(), foreign.cert.display().to_string());
    let text = run_fails(&vars).await;
    said_once(
        &text,
        &format!(
            "presented a TLS certificate that REDIS_CA_CERT ({}) did not sign",
            foreign.cert.display()
        ),
    );
}

/// `--tls-auth-clients yes`: with REDIS_CLIENT_CERT and REDIS_CLIENT_KEY
/// the writer consumes a workload exactly; without them it stops, saying
/// which settings to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let ca = pki.ca("redis-ca");
    let server = pki.issue(&ca, "redis-server", "serverAuth");
    let client = pki.issue(&ca, "writer-client", "clientAuth");
    let redis = TlsRedis::start(&pki, &ca, &server, true).await;

    let mut vars = doomed_vars(&database_url(), &redis.url());
    vars.insert("REDIS_CA_CERT".into(), ca.cert.display().to_string());
    let text = run_fails(&vars).await;
    said_once(
        &text,
        "requires a client certificate: set REDIS_CLIENT_CERT and REDIS_CLIENT_KEY",
    );

    let tls = RedisTls {
        ca_cert: Some(ca.cert.clone()),
        client_cert: Some(client.cert.clone()),
        client_key: Some(client.key.clone()),
    };
    let mut env = Env::new_with_tls(65, 2_000, &database_url(), &redis.url(), &tls).await;
    let workload = env.publish_workload().await;
    let mut vars = env.writer_env("w1");
    vars.insert("REDIS_CA_CERT".into(), ca.cert.display().to_string());
    vars.insert(
        "REDIS_CLIENT_CERT".into(),
        client.cert.display().to_string(),
    );
    vars.insert("REDIS_CLIENT_KEY".into(), client.key.display().to_string());
    let _writer = Writer::start(&vars);
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
}

/// Rotation on Redis: the writer's ACL user gets a new password,
/// REDIS_URL_FILE is rewritten, the writer's connections are killed — it
/// reconnects with the new password, without a restart, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_password_rotation_through_the_url_file() {
    let redis = PrivateRedis::start().await;
    let mut env = Env::new_at(66, 6_000, &database_url(), &redis.url()).await;
    let acl = |password: &str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg("writer")
            .arg("on")
            .arg("resetpass")
            .arg(format!(">{password}"));
        cmd.arg("~*").arg("&*").arg("+@all");
        cmd
    };
    let () = acl("first-pass-1")
        .query_async(&mut env.redis)
        .await
        .unwrap();
    let url_with = |password: &str| format!("redis://writer:{password}@127.0.0.1:{}", redis.port);
    let rotation = Rotation {
        setting: "REDIS_URL",
        urls: [url_with("first-pass-1"), url_with("second-pass-2")],
    };
    let vars = env.writer_env("w1");
    let writer = rotation
        .consume_across(
            &mut env,
            vars,
            async |env| {
                let () = acl("second-pass-2")
                    .query_async(&mut env.redis)
                    .await
                    .unwrap();
            },
            async |env| {
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("USER")
                    .arg("writer")
                    .query_async(&mut env.redis)
                    .await
                    .unwrap();
                assert!(killed > 0, "the writer had no connection to kill");
            },
        )
        .await;

    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut env.redis)
        .await
        .unwrap();
    assert!(
        clients.contains("user=writer"),
        "the writer did not reconnect:\n{clients}"
    );
    let log = writer.log();
    assert!(
        !log.contains("pass-1") && !log.contains("pass-2"),
        "a password was logged:\n{log}"
    );
}
