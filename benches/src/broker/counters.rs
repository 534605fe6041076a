//! What a timed section costs besides wall and CPU time: the broker's CPU, the client's
//! read/write system calls, context switches and TCP segments.
//!
//! Sources, all sampled at the start and end of the section (never during it):
//! - client CPU and context switches: `getrusage(RUSAGE_SELF)` (every thread of the
//!   process; `ru_nvcsw` counts voluntary switches, i.e. a thread blocking — parking a tokio
//!   worker, waiting on a futex or in `epoll_wait` — so cross-thread hand-offs show here;
//!   `ru_nivcsw` counts preemptions);
//! - `syscr`/`syscw` of `/proc/self/io`: the calls that go through the VFS read/write paths
//!   (`read`, `readv`, `write`, `writev`, ...). Socket calls of the `send`/`recv` family are
//!   NOT counted there, and an eventfd write (how a tokio worker wakes the one parked in
//!   `epoll_wait`) is. std's `TcpStream::write` is `send`, its `write_vectored` is `writev`,
//!   its `read` is `recv`: so for lepus `syscw` = vectored socket writes + eventfd wakes,
//!   and for the ceiling it is only the wakes;
//! - TCP segments carrying data, both ways, summed over the process's connections to the
//!   AMQP port: `data_segs_out`/`data_segs_in` of `TCP_INFO` as `ss -tinp` prints them.
//!   With `TCP_NODELAY` on loopback a segment is about one socket write (autocorking can
//!   merge writes issued while the previous segment is still queued, so it is a lower
//!   bound); it is what the broker's reader has to take in, whatever the syscall was;
//! - broker CPU: utime + stime of `/proc/<pid>/stat` (all of the broker's threads, in
//!   clock ticks of 10 ms; a section of a few seconds makes that precise to a few per
//!   cent). The pid is `LEPUS_BENCH_BROKER_PID` if set, else the process owning the socket
//!   that listens on the AMQP port (found through `/proc/net/tcp{,6}` and `/proc/*/fd`,
//!   which needs the rights to read the broker's fds: root, or the broker's user).
//!
//! For exact counts by system call, or a profile of the timed sections only, run the bench
//! under `perf stat -D -1 --control fifo:CTL,ACK` (or `perf record`) with
//! `LEPUS_BENCH_PERF_CTL=CTL,ACK`: every section then enables perf's counters as it starts
//! and disables them as it ends (see [`perf_control`]).

use std::{
    io::{BufRead, BufReader, Write as _},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use nix::sys::{
    resource::{Usage, UsageWho, getrusage},
    time::TimeVal,
};

/// `USER_HZ`: the unit of utime/stime in `/proc/<pid>/stat`; 100 on every Linux ABI the
/// bench runs on (it is fixed by the kernel's user-space ABI, not by the kernel's `HZ`).
const USER_HZ: f64 = 100.0;

/// What the counters watch: the AMQP port and the broker's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    /// The AMQP port the clients connect to.
    pub port: u16,
    /// The broker process, if it was found.
    pub broker_pid: Option<u32>,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

/// Sets what every later [`sample`] watches (once per process; later calls are ignored).
pub fn watch(w: Watch) {
    let _ = WATCH.set(w);
}

/// What [`watch`] set, if anything.
pub fn watched() -> Option<Watch> {
    WATCH.get().copied()
}

/// The broker's pid: `LEPUS_BENCH_BROKER_PID`, else the owner of the socket listening on
/// `port`. `Err` says why it could not be found.
pub fn find_broker(port: u16) -> Result<u32, String> {
    if let Some(pid) = std::env::var("LEPUS_BENCH_BROKER_PID").ok().filter(|v| !v.trim().is_empty()) {
        return pid.trim().parse().map_err(|_| format!("LEPUS_BENCH_BROKER_PID is not a pid: {pid:?}"));
    }
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Err(format!("no socket listens on port {port} here (remote broker?)"));
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let procs = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| target.as_os_str() == w.as_str())
            {
                return Ok(pid);
            }
        }
    }
    Err(format!(
        "the socket listening on port {port} belongs to no process whose fds we may read \
         (run as root or as the broker's user, or set LEPUS_BENCH_BROKER_PID)"
    ))
}

