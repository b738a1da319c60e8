//! `codewatch smoke`: the sample's test.sh, end to end against a running `serve`.

use crate::config::SmokeArgs;
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

/// Gets a code, then checks it until it is valid, saying what it saw.
pub async fn run(args: SmokeArgs) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let subject = format!("smoke-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut getcode = args.url.join("api/v1/getcode")?;
    getcode.query_pairs_mut().append_pair("subject", &subject);
    let started = Instant::now();
    let response = http
        .get(getcode.clone())
        .send()
        .await
        .with_context(|| format!("GET {getcode}"))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("GET {getcode} answered {status}: {body}");
    }
    let issued: serde_json::Value =
        serde_json::from_str(&body).context("getcode answered something other than JSON")?;
    let code = issued["code"]
        .as_str()
        .context("getcode answered without a code")?
        .to_owned();
    say!(
        "issued   {code} at {} for subject {subject}",
        issued["timestamp"].as_str().unwrap_or("?")
    )?;

    let mut check = args.url.join(&format!("api/v1/codes/{code}"))?;
    check.query_pairs_mut().append_pair("subject", &subject);
    let deadline = started + Duration::from_secs(args.timeout_seconds);
    loop {
        let response = http
            .get(check.clone())
            .bearer_auth(args.verify_api_key.expose())
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
