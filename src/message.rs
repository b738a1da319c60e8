//! The queue message: what `serve` writes, what the worker re-arms for expiry, and the foreign shapes it accepts.

use crate::domain::{Code, Destination, InvalidIssuanceId, Issuance, IssuanceId, Subject};
use crate::signing::SigningKeys;
use crate::timestamp;
use crate::untrusted::escaped;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod trace;
pub use trace::TraceContext;

/// What a queue message asks the worker to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeMessage {
    /// Make the code valid until `issued_at + TTL`.
    Activate(Issuance),
    /// Remove the code once `expires_at` has passed.
    Expire {
        /// The issuance to remove.
        issuance: Issuance,
        /// When the code stops being valid.
        expires_at: DateTime<Utc>,
    },
}

/// How message text is written to the queue. Reading detects both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageEncoding {
    /// Plain text, as the Python SDK writes by default.
    #[default]
    Text,
    /// Base64 of the text, what an Azure Functions queue trigger expects.
    Base64,
}

/// Why a message could not be written (serde_json refused it); nothing is sent then, never an empty
/// or partial message.
#[derive(Debug, thiserror::Error)]
#[error("the message could not be written as JSON: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// Why a message can never be used. Such a message goes to the poison queue at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Neither JSON, a Python dict, a bare code, nor base64 of one of those.
    #[error("message is not JSON, a Python dict, a code, or base64 of one of them")]
    Undecodable,
    /// A recognised shape without a usable code (the text is escaped and capped).
    #[error("message has no valid code: {0}")]
    BadCode(String),
    /// A recognised shape with an id that is empty, too long or holds control characters.
    #[error("message id {0:?} is not 1 to 128 printable characters")]
    BadId(String),
    /// A recognised shape with a subject that is not one.
    #[error("message subject is not a valid subject")]
    BadSubject,
    /// A recognised shape with a destination that is not one (never shown: it is personal data).
    #[error("message destination is not a valid destination")]
    BadDestination,
    /// A recognised shape with a timestamp that cannot be read (the text is escaped and capped).
    #[error("message timestamp {0:?} is not a time")]
    BadTimestamp(String),
    /// Signing is on and the activation carries no signature.
    #[error("activation is not signed (message signing is on)")]
    Unsigned,
    /// Signing is on and the activation's signature matches neither key.
    #[error("activation signature does not match (forged, altered, or signed with another key)")]
    BadSignature,
    /// An expiry message without its expiry time.
    #[error("expiry message has no expires_at")]
    MissingExpiry,
    /// An `action` other than `activate` or `expire` (the text is escaped and capped).
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

impl From<InvalidIssuanceId> for MessageError {
    fn from(e: InvalidIssuanceId) -> Self {
        Self::BadId(e.0)
    }
}

/// The JSON shape `serve` and the worker write.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    /// Where the worker delivers the code (delivery on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    /// W3C trace context of the getcode that sent it (traces on), for the worker's span links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    /// HMAC-SHA256 of [`CodeMessage::canonical`] (and the trace context), base64, when the producer
    /// has a signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

impl CodeMessage {
    /// The issuance this message is about.
    pub fn issuance(&self) -> &Issuance {
        match self {
            Self::Activate(i) | Self::Expire { issuance: i, .. } => i,
        }
    }

    /// The message text to put on the queue.
    pub fn encode(&self, encoding: MessageEncoding) -> Result<String, EncodeError> {
        self.encode_signed(encoding, None)
    }

    /// What a signature covers: every field, as codewatch reads it, so that the text's shape (JSON key
    /// order, time format) does not matter and no field can be changed without breaking it. A
    /// destination adds a line, so that messages signed before delivery existed still verify.
    pub fn canonical(&self) -> String {
        let issuance = self.issuance();
        let (action, expires_at) = match self {
            Self::Activate(_) => ("activate", String::new()),
            Self::Expire { expires_at, .. } => ("expire", timestamp::format(*expires_at)),
        };
        let mut text = format!(
            "codewatch.v1\n{action}\n{}\n{}\n{}\n{}\n{expires_at}",
            issuance.id,
            issuance.code,
            timestamp::format(issuance.issued_at),
            issuance
                .subject
                .as_ref()
                .map(Subject::as_str)
                .unwrap_or_default(),
        );
        if let Some(destination) = &issuance.destination {
            text.push('\n');
            text.push_str(destination.as_str());
        }
        text
    }

