//! `facegate audit verify|list`: check the hash chain, show entries (never personal fields).

use facegate::store::format_unix;

use super::keys::{StoreArgs, store_err};
use crate::cli::print_json;

/// `facegate audit ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Verify the hash chain and the sealed head; names the first broken entry
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show the newest entries
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only entries about this person id
        #[arg(long)]
        subject: Option<String>,
        /// How many entries
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

/// Run an `audit` subcommand. A broken chain is an error (exit 1) naming the entry.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Verify { store, json } => {
            let s = store.open()?;
            match s.verify_audit() {
                Ok(v) if json => print_json(
                    &serde_json::json!({"ok": true, "entries": v.entries, "head": v.head}),
                ),
                Ok(v) => {
                    println!("audit log OK: {} entries, head {}", v.entries, v.head);
                    Ok(())
                }
                Err(e) => {
                    if json {
                        print_json(&serde_json::json!({"ok": false, "error": e.to_string()}))?;
                    }
                    Err(store_err(e))
                }
            }
        }
        Command::List {
            store,
            subject,
            limit,
            json,
        } => {
            let entries = store
                .open()?
                .audit_entries(subject.as_deref(), limit)
                .map_err(store_err)?;
            if json {
                return print_json(&entries);
            }
            for e in entries {
                println!(
                    "{:>6} {} {:<18} {:<20} {:<8} {:<12} {}",
                    e.seq,
                    format_unix(e.ts),
                    serde_json::to_value(e.action)?.as_str().unwrap_or("?"),
                    e.actor,
                    serde_json::to_value(e.outcome)?.as_str().unwrap_or("?"),
                    e.subject.as_deref().unwrap_or("-"),
                    e.detail.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}
