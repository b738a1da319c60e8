//! `GET /`: a small page saying what this listener offers, as the sample has.

use axum::response::Html;

/// The home page.
pub async fn home() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>codewatch</title></head><body>\
         <h1>codewatch</h1><p>Short-lived two-factor codes.</p>\
         <p><a href=\"/api/v1/getcode\">/api/v1/getcode</a> issues an unbound code (the \
         walkthrough's demonstration, if this service offers it); a sign-in service issues codes bound \
         to its users through the sign-in API.</p>\
         <p><a href=\"/api/openapi.json\">/api/openapi.json</a> describes this listener's API.</p>\
         </body></html>",
    )
}
