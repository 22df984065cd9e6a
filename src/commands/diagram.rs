//! `tickgate diagram`: prints the connection state diagram derived from the machine.

use std::io::Write;
use std::process::ExitCode;

use crate::fsm::diagram;

/// Output format of `tickgate diagram`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagramFormat {
    /// Mermaid `stateDiagram-v2`, as committed in fsm-diagrams/connection.mmd.
    Mermaid,
    /// Graphviz dot, as committed in fsm-diagrams/connection.dot.
    Dot,
    /// `{"states": [...], "edges": [{"from", "to", "input"}]}`, as the dashboard draws it.
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct DiagramArgs {
    /// Diagram format to print on standard output.
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: DiagramFormat,
}

/// Explores the machine and prints its diagram.
pub fn run(args: DiagramArgs) -> anyhow::Result<ExitCode> {
    let diagram = diagram::explore();
    let text = match args.format {
        DiagramFormat::Mermaid => diagram.to_mermaid(),
        DiagramFormat::Dot => diagram.to_dot(),
        DiagramFormat::Json => diagram.to_json(),
    };

    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
