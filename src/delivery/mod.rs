//! Delivery by the worker: each activated code that was issued with a destination is sent there once,
//! by mail ([`smtp`]) or to the sign-in service's webhook ([`webhook`]), retried with backoff until it
//! expires; never after it expired, was redeemed or was revoked. [`Deliverer`] is the worker's stage;
//! a [`Channel`] only sends.

pub mod smtp;
mod stage;
pub mod template;
pub mod webhook;

pub use stage::{Deliverer, DeliveryReport, DeliverySettings};

use crate::store::PendingDelivery;
use async_trait::async_trait;

/// Why a delivery attempt failed. The text may come from a server: the stage masks the destination
/// and the code in it, and escapes and caps it, before it is logged or stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeliveryError {
    /// May work if tried again: the server is down, busy, slow, or answered a temporary refusal.
    #[error("{0}")]
    Transient(String),
    /// Will not work however often it is tried: the destination was refused or is not one.
    #[error("{0}")]
    Permanent(String),
}

/// A way to reach users.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The channel's name, for logs (`smtp`, `webhook`).
    fn name(&self) -> &'static str;

    /// Sends `delivery`'s code to its destination; `Ok` once the other side accepted it.
    async fn deliver(&self, delivery: &PendingDelivery) -> Result<(), DeliveryError>;
}
