//! `facegate cmd sign-open|send`: operator tooling for remote commands.
//!
//! * `sign-open --signing-key fleet.key --site S --device D [--duration-ms 5000]
//!   [--valid-secs 30] [--request-id ID]` prints the signed JSON payload of an `open` (see
//!   `facegate::mqtt::commands`). The window starts now and should be short: terminals refuse
//!   windows longer than their `open_max_window_secs` (default 60 s), and each request id is
//!   accepted once.
//! * `send NAME --site S --device D [--payload FILE|-]` publishes a command to
//!   `facegate/v1/{site}/{device}/cmd/{NAME}` with the operator's certificate and waits for the
//!   result carrying the same request id (`--no-wait` to skip). Without `--payload` the payload
//!   is `{"request_id": "<fresh UUIDv7>"}` (enough for `status`, `resync`, `reload-config`).
//!
//! Exit codes: 0 when the device reports `ok`, 2 when it refuses (or the arguments are wrong),
//! 1 when the broker or device does not answer in time.

use std::io::Read;
use std::path::PathBuf;

use facegate::bundle;
use facegate::mqtt::commands::{self, OpenRequest, sign_open};
use facegate::mqtt::operator::{self, ResultWait};
use facegate::mqtt::{Topics, validate_segment};
use facegate::store::now_unix;

use crate::cli::bad_input;
use crate::cli::broker::{BrokerArgs, mqtt_err, runtime};

/// `facegate cmd ...`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Sign a remote `open` with a fleet key and print the payload to publish
    SignOpen {
        /// Fleet signing key file
        #[arg(long, value_name = "PATH")]
        signing_key: PathBuf,
        /// Site id
        #[arg(long)]
        site: String,
        /// Device id of the door (never `all`)
        #[arg(long)]
        device: String,
        /// How long the lock is released, milliseconds
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        /// Seconds from now during which the command is valid
        #[arg(long, default_value_t = 30)]
        valid_secs: u64,
        /// Request id (default: a fresh UUIDv7)
        #[arg(long)]
        request_id: Option<String>,
        /// Write the payload to this file instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Publish a command to a device and wait for its result
    Send {
        /// Command name: status, resync, open, reload-config
        name: String,
        #[command(flatten)]
        broker: BrokerArgs,
        /// Site id
        #[arg(long)]
        site: String,
        /// Device id
        #[arg(long)]
        device: String,
        /// Payload file, `-` for stdin (default: {"request_id": "<fresh>"})
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
        /// Do not wait for the result
        #[arg(long)]
        no_wait: bool,
        /// Print the result JSON
        #[arg(long)]
        json: bool,
    },
}

fn read_payload(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = commands::MAX_COMMAND_BYTES as u64 + 1;
    let read = if p.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(p).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    read.map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
    if buf.len() > commands::MAX_COMMAND_BYTES {
        return Err(bad_input(format!(
            "{}: a command payload is at most {} bytes",
            p.display(),
            commands::MAX_COMMAND_BYTES
        )));
    }
    Ok(buf)
}

/// Run a `cmd` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::SignOpen {
            signing_key,
            site,
            device,
            duration_ms,
            valid_secs,
            request_id,
            out,
        } => {
            validate_segment("site", &site).map_err(mqtt_err)?;
            validate_segment("device", &device).map_err(mqtt_err)?;
            if device == bundle::TARGET_ALL {
                return Err(bad_input("an open names one door; `all` is never accepted"));
            }
            if duration_ms == 0 || valid_secs == 0 {
                return Err(bad_input("--duration-ms and --valid-secs must be positive"));
            }
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            if !commands::valid_request_id(&request_id) {
                return Err(bad_input(
                    "--request-id must be 1-64 characters of [A-Za-z0-9._:-]",
                ));
            }
            let signer =
                bundle::load_signing_key(&signing_key).map_err(|e| bad_input(e.to_string()))?;
            let now = now_unix();
            let req = OpenRequest {
                site,
                target: device,
                request_id,
                duration_ms,
                not_before: now,
                not_after: now.saturating_add(valid_secs),
            };
            let text = serde_json::to_string(&sign_open(&req, &signer))?;
            match out {
                Some(p) => std::fs::write(&p, format!("{text}\n"))
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display())),
                None => {
                    println!("{text}");
                    Ok(())
                }
            }
        }
        Command::Send {
            name,
            broker,
            site,
            device,
            payload,
            no_wait,
            json,
        } => {
            validate_segment("site", &site).map_err(mqtt_err)?;
            validate_segment("device", &device).map_err(mqtt_err)?;
            validate_segment("command", &name).map_err(mqtt_err)?;
            let body = match &payload {
                Some(p) => read_payload(p)?,
                None => serde_json::json!({"request_id": uuid::Uuid::now_v7().to_string()})
                    .to_string()
                    .into_bytes(),
            };
            let request_id = commands::claimed_request_id(&body);
            if request_id.is_none() && !no_wait {
                return Err(bad_input(
                    "the payload has no valid request_id, so its result cannot be recognised (add one, or --no-wait)",
                ));
            }
            let topics = Topics::new(&site, &device);
            let matches = |p: &[u8]| {
                commands::claimed_request_id(p).is_some()
                    && commands::claimed_request_id(p) == request_id
            };
            let wait = (!no_wait).then(|| ResultWait {
                topic: topics.cmd_result(&name),
                matches: &matches,
            });
            let answer = runtime()?
                .block_on(operator::publish(
                    &broker.config(),
                    &topics.cmd(&name),
                    body,
                    wait,
                ))
                .map_err(mqtt_err)?;
            let Some(answer) = answer else {
                println!("published {name} to {}", topics.cmd(&name));
                return Ok(());
            };
            let v: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| {
                anyhow::anyhow!("{device} answered with something that is not JSON: {e}")
            })?;
            let ok = v["ok"].as_bool() == Some(true);
            if json {
                println!("{v}");
            } else if ok {
                println!(
                    "{device}: {name} {}: {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                );
            }
            if ok {
                Ok(())
            } else {
                Err(bad_input(format!(
                    "{device} refused {name}: {}: {}",
                    v["code"].as_str().unwrap_or("?"),
                    v["message"].as_str().unwrap_or("")
                )))
            }
        }
    }
}
