//! Delivery through the binary: `codewatch up` with DELIVERY=smtp sends each code to its user through a
//! real SMTP server (aiosmtpd); the issuing answer carries no code, the public getcode is off, the code
//! from the mail signs the user in, `codes show` says it was delivered, and at debug level neither the
//! code nor the whole address is in the log. Settings that would defeat delivery are refused at start.

use crate::common;

use common::process::{run, spawn_up_with_verify};
use common::smtp::SmtpSink;
use std::time::Duration;

const KEY: &str = "delivery-process-key";

#[tokio::test]
async fn up_mails_each_code_to_its_user_and_no_answer_or_log_line_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start();
    let (mut up, base, _admin, signin) = spawn_up_with_verify(
        dir.path(),
        &[
            ("DELIVERY", "smtp".to_owned()),
            ("SMTP_URL", sink.url()),
            (
                "DELIVERY_MAIL_FROM",
                "Sign-in <no-reply@example.com>".to_owned(),
            ),
            ("VERIFY_API_KEY", KEY.to_owned()),
            ("VERIFY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ],
    );
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("{signin}/api/v1/codes"))
        .bearer_auth(KEY)
        .json(
            &serde_json::json!({ "subject": "alice", "destination": "alice.liddell@example.com" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    let issued: serde_json::Value = issued.json().await.unwrap();
    assert!(issued.get("code").is_none(), "{issued}");
    let mail = common::eventually("the mail", Duration::from_secs(20), || async {
        sink.mails().into_iter().next()
    })
    .await;
    assert_eq!(mail.to, ["alice.liddell@example.com"]);
    assert!(
        mail.data.contains("From: Sign-in <no-reply@example.com>"),
        "{}",
        mail.data
    );
    let code = mail.sign_in_code();
    // The check, then a keyed redeem: both answer 200 and neither answer holds the code.
    let attempt = serde_json::json!({ "code": code, "subject": "alice" });
    for (path, key) in [
        ("check", None),
        ("redeem", Some("0b9a3c7e-5a0e-4f4e-9f3a-2d1c6b7a8e90")),
    ] {
        let mut request = http
            .post(format!("{signin}/api/v1/codes/{path}"))
            .bearer_auth(KEY)
            .json(&attempt);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
        let answer = answer.text().await.unwrap();
        assert!(
            !answer.contains(&code),
            "the {path} answer holds the code: {answer}"
        );
    }
    let getcode = reqwest::get(format!("{base}/api/v1/getcode"))
        .await
        .unwrap();
    assert_eq!(
        getcode.status(),
        404,
        "the public getcode is off with delivery"
    );

    let database = format!("sqlite:{}", dir.path().join("codewatch.db").display());
    let show = run(
        dir.path(),
        &["codes", "show", &code],
        &[("DATABASE_URL", database)],
        "",
    );
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains("delivered to a***@example.com at "),
        "{shown}"
    );
    assert!(!shown.contains("alice.liddell"), "{shown}");

    assert!(up.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap();
    assert!(log.contains("code delivered"), "{log}");
    assert!(!log.contains(&code), "the code is in the log");
    assert!(!log.contains("alice.liddell"), "the address is in the log");
}

#[test]
fn settings_that_would_defeat_delivery_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let getcode = run(
        dir.path(),
        &["up"],
        &[
            ("DELIVERY", "webhook".to_owned()),
            ("PUBLIC_GETCODE", "true".to_owned()),
        ],
        "",
    );
    assert!(!getcode.status.success());
    let err = String::from_utf8_lossy(&getcode.stderr);
    assert!(err.contains("PUBLIC_GETCODE=true hands codes"), "{err}");

    let no_url = run(
        dir.path(),
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("DELIVERY", "smtp".to_owned())],
        "",
    );
    assert!(!no_url.status.success());
    let err = String::from_utf8_lossy(&no_url.stderr);
    assert!(err.contains("DELIVERY=smtp needs SMTP_URL"), "{err}");

    // On an Azure queue, delivery without message signing would let any sender have codes mailed.
    let unsigned = run(
        dir.path(),
        &["worker", "--admin-listen", "127.0.0.1:0"],
        &[
            ("DELIVERY", "webhook".to_owned()),
            ("DELIVERY_WEBHOOK_URL", "http://127.0.0.1:9/hook".to_owned()),
            ("DELIVERY_WEBHOOK_SECRET", "w".repeat(40)),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                common::connection_string_at(common::azurite_endpoint()),
            ),
            ("DATABASE_URL", "sqlite:codewatch.db".to_owned()),
        ],
        "",
    );
    assert!(!unsigned.status.success());
    let err = String::from_utf8_lossy(&unsigned.stderr);
    assert!(err.contains("needs MESSAGE_SIGNING_KEY"), "{err}");
    assert!(!err.contains(&"w".repeat(40)), "{err}");
}
