//! `GET /`: a small page linking to the endpoint, as the sample has.

use axum::response::Html;

/// The home page.
pub async fn home() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>codewatch</title></head><body>\
         <h1>codewatch</h1><p>Short-lived two-factor codes.</p>\
         <p><a href=\"/api/v1/getcode\">/api/v1/getcode</a> issues a code.</p></body></html>",
    )
}
