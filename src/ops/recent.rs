//! The last warnings and errors this process logged (poison reasons, refused receives, failed
//! requests), kept in memory for the status page: a `tracing` layer copies each WARN and ERROR event,
//! escaped and capped, into a ring of the newest [`KEPT`]. Log lines hold no secret and no code, so
//! neither does the ring.

use crate::untrusted::Untrusted;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How many problems are kept.
pub const KEPT: usize = 20;

/// How many characters of one problem are kept.
const MAX_CHARS: usize = 400;

/// The problems of this process, which [`RecentProblems::default`] keeps and the status page reads.
pub static RECENT: Ring = Ring::new();

/// One warning or error, as logged.
#[derive(Clone, Debug)]
pub struct Problem {
    /// When it was logged.
    pub at: DateTime<Utc>,
    /// `WARN` or `ERROR`.
    pub level: Level,
    /// Its target, message and fields, control characters escaped, capped.
    pub text: String,
}

/// The newest [`KEPT`] problems.
#[derive(Debug, Default)]
pub struct Ring(Mutex<VecDeque<Problem>>);

impl Ring {
    /// An empty ring.
    pub const fn new() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }

    /// The problems kept, newest first.
    pub fn newest_first(&self) -> Vec<Problem> {
        let recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    fn keep(&self, problem: Problem) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(problem);
    }
}

/// The layer that keeps them, in [`RECENT`] by default; [`init_tracing`](crate::cli::init_tracing)
/// installs it.
#[derive(Clone, Copy, Debug)]
pub struct RecentProblems(&'static Ring);

impl Default for RecentProblems {
    fn default() -> Self {
        Self(&RECENT)
    }
}

impl<S: Subscriber> Layer<S> for RecentProblems {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        // More verbose levels compare greater: INFO, DEBUG and TRACE are not problems.
        if level > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let whole = format!(
            "{}: {}{}",
            event.metadata().target(),
            fields.message,
            fields.rest
        );
        self.0.keep(Problem {
            at: Utc::now(),
            level,
            text: Untrusted::capped(&whole, MAX_CHARS).to_string(),
        });
    }
}

/// An event's message, then its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn ring() -> &'static Ring {
        Box::leak(Box::new(Ring::new()))
    }

    #[test]
    fn keeps_only_the_newest_warnings_and_errors() {
        let ring = ring();
        let subscriber = tracing_subscriber::registry().with(RecentProblems(ring));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not a problem");
            tracing::warn!(reason = "bad\nline \u{202e}x", "message set aside");
            tracing::error!(big = %"y".repeat(1000), "too long");
            for i in 0..KEPT {
                tracing::warn!(i, "filler");
            }
            tracing::error!(marker = "newest", "last");
        });
        let kept = ring.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert!(kept[0].text.contains("marker=newest"), "{}", kept[0].text);
        assert_eq!(kept[0].level, Level::ERROR);
        assert!(
            kept[KEPT - 1].text.contains("i=1"),
            "the oldest are dropped"
        );
        assert!(kept.iter().all(|p| !p.text.contains("not a problem")));
    }

    #[test]
    fn a_long_problem_is_capped() {
        let ring = ring();
        let subscriber = tracing_subscriber::registry().with(RecentProblems(ring));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(big = %"y".repeat(1000), "too long");
        });
        let text = &ring.newest_first()[0].text;
        assert!(text.chars().count() < MAX_CHARS + 20, "{text}");
        assert!(text.ends_with("chars)"), "{text}");
    }

    #[test]
    fn a_problem_shows_its_message_and_fields_with_control_characters_escaped() {
        let ring = ring();
        let subscriber = tracing_subscriber::registry().with(RecentProblems(ring));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                reason = "bad\nline \u{202e}x",
                id = 7,
                "set aside (unit test)"
            );
        });
        let found = &ring.newest_first()[0];
        assert!(
            found.text.contains("reason=bad\\nline \\u{202e}x"),
            "{}",
            found.text
        );
        assert!(found.text.contains("id=7"), "{}", found.text);
        assert!(
            found.text.starts_with("codewatch::ops::recent::tests: "),
            "{}",
            found.text
        );
    }
}
