//! A RabbitMQ node of a test's own: its own ports, data directory, configuration and
//! plugins, started with `rabbitmq-server -detached` and stopped when dropped.
//!
//! Faults that would disturb every other connection on the shared broker (alarms,
//! `stop_app`, TLS settings) are run against such a node. Everything is on loopback.
//!
//! ```no_run
//! use lepus_tests::node::{TestNode, TestNodeConfig};
//!
//! let node = TestNode::start(&TestNodeConfig::new("lepus_doc")).expect("the node starts");
//! node.ctl(&["set_vm_memory_high_watermark", "0.4"]).expect("rabbitmqctl");
//! println!("AMQP on {}", node.amqp_url());
//! // Dropping `node` stops it and removes its directory.
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// TLS for a node: a listener on `port` that requires a client certificate signed by
/// `ca_pem`, presents `cert_pem`/`key_pem`, and offers `EXTERNAL` (the
/// `rabbitmq_auth_mechanism_ssl` plugin, user name = the certificate's common name).
#[derive(Clone)]
pub struct NodeTls {
    /// The TLS listener's port on 127.0.0.1.
    pub port: u16,
    /// The CA that client certificates must chain to (PEM).
    pub ca_pem: String,
    /// The server's certificate chain (PEM).
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").field("port", &self.port).finish_non_exhaustive()
    }
}

/// How long [`TestNodeConfig::new`] lets a node take to start.
// `from_mins` would need Rust 1.91; the workspace's MSRV is 1.88.
#[allow(clippy::duration_suboptimal_units)]
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start a [`TestNode`].
#[derive(Debug, Clone)]
pub struct TestNodeConfig {
    /// The node name's prefix: the node is `NAME_p<process id>@<short host name>`.
    pub name: String,
    /// The plain AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// The Erlang distribution port (used by `rabbitmqctl`), on 127.0.0.1.
    pub dist_port: u16,
    /// TLS with client certificates and `EXTERNAL`, if set.
    pub tls: Option<NodeTls>,
    /// How long to wait for the AMQP port to accept connections.
    pub start_timeout: Duration,
}