    /// What a signature covers with a trace context: [`CodeMessage::canonical`] and the context's
    /// lines, so that no one can move a signed message into another trace or strip it from its own.
    fn canonical_traced(&self, trace: Option<&TraceContext>) -> String {
        let mut text = self.canonical();
        if let Some(trace) = trace {
            text.push('\n');
            text.push_str(&trace.canonical());
        }
        text
    }

    /// [`CodeMessage::encode`], signed with `keys`' current key when given.
    pub fn encode_signed(
        &self,
        encoding: MessageEncoding,
        keys: Option<&SigningKeys>,
    ) -> Result<String, EncodeError> {
        self.encode_traced(encoding, keys, None)
    }

    /// [`CodeMessage::encode_signed`], carrying `trace` (covered by the signature).
    pub fn encode_traced(
        &self,
        encoding: MessageEncoding,
        keys: Option<&SigningKeys>,
        trace: Option<&TraceContext>,
    ) -> Result<String, EncodeError> {
        let issuance = self.issuance();
        let (action, expires_at) = match self {
            Self::Activate(_) => ("activate", None),
            Self::Expire { expires_at, .. } => ("expire", Some(timestamp::format(*expires_at))),
        };
        let wire = Wire {
            action: Some(action.to_owned()),
            id: Some(issuance.id.to_string()),
            code: Some(issuance.code.to_string()),
            timestamp: Some(timestamp::format(issuance.issued_at)),
            expires_at,
            subject: issuance.subject.as_ref().map(|s| s.to_string()),
            destination: issuance.destination.as_ref().map(|d| d.as_str().to_owned()),
            traceparent: trace.map(|t| t.traceparent().to_owned()),
            tracestate: trace.and_then(|t| t.tracestate().map(str::to_owned)),
            sig: keys.map(|k| k.sign(&self.canonical_traced(trace))),
        };
        let json = serde_json::to_string(&wire)?;
        Ok(match encoding {
            MessageEncoding::Text => json,
            MessageEncoding::Base64 => BASE64.encode(json),
        })
    }

    /// Reads any accepted shape: this JSON (with or without `id`/`action`), a Python dict repr as the sample
    /// writes it, a bare code, or base64 of any of these. `inserted_at` (the queue's insertion time) stands
    /// in for a missing timestamp.
    pub fn decode(text: &str, inserted_at: DateTime<Utc>) -> Result<Self, MessageError> {
        Self::decode_verified(text, inserted_at, None)
    }

    /// [`CodeMessage::decode`]; with `keys`, an activation must carry a valid signature under one of
    /// them. Expiry messages need none: they can only end a code's validity, never start or extend it.
    pub fn decode_verified(
        text: &str,
        inserted_at: DateTime<Utc>,
        keys: Option<&SigningKeys>,
    ) -> Result<Self, MessageError> {
        Self::decode_traced(text, inserted_at, keys).map(|(message, _)| message)
    }

    /// [`CodeMessage::decode_verified`], and the message's trace context if it carries a well-formed
    /// one (a signature covers it).
    pub fn decode_traced(
        text: &str,
        inserted_at: DateTime<Utc>,
        keys: Option<&SigningKeys>,
    ) -> Result<(Self, Option<TraceContext>), MessageError> {
        let (message, sig, trace) = match decode_plain(text.trim(), inserted_at) {
            Err(MessageError::Undecodable) => {
                let bytes = BASE64
                    .decode(text.trim())
                    .map_err(|_| MessageError::Undecodable)?;
                let inner = String::from_utf8(bytes).map_err(|_| MessageError::Undecodable)?;
                decode_plain(inner.trim(), inserted_at)?
            }
            other => other?,
        };
        if let (Some(keys), Self::Activate(_)) = (keys, &message) {
            match sig {
                None => return Err(MessageError::Unsigned),
                Some(sig) if !keys.verify(&message.canonical_traced(trace.as_ref()), &sig) => {
                    return Err(MessageError::BadSignature);
                }
                Some(_) => {}
            }
        }
        Ok((message, trace))
    }
}

/// A message, the signature it carried and its trace context.
type Decoded = (CodeMessage, Option<String>, Option<TraceContext>);

