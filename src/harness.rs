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
        let exe = std::env::current_exe()?;
        let key_out = data_dir.with_extension("admin-key");
        let status = Command::new(&exe)
            .args(["server", "init", "--dev-tls", "--data-dir"])
            .arg(data_dir)
            .arg("--admin-key-out")
            .arg(&key_out)
            .stdout(Stdio::null())
            .status()?;
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
            // Request logs would drown the benchmark's own output.
            .env("ONBOARD_LOG", "warn")
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
