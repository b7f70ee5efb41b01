//! Placeholder: being written (issue #3).

/// Arguments (placeholder).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Not yet implemented.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
