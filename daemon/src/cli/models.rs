//! `facegate models fetch | verify | list`: install and check the pinned model files.

use std::path::PathBuf;

use facegate::models::{self, FetchOutcome, Manifest};
use serde_json::json;

use super::{bad_input, print_json};

/// Model management.
#[derive(clap::Subcommand, Debug)]
pub enum ModelsCmd {
    /// Install model files, verified, from a mirror directory or their upstream URLs.
    Fetch {
        /// Directory holding copies of the files (default ../shared/models when it exists).
        #[arg(long, value_name = "DIR")]
        mirror: Option<PathBuf>,
        /// Destination directory (default: the models directory).
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
        /// Also install models not marked default.
        #[arg(long)]
        all: bool,
        /// Only these model ids.
        ids: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash installed files against the manifest; non-zero exit if any is missing or bad.
    Verify {
        /// Models directory.
        #[arg(long, value_name = "DIR")]
        models: Option<PathBuf>,
        /// Also check models not marked default.
        #[arg(long)]
        all: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the manifest.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn selected<'a>(
    m: &'a Manifest,
    ids: &[String],
    all: bool,
) -> anyhow::Result<Vec<&'a models::ModelEntry>> {
    if ids.is_empty() {
        return Ok(m.models.iter().filter(|e| all || e.default).collect());
    }
    ids.iter()
        .map(|id| m.get(id).map_err(|e| bad_input(e.to_string())))
        .collect()
}

/// Run a `models` subcommand.
pub fn run(cmd: ModelsCmd) -> anyhow::Result<()> {
    let manifest = Manifest::embedded();
    match cmd {
        ModelsCmd::Fetch {
            mirror,
            dest,
            all,
            ids,
            json,
        } => {
            let dest = models::resolve_models_dir(dest.as_deref());
            let mirror = mirror.or_else(models::default_mirror);
            let mut results = Vec::new();
            let mut failed = 0;
            for e in selected(&manifest, &ids, all)? {
                match models::fetch_one(e, mirror.as_deref(), &dest) {
                    Ok(out) => {
                        let how = match &out {
                            FetchOutcome::AlreadyPresent => "already installed, verified".into(),
                            FetchOutcome::Mirror(p) => format!("copied from {}", p.display()),
                            FetchOutcome::Downloaded(u) => format!("downloaded from {u}"),
                        };
                        if !json {
                            println!("ok    {:<16} {} ({how})", e.id, e.file);
                        }
                        results.push(json!({"id": e.id, "ok": true, "outcome": out}));
                    }
                    Err(err) => {
                        failed += 1;
                        if !json {
                            println!("FAIL  {:<16} {err}", e.id);
                        }
                        results.push(json!({"id": e.id, "ok": false, "error": err.to_string()}));
                    }
                }
            }
            if json {
                print_json(&json!({"dest": dest, "models": results}))?;
            } else {
                println!("models directory: {}", dest.display());
            }
            if failed > 0 {
                anyhow::bail!("{failed} model(s) could not be installed");
            }
            Ok(())
        }
        ModelsCmd::Verify {
            models: dir,
            all,
            json,
        } => {
            let dir = models::resolve_models_dir(dir.as_deref());
            let mut results = Vec::new();
            let mut failed = 0;
            for e in selected(&manifest, &[], all)? {
                match models::verify(e, &dir) {
                    Ok(p) => {
                        if !json {
                            println!("ok    {:<16} {} sha256 {}", e.id, p.display(), e.sha256);
                        }
                        results.push(json!({"id": e.id, "ok": true}));
                    }
                    Err(err) => {
                        failed += 1;
                        if !json {
                            println!("FAIL  {:<16} {err}", e.id);
                        }
                        results.push(json!({"id": e.id, "ok": false, "error": err.to_string()}));
                    }
                }
            }
            if json {
                print_json(&json!({"dir": dir, "models": results}))?;
            }
            if failed > 0 {
                return Err(bad_input(format!(
                    "{failed} model file(s) missing or failed verification in {}",
                    dir.display()
                )));
            }
            Ok(())
        }
        ModelsCmd::List { json } => {
            if json {
                return print_json(&manifest.models);
            }
            for e in &manifest.models {
                println!(
                    "{:<16} {:<10} {:<8} {:>9} B  {}{}",
                    e.id,
                    format!("{:?}", e.role).to_lowercase(),
                    e.input,
                    e.size,
                    e.file,
                    if e.default { "" } else { "  (optional)" }
                );
            }
            Ok(())
        }
    }
}