impl TestNodeConfig {
    /// A node without TLS on free ports near 5673 (AMQP) and 25673 (distribution).
    pub fn new(name: &str) -> Self {
        let ports = free_ports(&[5673, 25673]);
        TestNodeConfig {
            name: name.to_owned(),
            amqp_port: ports[0],
            dist_port: ports[1],
            tls: None,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

/// One free port on 127.0.0.1 for each preferred port: the preferred one if it is free, else
/// the next free one above it; all distinct. (Free when checked: another process can still
/// take it before the node does; the node then fails to start with a clear log.)
///
/// # Panics
///
/// If no port at or above a preferred one is free.
pub fn free_ports(preferred: &[u16]) -> Vec<u16> {
    let mut chosen: Vec<u16> = Vec::with_capacity(preferred.len());
    for &start in preferred {
        let port = (start..=u16::MAX)
            .find(|p| !chosen.contains(p) && port_is_free(*p))
            .unwrap_or_else(|| panic!("no free port at or above {start}"));
        chosen.push(port);
    }
    chosen
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A running RabbitMQ node of the test's own. Dropping it stops the node
/// (`rabbitmqctl stop`, then a kill of its process if that did not work) and removes its
/// directory (kept, and its path printed, when the thread is panicking).
#[derive(Debug)]
pub struct TestNode {
    nodename: String,
    dir: PathBuf,
    pid_file: PathBuf,
    amqp_port: u16,
    tls_port: Option<u16>,
    /// The node's OS process id, read from its pid file.
    pid: Option<u32>,
    stopped: bool,
    /// How it was started, for [`TestNode::restart`].
    config: TestNodeConfig,
}

impl TestNode {
    /// Writes the node's directory, starts it, and waits until its AMQP (and TLS) port
    /// accepts connections and `rabbitmqctl await_startup` says it has booted.
    pub fn start(config: &TestNodeConfig) -> io::Result<TestNode> {
        let host = short_hostname()?;
        let nodename = format!("{}_p{}@{host}", config.name, std::process::id());
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("lepus-node-{}-{}-{nanos}", config.name, std::process::id()));
        for port in
            [Some(config.amqp_port), Some(config.dist_port), config.tls.as_ref().map(|t| t.port)].into_iter().flatten()
        {
            if !port_is_free(port) {
                return Err(io::Error::other(format!("port {port} is in use: choose others (see free_ports)")));
            }
        }
        stop_orphans(&config.name);
        // From here on, a failure drops `node`, which stops whatever did start.
        let mut node = TestNode {
            nodename,
            pid_file: dir.join("node.pid"),
            dir,
            amqp_port: config.amqp_port,
            tls_port: config.tls.as_ref().map(|t| t.port),
            pid: None,
            stopped: false,
            config: config.clone(),
        };
        node.write_files(config)?;
        node.launch(config)?;
        node.wait_until_ready(config)?;
        Ok(node)
    }

    fn write_files(&self, config: &TestNodeConfig) -> io::Result<()> {
        let dir = &self.dir;
        for sub in ["mnesia", "log", "tls"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{}\n", config.amqp_port);
        // No management/prometheus listeners: only the plugins below are enabled.
        let plugins = match &config.tls {
            None => "[].\n",
            Some(tls) => {
                let tls_dir = dir.join("tls");
                std::fs::write(tls_dir.join("ca.pem"), &tls.ca_pem)?;
                std::fs::write(tls_dir.join("server.pem"), &tls.cert_pem)?;
                std::fs::write(tls_dir.join("server.key"), &tls.key_pem)?;
                let _ = write!(
                    conf,
                    "listeners.ssl.default = 127.0.0.1:{port}\n\
                     ssl_options.cacertfile = {ca}\n\
                     ssl_options.certfile = {cert}\n\
                     ssl_options.keyfile = {key}\n\
                     ssl_options.verify = verify_peer\n\
                     ssl_options.fail_if_no_peer_cert = true\n\
                     auth_mechanisms.1 = PLAIN\n\
                     auth_mechanisms.2 = AMQPLAIN\n\
                     auth_mechanisms.3 = EXTERNAL\n\
                     ssl_cert_login_from = common_name\n",
                    port = tls.port,
                    ca = tls_dir.join("ca.pem").display(),
                    cert = tls_dir.join("server.pem").display(),
                    key = tls_dir.join("server.key").display(),
                );
                "[rabbitmq_auth_mechanism_ssl].\n"
            }
        };
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        std::fs::write(dir.join("enabled_plugins"), plugins)?;
        // The node runs as `rabbitmq`: the Debian wrapper switches to that user when
        // started by root, so the directory must be theirs.
        if is_root()? {
            run(Command::new("chown").arg("-R").arg("rabbitmq:rabbitmq").arg(dir))?;
        }
        Ok(())
    }

    fn launch(&mut self, config: &TestNodeConfig) -> io::Result<()> {
        let dir = &self.dir;
        let mut cmd = Command::new("rabbitmq-server");
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &self.nodename)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", config.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", config.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", &self.pid_file)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}");
        run(&mut cmd).map(|_| ())
    }

    fn wait_until_ready(&mut self, config: &TestNodeConfig) -> io::Result<()> {
        let deadline = Instant::now() + config.start_timeout;
        let ports: Vec<u16> = [Some(self.amqp_port), self.tls_port].into_iter().flatten().collect();
        loop {
            if self.pid.is_none() {
                self.pid = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse().ok());
            }
            if let Some(pid) = self.pid
                && !process_alive(pid)
            {
                return Err(io::Error::other(format!(
                    "node {} exited while starting{}",
                    self.nodename,
                    self.log_tail()
                )));
            }
            let up = ports.iter().all(|&port| {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200))
                    .is_ok()
            });
            if up {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "node {} did not accept on {ports:?} within {:?}{}",
                    self.nodename,
                    config.start_timeout,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let timeout = config.start_timeout.as_secs().max(1).to_string();
        self.ctl(&["await_startup", "--timeout", &timeout])?;
        if self.pid.is_none() {
            self.pid = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse().ok());
        }
        Ok(())
    }

    /// The node's name (`NAME_p<pid>@host`).
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// The node's directory (configuration, data, logs, TLS files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plain AMQP port.
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// The TLS port, if TLS is on.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The node's OS process id, once known.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Kills the node's Erlang VM with `SIGKILL` (a crash: nothing is flushed, no client is
    /// told) and waits up to 10 s for the process to be gone. Its data stays for
    /// [`TestNode::restart`]. Returns the process id killed.
    pub fn kill(&mut self) -> io::Result<u32> {
        if self.pid.is_none() {
            self.pid = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse().ok());
        }
        let pid = self.pid.ok_or_else(|| io::Error::other(format!("no pid known for node {}", self.nodename)))?;
        run(Command::new("kill").arg("-KILL").arg(pid.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "node {} (pid {pid}) still alive 10 s after SIGKILL",
                    self.nodename
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pid)
    }

