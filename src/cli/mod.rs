//! The subcommands: wire configuration to the library and run. `anyhow` lives here and in `main` only.

/// Writes a line to standard output and returns the `io::Result`: a closed pipe (`| head -1`) is an
/// error the binary's edge treats as a clean end, never a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// [`say!`] without the newline (and flushed, for a prompt).
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        write!(out, $($arg)*).and_then(|()| out.flush())
    }};
}

mod app;
mod codes;
mod delivery;
pub mod progress;
mod queue;
mod services;
mod smoke;
mod wiring;

pub use app::{Application, Ports, Settings};

use crate::backends::Database;
use crate::config::{Cli, Command, LogFormat};
use anyhow::{Context, Result};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Sets up logging: `RUST_LOG` for the level (default `info`), text or JSON lines on stderr, the
/// last warnings and errors kept for the status page ([`crate::ops::recent`]), and with an OTLP
/// endpoint every span sent as an OpenTelemetry span ([`crate::telemetry`]). Keep what it returns
/// until the end: dropping it sends the last spans.
pub fn init_tracing(
    format: LogFormat,
    otlp_endpoint: Option<&url::Url>,
) -> Result<crate::telemetry::Telemetry, crate::telemetry::TelemetryError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(move || OneLine {
            inner: std::io::stderr(),
            ansi,
        })
        .with_ansi(ansi);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let (telemetry, traces) = match otlp_endpoint {
        Some(endpoint) => {
            let (telemetry, tracer) = crate::telemetry::start(endpoint)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false);
            (telemetry, Some(layer))
        }
        None => (crate::telemetry::Telemetry::off(), None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(crate::ops::recent::RecentProblems::default())
        .with(traces)
        .init();
    Ok(telemetry)
}

/// Writes each formatted log event as one line: a control character inside it (a newline in an error
/// text from a library, say) is escaped, so nothing can start a forged line. The formatter hands over
/// one whole event per `write_all`; its final newline is kept. Escape sequences pass only when colours
/// are on (a terminal).
pub struct OneLine<W> {
    inner: W,
    ansi: bool,
}

impl<W: std::io::Write> OneLine<W> {
    /// Wraps `inner`; `ansi` lets colour escape sequences through.
    pub fn new(inner: W, ansi: bool) -> Self {
        Self { inner, ansi }
    }
}

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let (body, newline) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, true),
            None => (buf, false),
        };
        if !body.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
            return self.inner.write_all(buf);
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                b'\t' => line.push(b),
                0x1b if self.ansi => line.push(b),
                b if b.is_ascii_control() => {
                    line.extend_from_slice(format!("\\x{b:02x}").as_bytes())
                }
                b => line.push(b),
            }
        }
        if newline {
            line.push(b'\n');
        }
        self.inner.write_all(&line)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Whether `error` is standard output closed under us (`codewatch queue stats | head -1`): the reader
/// has what it wanted, so that is a clean end.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the chosen subcommand to its end.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => services::up(args).await,
        Command::Serve(args) => services::serve(args).await,
        Command::Worker(args) => services::worker(args).await,
        Command::NumberApi(args) => services::number_api(args).await,
        Command::Migrate(mut args) => {
            args.force_migrate = true;
            Database::open(&args)
                .await
                .context("migrating the database")?;
            say!(
                "migrations applied to {}",
                display_database_url(args.database_url.expose())
            )?;
            Ok(())
        }
        Command::Codes(args) => codes::run(args).await,
        Command::Queue(args) => queue::run(args).await,
        Command::Smoke(args) => smoke::run(args).await,
        Command::Probe(args) => {
            let url = args.target()?;
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(args.timeout_seconds))
                .build()?;
            let status = http
                .get(url.clone())
                .send()
                .await
                .context("probe failed")?
                .status();
            anyhow::ensure!(status.is_success(), "{url} answered {status}");
            Ok(())
        }
    }
}

/// Serves `router` on `listener` with `limits` (each client's address available to handlers) until
/// `cancel` fires, then lets requests in flight finish.
pub(crate) fn spawn_http(
    listener: TcpListener,
    router: Router,
    limits: crate::http::HttpLimits,
    cancel: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(crate::http::server::serve(listener, router, limits, cancel))
}

/// A database URL without its password, for printing.
pub fn display_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    #[test]
    fn a_log_event_stays_one_line_whatever_it_holds() {
        let mut out = super::OneLine::new(Vec::new(), false);
        out.write_all(b"WARN error=bad\nINFO forged \x1b[2J\r\n")
            .unwrap();
        out.write_all(b"INFO plain\ttab\n").unwrap();
        assert_eq!(
            String::from_utf8(out.inner).unwrap(),
            "WARN error=bad\\nINFO forged \\x1b[2J\\r\nINFO plain\ttab\n"
        );
    }
    #[test]
    fn database_urls_are_printed_without_their_password() {
        assert_eq!(
            super::display_database_url("postgres://u:hunter2@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            super::display_database_url("sqlite:codewatch.db"),
            "sqlite:codewatch.db"
        );
    }
}
