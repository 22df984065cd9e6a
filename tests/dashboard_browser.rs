//! Drives the dashboard in headless Chromium against a real `tickgate serve`.
//!
//! The test starts `tickgate serve` with its embedded simulator and short thresholds, then a
//! chromedriver on a free loopback port, which starts Chromium. Through the page it subscribes to
//! a symbol, then injects faults through the simulator's control endpoint and checks what the
//! page shows after each one. Every step saves a PNG screenshot under
//! `<target dir>/dashboard-screenshots/` and prints its path.
//!
//! Needs Debian's Chromium and ChromeDriver:
//! `apt-get update && apt-get install -y chromium chromium-driver`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHROMIUM: &str = "/usr/bin/chromium";
const INSTALL_HINT: &str = "install them with `apt-get update && apt-get install -y chromium chromium-driver`";

/// The session's thresholds for this test, short so that each fault shows within seconds.
const STALE_AFTER_MS: u64 = 1500;
/// Above the embedded simulator's 10 s heartbeat interval: while ticks are stalled only its
/// heartbeats arrive, and a shorter timeout would turn the Stale step into a reconnect.
const LIVENESS_TIMEOUT_MS: u64 = 12_000;
const CONNECT_TIMEOUT_MS: u64 = 3000;
/// Long enough that the page shows Reconnecting for over a second, so the screenshot catches it.
const BACKOFF_BASE_MS: u64 = 1500;

/// The symbol the test subscribes to when the simulator offers it; otherwise the first offered.
const PREFERRED_SYMBOL: &str = "EURUSD";

const SERVE_START_TIMEOUT: Duration = Duration::from_secs(60);
const CHROMEDRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(40);

/// Window size for the laptop screenshots, and the phone size for the last one.
const LAPTOP_WINDOW: (u32, u32) = (1280, 1000);
const PHONE_WINDOW: (u32, u32) = (390, 844);

#[tokio::test]
async fn dashboard_follows_faults() {
    let chromedriver = find_browser_tools();
    let target_dir = target_dir();
    let screenshot_dir = target_dir.join("dashboard-screenshots");
    std::fs::create_dir_all(&screenshot_dir)
        .unwrap_or_else(|error| panic!("failed to create {}: {error}", screenshot_dir.display()));
    remove_old_screenshots(&screenshot_dir);

    let serve = start_serve(&screenshot_dir).unwrap_or_else(|error| panic!("{error:#}"));
    let (_chromedriver_guard, driver_port) =
        start_chromedriver(&chromedriver, &screenshot_dir).unwrap_or_else(|error| panic!("{error:#}"));
    let profile = tempfile::tempdir().expect("failed to create a Chromium profile directory");
    let client = connect_browser(driver_port, profile.path()).await.unwrap_or_else(|error| panic!("{error:#}"));

    let screenshots = Screenshots { dir: screenshot_dir };
    let outcome = run_scenario(&client, &serve, &screenshots).await;

    // On failure, keep what the page showed and what the server logged before tearing down.
    if outcome.is_err() {
        let _ = screenshots.save(&client, "failure").await;
        if let Ok(text) = client.find(Locator::Css("body")).await {
            let _ = text.text().await.map(|body| note(&format!("page text at failure:\n{body}")));
        }
        note(&format!("tickgate serve log: {}\n{}", serve.log.display(), log_tail(&serve.log, 40)));
    }
    let _ = client.close().await;
    if let Err(error) = outcome {
        panic!("{error:#}");
    }
}

