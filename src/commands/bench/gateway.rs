//! The gateway under test: a `tickgate serve` child process, and the CPU time and memory that
//! Linux accounts to it in `/proc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tracing::{debug, info};

use super::clients;

use std::net::SocketAddr;

/// Time `tickgate serve` gets to print its WebSocket URL. A debug build on a busy 2-core machine
/// takes a few seconds; more than this means it is stuck or failed.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Most stdout lines read while looking for the URLs; `serve` prints three.
const MAX_STARTUP_LINES: usize = 100;

/// Time `GET /metrics` may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `GET /metrics` response read.
const MAX_METRICS_BYTES: u64 = 1 << 20;

/// Environment variables of the bench process that would change what the child connects to or
/// whom it lets in. The child gets its connection settings from [`GatewayOptions`] only.
const CLEARED_ENV: &[&str] = &[
    "CTRADER_REFRESH_TOKEN",
    "CTRADER_TOKEN_FILE",
    "TICKGATE_CLIENT_TOKEN",
    "TICKGATE_LISTEN",
    "TICKGATE_JOURNAL",
    "WS_PORT",
];

/// The upstream address and credentials the gateway connects with.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Name the server certificate is checked against.
    pub server_name: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub account_id: i64,
}

/// How to start the gateway.
pub struct GatewayOptions<'a> {
    /// The `tickgate` executable.
    pub exe: &'a Path,
    /// The simulator the gateway connects to as if it were cTrader.
    pub upstream: &'a Upstream,
    /// PEM file with the simulator's CA.
    pub ca_file: &'a Path,
    /// Flags after `serve --listen 127.0.0.1:0`.
    pub extra_args: Vec<String>,
    /// File that receives the child's stderr (its logs).
    pub log_file: PathBuf,
}

/// A running `tickgate serve`. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    pid: u32,
    ws_url: String,
    log_file: PathBuf,
    clock_ticks_per_s: f64,
}

/// CPU time and memory of the gateway process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSample {
    /// User plus system CPU time of all threads, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// Highest resident set size so far, in KiB.
    pub peak_rss_kib: u64,
}

impl Gateway {
    /// Starts `tickgate serve` against the simulator and waits until it prints its WebSocket URL.
    pub async fn start(options: GatewayOptions<'_>) -> anyhow::Result<Gateway> {
        let upstream = options.upstream;
        let log = std::fs::File::create(&options.log_file)
            .with_context(|| format!("cannot create the gateway log file {}", options.log_file.display()))?;

        let mut command = Command::new(options.exe);
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&options.extra_args)
            .env("CTRADER_HOST", &upstream.server_name)
            .env("CTRADER_PORT", upstream.addr.port().to_string())
            .env("CTRADER_CA_FILE", options.ca_file)
            .env("CTRADER_CLIENT_ID", &upstream.client_id)
            .env("CTRADER_CLIENT_SECRET", &upstream.client_secret)
            .env("CTRADER_ACCESS_TOKEN", &upstream.access_token)
            .env("CTRADER_ACCOUNT_ID", upstream.account_id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for name in CLEARED_ENV {
            command.env_remove(name);
        }

        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", options.exe.display()))?;
        let pid = child.id().context("the gateway exited as soon as it started")?;
        let stdout = child.stdout.take().context("the gateway's stdout is not piped")?;

        let mut gateway = Gateway {
            child,
            pid,
            ws_url: String::new(),
            log_file: options.log_file,
            clock_ticks_per_s: clock_ticks_per_s(),
        };

        // The URL lines come first. A task drains the rest of stdout so the child cannot block
        // on a full pipe.
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(STARTUP_TIMEOUT, async {
            for _ in 0..MAX_STARTUP_LINES {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        debug!(line = %line, "gateway stdout");
                        if let Some(url) = line.strip_prefix("tickgate websocket: ") {
                            return Some(url.trim().to_string());
                        }
                    }
                    Ok(None) | Err(_) => return None,
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(url)) => gateway.ws_url = url,
            Ok(None) => bail!(
                "the gateway exited or closed stdout without printing its WebSocket URL; its log ends with:\n{}",
                gateway.log_tail()
            ),
            Err(_) => bail!(
                "the gateway printed no WebSocket URL within {} s; its log ends with:\n{}",
                STARTUP_TIMEOUT.as_secs(),
                gateway.log_tail()
            ),
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        info!(pid, url = %gateway.ws_url, "gateway started");
        Ok(gateway)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the `ws://127.0.0.1:PORT/ws` URL the gateway printed.
    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// Fails with the log's last lines when the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("the gateway exited with {status}; its log ends with:\n{}", self.log_tail()),
            Err(error) => bail!("cannot check whether the gateway is running: {error}"),
        }
    }

