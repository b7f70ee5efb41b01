//! V4L2 camera backend: USB (UVC) webcams, CSI bridges, NIR and depth cameras on Linux.
//!
//! Opens a device node by path, negotiates pixel format, size and frame rate (the driver may
//! grant something else: [`Negotiated`] reports what it actually granted), captures with mmap
//! streaming (the kernel fills a ring of buffers shared with us; no copy until conversion) and
//! converts each buffer with [`crate::convert`]. Three typed sources share one device core:
//! [`V4l2Camera`] (MJPEG, YUYV, GREY -> RGB [`Frame`]), [`V4l2Ir`] (GREY, Y10, Y16 ->
//! [`GreyFrame`]) and [`V4l2Depth`] (Z16 -> [`DepthMap`]). [`list_devices`] describes every node
//! for `facegate devices`.
//!
//! Hardware truths worth knowing: single-planar capture only (Pi ISP / libcamera nodes that are
//! multi-planar only are refused with a clear error); buffer timestamps come from the driver
//! (UVC: start of frame on the host) on the monotonic clock and are translated to [`Instant`];
//! a USB camera that is unplugged makes the next call fail with `Disconnected` and the source
//! must be reopened.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufFlags, Type as BufType};
use v4l::capability::Flags as CapFlags;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::v4l_sys::{v4l2_capability, v4l2_format, v4l2_pix_format};
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::camera::{Captured, DepthSource, FrameSource, IrSource};
use crate::convert::{self, ConvertError};
use crate::error::{Error, ErrorKind};
use crate::{DepthMap, Frame, GreyFrame, Intrinsics};

/// Pixel formats this backend can convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Motion-JPEG (`MJPG`): one JPEG per frame; what most USB webcams use above 640x480.
    Mjpeg,
    /// YUYV 4:2:2 (`YUYV`): uncompressed colour, the UVC baseline format.
    Yuyv,
    /// 8-bit grey (`GREY`, a.k.a. Y8): mono/NIR sensors.
    Grey,
    /// 10-bit grey in 16-bit little-endian words, LSB-aligned (`Y10 `).
    Y10,
    /// 16-bit grey little-endian (`Y16 `).
    Y16,
    /// 16-bit depth little-endian (`Z16 `), RealSense-style.
    Z16,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Y10 => *b"Y10 ",
            PixelFormat::Y16 => *b"Y16 ",
            PixelFormat::Z16 => *b"Z16 ",
        }
    }

    /// The format for a four-character code, if supported.
    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        [
            Self::Mjpeg,
            Self::Yuyv,
            Self::Grey,
            Self::Y10,
            Self::Y16,
            Self::Z16,
        ]
        .into_iter()
        .find(|f| f.fourcc() == code)
    }

    fn name(self) -> String {
        fourcc_str(self.fourcc())
    }
}

/// Printable four-character code; bit 31 marks a big-endian variant (kernel prints `-BE`).
fn fourcc_str(code: [u8; 4]) -> String {
    let be = code[3] & 0x80 != 0;
    let chars = [code[0], code[1], code[2], code[3] & 0x7f];
    let s = String::from_utf8_lossy(&chars).trim_end().to_string();
    if be { format!("{s}-BE") } else { s }
}

fn default_buffers() -> u32 {
    4
}

fn default_timeout_ms() -> u64 {
    2000
}

fn default_depth_unit_um() -> u32 {
    1000
}

/// What to open and what to ask the driver for. Deserialisable from the daemon's config.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// Device node, e.g. `/dev/video0` (prefer a stable `/dev/v4l/by-id/...` link).
    pub path: PathBuf,
    /// Requested pixel format; must be offered by the device.
    pub format: PixelFormat,
    /// Requested width; the driver may grant the nearest size it supports.
    pub width: u32,
    /// Requested height.
    pub height: u32,
    /// Requested frame rate; `None` keeps the driver's current rate.
    #[serde(default)]
    pub fps: Option<u32>,
    /// Number of mmap buffers to request (the driver may allocate a different number).
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// How long a capture call waits for a frame before a `Timeout` error.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Z16 only: micrometres per depth count (1000 = 1 mm, the RealSense D4xx default).
    #[serde(default = "default_depth_unit_um")]
    pub depth_unit_um: u32,
}

