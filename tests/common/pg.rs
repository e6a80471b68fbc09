//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary
//! directory, `postgres` on a loopback port, started by the test process
//! itself (Debian's `postgresql` package; `.ci/run` installs it).
//!
//! - Readiness is the server's own "ready to accept connections" log line,
//!   not a sleep.
//! - As root (CI, these machines) the server runs as the `postgres` user
//!   through `setpriv`, which also sets a parent-death signal: when the test
//!   process exits, the server is killed with it, so no test run leaves a
//!   database behind. Directories of runs that are gone are removed at the
//!   next start.
//! - Without a `postgres` binary, [`Cluster::start`] says so LOUDLY on
//!   stderr and returns `None`; the caller skips.

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;

/// Where clusters live: under cargo's per-target temporary directory.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hookgate-pg")
}

/// The directory holding `initdb` and `postgres`: `HOOKGATE_PG_BIN`, else
/// the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HOOKGATE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("postgres").exists().then_some(dir)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A server command: as root, run as `postgres` with a parent-death signal.
fn server_command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--pdeathsig",
            "KILL",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Removes cluster directories whose test process is gone.
fn remove_stale() {
    for entry in std::fs::read_dir(root()).into_iter().flatten().flatten() {
        let owner = std::fs::read_to_string(entry.path().join("owner.pid")).unwrap_or_default();
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    server: Option<(u32, JoinHandle<()>)>,
    /// Extra `-c name=value` server settings (TLS).
    settings: Vec<String>,
}

/// A server certificate and key (PEM) for [`Cluster::start_tls`].
pub struct ServerTls<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);
static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    /// `initdb` and start a new cluster; `None` (after a loud message) when
    /// no PostgreSQL binaries exist here.
    pub fn start() -> Option<Cluster> {
        Cluster::start_with(None)
    }

    /// Like [`Cluster::start`], with `ssl = on` serving `tls` (plain
    /// connections are still accepted, as a default server does).
    pub fn start_tls(tls: ServerTls<'_>) -> Option<Cluster> {
        Cluster::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! SKIPPING PostgreSQL TESTS: no `postgres` binary found (install Debian's\n!!! postgresql package, as .ci/run does, or set HOOKGATE_PG_BIN)\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
            return None;
        };
        // Tests of one binary start clusters from several threads: without
        // the lock, one thread's remove_stale() could delete a directory
        // another thread created but had not yet marked with owner.pid.
        let created = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(root()).unwrap();
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = root().join(format!(
            "{}-{}-{n}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        drop(created);
        let mut settings = Vec::new();
        if let Some(tls) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, tls.cert_pem).unwrap();
            std::fs::write(&key, tls.key_pem).unwrap();
            // postgres refuses a key others can read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            settings = vec![
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let mut initdb = server_command(&bin.join("initdb"));
        let out = initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "hookgate", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = Cluster {
            bin,
            dir,
            port: 0,
            server: None,
            settings,
        };
        cluster.run();
        Some(cluster)
    }

    /// Starts the server on the cluster's directory (a free port the first
    /// time, the same one after [`Cluster::stop`]) and returns once it
    /// accepts connections.
    pub fn run(&mut self) {
        assert!(self.server.is_none(), "already running");
        for _ in 0..5 {
            let port = if self.port == 0 {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            } else {
                self.port
            };
            let mut command = server_command(&self.bin.join("postgres"));
            command
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &port.to_string(), "-k"])
                .arg(&self.dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                ])
                .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let (ready_tx, ready_rx) = mpsc::channel::<Result<u32, String>>();
            let log = self.dir.join("server.log");
            // This thread spawns the server and lives until it exits: the
            // parent-death signal follows the thread that forked, so it
            // must not be a test's thread, which ends with the test.
            let thread = std::thread::spawn(move || {
                let mut child = match command.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot run postgres: {e}")));
                        return;
                    }
                };
                let pid = child.id();
                let Some(stderr) = child.stderr.take() else {
                    return;
                };
                let mut log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                let mut seen = String::new();
                let mut ready = Some(ready_tx);
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                    if let Some(tx) = &ready {
                        seen.push_str(&line);
                        seen.push('\n');
                        if line.contains("ready to accept connections") {
                            let _ = tx.send(Ok(pid));
                            ready = None;
                        }
                    }
                }
                if let Some(tx) = ready {
                    let _ = tx.send(Err(seen));
                }
                let _ = child.wait();
            });
            match ready_rx
                .recv()
                .unwrap_or_else(|_| Err("server thread ended".into()))
            {
                Ok(pid) => {
                    self.port = port;
                    self.server = Some((pid, thread));
                    return;
                }
                Err(log) => {
                    let _ = thread.join();
                    if self.port != 0 || !log.contains("could not bind") {
                        panic!("postgres did not start:\n{log}");
                    }
                }
            }
        }
        panic!("postgres found no free port in 5 tries");
    }

    /// Stops the server (fast shutdown: open transactions are rolled
    /// back, connections closed) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some((pid, thread)) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let _ = thread.join();
        }
    }

    /// A URL for `database` as the `hookgate` superuser (trust auth).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://hookgate:unused-password@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Creates a new, empty database and returns its URL.
    pub fn database(&self) -> String {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "hookgate",
            ])
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// Runs SQL on `database` with `psql`; returns its stdout (unaligned,
    /// tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "hookgate",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster shared by the tests of this binary (each test takes its own
/// database); `None` when PostgreSQL is not installed. Never dropped: the
/// parent-death signal ends the server with the process.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    SHARED.get_or_init(Cluster::start).as_ref()
}

/// The database name at the end of a URL from [`Cluster::database`].
pub fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Runs the binary with `args` and `env` off the runtime (so the test's own
/// database connections keep being driven meanwhile): (success, stdout,
/// stderr).
pub async fn hookgate(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(super::hookgate_bin());
    command.args(args).envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `cond` every 20 ms for up to `within`.
pub async fn eventually(within: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cond()
}
