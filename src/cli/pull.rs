//! `qsparse pull [NAME]`: fetch a manifest model into the models directory.

use anyhow::{anyhow, Result};

use crate::hub::{self, Manifest, PullOutcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model name from the manifest (see `qsparse pull --list`).
    name: Option<String>,
    /// List the models that can be pulled and where they would be stored.
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> Result<()> {
    let manifest = Manifest::builtin();
    let dir = super::common::models_dir();
    if args.list {
        for m in &manifest.models {
            let present = if dir.join(&m.file).is_file() {
                "pulled"
            } else {
                "not pulled"
            };
            outln!(
                "{:<24} {:>6} MB  {present:<10}  {}",
                m.name,
                m.size / 1_000_000,
                m.description
            );
        }
        outln!("models directory: {}", dir.display());
        return Ok(());
    }
    let name = args.name.as_deref().unwrap_or(&manifest.default);
    let entry = manifest.find(name).ok_or_else(|| {
        let known: Vec<_> = manifest.models.iter().map(|m| m.name.as_str()).collect();
        anyhow!(
            "no model named `{name}` in the manifest (known: {})",
            known.join(", ")
        )
    })?;
    match hub::pull(entry, &dir, &mut |line| eprintln!("{line}"))? {
        PullOutcome::AlreadyPresent(p) => {
            eprintln!("{} is present and verified: {}", entry.name, p.display())
        }
        PullOutcome::Fetched(p) => {
            eprintln!("{} fetched and verified: {}", entry.name, p.display())
        }
    }
    Ok(())
}
