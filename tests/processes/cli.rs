//! The operator and on-call commands, run as the real binary: `codes`, `queue`, `smoke`.

use crate::common;

use chrono::{Duration, Utc};
use codewatch::domain::Code;
use codewatch::domain::Subject;
use codewatch::domain::{Issuance, IssuanceId};
use codewatch::message::{CodeMessage, MessageEncoding};
use codewatch::store::Activation;
use common::TestDb;
use common::process::{run, spawn_up};
use std::path::Path;
use std::process::Output;

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn activation(
    code: &str,
    issued_secs_ago: i64,
    ttl_secs: i64,
    subject: Option<&str>,
) -> Activation {
    let issued_at = Utc::now() - Duration::seconds(issued_secs_ago);
    Activation::new(
        Issuance {
            destination: None,
            id: IssuanceId::random(),
            code: Code::parse(code).unwrap(),
            issued_at,
            subject: subject.map(|s| Subject::parse(s).unwrap()),
        },
        issued_at + Duration::seconds(ttl_secs),
    )
}

/// A subject stored before format characters were refused, or a formula, as `codes list` shows it.
async fn codes_list_shows_spoofing_subjects_escaped_in_every_format(db: TestDb) {
    let store = db.database.store();
    let mut spoof = activation("Spf-1-Ooo", 10, 60, None);
    spoof.issuance.subject = Some(Subject::from_stored("admin\u{202e}gpj.exe".to_owned()));
    let mut formula = activation("Fml-2-Ooo", 10, 60, None);
    formula.issuance.subject = Some(Subject::from_stored("=HYPERLINK(\"http://x\")".to_owned()));
    store.activate(&[spoof, formula], Utc::now()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", db.url.clone())];
    for format in ["table", "json", "csv"] {
        let out = run(dir.path(), &["codes", "list", "--format", format], &env, "");
        assert!(out.status.success(), "{format}");
        let shown = text(&out);
        assert!(
            !shown.contains('\u{202e}'),
            "{format} printed the override raw: {shown:?}"
        );
        assert!(
            shown.contains("admin\\u"),
            "{format} shows it escaped: {shown}"
        );
        if format == "csv" {
            assert!(shown.contains("\"'=HYPERLINK("), "a live formula: {shown}");
        }
    }
}

async fn codes_list_show_revoke_and_unlock(db: TestDb) {
    let store = db.database.store();
    let valid = activation("Val-1-Idd", 10, 60, Some("alice"));
    let expired = activation("Exp-2-Ird", 30, 20, None);
    store
        .activate(std::slice::from_ref(&valid), Utc::now())
        .await
        .unwrap();
    store
        .activate(std::slice::from_ref(&expired), expired.issuance.issued_at)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [("DATABASE_URL", db.url.clone())];
    let codes = |args: &[&str]| run(dir.path(), &[&["codes"], args].concat(), &env, "");

    let json: serde_json::Value =
        serde_json::from_str(&text(&codes(&["list", "--format", "json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(
        (json[0]["code"].as_str(), json[0]["subject"].as_str()),
        (Some("Val-1-Idd"), Some("alice"))
    );
    let csv = text(&codes(&["list", "--all", "--format", "csv"]));
    assert!(
        csv.starts_with("code,state,subject,issued_at,expires_at"),
        "{csv}"
    );
    assert!(
        csv.contains("Val-1-Idd,valid,alice,") && csv.contains("Exp-2-Ird,expired,,"),
        "{csv}"
    );
    let table = text(&codes(&["list"]));
    assert!(
        table.contains("Val-1-Idd") && !table.contains("Exp-2-Ird") && table.contains("(1 rows)"),
        "{table}"
    );

    let shown = codes(&["show", "Exp-2-Ird"]);
    assert!(shown.status.success() && text(&shown).contains("expired"));
    assert!(!codes(&["show", "Non-3-Eee"]).status.success());
    assert!(!codes(&["show", "not a code"]).status.success());

    let revoked = codes(&["revoke", "Val-1-Idd"]);
    assert!(
        revoked.status.success() && text(&revoked).contains("revoked 1"),
        "{}",
        text(&revoked)
    );
    assert!(text(&codes(&["list"])).contains("(0 rows)"));
    assert!(
        text(&codes(&["revoke", "Val-1-Idd"])).contains("revoked 0"),
        "idempotent"
    );

    let alice = Subject::parse("alice").unwrap();
    let window = Utc::now() - Duration::hours(1);
    store
        .record_failure(
            &alice,
            Utc::now(),
            &codewatch::store::Gate {
                window_start: window,
                max_failures: 100,
                max_wrong_per_code: 5,
            },
        )
        .await
        .unwrap();
    assert!(codes(&["unlock", "alice"]).status.success());
    assert_eq!(store.failures(&alice, window).await.unwrap(), 0);
}

#[tokio::test]
async fn codes_commands_on_sqlite() {
    codes_list_show_revoke_and_unlock(common::sqlite().await).await;
}

#[tokio::test]
async fn codes_commands_on_postgres() {
    codes_list_show_revoke_and_unlock(common::postgres().await).await;
}

#[tokio::test]
async fn codes_list_escapes_on_sqlite() {
    codes_list_shows_spoofing_subjects_escaped_in_every_format(common::sqlite().await).await;
}

#[tokio::test]
async fn codes_list_escapes_on_postgres() {
    codes_list_shows_spoofing_subjects_escaped_in_every_format(common::postgres().await).await;
}

#[tokio::test]
async fn queue_stats_peek_clear_and_requeue_poison_on_azurite() {
    let name = common::queue_name();
    let queues = common::azure_queues_named(&name).await;
    let issuance = Issuance {
        destination: None,
        id: IssuanceId::random(),
        code: Code::parse("Pee-4-Kkk").unwrap(),
        issued_at: Utc::now(),
        subject: None,
    };
    let body = CodeMessage::Activate(issuance)
        .encode(MessageEncoding::Base64)
        .unwrap();
    for b in [body.as_str(), "garbage"] {
        queues
            .main
            .send(b, std::time::Duration::ZERO)
            .await
            .unwrap();
    }
    // Two unusable ones, and two whose code is dated by its insertion time (a bare code, and JSON
    // without a timestamp): requeued, those would start a new lifetime.
    for b in [
        "bad one",
        "bad two",
        "Old-9-Ccc",
        r#"{"code": "Old-8-Ddd"}"#,
    ] {
        queues
            .poison
            .send(b, std::time::Duration::ZERO)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", name.clone()),
        (
            "DATABASE_URL",
            format!("sqlite:{}", dir.path().join("q.db").display()),
        ),
    ];
    let queue =
        |args: &[&str], stdin: &str| run(dir.path(), &[&["queue"], args].concat(), &env, stdin);

    let stats = text(&queue(&["stats"], ""));
    assert!(
        stats.contains(&format!("{name} ")) && stats.contains("~2 messages"),
        "{stats}"
    );
    let peek = text(&queue(&["peek", "-n", "10"], ""));
    assert!(peek.contains("activate Pee-4-Kkk issued"), "{peek}");
    assert!(
        peek.contains("unusable") && peek.contains("garbage"),
        "{peek}"
    );

    let refused = queue(&["clear", "--poison"], "n\n");
    assert!(!refused.status.success());
    assert_eq!(
        queues.poison.approximate_len().await.unwrap(),
        4,
        "nothing cleared without a yes"
    );

    let moved = queue(&["requeue-poison"], "");
    let said = text(&moved);
    assert!(
        said.contains("moved 2") && said.contains("left 2"),
        "{said}"
    );
    assert!(said.contains("new lifetime"), "the reason: {said}");
    assert_eq!(queues.poison.approximate_len().await.unwrap(), 2);
    let left: Vec<String> = queues
        .poison
        .peek(32)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert!(left.contains(&"Old-9-Ccc".to_owned()), "{left:?}");
    assert_eq!(queues.main.approximate_len().await.unwrap(), 4);

    assert!(queue(&["clear", "--yes"], "").status.success());
    assert_eq!(queues.main.approximate_len().await.unwrap(), 0);
}

/// `STORAGE_QUEUE_SHARDS=3`: every `queue` command covers each shard and its own poison queue.
#[tokio::test]
async fn queue_commands_cover_every_shard() {
    let name = common::queue_name();
    let third = common::azure_queues_named(&format!("{name}-2")).await;
    third
        .poison
        .send("bad", std::time::Duration::ZERO)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", name.clone()),
        ("STORAGE_QUEUE_SHARDS", "3".to_owned()),
    ];
    let queue = |args: &[&str]| run(dir.path(), &[&["queue"], args].concat(), &env, "");
    let stats = text(&queue(&["stats"]));
    for q in [
        name.clone(),
        format!("{name}-poison"),
        format!("{name}-1"),
        format!("{name}-1-poison"),
        format!("{name}-2"),
        format!("{name}-2-poison"),
    ] {
        assert!(stats.contains(&format!("{q} ")), "{q} in {stats}");
    }
    let moved = text(&queue(&["requeue-poison"]));
    assert!(
        moved.contains(&format!(
            "moved 1 message(s) from {name}-2-poison to {name}-2"
        )),
        "{moved}"
    );
    assert_eq!(third.main.approximate_len().await.unwrap(), 1);
}

#[tokio::test]
async fn smoke_gets_a_code_from_a_running_serve_and_sees_it_become_valid() {
    let dir = tempfile::tempdir().unwrap();
    let key = "smoke-test-key".to_owned();
    let (mut up, producer) = spawn_up(dir.path(), &[("VERIFY_API_KEY", key.clone())]);

    let smoke = run(
        dir.path(),
        &["smoke", "--url", &producer],
        &[("VERIFY_API_KEY", key)],
        "",
    );
    let out = text(&smoke);
    assert!(
        smoke.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&smoke.stderr)
    );
    assert!(
        out.contains("issued") && out.contains("valid    after"),
        "{out}"
    );

    let wrong = run(
        dir.path(),
        &["smoke", "--url", &producer, "--timeout-seconds", "1"],
        &[("VERIFY_API_KEY", "nope".into())],
        "",
    );
    assert!(
        !wrong.status.success(),
        "a wrong key must fail the smoke test"
    );
    assert!(up.terminate().success());
}

/// Under `RUST_BACKTRACE=1` (as many hosts set it) errors capture no backtrace: libraries build and
/// discard errors on the success path (the Azure SDK, for an absent header, on every request), and each
/// capture cost CPU. Seen from outside: a failing command's error has no stack trace, its text does.
#[test]
fn errors_capture_no_backtrace_even_under_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // An unreachable server is tried again until the acquire timeout: 1 s instead of 10.
    let unreachable = [
        "migrate",
        "--database-url",
        "postgres://u@127.0.0.1:1/db",
        "--database-acquire-timeout-seconds",
        "1",
    ];
    let failed = run(
        dir.path(),
        &unreachable,
        &[("RUST_BACKTRACE", "1".to_owned())],
        "",
    );
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(err.contains("unreachable"), "{err}");
    assert!(!err.contains("Stack backtrace"), "{err}");
    let chosen = run(
        dir.path(),
        &unreachable,
        &[
            ("RUST_BACKTRACE", "1".to_owned()),
            ("RUST_LIB_BACKTRACE", "1".to_owned()),
        ],
        "",
    );
    let err = String::from_utf8_lossy(&chosen.stderr);
    assert!(
        err.contains("Stack backtrace"),
        "an operator's RUST_LIB_BACKTRACE wins: {err}"
    );
}

#[test]
fn start_up_errors_name_what_failed_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let refused = common::process::run(
        dir.path(),
        &[
            "migrate",
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "--database-acquire-timeout-seconds",
            "1",
        ],
        &[],
        "",
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("database at 127.0.0.1:1 unreachable"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let missing = common::process::run(
        dir.path(),
        &[
            "migrate",
            "--database-url",
            "sqlite:/no/such/folder/codes.db",
        ],
        &[],
        "",
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("cannot open SQLite database /no/such/folder/codes.db"),
        "{err}"
    );

    // A function key from both a literal and Key Vault is refused before anything is contacted,
    // naming both settings and neither value.
    let both_keys = common::process::run(
        dir.path(),
        &["serve"],
        &[
            (
                "THIRD_PARTY_API_ENDPOINT",
                "http://127.0.0.1:1/api/RandomNumber".to_owned(),
            ),
            ("THIRD_PARTY_API_KEY", "literal-key-hunter2".to_owned()),
            ("KEY_VAULT_URL", "https://v.vault.azure.net/".to_owned()),
        ],
        "",
    );
    let err = String::from_utf8_lossy(&both_keys.stderr);
    assert!(!both_keys.status.success());
    assert!(
        err.contains(
            "the function key is given by more than one source (THIRD_PARTY_API_KEY, KEY_VAULT_URL)"
        ),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    let azurite_missing = common::process::run(
        dir.path(),
        &["queue", "stats"],
        &[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true".to_owned(),
        )],
        "",
    );
    let err = String::from_utf8_lossy(&azurite_missing.stderr);
    assert!(
        err.contains("queue service at http://127.0.0.1:10001/devstoreaccount1")
            && err.contains("Azurite is expected"),
        "{err}"
    );
}

#[test]
fn tools_never_create_a_database_that_did_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["codes", "list"][..],
        &["codes", "show", "abc-1-def"],
        &["queue", "stats"],
    ] {
        let out = run(dir.path(), args, &[], "");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("codewatch.db") && err.contains("no such file"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("codewatch.db").exists());
}

#[test]
fn a_closed_stdout_ends_a_tool_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["migrate"], &[], "").status.success());
    let mut child = std::process::Command::new(common::process::BIN)
        .args(["queue", "stats"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[tokio::test]
async fn up_keeps_its_generated_verify_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("codewatch.db.verify-key");
    let (mut first, _) = spawn_up(dir.path(), &[]);
    let key = std::fs::read_to_string(&key_file).expect("the key is kept beside the database");
    assert!(first.terminate().success());
    let (mut second, base) = spawn_up(dir.path(), &[]);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    let status = reqwest::Client::new()
        .post(format!("{base}/api/v1/codes/check"))
        .bearer_auth(key.trim())
        .json(&serde_json::json!({ "code": "abc-1-def", "subject": "a" }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "the copied key still works after the restart");
    assert!(second.terminate().success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file is readable by its owner only"
        );
    }
}

/// Whether this test runs as root (then it can act as another user).
fn root() -> bool {
    run(Path::new("/"), &["--version"], &[], "")
        .status
        .success()
        && std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test]
async fn up_keeps_its_database_and_key_owner_only_under_the_usual_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut up, base) = common::process::spawn_up_after(dir.path(), &[], "umask 022");
    // A code issued, so that the write-ahead log holds one.
    assert_eq!(
        reqwest::get(format!("{base}/api/v1/getcode"))
            .await
            .unwrap()
            .status(),
        200
    );
    let files = [
        "codewatch.db",
        "codewatch.db-wal",
        "codewatch.db-shm",
        "codewatch.db.verify-key",
    ];
    for name in files {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is {:o}", mode & 0o777);
    }
    if root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(dir.path().join("codewatch.db"))
            .output()
            .unwrap();
        assert!(!other.status.success(), "another user read the database");
    }
    assert!(up.terminate().success());
    // A database others may read, from before: one warning at start.
    let db = dir.path().join("codewatch.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (mut again, _) = spawn_up(dir.path(), &[]);
    assert!(again.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert_eq!(log.matches("readable by other users").count(), 1, "{log}");
}

#[tokio::test]
async fn a_planted_or_shared_key_file_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("codewatch.db.verify-key");
    std::fs::write(&key, "known-to-the-attacker").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = common::process::run_within(
        dir.path(),
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        20,
    );
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("writable by group or others") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(!said.contains("known-to-the-attacker"), "{said}");

    let function_key = dir.path().join("function.key");
    std::fs::write(&function_key, "fn-key").unwrap();
    std::fs::set_permissions(&function_key, std::fs::Permissions::from_mode(0o664)).unwrap();
    let env = [
        (
            "THIRD_PARTY_API_ENDPOINT",
            "http://127.0.0.1:9/api/RandomNumber".to_owned(),
        ),
        (
            "THIRD_PARTY_API_KEY_FILE",
            function_key.display().to_string(),
        ),
        ("VERIFY_API_KEY", "v".to_owned()),
    ];
    let refused = common::process::run_within(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &env,
        20,
    );
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("writable by group or others"), "{said}");

    if root() {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let chown = std::process::Command::new("chown")
            .arg("nobody")
            .arg(&key)
            .status()
            .unwrap();
        assert!(chown.success());
        let refused = run(
            dir.path(),
            &[
                "up",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[],
            "",
        );
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(!refused.status.success(), "{said}");
        assert!(said.contains("planted"), "{said}");
    }
}

#[tokio::test]
async fn a_listener_address_already_taken_refuses_the_start_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let at = format!("127.0.0.1:{port}");
    for (args, setting) in [
        (
            vec!["up", "--listen", &at, "--admin-listen", "127.0.0.1:0"],
            "LISTEN_ADDR",
        ),
        (
            vec!["up", "--listen", "127.0.0.1:0", "--admin-listen", &at],
            "ADMIN_LISTEN_ADDR",
        ),
        (vec!["worker", "--admin-listen", &at], "ADMIN_LISTEN_ADDR"),
    ] {
        let refused = common::process::run_within(dir.path(), &args, &[], 20);
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(!refused.status.success(), "{args:?}: {said}");
        assert!(
            said.contains("in use") && said.contains(setting) && said.contains(&port),
            "{args:?}: {said}"
        );
    }
}
