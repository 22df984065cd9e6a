//! `tickgate serve` as a user runs it: a child process with no cTrader credentials, so it
//! streams from its embedded simulator. The tests read the printed URLs, connect a WebSocket
//! client, inject a fault through the simulator control URL, stop the process with SIGTERM,
//! and replay the journal it wrote.

mod e2e_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use e2e_support::{close_code, connect, frame_of_type, http, status_frame, subscribe, tick_of, Client, WAIT};
use tickgate::simulator::{DEMO_ACCESS_TOKEN, DEMO_CLIENT_SECRET, DEMO_REFRESH_TOKEN};

/// Time the process gets to exit after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Builds a `tickgate` command with the developer's own settings kept out: no CTRADER_*, TICKGATE_*
/// or WS_PORT variables, and a fresh temporary working directory so no `.env` is read.
fn tickgate(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickgate"));
    command.args(args).current_dir(dir).kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("CTRADER_") || name.starts_with("TICKGATE_") || name == "WS_PORT" {
            command.env_remove(name);
        }
    }
    command
}

/// A running `tickgate serve`. Dropping it kills the process, on every exit path of a test.
struct Serve {
    child: Child,
    dir: TempDir,
    gateway: SocketAddr,
    websocket: String,
    control: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Serve {
    /// Starts `tickgate serve --listen 127.0.0.1:0` with `extra` arguments and reads its URLs.
    async fn start(extra: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--sim-tick-rate", "20"];
        args.extend_from_slice(extra);
        let mut child = tickgate(dir.path(), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("tickgate binary starts");

        let stdout = child.stdout.take().expect("stdout is piped");
        let mut serve = Serve {
            child,
            dir,
            gateway: "0.0.0.0:0".parse().unwrap(),
            websocket: String::new(),
            control: "0.0.0.0:0".parse().unwrap(),
        };
        let lines = match tokio::time::timeout(WAIT, read_urls(stdout)).await {
            Ok(lines) => lines,
            Err(_) => panic!("serve printed no URLs within the wait; stderr:\n{}", serve.stderr()),
        };

        let url_after = |prefix: &str| -> String {
            let line = lines.iter().find_map(|line| line.strip_prefix(prefix));
            line.unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}")).trim().to_string()
        };
        let dashboard = url_after("tickgate dashboard: ");
        serve.websocket = url_after("tickgate websocket: ");
        let control = url_after("tickgate simulator control: ");
        let host = |url: &str, scheme: &str, path: &str| -> SocketAddr {
            let address = url.strip_prefix(scheme).and_then(|rest| rest.strip_suffix(path));
            address.and_then(|address| address.parse().ok()).unwrap_or_else(|| panic!("unexpected URL {url:?}"))
        };
        serve.gateway = host(&dashboard, "http://", "/");
        assert_eq!(host(&serve.websocket, "ws://", "/ws"), serve.gateway);
        serve.control = host(&control, "http://", "");
        assert!(serve.gateway.ip().is_loopback(), "{dashboard}");
        assert_ne!(serve.gateway.port(), 0, "{dashboard}");
        assert!(serve.control.ip().is_loopback(), "{control}");
        assert_ne!(serve.control.port(), 0, "{control}");
        serve
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Connects a client and waits for `ready`, which comes once the session streams.
    async fn client(&self) -> Client {
        let mut client = connect(&self.websocket).await;
        frame_of_type(&mut client, "ready").await;
        client
    }

    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("serve did not exit within {EXIT_WAIT:?} of SIGTERM; stderr:\n{}", self.stderr()),
        }
    }
}

/// Reads stdout until the simulator control line, the last of the three.
async fn read_urls(stdout: ChildStdout) -> Vec<String> {
    let mut reader = BufReader::new(stdout).lines();
    let mut lines = Vec::new();
    while let Some(line) = reader.next_line().await.expect("stdout is UTF-8") {
        let last = line.starts_with("tickgate simulator control: ");
        lines.push(line);
        if last {
            return lines;
        }
    }
    panic!("stdout ended after {lines:?}");
}

/// Reads to the end of the connection, which also replies to the server's close frame.
async fn finish(client: &mut Client) {
    let drain = async { while let Some(Ok(_)) = client.next().await {} };
    tokio::time::timeout(WAIT, drain).await.expect("connection ends after the close frame");
}

