//! Real local brokers for the demo and the end-to-end tests: Mosquitto (Debian's package) and
//! Tansu (a Kafka-protocol broker, `cargo install`ed by `scripts/ensure-tools`), each started as
//! a child process on a free loopback port and killed when dropped.
//!
//! - [`free_port`]: a currently free loopback port.
//! - [`Mosquitto`]: `deploy/mosquitto/edubrain.conf` plus a generated listener and the ACL
//!   plugin (`mosquitto-acl/`) reading `deploy/mosquitto/acl`, and
//!   optionally `deploy/mosquitto/tls.conf`'s TLS listener with client certificates.
//! - [`Pki`]: a test CA and the certificates it signs (the `openssl` command).
//! - [`Tansu`]: memory or sqlite storage (with the index its fetch lacks, see
//!   `index_record_headers`); `kill9` and `restart` for fault tests; SCRAM logins and required
//!   SASL for the Kafka security test.
//! - [`TlsTerminator`]: socat's TLS in front of Tansu (which cannot serve TLS itself).
//! - [`Prometheus`]: Debian's `prometheus` with `deploy/prometheus/` pointed at the running
//!   edges and cloud, for the demo and the monitoring test.
//! - [`test_python`]: the venv with the Python clients tests drive the system with.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{what} not found: {hint}")]
    NotFound { what: &'static str, hint: String },
    #[error("starting {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed on {input} ({status}): {stderr}")]
    ToolFailed { what: &'static str, input: String, status: std::process::ExitStatus, stderr: String },
    #[error("deploy/prometheus/prometheus.yml no longer has {what}; update Prometheus::deployed_config to match it")]
    DeployedConfig { what: String },
    #[error("{what} did not accept connections on {addr} within {secs}s (log: {log})")]
    NotReady { what: &'static str, addr: SocketAddr, secs: u64, log: String },
}

/// A loopback port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("loopback is available")
}

fn wait_ready(what: &'static str, port: u16, log: &Path, child: &mut Child) -> Result<(), BrokerError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(BrokerError::NotReady { what, addr, secs: 0, log: format!("exited with {status}: {log}") });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BrokerError::NotReady { what, addr, secs: 30, log: log.display().to_string() })
}

fn find_binary(what: &'static str, env: &str, candidates: &[PathBuf], hint: &str) -> Result<PathBuf, BrokerError> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BrokerError::NotFound { what, hint: format!("set {env} or {hint} (looked in {candidates:?})") })
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("brokers/ lives in the workspace").to_path_buf()
}

fn mosquitto_binary() -> Result<PathBuf, BrokerError> {
    find_binary(
        "mosquitto",
        "EDUBRAIN_MOSQUITTO",
        &[PathBuf::from("/usr/sbin/mosquitto"), PathBuf::from("/usr/bin/mosquitto")],
        "run scripts/ensure-tools (apt-get install mosquitto)",
    )
}

/// The edubrain ACL plugin (`mosquitto-acl/`), which enforces `deploy/mosquitto/acl` and logs
/// each refusal for the edge. This crate depends on it so that cargo builds the library, into
/// `deps/` of the profile's directory, whenever it builds anything that starts a broker: beside
/// a test or bench binary (which run from `deps/`) or one directory down from the demo's.
fn acl_plugin() -> Result<PathBuf, BrokerError> {
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    find_binary(
        "the edubrain Mosquitto ACL plugin",
        "EDUBRAIN_MOSQUITTO_ACL_PLUGIN",
        &[exe_dir.join(edubrain_mosquitto_acl::LIBRARY_FILE), exe_dir.join("deps").join(edubrain_mosquitto_acl::LIBRARY_FILE)],
        "build it: cargo build -p edubrain-mosquitto-acl",
    )
}

/// A Mosquitto broker owned by this process.
pub struct Mosquitto {
    child: KillOnDrop,
    pub port: u16,
    pub dir: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with `deploy/mosquitto/edubrain.conf` and `deploy/mosquitto/acl`
    /// (through the edubrain ACL plugin), persisting into `dir`, with a password file holding
    /// `users` (username, password).
    pub fn start(dir: &Path, users: &[(String, String)]) -> Result<Self, BrokerError> {
        Self::start_with(dir, users, "")
    }

    /// [`Mosquitto::start`] with `extra` config lines after the deployed ones (a later value
    /// of a global option wins), for tests that need a fault the deployed settings avoid.
    pub fn start_with(dir: &Path, users: &[(String, String)], extra: &str) -> Result<Self, BrokerError> {
        let spawn_err = |e| BrokerError::Spawn { what: "mosquitto", source: e };
        mosquitto_binary()?;
        std::fs::create_dir_all(dir).map_err(spawn_err)?;
        // Plain `user:password` lines, then hashed in place by mosquitto_passwd (one process for
        // every user, rather than one per user).
        let passwords = dir.join("passwords");
        let plain: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        std::fs::write(&passwords, plain).map_err(spawn_err)?;
        run_tool("mosquitto_passwd", Command::new("mosquitto_passwd").arg("-U").arg(&passwords), &passwords.display().to_string())?;
        let port = free_port();
        let base = std::fs::read_to_string(repo_root().join("deploy/mosquitto/edubrain.conf")).map_err(spawn_err)?;
        let acl = repo_root().join("deploy/mosquitto/acl");
        let plugin = acl_plugin()?;
        let conf = dir.join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).map_err(spawn_err)?;
        // `user root`: started as root, Mosquitto would otherwise switch to its own user and could
        // not write its persistence file here (no effect when not started as root).
        writeln!(
            f,
            // The listener first: edubrain.conf holds listener-scoped options
            // (use_username_as_clientid) that would otherwise open a default listener on 1883.
            "listener {port} 127.0.0.1\n{base}\nuser root\npersistence_location {}/\npassword_file {}\nplugin {}\nplugin_opt_{} {}\nlog_dest stderr\n{extra}\n",
            dir.display(),
            passwords.display(),
            plugin.display(),
            edubrain_mosquitto_acl::plugin::ACL_FILE_OPTION,
            acl.display()
        )
        .map_err(spawn_err)?;
        drop(f);
        let mut m = Self { child: Self::spawn(dir)?, port, dir: dir.to_path_buf() };
        wait_ready("mosquitto", port, &dir.join("mosquitto.log"), &mut m.child.0)?;
        Ok(m)
    }

    /// [`Mosquitto::start`] plus the TLS listener of `deploy/mosquitto/tls.conf` (port and
    /// files moved to `pki`'s): returns the broker and the TLS port.
    pub fn start_tls(dir: &Path, users: &[(String, String)], pki: &Pki) -> Result<(Self, u16), BrokerError> {
        let spawn_err = |e| BrokerError::Spawn { what: "mosquitto", source: e };
        let tls_port = free_port();
        let (cert, key) = pki.issue("server", "127.0.0.1", true)?;
        let conf = std::fs::read_to_string(repo_root().join("deploy/mosquitto/tls.conf")).map_err(spawn_err)?;
        let conf = conf
            .replace("listener 8883", &format!("listener {tls_port} 127.0.0.1"))
            .replace("/etc/mosquitto/edubrain/ca.pem", &pki.ca.display().to_string())
            .replace("/etc/mosquitto/edubrain/server.pem", &cert.display().to_string())
            .replace("/etc/mosquitto/edubrain/server.key", &key.display().to_string());
        let mut broker = Self::start_with(dir, users, &conf)?;
        wait_ready("mosquitto (tls)", tls_port, &dir.join("mosquitto.log"), &mut broker.child.0)?;
        Ok((broker, tls_port))
    }

    fn spawn(dir: &Path) -> Result<KillOnDrop, BrokerError> {
        let bin = mosquitto_binary()?;
        let spawn_err = |e| BrokerError::Spawn { what: "mosquitto", source: e };
        // Appended: a restarted broker's log follows the killed one's.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("mosquitto.log")).map_err(spawn_err)?;
        let child =
            Command::new(bin).arg("-c").arg(dir.join("mosquitto.conf")).stdout(Stdio::null()).stderr(log).spawn().map_err(spawn_err)?;
        Ok(KillOnDrop(child))
    }

    /// The broker's process id (to read its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown, no last save of its persistence file.
    pub fn kill9(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts again on the same port, config and persistence directory.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.kill9();
        self.child = Self::spawn(&self.dir)?;
        wait_ready("mosquitto", self.port, &self.dir.join("mosquitto.log"), &mut self.child.0)
    }
}

