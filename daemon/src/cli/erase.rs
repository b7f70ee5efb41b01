//! `facegate erase --all --confirm`: crypto-erase the terminal's biometric data.
//!
//! Order matters: the wrapped data keys are deleted and committed first (from then on no sealed
//! value can be decrypted, even from stale disk pages), then all tables, then the file is
//! overwritten and unlinked, then the key file (if given) likewise. No key is needed.

use serde::Serialize;

use super::keys::StoreArgs;
use crate::cli::{bad_input, print_json};

/// Arguments of `facegate erase`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Erase everything: people, templates, queued events, audit log, the store file
    #[arg(long)]
    pub all: bool,
    /// Required: confirms the irreversible erase
    #[arg(long)]
    pub confirm: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Out {
    store: std::path::PathBuf,
    #[serde(flatten)]
    report: facegate::store::EraseReport,
}

/// Run the erase.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.all {
        return Err(bad_input(
            "only `erase --all` is supported (remove one person with `people remove ID`)",
        ));
    }
    if !args.confirm {
        return Err(bad_input("erase is irreversible: add --confirm"));
    }
    let path = args.store.path()?;
    tracing::warn!(store = %path.display(), "crypto-erasing the store");
    let report = super::keys::erase(&args.store)?;
    if args.json {
        return print_json(&Out {
            store: path,
            report,
        });
    }
    println!(
        "erased {}: {} wrapped key(s) destroyed, store file {}, key file {}",
        path.display(),
        report.keyslots_destroyed,
        if report.store_removed {
            "overwritten and removed"
        } else {
            "absent"
        },
        if report.key_file_destroyed {
            "overwritten and removed"
        } else {
            "not touched (remove the systemd credential yourself if one is used)"
        }
    );
    Ok(())
}