/// Inodes of the sockets in state LISTEN on `port`, from `/proc/net/tcp` and `tcp6`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    cpu: Duration,
    vcsw: u64,
    ivcsw: u64,
    io: Option<(u64, u64)>,
    broker_ticks: Option<u64>,
    segs: Option<(u64, u64)>,
}

/// What a section cost: differences of two [`Sample`]s. `None` where a source was missing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Costs {
    /// Broker CPU seconds (user + system).
    pub broker_cpu_s: Option<f64>,
    /// Client read-family system calls (`syscr`; see the module docs for what it misses).
    pub syscr: Option<u64>,
    /// Client write-family system calls (`syscw`).
    pub syscw: Option<u64>,
    /// Client voluntary context switches, all threads.
    pub vcsw: u64,
    /// Client involuntary context switches, all threads.
    pub ivcsw: u64,
    /// TCP segments with data the client sent to the broker.
    pub segs_out: Option<u64>,
    /// TCP segments with data the client received from the broker.
    pub segs_in: Option<u64>,
}

fn usage() -> Option<Usage> {
    getrusage(UsageWho::RUSAGE_SELF).ok()
}

fn micros(tv: TimeVal) -> u64 {
    u64::try_from(tv.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(tv.tv_usec()).unwrap_or(0)
}

/// User + system CPU time the process has used so far (all its threads).
pub fn process_cpu() -> Duration {
    // getrusage(RUSAGE_SELF) fails only for an invalid `who`; a zero reading would show up
    // as a CPU time of 0 in the results rather than abort the bench.
    usage().map_or(Duration::ZERO, |u| Duration::from_micros(micros(u.user_time()) + micros(u.system_time())))
}

/// `syscr` and `syscw` of `/proc/self/io`.
fn self_io() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim_start_matches(':').trim().parse().ok())
    };
    Some((field("syscr")?, field("syscw")?))
}

/// utime + stime of `pid` in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren,
    // where field 3 (state) has index 0, so utime (14) and stime (15) are 11 and 12.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Data segments (out, in) of this process's established connections to `port`.
fn tcp_segments(port: u16) -> Option<(u64, u64)> {
    let filter = format!("( dport = :{port} )");
    let output = Command::new("ss").args(["-tinpH", "state", "established", &filter]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(parse_ss(&String::from_utf8_lossy(&output.stdout), std::process::id()))
}

/// Sums `data_segs_out`/`data_segs_in` of the sockets of `pid` in `ss -tinpH` output: a
/// socket line naming its owners (`pid=N,`), then an indented line of `TCP_INFO` fields.
pub fn parse_ss(text: &str, pid: u32) -> (u64, u64) {
    let owner = format!("pid={pid},");
    let (mut out, mut inn) = (0, 0);
    let mut ours = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            ours = line.contains(&owner);
            continue;
        }
        if !ours {
            continue;
        }
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("data_segs_out:") {
                out += v.parse::<u64>().unwrap_or(0);
            } else if let Some(v) = field.strip_prefix("data_segs_in:") {
                inn += v.parse::<u64>().unwrap_or(0);
            }
        }
        ours = false;
    }
    (out, inn)
}

/// Tells a `perf stat`/`perf record` started with `-D -1 --control fifo:CTL,ACK` to
/// enable (or disable) its events, if `LEPUS_BENCH_PERF_CTL=CTL,ACK` is set, and waits for
/// perf's acknowledgement so that nothing of the section is missed. Failures are reported
/// once on stderr and otherwise ignored: the bench itself does not need perf.
pub fn perf_control(enable: bool) {
    let Some(value) = std::env::var("LEPUS_BENCH_PERF_CTL").ok().filter(|v| !v.trim().is_empty()) else { return };
    let (ctl, ack) = value.split_once(',').map_or((value.as_str(), None), |(c, a)| (c, Some(a)));
    let command = if enable { "enable\n" } else { "disable\n" };
    let result = std::fs::OpenOptions::new().write(true).open(ctl).and_then(|mut f| f.write_all(command.as_bytes()));
    let result = result.and_then(|()| match ack {
        Some(ack) => {
            let mut line = String::new();
            BufReader::new(std::fs::File::open(ack)?).read_line(&mut line).map(|_| ())
        }
        None => Ok(()),
    });
    if let Err(e) = result {
        static WARNED: OnceLock<()> = OnceLock::new();
        if WARNED.set(()).is_ok() {
            eprintln!("LEPUS_BENCH_PERF_CTL={value}: {e}");
        }
    }
}

