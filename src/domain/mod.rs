//! The domain every layer speaks: a [`Code`], the [`Subject`] it may be bound to, one [`Issuance`] of
//! it and its [`IssuanceId`], and the [`CodeState`] with the one validity rule. The wire format
//! (`message`), the stores and the HTTP layer all use these; this module depends on none of them.

mod code;
mod destination;
mod idempotency;
mod issuance;
mod state;
mod subject;

pub use code::{Code, CodeNumber, InvalidCode};
pub use destination::{Destination, InvalidDestination};
pub use idempotency::{IdempotencyKey, InvalidIdempotencyKey, fingerprint};
pub use issuance::{ExpiryError, InvalidIssuanceId, Issuance, IssuanceId, MAX_ID_CHARS};
pub use state::CodeState;
pub use subject::{InvalidSubject, Subject};
