//! Exponential backoff with jitter for an idle or failing poll loop.

use rand::RngExt;
use std::time::Duration;

/// Doubles from `min` to `max` on each idle poll; [`Backoff::reset`] when work arrives.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self {
            min,
            max,
            current: min,
        }
    }

    /// The next wait: the current step with jitter (between half and all of it); then the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let low = step / 2;
        low + (step - low).mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// The step the next wait is drawn from, without jitter.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(1000)));
        assert_eq!(b.current(), Duration::from_millis(1000));
        b.reset();
        assert_eq!(b.current(), Duration::from_millis(100));
    }
}