    /// Fetches `GET /metrics` and returns every unlabelled sample as name → value.
    pub async fn fetch_metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let addr = clients::loopback_addr(&self.ws_url)?;
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            (&mut stream).take(MAX_METRICS_BYTES).read_to_end(&mut response).await?;
            anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
        };
        let response = tokio::time::timeout(METRICS_TIMEOUT, exchange)
            .await
            .context("GET /metrics timed out")?
            .context("GET /metrics failed")?;
        let (head, body) = response.split_once("\r\n\r\n").context("GET /metrics returned no HTTP body")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET /metrics returned {:?}", head.lines().next().unwrap_or(""));
        }
        Ok(parse_metrics(body))
    }

    /// Reads the gateway's CPU time and memory from `/proc`.
    pub fn sample(&self) -> anyhow::Result<ProcessSample> {
        sample_process(&self.pid.to_string(), self.clock_ticks_per_s)
    }

    /// Returns the last lines of the gateway's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_file)
    }

    /// Kills the gateway and waits for it to exit.
    pub async fn stop(mut self) {
        if let Err(error) = self.child.start_kill() {
            debug!(error = %error, "gateway already exited");
        }
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => info!(pid = self.pid, %status, "gateway stopped"),
            Ok(Err(error)) => debug!(error = %error, "cannot wait for the gateway"),
            Err(_) => debug!(pid = self.pid, "gateway did not exit within 5 s of SIGKILL"),
        }
    }
}

/// Reads CPU time and memory of process `pid` (a number, or `self`) from `/proc`.
pub fn sample_process(pid: &str, clock_ticks_per_s: f64) -> anyhow::Result<ProcessSample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    let cpu_ticks = parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {stat_path}"))?;

    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path).with_context(|| format!("cannot read {status_path}"))?;
    let rss_kib = parse_status_kib(&status, "VmRSS").with_context(|| format!("no VmRSS in {status_path}"))?;
    let peak_rss_kib = parse_status_kib(&status, "VmHWM").unwrap_or(rss_kib);

    Ok(ProcessSample { cpu_s: cpu_ticks as f64 / clock_ticks_per_s, rss_kib, peak_rss_kib })
}

/// Returns the unlabelled samples of a Prometheus text exposition.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.contains('{'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Returns utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name in field 2 may contain spaces and parentheses, so fields are counted
    // after the last ')'. What follows starts at field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Returns the value of a `Name:   1234 kB` line of `/proc/PID/status`.
fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Returns the kernel's clock tick rate (USER_HZ), the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_s() -> f64 {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output();
    match output.ok().and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse::<f64>().ok()) {
        Some(hz) if hz > 0.0 => hz,
        _ => {
            // USER_HZ is 100 on every architecture Linux runs tickgate on (x86, arm64).
            debug!("getconf CLK_TCK failed, assuming 100 clock ticks per second");
            100.0
        }
    }
}

fn log_tail(path: &Path) -> String {
    const TAIL_LINES: usize = 20;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_command_with_spaces() {
        let stat = "4242 (tick gate) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn cpu_ticks_reject_short_line() {
        assert_eq!(parse_cpu_ticks("4242 (tickgate) S 1"), None);
    }

    #[test]
    fn status_kib_reads_named_line() {
        let status = "Name:\ttickgate\nVmHWM:\t   20480 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(12288));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn metrics_keep_unlabelled_samples() {
        let body = "# HELP tickgate_clients WebSocket clients.\n# TYPE tickgate_clients gauge\ntickgate_clients 3\n\
                    tickgate_state{state=\"Streaming\"} 1\ntickgate_slow_client_disconnects_total 2\n";
        let metrics = parse_metrics(body);
        assert_eq!(metrics.get("tickgate_clients"), Some(&3.0));
        assert_eq!(metrics.get("tickgate_slow_client_disconnects_total"), Some(&2.0));
        assert_eq!(metrics.len(), 2);
    }

    #[test]
    fn own_process_is_readable() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_cpu_ticks(&stat).is_some(), "{stat}");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_status_kib(&status, "VmRSS").unwrap() > 0);
    }
}
