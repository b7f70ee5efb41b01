//! Broker connection flags shared by the operator commands that talk MQTT
//! (`bundle publish`, `cmd send`), and the mapping of their errors onto the exit-code contract.

use std::path::PathBuf;
use std::time::Duration;

use facegate::mqtt::MqttError;
use facegate::mqtt::operator::OperatorConfig;

use crate::cli::bad_input;

/// How an operator reaches the broker (mutual TLS with the operator's own certificate, whose
/// CN the broker ACL must allow to publish to the fleet topics).
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// Broker host name (must match the broker certificate)
    #[arg(long)]
    pub host: String,
    /// Broker TLS port
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// CA certificate (PEM) the broker certificate must chain to
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Operator client certificate (PEM)
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Operator client key (PEM, mode 0600)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// MQTT client id (default: facegate-op-<pid>)
    #[arg(long)]
    pub client_id: Option<String>,
    /// Give up after this many seconds (connect, publish and any awaited result)
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

impl BrokerArgs {
    /// The operator client configuration these flags describe.
    pub fn config(&self) -> OperatorConfig {
        OperatorConfig {
            host: self.host.clone(),
            port: self.port,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("facegate-op-{}", std::process::id())),
            timeout: Duration::from_secs(self.timeout.max(1)),
        }
    }
}

/// Unreadable credentials or invalid ids are the caller's input (exit 2); a broker that does
/// not answer is not (exit 1).
pub fn mqtt_err(e: MqttError) -> anyhow::Error {
    match e {
        MqttError::Config(_) | MqttError::Credential { .. } => bad_input(e.to_string()),
        other => anyhow::Error::new(other),
    }
}

/// A small runtime for one operator exchange.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