impl V4l2Config {
    /// A config with defaults: driver's frame rate, 4 buffers, 2 s timeout, 1 mm depth unit.
    pub fn new(path: impl Into<PathBuf>, format: PixelFormat, width: u32, height: u32) -> Self {
        Self {
            path: path.into(),
            format,
            width,
            height,
            fps: None,
            buffers: default_buffers(),
            timeout_ms: default_timeout_ms(),
            depth_unit_um: default_depth_unit_um(),
        }
    }
}

/// What the driver actually granted; may differ from the request in size and frame rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    /// The pixel format (always the one requested: a substitution is an error).
    pub format: PixelFormat,
    /// Granted width.
    pub width: u32,
    /// Granted height.
    pub height: u32,
    /// Bytes per row in the driver's buffers (for packed formats; 0/unused for MJPEG).
    pub stride: u32,
    /// Driver's maximum bytes per buffer.
    pub size_image: u32,
    /// Granted frame rate, if the driver reports one.
    pub fps: Option<f64>,
    /// What was requested: (width, height, fps).
    pub requested: (u32, u32, Option<u32>),
}

impl Negotiated {
    /// Whether the driver granted exactly the requested size (and rate, if one was requested).
    pub fn matches_request(&self) -> bool {
        let (w, h, fps) = self.requested;
        let fps_ok = match (fps, self.fps) {
            (None, _) => true,
            (Some(want), Some(got)) => (got - want as f64).abs() < 0.01 * want as f64,
            (Some(_), None) => false,
        };
        (w, h) == (self.width, self.height) && fps_ok
    }
}

/// A V4L2 failure, naming the device path. Classified by [`Error::kind`].
#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    /// The device node could not be opened.
    #[error("{}", open_message(path, source))]
    Open {
        /// Device path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device does not offer the requested pixel format.
    #[error(
        "{path}: pixel format {requested} is not offered; the device offers: {}",
        list_or_none(offered)
    )]
    UnsupportedFormat {
        /// Device path.
        path: String,
        /// Requested four-character code.
        requested: String,
        /// Codes the device offers, with the driver's descriptions.
        offered: Vec<String>,
    },
    /// The driver accepted the request but substituted another pixel format.
    #[error("{path}: requested {requested} but the driver granted {granted}")]
    NotGranted {
        /// Device path.
        path: String,
        /// Requested code.
        requested: String,
        /// Granted code.
        granted: String,
    },
    /// Not a single-planar video capture device with streaming I/O.
    #[error(
        "{path}: not a video capture device with streaming I/O (capabilities: {capabilities}); \
         metadata nodes and multi-planar-only devices are not supported"
    )]
    NotCapture {
        /// Device path.
        path: String,
        /// Capability names reported.
        capabilities: String,
    },
    /// The configured format does not suit this kind of source (e.g. YUYV for depth).
    #[error("{path}: {format:?} cannot be used as {wanted}")]
    WrongSourceKind {
        /// Device path.
        path: String,
        /// Configured format.
        format: PixelFormat,
        /// What the source needs.
        wanted: &'static str,
    },
    /// A device call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// Device path.
        path: String,
        /// The operation (ioctl or step).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No frame arrived in time.
    #[error("{path}: no frame within {after:?}")]
    Timeout {
        /// Device path.
        path: String,
        /// The configured timeout.
        after: Duration,
    },
    /// The driver flagged a buffer as corrupt or returned it empty.
    #[error("{path}: frame {sequence} is corrupt ({why})")]
    Corrupt {
        /// Device path.
        path: String,
        /// Sequence number of the bad frame.
        sequence: u64,
        /// What was wrong.
        why: &'static str,
    },
    /// A buffer could not be converted.
    #[error("{path}: frame {sequence}: {source}")]
    Convert {
        /// Device path.
        path: String,
        /// Sequence number of the bad frame.
        sequence: u64,
        /// The conversion error.
        #[source]
        source: ConvertError,
    },
}

