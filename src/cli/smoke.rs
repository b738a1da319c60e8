//! `codewatch smoke`: the sample's test.sh, end to end against a running `serve`, as a sign-in service
//! would call it: a code issued for a subject, then checked until it is valid.

use crate::config::SmokeArgs;
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

/// Issues a code for a throwaway subject, then checks it until it is valid, saying what it saw.
pub async fn run(args: SmokeArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let key = args.verify_api_key.expose();
    let base = args.signin_url.as_ref().unwrap_or(&args.url);
    let subject = format!("smoke-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let issue = base.join("api/v1/codes")?;
    let started = Instant::now();
    let response = http
        .post(issue.clone())
        .bearer_auth(key)
        .json(&serde_json::json!({ "subject": subject }))
        .send()
        .await
        .with_context(|| format!("POST {issue}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("POST {issue} answered {status}: {body}");
    }
    let issued: serde_json::Value =
        serde_json::from_str(&body).context("issuing answered something other than JSON")?;
    let code = issued["code"]
        .as_str()
        .context("issuing answered without a code")?
        .to_owned();
    say!(
        "issued   {code} at {} for subject {subject}",
        issued["timestamp"].as_str().unwrap_or("?")
    )?;

    let check = base.join("api/v1/codes/check")?;
    let attempt = serde_json::json!({ "code": code, "subject": subject });
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    loop {
        let response = http
            .post(check.clone())
            .bearer_auth(key)
            .json(&attempt)
            .send()
            .await?;
        match response.status().as_u16() {
            200 => {
                let valid: serde_json::Value = response.json().await?;
                say!(
                    "valid    after {} ms, expires at {}",
                    started.elapsed().as_millis(),
                    valid["expires_at"]
                )?;
                return Ok(());
            }
            404 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            404 => bail!(
                "{code} did not become valid within {} s: is the worker running?",
                args.timeout_seconds
            ),
            status => bail!(
                "the check answered {status}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
}
