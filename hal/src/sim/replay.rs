//! SIMULATED RGB camera replaying still images: the daemon's camera in tests and demos.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{FaultSwitch, ReplayMode, SimError};
use crate::camera::{Captured, FrameSource};
use crate::error::ErrorKind;
use crate::frame::Frame;

const DEVICE: &str = "replay camera";

enum Item {
    Path(PathBuf),
    Frame(Frame),
}

/// SIMULATED [`FrameSource`] replaying a directory or list of images, or in-memory frames.
///
/// Pacing: unpaced by default (each call returns the next frame at once, for fast tests);
/// with [`ReplaySource::fps`] it behaves like a free-running camera: frame `n` is "captured"
/// at `start + n / fps`, a call blocks until the next frame is due, and a reader that falls
/// behind gets the most recent due frame, the missed ones showing as gaps in
/// [`Captured::sequence`]. Files are decoded when replayed, so a bad file is a `Format` error
/// for that frame only and the stream moves on.
pub struct ReplaySource {
    items: Vec<Item>,
    mode: ReplayMode,
    interval: Option<Duration>,
    start: Option<Instant>,
    next_seq: u64,
    delivered: u64,
    fail_after: Option<(u64, ErrorKind)>,
    fail_once: Vec<(u64, ErrorKind)>,
    faults: FaultSwitch,
}

impl std::fmt::Debug for ReplaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplaySource(SIMULATED)")
            .field("frames", &self.items.len())
            .field("mode", &self.mode)
            .field("interval", &self.interval)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl ReplaySource {
    fn with_items(items: Vec<Item>) -> Self {
        Self {
            items,
            mode: ReplayMode::Loop,
            interval: None,
            start: None,
            next_seq: 0,
            delivered: 0,
            fail_after: None,
            fail_once: Vec::new(),
            faults: FaultSwitch::default(),
        }
    }

    /// Replay every `.jpg`, `.jpeg` and `.png` file in `dir` in file-name order. An unreadable
    /// directory or one without images is a `NotFound` error naming the directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, SimError> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|e| {
            SimError::new(
                DEVICE,
                ErrorKind::from_io(&e),
                format!("{}: {e}", dir.display()),
            )
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        if paths.is_empty() {
            return Err(SimError::new(
                DEVICE,
                ErrorKind::NotFound,
                format!("no .jpg/.jpeg/.png images in {}", dir.display()),
            ));
        }
        paths.sort();
        Ok(Self::from_paths(paths))
    }

    /// Replay these image files in the given order.
    pub fn from_paths(paths: Vec<PathBuf>) -> Self {
        Self::with_items(paths.into_iter().map(Item::Path).collect())
    }

    /// Replay frames already in memory (synthetic test images).
    pub fn from_frames(frames: Vec<Frame>) -> Self {
        Self::with_items(frames.into_iter().map(Item::Frame).collect())
    }

    /// Pace delivery like a camera running at `fps` frames per second. A non-positive or
    /// non-finite value means unpaced.
    pub fn fps(mut self, fps: f64) -> Self {
        self.interval = (fps.is_finite() && fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps));
        self
    }

    /// Loop (default) or stop with `EndOfStream` after the last image.
    pub fn mode(mut self, mode: ReplayMode) -> Self {
        self.mode = mode;
        self
    }

    /// After `n` frames have been delivered, fail every further call with `kind` (e.g.
    /// `Disconnected`: the camera was unplugged after `n` frames).
    pub fn fail_after(mut self, n: u64, kind: ErrorKind) -> Self {
        self.fail_after = Some((n, kind));
        self
    }

    /// Fail exactly one call with `kind` once `n` frames have been delivered (e.g. a single
    /// `Timeout` or corrupt frame), then carry on.
    pub fn fail_once_at(mut self, n: u64, kind: ErrorKind) -> Self {
        self.fail_once.push((n, kind));
        self
    }

    /// A handle to switch faults on and off while the daemon owns this source.
    pub fn fault_switch(&self) -> FaultSwitch {
        self.faults.clone()
    }

    /// Frames delivered successfully so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
}

impl FrameSource for ReplaySource {
    type Error = SimError;