fn open_message(path: &str, e: &io::Error) -> String {
    match ErrorKind::from_io(e) {
        ErrorKind::NotFound => {
            format!("{path}: no such V4L2 device (camera unplugged, or its driver not loaded?)")
        }
        ErrorKind::Permission => format!(
            "{path}: permission denied ({e}); add the service user to the 'video' group or fix the udev rule"
        ),
        ErrorKind::Busy => format!("{path}: device busy ({e}); another process holds it"),
        _ => format!("{path}: cannot open: {e}"),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

impl Error for V4l2Error {
    fn kind(&self) -> ErrorKind {
        match self {
            V4l2Error::Open { source, .. } | V4l2Error::Io { source, .. } => {
                ErrorKind::from_io(source)
            }
            V4l2Error::UnsupportedFormat { .. }
            | V4l2Error::NotGranted { .. }
            | V4l2Error::NotCapture { .. }
            | V4l2Error::WrongSourceKind { .. }
            | V4l2Error::Corrupt { .. }
            | V4l2Error::Convert { .. } => ErrorKind::Format,
            V4l2Error::Timeout { .. } => ErrorKind::Timeout,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw ioctls. The v4l crate's own `query_caps`/`format`/`set_format` panic on values a newer
// kernel may legitimately return (non-UTF-8 names, colorspace enums it does not know), so
// these three are done here, reading only the fields we need.

fn open_device(path: &Path) -> Result<Device, V4l2Error> {
    let p = path.display().to_string();
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(V4l2Error::Open {
            path: p,
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    Device::with_path(path).map_err(|source| V4l2Error::Open { path: p, source })
}

fn query_caps(dev: &Device) -> io::Result<v4l2_capability> {
    // SAFETY: v4l2_capability is a C struct of integers and byte arrays; all-zero is valid.
    let mut cap: v4l2_capability = unsafe { std::mem::zeroed() };
    // SAFETY: VIDIOC_QUERYCAP writes one v4l2_capability through the pointer, which points to
    // a live, writable value of exactly that type; the fd is owned by `dev` and open.
    unsafe {
        v4l::v4l2::ioctl(
            dev.handle().fd(),
            v4l::v4l2::vidioc::VIDIOC_QUERYCAP,
            (&mut cap as *mut v4l2_capability).cast(),
        )
    }?;
    Ok(cap)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn device_caps(cap: &v4l2_capability) -> CapFlags {
    // Per-node caps when the driver reports them, else the whole device's.
    let bits = if cap.capabilities & CapFlags::DEVICE_CAPS.bits() != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    CapFlags::from_bits_truncate(bits)
}

fn cap_names(caps: CapFlags) -> Vec<&'static str> {
    [
        (CapFlags::VIDEO_CAPTURE, "video-capture"),
        (CapFlags::VIDEO_CAPTURE_MPLANE, "video-capture-mplane"),
        (CapFlags::VIDEO_OUTPUT, "video-output"),
        (CapFlags::VIDEO_M2M, "mem2mem"),
        (CapFlags::META_CAPTURE, "metadata-capture"),
        (CapFlags::READ_WRITE, "read-write"),
        (CapFlags::STREAMING, "streaming"),
        (CapFlags::EXT_PIX_FORMAT, "ext-pix-format"),
    ]
    .into_iter()
    .filter(|(f, _)| caps.contains(*f))
    .map(|(_, n)| n)
    .collect()
}

/// S_FMT for single-planar capture; returns the format the driver granted.
fn set_format(
    dev: &Device,
    fourcc: [u8; 4],
    width: u32,
    height: u32,
) -> io::Result<v4l2_pix_format> {
    // SAFETY: v4l2_pix_format / v4l2_format are C structs/unions of integers; all-zero is valid.
    let mut pix: v4l2_pix_format = unsafe { std::mem::zeroed() };
    pix.width = width;
    pix.height = height;
    pix.pixelformat = u32::from_le_bytes(fourcc);
    pix.field = 0; // V4L2_FIELD_ANY: let the driver choose (progressive for cameras)
    // SAFETY: as above, all-zero is a valid v4l2_format.
    let mut fmt: v4l2_format = unsafe { std::mem::zeroed() };
    fmt.type_ = BufType::VideoCapture as u32;
    fmt.fmt.pix = pix;
    // SAFETY: VIDIOC_S_FMT reads and writes one v4l2_format through the pointer, which points to
    // a live, writable value of that type; the fd is owned by `dev` and open.
    unsafe {
        v4l::v4l2::ioctl(
            dev.handle().fd(),
            v4l::v4l2::vidioc::VIDIOC_S_FMT,
            (&mut fmt as *mut v4l2_format).cast(),
        )
    }?;
    // SAFETY: for a VIDEO_CAPTURE buffer type the kernel fills the `pix` member of the union.
    Ok(unsafe { fmt.fmt.pix })
}

/// The monotonic clock (`CLOCK_MONOTONIC`, the clock of `Instant` and of V4L2 timestamps).
fn monotonic_now() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, writable pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0 && ts.tv_sec >= 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Translate a driver buffer timestamp to an `Instant`; falls back to "now" when the driver's
/// clock is not monotonic or the value is implausible.
fn capture_instant(ts: v4l::Timestamp, flags: BufFlags) -> Instant {
    let now = Instant::now();
    let monotonic =
        flags.bits() & BufFlags::TIMESTAMP_MASK.bits() == BufFlags::TIMESTAMP_MONOTONIC.bits();
    if !monotonic || ts.sec < 0 || !(0..1_000_000).contains(&ts.usec) {
        return now;
    }
    let captured = Duration::new(ts.sec as u64, ts.usec as u32 * 1000);
    match monotonic_now().and_then(|m| m.checked_sub(captured)) {
        Some(age) if age < Duration::from_secs(10) => now.checked_sub(age).unwrap_or(now),
        _ => now,
    }
}

// ---------------------------------------------------------------------------------------------

/// Opened, configured device with its mmap buffers: the core shared by the typed sources.
struct V4l2Device {
    path: String,
    negotiated: Negotiated,
    timeout: Duration,
    buffers: u32,
    depth_unit_um: u32,
    // Declared before `dev`: dropped first (buffers unmapped before the fd closes).
    stream: Option<MmapStream<'static>>,
    streaming: bool,
    seq: SeqCounter,
    dev: Device,
}

/// Turns the driver's u32 sequence numbers, which wrap and restart at 0 with every new
/// stream, into strictly increasing u64 ones that keep the driver's gaps (dropped frames).
#[derive(Debug, Default)]
struct SeqCounter {
    base: u64,
    last_raw: Option<u32>,
    next_min: u64,
}

impl SeqCounter {
    fn push(&mut self, raw: u32) -> u64 {
        if self.last_raw.is_some_and(|last| raw <= last) {
            self.base += 1 << 32;
        }
        self.last_raw = Some(raw);
        let seq = (self.base + raw as u64).max(self.next_min);
        self.next_min = seq + 1;
        seq
    }

    /// A new stream starts at driver sequence 0: continue after the last number handed out.
    fn restart(&mut self) {
        self.base = self.next_min;
        self.last_raw = None;
    }
}

impl V4l2Device {
    fn open(cfg: &V4l2Config) -> Result<Self, V4l2Error> {
        let path = cfg.path.display().to_string();
        let io_err = |op| {
            let path = path.clone();
            move |source| V4l2Error::Io { path, op, source }
        };
        let dev = open_device(&cfg.path)?;
        let cap = query_caps(&dev).map_err(io_err("VIDIOC_QUERYCAP"))?;
        let caps = device_caps(&cap);
        if !caps.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
            return Err(V4l2Error::NotCapture {
                path,
                capabilities: cap_names(caps).join(" "),
            });
        }
        let offered = dev.enum_formats().map_err(io_err("VIDIOC_ENUM_FMT"))?;
        let want = cfg.format.fourcc();
        if !offered.iter().any(|d| d.fourcc.repr == want) {
            return Err(V4l2Error::UnsupportedFormat {
                path,
                requested: cfg.format.name(),
                offered: offered
                    .iter()
                    .map(|d| format!("{} ({})", fourcc_str(d.fourcc.repr), d.description))
                    .collect(),
            });
        }
        let pix = set_format(&dev, want, cfg.width, cfg.height).map_err(io_err("VIDIOC_S_FMT"))?;
        let granted = pix.pixelformat.to_le_bytes();
        if granted != want {
            return Err(V4l2Error::NotGranted {
                path,
                requested: cfg.format.name(),
                granted: fourcc_str(granted),
            });
        }
        // Frame rate: best effort. Drivers without V4L2_CAP_TIMEPERFRAME ignore or reject it;
        // the granted rate is read back either way.
        if let Some(fps) = cfg.fps.filter(|&f| f > 0) {
            let _ = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps));
        }
        let fps = dev
            .params()
            .ok()
            .filter(|p| p.interval.numerator > 0 && p.interval.denominator > 0)
            .map(|p| p.interval.denominator as f64 / p.interval.numerator as f64);
        let negotiated = Negotiated {
            format: cfg.format,
            width: pix.width,
            height: pix.height,
            stride: pix.bytesperline,
            size_image: pix.sizeimage,
            fps,
            requested: (cfg.width, cfg.height, cfg.fps),
        };
        let mut me = Self {
            path,
            negotiated,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            buffers: cfg.buffers.clamp(2, 32),
            depth_unit_um: cfg.depth_unit_um,
            stream: None,
            streaming: false,
            seq: SeqCounter::default(),
            dev,
        };
        me.create_stream()?;
        Ok(me)
    }

    fn create_stream(&mut self) -> Result<(), V4l2Error> {
        let mut stream = MmapStream::with_buffers(&self.dev, BufType::VideoCapture, self.buffers)
            .map_err(|source| V4l2Error::Io {
            path: self.path.clone(),
            op: "VIDIOC_REQBUFS/mmap",
            source,
        })?;
        // Safety net only: `capture` polls with the real timeout before dequeuing.
        let ms = self.timeout.as_millis().min(i32::MAX as u128 / 2) as u64;
        stream.set_timeout(Duration::from_millis(ms));
        self.stream = Some(stream);
        self.streaming = false;
        self.seq.restart();
        Ok(())
    }

    /// Stop and free the stream without letting the v4l crate's `Drop` panic: it panics when
    /// STREAMOFF fails with anything but ENODEV, so in that case the buffers are leaked instead.
    fn discard_stream(&mut self) {
        if let Some(mut s) = self.stream.take() {
            match s.stop() {
                Ok(()) => drop(s),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => drop(s),
                Err(_) => std::mem::forget(s),
            }
        }
        self.streaming = false;
    }

    fn wait_readable(&self) -> Result<(), V4l2Error> {
        let deadline = Instant::now() + self.timeout;
        let handle = self.dev.handle();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(V4l2Error::Timeout {
                    path: self.path.clone(),
                    after: self.timeout,
                });
            }
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            match handle.poll(libc::POLLIN, ms) {
                Ok(0) => continue, // timed out; the loop re-checks the deadline
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(V4l2Error::Io {
                        path: self.path.clone(),
                        op: "poll",
                        source,
                    });
                }
            }
        }
    }

    /// Dequeue the next filled buffer and hand its bytes to `convert`.
    fn capture<T>(
        &mut self,
        convert: impl FnOnce(&[u8], &Negotiated, u32) -> Result<T, ConvertError>,
    ) -> Result<Captured<T>, V4l2Error> {
        if self.stream.is_none() {
            self.create_stream()?;
        }
        if self.streaming {
            // Only dequeue once a buffer is ready, so a timeout leaves the queue consistent.
            self.wait_readable()?;
        }
        let stream = self.stream.as_mut().expect("created above");
        let result = CaptureStream::next(stream).map(|(buf, meta)| {
            let used = (meta.bytesused as usize).min(buf.len());
            (&buf[..used], *meta)
        });
        let (data, meta) = match result {
            Ok(v) => v,
            Err(e) => {
                // The v4l crate's queue bookkeeping is unknown after a failed next(): start
                // over with a fresh stream on the next call.
                self.discard_stream();
                return Err(if e.kind() == io::ErrorKind::TimedOut {
                    V4l2Error::Timeout {
                        path: self.path.clone(),
                        after: self.timeout,
                    }
                } else {
                    V4l2Error::Io {
                        path: self.path.clone(),
                        op: "VIDIOC_QBUF/DQBUF",
                        source: e,
                    }
                });
            }
        };
        self.streaming = true;
        let sequence = self.seq.push(meta.sequence);
        let timestamp = capture_instant(meta.timestamp, meta.flags);
        let corrupt = |why| V4l2Error::Corrupt {
            path: self.path.clone(),
            sequence,
            why,
        };
        if meta.flags.contains(BufFlags::ERROR) {
            return Err(corrupt("driver set V4L2_BUF_FLAG_ERROR"));
        }
        if data.is_empty() {
            return Err(corrupt("empty buffer"));
        }
        let frame = convert(data, &self.negotiated, self.depth_unit_um).map_err(|source| {
            V4l2Error::Convert {
                path: self.path.clone(),
                sequence,
                source,
            }
        })?;
        Ok(Captured {
            frame,
            timestamp,
            sequence,
        })
    }

    fn require(&self, allowed: &[PixelFormat], wanted: &'static str) -> Result<(), V4l2Error> {
        if allowed.contains(&self.negotiated.format) {
            Ok(())
        } else {
            Err(V4l2Error::WrongSourceKind {
                path: self.path.clone(),
                format: self.negotiated.format,
                wanted,
            })
        }
    }
}

impl Drop for V4l2Device {
    fn drop(&mut self) {
        self.discard_stream();
    }
}

impl std::fmt::Debug for V4l2Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Device")
            .field("path", &self.path)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

fn stride(n: &Negotiated) -> usize {
    n.stride as usize
}

/// A V4L2 colour camera (MJPEG, YUYV or GREY) as a [`FrameSource`].
#[derive(Debug)]
pub struct V4l2Camera(V4l2Device);

impl V4l2Camera {
    /// Open and configure the device; fails if the format is not MJPEG, YUYV or GREY, or the
    /// device does not offer it.
    pub fn open(cfg: &V4l2Config) -> Result<Self, V4l2Error> {
        let dev = V4l2Device::open(cfg)?;
        dev.require(
            &[PixelFormat::Mjpeg, PixelFormat::Yuyv, PixelFormat::Grey],
            "an RGB camera",
        )?;
        Ok(Self(dev))
    }

    /// What the driver granted.
    pub fn negotiated(&self) -> &Negotiated {
        &self.0.negotiated
    }
}

impl FrameSource for V4l2Camera {
    type Error = V4l2Error;

    fn next_frame(&mut self) -> Result<Captured<Frame>, V4l2Error> {
        self.0.capture(|data, n, _| match n.format {
            PixelFormat::Mjpeg => convert::mjpeg_to_rgb(data, n.width, n.height),
            PixelFormat::Yuyv => convert::yuyv_to_rgb(data, n.width, n.height, stride(n)),
            _ => convert::grey_to_frame(data, n.width, n.height, stride(n)),
        })
    }
}

/// A V4L2 near-infrared camera (GREY, Y10 or Y16) as an [`IrSource`].
#[derive(Debug)]
pub struct V4l2Ir(V4l2Device);

impl V4l2Ir {
    /// Open and configure the device; fails unless the format is GREY, Y10 or Y16.
    pub fn open(cfg: &V4l2Config) -> Result<Self, V4l2Error> {
        let dev = V4l2Device::open(cfg)?;
        dev.require(
            &[PixelFormat::Grey, PixelFormat::Y10, PixelFormat::Y16],
            "a NIR camera",
        )?;
        Ok(Self(dev))
    }

    /// What the driver granted.
    pub fn negotiated(&self) -> &Negotiated {
        &self.0.negotiated
    }
}

impl IrSource for V4l2Ir {
    type Error = V4l2Error;

    fn next_ir(&mut self) -> Result<Captured<GreyFrame>, V4l2Error> {
        self.0.capture(|data, n, _| match n.format {
            PixelFormat::Grey => convert::grey_to_grey(data, n.width, n.height, stride(n)),
            PixelFormat::Y10 => convert::y16_to_grey(data, n.width, n.height, stride(n), 10),
            _ => convert::y16_to_grey(data, n.width, n.height, stride(n), 16),
        })
    }
}

/// A V4L2 depth camera (Z16) as a [`DepthSource`]. Intrinsics come from configuration:
/// V4L2 has no standard way to report them.
#[derive(Debug)]
pub struct V4l2Depth {
    dev: V4l2Device,
    intrinsics: Intrinsics,
}

impl V4l2Depth {
    /// Open and configure the device; fails unless the format is Z16.
    pub fn open(cfg: &V4l2Config, intrinsics: Intrinsics) -> Result<Self, V4l2Error> {
        let dev = V4l2Device::open(cfg)?;
        dev.require(&[PixelFormat::Z16], "a depth sensor")?;
        Ok(Self { dev, intrinsics })
    }

    /// What the driver granted.
    pub fn negotiated(&self) -> &Negotiated {
        &self.dev.negotiated
    }
}

impl DepthSource for V4l2Depth {
    type Error = V4l2Error;

    fn next_depth(&mut self) -> Result<Captured<DepthMap>, V4l2Error> {
        self.dev.capture(|data, n, unit| {
            convert::z16_to_depth(data, n.width, n.height, stride(n), unit)
        })
    }

    fn intrinsics(&self) -> Intrinsics {
        self.intrinsics
    }
}

// ---------------------------------------------------------------------------------------------
// Device listing.

/// One frame size a format supports. Serialises as the bare field map (`facegate devices --json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum FrameSizeInfo {
    /// A fixed size, with the frame rates offered at it.
    Discrete {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Offered frame rates (discrete intervals only; empty if not enumerable).
        fps: Vec<f64>,
    },
    /// Any size in a range (common for virtual and CSI devices).
    Stepwise {
        /// Smallest width.
        min_width: u32,
        /// Largest width.
        max_width: u32,
        /// Width increment.
        step_width: u32,
        /// Smallest height.
        min_height: u32,
        /// Largest height.
        max_height: u32,
        /// Height increment.
        step_height: u32,
    },
}

