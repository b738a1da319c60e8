//! Command-line flags; every flag is also an environment variable. Secrets are [`Secret`]s and their
//! environment values are hidden from `--help`.

use crate::identity::CredentialChoice;
use crate::message::MessageEncoding;
use crate::queue::urls::QueueUrls;
use crate::secret::Secret;
use crate::worker::{Backoff, Rearm, WorkerSettings};
use clap::builder::TypedValueParser as _;
use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

/// The values of `T`'s flags when none is given and the environment is ignored. The clap definitions
/// are the one home of every default: the settings' `Default` impls below are built from them.
fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| T::from_arg_matches(&matches))
        .unwrap_or_else(|e| unreachable!("every flag of these groups has a valid default: {e}"))
}

/// A count of at least 1 within `range`, as a `NonZeroUsize`: 0 and values past the range are refused
/// with the allowed range, never corrected.
macro_rules! nonzero_count {
    ($range:expr) => {
        clap::value_parser!(u64).range($range).try_map(|n| {
            usize::try_from(n)
                .ok()
                .and_then(NonZeroUsize::new)
                .ok_or("out of range")
        })
    };
}

/// Reads `STORAGE_QUEUE_URL` as [`QueueUrls`]. A refusal says what is wrong and never repeats the
/// value (clap's own errors would: the value may hold a SAS).
#[derive(Clone)]
struct QueueUrlsParser;

impl clap::builder::TypedValueParser for QueueUrlsParser {
    type Value = QueueUrls;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<QueueUrls, clap::Error> {
        let refused = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("STORAGE_QUEUE_URL {reason} (the value is not shown: it may hold a SAS)\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refused("is not UTF-8".into()))?;
        QueueUrls::parse(text).map_err(|e| refused(e.to_string()))
    }
}

/// codewatch: short-lived two-factor codes on Azure Queue Storage.
#[derive(Debug, Parser)]
#[command(name = "codewatch", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Base URL of an OTLP/HTTP receiver (an OpenTelemetry Collector, e.g. `http://localhost:4318`)
    /// to send traces to; no traces when unset. The other standard `OTEL_*` variables apply.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<url::Url>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process: the number API stand-in, the producer and the worker.
    Up(UpArgs),
    /// The producer: the public getcode and the sign-in API (issue for a user, check, redeem).
    Serve(ServeArgs),
    /// The queue watcher that keeps the valid-codes table.
    Worker(WorkerArgs),
    /// The stand-in for the third-party random-number Azure Function.
    NumberApi(NumberApiArgs),
    /// Applies the database migrations and exits.
    Migrate(DatabaseArgs),
    /// Inspects and revokes codes in the database.
    Codes(CodesArgs),
    /// Inspects and manages the queue and its poison queue.
    Queue(QueueToolArgs),
    /// Gets a code from a running `serve` and watches it become valid, as the sample's test.sh did.
    Smoke(SmokeArgs),
    /// GETs a URL and exits 0 on a 2xx answer: a health check for images without curl (distroless).
    Probe(ProbeArgs),
}

/// `codewatch probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL, e.g. `http://127.0.0.1:8080/readyz`; without it, `/readyz` on this process's admin
    /// listener (`ADMIN_LISTEN_ADDR`, an unspecified address such as 0.0.0.0 read as loopback), so an
    /// image's health check follows the port it is given.
    pub url: Option<url::Url>,
    /// The admin listener probed when no URL is given.
    #[arg(long, env = "ADMIN_LISTEN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout_seconds: u64,
}

impl ProbeArgs {
    /// The URL to probe: the one given, else `/readyz` on the admin listener.
    pub fn target(&self) -> Result<url::Url, url::ParseError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let mut addr = self.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        url::Url::parse(&format!("http://{addr}/readyz"))
    }
}

/// `codewatch codes …`.
#[derive(Debug, Args)]
pub struct CodesArgs {
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: CodesCommand,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// Output formats for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// The `codes` subcommands.
#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Lists the valid codes (soonest expiry first), or with --all every row (newest first).
    List {
        /// Every row: expired, redeemed and revoked too.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Shows every issuance of a code and its state.
    Show {
        /// The code, e.g. ojE-161-pTv.
        code: String,
    },
    /// Revokes a code at once (idempotent), including issuances still on their way through the queue.
    Revoke {
        /// The code, e.g. ojE-161-pTv.
        code: String,
    },
    /// Forgets a subject's failed checks, lifting its lock.
    Unlock {
        /// The subject, as the sign-in service issued its codes for (`POST /api/v1/codes`).
        subject: String,
    },
}

/// `codewatch queue …`.
#[derive(Debug, Args)]
pub struct QueueToolArgs {
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: QueueCommand,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub queue: QueueArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
}

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Approximate number of messages in the queue and its poison queue.
    Stats,
    /// Shows visible messages, decoded, without taking them.
    Peek {
        /// How many (1–32).
        #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::queue::MAX_BATCH)))]
        count: u32,
        /// Peek the poison queue instead.
        #[arg(long)]
        poison: bool,
    },
    /// Deletes every message (asks first unless --yes).
    Clear {
        /// Clear the poison queue instead.
        #[arg(long)]
        poison: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Moves every poison message back to the queue, after a fix.
    RequeuePoison,
}

/// `codewatch smoke`.
#[derive(Debug, Args)]
pub struct SmokeArgs {
    /// Base URL of a running `serve`.
    #[arg(long, env = "CODEWATCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: url::Url,
    /// Base URL of its sign-in API, if it has a listener of its own (VERIFY_LISTEN_ADDR); else `--url`.
    #[arg(long, env = "CODEWATCH_SIGNIN_URL")]
    pub signin_url: Option<url::Url>,
    /// The sign-in API key of that `serve`.
    #[arg(long, env = "VERIFY_API_KEY", hide_env_values = true)]
    pub verify_api_key: Secret,
    /// How long to wait for the code to become valid, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_seconds: u64,
}

/// Where the valid-codes table lives.
#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite:<file>` (created if missing) or `postgres://user:password@host/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite:codewatch.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Secret,
    /// Apply the PostgreSQL migrations at start (`false` for a runtime role without schema rights: the
    /// process then only checks they were applied, by `codewatch migrate` with the migration role).
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub migrate_on_start: bool,
    /// Seconds a start, a batch or a request waits for a PostgreSQL connection (an unreachable server
    /// is tried again until then) before it fails.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600), global = true)]
    pub database_acquire_timeout_seconds: u64,
    /// Set by `codewatch migrate`, which always migrates.
    #[arg(skip)]
    pub force_migrate: bool,
}

