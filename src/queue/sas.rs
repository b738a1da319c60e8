//! Signs requests with an account SAS made from the account key, since the official queue crate has no
//! shared-key support. The token is short-lived and re-signed before it expires.

use super::connection_string::{Authorization, ConnectionString};
use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};

/// The SAS version signed; from 2020-12-06 the string to sign ends with the encryption scope.
const SAS_VERSION: &str = "2021-08-06";
/// Queue service only; read, write, delete, list, add, create, update, process.
const PERMISSIONS: &str = "rwdlacup";
const TOKEN_LIFETIME: Duration = Duration::hours(2);
const RENEW_BEFORE: Duration = Duration::minutes(15);
/// Start a little in the past so that clock skew with the service does not reject a new token.
const CLOCK_SKEW: Duration = Duration::minutes(15);

/// An azure_core pipeline policy (per call, before the retry policy) that appends a SAS to every
/// request's query.
#[derive(Debug)]
pub(crate) struct SasPolicy {
    account: String,
    authorization: Authorization,
    cached: Mutex<Option<(DateTime<Utc>, String)>>,
}

impl SasPolicy {
    pub(crate) fn new(account: String, authorization: Authorization) -> Arc<Self> {
        Arc::new(Self {
            account,
            authorization,
            cached: Mutex::new(None),
        })
    }

    fn token(&self) -> Result<String, azure_core::Error> {
        let key = match &self.authorization {
            Authorization::Sas(sas) => return Ok(sas.expose().to_owned()),
            Authorization::AccountKey(key) => key,
        };
        let now = Utc::now();
        let mut cached = self
            .cached
            .lock()
            .map_err(|_| sas_error("SAS cache poisoned"))?;
        if let Some((expiry, token)) = cached.as_ref()
            && *expiry - now > RENEW_BEFORE
        {
            return Ok(token.clone());
        }
        let key = BASE64
            .decode(key.expose())
            .map_err(|_| sas_error("account key is not base64"))?;
        let expiry = now + TOKEN_LIFETIME;
        let token = account_sas(&self.account, &key, now - CLOCK_SKEW, expiry)?;
        *cached = Some((expiry, token.clone()));
        Ok(token)
    }
}

/// A queue-service account SAS (a query string) signed with the connection string's account key, valid
/// from a little before now for `lifetime`: for handing a SAS URL (`STORAGE_QUEUE_URL=…?<sas>`) to a
/// process that must not hold the key.
pub fn account_sas_for(
    cs: &ConnectionString,
    lifetime: Duration,
) -> Result<crate::secret::Secret, super::QueueError> {
    let Authorization::AccountKey(key) = &cs.authorization else {
        return Err(super::QueueError::Config(
            "the connection string has no AccountKey to sign with".into(),
        ));
    };
    let key = BASE64
        .decode(key.expose())
        .map_err(|_| super::QueueError::Config("the account key is not base64".into()))?;
    let now = Utc::now();
    account_sas(&cs.account, &key, now - CLOCK_SKEW, now + lifetime)
        .map(crate::secret::Secret::new)
        .map_err(|_| super::QueueError::Config("the account key cannot sign".into()))
}

fn sas_error(message: &'static str) -> azure_core::Error {
    azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message)
}

/// Builds an account SAS query string for the queue service.
fn account_sas(
    account: &str,
    key: &[u8],
    start: DateTime<Utc>,
    expiry: DateTime<Utc>,
) -> Result<String, azure_core::Error> {
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (st, se) = (fmt(start), fmt(expiry));
    let (ss, srt, spr) = ("q", "sco", "https,http");
    let string_to_sign =
        format!("{account}\n{PERMISSIONS}\n{ss}\n{srt}\n{st}\n{se}\n\n{spr}\n{SAS_VERSION}\n\n");
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).map_err(|_| sas_error("account key is empty"))?;
    mac.update(string_to_sign.as_bytes());
    let sig = BASE64.encode(mac.finalize().into_bytes());
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", PERMISSIONS)
        .append_pair("st", &st)
        .append_pair("se", &se)
        .append_pair("spr", spr)
        .append_pair("sig", &sig)
        .finish())
}

#[async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let token = self.token()?;
        let url = request.url_mut();
        let query = match url.query() {
            Some(q) if !q.is_empty() => format!("{q}&{token}"),
            _ => token,
        };
        url.set_query(Some(&query));
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn account_sas_carries_every_field_and_a_signature() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let token = account_sas("acct", b"key", t, t + Duration::hours(1)).unwrap();
        for part in [
            "sv=2021-08-06",
            "ss=q",
            "srt=sco",
            "sp=rwdlacup",
            "st=2026-01-01T00%3A00%3A00Z",
            "spr=https%2Chttp",
            "sig=",
        ] {
            assert!(token.contains(part), "{part} missing from {token}");
        }
        assert_eq!(
            token,
            account_sas("acct", b"key", t, t + Duration::hours(1)).unwrap()
        );
    }
}