    /// Starts the node again on the same ports and data directory (after [`TestNode::kill`],
    /// or a stop), and waits until it is ready as [`TestNode::start`] does. Returns how long
    /// that took.
    pub fn restart(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        if let Some(pid) = self.pid
            && process_alive(pid)
        {
            return Err(io::Error::other(format!("node {} (pid {pid}) is still running", self.nodename)));
        }
        // The old pid file names a dead process: waiting would take that as a failed start.
        match std::fs::remove_file(&self.pid_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.pid = None;
        self.stopped = false;
        let config = self.config.clone();
        self.launch(&config)?;
        self.wait_until_ready(&config)?;
        Ok(started.elapsed())
    }

    /// Runs `rabbitmqctl -n NODE ARGS...`; its standard output, or an error with what it
    /// printed if it failed.
    pub fn ctl(&self, args: &[&str]) -> io::Result<String> {
        let out = run(Command::new("rabbitmqctl").arg("-n").arg(&self.nodename).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the node now: `rabbitmqctl stop PIDFILE` (which waits for the process to
    /// exit), or a kill of the process if that fails or takes over 30 s. Returns how long
    /// it took. Idempotent.
    pub fn stop(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        if self.stopped {
            return Ok(Duration::ZERO);
        }
        self.stopped = true;
        if self.pid.is_none() {
            self.pid = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse().ok());
        }
        let mut cmd = Command::new("rabbitmqctl");
        cmd.arg("-n").arg(&self.nodename).arg("stop").arg(&self.pid_file);
        let graceful = match cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
            Ok(child) => wait_with_timeout(child, Duration::from_secs(30)),
            Err(e) => Err(e),
        };
        let still_running = self.pid.is_some_and(process_alive);
        if let Some(pid) = self.pid.filter(|_| still_running) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        match graceful {
            Ok(()) => Ok(started.elapsed()),
            Err(e) if !still_running => Err(io::Error::other(format!("rabbitmqctl stop failed ({e}), node gone"))),
            Err(e) => Err(io::Error::other(format!("rabbitmqctl stop failed ({e}); killed the node"))),
        }
    }

    /// The last lines of the node's log files, for error messages.
    fn log_tail(&self) -> String {
        let mut tail = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("log")) else { return tail };
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                let _ = write!(tail, "\n--- {} ---\n{}", entry.path().display(), lines[from..].join("\n"));
            }
        }
        tail
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping test node {}: {e}", self.nodename);
        }
        if std::thread::panicking() || std::env::var_os("LEPUS_KEEP_NODE_DIR").is_some() {
            eprintln!("test node {} directory kept: {}", self.nodename, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a command to completion; an error with its output if it failed.
fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = io::Read::read_to_string(&mut stderr, &mut err);
                }
                Err(io::Error::other(format!("{status}: {}", err.trim())))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no exit within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn short_hostname() -> io::Result<String> {
    let out = run(Command::new("hostname").arg("-s"))?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if name.is_empty() { Err(io::Error::other("`hostname -s` printed nothing")) } else { Ok(name) }
}

fn is_root() -> io::Result<bool> {
    let out = run(Command::new("id").arg("-u"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Stops the nodes named `PREFIX_p<pid>` (see [`TestNodeConfig::name`]) left running by test
/// processes that were killed before their `TestNode` was dropped (Ctrl-C, SIGKILL), and
/// removes their directories. [`TestNode::start`] calls it; call it before [`free_ports`]
/// to get the ports such a node held.
pub fn stop_orphans(prefix: &str) {
    let Ok(host) = short_hostname() else { return };
    let Ok(out) = Command::new("epmd").arg("-names").stdin(Stdio::null()).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "name lepus_own_node_p1234 at port 25673"
        let Some(name) = line.strip_prefix("name ").and_then(|rest| rest.split_whitespace().next()) else { continue };
        let Some(pid) = name.strip_prefix(&format!("{prefix}_p")).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        eprintln!("stopping {name}@{host}, left running by test process {pid}");
        if let Err(e) = run(Command::new("rabbitmqctl").arg("-n").arg(format!("{name}@{host}")).arg("stop")) {
            eprintln!("stopping {name}@{host}: {e}");
        }
        let dir_prefix = format!("lepus-node-{prefix}-{pid}-");
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&dir_prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