impl DatabaseArgs {
    /// The database at `url`, migrated at start.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            database_url: Secret::new(url),
            ..clap_defaults()
        }
    }
}

/// Which queue, and how to reach it. With neither URL nor connection string, the embedded queue in the
/// SQLite database is used.
#[derive(Clone, Debug, Args)]
pub struct QueueArgs {
    /// Queue URL, `https://<account>.queue.core.windows.net/<queue>`; Entra ID auth, or a SAS in the query.
    /// Several URLs separated by commas are shards (they may live in different storage accounts).
    #[arg(
        long,
        env = "STORAGE_QUEUE_URL",
        hide_env_values = true,
        conflicts_with = "storage_connection_string",
        value_parser = QueueUrlsParser,
        global = true
    )]
    pub storage_queue_url: Option<QueueUrls>,
    /// Storage connection string (`UseDevelopmentStorage=true` for Azurite on its default port).
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        hide_env_values = true,
        global = true
    )]
    pub storage_connection_string: Option<Secret>,
    /// Queue name, with a connection string or the embedded queue.
    #[arg(
        long,
        env = "STORAGE_QUEUE_NAME",
        default_value = "code-requests",
        global = true
    )]
    pub queue_name: String,
    /// Shards of the queue: codes are spread over `<queue>`, `<queue>-1`, … `<queue>-(N-1)`, each with its
    /// own poison queue; every worker polls all of them. Or list the shards' URLs in STORAGE_QUEUE_URL.
    #[arg(long, env = "STORAGE_QUEUE_SHARDS", default_value = "1", value_parser = nonzero_count!(1..=crate::queue::shards::MAX_SHARDS as u64), global = true)]
    pub queue_shards: NonZeroUsize,
    /// How messages are written: `text` (as the Python SDK) or `base64` (for Azure Functions). Reading detects both.
    #[arg(long, env = "MESSAGE_ENCODING", value_enum, default_value_t = MessageEncoding::Text, global = true)]
    pub message_encoding: MessageEncoding,
    /// Which Entra ID credential to use with STORAGE_QUEUE_URL and Key Vault (`auto` picks from the environment).
    #[arg(long, env = "AZURE_CREDENTIAL_KIND", value_enum, default_value_t = CredentialChoice::Auto, global = true)]
    pub azure_credential: CredentialChoice,
}

/// The third-party random-number API, as `serve` calls it.
#[derive(Clone, Debug, Args)]
pub struct NumberApiClientArgs {
    /// URL of the random-number API (the sample's Azure Function).
    #[arg(long, env = "THIRD_PARTY_API_ENDPOINT")]
    pub third_party_api_endpoint: Option<url::Url>,
    /// The function key sent in `x-functions-key`.
    #[arg(long, env = "THIRD_PARTY_API_KEY", hide_env_values = true)]
    pub third_party_api_key: Option<Secret>,
    /// A file holding the function key, such as a mounted secret (instead of THIRD_PARTY_API_KEY: one source only).
    #[arg(long, env = "THIRD_PARTY_API_KEY_FILE")]
    pub third_party_api_key_file: Option<std::path::PathBuf>,
    /// Key Vault holding the function key, e.g. `https://my-vault.vault.azure.net/` (instead of either of the above).
    #[arg(long, env = "KEY_VAULT_URL")]
    pub key_vault_url: Option<url::Url>,
    /// Name of the Key Vault secret holding the function key.
    #[arg(
        long,
        env = "THIRD_PARTY_API_SECRET_NAME",
        default_value = "third-party-api-key"
    )]
    pub third_party_api_secret_name: String,
    /// Require Key Vault's authentication challenge to name the vault's own domain; turn off only for a
    /// vault outside `*.vault.azure.net`, such as a local stand-in.
    #[arg(long, env = "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub key_vault_verify_challenge_resource: bool,
    /// Shortest time between two reads of the key after the API refused it (a rotation), in seconds.
    #[arg(
        long,
        env = "THIRD_PARTY_API_KEY_REFRESH_SECONDS",
        default_value_t = 60
    )]
    pub third_party_api_key_refresh_seconds: u64,
    /// How long to wait for the API, in milliseconds.
    #[arg(long, env = "THIRD_PARTY_API_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub third_party_api_timeout_ms: u64,
}