    fn next_frame(&mut self) -> Result<Captured<Frame>, SimError> {
        self.faults.check(DEVICE)?;
        if let Some((n, kind)) = self.fail_after
            && self.delivered >= n
        {
            return Err(SimError::new(
                DEVICE,
                kind,
                format!("injected after {n} frames"),
            ));
        }
        let delivered = self.delivered;
        if let Some(i) = self.fail_once.iter().position(|(n, _)| *n == delivered) {
            let (n, kind) = self.fail_once.remove(i);
            return Err(SimError::new(
                DEVICE,
                kind,
                format!("injected once after {n} frames"),
            ));
        }
        if self.items.is_empty() {
            return Err(SimError::new(
                DEVICE,
                ErrorKind::EndOfStream,
                "no frames to replay",
            ));
        }

        let (seq, timestamp) = match self.interval {
            None => (self.next_seq, Instant::now()),
            Some(interval) => {
                let start = *self.start.get_or_insert_with(Instant::now);
                let now = Instant::now();
                // Index of the most recent frame already "captured" by now.
                let due =
                    (now.duration_since(start).as_nanos() / interval.as_nanos().max(1)) as u64;
                let seq = self.next_seq.max(due);
                let at = start + interval.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
                if at > now {
                    std::thread::sleep(at - now);
                }
                (seq, at)
            }
        };
        let len = self.items.len() as u64;
        if self.mode == ReplayMode::Stop && seq >= len {
            return Err(SimError::new(
                DEVICE,
                ErrorKind::EndOfStream,
                format!("all {len} frames replayed"),
            ));
        }
        self.next_seq = seq + 1;
        let frame = match &self.items[(seq % len) as usize] {
            Item::Frame(f) => f.clone(),
            Item::Path(p) => Frame::open(p)
                .map_err(|e| SimError::new(DEVICE, ErrorKind::Format, e.to_string()))?,
        };
        self.delivered += 1;
        Ok(Captured {
            frame,
            timestamp,
            sequence: seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn solid(v: u8) -> Frame {
        Frame::from_rgb8(2, 2, vec![v; 12]).unwrap()
    }

    #[test]
    fn stop_mode_ends_and_loop_mode_wraps() {
        let mut s = ReplaySource::from_frames(vec![solid(1), solid(2)]).mode(ReplayMode::Stop);
        assert_eq!(s.next_frame().unwrap().frame.pixel(0, 0), [1, 1, 1]);
        let f = s.next_frame().unwrap();
        assert_eq!((f.frame.pixel(0, 0), f.sequence), ([2, 2, 2], 1));
        let err = s.next_frame().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::EndOfStream);
        assert!(err.to_string().contains("SIMULATED"));
        assert!(format!("{s:?}").contains("SIMULATED"));

        let mut s = ReplaySource::from_frames(vec![solid(1), solid(2)]);
        let seen: Vec<u8> = (0..5)
            .map(|_| s.next_frame().unwrap().frame.pixel(0, 0)[0])
            .collect();
        assert_eq!(seen, [1, 2, 1, 2, 1]);
    }

    #[test]
    fn injected_faults() {
        let mut s = ReplaySource::from_frames(vec![solid(1)])
            .fail_once_at(1, ErrorKind::Timeout)
            .fail_after(3, ErrorKind::Disconnected);
        assert!(s.next_frame().is_ok());
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Timeout);
        assert!(s.next_frame().is_ok());
        assert!(s.next_frame().is_ok());
        for _ in 0..3 {
            assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Disconnected);
        }
        assert_eq!(s.delivered(), 3);

        let mut s = ReplaySource::from_frames(vec![solid(1)]);
        let switch = s.fault_switch();
        switch.set(ErrorKind::Disconnected);
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Disconnected);
        switch.clear();
        assert!(s.next_frame().is_ok());
    }

    #[test]
    fn paced_replay_blocks_and_drops_for_slow_readers() {
        let mut s = ReplaySource::from_frames(vec![solid(1)]).fps(100.0);
        let t0 = Instant::now();
        let a = s.next_frame().unwrap();
        let b = s.next_frame().unwrap();
        let c = s.next_frame().unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(19),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!((a.sequence, b.sequence, c.sequence), (0, 1, 2));
        assert_eq!(c.timestamp - a.timestamp, Duration::from_millis(20));
        // A reader that sleeps 55 ms misses frames: the sequence jumps.
        std::thread::sleep(Duration::from_millis(55));
        let d = s.next_frame().unwrap();
        assert!(d.sequence >= 6, "{}", d.sequence);
    }

    #[test]
    fn directory_replay_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ReplaySource::from_dir(dir.path()).unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            ReplaySource::from_dir(dir.path().join("missing"))
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        let img = image::RgbImage::from_pixel(4, 3, image::Rgb([7, 8, 9]));
        img.save(dir.path().join("b.png")).unwrap();
        std::fs::write(dir.path().join("a.png"), b"not a png").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let mut s = ReplaySource::from_dir(dir.path())
            .unwrap()
            .mode(ReplayMode::Stop);
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Format); // a.png
        let f = s.next_frame().unwrap(); // b.png
        assert_eq!((f.frame.width(), f.frame.pixel(3, 2)), (4, [7, 8, 9]));
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::EndOfStream);
    }
}
