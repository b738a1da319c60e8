//! The one Entra ID credential a process uses for Azure Storage and Key Vault, chosen the way the
//! Python SDK's DefaultAzureCredential does: workload identity, then managed identity, then developer
//! tools. Built once, on first use, and logged by name.

use azure_core::credentials::TokenCredential;
use azure_identity::{
    ClientAssertionCredentialOptions, DeveloperToolsCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use std::sync::{Arc, OnceLock};

/// Which credential to use; `auto` picks from the environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CredentialChoice {
    /// Workload identity if `AZURE_FEDERATED_TOKEN_FILE` is set, else managed identity if
    /// `IDENTITY_ENDPOINT` (or `MSI_ENDPOINT`) is set, else developer tools.
    #[default]
    Auto,
    /// AKS workload identity: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`.
    WorkloadIdentity,
    /// Managed identity: App Service / Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), or IMDS
    /// on a VM; `AZURE_CLIENT_ID` selects a user-assigned identity.
    ManagedIdentity,
    /// Azure CLI or Azure Developer CLI, for a developer's machine.
    DeveloperTools,
}

/// The credential in use, after `auto` was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// AKS workload identity.
    WorkloadIdentity,
    /// A managed identity.
    ManagedIdentity,
    /// Azure CLI / azd.
    DeveloperTools,
}

/// No credential could be set up; the text says what to set.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "no Azure identity available ({kind:?}: {detail}). In Azure, enable a managed identity (Container Apps, \
     App Service: IDENTITY_ENDPOINT and IDENTITY_HEADER are then set) or AKS workload identity \
     (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID); on a developer machine run `az login`, \
     or use AZURE_STORAGE_CONNECTION_STRING / THIRD_PARTY_API_KEY instead"
)]
pub struct CredentialError {
    kind: CredentialKind,
    detail: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl CredentialChoice {
    /// The kind this choice means in the current environment. `auto` never probes IMDS: on a VM, choose
    /// `managed-identity`.
    pub fn resolve(self) -> CredentialKind {
        match self {
            Self::WorkloadIdentity => CredentialKind::WorkloadIdentity,
            Self::ManagedIdentity => CredentialKind::ManagedIdentity,
            Self::DeveloperTools => CredentialKind::DeveloperTools,
            Self::Auto if env("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
                CredentialKind::WorkloadIdentity
            }
            Self::Auto if env("IDENTITY_ENDPOINT").is_some() || env("MSI_ENDPOINT").is_some() => {
                CredentialKind::ManagedIdentity
            }
            Self::Auto => CredentialKind::DeveloperTools,
        }
    }
}

fn build(kind: CredentialKind) -> Result<Arc<dyn TokenCredential>, CredentialError> {
    let fail = |e: azure_core::Error| CredentialError {
        kind,
        detail: crate::secret::redact_url_secrets(&e.to_string()),
    };
    Ok(match kind {
        CredentialKind::WorkloadIdentity => {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: crate::azure_http::client_options(),
                },
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(options)).map_err(fail)?
        }
        CredentialKind::ManagedIdentity => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                client_options: crate::azure_http::client_options(),
            };
            ManagedIdentityCredential::new(Some(options)).map_err(fail)?
        }
        CredentialKind::DeveloperTools => DeveloperToolsCredential::new(None).map_err(fail)?,
    })
}

/// The process's credential, built on first use and shared by every Azure client.
#[derive(Debug, Default)]
pub struct AzureAuth {
    choice: CredentialChoice,
    built: OnceLock<Result<Arc<dyn TokenCredential>, CredentialError>>,
}

impl AzureAuth {
    /// Credentials chosen by `choice`.
    pub fn new(choice: CredentialChoice) -> Self {
        Self {
            choice,
            built: OnceLock::new(),
        }
    }

    /// The credential; the first call builds it and logs which one it is.
    pub fn credential(&self) -> Result<Arc<dyn TokenCredential>, CredentialError> {
        let built = self.built.get_or_init(|| {
            let kind = self.choice.resolve();
            let credential = build(kind)?;
            tracing::info!(credential = ?kind, "authenticating to Azure with Entra ID");
            Ok(credential)
        });
        built.clone()
    }
}

/// Where tokens come from, for an error that names the endpoint: the managed identity endpoint or the
/// workload identity authority, as the environment sets them.
pub fn token_endpoint() -> Option<String> {
    env("IDENTITY_ENDPOINT")
        .or_else(|| env("MSI_ENDPOINT"))
        .or_else(|| env("AZURE_AUTHORITY_HOST"))
}