/// What every HTTP listener allows its clients.
#[derive(Clone, Debug, Args)]
pub struct HttpArgs {
    /// Seconds a client may take to send a request's headers; also how long an idle keep-alive
    /// connection is kept open.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http_header_read_timeout_seconds: u64,
    /// Seconds one request may take in all before it is answered 503 (getcode's worst case is the
    /// number API's timeout, twice after a refused key, plus the queue send).
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http_request_timeout_seconds: u64,
    /// Connections open at once per listener; more clients wait in the listen backlog. Keep it below
    /// the process's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value = "1024", value_parser = nonzero_count!(1..=1_000_000))]
    pub http_max_connections: NonZeroUsize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Default for crate::http::HttpLimits {
    fn default() -> Self {
        HttpArgs::default().limits()
    }
}

impl HttpArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout: Duration::from_secs(self.http_header_read_timeout_seconds),
            request_timeout: Duration::from_secs(self.http_request_timeout_seconds),
            max_connections: self.http_max_connections,
            trusted_proxies: crate::http::TrustedProxies::default(),
        }
    }
}

impl NumberApiClientArgs {
    /// Refuses a function key given by more than one of THIRD_PARTY_API_KEY, THIRD_PARTY_API_KEY_FILE
    /// and KEY_VAULT_URL, rather than using one and silently ignoring the others.
    pub fn one_key_source(&self) -> Result<(), ConfigError> {
        at_most_one_source(
            "the function key",
            &[
                ("THIRD_PARTY_API_KEY", self.third_party_api_key.is_some()),
                (
                    "THIRD_PARTY_API_KEY_FILE",
                    self.third_party_api_key_file.is_some(),
                ),
                ("KEY_VAULT_URL", self.key_vault_url.is_some()),
            ],
        )
    }
}

/// Optional signing of queue messages: `serve` signs activations, the worker refuses unsigned or forged
/// ones. Off when no key is set (foreign producers cannot sign).
#[derive(Clone, Debug, Args)]
pub struct SigningArgs {
    /// The current signing key (at least 32 characters): signs, and verifies.
    #[arg(long, env = "MESSAGE_SIGNING_KEY", hide_env_values = true)]
    pub message_signing_key: Option<Secret>,
    /// The previous key, still accepted during a rotation.
    #[arg(long, env = "MESSAGE_SIGNING_KEY_PREVIOUS", hide_env_values = true)]
    pub message_signing_key_previous: Option<Secret>,
    /// A file holding the current key, and optionally the previous one on the next line (instead of
    /// MESSAGE_SIGNING_KEY: one source only).
    #[arg(long, env = "MESSAGE_SIGNING_KEY_FILE")]
    pub message_signing_key_file: Option<std::path::PathBuf>,
    /// Key Vault holding the keys as one secret (current, optionally a newline and the previous one),
    /// read with the app's identity (instead of either of the above).
    #[arg(long, env = "MESSAGE_SIGNING_KEY_VAULT_URL")]
    pub message_signing_key_vault_url: Option<url::Url>,
    /// Name of that Key Vault secret.
    #[arg(
        long,
        env = "MESSAGE_SIGNING_SECRET_NAME",
        default_value = "message-signing-key"
    )]
    pub message_signing_secret_name: String,
}

impl SigningArgs {
    /// Refuses signing keys given by more than one of MESSAGE_SIGNING_KEY, MESSAGE_SIGNING_KEY_FILE
    /// and MESSAGE_SIGNING_KEY_VAULT_URL, rather than using one and silently ignoring the others.
    pub fn one_key_source(&self) -> Result<(), ConfigError> {
        at_most_one_source(
            "the message signing key",
            &[
                ("MESSAGE_SIGNING_KEY", self.message_signing_key.is_some()),
                (
                    "MESSAGE_SIGNING_KEY_FILE",
                    self.message_signing_key_file.is_some(),
                ),
                (
                    "MESSAGE_SIGNING_KEY_VAULT_URL",
                    self.message_signing_key_vault_url.is_some(),
                ),
            ],
        )
    }
}

/// How long a daemon may take to start and to stop.
#[derive(Clone, Debug, Args)]
pub struct LifecycleArgs {
    /// Seconds each start-up step that waits on Azure (an Entra ID token, Key Vault, the queue) may take
    /// before the start fails with an error naming the endpoint.
    #[arg(long, env = "STARTUP_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub startup_timeout_seconds: u64,
    /// Seconds to finish work in flight after SIGTERM/SIGINT before exiting anyway (keep under the
    /// platform's kill timeout: Kubernetes waits 30 s).
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_seconds: u64,
}

impl LifecycleArgs {
    /// The grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The start-up step deadline.
    pub fn startup(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_seconds)
    }
}

/// The flags every long-running role has: `serve`, `worker`, and `up` (through `serve`'s).
#[derive(Clone, Debug, Args)]
pub struct RoleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub queue: QueueArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub signing: SigningArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub delivery: DeliveryArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub shutdown: LifecycleArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub http: HttpArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub ttl: CodeTtlArgs,
}

/// `codewatch serve`.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address the producer listens on for the public: getcode (use 0.0.0.0:8080 in a container).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener: `/healthz`, `/readyz`, `/metrics` (0.0.0.0:9090 in a container;
    /// keep it off the public ingress).
    #[arg(
        long = "admin-listen",
        env = "ADMIN_LISTEN_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    pub admin_listen: SocketAddr,
    /// Address for the sign-in API alone (e.g. 0.0.0.0:8081, reachable only by the sign-in service);
    /// without it the sign-in API shares LISTEN_ADDR.
    #[arg(long = "verify-listen", env = "VERIFY_LISTEN_ADDR")]
    pub verify_listen: Option<SocketAddr>,
    /// Serve the walkthrough's unauthenticated `GET /api/v1/getcode` (unbound codes, a demonstration)
    /// on LISTEN_ADDR. A sign-in flow issues bound codes through the sign-in API instead; turn this off
    /// where nobody needs the demonstration. Default: on, unless DELIVERY is set (then no answer may
    /// carry a code, and turning it on is refused).
    #[arg(long, env = "PUBLIC_GETCODE", action = clap::ArgAction::Set)]
    pub public_getcode: Option<bool>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub role: RoleArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub number_api: NumberApiClientArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub getcode_limit: GetcodeLimitArgs,
}

