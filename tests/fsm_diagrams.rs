//! The committed diagrams in fsm-diagrams/ must match what the machine produces today.
//!
//! Regenerate them with `cargo run -- diagram --format mermaid > fsm-diagrams/connection.mmd`
//! (and `--format dot` for connection.dot), or with
//! `UPDATE_DIAGRAMS=1 cargo test --test fsm_diagrams`.

use std::path::PathBuf;

use tickgate::fsm::diagram;

fn check_committed(file_name: &str, format: &str, generated: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fsm-diagrams").join(file_name);

    if std::env::var_os("UPDATE_DIAGRAMS").is_some() {
        std::fs::write(&path, generated).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        return;
    }

    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the diagram the machine produces now.\n\
         Regenerate it with\n    cargo run -- diagram --format {format} > fsm-diagrams/{file_name}\n\
         or\n    UPDATE_DIAGRAMS=1 cargo test --test fsm_diagrams\n\
         and commit the result.\n\n--- generated ---\n{generated}",
        path.display()
    );
}

#[test]
fn mermaid_diagram_is_current() {
    check_committed("connection.mmd", "mermaid", &diagram::explore().to_mermaid());
}

#[test]
fn dot_diagram_is_current() {
    check_committed("connection.dot", "dot", &diagram::explore().to_dot());
}

#[test]
fn readme_shows_committed_diagram() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md is readable");
    let diagram = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fsm-diagrams/connection.mmd"))
        .expect("fsm-diagrams/connection.mmd is readable");
    assert!(
        readme.contains(&format!("```mermaid\n{diagram}```")),
        "README.md's mermaid block differs from fsm-diagrams/connection.mmd; paste the file's content into the block"
    );
}
