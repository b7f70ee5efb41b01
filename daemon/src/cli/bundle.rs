//! `facegate bundle keygen|create|inspect|apply`: operator tooling for signed template bundles.
//!
//! * `keygen --out fleet.key` writes an Ed25519 fleet signing key (0600) and `fleet.key.pub`
//!   (`ed25519:<hex>`, one line: append it to the terminals' fleet keys file);
//!   `keygen --site --out site.key` writes a site key (AES-256, 0600) for sealing people.
//! * `create` builds a bundle from either
//!   - `--from people.json`: `{"people": [{"id", "label", "external_id"?, "templates":
//!     [{"model_id", "model_version", "vector": [128 floats]}]}]}` (unknown fields refused), or
//!   - `--from-store --store S --key-file K`: every person of an enrolment store with their
//!     *anchor* templates (adaptive templates are device-local and never exported);
//!
//!   plus optional `--remove ID` and threshold flags. Vectors are sealed to the site key.
//! * `inspect FILE` prints header, ids and counts — never vectors or labels (they are sealed).
//! * `apply FILE` verifies and applies a bundle to a local store (technicians, tests): exactly
//!   the checks the daemon runs for bundles arriving over MQTT.
//! * `publish FILE` sends a bundle to the broker with the operator's client certificate (QoS 1,
//!   to `facegate/v1/{site}/{target}/bundles`, site and target from the bundle header unless
//!   given), waits for the PUBACK and, with `--wait-result DEVICE`, for that device's
//!   `bundles/result` about *this* bundle (matched by SHA-256) and prints it. Exit 0 only if the
//!   broker took it and — when waiting — the device applied it; 2 if the device refused it or
//!   the arguments contradict the bundle; 1 if the broker or device did not answer in time.
//!
//! Exit codes follow [`crate::cli`]: 2 for a refused bundle or bad arguments, 1 otherwise.

use std::path::{Path, PathBuf};

use facegate::bundle::{
    self, BundleDraft, BundlePolicy, FleetKeys, Operation, SiteKey, Thresholds, Verifier,
};
use facegate::mqtt::operator::{self, ResultWait};
use facegate::mqtt::{Topics, validate_segment};
use facegate::store::{NewPerson, NewTemplate, TemplateKind, local_actor, now_unix};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cli::broker::{BrokerArgs, mqtt_err, runtime};
use crate::cli::keys::{StoreArgs, store_err};
use crate::cli::{bad_input, print_json};

