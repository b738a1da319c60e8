//! The queue message: what `serve` writes, what the worker re-arms for expiry, and the foreign shapes it accepts.

use crate::code::Code;
use crate::subject::Subject;
use crate::timestamp;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Identifies one issuance of a code. Two issuances may draw the same code; they never share an id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IssuanceId(String);

impl IssuanceId {
    /// A fresh random id, for a code `serve` issues.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id of a foreign message that carries none: a hash of its code and time, so its duplicates share it.
    pub fn derived(code: &Code, issued_at: DateTime<Utc>) -> Self {
        let digest = Sha256::digest(format!("{code}|{}", timestamp::format(issued_at)));
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Self(format!("derived-{hex}"))
    }

    /// Wraps an id read from a message or the database.
    pub fn from_string(id: String) -> Self {
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IssuanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One issued code, as it travels through the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuance {
    /// Which issuance this is.
    pub id: IssuanceId,
    /// The code handed out.
    pub code: Code,
    /// When `serve` handed it out; the TTL counts from here.
    pub issued_at: DateTime<Utc>,
    /// The user the code is bound to, if any.
    pub subject: Option<Subject>,
}

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

/// Why a message can never be used. Such a message goes to the poison queue at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Neither JSON, a Python dict, a bare code, nor base64 of one of those.
    #[error("message is not JSON, a Python dict, a code, or base64 of one of them")]
    Undecodable,
    /// A recognised shape without a usable code.
    #[error("message has no valid code: {0}")]
    BadCode(String),
    /// A recognised shape with a subject that is not one.
    #[error("message subject is not a valid subject")]
    BadSubject,
    /// A recognised shape with a timestamp that cannot be read.
    #[error("message timestamp {0:?} is not a time")]
    BadTimestamp(String),
    /// An expiry message without its expiry time.
    #[error("expiry message has no expires_at")]
    MissingExpiry,
    /// An `action` other than `activate` or `expire`.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
}

/// The JSON shape `serve` and the worker write.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

impl CodeMessage {
    /// The issuance this message is about.
    pub fn issuance(&self) -> &Issuance {
        match self {
            Self::Activate(i) | Self::Expire { issuance: i, .. } => i,
        }
    }

    /// The message text to put on the queue.
    pub fn encode(&self, encoding: MessageEncoding) -> String {
        let issuance = self.issuance();
        let (action, expires_at) = match self {
            Self::Activate(_) => ("activate", None),
            Self::Expire { expires_at, .. } => ("expire", Some(timestamp::format(*expires_at))),
        };
        let wire = Wire {
            action: Some(action.to_owned()),
            id: Some(issuance.id.to_string()),
            code: issuance.code.to_string(),
            timestamp: Some(timestamp::format(issuance.issued_at)),
            expires_at,
            subject: issuance.subject.as_ref().map(|s| s.to_string()),
        };
        // Serialising a struct of strings cannot fail.
        let json = serde_json::to_string(&wire).unwrap_or_default();
        match encoding {
            MessageEncoding::Text => json,
            MessageEncoding::Base64 => BASE64.encode(json),
        }
    }