/// Runs the steps of the test. Returns an error instead of panicking so that the caller can save
/// a failure screenshot and close the browser first.
async fn run_scenario(client: &Client, serve: &Serve, screenshots: &Screenshots) -> anyhow::Result<()> {
    client.goto(&serve.dashboard_url).await.context("failed to open the dashboard")?;
    record_state_history(client).await?;

    // 1. The page connects to the gateway and shows Connected once the session streams.
    wait_for_state(client, 0, "connected", FIRST_CONNECT_TIMEOUT).await?;
    let diagram_nodes = client.find_all(Locator::Css("#diagram .node")).await?;
    ensure!(diagram_nodes.len() == 6, "expected 6 states in the diagram, found {}", diagram_nodes.len());
    wait_until(client, "transition history loaded", STEP_TIMEOUT, || async {
        Ok(!client.find_all(Locator::Css("#transitions li")).await?.is_empty())
    })
    .await?;

    // 2. Subscribe through the picker and see prices arrive and change.
    let symbol = pick_symbol(client).await?;
    client.find(Locator::Id("subscribe-button")).await?.click().await?;
    let row = format!("tr[data-symbol=\"{symbol}\"]");
    let first_bid = wait_for_new_price(client, &row, None).await?;
    let second_bid = wait_for_new_price(client, &row, Some(&first_bid)).await?;
    let spread = cell_text(client, &format!("{row} .spread")).await?;
    ensure!(spread.parse::<f64>().is_ok_and(|pips| pips >= 0.0), "spread cell shows {spread:?}");
    note(&format!("{symbol} bid changed from {first_bid} to {second_bid}, spread {spread} pips"));
    ensure!(
        !client.find(Locator::Id("stale-banner")).await?.is_displayed().await?,
        "#stale-banner is shown while ticks flow"
    );
    ensure!(current_diagram_state(client).await? == "Streaming", "the diagram does not highlight Streaming");
    screenshots.save(client, "01-streaming").await?;

    // 3. Stop ticks upstream: the page shows Stale and its warning banner within the threshold.
    let history_mark = state_history(client).await?.len();
    let injected_at = Instant::now();
    inject_fault(&serve.control_url, json!({ "kind": "stall_ticks" })).await?;
    let stale_deadline = Duration::from_millis(STALE_AFTER_MS) + Duration::from_secs(5);
    wait_for_state(client, history_mark, "stale", stale_deadline).await?;
    note(&format!(
        "stale shown {} ms after stall_ticks (threshold {STALE_AFTER_MS} ms)",
        injected_at.elapsed().as_millis()
    ));
    let banner = client.find(Locator::Id("stale-banner")).await?;
    ensure!(banner.is_displayed().await?, "#stale-banner is hidden while the state is stale");
    ensure!(!banner.text().await?.trim().is_empty(), "#stale-banner is empty");
    ensure!(current_diagram_state(client).await? == "Stale", "the diagram does not highlight Stale");
    let stale_label = cell_text(client, "#state-label").await?;
    ensure!(stale_label.starts_with("Stale"), "label while stale: {stale_label:?}");
    screenshots.save(client, "02-stale").await?;

    // 4. Resume ticks: the page returns to Connected, the banner goes away and prices move again.
    let history_mark = state_history(client).await?.len();
    inject_fault(&serve.control_url, json!({ "kind": "resume" })).await?;
    wait_for_state(client, history_mark, "connected", STEP_TIMEOUT).await?;
    ensure!(
        !client.find(Locator::Id("stale-banner")).await?.is_displayed().await?,
        "#stale-banner is still shown after resume"
    );
    let resumed_bid = cell_text(client, &format!("{row} .bid")).await?;
    wait_for_new_price(client, &row, Some(&resumed_bid)).await?;
    screenshots.save(client, "03-resumed").await?;

    // 5. Drop the upstream connection: the page shows Reconnecting, then Connected again, and
    //    ticks for the subscribed symbol flow on the new connection.
    let history_mark = state_history(client).await?.len();
    inject_fault(&serve.control_url, json!({ "kind": "drop" })).await?;
    wait_for_state(client, history_mark, "reconnecting", STEP_TIMEOUT).await?;
    let reconnecting_label = cell_text(client, "#state-label").await?;
    note(&format!("label while reconnecting: {reconnecting_label}"));
    ensure!(
        reconnecting_label.starts_with("Reconnecting") && reconnecting_label.contains("attempt"),
        "label while reconnecting: {reconnecting_label:?}"
    );
    ensure!(current_diagram_state(client).await? == "Backoff", "the diagram does not highlight Backoff");
    screenshots.save(client, "04-reconnecting").await?;
    wait_for_state(client, history_mark, "connected", STEP_TIMEOUT).await?;
    let history = state_history(client).await?;
    let after_drop = &history[history_mark..];
    let reconnecting_at = after_drop.iter().position(|state| state == "reconnecting");
    let connected_at = after_drop.iter().rposition(|state| state == "connected");
    ensure!(
        matches!((reconnecting_at, connected_at), (Some(r), Some(c)) if r < c),
        "expected reconnecting then connected after drop, saw {after_drop:?}"
    );
    ensure!(
        !client.find_all(Locator::Css("#transitions li[data-to=\"Backoff\"]")).await?.is_empty(),
        "the transition history has no entry into Backoff"
    );
    let reconnected_bid = cell_text(client, &format!("{row} .bid")).await?;
    wait_for_new_price(client, &row, Some(&reconnected_bid)).await?;
    screenshots.save(client, "05-reconnected").await?;

    // 6. The same page at phone width.
    client.set_window_size(PHONE_WINDOW.0, PHONE_WINDOW.1).await?;
    screenshots.save(client, "06-phone").await?;

    // 7. Unsubscribe removes the row.
    client.find(Locator::Css(&format!("{row} .unsubscribe"))).await?.click().await?;
    wait_until(client, "row removed after unsubscribe", STEP_TIMEOUT, || async {
        Ok(client.find_all(Locator::Css(&row)).await?.is_empty())
    })
    .await?;
    Ok(())
}

