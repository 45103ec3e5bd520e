//! Private PostgreSQL and Redis servers for tests that stop, restart or
//! break their dependencies: doing that to the shared local servers would
//! disturb every other test running in parallel. Self-contained, so the
//! bench harnesses (benches/common.rs) include the same file.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A name no other test (or test process) uses: `prefix_<pid>_<n>_<random>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn as_postgres_user(program: &std::path::Path) -> Command {
    // Postgres refuses to run as root; tests in CI run as root.
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries (scripts/services.sh installs them)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version under /usr/lib/postgresql")
}

/// A throwaway PostgreSQL cluster on a free port.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(unique_name("pg"));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let init = as_postgres_user(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(init.success(), "initdb failed");
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
        };
        pg.run_ctl("start");
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let mut c = as_postgres_user(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(options);
        if action == "start" {
            c.args(["-w", "-t", "30", "start"]);
        } else {
            c.args(["-m", "fast", "-w", "stop"]);
        }
        let status = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success() || action != "start",
            "pg_ctl {action} failed"
        );
    }

    pub fn stop(&self) {
        self.run_ctl("stop");
    }

    /// Makes TCP logins of every role but `postgres` check passwords
    /// (scram-sha-256), as a managed server does; `postgres` keeps trust so
    /// the test itself can administer the server.
    #[allow(dead_code)] // Tests use it; the soak harness, which includes this file, does not.
    pub fn require_passwords(&self) {
        let hba = "local all all trust\n\
                   host all postgres 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(self.dir.join("data").join("pg_hba.conf"), hba).unwrap();
        let reloaded = as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("reload")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(reloaded.success(), "pg_ctl reload failed");
    }

    pub fn start_again(&self) {
        self.run_ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut c = as_postgres_user(&self.bin.join("pg_ctl"));
        let _ = c
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` of the caller's own on 127.0.0.1, killed when dropped.
pub struct RedisProcess {
    child: Child,
}

impl RedisProcess {
    /// Starts `redis-server` with `args` and waits until `port` (one of
    /// the ports `args` name) accepts connections.
    pub async fn start(port: u16, args: &[&str]) -> RedisProcess {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh)");
        let server = RedisProcess { child };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway Redis on a free port that keeps its data across restarts
/// (append-only file, fsync on every write).
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    server: Option<RedisProcess>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let dir = std::env::temp_dir().join(unique_name("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            server: None,
        };
        r.start_again().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start_again(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("a UTF-8 temporary directory");
        let args = [
            "--port",
            &port,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--dir",
            dir,
        ];
        self.server = Some(RedisProcess::start(self.port, &args).await);
    }

    /// Kills the server (SIGKILL): only what the append-only file holds survives.
    pub fn kill(&mut self) {
        self.server = None;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
