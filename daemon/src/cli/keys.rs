//! `facegate keys init|rotate|status`: create a store with its data key, rotate the
//! key-encryption key, and show key ids. Never prints key material.
//!
//! Also home of [`StoreArgs`], the `--store`/`--key-file` pair every store command flattens in.

use std::path::PathBuf;

use facegate::store::{Kek, KekSource, Store, StoreError, keys, local_actor, resolve_store_path};
use serde::Serialize;

use crate::cli::{bad_input, print_json};

/// Where the store and its key are; shared by every store-touching command.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store file [default: $STATE_DIRECTORY/facegate.redb]
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Key file: 64 hex chars or 32 raw bytes, mode 0600, owned by this user
    /// [default: systemd credential $CREDENTIALS_DIRECTORY/facegate.key]
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Daemon configuration whose [paths] store/key_file apply when the flags are not given
    #[arg(long, value_name = "FILE", env = "FACEGATE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    fn configured(&self) -> anyhow::Result<facegate::config::PathsConfig> {
        match &self.config {
            None => Ok(Default::default()),
            Some(p) => Ok(facegate::config::Config::load(p)
                .map_err(|e| bad_input(e.to_string()))?
                .paths),
        }
    }

    /// The key file: `--key-file`, else the configuration's `[paths] key_file`.
    pub fn key_file(&self) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.key_file.clone().or(self.configured()?.key_file))
    }

    /// Resolved store path (bad input if none can be determined).
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        let configured = self.configured()?.store;
        resolve_store_path(self.store.as_deref(), configured.as_deref()).map_err(store_err)
    }

    /// Load the key and open the store, mapping caller mistakes to exit code 2.
    pub fn open(&self) -> anyhow::Result<Store> {
        let kek = Kek::resolve(self.key_file()?.as_deref()).map_err(store_err)?;
        Store::open(&self.path()?, &kek).map_err(store_err)
    }
}

/// Convert a store error: wrong key, missing file, invalid id... exit 2; the rest exit 1.
pub fn store_err(e: StoreError) -> anyhow::Error {
    if e.is_bad_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

/// `facegate keys ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a new, empty store sealed to the key (and optionally create the key file)
    Init {
        #[command(flatten)]
        store: StoreArgs,
        /// Generate a new random key into --key-file (mode 0600; refuses to overwrite)
        #[arg(long)]
        create_key_file: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Re-wrap the data key under a new key written to --key-file (crash-safe)
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show key ids, schema and counts (key fingerprints only, never key material)
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    info: facegate::store::StoreInfo,
    presented_key_id: Option<String>,
    key_source: Option<&'static str>,
    unlocks: bool,
    problem: Option<String>,
}

/// Run a `keys` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init {
            store,
            create_key_file,
            json,
        } => {
            let path = store.path()?;
            let kek = if create_key_file {
                let kf = store
                    .key_file
                    .as_deref()
                    .ok_or_else(|| bad_input("--create-key-file needs --key-file PATH"))?;
                Kek::generate_key_file(kf).map_err(store_err)?
            } else {
                Kek::resolve(store.key_file()?.as_deref()).map_err(store_err)?
            };
            let s = Store::create(&path, &kek, &local_actor()).map_err(store_err)?;
            if json {
                print_json(
                    &serde_json::json!({"store": path, "key_id": kek.id(), "data_key_id": s.data_key_id()}),
                )
            } else {
                println!(
                    "created store {} sealed to key {}",
                    path.display(),
                    kek.id()
                );
                Ok(())
            }
        }
        Command::Rotate { store, json } => {
            let path = store.path()?;
            let kf = match Kek::resolve(store.key_file()?.as_deref())
                .map_err(store_err)?
                .source()
            {
                KekSource::KeyFile(p) => p.clone(),
                _ => {
                    return Err(bad_input(
                        "the key comes from a systemd credential, which facegate cannot rewrite: rotate with \
                         --key-file pointing at a plaintext key file, then re-encrypt it with systemd-creds",
                    ));
                }
            };
            let r = Store::rotate_key_file(&path, &kf, &local_actor()).map_err(store_err)?;
            if json {
                print_json(&r)
            } else {
                println!(
                    "rotated: key {} retired, key {} now in {}",
                    r.old_key_id,
                    r.new_key_id,
                    kf.display()
                );
                Ok(())
            }
        }
        Command::Status { store, json } => {
            let path = store.path()?;
            let info = Store::inspect(&path).map_err(store_err)?;
            let (mut presented, mut source, mut unlocks, mut problem) = (None, None, false, None);
            match Kek::resolve(store.key_file()?.as_deref()) {
                Ok(kek) => {
                    presented = Some(kek.id().to_string());
                    source = Some(match kek.source() {
                        KekSource::KeyFile(_) => "key-file",
                        KekSource::Credential(_) => "systemd-credential",
                        KekSource::Memory => "memory",
                    });
                    match Store::open(&path, &kek) {
                        Ok(_) => unlocks = true,
                        Err(e) => problem = Some(e.to_string()),
                    }
                }
                Err(e) => problem = Some(e.to_string()),
            }
            let st = Status {
                info,
                presented_key_id: presented,
                key_source: source,
                unlocks,
                problem,
            };
            if json {
                return print_json(&st);
            }
            let i = &st.info;
            println!(
                "store          {} ({} bytes, schema v{})",
                i.path.display(),
                i.file_bytes,
                i.schema_version
            );
            println!(
                "data key id    {}",
                i.dek_id.as_deref().unwrap_or("(none: erased)")
            );
            println!("accepted keys  {}", i.key_ids.join(", "));
            if let Some((o, n)) = &i.rotation_pending {
                println!(
                    "rotation       INTERRUPTED {o} -> {n} (run `facegate keys rotate` again)"
                );
            }
            println!(
                "presented key  {} ({}) {}",
                st.presented_key_id.as_deref().unwrap_or("-"),
                st.key_source.unwrap_or("none"),
                if st.unlocks {
                    "unlocks the store"
                } else {
                    "does NOT unlock the store"
                }
            );
            if let Some(p) = &st.problem {
                println!("problem        {p}");
            }
            println!(
                "contents       {} people, {} templates, {} queued events, {} audit entries",
                i.people, i.templates, i.outbox, i.audit_entries
            );
            Ok(())
        }
    }
}

/// Shared by `erase`: destroy the store (and key file if given).
pub(crate) fn erase(store: &StoreArgs) -> anyhow::Result<keys::EraseReport> {
    keys::erase_all(&store.path()?, store.key_file()?.as_deref()).map_err(store_err)
}
