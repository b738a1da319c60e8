//! Loopback stand-ins for what has no emulator, speaking the real wire protocols: a throwaway CA and TLS
//! certificate, an Entra ID token endpoint (App Service managed identity, and the workload-identity
//! client-assertion exchange), and a Key Vault secrets endpoint with its bearer challenge.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "5f8ba4a1-0000-4000-8000-c0dewa7c4000";

/// A CA and a server certificate for `localhost` and `127.0.0.1`, as PEM files in `dir`.
pub struct Pki {
    /// The CA certificate: what clients trust (`SSL_CERT_FILE`).
    pub ca: PathBuf,
    /// The server certificate and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &FsPath) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "codewatch test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut leaf =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", leaf_cert.pem()),
            key: write("key.pem", leaf_key.serialize_pem()),
        }
    }
}

/// An HTTPS server on a free loopback port with the [`Pki`]'s certificate.
pub struct TlsServer {
    pub addr: std::net::SocketAddr,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl TlsServer {
    pub async fn start(pki: &Pki, router: Router) -> Self {
        let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&pki.cert, &pki.key)
            .await
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, config)
            .unwrap()
            .handle(handle.clone());
        tokio::spawn(server.serve(router.into_make_service()));
        Self { addr, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A JWT as Entra ID issues them (unsigned here: Azurite's basic OAuth mode and the Key Vault stand-in
/// read the claims, as the real services would after checking the signature).
pub fn jwt(audience: &str, lifetime_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": "test" });
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + lifetime_secs,
        "tid": TENANT,
        "oid": "0b6f7e0c-1111-4222-8333-944455556666",
        "appid": CLIENT_ID,
        "sub": "codewatch-test-identity",
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let enc = |v: &serde_json::Value| B64URL.encode(v.to_string());
    format!(
        "{}.{}.{}",
        enc(&header),
        enc(&claims),
        B64URL.encode(b"not-a-real-signature")
    )
}

/// The claims of a JWT, unchecked.
fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}

/// What the token endpoint hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    /// A valid token for the requested resource.
    Good,
    /// A token for another audience.
    WrongAudience,
    /// A token whose `exp` has passed (while `expires_on` says it is fresh, so the SDK uses it).
    Expired,
}

/// The Entra ID token stand-in.
pub struct TokenService {
    pub server: TlsServer,
    state: Arc<TokenState>,
}

struct TokenState {
    identity_header: String,
    assertion: String,
    mode: Mutex<TokenMode>,
    issued: Mutex<Vec<String>>,
}

impl TokenService {
    /// `identity_header` is what App Service puts in `IDENTITY_HEADER`; `assertion` is the content of the
    /// workload identity's federated token file.
    pub async fn start(pki: &Pki, identity_header: &str, assertion: &str) -> Self {
        let state = Arc::new(TokenState {
            identity_header: identity_header.to_owned(),
            assertion: assertion.to_owned(),
            mode: Mutex::new(TokenMode::Good),
            issued: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/msi/token", get(app_service_token))
            .route("/{tenant}/oauth2/v2.0/token", post(client_assertion_token))
            .with_state(state.clone());
        Self {
            server: TlsServer::start(pki, router).await,
            state,
        }
    }

    pub fn set_mode(&self, mode: TokenMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Every access token handed out so far.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().unwrap().clone()
    }

    /// `IDENTITY_ENDPOINT` for the App Service protocol.
    pub fn identity_endpoint(&self) -> String {
        self.server.url("/msi/token")
    }

    /// `AZURE_AUTHORITY_HOST` for the workload-identity exchange.
    pub fn authority_host(&self) -> String {
        self.server.url("/")
    }
}

impl TokenState {
    fn token_for(&self, resource: &str) -> (String, i64) {
        let mode = *self.mode.lock().unwrap();
        let (audience, lifetime) = match mode {
            TokenMode::Good => (resource, 3600),
            TokenMode::WrongAudience => ("https://management.azure.com", 3600),
            TokenMode::Expired => (resource, -600),
        };
        let token = jwt(audience, lifetime);
        self.issued.lock().unwrap().push(token.clone());
        (token, chrono::Utc::now().timestamp() + 3600)
    }
}

/// App Service / Container Apps managed identity: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…`
/// with `X-IDENTITY-HEADER`.
async fn app_service_token(
    State(state): State<Arc<TokenState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(state.identity_header.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-IDENTITY-HEADER",
        )
            .into_response();
    }
    let (Some("2019-08-01"), Some(resource)) = (
        query.get("api-version").map(String::as_str),
        query.get("resource"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "api-version 2019-08-01 and resource are required",
        )
            .into_response();
    };
    let (token, expires_on) = state.token_for(resource);
    Json(json!({
        "access_token": token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": CLIENT_ID,
    }))
    .into_response()
}

/// Workload identity: `POST {AZURE_AUTHORITY_HOST}/{tenant}/oauth2/v2.0/token` with the federated token as
/// the client assertion.
async fn client_assertion_token(
    State(state): State<Arc<TokenState>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str);
    let ok = tenant == TENANT
        && field("grant_type") == Some("client_credentials")
        && field("client_assertion_type")
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && field("client_assertion") == Some(state.assertion.as_str())
        && field("client_id") == Some(CLIENT_ID);
    if !ok {
        let body = json!({ "error": "invalid_client", "error_description": "AADSTS700211: bad client assertion" });
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let scope = field("scope").unwrap_or_default();
    let resource = scope.strip_suffix("/.default").unwrap_or(scope).to_owned();
    let (token, _) = state.token_for(&resource);
    Json(json!({ "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token }))
        .into_response()
}

/// The Key Vault secrets stand-in: `GET /secrets/{name}/{version}?api-version=…`, answering an anonymous
/// request with the bearer challenge, as Key Vault does.
pub struct KeyVault {
    pub server: TlsServer,
    secrets: Arc<Mutex<HashMap<String, String>>>,
}

impl KeyVault {
    pub async fn start(pki: &Pki) -> Self {
        let secrets = Arc::new(Mutex::new(HashMap::new()));
        let router = Router::new()
            .route("/secrets/{name}", get(get_secret))
            .route("/secrets/{name}/", get(get_secret))
            .route("/secrets/{name}/{version}", get(get_secret_version))
            .with_state(secrets.clone());
        Self {
            server: TlsServer::start(pki, router).await,
            secrets,
        }
    }

    pub fn set(&self, name: &str, value: &str) {
        self.secrets
            .lock()
            .unwrap()
            .insert(name.to_owned(), value.to_owned());
    }

    /// `KEY_VAULT_URL`.
    pub fn url(&self) -> String {
        self.server.url("/")
    }
}

async fn get_secret_version(
    state: State<Arc<Mutex<HashMap<String, String>>>>,
    Path((name, _version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_secret(state, Path(name), headers).await
}

async fn get_secret(
    State(secrets): State<Arc<Mutex<HashMap<String, String>>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = bearer.and_then(claims).is_some_and(|c| {
        c["aud"].as_str().map(|a| a.trim_end_matches('/')) == Some("https://vault.azure.net")
            && c["exp"]
                .as_i64()
                .is_some_and(|exp| exp > chrono::Utc::now().timestamp())
    });
    if !authorized {
        let challenge = format!(
            "Bearer authorization=\"https://login.microsoftonline.com/{TENANT}\", resource=\"https://vault.azure.net\""
        );
        let body = json!({ "error": { "code": "Unauthorized", "message": "AKV10000: Request is missing a valid Bearer token." } });
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            Json(body),
        )
            .into_response();
    }
    match secrets.lock().unwrap().get(&name) {
        Some(value) => Json(json!({
            "value": value,
            "id": format!("https://vault.example/secrets/{name}/0123456789abcdef"),
            "attributes": { "enabled": true, "created": 1764300000, "updated": 1764300000, "recoveryLevel": "Recoverable+Purgeable" }
        }))
        .into_response(),
        None => {
            let body = json!({ "error": { "code": "SecretNotFound", "message": format!("A secret with (name/id) {name} was not found in this key vault.") } });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}
