//! `cargo xtask bench`: see docs/benchmarks.md.

use anyhow::{Result, bail};

pub fn bench(name: Option<&str>) -> Result<()> {
    bail!("benchmark {:?} is not available yet", name.unwrap_or("all"))
}
