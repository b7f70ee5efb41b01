//! systemd service notification (`sd_notify`): READY, STATUS, WATCHDOG, STOPPING.
//!
//! The protocol is one datagram per message to the socket named by `$NOTIFY_SOCKET` (a path, or
//! an abstract name starting with `@`). It is small enough to implement here rather than pull in
//! libsystemd. Without `$NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
//!
//! The watchdog is the part that matters for safety: [`Notifier::watchdog_interval`] returns
//! half of `WatchdogSec=`, and the daemon pings only when its pipeline made progress since the
//! last ping — a stuck camera or a wedged worker stops the pings and systemd restarts the
//! service (which starts with the door locked).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("sd_notify: {0}")]
pub struct NotifyError(#[from] std::io::Error);

/// A connection to systemd's notification socket (or nothing, outside systemd).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`, `$WATCHDOG_PID`).
    pub fn from_env() -> Result<Self, NotifyError> {
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|p| p == std::process::id())
            })
            .map(Duration::from_micros);
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(s) => {
                let bytes = s.as_encoded_bytes();
                let t = if let Some(name) = bytes.strip_prefix(b"@") {
                    Target::Abstract(name.to_vec())
                } else {
                    Target::Path(PathBuf::from(s))
                };
                Some((UnixDatagram::unbound()?, t))
            }
        };
        Ok(Self { target, watchdog })
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to ping the watchdog (half of `WatchdogSec=`), if it is enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Send raw `KEY=value` lines.
    pub fn send(&self, msg: &str) -> Result<(), NotifyError> {
        let Some((sock, target)) = &self.target else {
            return Ok(());
        };
        match target {
            Target::Path(p) => sock.send_to(msg.as_bytes(), p)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)?
            }
        };
        Ok(())
    }

    /// Startup finished: models, store and camera are up.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A human-readable status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// The pipeline made progress: keep the watchdog from firing.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// Shutting down (drain, relock, flush).
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), Target::Path(path))),
            watchdog: Some(Duration::from_secs(30)),
        };
        n.ready("templates 3\noutbox 0").unwrap();
        n.watchdog().unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=templates 3 outbox 0");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn abstract_socket_names_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("facegate-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                Target::Abstract(name.into_bytes()),
            )),
            watchdog: None,
        };
        n.status("ok").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=ok");
    }

    #[test]
    fn outside_systemd_everything_is_a_no_op() {
        let n = Notifier {
            target: None,
            watchdog: None,
        };
        assert!(!n.enabled());
        n.ready("x").unwrap();
        assert_eq!(n.watchdog_interval(), None);
    }
}
