//! The daemon's side of fleet sync: starts the MQTT link from `[mqtt]`/`[fleet]`, and carries
//! out the remote commands the link has verified (`open` drives the door through the same
//! capped door thread as a face; `reload-config` re-reads and validates the file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::bundle::{BundlePolicy, FleetKeys, SiteKey, Verifier};
use crate::config::Config;
use crate::mqtt::commands::{CommandOutcome, RemoteCommand};
use crate::mqtt::{FleetHandle, FleetLink, StatusSource};
use crate::service::{Service, ServiceError};
use crate::store::Store;

/// Credential name of the site key in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_SITE_KEY: &str = "site.key";

/// A started fleet link.
#[derive(Debug)]
pub struct Fleet {
    handle: FleetHandle,
    task: tokio::task::JoinHandle<()>,
    commands: Option<mpsc::Receiver<RemoteCommand>>,
}

impl Fleet {
    /// A closure that wakes the publisher after an event was committed.
    pub fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let h = self.handle.clone();
        Arc::new(move || h.notify_new_event())
    }

    /// The verified commands for the daemon (taken once).
    pub fn take_commands(&mut self) -> Option<mpsc::Receiver<RemoteCommand>> {
        self.commands.take()
    }

    /// Publish `offline`, disconnect, wait (bounded) for the link task.
    pub async fn shutdown(self) {
        self.handle.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn site_key_path(cfg: &Config) -> Option<PathBuf> {
    cfg.fleet.site_key_file.clone().or_else(|| {
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| Path::new(&d).join(CREDENTIAL_SITE_KEY))
            .filter(|p| p.is_file())
    })
}

/// The bundle verifier from `[fleet]`, or `None` (bundles refused with `not_configured`).
pub fn verifier(cfg: &Config) -> Result<Option<Verifier>, ServiceError> {
    let Some(keys) = &cfg.fleet.keys_file else {
        return Ok(None);
    };
    let fleet = FleetKeys::from_file(keys).map_err(|e| ServiceError::Other(e.to_string()))?;
    let site_key = site_key_path(cfg).ok_or_else(|| {
        ServiceError::Other(
            "fleet.keys_file is set but there is no site key (fleet.site_key_file or the credential site.key)".into(),
        )
    })?;
    let site_key = SiteKey::from_file(&site_key).map_err(|e| ServiceError::Other(e.to_string()))?;
    let mut policy = BundlePolicy::new(&cfg.device.site, &cfg.device.id);
    if let Some(m) = &cfg.mqtt {
        policy.max_bytes = m.max_bundle_bytes;
    }
    Ok(Some(Verifier {
        fleet,
        site_key,
        policy,
    }))
}

/// The status source for this configuration: version and `id@version` of every model in use.
pub fn status_source(cfg: &Config) -> StatusSource {
    let manifest = crate::models::Manifest::embedded();
    let mut ids = vec![
        cfg.vision.detector.model.clone(),
        cfg.vision.recognizer.model.clone(),
    ];
    ids.extend(
        manifest
            .models
            .iter()
            .filter(|e| e.role == crate::models::Role::Antispoof && e.default)
            .map(|e| e.id.clone()),
    );
    StatusSource::new(
        ids.into_iter()
            .map(|id| match manifest.get(&id) {
                Ok(e) => format!("{id}@{}", &e.sha256[..12]),
                Err(_) => id,
            })
            .collect(),
    )
}

/// Start the link when `[mqtt]` is configured; `status` carries the faults the daemon reports.
pub fn start(
    cfg: &Config,
    store: Arc<Store>,
    status: StatusSource,
) -> Result<Option<Fleet>, ServiceError> {
    let Some(m) = cfg.mqtt.clone() else {
        tracing::info!("no [mqtt] section: offline terminal, events stay in the outbox");
        return Ok(None);
    };
    let tls = crate::mqtt::tls::from_config(&m).map_err(|e| ServiceError::Other(e.to_string()))?;
    let (link, handle) = FleetLink::new(store, m, tls, verifier(cfg)?, status)
        .map_err(|e| ServiceError::Other(e.to_string()))?;
    let (tx, rx) = mpsc::channel(8);
    let link = link.with_commands(tx);
    let task = tokio::spawn(async move {
        if let Err(e) = link.run().await {
            tracing::error!(facegate_event = "fault", fault_source = "mqtt", error = %e, "fleet link stopped");
        }
    });
    Ok(Some(Fleet {
        handle,
        task,
        commands: Some(rx),
    }))
}

/// Carry out one verified command and answer it.
pub fn handle_command(cmd: RemoteCommand, service: &Service, config_path: &Path) {
    match cmd {
        RemoteCommand::Open {
            request_id,
            duration,
            reply,
        } => {
            let ok = service.remote_open(&request_id, duration);
            let _ = reply.send(CommandOutcome {
                ok,
                code: if ok { "opened" } else { "door_unavailable" }.into(),
                message: if ok {
                    format!(
                        "unlocked for up to {} ms (capped by door.max_unlock_ms)",
                        duration.as_millis()
                    )
                } else {
                    "the door thread is not running".into()
                },
            });
        }
        RemoteCommand::ReloadConfig { request_id, reply } => {
            // Validate the file now; settings take effect on restart (systemd restarts the unit
            // cheaply, and a half-applied configuration is worse than a short restart).
            let outcome = match Config::load(config_path) {
                Ok(_) => CommandOutcome {
                    ok: true,
                    code: "valid_restart_required".into(),
                    message: "configuration is valid; restart the service to apply it".into(),
                },
                Err(e) => CommandOutcome {
                    ok: false,
                    code: "invalid_config".into(),
                    message: e.to_string(),
                },
            };
            tracing::info!(facegate_event = "command", command = "reload-config", request_id = %request_id, ok = outcome.ok, "{}", outcome.message);
            let _ = reply.send(outcome);
        }
    }
}
