//! A real SMTP server for the delivery tests: aiosmtpd (tests/python/smtp_sink.py, from the Python
//! tools' venv) keeping each mail it accepts as a file; it can refuse or answer slowly.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use tempfile::TempDir;

/// The venv with the Python tools (tools/openapi/requirements.txt): `CODEWATCH_OPENAPI_VENV`, set by
/// scripts/test.sh, or target/openapi-venv.
pub fn tools_venv() -> PathBuf {
    let venv = std::env::var("CODEWATCH_OPENAPI_VENV").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/openapi-venv"),
        PathBuf::from,
    );
    assert!(
        venv.join("bin/python").exists(),
        "no venv with the Python tools at {}: run scripts/test.sh, or python3 -m venv {0} && {0}/bin/pip \
         install -r tools/openapi/requirements.txt",
        venv.display()
    );
    venv
}

/// A running SMTP sink; stopped when dropped.
pub struct SmtpSink {
    child: Child,
    dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// A mail the sink accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope's recipients.
    pub to: Vec<String>,
    /// The whole message: headers and body.
    pub data: String,
}

impl Mail {
    /// The code of a sign-in mail (the line `Your sign-in code is …`).
    pub fn sign_in_code(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Your sign-in code is "))
            .unwrap_or_else(|| panic!("no code in the mail:\n{}", self.data))
            .trim()
            .to_owned()
    }
}

/// Starts `tests/python/<script>` with `args` in the tools' venv and reads the `{"port": N}` line it
/// prints once it listens: the process and the port.
pub fn spawn_listening_tool(script: &str, args: &[&std::ffi::OsStr]) -> (Child, u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut child = Command::new(tools_venv().join("bin/python"))
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
    (child, port)
}

impl SmtpSink {
    /// A sink that accepts every mail.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A sink with smtp_sink.py's options, e.g. `["--refuse-rcpt", "550 5.1.1 no such user"]`.
    pub fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![std::ffi::OsStr::new("--dir"), dir.path().as_os_str()];
        args.extend(options.iter().map(std::ffi::OsStr::new));
        let (child, port) = spawn_listening_tool("smtp_sink.py", &args);
        Self { child, dir, port }
    }

    /// `SMTP_URL` for it (plain SMTP on loopback).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The mails accepted so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
                Mail {
                    to: v["to"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect(),
                    data: v["data"].as_str().unwrap().to_owned(),
                }
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SMTP_URL` of a loopback port where nothing listens (an SMTP server that is down).
pub fn nothing_listening() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("smtp://127.0.0.1:{port}")
}