/// A hub's certificate authority for tests, made with the `openssl` command (Debian's): a CA,
/// then server and client certificates it signs (P-256 keys, PKCS#8 PEM, valid two days).
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    ca_key: PathBuf,
}

impl Pki {
    /// A new CA in `dir` named `name`.
    pub fn new(dir: &Path, name: &str) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(|e| BrokerError::Spawn { what: "openssl", source: e })?;
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &ca_key.display().to_string(),
            "-out",
            &ca.display().to_string(),
        ])?;
        Ok(Self { dir: dir.to_path_buf(), ca, ca_key })
    }

    /// A certificate for `common_name` signed by this CA, as (cert, key) files named `file`.
    /// A server's names the loopback address; a client's common name is its MQTT login.
    pub fn issue(&self, file: &str, common_name: &str, server: bool) -> Result<(PathBuf, PathBuf), BrokerError> {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
            self.dir.join(format!("{file}.csr")),
            self.dir.join(format!("{file}.ext")),
        );
        let extensions = if server {
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        } else {
            "extendedKeyUsage=clientAuth\n"
        };
        std::fs::write(&ext, extensions).map_err(|e| BrokerError::Spawn { what: "openssl", source: e })?;
        // `/` separates name parts in -subj; a terminal's login has them, escaped.
        let subject = format!("/CN={}", common_name.replace('/', "\\/"));
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &key.display().to_string(),
            "-out",
            &csr.display().to_string(),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr.display().to_string(),
            "-CA",
            &self.ca.display().to_string(),
            "-CAkey",
            &self.ca_key.display().to_string(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ])?;
        Ok((cert, key))
    }
}

