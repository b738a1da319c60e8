//! Where the time comes from: the system clock, optionally shifted, so that tests can run a producer
//! whose clock is fast or slow (as a misconfigured host's would be) without waiting, or stopped, so
//! that a test decides exactly how much time a step sees left.

use chrono::{DateTime, TimeDelta, Utc};

/// The system clock, shifted by a fixed offset (zero in production), or stopped at one time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    offset: TimeDelta,
    stopped_at: Option<DateTime<Utc>>,
}

impl Clock {
    /// The system clock as it is.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock shifted by `offset` (positive: fast).
    pub fn shifted(offset: TimeDelta) -> Self {
        Self {
            offset,
            stopped_at: None,
        }
    }

    /// A clock that always says `at`.
    pub fn stopped(at: DateTime<Utc>) -> Self {
        Self {
            offset: TimeDelta::zero(),
            stopped_at: Some(at),
        }
    }

    /// The current time on this clock. A shift that would leave chrono's range is ignored.
    pub fn now(&self) -> DateTime<Utc> {
        if let Some(at) = self.stopped_at {
            return at;
        }
        let now = Utc::now();
        now.checked_add_signed(self.offset).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_clock_runs_ahead_or_behind_by_its_offset() {
        let fast = Clock::shifted(TimeDelta::seconds(60)).now() - Utc::now();
        assert!((fast - TimeDelta::seconds(60)).num_milliseconds().abs() < 1000);
        let slow = Utc::now() - Clock::shifted(TimeDelta::seconds(-60)).now();
        assert!((slow - TimeDelta::seconds(60)).num_milliseconds().abs() < 1000);
        assert!(
            (Clock::system().now() - Utc::now())
                .num_milliseconds()
                .abs()
                < 1000
        );
        let extreme = Clock::shifted(TimeDelta::MAX).now();
        assert!((extreme - Utc::now()).num_milliseconds().abs() < 1000);
    }

    #[test]
    fn a_stopped_clock_always_says_its_time() {
        let at = Utc::now() - TimeDelta::days(3);
        let clock = Clock::stopped(at);
        assert_eq!((clock.now(), clock.now()), (at, at));
    }
}
