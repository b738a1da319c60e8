//! Chooses the Entra ID credential for Azure services, the way DefaultAzureCredential does: workload
//! identity, then managed identity, then developer tools.

use azure_core::credentials::TokenCredential;
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential,
};
use std::sync::Arc;

/// Which credential is in use; logged at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// AKS workload identity (`AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity,
    /// App Service / Container Apps (`IDENTITY_ENDPOINT`) or IMDS managed identity.
    ManagedIdentity,
    /// Azure CLI or Azure Developer CLI, for a developer's machine.
    DeveloperTools,
}

/// A credential could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the {kind:?} credential: {message}")]
pub struct CredentialError {
    kind: CredentialKind,
    message: String,
}

/// Picks the credential from the environment and builds it.
pub fn from_environment() -> Result<(CredentialKind, Arc<dyn TokenCredential>), CredentialError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let kind = if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        CredentialKind::WorkloadIdentity
    } else if env("IDENTITY_ENDPOINT").is_some() || env("MSI_ENDPOINT").is_some() {
        CredentialKind::ManagedIdentity
    } else {
        CredentialKind::DeveloperTools
    };
    let fail = |e: azure_core::Error| CredentialError {
        kind,
        message: e.to_string(),
    };
    let credential: Arc<dyn TokenCredential> = match kind {
        CredentialKind::WorkloadIdentity => WorkloadIdentityCredential::new(None).map_err(fail)?,
        CredentialKind::ManagedIdentity => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(fail)?
        }
        CredentialKind::DeveloperTools => DeveloperToolsCredential::new(None).map_err(fail)?,
    };
    Ok((kind, credential))
}