fn openssl(args: &[&str]) -> Result<(), BrokerError> {
    run_tool("openssl", Command::new("openssl").args(args), &args.join(" ")).map(drop)
}

/// Runs a helper tool to completion; returns what it printed, or an error naming the tool,
/// `context` (what it was run on), its exit status and what it wrote to stderr.
fn run_tool(what: &'static str, command: &mut Command, context: &str) -> Result<String, BrokerError> {
    let out = command.output().map_err(|e| BrokerError::Spawn { what, source: e })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(BrokerError::ToolFailed { what, input: context.to_string(), status: out.status, stderr })
    }
}

/// Tansu's storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Fast, lost on exit.
    Memory,
    /// Durable across `kill -9` (a sqlite file in the broker's directory).
    Sqlite,
}

/// A Tansu broker owned by this process.
pub struct Tansu {
    child: KillOnDrop,
    pub port: u16,
    dir: PathBuf,
    storage: Storage,
    security: TansuSecurity,
}

/// What a Tansu requires of its clients, kept across restarts.
#[derive(Debug, Clone, Copy, Default)]
struct TansuSecurity {
    /// `--authentication`: SASL before anything but ApiVersions.
    sasl: bool,
    /// The port advertised in metadata, when clients reach the broker through a proxy.
    advertised_port: Option<u16>,
}

/// Where `scripts/ensure-tools` installs what is not a Debian package.
fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    std::env::var_os("EDUBRAIN_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/edubrain/tools"))
}

/// Where `scripts/ensure-tools` installs Tansu.
pub fn tansu_binary() -> Result<PathBuf, BrokerError> {
    find_binary("tansu", "EDUBRAIN_TANSU", &[tools_dir().join("tansu-0.6.0/bin/tansu")], "run scripts/ensure-tools")
}

