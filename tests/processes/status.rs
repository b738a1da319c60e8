//! The admin listener's `/status` page, on a running `up`, in headless Chromium: its figures match
//! `/metrics`, a poisoned message's reason is listed, no code is shown, and a screenshot is saved
//! under `target/screenshots/status/` (tests/python/status_browser.py).

use crate::common;
use common::{metric, metrics_when};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_metrics_say_in_a_real_browser() {
    let queues = common::azure_queues().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        (
            "AZURE_STORAGE_CONNECTION_STRING",
            common::connection_string(),
        ),
        ("STORAGE_QUEUE_NAME", queues.main.name().to_owned()),
    ];
    let (mut up, base, admin) = common::process::spawn_up_with_admin(dir.path(), &env);

    let mut codes = Vec::new();
    for _ in 0..3 {
        let answer: serde_json::Value = reqwest::get(format!("{base}/api/v1/getcode"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        codes.push(answer["code"].as_str().unwrap().to_owned());
    }
    // Anyone with send rights can write this: it is set aside, and its markup never reaches the page.
    queues
        .main
        .send("<b>not a code message</b>", Duration::ZERO)
        .await
        .unwrap();
    metrics_when(
        &admin,
        "three activations and one poisoned message counted",
        Duration::from_secs(20),
        |text| {
            metric(text, r#"codewatch_messages_total{outcome="activated"}"#) == 3.0
                && metric(text, r#"codewatch_messages_total{outcome="poisoned"}"#) == 1.0
        },
    )
    .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shot = root.join("target/screenshots/status/status.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(common::smtp::tools_venv().join("bin/python"))
        .arg(root.join("tests/python/status_browser.py"))
        .args([
            "--admin",
            &admin,
            "--active",
            "3",
            "--codes",
            &codes.join(","),
        ])
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    assert!(up.terminate().success());
}
