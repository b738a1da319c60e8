//! The producer's HTTP API: `GET /api/v1/getcode` and the home page.

mod error;
mod getcode;
mod home;

pub use error::ApiError;

use crate::message::MessageEncoding;
use crate::number_api::NumberApiClient;
use crate::queue::SharedQueue;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The random-number API.
    pub number_api: NumberApiClient,
    /// The queue codes are announced on.
    pub queue: SharedQueue,
    /// How message text is written.
    pub encoding: MessageEncoding,
}

/// The producer's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(home::home))
        .route("/api/v1/getcode", get(getcode::get_code))
        .with_state(Arc::new(state))
}
