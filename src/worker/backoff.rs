//! Exponential backoff with jitter for an idle or failing poll loop.

use rand::RngExt;
use std::time::Duration;

/// Doubles from `min` to `max` on each idle poll; [`Backoff::reset`] when work arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

/// A backoff whose shortest wait is longer than its longest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the shortest wait ({min:?}) is longer than the longest ({max:?})")]
pub struct InvalidBackoff {
    /// The shortest wait asked for.
    pub min: Duration,
    /// The longest wait asked for.
    pub max: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and never above `max`; refused if `min` is above `max`.
    pub const fn new(min: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if min.as_nanos() > max.as_nanos() {
            return Err(InvalidBackoff { min, max });
        }
        Ok(Self {
            min,
            max,
            current: min,
        })
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

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_step_doubles_up_to_the_maximum_and_reset_starts_again() {
        let mut b = Backoff::new(ms(100), ms(1000)).unwrap();
        let steps: Vec<Duration> = (0..6)
            .map(|_| {
                let step = b.current();
                b.next_delay();
                step
            })
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000].map(ms));
        b.reset();
        assert_eq!(b.current(), ms(100));
    }

    #[test]
    fn each_wait_is_between_half_and_all_of_its_step_and_they_differ() {
        let mut b = Backoff::new(ms(1000), ms(1000)).unwrap();
        let waits: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(
            waits.iter().all(|w| *w >= ms(500) && *w <= ms(1000)),
            "{waits:?}"
        );
        // Jitter: 200 draws from [500 ms, 1000 ms] are not all alike, and reach both halves.
        assert!(waits.iter().any(|w| *w < ms(750)) && waits.iter().any(|w| *w > ms(750)));
    }

    #[test]
    fn a_minimum_above_the_maximum_is_refused_and_equal_ones_are_not() {
        assert_eq!(
            Backoff::new(ms(2000), ms(1000)),
            Err(InvalidBackoff {
                min: ms(2000),
                max: ms(1000)
            })
        );
        let mut fixed = Backoff::new(ms(300), ms(300)).unwrap();
        fixed.next_delay();
        assert_eq!(fixed.current(), ms(300));
    }
}
