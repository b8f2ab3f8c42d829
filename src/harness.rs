//! A server child process for the benchmarks: `onboard-suite server init`
//! and `serve` on an ephemeral 127.0.0.1 port, killed on drop.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server as a child process of this binary (`onboard-suite server …`).
pub struct ServerProcess {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The dev CA the client trusts.
    pub ca: PathBuf,
    /// The first admin API key.
    pub admin_key: String,
}

impl ServerProcess {
    /// `init --dev-tls` in `data_dir`, then `serve` with extra `ONBOARD_*` settings.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_on(data_dir, None, env)
    }

    /// [`start`](Self::start), on the PostgreSQL database at `database_url`
    /// when one is given (`init --database-url`), else on sled in `data_dir`.
    pub fn start_on(
        data_dir: &Path,
        database_url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let key_out = data_dir.with_extension("admin-key");
        let mut init = Command::new(&exe);
        init.args(["server", "init", "--dev-tls", "--data-dir"])
            .arg(data_dir)
            .arg("--admin-key-out")
            .arg(&key_out);
        if let Some(url) = database_url {
            init.args(["--database-url", url]);
        }
        let status = init.stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("onboard-server init failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&exe)
            .args(["server", "serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .envs(
                env.iter()
                    .map(|(k, v)| (format!("ONBOARD_{k}"), v.to_string())),
            )
            // Request logs would drown the benchmark's own output; an
            // `ONBOARD_LOG` of the caller's (e.g. `warn,onboard_server=debug`
            // for the finish's step timings) is passed on.
            .env(
                "ONBOARD_LOG",
                std::env::var("ONBOARD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        let admin_key = std::fs::read_to_string(&key_out)?.trim().to_string();
        let ca = data_dir.join("tls").join("ca.pem");
        let server = Self {
            child,
            url: format!("https://127.0.0.1:{port}"),
            ca,
            admin_key,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.url.trim_start_matches("https://")).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the server did not start listening within 30 s")
    }

    /// The server's peak resident set size, in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        peak_rss(self.child.id())
    }

    /// CPU time the server has used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        process_cpu_seconds(self.child.id())
    }
}

/// CPU time a process has used (user and system, all its threads), in seconds.
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) are plain;
    // utime and stime are the 14th and 15th fields of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no command name in /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("short /proc stat")
    };
    // SAFETY: sysconf only reads a constant of the running kernel.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) as f64 / per_second)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM not found in /proc status")?;
    Ok(kib * 1024)
}

/// Memory of the PostgreSQL processes on this machine: the sum of their
/// proportional set sizes, so that the shared buffers every backend maps
/// count once (a sum of RSS would count them once per backend).
pub fn postgres_pss() -> Result<u64> {
    let mut kib = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let path = entry.path();
        let is_postgres =
            std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "postgres");
        // A process may end between the two reads: it then counts nothing.
        let Ok(rollup) = std::fs::read_to_string(path.join("smaps_rollup")) else {
            continue;
        };
        if is_postgres {
            kib += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(kib * 1024)
}

/// The peak of [`postgres_pss`], sampled every half second on a thread of
/// its own until dropped.
pub struct PostgresMemory {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<u64>>,
}

impl PostgresMemory {
    pub fn sample() -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            // Bounded by the benchmark: `peak` sets the flag.
            while !flag.load(Ordering::SeqCst) {
                peak = peak.max(postgres_pss().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(500));
            }
            peak
        });
        Self {
            stop,
            sampler: Some(sampler),
        }
    }

    /// Stop sampling; the peak seen, in bytes.
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let sampler = self.sampler.take().expect("sampled once");
        sampler.join().unwrap_or(0).max(postgres_pss().unwrap_or(0))
    }
}

impl Drop for PostgresMemory {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `SQL` on the database at `url` through `psql`; its unaligned output.
pub fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .context("running psql (PostgreSQL's client)")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The size on disk of the database at `url` and of each of its tables
/// (indexes and TOAST included), largest first.
pub fn postgres_sizes(url: &str) -> Result<(u64, Vec<(String, u64)>)> {
    let total = psql(url, "SELECT pg_database_size(current_database())")?
        .trim()
        .parse()
        .context("pg_database_size")?;
    let tables = psql(
        url,
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname = current_schema() ORDER BY 2 DESC",
    )?
    .lines()
    .filter_map(|l| {
        let (name, size) = l.split_once('|')?;
        Some((name.to_string(), size.trim().parse().ok()?))
    })
    .collect();
    Ok((total, tables))
}

/// Machine-wide CPU ticks from `/proc/stat`, all cores together.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    /// Ticks not idle (steal included: the cores were taken, not free).
    pub busy: u64,
    /// Ticks the hypervisor ran something else on our cores.
    pub steal: u64,
    /// All ticks.
    pub total: u64,
}

/// Read the machine's CPU ticks.
pub fn cpu_ticks() -> Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|f| f.parse().context("a /proc/stat field is not a number"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Ok(CpuTicks {
        busy: total - field(3) - field(4),
        steal: field(7),
        total,
    })
}

/// The busy share of the cores between two readings.
pub fn busy_share(before: CpuTicks, after: CpuTicks) -> f64 {
    share(
        after.busy.saturating_sub(before.busy),
        after.total.saturating_sub(before.total),
    )
}

/// The share of the cores' time taken by the hypervisor between two
/// readings: wall time passes, but no thread of ours (nor the bench's
/// sampler, whose CPU clock stops) runs.
pub fn steal_share(before: CpuTicks, after: CpuTicks) -> f64 {
    share(
        after.steal.saturating_sub(before.steal),
        after.total.saturating_sub(before.total),
    )
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    part as f64 / total as f64
}

/// CPU time this thread has run, in seconds (`CLOCK_THREAD_CPUTIME_ID`):
/// unlike wall time, it does not grow while other threads hold the core.
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel knows. On failure `ts` stays zero.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