impl ServeArgs {
    /// Refuses settings that contradict each other, before anything starts; answers whether the
    /// public getcode is served.
    pub fn check(&self) -> Result<bool, ConfigError> {
        self.number_api.one_key_source()?;
        self.role.signing.one_key_source()?;
        self.role.delivery.one_secret_source()?;
        self.public_getcode()
    }

    /// Whether the public getcode is served: as asked, or by default unless codes are delivered.
    pub fn public_getcode(&self) -> Result<bool, ConfigError> {
        match (self.public_getcode, self.role.delivery.delivery) {
            (Some(true), channel) if channel != DeliveryChannel::None => {
                Err(ConfigError::GetcodeWithDelivery)
            }
            (Some(on), _) => Ok(on),
            (None, channel) => Ok(channel == DeliveryChannel::None),
        }
    }
}

/// A combination of settings that cannot work, found before anything starts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The public getcode hands a code to anyone, which delivery promises never to do.
    #[error(
        "PUBLIC_GETCODE=true hands codes to unauthenticated callers, and DELIVERY is set so that no \
         answer carries a code: unset PUBLIC_GETCODE (it is off by default with DELIVERY)"
    )]
    GetcodeWithDelivery,
    /// A key given by more than one source: which one would be used is not for codewatch to guess.
    #[error("{what} is given by more than one source ({given}): set only one")]
    ConflictingSources {
        /// The key.
        what: &'static str,
        /// The settings that give it.
        given: String,
    },
    /// A first poll wait longer than the longest.
    #[error(
        "WORKER_MIN_POLL_INTERVAL_MS ({min}) is above WORKER_MAX_POLL_INTERVAL_MS ({max}): the first \
         wait after an empty receive cannot be longer than the longest"
    )]
    PollIntervals {
        /// The first wait, in milliseconds.
        min: u64,
        /// The longest wait, in milliseconds.
        max: u64,
    },
    /// A channel without what it needs.
    #[error("DELIVERY={channel} needs {missing}")]
    DeliveryIncomplete {
        /// The channel.
        channel: &'static str,
        /// The settings it lacks.
        missing: &'static str,
    },
}

/// Refuses `what` given by more than one of `sources` (each a setting's name and whether it is set).
fn at_most_one_source(what: &'static str, sources: &[(&str, bool)]) -> Result<(), ConfigError> {
    let given: Vec<&str> = sources
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    if given.len() > 1 {
        return Err(ConfigError::ConflictingSources {
            what,
            given: given.join(", "),
        });
    }
    Ok(())
}

/// How long a code stays valid: the worker keeps it so long, the producer says until when.
#[derive(Clone, Debug, Args)]
pub struct CodeTtlArgs {
    /// How long a code stays valid after it is issued, in seconds (set the same on `serve` and the
    /// worker: the issuing answer's `expires_at` is computed with it).
    #[arg(long, env = "CODE_TTL_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub code_ttl_seconds: u64,
}

impl CodeTtlArgs {
    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.code_ttl_seconds)
    }
}

/// How the worker delivers codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryChannel {
    /// No delivery: the issuing answer carries the code, for the sign-in service to send.
    #[default]
    None,
    /// By mail, through an SMTP server (SMTP_URL).
    Smtp,
    /// By an HMAC-signed POST to the sign-in service (DELIVERY_WEBHOOK_URL), which sends it on.
    Webhook,
}

impl DeliveryChannel {
    /// The name, as DELIVERY takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Smtp => "smtp",
            Self::Webhook => "webhook",
        }
    }
}

/// Delivery of codes by the worker. Set the same on `serve` (which then requires a destination and
/// leaves the code out of its answers) and on the worker (which delivers).
#[derive(Clone, Debug, Args)]
pub struct DeliveryArgs {
    /// How codes issued with a destination reach the user: `none` (the issuing answer carries the
    /// code), `smtp` or `webhook`.
    #[arg(long, env = "DELIVERY", value_enum, default_value_t = DeliveryChannel::None)]
    pub delivery: DeliveryChannel,
    /// The SMTP server: `smtps://host:465` (implicit TLS), `smtp://host:587?tls=required` (STARTTLS),
    /// or `smtp://localhost:25` (plain, for a relay on the same host).
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<Secret>,
    /// The SMTP user name, if the server wants a login.
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// The SMTP password (or SMTP_PASSWORD_FILE, or the Key Vault secret below).
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<Secret>,
    /// A file holding the SMTP password (owner-only; instead of SMTP_PASSWORD: one source only).
    #[arg(long, env = "SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<std::path::PathBuf>,
    /// Key Vault holding the SMTP password or the webhook secret, read with the app's identity (used
    /// when neither the value nor a file is given).
    #[arg(long, env = "DELIVERY_KEY_VAULT_URL")]
    pub delivery_key_vault_url: Option<url::Url>,
    /// Name of the Key Vault secret holding the SMTP password.
    #[arg(
        long,
        env = "SMTP_PASSWORD_SECRET_NAME",
        default_value = "smtp-password"
    )]
    pub smtp_password_secret_name: String,
    /// The mails' sender.
    #[arg(
        long,
        env = "DELIVERY_MAIL_FROM",
        default_value = "codewatch <no-reply@localhost>"
    )]
    pub delivery_mail_from: String,
    /// The mails' subject line; may use {code}, {minutes}, {expires_at}, {subject}.
    #[arg(long, env = "DELIVERY_MAIL_SUBJECT", default_value = crate::delivery::template::DEFAULT_SUBJECT)]
    pub delivery_mail_subject: String,
    /// A file holding the mails' plain-text body; must use {code}, may use {minutes}, {expires_at},
    /// {subject}. Without it, a short built-in text.
    #[arg(long, env = "DELIVERY_MAIL_BODY_FILE")]
    pub delivery_mail_body_file: Option<std::path::PathBuf>,
    /// The sign-in service's URL that receives each code (DELIVERY=webhook).
    #[arg(long, env = "DELIVERY_WEBHOOK_URL")]
    pub delivery_webhook_url: Option<url::Url>,
    /// The secret the webhook's `Codewatch-Signature` is made with (at least 32 characters).
    #[arg(long, env = "DELIVERY_WEBHOOK_SECRET", hide_env_values = true)]
    pub delivery_webhook_secret: Option<Secret>,
    /// A file holding that secret (owner-only; instead of DELIVERY_WEBHOOK_SECRET: one source only).
    #[arg(long, env = "DELIVERY_WEBHOOK_SECRET_FILE")]
    pub delivery_webhook_secret_file: Option<std::path::PathBuf>,
    /// Name of the Key Vault secret holding the webhook secret.
    #[arg(
        long,
        env = "DELIVERY_WEBHOOK_SECRET_NAME",
        default_value = "delivery-webhook-secret"
    )]
    pub delivery_webhook_secret_name: String,
    /// Seconds one delivery attempt may take.
    #[arg(long, env = "DELIVERY_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub delivery_timeout_seconds: u64,
    /// Seconds before a failed delivery is tried again; the wait doubles with each failure.
    #[arg(long, env = "DELIVERY_RETRY_MIN_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub delivery_retry_min_seconds: u64,
    /// The longest wait between delivery attempts, in seconds.
    #[arg(long, env = "DELIVERY_RETRY_MAX_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub delivery_retry_max_seconds: u64,
}

