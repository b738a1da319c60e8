//! The W3C trace context a queue message carries (`traceparent`, and `tracestate` when there is one),
//! so that the worker's spans link to the trace of the getcode that sent it. It comes from outside
//! like the rest of the message: a malformed `traceparent` is ignored (the message is handled in a
//! trace of its own), a malformed `tracestate` dropped.

/// The longest `tracestate` kept, as the W3C recommendation caps it.
const MAX_TRACESTATE: usize = 512;

/// A well-formed W3C trace context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// `traceparent` (version `00`: `00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zero) with
    /// `tracestate` when it is printable ASCII of at most 512 characters; `None` if `traceparent` is not.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let parts: Vec<&str> = traceparent.split('-').collect();
        let [version, trace_id, span_id, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        let valid = *version == "00"
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(span_id, 16)
            && nonzero(span_id)
            && hex(flags, 2);
        valid.then(|| Self {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate
                .filter(|s| {
                    !s.is_empty()
                        && s.len() <= MAX_TRACESTATE
                        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
                })
                .map(str::to_owned),
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The lines a signature covers.
    pub(super) fn canonical(&self) -> String {
        format!(
            "traceparent:{}\ntracestate:{}",
            self.traceparent,
            self.tracestate.as_deref().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_well_formed_contexts_are_kept() {
        let kept = TraceContext::parse(GOOD, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(kept.traceparent(), GOOD);
        assert_eq!(kept.tracestate(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473\n-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE);
        for dropped in ["", "a=b\nc", long.as_str()] {
            assert_eq!(
                TraceContext::parse(GOOD, Some(dropped))
                    .unwrap()
                    .tracestate(),
                None
            );
        }
    }
}
