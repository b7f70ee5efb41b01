//! The one error vocabulary shared by every device trait.
//!
//! As in `embedded-hal`, each trait has its own associated `Error` type (a V4L2 camera and a GPIO
//! relay fail in very different ways and keep their own detail), but every such type implements
//! [`Error`], which classifies it into an [`ErrorKind`]. Code that is generic over the hardware,
//! such as the daemon's fault handling and liveness policy, decides on the kind alone: retry on
//! [`ErrorKind::Timeout`], report a missing sensor on [`ErrorKind::Disconnected`], and so on,
//! while the full message still reaches the operator's log.

/// Backend-independent classification of a device failure, for generic fault handling.
///
/// New kinds may be added, so `match` needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device node or pin does not exist (wrong path, module not loaded, camera unplugged
    /// before start). A configuration or installation problem: retrying will not help.
    NotFound,
    /// The device was working and has gone away (USB unplug, `ENODEV`, broken link). The
    /// caller may try to reopen it later.
    Disconnected,
    /// Nothing arrived within the deadline. Transient: the next call may succeed.
    Timeout,
    /// The data or the requested format is unusable: unsupported pixel format, corrupt JPEG,
    /// short buffer, sample outside its bit depth, geometry mismatch.
    Format,
    /// The process may not open the device (`EACCES`/`EPERM`): fix group membership or udev.
    Permission,
    /// Another process or handle holds the device (`EBUSY`, GPIO pin already claimed).
    Busy,
    /// A finite source (a replayed recording) has delivered its last frame.
    EndOfStream,
    /// Anything else; the error's message says what.
    Other,
}

impl ErrorKind {
    /// A short lower-case name, stable for logs and JSON (`"disconnected"`, `"timeout"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Format => "format",
            ErrorKind::Permission => "permission",
            ErrorKind::Busy => "busy",
            ErrorKind::EndOfStream => "end-of-stream",
            ErrorKind::Other => "other",
        }
    }

    /// Classify an OS error number from a device call, so every backend maps `errno` the same way.
    pub fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        match err.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ESHUTDOWN) => {
                return ErrorKind::Disconnected;
            }
            Some(libc::EBUSY) => return ErrorKind::Busy,
            Some(libc::EACCES) | Some(libc::EPERM) => return ErrorKind::Permission,
            Some(libc::ENOENT) => return ErrorKind::NotFound,
            Some(libc::ETIMEDOUT) => return ErrorKind::Timeout,
            Some(libc::EINVAL) => return ErrorKind::Format,
            _ => {}
        }
        match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::Permission,
            Io::TimedOut => ErrorKind::Timeout,
            Io::UnexpectedEof => ErrorKind::EndOfStream,
            _ => ErrorKind::Other,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ErrorKind {}

/// Implemented by every device trait's associated error type.
///
/// The bounds let the daemon move errors across threads and box them (`anyhow`) without
/// knowing the backend.
pub trait Error: std::error::Error + Send + Sync + 'static {
    /// The backend-independent classification of this error.
    fn kind(&self) -> ErrorKind;
}

/// A bare kind is a valid error: handy for generic code and for simple adapters.
impl Error for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

/// For devices that cannot fail (a lock that exists only in a test, a no-op indicator).
impl Error for std::convert::Infallible {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification() {
        let k = |e| ErrorKind::from_io(&std::io::Error::from_raw_os_error(e));
        assert_eq!(k(libc::ENODEV), ErrorKind::Disconnected);
        assert_eq!(k(libc::ENOENT), ErrorKind::NotFound);
        assert_eq!(k(libc::EACCES), ErrorKind::Permission);
        assert_eq!(k(libc::EBUSY), ErrorKind::Busy);
        assert_eq!(k(libc::EINVAL), ErrorKind::Format);
        assert_eq!(k(libc::EIO), ErrorKind::Other);
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "VIDIOC_DQBUF");
        assert_eq!(ErrorKind::from_io(&timed_out), ErrorKind::Timeout);
        assert_eq!(ErrorKind::Disconnected.kind().to_string(), "disconnected");
    }
}