impl DeliveryArgs {
    /// Refuses the chosen channel's secret given by more than one source (value, file, Key Vault).
    pub fn one_secret_source(&self) -> Result<(), ConfigError> {
        let vault = self.delivery_key_vault_url.is_some();
        match self.delivery {
            DeliveryChannel::None => Ok(()),
            DeliveryChannel::Smtp => at_most_one_source(
                "the SMTP password",
                &[
                    ("SMTP_PASSWORD", self.smtp_password.is_some()),
                    ("SMTP_PASSWORD_FILE", self.smtp_password_file.is_some()),
                    ("DELIVERY_KEY_VAULT_URL", vault),
                ],
            ),
            DeliveryChannel::Webhook => at_most_one_source(
                "the webhook secret",
                &[
                    (
                        "DELIVERY_WEBHOOK_SECRET",
                        self.delivery_webhook_secret.is_some(),
                    ),
                    (
                        "DELIVERY_WEBHOOK_SECRET_FILE",
                        self.delivery_webhook_secret_file.is_some(),
                    ),
                    ("DELIVERY_KEY_VAULT_URL", vault),
                ],
            ),
        }
    }

    /// The delivery stage's settings.
    pub fn settings(&self) -> crate::delivery::DeliverySettings {
        crate::delivery::DeliverySettings {
            timeout: Duration::from_secs(self.delivery_timeout_seconds),
            retry_min: Duration::from_secs(self.delivery_retry_min_seconds),
            retry_max: Duration::from_secs(
                self.delivery_retry_max_seconds
                    .max(self.delivery_retry_min_seconds),
            ),
            lease: crate::delivery::DeliverySettings::lease_for(Duration::from_secs(
                self.delivery_timeout_seconds,
            )),
            ..crate::delivery::DeliverySettings::default()
        }
    }
}

/// How many codes one client may ask for.
#[derive(Clone, Debug, Args)]
pub struct GetcodeLimitArgs {
    /// getcode requests per second allowed per client (each costs a third-party call); 0: unlimited.
    #[arg(long, env = "GETCODE_RATE_LIMIT_PER_SECOND", default_value_t = 5.0, value_parser = rate_or_zero)]
    pub getcode_rate_limit_per_second: f64,
    /// Burst of getcode requests allowed per client.
    #[arg(long, env = "GETCODE_RATE_LIMIT_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub getcode_rate_limit_burst: u32,
    /// Address ranges of the ingress in front of codewatch (comma-separated, e.g. `10.0.0.0/8`): only
    /// from these is `X-Forwarded-For` believed to name the client, for both rate limits.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = parse_trusted_proxies)]
    pub trusted_proxies: crate::http::TrustedProxies,
    /// The header the trusted ingress names the client in: `x-forwarded-for` (Application Gateway,
    /// Front Door, most ingresses; `ip:port` entries are read) or `forwarded` (RFC 7239).
    #[arg(long, env = "CLIENT_IP_HEADER", value_enum, default_value_t = crate::http::ForwardHeader::XForwardedFor)]
    pub client_ip_header: crate::http::ForwardHeader,
    /// IPv6 clients are limited per network of this prefix length (one host usually holds a whole /64).
    #[arg(long, env = "IPV6_CLIENT_PREFIX", default_value_t = crate::http::rate_limit::DEFAULT_IPV6_PREFIX, value_parser = clap::value_parser!(u8).range(1..=128))]
    pub ipv6_client_prefix: u8,
}

impl GetcodeLimitArgs {
    /// The trusted ranges, reading the configured header.
    pub fn proxies(&self) -> crate::http::TrustedProxies {
        self.trusted_proxies.clone().reading(self.client_ip_header)
    }
}

/// A rate in requests per second: a finite number above 0.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate above 0 (requests per second)"
        )),
    }
}

