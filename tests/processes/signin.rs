//! The sign-in contract as a sign-in service's team meets it: `codewatch up` with the sign-in API on a
//! listener of its own, each served OpenAPI document validated with `openapi-spec-validator`, a Python
//! client generated from each with `openapi-python-client`, and that client driving issue → check →
//! redeem (tests/python/signin_contract.py), then the README's Python example, on SQLite and on
//! PostgreSQL. At debug level, no code it saw appears in the log or in the metrics.
//!
//! The Python tools are pinned in tools/openapi/requirements.txt; scripts/test.sh installs them in
//! target/openapi-venv (or CODEWATCH_OPENAPI_VENV).

use crate::common;

use common::process::spawn_up_with_verify;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

const KEY: &str = "signin-contract-key";

/// Runs `command`, which must succeed; its standard output.
fn succeed(command: &mut Command, what: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let (out, err) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    assert!(status.success(), "{what} failed:\n{out}\n{err}");
    out.into_owned()
}

/// The document a listener serves.
async fn document(base: &str) -> String {
    reqwest::get(format!("{base}/api/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The two served documents, validated, and the Python packages generated from them: done once per
/// test process for each pair of documents (the SQLite and PostgreSQL runs serve the same ones, and
/// generating is the slowest step); the folder to put on `PYTHONPATH`.
fn validated_clients(venv: &Path, public_doc: String, signin_doc: String) -> PathBuf {
    static DONE: Mutex<Vec<([String; 2], PathBuf)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let docs = [public_doc, signin_doc];
    if let Some((_, clients)) = done.iter().find(|(seen, _)| *seen == docs) {
        return clients.clone();
    }
    let clients = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "signin-clients-{}-{}",
        std::process::id(),
        done.len()
    ));
    let _ = std::fs::remove_dir_all(&clients);
    std::fs::create_dir_all(&clients).unwrap();
    let [public, signin] = ["public", "signin"].map(|name| clients.join(format!("{name}.json")));
    std::fs::write(&public, &docs[0]).unwrap();
    std::fs::write(&signin, &docs[1]).unwrap();
    succeed(
        Command::new(venv.join("bin/openapi-spec-validator"))
            .arg(&public)
            .arg(&signin),
        "openapi-spec-validator",
    );
    generate(venv, &public, &clients, "codewatch_public");
    generate(venv, &signin, &clients, "codewatch_signin");
    done.push((docs, clients.clone()));
    clients
}

/// Generates the Python package `package` from the document at `spec`, in `dir`.
fn generate(venv: &Path, spec: &Path, dir: &Path, package: &str) {
    let config = dir.join("generator.yaml");
    // No formatter run after generating: the venv has none, and the code is only imported.
    std::fs::write(&config, "post_hooks: []\n").unwrap();
    succeed(
        Command::new(venv.join("bin/openapi-python-client"))
            .args(["generate", "--meta", "none", "--overwrite", "--path"])
            .arg(spec)
            .arg("--config")
            .arg(&config)
            .arg("--output-path")
            .arg(dir.join(package)),
        &format!("generating {package}"),
    );
}

#[tokio::test]
async fn on_sqlite_the_served_documents_are_valid_and_a_generated_client_signs_a_user_in_leaking_no_code()
 {
    // The embedded queue, in the same SQLite file.
    signin_contract(common::sqlite().await, vec![]).await;
}

#[tokio::test]
async fn on_postgresql_the_served_documents_are_valid_and_a_generated_client_signs_a_user_in_leaking_no_code()
 {
    // PostgreSQL has no embedded queue: Azurite's.
    let queue = vec![
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", common::queue_name()),
    ];
    signin_contract(common::postgres().await, queue).await;
}

/// `up` on `db` (and the queue `queue` names), driven by the generated clients and the README example.
async fn signin_contract(db: common::TestDb, queue: Vec<(&'static str, String)>) {
    let venv = common::smtp::tools_venv();
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("VERIFY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("VERIFY_API_KEY", KEY.to_owned()),
        ("WORKER_MAX_POLL_INTERVAL_MS", "100".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    env.extend(queue);
    let (mut up, public, admin, signin) = spawn_up_with_verify(dir.path(), &env);
    let clients = validated_clients(&venv, document(&public).await, document(&signin).await);

    let python = |script: &Path, what: &str| {
        succeed(
            Command::new(venv.join("bin/python"))
                .arg(script)
                .env("PYTHONPATH", &clients)
                .env("CODEWATCH_URL", &public)
                .env("CODEWATCH_SIGNIN_URL", &signin)
                .env("VERIFY_API_KEY", KEY),
            what,
        )
    };
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/signin_contract.py");
    let mut out = python(&contract, "the generated client's sign-in");
    assert!(out.contains("signin contract: ok"), "{out}");
    let example = dir.path().join("readme_example.py");
    std::fs::write(
        &example,
        common::readme_block("The sign-in service's side, in Python", "python"),
    )
    .unwrap();
    out += &python(&example, "the README's Python example");
    assert!(out.contains("signed in as alice"), "{out}");

    // Every code issued in the run: the contract's (which it printed) and the README example's.
    let codes: Vec<String> = db
        .database
        .store()
        .list(true, chrono::Utc::now(), 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.code.to_string())
        .collect();
    for printed in out.lines().filter_map(|l| l.strip_prefix("CODE ")) {
        assert!(codes.iter().any(|c| c == printed), "{printed} was recorded");
    }
    assert!(codes.len() >= 3, "{codes:?}");
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(up.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert!(log.contains("DEBUG"), "the log was at debug level");
    for code in &codes {
        let number = code.split('-').nth(1).unwrap();
        assert!(!log.contains(code), "{code} in the log");
        assert!(!metrics.contains(code), "{code} in the metrics");
        assert!(
            !metrics.contains(&format!("-{number}-")),
            "{code}'s number in the metrics"
        );
    }
    assert!(
        metrics.contains("route=\"/api/v1/codes/redeem\""),
        "the routes are labelled by their template"
    );
}

/// The sign-in example (examples/signin: Flask, aiosmtpd, the generated client) against `codewatch up`
/// with DELIVERY=smtp, in headless Chromium through Selenium (tests/python/signin_browser.py): log in,
/// read the code in the demo mailbox, type it, signed in; five wrong codes; an expired code. Each
/// step's screenshot is kept in target/screenshots/signin.
#[test]
fn the_sign_in_example_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/screenshots/signin");
    let _ = std::fs::remove_dir_all(&shots);
    let out = succeed(
        Command::new(common::smtp::tools_venv().join("bin/python"))
            .arg(root.join("tests/python/signin_browser.py"))
            .arg("--codewatch")
            .arg(common::process::BIN)
            .arg("--screenshots")
            .arg(&shots),
        "the sign-in example in Chromium",
    );
    for step in [
        "login",
        "code-sent",
        "mailbox",
        "signed-in",
        "five-wrong-codes",
        "expired",
    ] {
        assert!(
            out.contains(&format!("-{step}.png")),
            "no screenshot of {step}: {out}"
        );
    }
}
