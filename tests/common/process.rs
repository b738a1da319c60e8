//! Running the real `codewatch` binary from tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_codewatch");

/// A child process, stopped with SIGTERM by [`Proc::terminate`] or killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Sends SIGTERM without waiting.
    pub fn signal(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
    }

    /// The exit status, if the process ends within `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits (up to 25 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal();
        self.wait_for(Duration::from_secs(25))
            .expect("process did not stop after SIGTERM")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// The binary in `dir` with a clean environment: only `PATH` and `env`.
fn bare(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The binary in `dir` with a clean environment (only `PATH` and `env`), stderr to `dir/log`.
pub fn codewatch(dir: &Path, args: &[&str], env: &[(&str, String)], log: &str) -> Command {
    let mut cmd = bare(dir, args, env);
    cmd.stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap());
    cmd
}

/// `codewatch up` on ports the system picks, in `dir` (stderr to `dir/up.log`); the process and the
/// producer's base URL it printed.
pub fn spawn_up(dir: &Path, env: &[(&str, String)]) -> (Proc, String) {
    let (proc, base, _) = spawn_up_with_admin(dir, env);
    (proc, base)
}

/// [`spawn_up`], and the base URL of its admin listener (`/healthz`, `/readyz`, `/metrics`).
pub fn spawn_up_with_admin(dir: &Path, env: &[(&str, String)]) -> (Proc, String, String) {
    let (proc, base, admin, _) = spawn_up_from(codewatch(dir, &UP_ARGS, env, "up.log"));
    (proc, base, admin)
}

/// [`spawn_up_with_admin`], and the base URL of its verification API (apart from the producer's
/// when `VERIFY_LISTEN_ADDR` is set, e.g. to `127.0.0.1:0`).
pub fn spawn_up_with_verify(dir: &Path, env: &[(&str, String)]) -> (Proc, String, String, String) {
    spawn_up_from(codewatch(dir, &UP_ARGS, env, "up.log"))
}

/// `up` on ports the system picks.
const UP_ARGS: [&str; 5] = [
    "up",
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
];

/// [`spawn_up`] with at most `fds` open file descriptors (`ulimit -n`).
pub fn spawn_up_with_fd_limit(dir: &Path, env: &[(&str, String)], fds: u32) -> (Proc, String) {
    spawn_up_after(dir, env, &format!("ulimit -n {fds}"))
}

/// [`spawn_up`] started by `sh` after the shell command `setup` (such as `umask 022`).
pub fn spawn_up_after(dir: &Path, env: &[(&str, String)], setup: &str) -> (Proc, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{setup} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(UP_ARGS)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("up.log")).unwrap());
    let (proc, base, _, _) = spawn_up_from(cmd);
    (proc, base)
}

/// Starts `up` and reads the base URLs it prints: producer, admin, verification.
fn spawn_up_from(mut cmd: Command) -> (Proc, String, String, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let proc = Proc(child);
    let mut url_after = |label: &str| {
        lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                l.trim()
                    .strip_prefix(label)
                    .and_then(|u| u.split_whitespace().next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("up prints the {label} URL"))
    };
    let base = url_after("producer")
        .trim_end_matches("/api/v1/getcode")
        .trim_end_matches('/')
        .to_owned();
    let admin = url_after("admin").trim_end_matches("/healthz").to_owned();
    assert_eq!(url_after("status"), format!("{admin}/status"));
    let verify = url_after("sign-in")
        .trim_end_matches("/api/v1/codes")
        .to_owned();
    // Keep reading, so that the process never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (proc, base, admin, verify)
}

/// Runs the binary to its end with `stdin` as input; its status, stdout and stderr.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, String)], stdin: &str) -> Output {
    let mut child = bare(dir, args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// [`run`] without input, ended (by `timeout`, exit status 124) if it has not exited within `secs`:
/// for a process that should refuse to start, and would otherwise run on.
pub fn run_within(dir: &Path, args: &[&str], env: &[(&str, String)], secs: u32) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The port a process bound for `field` (a listener given as `127.0.0.1:0`), read from the log line
/// that names it (`field=127.0.0.1:NNNN` as text, `"field":"127.0.0.1:NNNN"` as JSON), waiting up to
/// 20 s for it. Race-free: the process binds port 0 and says which port it got.
pub fn bound_port(log: &Path, field: &str) -> u16 {
    let keys = [
        format!("{field}=127.0.0.1:"),
        format!("\"{field}\":\"127.0.0.1:"),
    ];
    super::port_in_log(
        log,
        &keys,
        &format!("the {field} listener"),
        Duration::from_secs(20),
    )
}