/// The Python with the client libraries tests drive the system with (ADBC's Flight SQL
/// driver, pyarrow), installed by `scripts/ensure-tools` into its own venv.
pub fn test_python() -> Result<PathBuf, BrokerError> {
    find_binary(
        "python with adbc-driver-flightsql",
        "EDUBRAIN_TEST_PYTHON",
        &[tools_dir().join("test-venv/bin/python")],
        "run scripts/ensure-tools",
    )
}

impl Tansu {
    pub fn start(dir: &Path, storage: Storage) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(|e| BrokerError::Spawn { what: "tansu", source: e })?;
        let mut t = Self::spawn(dir, storage, free_port(), TansuSecurity::default())?;
        t.wait()?;
        Ok(t)
    }

    /// Adds a SCRAM-SHA-512 login with Tansu's own `user create` (stored by the broker's
    /// engine, so it survives restarts on sqlite). Before [`Tansu::require_sasl`]: Tansu's
    /// command-line client cannot log in itself.
    pub fn create_scram_user(&self, name: &str, password: &str) -> Result<(), BrokerError> {
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        run_tool(
            "tansu user create",
            Command::new(tansu_binary()?)
                .args(["user", "create", "--broker", &broker, "--mechanism", "scram512", name, password])
                .env("RUST_LOG", "warn"),
            name,
        )
        .map(drop)
    }

    /// Restarts requiring SASL (Tansu's `--authentication`: SCRAM logins made with
    /// [`Tansu::create_scram_user`]; note that Tansu's PLAIN accepts any password) and, with
    /// `advertised_port`, telling clients in metadata to connect there (a TLS terminator in
    /// front: Tansu 0.6 itself cannot serve TLS, its `--cert` and `--key` refuse each other).
    pub fn require_sasl(&mut self, advertised_port: Option<u16>) -> Result<(), BrokerError> {
        self.kill9();
        *self = Self::spawn(&self.dir.clone(), self.storage, self.port, TansuSecurity { sasl: true, advertised_port })?;
        self.wait()
    }

    fn spawn(dir: &Path, storage: Storage, port: u16, security: TansuSecurity) -> Result<Self, BrokerError> {
        let bin = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", security.advertised_port.unwrap_or(port));
        let engine = match storage {
            Storage::Memory => "memory://tansu/".to_string(),
            // Relative to the broker's working directory (an absolute path is not accepted as one).
            Storage::Sqlite => "sqlite://tansu.db".to_string(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .map_err(|e| BrokerError::Spawn { what: "tansu", source: e })?;
        let mut command = Command::new(bin);
        command.args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &engine]);
        if security.sasl {
            command.arg("--authentication");
        }
        // Tansu logs to stdout: both streams go to its log file.
        let stdout = log.try_clone().map_err(|e| BrokerError::Spawn { what: "tansu", source: e })?;
        let child = command
            .current_dir(dir)
            // EDUBRAIN_TANSU_LOG (e.g. `debug`) to see what the broker does in a failing test.
            .env("RUST_LOG", std::env::var("EDUBRAIN_TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(|e| BrokerError::Spawn { what: "tansu", source: e })?;
        Ok(Self { child: KillOnDrop(child), port, dir: dir.to_path_buf(), storage, security })
    }

    fn wait(&mut self) -> Result<(), BrokerError> {
        wait_ready("tansu", self.port, &self.dir.join("tansu.log"), &mut self.child.0)?;
        // Tansu has created its tables before it listens.
        if self.storage == Storage::Sqlite { index_record_headers(&self.dir) } else { Ok(()) }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.kill9();
        *self = Self::spawn(&self.dir.clone(), self.storage, self.port, self.security)?;
        self.wait()
    }

    /// Runs `sql` on the sqlite engine's file (for tests that look inside the broker, e.g. at
    /// a query plan); `None` on the memory engine.
    pub fn sqlite(&self, sql: &str) -> Result<Option<String>, BrokerError> {
        match self.storage {
            Storage::Sqlite => sqlite_shell(&self.dir, sql).map(Some),
            Storage::Memory => Ok(None),
        }
    }

    /// SIGSTOP: the process stays, its sockets stay open, and nothing answers (a hung broker).
    pub fn freeze(&self) -> Result<(), BrokerError> {
        self.child.signal("STOP")
    }

    /// SIGCONT after [`Tansu::freeze`].
    pub fn thaw(&self) -> Result<(), BrokerError> {
        self.child.signal("CONT")
    }
}

/// Gives the headers table of Tansu 0.6's sqlite engine the index its fetch needs.
///
/// For every record a consumer fetches, Tansu looks up the record's headers by
/// `(topition, offset_id)` in a table it creates without an index on them, so each record
/// fetched scans every header ever stored: in sqlite here 11.7 ms a record at 40,000 headers,
/// 48 ms at 200,000 (0.04 ms with the index). Every edubrain record carries headers, and Tansu
/// serves all storage requests from one task, so a consumer catching up after a restart held
/// that task for minutes and every produce and fetch queued behind it timed out: the hang the
/// everything-restarted test used to hit. The index lives in the broker's file, so it is made
/// once and survives restarts; `IF NOT EXISTS` makes each later start a no-op.
fn index_record_headers(dir: &Path) -> Result<(), BrokerError> {
    sqlite_shell(dir, "CREATE INDEX IF NOT EXISTS edubrain_header_record ON header (topition, offset_id)").map(drop)
}

/// Runs `sql` with Debian's sqlite3 shell on the sqlite engine's file in `dir`, beside the
/// running broker (sqlite's WAL mode lets both in); returns what it printed.
fn sqlite_shell(dir: &Path, sql: &str) -> Result<String, BrokerError> {
    let sqlite3 = find_binary(
        "sqlite3",
        "EDUBRAIN_SQLITE3",
        &[PathBuf::from("/usr/bin/sqlite3")],
        "run scripts/ensure-tools (apt-get install sqlite3)",
    )?;
    run_tool(
        "sqlite3",
        Command::new(sqlite3)
            .current_dir(dir)
            // Waits for the broker's own writes rather than failing with "database is locked".
            .args(["-cmd", ".timeout 30000", "tansu.db", sql]),
        &format!("{sql} on {}", dir.join("tansu.db").display()),
    )
}

/// TLS in front of a plaintext broker: socat (Debian's) accepting TLS with a server
/// certificate from a [`Pki`], requiring a client certificate the same CA signed, and
/// forwarding to `127.0.0.1:target`. This is how Kafka over TLS is tested against Tansu, which
/// cannot serve TLS itself (see [`Tansu::require_sasl`]).
pub struct TlsTerminator {
    _child: KillOnDrop,
    pub port: u16,
}

impl TlsTerminator {
    pub fn start(dir: &Path, port: u16, target: u16, pki: &Pki) -> Result<Self, BrokerError> {
        let (cert, key) = pki.issue("terminator", "127.0.0.1", true)?;
        let log = std::fs::File::create(dir.join("socat.log")).map_err(|e| BrokerError::Spawn { what: "socat", source: e })?;
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            cert.display(),
            key.display(),
            pki.ca.display()
        );
        let mut child = Command::new("socat")
            .args([listen, format!("TCP:127.0.0.1:{target}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| BrokerError::Spawn { what: "socat", source: e })?;
        wait_ready("socat", port, &dir.join("socat.log"), &mut child)?;
        Ok(Self { _child: KillOnDrop(child), port })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A child process (a broker, an edge under test, a baseline bridge) that is killed when
/// dropped, so a failing test never leaves it running.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends `SIG{name}` with kill(1) (this workspace forbids `unsafe`, so no libc call).
    pub fn signal(&self, name: &str) -> Result<(), BrokerError> {
        let pid = self.id().to_string();
        run_tool("kill", Command::new("kill").arg(format!("-{name}")).arg(&pid), &format!("-{name} {pid}")).map(drop)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `GET path` on the loopback `port` answers 200 (HTTP/1.0, so the server closes).
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut response = String::new();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.split_whitespace().nth(1) == Some("200")
}

/// Where Prometheus scrapes: the edge of every city and the cloud.
#[derive(Debug, Clone)]
pub struct ScrapeTargets {
    pub edges: Vec<SocketAddr>,
    pub cloud: SocketAddr,
}

/// A Prometheus server owned by this process.
pub struct Prometheus {
    _child: KillOnDrop,
    pub port: u16,
}

impl Prometheus {
    /// `deploy/prometheus/prometheus.yml` as deployed, with its targets replaced by `targets`,
    /// its scrape and evaluation interval by `interval` (e.g. `"1s"`), and its rule file by the
    /// deployed one's absolute path. Fails if the deployed file no longer has what is replaced,
    /// so the demo and the test never run a config that drifted from it.
    pub fn deployed_config(targets: &ScrapeTargets, interval: &str) -> Result<String, BrokerError> {
        let dir = repo_root().join("deploy/prometheus");
        let read_err = |e| BrokerError::Spawn { what: "prometheus", source: e };
        let mut config = std::fs::read_to_string(dir.join("prometheus.yml")).map_err(read_err)?;
        let list = |addrs: &[SocketAddr]| addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let replacements = [
            ("targets: [\"127.0.0.1:9101\", \"127.0.0.1:9102\"]".to_string(), format!("targets: [{}]", list(&targets.edges)), 1),
            ("targets: [\"127.0.0.1:8080\"]".to_string(), format!("targets: [{}]", list(&[targets.cloud])), 1),
            ("_interval: 15s".to_string(), format!("_interval: {interval}"), 2),
            ("  - alerts.yml".to_string(), format!("  - {}", dir.join("alerts.yml").display()), 1),
        ];
        for (from, to, times) in replacements {
            if config.matches(&from).count() != times {
                return Err(BrokerError::DeployedConfig { what: format!("{from:?} {times} time(s)") });
            }
            config = config.replace(&from, &to);
        }
        Ok(config)
    }

    /// Starts Debian's Prometheus (`scripts/ensure-tools` installs it) with `config`, its data
    /// in `dir`, on a free loopback port.
    pub fn start(dir: &Path, config: &str) -> Result<Self, BrokerError> {
        let spawn_err = |e| BrokerError::Spawn { what: "prometheus", source: e };
        let bin = find_binary(
            "prometheus",
            "EDUBRAIN_PROMETHEUS",
            &[PathBuf::from("/usr/bin/prometheus")],
            "run scripts/ensure-tools (apt-get install prometheus)",
        )?;
        std::fs::create_dir_all(dir).map_err(spawn_err)?;
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).map_err(spawn_err)?;
        let port = free_port();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).map_err(spawn_err)?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(spawn_err)?;
        let mut child = KillOnDrop(child);
        wait_ready("prometheus", port, &log_path, &mut child.0)?;
        // The port opens before the TSDB and the rules are loaded; until then the API answers 503.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_ok(port, "/-/ready") {
            if Instant::now() > deadline {
                return Err(BrokerError::NotReady {
                    what: "prometheus",
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    secs: 30,
                    log: log_path.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { _child: child, port })
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_tool_is_named_with_its_input_status_and_stderr() {
        let err = run_tool("sh", Command::new("sh").args(["-c", "echo 'no such table: header' >&2; exit 3"]), "SELECT 1 on tansu.db")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sh failed on SELECT 1 on tansu.db (exit status: 3): no such table: header");
        assert_eq!(run_tool("sh", Command::new("sh").args(["-c", "echo ok"]), "echo").unwrap(), "ok\n");
        let missing = run_tool("no-such-tool", &mut Command::new("/nonexistent/no-such-tool"), "x").unwrap_err().to_string();
        assert!(missing.starts_with("starting no-such-tool: "), "{missing}");
    }
}
