//! `STORAGE_QUEUE_URL`: one queue URL, or several (one per shard) separated by commas. Each may carry
//! a SAS in its query, so the list is kept like a secret and no error repeats it.

use super::shards::MAX_SHARDS;
use crate::secret::Secret;
use std::fmt;

/// The queue URLs `STORAGE_QUEUE_URL` lists, checked when the flags are read: at least one, at most
/// [`MAX_SHARDS`], each an http(s) URL, no queue named twice. `Debug` shows how many, never a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueUrls(Vec<Secret>);

/// Why a `STORAGE_QUEUE_URL` list is refused; the text names a queue at most, never a query.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueUrlsError {
    /// Nothing but commas and spaces.
    #[error("names no queue")]
    Empty,
    /// More shards than one deployment may have.
    #[error("lists {0} queues; at most {MAX_SHARDS} shards are supported")]
    TooMany(usize),
    /// An entry that is not an http(s) URL (which one, counted from 1).
    #[error("entry {0} is not an http(s) URL")]
    NotAUrl(usize),
    /// A queue listed twice would be polled twice and sent to twice as often: a slip in the list.
    #[error("names the queue {0} twice")]
    Twice(String),
}

impl QueueUrls {
    /// Parses a comma-separated list.
    pub fn parse(text: &str) -> Result<Self, QueueUrlsError> {
        let urls: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(QueueUrlsError::Empty);
        }
        if urls.len() > MAX_SHARDS {
            return Err(QueueUrlsError::TooMany(urls.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, url) in urls.iter().enumerate() {
            let parsed = url::Url::parse(url).map_err(|_| QueueUrlsError::NotAUrl(i + 1))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(QueueUrlsError::NotAUrl(i + 1));
            }
            // Without the query, so that a SAS never reaches the message.
            let queue = url
                .split('?')
                .next()
                .unwrap_or_default()
                .trim_end_matches('/');
            if !seen.insert(queue) {
                return Err(QueueUrlsError::Twice(queue.to_owned()));
            }
        }
        Ok(Self(urls.into_iter().map(Secret::new).collect()))
    }

    /// The URLs, in order, for the one place that opens them.
    pub fn expose(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(Secret::expose)
    }

    /// How many queues it lists.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a list names at least one queue.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for QueueUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueueUrls({} redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_refused_for_what_is_wrong_without_repeating_a_query() {
        let sas = "sig=SECRET";
        let a = format!("https://a.queue.core.windows.net/q?{sas}");
        let b = format!("https://b.queue.core.windows.net/q?{sas}");
        let two = QueueUrls::parse(&format!("{a}, {b} ,")).unwrap();
        assert_eq!(
            two.expose().collect::<Vec<_>>(),
            vec![a.as_str(), b.as_str()]
        );
        assert!(!format!("{two:?}").contains("SECRET"));

        let refusals = [
            (" , ".to_owned(), QueueUrlsError::Empty),
            (
                vec![a.as_str(); MAX_SHARDS + 1].join(","),
                QueueUrlsError::TooMany(MAX_SHARDS + 1),
            ),
            (format!("{a},not a url?{sas}"), QueueUrlsError::NotAUrl(2)),
            (format!("ftp://x/q?{sas}"), QueueUrlsError::NotAUrl(1)),
            (
                format!("{a},{b},{a}"),
                QueueUrlsError::Twice("https://a.queue.core.windows.net/q".into()),
            ),
        ];
        for (text, expected) in refusals {
            let refused = QueueUrls::parse(&text).unwrap_err();
            assert_eq!(refused, expected);
            assert!(!refused.to_string().contains("SECRET"), "{refused}");
        }
    }
}
