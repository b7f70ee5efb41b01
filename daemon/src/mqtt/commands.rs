//! TEMPORARY shim until the fleet-sync branch lands: remote commands forwarded to the daemon.

/// A verified command for the daemon.
#[derive(Debug)]
pub enum RemoteCommand {
    /// Timed remote unlock.
    Open {
        /// Request id.
        request_id: String,
        /// Unlock duration.
        duration: std::time::Duration,
        /// Where the outcome goes.
        reply: tokio::sync::oneshot::Sender<CommandOutcome>,
    },
    /// Reload the configuration.
    ReloadConfig {
        /// Request id.
        request_id: String,
        /// Where the outcome goes.
        reply: tokio::sync::oneshot::Sender<CommandOutcome>,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// Success.
    pub ok: bool,
    /// Machine code.
    pub code: String,
    /// Human message.
    pub message: String,
}
