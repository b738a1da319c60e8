//! The third-party API's function key: from `THIRD_PARTY_API_KEY`, a mounted file, or Key Vault; read at
//! start, and read again when the API refuses it (it was rotated), at most once per interval.

use crate::identity::{AzureAuth, CredentialError};
use crate::secret::{Secret, redact_url_secrets};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where the key comes from.
pub enum KeySource {
    /// A value given directly (`THIRD_PARTY_API_KEY`).
    Literal(Secret),
    /// A file holding the key, such as a mounted Kubernetes secret (`THIRD_PARTY_API_KEY_FILE`).
    File(PathBuf),
    /// A Key Vault secret (`KEY_VAULT_URL` + `THIRD_PARTY_API_SECRET_NAME`), read with the process's identity.
    KeyVault {
        /// The vault, e.g. `https://my-vault.vault.azure.net/`.
        vault: String,
        /// The secret's name.
        name: String,
        /// The client, authenticated with the process's credential.
        client: Box<SecretClient>,
    },
}

/// Why the key could not be read. Texts never hold the key or a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No source is configured.
    #[error(
        "no function key configured: set THIRD_PARTY_API_KEY, THIRD_PARTY_API_KEY_FILE, or KEY_VAULT_URL with THIRD_PARTY_API_SECRET_NAME"
    )]
    Missing,
    /// The key file could not be read.
    #[error("cannot read THIRD_PARTY_API_KEY_FILE {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The source holds an empty value.
    #[error("the function key from {0} is empty")]
    Empty(String),
    /// No identity to authenticate to Key Vault with.
    #[error(transparent)]
    NoIdentity(#[from] CredentialError),
    /// The vault has no such secret.
    #[error("Key Vault {vault} has no secret named {name:?} (THIRD_PARTY_API_SECRET_NAME)")]
    SecretNotFound {
        /// The vault.
        vault: String,
        /// The secret's name.
        name: String,
    },
    /// The vault refused the identity's token.
    #[error(
        "Key Vault {vault} refused the request (HTTP {status}{code}): give this app's identity the \
         'Key Vault Secrets User' role on the vault (token audience https://vault.azure.net)"
    )]
    TokenRefused {
        /// The vault.
        vault: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code, if any, as ` (Code)`.
        code: String,
    },
    /// The vault could not be reached or failed.
    #[error("Key Vault {vault} unavailable: {detail}")]
    Unavailable {
        /// The vault.
        vault: String,
        /// What failed.
        detail: String,
    },
}

impl KeySource {
    /// A Key Vault source using the process's credential. `verify_challenge_resource` should stay `true`
    /// except for a vault outside `*.vault.azure.net` (a local stand-in).
    pub fn key_vault(
        vault: &str,
        name: &str,
        auth: &AzureAuth,
        verify_challenge_resource: bool,
    ) -> Result<Self, KeyError> {
        let options = SecretClientOptions {
            verify_challenge_resource: Some(verify_challenge_resource),
            client_options: crate::azure_http::client_options(),
            ..Default::default()
        };
        let client = SecretClient::new(vault, auth.credential()?, Some(options)).map_err(|e| {
            KeyError::Unavailable {
                vault: vault.to_owned(),
                detail: redact_url_secrets(&e.to_string()),
            }
        })?;
        Ok(Self::KeyVault {
            vault: vault.to_owned(),
            name: name.to_owned(),
            client: Box::new(client),
        })
    }

    /// Where the key comes from, for the log.
    pub fn describe(&self) -> String {
        match self {
            Self::Literal(_) => "THIRD_PARTY_API_KEY".to_owned(),
            Self::File(path) => format!("file {}", path.display()),
            Self::KeyVault { vault, name, .. } => format!("Key Vault {vault} secret {name}"),
        }
    }

    /// Reads the key now.
    pub async fn fetch(&self) -> Result<Secret, KeyError> {
        let value = match self {
            Self::Literal(secret) => secret.expose().to_owned(),
            Self::File(path) => crate::files::read_key_file(path).map_err(|e| KeyError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Self::KeyVault {
                vault,
                name,
                client,
            } => {
                let response = client
                    .get_secret(name, None)
                    .await
                    .map_err(|e| key_vault_error(vault, name, &e))?;
                let secret = response
                    .into_model()
                    .map_err(|e| key_vault_error(vault, name, &e))?;
                secret.value.unwrap_or_default()
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(KeyError::Empty(self.describe()));
        }
        Ok(Secret::new(value))
    }
}

fn key_vault_error(vault: &str, name: &str, e: &azure_core::Error) -> KeyError {
    use azure_core::error::ErrorKind;
    let vault = vault.to_owned();
    match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(*status);
            let code = error_code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            match status {
                404 => KeyError::SecretNotFound {
                    vault,
                    name: name.to_owned(),
                },
                401 | 403 => KeyError::TokenRefused {
                    vault,
                    status,
                    code,
                },
                _ => KeyError::Unavailable {
                    vault,
                    detail: format!("HTTP {status}{code}"),
                },
            }
        }
        ErrorKind::Credential => KeyError::Unavailable {
            vault,
            detail: format!(
                "no token for Key Vault: {}",
                redact_url_secrets(&e.to_string())
            ),
        },
        _ => KeyError::Unavailable {
            vault,
            detail: redact_url_secrets(&e.to_string()),
        },
    }
}

/// The current key and how to read it again.
pub struct FunctionKey {
    source: KeySource,
    current: RwLock<Secret>,
    last_read: Mutex<Instant>,
    min_interval: Duration,
}

impl std::fmt::Debug for FunctionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionKey")
            .field("source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

impl FunctionKey {
    /// Reads the key from `source` now; later refreshes happen at most once per `min_interval`.
    pub async fn load(source: KeySource, min_interval: Duration) -> Result<Arc<Self>, KeyError> {
        let current = source.fetch().await?;
        tracing::info!(source = %source.describe(), "function key loaded");
        Ok(Arc::new(Self {
            source,
            current: RwLock::new(current),
            last_read: Mutex::new(Instant::now()),
            min_interval,
        }))
    }

    /// A key that never changes (tests, tools).
    pub fn fixed(key: Secret) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(key.clone()),
            source: KeySource::Literal(key),
            last_read: Mutex::new(Instant::now()),
            min_interval: Duration::MAX,
        })
    }

    /// The key to send now.
    pub fn current(&self) -> Secret {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After the API refused the key: reads it again if the last read is at least `min_interval` old.
    /// Returns whether a different key was found (worth retrying with).
    pub async fn reread_after_refusal(&self) -> bool {
        {
            let mut last = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < self.min_interval {
                return false;
            }
            *last = Instant::now();
        }
        match self.source.fetch().await {
            Ok(key) => {
                let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                let changed = *current != key;
                *current = key;
                tracing::info!(source = %self.source.describe(), changed, "function key read again after a refusal");
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "function key could not be read again");
                false
            }
        }
    }
}
