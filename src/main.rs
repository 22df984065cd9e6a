//! The `tickgate` command: `serve` (the main job), `simulate`, `stream`, `history`, `replay`,
//! `diagram` and `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tickgate::commands::{self, UsageError};
use tickgate::logging::{self, LogFormat};

#[derive(Parser, Debug)]
#[command(name = "tickgate", version, about = "Streams cTrader forex ticks to WebSocket clients, and never goes quiet silently")]
struct Cli {
    /// Format of log lines on stderr; RUST_LOG sets the filter (default `info`).
    #[arg(long, global = true, env = "TICKGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service: the cTrader session and the WebSocket gateway with its dashboard.
    Serve(commands::serve::ServeArgs),
    /// Run the cTrader-protocol simulator on its own, with fault injection.
    Simulate(tickgate::simulator::SimulateArgs),
    /// Connect and print ticks and state changes to stdout.
    Stream(commands::stream::StreamArgs),
    /// Fetch historical trendbars and write CSV to stdout.
    History(commands::history::HistoryArgs),
    /// Re-run the state machine on a recorded journal and check every transition.
    Replay(commands::replay::ReplayArgs),
    /// Print the state diagram derived from the state machine.
    Diagram(commands::diagram::DiagramArgs),
    /// Measure end-to-end throughput, latency and detection times on this machine.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    // Precedence is flags > environment > `.env`: dotenvy never overrides a variable that is
    // already set, and clap prefers a flag to its variable.
    if let Err(error) = dotenvy::dotenv() {
        if !error.not_found() {
            report(&format!("error: cannot read .env in the working directory: {error}; fix or remove the file"));
            return ExitCode::from(2);
        }
    }

    let cli = Cli::parse();
    logging::init(cli.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            report(&format!("error: failed to start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };

    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => commands::serve::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Stream(args) => commands::stream::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Simulate(args) => tickgate::simulator::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::History(args) => commands::history::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Replay(args) => commands::replay::run(args),
            Command::Diagram(args) => commands::diagram::run(args),
            Command::Bench(args) => commands::bench::run(args).await.map(|()| ExitCode::SUCCESS),
        }
    });

    match result {
        Ok(code) => code,
        // A reader that stops early (`tickgate stream ... | head`) is a normal end, not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) if error.is::<UsageError>() => {
            report(&format!("error: {error}"));
            ExitCode::from(2)
        }
        Err(error) => {
            report(&format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr, ignoring a closed stderr: `eprintln!` would panic there.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
