//! Azure Storage connection strings, including `UseDevelopmentStorage=true` for Azurite.

use super::QueueError;
use crate::secret::Secret;
use std::collections::HashMap;

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How the connection string authorises requests.
#[derive(Clone, Debug)]
pub enum Authorization {
    /// The account key: codewatch signs account SAS tokens with it.
    AccountKey(Secret),
    /// A ready SAS token (`SharedAccessSignature=`), appended as is.
    Sas(Secret),
}

/// The parts of a connection string that reach the queue service.
#[derive(Clone, Debug)]
pub struct ConnectionString {
    /// The storage account's name.
    pub account: String,
    /// The queue service endpoint, without a trailing slash, for example
    /// `https://acct.queue.core.windows.net` or `http://127.0.0.1:10001/devstoreaccount1`.
    pub queue_endpoint: String,
    /// The key or SAS.
    pub authorization: Authorization,
}

impl ConnectionString {
    /// Parses `Key=Value;…` as the Azure SDKs do. Errors never include the key.
    pub fn parse(text: &str) -> Result<Self, QueueError> {
        let pairs: HashMap<String, String> = text
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .filter_map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        let get = |k: &str| {
            pairs
                .get(&k.to_ascii_lowercase())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        if get("UseDevelopmentStorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let proxy =
                get("DevelopmentStorageProxyUri").unwrap_or_else(|| "http://127.0.0.1".into());
            return Ok(Self {
                account: DEV_ACCOUNT.into(),
                queue_endpoint: format!("{}:10001/{DEV_ACCOUNT}", proxy.trim_end_matches('/')),
                authorization: Authorization::AccountKey(Secret::new(DEV_ACCOUNT_KEY)),
            });
        }
        let missing = |k: &str| QueueError::Config(format!("connection string has no {k}"));
        let account = get("AccountName");
        let queue_endpoint = match get("QueueEndpoint") {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => {
                let account = account
                    .clone()
                    .ok_or_else(|| missing("AccountName or QueueEndpoint"))?;
                let protocol = get("DefaultEndpointsProtocol").unwrap_or_else(|| "https".into());
                let suffix = get("EndpointSuffix").unwrap_or_else(|| "core.windows.net".into());
                format!("{protocol}://{account}.queue.{suffix}")
            }
        };
        let account = match account {
            Some(a) => a,
            None => account_from_endpoint(&queue_endpoint).ok_or_else(|| missing("AccountName"))?,
        };
        let authorization = match (get("AccountKey"), get("SharedAccessSignature")) {
            (Some(key), _) => {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD
                    .decode(key.trim())
                    .is_err()
                {
                    return Err(QueueError::Config(
                        "the connection string's AccountKey is not base64: copy the whole key from the \
                         storage account's Access keys, or use UseDevelopmentStorage=true for Azurite"
                            .into(),
                    ));
                }
                Authorization::AccountKey(Secret::new(key))
            }
            (None, Some(sas)) => Authorization::Sas(Secret::new(sas.trim_start_matches('?'))),
            (None, None) => return Err(missing("AccountKey or SharedAccessSignature")),
        };
        Ok(Self {
            account,
            queue_endpoint,
            authorization,
        })
    }
}

/// `https://acct.queue.core.windows.net` → `acct`; `http://127.0.0.1:10001/acct` → `acct`.
fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    let path_account = url
        .path_segments()?
        .find(|s| !s.is_empty())
        .map(str::to_owned);
    path_account.or_else(|| url.host_str()?.split('.').next().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_account_key_says_so() {
        let err = ConnectionString::parse("AccountName=a;AccountKey=not base64!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("AccountKey is not base64"), "{err}");
        assert!(
            !err.contains("not base64!"),
            "the key is not repeated: {err}"
        );
    }

    #[test]
    fn development_storage_points_at_azurite() {
        let cs = ConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(cs.account, "devstoreaccount1");
        assert_eq!(cs.queue_endpoint, "http://127.0.0.1:10001/devstoreaccount1");
    }

    #[test]
    fn account_key_strings_build_the_public_endpoint() {
        let cs = ConnectionString::parse(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(cs.queue_endpoint, "https://acct.queue.core.windows.net");
        assert!(matches!(cs.authorization, Authorization::AccountKey(_)));
    }

    #[test]
    fn explicit_endpoints_and_sas_are_kept() {
        let cs = ConnectionString::parse(
            "QueueEndpoint=http://127.0.0.1:5555/devstoreaccount1/;SharedAccessSignature=?sv=1&sig=x",
        )
        .unwrap();
        assert_eq!(cs.account, "devstoreaccount1");
        assert_eq!(cs.queue_endpoint, "http://127.0.0.1:5555/devstoreaccount1");
        let Authorization::Sas(sas) = cs.authorization else {
            panic!()
        };
        assert_eq!(sas.expose(), "sv=1&sig=x");
    }

    #[test]
    fn errors_name_the_missing_part_but_never_the_key() {
        let err = ConnectionString::parse("AccountName=acct;AccountKey=")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no AccountKey"), "{err}");
        let err = ConnectionString::parse("AccountName=acct")
            .unwrap_err()
            .to_string();
        assert!(err.contains("AccountKey or SharedAccessSignature"), "{err}");
        let dbg = format!(
            "{:?}",
            ConnectionString::parse("AccountName=a;AccountKey=c2VjcmV0").unwrap()
        );
        assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
    }
}