/// [`positive_rate`], or 0 for no limit.
fn rate_or_zero(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => positive_rate(text).map_err(|e| format!("{e}, or 0 for no limit")),
    }
}

fn parse_trusted_proxies(text: &str) -> Result<crate::http::TrustedProxies, String> {
    crate::http::TrustedProxies::parse(text).map_err(|e| e.to_string())
}

/// The verification API for the sign-in service.
#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    /// Bearer key the sign-in service must send to issue, check and redeem codes; without it the
    /// sign-in API is off.
    #[arg(long, env = "VERIFY_API_KEY", hide_env_values = true)]
    pub verify_api_key: Option<Secret>,
    /// Answer checks and redeems that name no subject (the sample's unbound codes, from the public
    /// getcode). Off by default, so that a sign-in service that forgets the subject cannot be passed
    /// with a code anyone could ask for.
    #[arg(long, env = "ALLOW_UNBOUND_CODES", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unbound_codes: bool,
    /// Consecutive failed checks after which a subject's checks fail until reset or the window ends.
    #[arg(long, env = "VERIFY_MAX_FAILED_CHECKS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_max_failed_checks: u32,
    /// Wrong checks for a subject after which each of its valid codes is burned (the user must ask for
    /// a new code).
    #[arg(long, env = "VERIFY_MAX_WRONG_PER_CODE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_max_wrong_per_code: u32,
    /// How long a run of failed checks counts (and a lock lasts), in seconds.
    #[arg(long, env = "VERIFY_LOCKOUT_WINDOW_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub verify_lockout_window_seconds: u64,
    /// Verification requests per second allowed per client address.
    #[arg(long, env = "VERIFY_RATE_LIMIT_PER_SECOND", default_value_t = 20.0, value_parser = positive_rate)]
    pub verify_rate_limit_per_second: f64,
    /// Burst of verification requests allowed per client address.
    #[arg(long, env = "VERIFY_RATE_LIMIT_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_rate_limit_burst: u32,
}

impl VerifyArgs {
    /// The throttle these flags describe.
    pub fn throttle(&self) -> crate::verify::Throttle {
        crate::verify::Throttle {
            max_failures: self.verify_max_failed_checks,
            window: Duration::from_secs(self.verify_lockout_window_seconds),
            max_wrong_per_code: self.verify_max_wrong_per_code,
        }
    }
}

impl Default for VerifyArgs {
    fn default() -> Self {
        clap_defaults()
    }
}

impl Default for crate::verify::Throttle {
    fn default() -> Self {
        VerifyArgs::default().throttle()
    }
}

/// How the worker behaves.
#[derive(Clone, Debug, Args)]
pub struct WorkerTuning {
    /// Messages per receive (1–32).
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = crate::queue::MAX_BATCH, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::queue::MAX_BATCH)))]
    pub batch_size: u32,
    /// Seconds a received message stays invisible while it is handled.
    #[arg(long, env = "WORKER_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub lease_seconds: u64,
    /// Receives after which an expiry message that keeps failing goes to `<queue>-poison` (a live
    /// activation is always tried again: setting it aside would lose its code).
    #[arg(long, env = "MAX_DEQUEUE_COUNT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_dequeue_count: u32,
    /// Poll loops per worker process (while the queue is idle only the first polls; the others rest
    /// until it finds messages).
    #[arg(long, env = "WORKER_POLLERS", default_value = "4", value_parser = nonzero_count!(1..=64))]
    pub pollers: NonZeroUsize,
    /// Queue operations in flight at once within a batch.
    #[arg(long, env = "WORKER_MAX_IN_FLIGHT", default_value = "32", value_parser = nonzero_count!(1..=1024))]
    pub max_in_flight: NonZeroUsize,
    /// First wait after an empty receive, in milliseconds.
    #[arg(long, env = "WORKER_MIN_POLL_INTERVAL_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub min_poll_interval_ms: u64,
    /// Longest wait between receives of an idle queue, in milliseconds (bounds activation lag).
    #[arg(long, env = "WORKER_MAX_POLL_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub max_poll_interval_ms: u64,
    /// How often rows past their retention are deleted, in seconds (0: never).
    #[arg(long, env = "WORKER_SWEEP_INTERVAL_SECONDS", default_value_t = 60)]
    pub sweep_interval_seconds: u64,
    /// How long a row is kept after its expiry for inspection, in seconds (never less than the TTL).
    #[arg(long, env = "CODE_RETENTION_SECONDS", default_value_t = 3_600)]
    pub retention_seconds: u64,
    /// How far an activation's timestamp may lie after the queue's insertion time, in seconds (producer
    /// clock skew). A code is never valid past insertion + this + CODE_TTL_SECONDS; an activation dated
    /// later goes to the poison queue.
    #[arg(long, env = "CLOCK_SKEW_ALLOWANCE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub clock_skew_allowance_seconds: u64,
    /// How an activation is re-armed as its expiry message: `send` (send it, then delete the
    /// activation; roles Storage Queue Data Message Sender + Processor) or `update` (one Update Message
    /// call; role Storage Queue Data Contributor).
    #[arg(long, env = "WORKER_REARM", value_enum, default_value_t = Rearm::Send)]
    pub rearm: Rearm,
}

impl WorkerTuning {
    /// The worker settings these flags describe, for codes valid `ttl`; refused if the poll intervals
    /// contradict each other.
    pub fn settings(
        &self,
        encoding: MessageEncoding,
        ttl: &CodeTtlArgs,
    ) -> Result<WorkerSettings, ConfigError> {
        let poll_backoff = Backoff::new(
            Duration::from_millis(self.min_poll_interval_ms),
            Duration::from_millis(self.max_poll_interval_ms),
        )
        .map_err(|_| ConfigError::PollIntervals {
            min: self.min_poll_interval_ms,
            max: self.max_poll_interval_ms,
        })?;
        Ok(self.settings_with(poll_backoff, encoding, ttl))
    }