// -------------------------------------------------------------------------------------------------
// Page helpers

/// Records every value of `#state[data-state]` in `window.stateHistory`, so that a state shown
/// only briefly is not missed between two polls.
async fn record_state_history(client: &Client) -> anyhow::Result<()> {
    let script = r#"
        const state = document.getElementById("state");
        window.stateHistory = [];
        const record = () => {
            const value = state.dataset.state;
            if (window.stateHistory[window.stateHistory.length - 1] !== value) {
                window.stateHistory.push(value);
            }
        };
        record();
        new MutationObserver(record).observe(state, { attributes: true, attributeFilter: ["data-state"] });
    "#;
    client.execute(script, vec![]).await.context("failed to install the state recorder")?;
    Ok(())
}

async fn state_history(client: &Client) -> anyhow::Result<Vec<String>> {
    let value = client.execute("return window.stateHistory;", vec![]).await?;
    let history: Vec<String> = serde_json::from_value(value).context("window.stateHistory is not a list of strings")?;
    Ok(history)
}

/// Waits until the page has shown `expected` at or after position `from` of the state history.
async fn wait_for_state(client: &Client, from: usize, expected: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let history = state_history(client).await?;
        if history.iter().skip(from).any(|state| state == expected) {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let label = cell_text(client, "#state-label").await.unwrap_or_default();
            bail!(
                "the page did not show {expected:?} within {} ms; states since the step began: {:?}; label: {label:?}",
                timeout.as_millis(),
                history.get(from..).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn wait_until<F, Fut>(client: &Client, condition: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            let label = cell_text(client, "#state-label").await.unwrap_or_default();
            bail!("timed out after {} ms waiting for: {condition} (state label: {label:?})", timeout.as_millis());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Returns the state that the diagram highlights as current.
async fn current_diagram_state(client: &Client) -> anyhow::Result<String> {
    let node = client.find(Locator::Css("#diagram .node.current")).await.context("the diagram highlights no state")?;
    Ok(node.attr("data-state").await?.unwrap_or_default())
}

async fn cell_text(client: &Client, selector: &str) -> anyhow::Result<String> {
    let element =
        client.find(Locator::Css(selector)).await.with_context(|| format!("no element matches {selector}"))?;
    Ok(element.text().await?.trim().to_string())
}

/// Selects the preferred symbol in the picker, or the first one offered, and returns it.
async fn pick_symbol(client: &Client) -> anyhow::Result<String> {
    wait_until(client, "symbol picker filled from availableSymbols", STEP_TIMEOUT, || async {
        let picker = client.find(Locator::Id("symbol-picker")).await?;
        Ok(picker.is_enabled().await?
            && !picker.find_all(Locator::Css("option[value]:not([value=''])")).await?.is_empty())
    })
    .await?;
    let picker = client.find(Locator::Id("symbol-picker")).await?;
    let preferred = picker.find_all(Locator::Css(&format!("option[value=\"{PREFERRED_SYMBOL}\"]"))).await?;
    let symbol = if preferred.is_empty() {
        let first = picker.find(Locator::Css("option[value]")).await?;
        first.attr("value").await?.context("the first picker option has no value")?
    } else {
        PREFERRED_SYMBOL.to_string()
    };
    picker.select_by_value(&symbol).await?;
    Ok(symbol)
}

/// Waits until the row's bid is a decimal price different from `previous`, and returns it.
async fn wait_for_new_price(client: &Client, row: &str, previous: Option<&str>) -> anyhow::Result<String> {
    let bid_selector = format!("{row} .bid");
    let started = Instant::now();
    loop {
        let bid = cell_text(client, &bid_selector).await.unwrap_or_default();
        if is_decimal_price(&bid) && previous != Some(bid.as_str()) {
            let ask = cell_text(client, &format!("{row} .ask")).await?;
            ensure!(is_decimal_price(&ask), "{row} shows bid {bid} but ask {ask:?}");
            return Ok(bid);
        }
        if started.elapsed() > STEP_TIMEOUT {
            let label = cell_text(client, "#state-label").await.unwrap_or_default();
            bail!(
                "{row} showed no new bid within {} ms (last {bid:?}, previous {previous:?}, state label {label:?})",
                STEP_TIMEOUT.as_millis()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn is_decimal_price(text: &str) -> bool {
    match text.split_once('.') {
        Some((whole, fraction)) => {
            !whole.is_empty()
                && !fraction.is_empty()
                && whole.bytes().all(|byte| byte.is_ascii_digit())
                && fraction.bytes().all(|byte| byte.is_ascii_digit())
        }
        None => false,
    }
}

/// Removes the PNGs of an earlier run, so that a failed run leaves no screenshot that it did
/// not take.
fn remove_old_screenshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.extension().is_some_and(|extension| extension == "png") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

struct Screenshots {
    dir: PathBuf,
}

impl Screenshots {
    async fn save(&self, client: &Client, name: &str) -> anyhow::Result<PathBuf> {
        let png = client.screenshot().await.with_context(|| format!("failed to take screenshot {name}"))?;
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("failed to write {}", path.display()))?;
        note(&format!("screenshot: {}", path.display()));
        Ok(path)
    }
}

// -------------------------------------------------------------------------------------------------
// Processes

/// A child process that is killed, with its whole process group, when the guard drops, so that
/// no exit path (success, failed check or panic) leaves it running.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        // A new process group per child: chromedriver starts Chromium, which starts helper
        // processes of its own, and killing the group reaches all of them.
        command.process_group(0);
        let child = command.spawn().with_context(|| format!("failed to start {name}"))?;
        Ok(Self { child })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Serve {
    // Fields drop in order: the process is killed before its working directory is removed.
    _guard: ChildGuard,
    _working_dir: tempfile::TempDir,
    dashboard_url: String,
    control_url: String,
    log: PathBuf,
}

/// Starts `tickgate serve` with the embedded simulator and reads its URLs from stdout.
fn start_serve(log_dir: &Path) -> anyhow::Result<Serve> {
    let log = log_dir.join("serve.log");
    let log_file = File::create(&log).with_context(|| format!("failed to create {}", log.display()))?;

    // An empty environment and a scratch working directory keep cTrader credentials (from the
    // environment or a .env file) away, so serve always starts its embedded simulator.
    let working_dir = tempfile::tempdir().context("failed to create a working directory for serve")?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickgate"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        // The log goes to a file, which reads better without colour escapes.
        .env("NO_COLOR", "1")
        .current_dir(working_dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--sim-control", "127.0.0.1:0"])
        .args(["--stale-after-ms", &STALE_AFTER_MS.to_string()])
        .args(["--liveness-timeout-ms", &LIVENESS_TIMEOUT_MS.to_string()])
        .args(["--backoff-base-ms", &BACKOFF_BASE_MS.to_string()])
        .args(["--connect-timeout-ms", &CONNECT_TIMEOUT_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    let mut guard = ChildGuard::spawn("tickgate serve", &mut command)?;

    // A thread keeps reading stdout for the whole run, so the pipe never fills up.
    let stdout = guard.child.stdout.take().context("serve has no stdout pipe")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + SERVE_START_TIMEOUT;
    let mut dashboard_url = None;
    let mut control_url = None;
    while dashboard_url.is_none() || control_url.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("tickgate dashboard: ") {
                    dashboard_url = Some(url.trim().to_string());
                } else if let Some(url) = line.strip_prefix("tickgate simulator control: ") {
                    control_url = Some(url.trim().to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "tickgate serve printed no dashboard and simulator control URLs within {} s; log {}:\n{}",
                SERVE_START_TIMEOUT.as_secs(),
                log.display(),
                log_tail(&log, 40)
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.child.wait().map(|status| status.to_string()).unwrap_or_default();
                bail!(
                    "tickgate serve exited ({status}) before printing its URLs; log {}:\n{}",
                    log.display(),
                    log_tail(&log, 40)
                );
            }
        }
    }

    Ok(Serve {
        _guard: guard,
        _working_dir: working_dir,
        dashboard_url: dashboard_url.unwrap_or_default(),
        control_url: control_url.unwrap_or_default(),
        log,
    })
}

/// Returns chromedriver's path, and panics with install instructions when Chromium or
/// chromedriver is missing: this test never skips silently.
fn find_browser_tools() -> PathBuf {
    if !Path::new(CHROMIUM).is_file() {
        panic!("Chromium not found at {CHROMIUM}; {INSTALL_HINT}");
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("chromedriver")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/chromedriver")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("chromedriver not found on PATH or at /usr/bin/chromedriver; {INSTALL_HINT}"))
}

fn start_chromedriver(chromedriver: &Path, log_dir: &Path) -> anyhow::Result<(ChildGuard, u16)> {
    let port = free_port()?;
    let log = log_dir.join("chromedriver.log");
    let mut command = Command::new(chromedriver);
    command
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut guard = ChildGuard::spawn("chromedriver", &mut command)?;

    let deadline = Instant::now() + CHROMEDRIVER_START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = guard.child.try_wait()? {
            bail!("chromedriver exited ({status}) before listening; log {}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "chromedriver did not listen on 127.0.0.1:{port} within {} s; log {}",
                CHROMEDRIVER_START_TIMEOUT.as_secs(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((guard, port))
}

async fn connect_browser(driver_port: u16, profile: &Path) -> anyhow::Result<Client> {
    // The background-networking, component-update and sync flags stop Chromium from contacting
    // Google's hosts, which fails on a machine without internet access.
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--hide-scrollbars".to_string(),
        format!("--window-size={},{}", LAPTOP_WINDOW.0, LAPTOP_WINDOW.1),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".to_string(), Value::from("chrome"));
    capabilities.insert("goog:chromeOptions".to_string(), json!({ "binary": CHROMIUM, "args": args }));

    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .context("failed to start a Chromium session through chromedriver")?;
    Ok(client)
}

/// Sends one fault to the simulator's control endpoint as a plain HTTP/1.1 request.
async fn inject_fault(control_url: &str, fault: Value) -> anyhow::Result<()> {
    let authority = control_url
        .strip_prefix("http://")
        .with_context(|| format!("simulator control URL {control_url:?} does not start with http://"))?
        .trim_end_matches('/');
    let body = fault.to_string();
    let request = format!(
        "POST /fault HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );

    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("failed to connect to the simulator control endpoint {authority}"))?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(STEP_TIMEOUT, stream.read_to_string(&mut response))
        .await
        .with_context(|| format!("the simulator control endpoint timed out after {} s", STEP_TIMEOUT.as_secs()))??;

    let status_line = response.lines().next().unwrap_or_default();
    let status_ok = status_line.split(' ').nth(1).is_some_and(|code| code.starts_with('2'));
    ensure!(status_ok, "fault {body} was rejected: {status_line:?}");
    note(&format!("injected fault {body}"));
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Returns Cargo's target directory, two levels above the tickgate binary it built.
fn target_dir() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_tickgate"));
    binary.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"))
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes a progress line straight to stderr, past the test harness's output capture, so that
/// the screenshot paths show even when the test passes.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "dashboard_browser: {message}");
}