    /// Reads any accepted shape: this JSON (with or without `id`/`action`), a Python dict repr as the sample
    /// writes it, a bare code, or base64 of any of these. `inserted_at` (the queue's insertion time) stands
    /// in for a missing timestamp.
    pub fn decode(text: &str, inserted_at: DateTime<Utc>) -> Result<Self, MessageError> {
        match decode_plain(text.trim(), inserted_at) {
            Err(MessageError::Undecodable) => {
                let bytes = BASE64
                    .decode(text.trim())
                    .map_err(|_| MessageError::Undecodable)?;
                let inner = String::from_utf8(bytes).map_err(|_| MessageError::Undecodable)?;
                decode_plain(inner.trim(), inserted_at)
            }
            other => other,
        }
    }
}

fn decode_plain(text: &str, inserted_at: DateTime<Utc>) -> Result<CodeMessage, MessageError> {
    if text.starts_with('{') {
        if let Ok(wire) = serde_json::from_str::<Wire>(text) {
            return from_wire(wire, inserted_at);
        }
        if let Some(fields) = parse_python_dict(text) {
            let field = |k: &str| fields.get(k).cloned();
            let wire = Wire {
                action: field("action"),
                id: field("id"),
                code: field("code").ok_or_else(|| MessageError::BadCode("missing".into()))?,
                timestamp: field("timestamp"),
                expires_at: field("expires_at"),
                subject: field("subject"),
            };
            return from_wire(wire, inserted_at);
        }
        return Err(MessageError::Undecodable);
    }
    match Code::parse(text) {
        Ok(code) => Ok(CodeMessage::Activate(Issuance {
            id: IssuanceId::derived(&code, inserted_at),
            code,
            issued_at: inserted_at,
            subject: None,
        })),
        Err(_) => Err(MessageError::Undecodable),
    }
}

fn from_wire(wire: Wire, inserted_at: DateTime<Utc>) -> Result<CodeMessage, MessageError> {
    let code =
        Code::parse(wire.code.trim()).map_err(|_| MessageError::BadCode(wire.code.clone()))?;
    let issued_at = match &wire.timestamp {
        Some(t) => timestamp::parse(t).ok_or_else(|| MessageError::BadTimestamp(t.clone()))?,
        None => inserted_at,
    };
    let id = match wire.id {
        Some(id) if !id.trim().is_empty() => IssuanceId(id),
        _ => IssuanceId::derived(&code, issued_at),
    };
    let subject = match wire.subject.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Subject::parse(s).map_err(|_| MessageError::BadSubject)?),
    };
    let issuance = Issuance {
        id,
        code,
        issued_at,
        subject,
    };
    match wire.action.as_deref() {
        None | Some("activate") => Ok(CodeMessage::Activate(issuance)),
        Some("expire") => {
            let text = wire.expires_at.ok_or(MessageError::MissingExpiry)?;
            let expires_at = timestamp::parse(&text).ok_or(MessageError::BadTimestamp(text))?;
            Ok(CodeMessage::Expire {
                issuance,
                expires_at,
            })
        }
        Some(other) => Err(MessageError::UnknownAction(other.to_owned())),
    }
}

/// Parses a flat Python dict repr of string keys to string (or simple literal) values:
/// `{'code': 'ojE-161-pTv', 'timestamp': '2020-04-15 16:54:48.816549'}`.
fn parse_python_dict(text: &str) -> Option<BTreeMap<String, String>> {
    let mut chars = text.trim().chars().peekable();
    let mut fields = BTreeMap::new();
    let skip_ws = |c: &mut std::iter::Peekable<std::str::Chars>| {
        while c.peek().is_some_and(|ch| ch.is_whitespace()) {
            c.next();
        }
    };
    if chars.next()? != '{' {
        return None;
    }
    loop {
        skip_ws(&mut chars);
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let key = python_string(&mut chars)?;
        skip_ws(&mut chars);
        if chars.next()? != ':' {
            return None;
        }
        skip_ws(&mut chars);
        let value = match chars.peek()? {
            '\'' | '"' => python_string(&mut chars)?,
            _ => {
                let mut literal = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch == ',' || ch == '}' {
                        break;
                    }
                    literal.push(ch);
                    chars.next();
                }
                literal.trim().to_owned()
            }
        };
        fields.insert(key, value);
        skip_ws(&mut chars);
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    skip_ws(&mut chars);
    chars.next().is_none().then_some(fields)
}

fn python_string(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
    let quote = chars.next().filter(|q| *q == '\'' || *q == '"')?;
    let mut out = String::new();
    loop {
        match chars.next()? {
            '\\' => out.push(chars.next()?),
            c if c == quote => return Some(out),
            c => out.push(c),
        }
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
            id: IssuanceId::random(),
            code: Code::parse("ojE-161-pTv").unwrap(),
            issued_at: timestamp::parse("2020-04-15 16:54:48.816549").unwrap(),
            subject: Some(Subject::parse("alice").unwrap()),
        }
    }

    #[test]
    fn activation_round_trips_in_both_encodings() {
        let msg = CodeMessage::Activate(issuance());
        for enc in [MessageEncoding::Text, MessageEncoding::Base64] {
            assert_eq!(
                CodeMessage::decode(&msg.encode(enc), inserted()),
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
            CodeMessage::decode(&msg.encode(MessageEncoding::Base64), inserted()),
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
    fn python_dict_parser_handles_escapes_and_literals() {
        let d = parse_python_dict(r#"{'a': 'it\'s', "b": "x", 'n': 5, 'none': None}"#).unwrap();
        assert_eq!(d["a"], "it's");
        assert_eq!(d["b"], "x");
        assert_eq!(d["n"], "5");
        assert!(parse_python_dict("{'a': 'b'} trailing").is_none());
        assert!(parse_python_dict("{'a' 'b'}").is_none());
    }
}