fn decode_plain(text: &str, inserted_at: DateTime<Utc>) -> Result<Decoded, MessageError> {
    if text.starts_with('{') {
        if let Ok(wire) = serde_json::from_str::<Wire>(text) {
            return from_wire(wire, inserted_at);
        }
        // The sample writes `str(dict)`: read it as the Python literal it is, then as JSON would be.
        return python::parse_dict(text)
            .and_then(|fields| serde_json::from_value::<Wire>(fields).ok())
            .ok_or(MessageError::Undecodable)
            .and_then(|wire| from_wire(wire, inserted_at));
    }
    match Code::parse(text) {
        Ok(code) => Ok((
            CodeMessage::Activate(Issuance {
                destination: None,
                id: IssuanceId::derived(&code, inserted_at),
                code,
                issued_at: inserted_at,
                subject: None,
            }),
            None,
            None,
        )),
        Err(_) => Err(MessageError::Undecodable),
    }
}

fn from_wire(wire: Wire, inserted_at: DateTime<Utc>) -> Result<Decoded, MessageError> {
    let text = wire
        .code
        .ok_or_else(|| MessageError::BadCode("missing".into()))?;
    let code = Code::parse(text.trim()).map_err(|_| MessageError::BadCode(escaped(&text)))?;
    let issued_at = match &wire.timestamp {
        Some(t) => timestamp::parse(t).ok_or_else(|| MessageError::BadTimestamp(escaped(t)))?,
        None => inserted_at,
    };
    let id = match wire.id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => IssuanceId::parse(id)?,
        _ => IssuanceId::derived(&code, issued_at),
    };
    let subject = match wire.subject.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Subject::parse(s).map_err(|_| MessageError::BadSubject)?),
    };
    let destination = match wire.destination.as_deref() {
        None | Some("") => None,
        Some(d) => Some(Destination::parse(d).map_err(|_| MessageError::BadDestination)?),
    };
    let issuance = Issuance {
        destination,
        id,
        code,
        issued_at,
        subject,
    };
    let message = match wire.action.as_deref() {
        None | Some("activate") => CodeMessage::Activate(issuance),
        Some("expire") => {
            let text = wire.expires_at.ok_or(MessageError::MissingExpiry)?;
            let expires_at = timestamp::parse(&text)
                .ok_or_else(|| MessageError::BadTimestamp(escaped(&text)))?;
            CodeMessage::Expire {
                issuance,
                expires_at,
            }
        }
        Some(other) => return Err(MessageError::UnknownAction(escaped(other))),
    };
    let trace = wire
        .traceparent
        .as_deref()
        .and_then(|t| TraceContext::parse(t, wire.tracestate.as_deref()));
    Ok((message, wire.sig, trace))
}

/// A reader for the flat dict `repr()` the Python sample writes, with Python's literals.
mod python {
    use serde_json::{Map, Number, Value};
    use std::iter::Peekable;
    use std::str::Chars;

    /// Parses `{'key': literal, …}` with string keys and literal values (`'text'`, `"text"`, `None`,
    /// `True`, `False`, integers, floats) into a JSON object: `None` is `null`, as Python means it.
    pub(super) fn parse_dict(text: &str) -> Option<Value> {
        let mut chars = text.trim().chars().peekable();
        let mut fields = Map::new();
        if chars.next()? != '{' {
            return None;
        }
        skip_ws(&mut chars);
        if chars.peek() == Some(&'}') {
            chars.next();
        } else {
            loop {
                skip_ws(&mut chars);
                let key = string(&mut chars)?;
                skip_ws(&mut chars);
                if chars.next()? != ':' {
                    return None;
                }
                skip_ws(&mut chars);
                let value = literal(&mut chars)?;
                fields.insert(key, value);
                skip_ws(&mut chars);
                match chars.next()? {
                    ',' => {
                        skip_ws(&mut chars);
                        if chars.peek() == Some(&'}') {
                            chars.next();
                            break;
                        }
                    }
                    '}' => break,
                    _ => return None,
                }
            }
        }
        skip_ws(&mut chars);
        chars.next().is_none().then_some(Value::Object(fields))
    }

    fn skip_ws(chars: &mut Peekable<Chars>) {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    }