    fn settings_with(
        &self,
        poll_backoff: Backoff,
        encoding: MessageEncoding,
        ttl: &CodeTtlArgs,
    ) -> WorkerSettings {
        WorkerSettings {
            code_ttl: ttl.ttl(),
            batch_size: self.batch_size,
            lease: Duration::from_secs(self.lease_seconds),
            max_dequeue_count: self.max_dequeue_count,
            pollers: self.pollers,
            max_in_flight: self.max_in_flight,
            poll_backoff,
            encoding,
            rearm: self.rearm,
            retention: Duration::from_secs(self.retention_seconds),
            clock_allowance: Duration::from_secs(self.clock_skew_allowance_seconds),
            signing: None,
            sweep_interval: (self.sweep_interval_seconds > 0)
                .then(|| Duration::from_secs(self.sweep_interval_seconds)),
        }
    }
}

impl Default for WorkerTuning {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The poll backoff of `WORKER_MIN_POLL_INTERVAL_MS` and `WORKER_MAX_POLL_INTERVAL_MS`'s defaults
/// (a test checks that they agree), valid by construction.
const DEFAULT_POLL_BACKOFF: Backoff =
    match Backoff::new(Duration::from_millis(100), Duration::from_millis(1000)) {
        Ok(backoff) => backoff,
        Err(_) => panic!("the default poll intervals contradict each other"),
    };

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerTuning::default().settings_with(
            DEFAULT_POLL_BACKOFF,
            MessageEncoding::Text,
            &clap_defaults(),
        )
    }
}

/// `codewatch worker`.
#[derive(Clone, Debug, Args)]
pub struct WorkerArgs {
    /// Address of the worker's admin listener: `/healthz`, `/readyz`, `/metrics` (0.0.0.0:9090 in a container).
    #[arg(long, env = "ADMIN_LISTEN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub role: RoleArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tuning: WorkerTuning,
}

/// `codewatch number-api`.
#[derive(Clone, Debug, Args)]
pub struct NumberApiArgs {
    /// Address the stand-in listens on.
    #[arg(
        long = "listen",
        env = "NUMBER_API_LISTEN",
        default_value = "127.0.0.1:7071"
    )]
    pub listen: SocketAddr,
    /// The key callers must send in `x-functions-key`.
    #[arg(long = "key", env = "NUMBER_API_KEY", hide_env_values = true)]
    pub key: Secret,
}

