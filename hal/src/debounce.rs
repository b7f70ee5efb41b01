//! Debouncing for polled mechanical contacts (exit button, door reed switch).
//!
//! A contact bounces for a few milliseconds when it changes; sampled naively, one press reads as
//! several. [`Debouncer`] accepts a new level only after the raw input has been stable for the
//! debounce period. It is pure (time is passed in) so it is tested without hardware, and every
//! input backend shares it.

use std::time::{Duration, Instant};

/// Time-based debouncer for one polled digital input.
#[derive(Debug, Clone)]
pub struct Debouncer {
    period: Duration,
    stable: bool,
    raw: bool,
    raw_since: Instant,
}

impl Debouncer {
    /// Start with `initial` as the accepted level (read the pin once at start-up), at time `now`.
    pub fn new(period: Duration, initial: bool, now: Instant) -> Self {
        Self {
            period,
            stable: initial,
            raw: initial,
            raw_since: now,
        }
    }

    /// Feed one raw sample taken at `now`; returns the debounced level.
    pub fn update(&mut self, raw: bool, now: Instant) -> bool {
        if raw != self.raw {
            self.raw = raw;
            self.raw_since = now;
        }
        if self.raw != self.stable && now.saturating_duration_since(self.raw_since) >= self.period {
            self.stable = self.raw;
        }
        self.stable
    }

    /// The current debounced level, without sampling.
    pub fn level(&self) -> bool {
        self.stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_is_filtered_and_stable_change_accepted() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Debouncer::new(Duration::from_millis(20), false, t0);
        // Bounce: high/low/high within 10 ms is not a press.
        assert!(!d.update(true, ms(1)));
        assert!(!d.update(false, ms(3)));
        assert!(!d.update(true, ms(5)));
        assert!(!d.update(true, ms(24))); // only 19 ms stable since the last edge
        assert!(d.update(true, ms(25))); // 20 ms stable: accepted
        // A 5 ms glitch low does not release it.
        assert!(d.update(false, ms(30)));
        assert!(d.update(true, ms(35)));
        assert!(d.update(true, ms(100)));
        assert!(d.level());
    }
}