/// One pixel format a device offers.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatInfo {
    /// Four-character code, e.g. `YUYV`.
    pub fourcc: String,
    /// The driver's description, e.g. `YUYV 4:2:2`.
    pub description: String,
    /// Whether this backend can convert it, and as what.
    pub supported: Option<PixelFormat>,
    /// Frame sizes.
    pub sizes: Vec<FrameSizeInfo>,
}

/// Everything `facegate devices` shows about one V4L2 node.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device node path.
    pub path: PathBuf,
    /// Card (product) name.
    pub card: String,
    /// Kernel driver name (`uvcvideo`, `vivid`, ...).
    pub driver: String,
    /// Bus location (`usb-0000:01:00.0-1.4`, `platform:vivid-000`).
    pub bus: String,
    /// Capability names for this node (`video-capture`, `streaming`, `metadata-capture`, ...).
    pub capabilities: Vec<&'static str>,
    /// Capture formats (empty for non-capture nodes).
    pub formats: Vec<FormatInfo>,
}

impl DeviceInfo {
    /// Whether this node can be opened by [`V4l2Camera`] & co (single-planar capture, streaming).
    pub fn can_capture(&self) -> bool {
        self.capabilities.contains(&"video-capture") && self.capabilities.contains(&"streaming")
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} (driver {}, {})",
            self.path.display(),
            self.card,
            self.driver,
            self.bus
        )?;
        writeln!(f, "  capabilities: {}", self.capabilities.join(" "))?;
        for fmt in &self.formats {
            let tag = if fmt.supported.is_some() {
                ""
            } else {
                " [not supported by facegate]"
            };
            writeln!(f, "  {} ({}){tag}", fmt.fourcc, fmt.description)?;
            for s in &fmt.sizes {
                match s {
                    FrameSizeInfo::Discrete { width, height, fps } => {
                        let rates: Vec<String> = fps
                            .iter()
                            .map(|r| {
                                format!("{r:.4}")
                                    .trim_end_matches('0')
                                    .trim_end_matches('.')
                                    .to_string()
                            })
                            .collect();
                        writeln!(f, "    {width}x{height} @ {} fps", list_or_none(&rates))?;
                    }
                    FrameSizeInfo::Stepwise {
                        min_width,
                        max_width,
                        step_width,
                        min_height,
                        max_height,
                        step_height,
                    } => writeln!(
                        f,
                        "    {min_width}..{max_width} step {step_width} x {min_height}..{max_height} step {step_height}"
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// Describe the device at `path`: names, capabilities, formats with sizes and frame rates.
pub fn probe_device(path: impl AsRef<Path>) -> Result<DeviceInfo, V4l2Error> {
    let path = path.as_ref();
    let dev = open_device(path)?;
    let cap = query_caps(&dev).map_err(|source| V4l2Error::Io {
        path: path.display().to_string(),
        op: "VIDIOC_QUERYCAP",
        source,
    })?;
    let caps = device_caps(&cap);
    let mut formats = Vec::new();
    if caps.contains(CapFlags::VIDEO_CAPTURE) {
        for d in dev.enum_formats().unwrap_or_default() {
            let code = d.fourcc.repr;
            let mut sizes = Vec::new();
            for fs in dev.enum_framesizes(FourCC::new(&code)).unwrap_or_default() {
                match fs.size {
                    FrameSizeEnum::Discrete(s) => {
                        let fps = dev
                            .enum_frameintervals(FourCC::new(&code), s.width, s.height)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|i| match i.interval {
                                v4l::frameinterval::FrameIntervalEnum::Discrete(fr)
                                    if fr.numerator > 0 =>
                                {
                                    Some(fr.denominator as f64 / fr.numerator as f64)
                                }
                                _ => None,
                            })
                            .collect();
                        sizes.push(FrameSizeInfo::Discrete {
                            width: s.width,
                            height: s.height,
                            fps,
                        });
                    }
                    FrameSizeEnum::Stepwise(s) => sizes.push(FrameSizeInfo::Stepwise {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    }),
                }
            }
            formats.push(FormatInfo {
                fourcc: fourcc_str(code),
                description: d.description,
                supported: PixelFormat::from_fourcc(code),
                sizes,
            });
        }
    }
    Ok(DeviceInfo {
        path: path.to_path_buf(),
        card: c_string(&cap.card),
        driver: c_string(&cap.driver),
        bus: c_string(&cap.bus_info),
        capabilities: cap_names(caps),
        formats,
    })
}

/// Every `/dev/videoN` node in numeric order, each described by [`probe_device`] or with the
/// error that prevented it (e.g. permission denied), so nothing is silently hidden. An empty
/// list means no V4L2 device nodes exist.
pub fn list_devices() -> Vec<Result<DeviceInfo, V4l2Error>> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name();
                    let n = name.to_str()?.strip_prefix("video")?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| probe_device(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourcc_round_trip() {
        for f in [
            PixelFormat::Mjpeg,
            PixelFormat::Yuyv,
            PixelFormat::Grey,
            PixelFormat::Y10,
            PixelFormat::Y16,
            PixelFormat::Z16,
        ] {
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"NV12"), None);
        assert_eq!(PixelFormat::Y16.name(), "Y16");
        assert_eq!(fourcc_str([b'Y', b'1', b'6', b' ' | 0x80]), "Y16-BE");
    }

    #[test]
    fn missing_device_names_the_path() {
        let err = V4l2Camera::open(&V4l2Config::new(
            "/dev/video-does-not-exist",
            PixelFormat::Yuyv,
            640,
            480,
        ))
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(
            msg.contains("/dev/video-does-not-exist") && msg.contains("no such V4L2 device"),
            "{msg}"
        );
        let err = probe_device("/dev/nul\0l").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn non_v4l2_node_is_an_error_not_a_panic() {
        // /dev/null opens but answers VIDIOC_QUERYCAP with ENOTTY.
        let err = V4l2Camera::open(&V4l2Config::new("/dev/null", PixelFormat::Yuyv, 640, 480))
            .unwrap_err();
        assert!(err.to_string().contains("/dev/null"), "{err}");
        assert!(probe_device("/dev/null").is_err());
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = V4l2Error::Open {
            path: "/dev/video0".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(e.kind(), ErrorKind::Permission);
        assert!(e.to_string().contains("'video' group"), "{e}");
        let e = V4l2Error::UnsupportedFormat {
            path: "/dev/video0".into(),
            requested: "Z16".into(),
            offered: vec!["YUYV (YUYV 4:2:2)".into(), "MJPG (Motion-JPEG)".into()],
        };
        assert_eq!(e.kind(), ErrorKind::Format);
        assert_eq!(
            e.to_string(),
            "/dev/video0: pixel format Z16 is not offered; the device offers: YUYV (YUYV 4:2:2), MJPG (Motion-JPEG)"
        );
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let c: V4l2Config = toml::from_str(
            "path = \"/dev/video2\"\nformat = \"z16\"\nwidth = 848\nheight = 480\nfps = 30",
        )
        .unwrap();
        assert_eq!(c.format, PixelFormat::Z16);
        assert_eq!(
            (c.buffers, c.timeout_ms, c.depth_unit_um, c.fps),
            (4, 2000, 1000, Some(30))
        );
        let n = Negotiated {
            format: PixelFormat::Z16,
            width: 848,
            height: 480,
            stride: 1696,
            size_image: 1696 * 480,
            fps: Some(30.0),
            requested: (848, 480, Some(30)),
        };
        assert!(n.matches_request());
        assert!(!Negotiated { width: 640, ..n }.matches_request());
    }

    #[test]
    fn sequence_numbers_unwrap_and_survive_restart() {
        let mut c = SeqCounter::default();
        assert_eq!(c.push(0), 0);
        assert_eq!(c.push(2), 2); // a dropped frame shows as a gap
        assert_eq!(c.push(u32::MAX), u32::MAX as u64);
        assert_eq!(c.push(1), (1u64 << 32) + 1); // 32-bit wrap
        c.restart();
        assert_eq!(c.push(0), (1u64 << 32) + 2); // a new stream continues after the last
    }
}
