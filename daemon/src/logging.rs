//! Where log lines go: the systemd journal with structured fields when its socket exists,
//! human-readable stderr otherwise (a terminal, a container, CI).
//!
//! Fields keep their names in the journal, upper-cased (`facegate_event` → `FACEGATE_EVENT`),
//! with no prefix, so `journalctl FACEGATE_EVENT=access DECISION=denied` works; see
//! [`crate::events`] for the list. The filter comes from `$FACEGATE_LOG` (`tracing` env-filter
//! syntax), default `info` for the daemon and `warn` for tools.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The journal's native-protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where logs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// systemd-journald, structured.
    Journal,
    /// stderr, human-readable.
    Stderr,
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("FACEGATE_LOG").unwrap_or_else(|_| {
        // tract warns that opset 21 is untested: expected for the folded SFace (the golden tests
        // check its output), so it is not news for an operator.
        EnvFilter::new(format!("{default},tract_onnx::model=error"))
    })
}

/// Install the global subscriber. `prefer_journal`: the daemon (true) logs to the journal when
/// it can; tools (false) always write to stderr. `$FACEGATE_LOG_TARGET=stderr|journal` overrides.
pub fn init(prefer_journal: bool, default_level: &str) -> LogTarget {
    let want_journal = match std::env::var("FACEGATE_LOG_TARGET").ok().as_deref() {
        Some("journal") => true,
        Some("stderr") => false,
        _ => prefer_journal && std::path::Path::new(JOURNAL_SOCKET).exists(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("facegate".into());
                if tracing_subscriber::registry()
                    .with(filter(default_level))
                    .with(layer)
                    .try_init()
                    .is_ok()
                {
                    return LogTarget::Journal;
                }
            }
            Err(e) => eprintln!("facegate: journal unavailable ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default_level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    LogTarget::Stderr
}
