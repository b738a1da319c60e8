//! The floor under the verification endpoint: a minimal axum + sqlx server answering the same
//! validity query on the same table, with no limiter, no failure accounting and no metrics. It runs
//! as a child process of the benchmark (the benchmark's own binary, re-run with
//! `CODEWATCH_BENCH_ROLE=minimal-verify`), so that its CPU is measured as `serve`'s is.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use std::sync::Arc;

/// The environment variable that makes the benchmark binary a floor server instead.
pub const ROLE: &str = "CODEWATCH_BENCH_ROLE";
/// The value of [`ROLE`] that makes the benchmark binary this server.
pub const ROLE_VALUE: &str = "minimal-verify";

#[derive(Clone)]
enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[derive(Deserialize)]
struct Check {
    code: String,
    subject: Option<String>,
}

async fn check(State(pool): State<Arc<Pool>>, Json(q): Json<Check>) -> Response {
    let now = chrono::Utc::now();
    let found: Result<Option<(String, String)>, sqlx::Error> = match &*pool {
        Pool::Sqlite(p) => {
            sqlx::query_as(
                "SELECT code, expires_at FROM valid_codes WHERE code = ? AND subject IS ? \
                 AND expires_at > ? AND redeemed_at IS NULL AND revoked_at IS NULL \
                 ORDER BY expires_at LIMIT 1",
            )
            .bind(&q.code)
            .bind(&q.subject)
            .bind(codewatch::timestamp::format(now))
            .fetch_optional(p)
            .await
        }
        Pool::Postgres(p) => {
            sqlx::query_as(
                "SELECT code, to_char(expires_at, 'YYYY-MM-DD HH24:MI:SS') FROM valid_codes \
             WHERE code = $1 AND subject IS NOT DISTINCT FROM $2 AND expires_at > $3 \
             AND redeemed_at IS NULL AND revoked_at IS NULL ORDER BY expires_at LIMIT 1",
            )
            .bind(&q.code)
            .bind(&q.subject)
            .bind(now)
            .fetch_optional(p)
            .await
        }
    };
    match found {
        Ok(Some((code, expires_at))) => {
            axum::Json(serde_json::json!({"valid": true, "code": code, "expires_at": expires_at}))
                .into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Serves `POST /api/v1/codes/check` (`{"code", "subject"}`, as codewatch's) on a free loopback port for the database in
/// `DATABASE_URL`; prints `listening on <port>` and runs until killed.
pub async fn serve() {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    // The same pool sizes and SQLite settings as codewatch's.
    let pool = if url.starts_with("sqlite:") {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let options = options
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
        Pool::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .unwrap(),
        )
    } else {
        Pool::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&url)
                .await
                .unwrap(),
        )
    };
    let app = axum::Router::new()
        .route("/api/v1/codes/check", post(check))
        .with_state(Arc::new(pool));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap().port());
    axum::serve(listener, app).await.unwrap();
}
