//! `facegate people list|show|remove|export`: data-subject rights on the terminal.
//!
//! `export` answers an access request with what is held (personal fields, dates, template
//! metadata, model versions, recent audit entries) as JSON; raw vectors only with
//! `--include-templates`, in which case the output is flagged `"sensitive": true` and a warning
//! goes to stderr. Every export is itself audited.

use std::io::Write;
use std::path::PathBuf;

use facegate::store::{format_unix, local_actor};

use super::keys::{StoreArgs, store_err};
use crate::cli::{bad_input, print_json};

/// `facegate people ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List enrolled people with template counts
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show one person and their template metadata (no vectors)
    Show {
        /// Person id
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Delete a person's personal fields and all templates (one transaction, audited)
    Remove {
        /// Person id
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Export everything held about a person as JSON
    Export {
        /// Person id
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Also export raw template vectors (biometric data: output is marked sensitive)
        #[arg(long)]
        include_templates: bool,
        /// Number of recent audit entries to include
        #[arg(long, default_value_t = 100)]
        audit_limit: usize,
        /// Write to this file (created with mode 0600) instead of stdout
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

/// Run a `people` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::List { store, json } => {
            let people = store.open()?.list_people().map_err(store_err)?;
            if json {
                return print_json(&people);
            }
            println!(
                "{:<24} {:<28} {:>7} {:>8}  {:<20} models",
                "id", "label", "anchors", "adaptive", "updated"
            );
            for p in &people {
                println!(
                    "{:<24} {:<28} {:>7} {:>8}  {:<20} {}",
                    p.person.id,
                    p.person.label,
                    p.anchors,
                    p.adaptive,
                    format_unix(p.person.updated),
                    p.models.join(",")
                );
            }
            println!("{} people", people.len());
            Ok(())
        }
        Command::Show { id, store, json } => {
            let s = store.open()?;
            let person = s
                .get_person(&id)
                .map_err(store_err)?
                .ok_or_else(|| bad_input(format!("person {id} not found")))?;
            let templates = s.templates_of(&id).map_err(store_err)?;
            if json {
                return print_json(&serde_json::json!({"person": person, "templates": templates}));
            }
            println!("id           {}", person.id);
            println!("label        {}", person.label);
            println!(
                "external id  {}",
                person.external_id.as_deref().unwrap_or("-")
            );
            println!("created      {}", format_unix(person.created));
            println!("updated      {}", format_unix(person.updated));
            for t in templates {
                println!(
                    "template {:>6}  {:<8} {}@{}  {}  {}",
                    t.seq,
                    format!("{:?}", t.kind).to_lowercase(),
                    t.model_id,
                    t.model_version,
                    format_unix(t.created),
                    t.quality
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(())
        }
        Command::Remove { id, store, json } => {
            let n = store
                .open()?
                .remove_person(&id, &local_actor())
                .map_err(store_err)?;
            if json {
                return print_json(&serde_json::json!({"removed": id, "templates": n}));
            }
            println!("removed {id}: personal fields and {n} template(s) deleted");
            Ok(())
        }
        Command::Export {
            id,
            store,
            include_templates,
            audit_limit,
            output,
        } => {
            let s = store.open()?;
            let export = s
                .export_person(&id, include_templates, audit_limit, &local_actor())
                .map_err(store_err)?;
            if include_templates {
                eprintln!(
                    "WARNING: this export contains raw biometric templates; handle it as sensitive data"
                );
            }
            let json = serde_json::to_string_pretty(&export)?;
            match output {
                None => println!("{json}"),
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(|e| bad_input(format!("cannot create {}: {e}", path.display())))?;
                    f.write_all(json.as_bytes())?;
                    f.sync_all()?;
                    eprintln!("export written to {}", path.display());
                }
            }
            Ok(())
        }
    }
}