/// `codewatch up`: `serve`'s and the worker's flags; without `THIRD_PARTY_API_ENDPOINT` the stand-in
/// number API runs in-process on a free port with a random key.
#[derive(Clone, Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub serve: ServeArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tuning: WorkerTuning,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_settings_defaults_are_the_flags_defaults() {
        let worker = WorkerSettings::default();
        assert_eq!(worker.code_ttl, Duration::from_secs(600));
        assert_eq!(worker.batch_size, crate::queue::MAX_BATCH);
        assert_eq!(worker.pollers.get(), 4);
        assert_eq!(worker.max_in_flight.get(), 32);
        assert_eq!(worker.sweep_interval, Some(Duration::from_secs(60)));
        let from_flags = WorkerTuning::default()
            .settings(MessageEncoding::Text, &clap_defaults())
            .unwrap();
        assert_eq!(worker.poll_backoff, from_flags.poll_backoff);
        let throttle = crate::verify::Throttle::default();
        assert_eq!(throttle.max_failures, 100);
        assert_eq!(throttle.window, Duration::from_secs(3600));
        assert_eq!(throttle.max_wrong_per_code, 5);
        let database = DatabaseArgs::at("sqlite:x.db");
        assert!(database.migrate_on_start && !database.force_migrate);
        assert_eq!(database.database_acquire_timeout_seconds, 10);
        let limits = crate::http::HttpLimits::default();
        assert_eq!(limits.max_connections.get(), 1024);
        assert_eq!(limits.request_timeout, Duration::from_secs(15));
    }

    #[test]
    fn probe_without_a_url_asks_the_admin_listener_on_loopback() {
        let target = |args: &[&str], env: Option<&str>| {
            let mut argv = vec!["codewatch", "probe"];
            argv.extend_from_slice(args);
            if let Some(admin) = env {
                argv.extend_from_slice(&["--admin-listen", admin]);
            }
            let Command::Probe(probe) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("probe")
            };
            probe.target().unwrap().to_string()
        };
        assert_eq!(
            target(&[], Some("0.0.0.0:9191")),
            "http://127.0.0.1:9191/readyz"
        );
        assert_eq!(target(&[], Some("[::]:9191")), "http://[::1]:9191/readyz");
        assert_eq!(
            target(&[], Some("10.0.0.5:9090")),
            "http://10.0.0.5:9090/readyz"
        );
        assert_eq!(
            target(&["http://127.0.0.1:7071/healthz"], Some("0.0.0.0:9191")),
            "http://127.0.0.1:7071/healthz"
        );
    }

    #[test]
    fn a_key_given_by_two_sources_is_refused_naming_them() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["codewatch", "serve"];
            argv.extend_from_slice(args);
            let Command::Serve(serve) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("serve")
            };
            serve
        };
        let both = serve(&[
            "--third-party-api-key",
            "k",
            "--key-vault-url",
            "https://v.vault.azure.net/",
        ]);
        assert_eq!(
            both.number_api.one_key_source(),
            Err(ConfigError::ConflictingSources {
                what: "the function key",
                given: "THIRD_PARTY_API_KEY, KEY_VAULT_URL".into()
            })
        );
        let text = both.number_api.one_key_source().unwrap_err().to_string();
        assert!(
            !text.contains("k,") && text.contains("set only one"),
            "{text}"
        );
        for one in [
            &["--third-party-api-key", "k"][..],
            &["--third-party-api-key-file", "/run/key"],
            &["--key-vault-url", "https://v.vault.azure.net/"],
            &[],
        ] {
            assert_eq!(serve(one).number_api.one_key_source(), Ok(()), "{one:?}");
        }
        let webhook = serve(&[
            "--delivery",
            "webhook",
            "--delivery-webhook-secret-file",
            "/run/hook",
            "--delivery-key-vault-url",
            "https://v.vault.azure.net/",
        ]);
        assert_eq!(
            webhook.check(),
            Err(ConfigError::ConflictingSources {
                what: "the webhook secret",
                given: "DELIVERY_WEBHOOK_SECRET_FILE, DELIVERY_KEY_VAULT_URL".into()
            })
        );
        // The vault may hold the other channel's secret: only the chosen channel's sources count.
        let smtp = serve(&[
            "--delivery",
            "smtp",
            "--delivery-webhook-secret-file",
            "/run/hook",
            "--delivery-key-vault-url",
            "https://v.vault.azure.net/",
        ]);
        assert_eq!(smtp.role.delivery.one_secret_source(), Ok(()));
        let signing = serve(&[
            "--message-signing-key-file",
            "/run/signing",
            "--message-signing-key-vault-url",
            "https://v.vault.azure.net/",
        ]);
        assert_eq!(
            signing.role.signing.one_key_source(),
            Err(ConfigError::ConflictingSources {
                what: "the message signing key",
                given: "MESSAGE_SIGNING_KEY_FILE, MESSAGE_SIGNING_KEY_VAULT_URL".into()
            })
        );
    }

    #[test]
    fn a_first_poll_wait_above_the_longest_is_refused_naming_both_settings() {
        let Command::Worker(worker) = Cli::try_parse_from([
            "codewatch",
            "worker",
            "--min-poll-interval-ms",
            "2000",
            "--max-poll-interval-ms",
            "1000",
        ])
        .unwrap()
        .command
        else {
            panic!("worker")
        };
        let refused = worker
            .tuning
            .settings(MessageEncoding::Text, &worker.role.ttl)
            .unwrap_err();
        assert_eq!(
            refused,
            ConfigError::PollIntervals {
                min: 2000,
                max: 1000
            }
        );
        let text = refused.to_string();
        assert!(
            text.contains("WORKER_MIN_POLL_INTERVAL_MS (2000)"),
            "{text}"
        );
        assert!(
            text.contains("WORKER_MAX_POLL_INTERVAL_MS (1000)"),
            "{text}"
        );
    }

    #[test]
    fn secure_by_default_no_unbound_checks_and_the_public_getcode_a_stated_choice() {
        let Command::Serve(serve) = Cli::try_parse_from(["codewatch", "serve"]).unwrap().command
        else {
            panic!("serve")
        };
        assert!(!serve.verify.allow_unbound_codes, "unbound checks are off");
        assert_eq!(
            serve.public_getcode(),
            Ok(true),
            "the sample's getcode is on unless turned off"
        );
        let Command::Serve(off) = Cli::try_parse_from([
            "codewatch",
            "serve",
            "--public-getcode",
            "false",
            "--allow-unbound-codes",
            "true",
        ])
        .unwrap()
        .command
        else {
            panic!("serve")
        };
        assert!(off.public_getcode() == Ok(false) && off.verify.allow_unbound_codes);
    }

    #[test]
    fn with_delivery_no_answer_carries_a_code_and_the_public_getcode_is_off() {
        let serve = |args: &[&str]| {
            let mut argv = vec!["codewatch", "serve"];
            argv.extend(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Serve(serve) => serve,
                _ => panic!("serve"),
            }
        };
        assert_eq!(serve(&["--delivery", "smtp"]).public_getcode(), Ok(false));
        assert_eq!(
            serve(&["--delivery", "webhook", "--public-getcode", "true"]).public_getcode(),
            Err(ConfigError::GetcodeWithDelivery)
        );
    }

    #[test]
    fn nonsense_values_are_refused_with_the_allowed_range() {
        for (flag, value) in [
            ("--code-ttl-seconds", "0"),
            ("--code-ttl-seconds", "-5"),
            ("--code-ttl-seconds", "604801"),
            ("--lease-seconds", "0"),
            ("--pollers", "0"),
            ("--pollers", "65"),
            ("--max-in-flight", "0"),
            ("--http-max-connections", "0"),
            ("--database-acquire-timeout-seconds", "0"),
        ] {
            let arg = format!("{flag}={value}");
            let err = Cli::try_parse_from(["codewatch", "worker", &arg]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("not in") || text.contains("invalid digit"),
                "{arg}: {text}"
            );
        }
        let err =
            Cli::try_parse_from(["codewatch", "serve", "--verify-rate-limit-per-second", "0"])
                .unwrap_err();
        assert!(err.to_string().contains("above 0"), "{err}");
    }

    #[test]
    fn database_and_queue_options_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "codewatch",
            "codes",
            "list",
            "--database-url",
            "sqlite:elsewhere.db",
            "--database-acquire-timeout-seconds",
            "2",
        ])
        .unwrap();
        let Command::Codes(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.database.database_url.expose(), "sqlite:elsewhere.db");
        assert_eq!(args.database.database_acquire_timeout_seconds, 2);
        assert!(Cli::try_parse_from(["codewatch", "queue", "stats", "--queue-name", "q"]).is_ok());
    }
}
