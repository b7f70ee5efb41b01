//! Failed-attempt throttling: after `max_denials` denials within `window_secs`, matching pauses
//! for `pause_secs` and every presentation is denied with `throttled`.
//!
//! Why: a 1:N matcher with a fixed false-accept rate per attempt is eventually beaten by an
//! attacker who can present many faces (or many printouts) quickly. Throttling bounds the
//! attempts per hour and raises an alarm an operator can see. The clock is passed in, so the
//! rule is tested without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

/// Sliding-window denial counter with a pause.
#[derive(Debug, Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    denials: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl Throttle {
    /// A throttle with a validated configuration.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            denials: VecDeque::new(),
            paused_until: None,
        }
    }

    /// Whether matching is paused at `now`.
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|u| now < u)
    }

    /// Record a denial; returns the pause length when this denial starts a pause (the alarm).
    pub fn record_denial(&mut self, now: Instant) -> Option<Duration> {
        if self.paused(now) {
            return None;
        }
        let window = Duration::from_secs(self.cfg.window_secs);
        while self
            .denials
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > window)
        {
            self.denials.pop_front();
        }
        self.denials.push_back(now);
        if self.denials.len() >= self.cfg.max_denials as usize {
            self.denials.clear();
            let pause = Duration::from_secs(self.cfg.pause_secs);
            self.paused_until = Some(now + pause);
            return Some(pause);
        }
        None
    }

    /// A grant clears the count (the legitimate user got in).
    pub fn record_grant(&mut self) {
        self.denials.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_after_n_denials_in_window_only() {
        let cfg = ThrottleConfig {
            max_denials: 3,
            window_secs: 10,
            pause_secs: 30,
        };
        let mut t = Throttle::new(cfg);
        let t0 = Instant::now();
        assert_eq!(t.record_denial(t0), None);
        assert_eq!(t.record_denial(t0 + Duration::from_secs(5)), None);
        // The first denial has left the window: still no pause.
        assert_eq!(t.record_denial(t0 + Duration::from_secs(12)), None);
        assert!(!t.paused(t0 + Duration::from_secs(12)));
        let p = t.record_denial(t0 + Duration::from_secs(13));
        assert_eq!(p, Some(Duration::from_secs(30)));
        assert!(t.paused(t0 + Duration::from_secs(42)));
        assert!(!t.paused(t0 + Duration::from_secs(44)));
        // Denials during the pause do not extend it or count.
        let mut t = Throttle::new(cfg);
        for i in 0..3 {
            t.record_denial(t0 + Duration::from_secs(i));
        }
        assert_eq!(t.record_denial(t0 + Duration::from_secs(5)), None);
        assert!(!t.paused(t0 + Duration::from_secs(33)));
        // A grant resets the count.
        let mut t = Throttle::new(cfg);
        t.record_denial(t0);
        t.record_denial(t0);
        t.record_grant();
        assert_eq!(t.record_denial(t0), None);
    }
}