/// `facegate bundle ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a fleet signing key (and PATH.pub) or, with --site, a site sealing key
    Keygen {
        /// Key file to create (mode 0600; refuses to overwrite)
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Create a site key (AES-256) instead of a signing key
        #[arg(long)]
        site: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Build and sign a bundle
    #[command(disable_version_flag = true)]
    Create {
        /// JSON file of people with template vectors (see module docs)
        #[arg(long, value_name = "FILE", conflicts_with = "from_store")]
        from: Option<PathBuf>,
        /// Export the people and anchor templates of --store instead
        #[arg(long)]
        from_store: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// Person ids to remove
        #[arg(long, value_name = "ID")]
        remove: Vec<String>,
        /// Set the match threshold
        #[arg(long)]
        match_threshold: Option<f32>,
        /// Set the look-alike margin
        #[arg(long)]
        margin: Option<f32>,
        /// Set the liveness threshold
        #[arg(long)]
        liveness: Option<f32>,
        /// Fleet signing key file
        #[arg(long, value_name = "PATH")]
        signing_key: PathBuf,
        /// Site key file the people are sealed to
        #[arg(long, value_name = "PATH")]
        site_key: PathBuf,
        /// Site id
        #[arg(long)]
        site: String,
        /// Device id, or `all`
        #[arg(long, default_value = "all")]
        target: String,
        /// Bundle version (must exceed the version terminals have applied)
        #[arg(long)]
        version: u64,
        /// Validity in seconds from now
        #[arg(long, default_value_t = 7 * 86_400)]
        expires_in: u64,
        /// Output bundle file
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show a bundle's header, ids and counts (never vectors or labels)
    Inspect {
        /// Bundle file
        file: PathBuf,
        /// Also check the signature against this fleet keys file
        #[arg(long, value_name = "FILE")]
        fleet_keys: Option<PathBuf>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle and apply it to a local store in one transaction
    Apply {
        /// Bundle file
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Fleet public keys file (`ed25519:<hex>` per line)
        #[arg(long, value_name = "FILE")]
        fleet_keys: PathBuf,
        /// Site key file
        #[arg(long, value_name = "PATH")]
        site_key: PathBuf,
        /// This terminal's site id
        #[arg(long)]
        site: String,
        /// This terminal's device id
        #[arg(long)]
        device: String,
        /// Size limit in bytes
        #[arg(long, default_value_t = bundle::DEFAULT_MAX_BYTES)]
        max_bytes: usize,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Publish a bundle to the broker (QoS 1) and optionally wait for a device's result
    Publish {
        /// Bundle file
        file: PathBuf,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Site id (default: the bundle header's; must match it)
        #[arg(long)]
        site: Option<String>,
        /// Topic target: a device id or `all` (default: the bundle header's target)
        #[arg(long)]
        target: Option<String>,
        /// Wait for this device's bundles/result about this bundle and print it
        #[arg(long, value_name = "DEVICE")]
        wait_result: Option<String>,
        /// Size limit in bytes
        #[arg(long, default_value_t = bundle::DEFAULT_MAX_BYTES)]
        max_bytes: usize,
        /// Machine-readable output (the device's result JSON when waiting)
        #[arg(long)]
        json: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeopleFile {
    people: Vec<PersonIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonIn {
    id: String,
    label: String,
    #[serde(default)]
    external_id: Option<String>,
    templates: Vec<TemplateIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateIn {
    model_id: String,
    model_version: String,
    vector: Vec<f32>,
}

fn bundle_err(e: bundle::BundleError) -> anyhow::Error {
    if e.is_bad_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

fn read_limited(path: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| bad_input(format!("{}: {e}", path.display())))?
        .len();
    if len > limit as u64 {
        return Err(bundle_err(bundle::BundleError::Oversized {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            limit,
        }));
    }
    std::fs::read(path).map_err(|e| bad_input(format!("{}: {e}", path.display())))
}

fn people_from_file(path: &Path) -> anyhow::Result<Vec<Operation>> {
    let text = std::fs::read(path).map_err(|e| bad_input(format!("{}: {e}", path.display())))?;
    let f: PeopleFile =
        serde_json::from_slice(&text).map_err(|e| bad_input(format!("{}: {e}", path.display())))?;
    Ok(f.people
        .into_iter()
        .map(|p| Operation::Upsert {
            person: NewPerson {
                id: p.id,
                label: p.label,
                external_id: p.external_id,
            },
            templates: p
                .templates
                .into_iter()
                .map(|t| NewTemplate::anchor(t.vector, &t.model_id, &t.model_version))
                .collect(),
        })
        .collect())
}

fn people_from_store(store: &StoreArgs) -> anyhow::Result<Vec<Operation>> {
    let s = store.open()?;
    let people = s.list_people().map_err(store_err)?;
    let mut templates = s.load_all_templates().map_err(store_err)?;
    let mut ops = Vec::with_capacity(people.len());
    for p in people {
        let mine: Vec<NewTemplate> = templates
            .iter_mut()
            .filter(|t| t.person_id == p.person.id && t.meta.kind == TemplateKind::Anchor)
            .map(|t| NewTemplate {
                kind: TemplateKind::Anchor,
                vector: std::mem::take(&mut t.vector),
                model_id: t.meta.model_id.clone(),
                model_version: t.meta.model_version.clone(),
                quality: t.meta.quality.clone(),
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        ops.push(Operation::Upsert {
            person: NewPerson {
                id: p.person.id.clone(),
                label: p.person.label.clone(),
                external_id: p.person.external_id.clone(),
            },
            templates: mine,
        });
    }
    Ok(ops)
}

/// Arguments of `bundle publish`, gathered.
struct PublishArgs {
    file: PathBuf,
    broker: BrokerArgs,
    site: Option<String>,
    target: Option<String>,
    wait_result: Option<String>,
    max_bytes: usize,
    json: bool,
}

fn publish(a: PublishArgs) -> anyhow::Result<()> {
    let bytes = read_limited(&a.file, a.max_bytes)?;
    // Never send what a terminal could not even parse; the signature is the devices' business.
    let summary = bundle::inspect(&bytes, None).map_err(bundle_err)?;
    let h = &summary.header;
    let site = a.site.unwrap_or_else(|| h.site.clone());
    if site != h.site {
        return Err(bad_input(format!(
            "--site {site} contradicts the bundle, which is for site {}",
            h.site
        )));
    }
    let target = a.target.unwrap_or_else(|| h.target.clone());
    if h.target != bundle::TARGET_ALL && target != h.target {
        return Err(bad_input(format!(
            "the bundle is for device {}; publishing it to {target} would only get it refused",
            h.target
        )));
    }
    validate_segment("site", &site).map_err(mqtt_err)?;
    validate_segment("target", &target).map_err(mqtt_err)?;
    if let Some(d) = &a.wait_result {
        validate_segment("device", d).map_err(mqtt_err)?;
        if d == bundle::TARGET_ALL || (target != bundle::TARGET_ALL && *d != target) {
            return Err(bad_input(format!(
                "--wait-result {d}: that device will not receive a bundle published to {target}"
            )));
        }
    }
    let topic = Topics::new(&site, &target).bundles();
    let sha = hex::encode(Sha256::digest(&bytes));
    let matches = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p)
            .ok()
            .and_then(|v| v.get("bundle_sha256")?.as_str().map(|s| s == sha))
            .unwrap_or(false)
    };
    let wait = a.wait_result.as_ref().map(|d| ResultWait {
        topic: Topics::new(&site, d).bundle_result(),
        matches: &matches,
    });
    let cfg = a.broker.config();
    let answer = runtime()?
        .block_on(operator::publish(&cfg, &topic, bytes.clone(), wait))
        .map_err(mqtt_err)?;
    let Some(answer) = answer else {
        if a.json {
            return print_json(&serde_json::json!({"published": true, "topic": topic,
                "bundle_sha256": sha, "version": h.version, "bytes": bytes.len()}));
        }
        println!(
            "published {} ({} bytes, version {}) to {topic}; the broker acknowledged it",
            a.file.display(),
            bytes.len(),
            h.version
        );
        return Ok(());
    };
    let device = a.wait_result.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| anyhow::anyhow!("{device} answered with something that is not JSON: {e}"))?;
    let ok = v["ok"].as_bool() == Some(true);
    if a.json {
        println!("{v}");
    } else if ok {
        let r = &v["report"];
        println!(
            "{device} applied bundle version {}: {} upserted, {} removed, {} templates",
            r["version"], r["upserted"], r["removed"], r["templates"]
        );
    }
    if ok {
        Ok(())
    } else {
        Err(bad_input(format!(
            "{device} refused the bundle: {}: {}",
            v["code"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        )))
    }
}

/// Run a `bundle` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Publish {
            file,
            broker,
            site,
            target,
            wait_result,
            max_bytes,
            json,
        } => publish(PublishArgs {
            file,
            broker,
            site,
            target,
            wait_result,
            max_bytes,
            json,
        }),
        Command::Keygen { out, site, json } => {
            let (kind, id, public) = if site {
                let k = SiteKey::generate_file(&out).map_err(bundle_err)?;
                ("site", k.id().to_string(), None)
            } else {
                let vk = bundle::generate_signing_key(&out).map_err(bundle_err)?;
                (
                    "signing",
                    bundle::key_id(&vk),
                    Some(bundle::format_public_key(&vk)),
                )
            };
            if json {
                print_json(
                    &serde_json::json!({"kind": kind, "file": out, "key_id": id, "public_key": public}),
                )
            } else {
                println!("created {kind} key {id} in {}", out.display());
                if let Some(p) = public {
                    println!("public key (add to the terminals' fleet keys file): {p}");
                }
                Ok(())
            }
        }
        Command::Create {
            from,
            from_store,
            store,
            remove,
            match_threshold,
            margin,
            liveness,
            signing_key,
            site_key,
            site,
            target,
            version,
            expires_in,
            out,
            json,
        } => {
            let mut ops = match (from, from_store) {
                (Some(f), false) => people_from_file(&f)?,
                (None, true) => people_from_store(&store)?,
                (None, false) => Vec::new(),
                (Some(_), true) => return Err(bad_input("use either --from or --from-store")),
            };
            ops.extend(remove.into_iter().map(|id| Operation::Remove { id }));
            let th = Thresholds {
                match_threshold,
                margin,
                liveness,
            };
            if th != Thresholds::default() {
                ops.push(Operation::SetThresholds(th));
            }
            if ops.is_empty() {
                return Err(bad_input(
                    "nothing to put in the bundle (--from, --from-store, --remove or thresholds)",
                ));
            }
            let signer = bundle::load_signing_key(&signing_key).map_err(bundle_err)?;
            let sk = SiteKey::from_file(&site_key).map_err(bundle_err)?;
            let now = now_unix();
            let draft = BundleDraft {
                site,
                target,
                version,
                created_at: now,
                expires_at: now.saturating_add(expires_in),
                ops,
            };
            let bytes = bundle::build_bundle(&draft, &signer, &sk).map_err(bundle_err)?;
            // Self-check: a bundle we cannot parse back must never leave this machine.
            let summary = bundle::inspect(&bytes, Some(&FleetKeys::new([signer.verifying_key()])))
                .map_err(bundle_err)?;
            std::fs::write(&out, &bytes)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
            if json {
                print_json(&summary)
            } else {
                println!(
                    "wrote {} ({} bytes): version {}, {} upserts, {} removals, signed by {}",
                    out.display(),
                    bytes.len(),
                    summary.header.version,
                    summary.upsert.len(),
                    summary.remove.len(),
                    summary.header.key_id
                );
                Ok(())
            }
        }
        Command::Inspect {
            file,
            fleet_keys,
            json,
        } => {
            let bytes = read_limited(&file, bundle::DEFAULT_MAX_BYTES * 4)?;
            let fleet = fleet_keys
                .as_deref()
                .map(FleetKeys::from_file)
                .transpose()
                .map_err(bundle_err)?;
            let s = bundle::inspect(&bytes, fleet.as_ref()).map_err(bundle_err)?;
            if json {
                return print_json(&s);
            }
            let h = &s.header;
            println!("bundle {} ({} bytes)", file.display(), s.bytes);
            println!("  site/target: {}/{}", h.site, h.target);
            println!("  version:     {}", h.version);
            println!(
                "  created:     {}",
                facegate::store::format_unix(h.created_at)
            );
            println!(
                "  expires:     {}",
                facegate::store::format_unix(h.expires_at)
            );
            println!("  signing key: {}", h.key_id);
            println!("  site key:    {}", h.site_key_id);
            println!(
                "  upsert:      {} ({})",
                s.upsert.len(),
                s.upsert.join(", ")
            );
            println!(
                "  remove:      {} ({})",
                s.remove.len(),
                s.remove.join(", ")
            );
            if let Some(t) = s.thresholds {
                println!("  thresholds:  {}", serde_json::to_string(&t)?);
            }
            match (fleet.is_some(), &s.verified_by) {
                (true, Some(id)) => println!("  signature:   valid (key {id})"),
                (true, None) => {
                    println!("  signature:   NOT valid for any of the given fleet keys")
                }
                (false, _) => println!("  signature:   not checked (pass --fleet-keys)"),
            }
            Ok(())
        }
        Command::Apply {
            file,
            store,
            fleet_keys,
            site_key,
            site,
            device,
            max_bytes,
            json,
        } => {
            let verifier = Verifier {
                fleet: FleetKeys::from_file(&fleet_keys).map_err(bundle_err)?,
                site_key: SiteKey::from_file(&site_key).map_err(bundle_err)?,
                policy: BundlePolicy {
                    max_bytes,
                    ..BundlePolicy::new(&site, &device)
                },
            };
            let bytes = read_limited(&file, max_bytes)?;
            let s = store.open()?;
            let report = verifier
                .apply(&s, &bytes, &local_actor(), now_unix())
                .map_err(bundle_err)?;
            if json {
                print_json(&report)
            } else {
                println!(
                    "applied bundle version {}: {} upserted, {} removed, {} templates{}",
                    report.version,
                    report.upserted,
                    report.removed,
                    report.templates,
                    if report.thresholds {
                        ", thresholds set"
                    } else {
                        ""
                    }
                );
                Ok(())
            }
        }
    }
}