/// Runs `tickgate replay PATH` and returns its exit code, stdout and stderr.
async fn replay(dir: &Path, journal: &Path) -> (Option<i32>, String, String) {
    let journal = journal.to_str().expect("UTF-8 path");
    let output = tokio::time::timeout(WAIT, tickgate(dir, &["replay", journal]).output())
        .await
        .expect("replay finished within the wait")
        .expect("replay runs");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (output.status.code(), text(output.stdout), text(output.stderr))
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_and_exits_0() {
    let mut serve = Serve::start(&[]).await;
    let mut client = serve.client().await;

    subscribe(&mut client, &["EURUSD"]).await;
    for _ in 0..2 {
        let (_, text) = tick_of(&mut client, "EURUSD").await;
        assert_eq!(e2e_support::decimals_of(&text, "bid"), 5, "{text}");
        assert_eq!(e2e_support::decimals_of(&text, "ask"), 5, "{text}");
    }

    serve.terminate();
    let (code, reason) = close_code(&mut client).await;
    assert_eq!(code, 1001, "{reason}");
    finish(&mut client).await;
    let status = serve.wait_exit().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", serve.stderr());

    // The demo credentials stand in for real secrets, which must never reach the log.
    let log = serve.stderr();
    for secret in [DEMO_CLIENT_SECRET, DEMO_ACCESS_TOKEN, DEMO_REFRESH_TOKEN] {
        assert!(!log.contains(secret), "the log contains a secret:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_replays_after_fault() {
    let journal_dir = tempfile::tempdir().unwrap();
    let journal = journal_dir.path().join("journal.jsonl");
    let journal_arg = journal.to_str().unwrap();
    let mut serve = Serve::start(&["--journal", journal_arg, "--backoff-base-ms", "100", "--backoff-cap-ms", "400"]).await;
    let mut client = serve.client().await;
    subscribe(&mut client, &["EURUSD"]).await;
    tick_of(&mut client, "EURUSD").await;

    // The control endpoint takes a hand-written request, as a script would send it.
    let response = http(serve.control, "POST", "/fault", Some(r#"{"kind":"drop"}"#)).await;
    assert_eq!(response.code, 200, "{}", response.body);
    assert!(response.body.contains("drop"), "{}", response.body);
    status_frame(&mut client, "reconnecting").await;
    status_frame(&mut client, "connected").await;
    tick_of(&mut client, "EURUSD").await;

    serve.terminate();
    assert_eq!(close_code(&mut client).await.0, 1001);
    finish(&mut client).await;
    assert_eq!(serve.wait_exit().await.code(), Some(0), "stderr:\n{}", serve.stderr());

    // The intact journal replays, and its timeline shows the drop.
    let (code, timeline, stderr) = replay(journal_dir.path(), &journal).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(timeline.contains("Streaming → Backoff"), "{timeline}");
    assert!(timeline.contains("Backoff → Connecting"), "{timeline}");
    let streams = timeline.lines().filter(|line| line.contains("Authenticating → Streaming")).count();
    assert_eq!(streams, 2, "{timeline}");

    // A copy whose first Streaming → Backoff entry claims to stay in Streaming fails there.
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let index = lines
        .iter()
        .position(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            entry["from"] == "Streaming" && entry["to"] == "Backoff"
        })
        .expect("journal has a Streaming to Backoff entry");
    let mut entry: serde_json::Value = serde_json::from_str(&lines[index]).unwrap();
    entry["to"] = "Streaming".into();
    lines[index] = entry.to_string();
    let corrupt = journal_dir.path().join("corrupt.jsonl");
    std::fs::write(&corrupt, lines.join("\n") + "\n").unwrap();

    let (code, _, stderr) = replay(journal_dir.path(), &corrupt).await;
    assert_ne!(code, Some(0), "{stderr}");
    let line_number = index + 1;
    assert!(stderr.contains(&format!("line {line_number}:")), "expected line {line_number} in {stderr}");
    assert!(stderr.contains("recorded Streaming, replayed Backoff"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_2() {
    /// One invalid setting: the arguments, an extra environment variable, and the texts the
    /// error must contain.
    struct Case {
        args: &'static [&'static str],
        env: Option<(&'static str, &'static str)>,
        needles: &'static [&'static str],
    }
    let cases = [
        Case { args: &["serve", "--stale-after-ms", "0"], env: None, needles: &["--stale-after-ms", "'0'"] },
        Case { args: &["serve", "--listen", "nonsense"], env: None, needles: &["--listen", "\"nonsense\""] },
        Case { args: &["serve"], env: Some(("WS_PORT", "notaport")), needles: &["WS_PORT", "\"notaport\""] },
        Case { args: &["serve", "--backoff-jitter", "2"], env: None, needles: &["--backoff-jitter", "'2'"] },
    ];
    let dir = tempfile::tempdir().unwrap();

    for Case { args, env, needles } in cases {
        let mut command = tickgate(dir.path(), args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = tokio::time::timeout(WAIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} kept running with an invalid value"))
            .expect("tickgate runs");
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr:?} lacks {needle:?}");
        }
        assert!(output.stdout.is_empty(), "{args:?} printed {:?}", String::from_utf8_lossy(&output.stdout));
    }
}
