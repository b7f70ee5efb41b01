//! k-of-n aggregation of per-frame liveness over consecutive frames of one face track.
//!
//! Single-frame anti-spoofing is noisy in both directions: a real face blinks, turns, blurs; an
//! attack occasionally scores live on one frame. The daemon therefore opens only when at least
//! `k` of the last `n` frames of the *same* track were live. Semantics, precisely:
//!
//! - frames are pushed in capture order with the tracker's id and the capture time;
//! - a different track id, or a gap longer than `max_gap_ms` since the previous frame, starts
//!   a new window (a face that left and came back is a new presentation);
//! - the verdict after a push is live iff the window (the last `min(n, frames seen)` frames)
//!   holds at least `k` passing frames. Before `k` frames have been seen it cannot be live;
//! - a frame whose checks could not run (sensor fault) is pushed as a failure.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::FrameWindow;

/// State of the window after a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrackState {
    /// At least `k` of the last `n` frames passed.
    pub live: bool,
    /// Passing frames in the window.
    pub passed: usize,
    /// Frames in the window (at most `n`).
    pub window: usize,
    /// Frames of this track seen since the window last restarted.
    pub frames_seen: u64,
}

/// Sliding k-of-n window over one face track's per-frame verdicts.
#[derive(Debug, Clone)]
pub struct TrackAggregator {
    k: usize,
    n: usize,
    max_gap: Duration,
    track: Option<u64>,
    last: Option<Instant>,
    window: VecDeque<bool>,
    seen: u64,
}

impl TrackAggregator {
    /// An aggregator for a validated window (`1 <= k <= n`).
    pub fn new(w: FrameWindow) -> Result<Self, String> {
        w.validate()?;
        Ok(Self {
            k: w.k,
            n: w.n,
            max_gap: Duration::from_millis(w.max_gap_ms),
            track: None,
            last: None,
            window: VecDeque::with_capacity(w.n),
            seen: 0,
        })
    }

    /// Forget everything (e.g. after the door opened: the next person starts afresh).
    pub fn reset(&mut self) {
        self.track = None;
        self.last = None;
        self.window.clear();
        self.seen = 0;
    }

    /// Add the verdict of one frame of track `track` captured at `at`.
    pub fn push(&mut self, track: u64, at: Instant, frame_live: bool) -> TrackState {
        let new_track = self.track != Some(track);
        let gap = self.last.is_some_and(|l| {
            at.checked_duration_since(l)
                .is_none_or(|d| d > self.max_gap)
        });
        if new_track || gap {
            self.reset();
            self.track = Some(track);
        }
        self.last = Some(at);
        if self.window.len() == self.n {
            self.window.pop_front();
        }
        self.window.push_back(frame_live);
        self.seen += 1;
        self.state()
    }

    /// The current state without pushing.
    pub fn state(&self) -> TrackState {
        let passed = self.window.iter().filter(|&&p| p).count();
        TrackState {
            live: passed >= self.k,
            passed,
            window: self.window.len(),
            frames_seen: self.seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(k: usize, n: usize) -> TrackAggregator {
        TrackAggregator::new(FrameWindow {
            k,
            n,
            max_gap_ms: 100,
        })
        .unwrap()
    }

    #[test]
    fn k_of_n_window_slides() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut a = agg(2, 3);
        assert!(!a.push(1, ms(0), true).live); // 1 of 1
        assert!(a.push(1, ms(30), true).live); // 2 of 2
        assert!(a.push(1, ms(60), false).live); // T T F
        assert!(!a.push(1, ms(90), false).live); // T F F
        let s = a.push(1, ms(120), true); // F F T
        assert_eq!((s.live, s.passed, s.window), (false, 1, 3));
        assert!(a.push(1, ms(150), true).live); // F T T
        let mut strict = agg(3, 3);
        strict.push(7, ms(0), true);
        strict.push(7, ms(10), true);
        assert!(
            !strict.push(7, ms(20), false).live,
            "3 of 3 needs every frame"
        );
    }

    #[test]
    fn new_track_or_gap_restarts() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut a = agg(2, 3);
        a.push(1, ms(0), true);
        assert!(
            !a.push(2, ms(10), true).live,
            "another track's frame must not count"
        );
        assert!(a.push(2, ms(20), true).live);
        assert!(
            !a.push(2, ms(500), true).live,
            "a long gap restarts the window"
        );
        assert_eq!(a.state().frames_seen, 1);
        assert!(
            TrackAggregator::new(FrameWindow {
                k: 4,
                n: 3,
                max_gap_ms: 10
            })
            .is_err()
        );
    }
}