    fn literal(chars: &mut Peekable<Chars>) -> Option<Value> {
        if matches!(chars.peek()?, '\'' | '"') {
            return string(chars).map(Value::String);
        }
        let mut token = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '}' || c.is_whitespace() {
                break;
            }
            token.push(c);
            chars.next();
        }
        match token.as_str() {
            "None" => Some(Value::Null),
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            t => {
                let digits = t.replace('_', "");
                if let Ok(n) = digits.parse::<i64>() {
                    Some(Value::Number(n.into()))
                } else {
                    digits
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && !digits.chars().any(char::is_alphabetic))
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                }
            }
        }
    }

    /// A quoted string with Python's escapes: `\\ \' \" \n \r \t \a \b \f \v`, octal, `\xhh`,
    /// `\uhhhh`, `\Uhhhhhhhh`; an unknown escape keeps its backslash, as Python does.
    fn string(chars: &mut Peekable<Chars>) -> Option<String> {
        let quote = chars.next().filter(|q| *q == '\'' || *q == '"')?;
        let mut out = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    '\n' => {} // a line continuation
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'x' => out.push(hex(chars, 2)?),
                    'u' => out.push(hex(chars, 4)?),
                    'U' => out.push(hex(chars, 8)?),
                    d @ '0'..='7' => {
                        let mut value = d.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.peek().and_then(|c| c.to_digit(8)) {
                                Some(v) => {
                                    value = value * 8 + v;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(value)?);
                    }
                    c @ ('\\' | '\'' | '"') => out.push(c),
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                },
                c if c == quote => return Some(out),
                c => out.push(c),
            }
        }
    }

    fn hex(chars: &mut Peekable<Chars>, len: usize) -> Option<char> {
        let mut value = 0u32;
        for _ in 0..len {
            value = value
                .checked_mul(16)?
                .checked_add(chars.next()?.to_digit(16)?)?;
        }
        char::from_u32(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn inserted() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 9, 0, 0).unwrap()
    }

    fn issuance() -> Issuance {
        Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: Code::parse("ojE-161-pTv").unwrap(),
            issued_at: timestamp::parse("2020-04-15 16:54:48.816549").unwrap(),
            subject: Some(Subject::parse("alice").unwrap()),
        }
    }

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trace_context_travels_in_the_message_and_its_signature_covers_it() {
        let keys = SigningKeys::parse(&"k".repeat(40)).unwrap();
        let trace = TraceContext::parse(TRACE, Some("vendor=x")).unwrap();
        let message = CodeMessage::Activate(issuance());
        let text = message
            .encode_traced(MessageEncoding::Text, Some(&keys), Some(&trace))
            .unwrap();
        let (decoded, carried) =
            CodeMessage::decode_traced(&text, inserted(), Some(&keys)).unwrap();
        assert_eq!((decoded, carried), (message.clone(), Some(trace.clone())));
        // Moved to another trace, or stripped of it: the signature no longer matches.
        let other = text.replace("4bf92f35", "aaaaaaaa");
        let mut wire: serde_json::Value = serde_json::from_str(&text).unwrap();
        wire.as_object_mut().unwrap().remove("traceparent");
        for forged in [other, wire.to_string()] {
            assert_eq!(
                CodeMessage::decode_traced(&forged, inserted(), Some(&keys)).unwrap_err(),
                MessageError::BadSignature,
                "{forged}"
            );
        }
        // Signed without one, as before trace contexts existed: still verifies.
        let plain = message
            .encode_signed(MessageEncoding::Base64, Some(&keys))
            .unwrap();
        assert_eq!(
            CodeMessage::decode_traced(&plain, inserted(), Some(&keys)).unwrap(),
            (message, None)
        );
    }

    #[test]
    fn a_malformed_trace_context_from_outside_is_ignored_not_poisoned() {
        let text = format!(
            r#"{{"code":"ojE-161-pTv","traceparent":"00-zz-\n-01","tracestate":"{}"}}"#,
            "x".repeat(5000)
        );
        let (message, trace) = CodeMessage::decode_traced(&text, inserted(), None).unwrap();
        assert_eq!(message.issuance().code.as_str(), "ojE-161-pTv");
        assert_eq!(trace, None);
    }

    #[test]
    fn activation_round_trips_in_both_encodings() {
        let msg = CodeMessage::Activate(issuance());
        for enc in [MessageEncoding::Text, MessageEncoding::Base64] {
            assert_eq!(
                CodeMessage::decode(&msg.encode(enc).unwrap(), inserted()),
                Ok(msg.clone())
            );
        }
    }

    #[test]
    fn expiry_round_trips_with_its_expiry_time() {
        let i = issuance();
        let msg = CodeMessage::Expire {
            expires_at: i.issued_at + chrono::Duration::seconds(600),
            issuance: i,
        };
        assert_eq!(
            CodeMessage::decode(&msg.encode(MessageEncoding::Base64).unwrap(), inserted()),
            Ok(msg)
        );
    }

    #[test]
    fn the_python_samples_dict_repr_is_an_activation() {
        let text = "{'code': 'ojE-161-pTv', 'timestamp': '2020-04-15 16:54:48.816549'}";
        let CodeMessage::Activate(i) = CodeMessage::decode(text, inserted()).unwrap() else {
            panic!()
        };
        assert_eq!(i.code.as_str(), "ojE-161-pTv");
        assert_eq!(timestamp::format(i.issued_at), "2020-04-15 16:54:48.816549");
        assert!(i.id.as_str().starts_with("derived-"));
    }

    #[test]
    fn foreign_json_without_id_gets_a_stable_derived_id() {
        let text = r#"{"code": "ojE-161-pTv", "timestamp": "2020-04-15 16:54:48.816549"}"#;
        let a = CodeMessage::decode(text, inserted()).unwrap();
        let b = CodeMessage::decode(text, inserted() + chrono::Duration::hours(1)).unwrap();
        assert_eq!(a.issuance().id, b.issuance().id);
        let dict = "{'code': 'ojE-161-pTv', 'timestamp': '2020-04-15 16:54:48.816549'}";
        assert_eq!(
            CodeMessage::decode(dict, inserted()).unwrap().issuance().id,
            a.issuance().id
        );
    }

    #[test]
    fn a_bare_code_is_issued_at_its_insertion_time() {
        let CodeMessage::Activate(i) = CodeMessage::decode(" ojE-161-pTv\n", inserted()).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.issued_at, inserted());
        let b64 = BASE64.encode("ojE-161-pTv");
        assert_eq!(
            CodeMessage::decode(&b64, inserted())
                .unwrap()
                .issuance()
                .code
                .as_str(),
            "ojE-161-pTv"
        );
    }

    #[test]
    fn unusable_messages_say_why() {
        assert_eq!(
            CodeMessage::decode("hello world", inserted()),
            Err(MessageError::Undecodable)
        );
        assert_eq!(
            CodeMessage::decode("{not json", inserted()),
            Err(MessageError::Undecodable)
        );
        assert!(matches!(
            CodeMessage::decode(r#"{"code":"nope"}"#, inserted()),
            Err(MessageError::BadCode(_))
        ));
        assert!(matches!(
            CodeMessage::decode(r#"{"code":"ojE-161-pTv","timestamp":"soon"}"#, inserted()),
            Err(MessageError::BadTimestamp(_))
        ));
        assert_eq!(
            CodeMessage::decode(r#"{"code":"ojE-161-pTv","action":"expire"}"#, inserted()),
            Err(MessageError::MissingExpiry)
        );
        assert!(matches!(
            CodeMessage::decode(r#"{"code":"ojE-161-pTv","action":"toggle"}"#, inserted()),
            Err(MessageError::UnknownAction(_))
        ));
        assert_eq!(
            CodeMessage::decode(&BASE64.encode([0xff, 0xfe]), inserted()),
            Err(MessageError::Undecodable)
        );
    }

    #[test]
    fn python_dict_reader_reads_literals_as_python_means_them() {
        let d = python::parse_dict(
            r#"{'a': 'it\'s', "b": "x\ty\x41\u00e9\101", 'n': 5, 'f': -1.5, 'none': None, 't': True, 'F': False, 'w': 'a\qb',}"#,
        )
        .unwrap();
        assert_eq!(d["a"], "it's");
        assert_eq!(d["b"], "x\tyAéA");
        assert_eq!(d["n"], 5);
        assert_eq!(d["f"], -1.5);
        assert_eq!(d["none"], serde_json::Value::Null);
        assert_eq!(d["t"], true);
        assert_eq!(d["F"], false);
        assert_eq!(d["w"], "a\\qb", "an unknown escape keeps its backslash");
        assert!(python::parse_dict("{'a': 'b'} trailing").is_none());
        assert!(python::parse_dict("{'a' 'b'}").is_none());
        assert!(python::parse_dict("{'a': nonsense}").is_none());
        assert_eq!(python::parse_dict("{}"), Some(serde_json::json!({})));
    }

    #[test]
    fn python_none_is_no_subject_and_no_id() {
        let text = "{'code': 'ojE-161-pTv', 'timestamp': '2020-04-15 16:54:48.816549', 'subject': None, 'id': None}";
        let CodeMessage::Activate(i) = CodeMessage::decode(text, inserted()).unwrap() else {
            panic!()
        };
        assert_eq!(
            i.subject, None,
            "None is no subject, not a subject named \"None\""
        );
        assert!(i.id.as_str().starts_with("derived-"), "{}", i.id);
        let other =
            "{'code': 'abc-162-XYZ', 'timestamp': '2020-04-15 16:54:48.816549', 'id': None}";
        assert_ne!(
            CodeMessage::decode(other, inserted())
                .unwrap()
                .issuance()
                .id,
            i.id,
            "two codes never share an issuance"
        );
        let json = r#"{"code": "ojE-161-pTv", "timestamp": "2020-04-15 16:54:48.816549", "subject": null, "id": null}"#;
        assert_eq!(
            CodeMessage::decode(json, inserted()).unwrap().issuance(),
            &i
        );
    }

    #[test]
    fn values_from_a_message_are_escaped_and_capped_in_its_errors() {
        let long = format!(
            r#"{{"code": "ojE-161-pTv\nERROR forged {}"}}"#,
            "x".repeat(60_000)
        );
        let MessageError::BadCode(shown) = CodeMessage::decode(&long, inserted()).unwrap_err()
        else {
            panic!()
        };
        assert!(!shown.contains('\n'));
        assert!(shown.len() < 300, "{}", shown.len());
        let id = r#"{"code": "ojE-161-pTv", "id": "a\nb"}"#;
        assert!(matches!(
            CodeMessage::decode(id, inserted()),
            Err(MessageError::BadId(_))
        ));
    }

    #[test]
    fn a_subject_with_a_bidirectional_override_is_refused_to_the_poison_queue() {
        let spoof = "{\"code\": \"ojE-161-pTv\", \"subject\": \"admin\u{202e}nimda\"}";
        assert!(CodeMessage::decode(spoof, inserted()).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn subject() -> impl Strategy<Value = Option<Subject>> {
        proptest::option::of("[a-zA-Z0-9@._ -]{1,40}".prop_map(|s| Subject::parse(&s).unwrap()))
    }

    fn issuance() -> impl Strategy<Value = Issuance> {
        (
            any::<u32>(),
            0i64..4_102_444_800_000_000,
            subject(),
            "[a-zA-Z0-9-]{1,64}",
        )
            .prop_map(|(number, micros, subject, id)| Issuance {
                destination: None,
                id: IssuanceId::parse(&id).unwrap(),
                code: Code::generate(
                    crate::domain::CodeNumber::new((number % 1_000_000).into()).unwrap(),
                    &mut rand::rng(),
                ),
                issued_at: DateTime::<Utc>::from_timestamp_micros(micros).unwrap(),
                subject,
            })
    }

    proptest! {
        #[test]
        fn any_text_decodes_or_errors_and_never_panics(text in any::<String>()) {
            let _ = CodeMessage::decode(&text, Utc::now());
        }

        #[test]
        fn any_dict_like_text_decodes_or_errors(text in r#"\{('[a-z]{1,8}': ('[^']{0,20}'|None|True|-?[0-9]{1,6}|"[^"]{0,20}"), ?){0,6}\}"#) {
            let _ = CodeMessage::decode(&text, Utc::now());
        }

        #[test]
        fn decoding_what_was_encoded_gives_it_back(
            issuance in issuance(),
            expire in any::<bool>(),
            base64 in any::<bool>(),
        ) {
            let message = if expire {
                CodeMessage::Expire {
                    expires_at: issuance.issued_at + chrono::Duration::seconds(600),
                    issuance,
                }
            } else {
                CodeMessage::Activate(issuance)
            };
            let encoding = if base64 { MessageEncoding::Base64 } else { MessageEncoding::Text };
            prop_assert_eq!(CodeMessage::decode(&message.encode(encoding).unwrap(), Utc::now()), Ok(message));
        }
    }
}
