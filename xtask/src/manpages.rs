//! `cargo xtask manpages`: regenerates the man pages and shell completions in
//! `packaging/` from the CLI's clap definitions (the agent's `generate-docs`).
//! The unit test `packaged_man_pages_and_completions_are_current` fails while they
//! are out of date.

use std::process::Command;

use anyhow::Result;

use crate::util::{cargo, repo_root, run, target_dir};

pub fn manpages() -> Result<()> {
    crate::setup::setup()?;
    cargo(&["build", "-p", "portcullis"])?;
    let bin = target_dir().join("debug").join("portcullis");
    run(Command::new(bin)
        .arg("generate-docs")
        .arg("--out")
        .arg(repo_root().join("packaging")))
}