/// Samples every counter. The slow ones (spawning `ss`, reading the broker's stat) come
/// first, so that [`sample_end`] can take them last and neither lands inside a section.
pub fn sample_start() -> Sample {
    let w = watched();
    let segs = w.and_then(|w| tcp_segments(w.port));
    let broker_ticks = w.and_then(|w| w.broker_pid).and_then(process_ticks);
    let io = self_io();
    perf_control(true);
    let mut s = own_usage();
    s.io = io;
    s.broker_ticks = broker_ticks;
    s.segs = segs;
    s
}

/// As [`sample_start`], in the reverse order.
pub fn sample_end() -> Sample {
    let mut s = own_usage();
    perf_control(false);
    s.io = self_io();
    let w = watched();
    s.broker_ticks = w.and_then(|w| w.broker_pid).and_then(process_ticks);
    s.segs = w.and_then(|w| tcp_segments(w.port));
    s
}

fn own_usage() -> Sample {
    let count = |v: nix::libc::c_long| u64::try_from(v).unwrap_or(0);
    match usage() {
        Some(u) => Sample {
            cpu: Duration::from_micros(micros(u.user_time()) + micros(u.system_time())),
            vcsw: count(u.voluntary_context_switches()),
            ivcsw: count(u.involuntary_context_switches()),
            ..Sample::default()
        },
        None => Sample::default(),
    }
}

impl Sample {
    /// Process CPU time at this sample.
    pub fn cpu(&self) -> Duration {
        self.cpu
    }

    /// What happened between `self` (the start) and `end`.
    #[allow(clippy::cast_precision_loss, reason = "tick counts over a section are small")]
    pub fn costs_until(&self, end: &Sample) -> Costs {
        let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Costs {
            broker_cpu_s: diff(self.broker_ticks, end.broker_ticks).map(|t| t as f64 / USER_HZ),
            syscr: diff(self.io.map(|io| io.0), end.io.map(|io| io.0)),
            syscw: diff(self.io.map(|io| io.1), end.io.map(|io| io.1)),
            vcsw: end.vcsw.saturating_sub(self.vcsw),
            ivcsw: end.ivcsw.saturating_sub(self.ivcsw),
            segs_out: diff(self.segs.map(|s| s.0), end.segs.map(|s| s.0)),
            segs_in: diff(self.segs.map(|s| s.1), end.segs.map(|s| s.1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_output_is_summed_for_our_pid_only() {
        let text = "\
0      0      127.0.0.1:40000 127.0.0.1:5672 users:((\"bench\",pid=42,fd=9))
\t cubic segs_out:10 segs_in:12 data_segs_out:7 data_segs_in:9 send 1bps
0      0      127.0.0.1:40001 127.0.0.1:5672 users:((\"other\",pid=420,fd=9))
\t cubic data_segs_out:100 data_segs_in:100
0      0      127.0.0.1:40002 127.0.0.1:5672 users:((\"bench\",pid=42,fd=11))
\t cubic data_segs_out:3 data_segs_in:1
";
        assert_eq!(parse_ss(text, 42), (10, 10));
        assert_eq!(parse_ss(text, 420), (100, 100));
        assert_eq!(parse_ss(text, 4), (0, 0));
    }

    #[test]
    fn own_counters_move() {
        let start = sample_start();
        let _ = std::fs::read_to_string("/proc/self/stat").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let costs = start.costs_until(&sample_end());
        assert!(costs.syscr.unwrap() >= 1, "{costs:?}");
        assert!(costs.vcsw >= 1, "a sleep blocks: {costs:?}");
    }

    #[test]
    fn stat_of_self_parses() {
        assert!(process_ticks(std::process::id()).is_some());
    }
}
