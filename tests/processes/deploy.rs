//! The deploy files agree with the binary: every setting they pass is a flag's environment variable (or
//! one the platform sets for `azure_identity`), every command is a subcommand, the probes hit the paths and
//! ports codewatch serves, grace periods fit, and KEDA counts visible messages only. No Docker engine or
//! Bicep compiler exists here, so the files are checked as data, not deployed.

use clap::CommandFactory;
use codewatch::config::Cli;
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Variables read by `azure_identity` or the runtime, not by codewatch's flags.
const PLATFORM: &[&str] = &[
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "RUST_LOG",
    "SSL_CERT_FILE",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every environment variable a flag of any subcommand reads, and the subcommand names.
fn cli_surface() -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(cmd: &clap::Command, envs: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                envs.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, envs);
        }
    }
    let cmd = Cli::command();
    let mut envs = BTreeSet::new();
    walk(&cmd, &mut envs);
    let subcommands = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    (envs, subcommands)
}

fn assert_known(file: &str, names: impl IntoIterator<Item = String>) {
    let (envs, _) = cli_surface();
    for name in names {
        assert!(
            envs.contains(&name) || PLATFORM.contains(&name.as_str()),
            "{file} sets {name}, which codewatch does not read"
        );
    }
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
            let mut value = value;
            value.apply_merge().unwrap();
            value
        })
        .collect()
}

use serde::Deserialize;

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn compose_uses_only_real_settings_commands_and_probe_ports() {
    let doc = &yaml_docs("deploy/compose.yaml")[0];
    let (_, subcommands) = cli_surface();
    let services = doc["services"].as_mapping().unwrap();
    for name in ["azurite", "postgres", "number-api", "serve", "worker"] {
        assert!(services.contains_key(name), "compose lacks {name}");
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if !matches!(name, "number-api" | "serve" | "worker") {
            continue;
        }
        let command = service["command"][0].as_str().unwrap();
        assert!(
            subcommands.contains(command),
            "{name}: {command} is not a subcommand"
        );
        let env: BTreeMap<String, String> =
            serde_yaml_ng::from_value(service["environment"].clone()).unwrap();
        assert_known("compose.yaml", env.keys().cloned());
        let probe: Vec<String> =
            serde_yaml_ng::from_value(service["healthcheck"]["test"].clone()).unwrap();
        assert_eq!(
            probe[..3],
            ["CMD", "codewatch", "probe"],
            "{name} probes with the binary itself"
        );
        let url = url::Url::parse(&probe[3]).unwrap();
        let listen = env
            .get("ADMIN_LISTEN_ADDR")
            .or(env.get("NUMBER_API_LISTEN"))
            .unwrap();
        assert_eq!(
            url.port(),
            Some(port_of(listen)),
            "{name} probes the port it listens on"
        );
        if name != "number-api" {
            assert_eq!(url.path(), "/readyz");
            assert!(
                service["stop_grace_period"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches('s')
                    .parse::<u64>()
                    .unwrap()
                    > env["SHUTDOWN_GRACE_SECONDS"].parse::<u64>().unwrap()
            );
        }
    }
    assert!(
        services["worker"].get("ports").is_none()
            && services["worker"].get("container_name").is_none(),
        "worker must scale"
    );
    let published: Vec<String> =
        serde_yaml_ng::from_value(services["serve"]["ports"].clone()).unwrap();
    for port in published {
        assert!(
            port == "8080:8080" || port.starts_with("127.0.0.1:"),
            "serve publishes {port} beyond getcode"
        );
    }
}

#[test]
fn kubernetes_manifests_match_the_binary_and_harden_the_pods() {
    let docs = yaml_docs("deploy/k8s/codewatch.yaml");
    let (_, subcommands) = cli_surface();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_owned();
    assert!(
        docs.iter().all(|d| kind(d) != "Secret"),
        "the Secret lives in examples/, so applying the manifest never overwrites the real one"
    );
    let secret = yaml_docs("deploy/k8s/examples/secret.yaml").remove(0);
    let config = docs.iter().find(|d| kind(d) == "ConfigMap").unwrap();
    let keys = |m: &Value| {
        m.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_known("k8s ConfigMap", keys(&config["data"]));
    assert_known("k8s Secret", keys(&secret["stringData"]));
    let grace: u64 = config["data"]["SHUTDOWN_GRACE_SECONDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut roles = BTreeSet::new();
    let mut identities = BTreeSet::new();
    for deployment in docs.iter().filter(|d| kind(d) == "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
            "true"
        );
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace);
        identities.insert(pod["serviceAccountName"].as_str().unwrap().to_owned());
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["runAsUser"].as_u64(),
            Some(65532),
            "numeric, the image's user"
        );
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        let hardening = &container["securityContext"];
        assert_eq!(hardening["allowPrivilegeEscalation"], false);
        assert_eq!(hardening["readOnlyRootFilesystem"], true);
        assert_eq!(hardening["capabilities"]["drop"][0], "ALL");
        for part in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][part][resource].is_null(),
                    "{part}.{resource}"
                );
            }
        }
        let command = container["args"][0].as_str().unwrap();
        assert!(subcommands.contains(command));
        roles.insert(command.to_owned());
        if command == "serve" {
            // Load balancers drop the pod before its listeners close, and replicas spread out.
            let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .expect("serve pauses before SIGTERM");
            assert!(
                pause > 0 && pause + grace < pod["terminationGracePeriodSeconds"].as_u64().unwrap()
            );
            let spread: Vec<&str> = pod["topologySpreadConstraints"]
                .as_sequence()
                .expect("serve spreads its replicas")
                .iter()
                .map(|c| c["topologyKey"].as_str().unwrap())
                .collect();
            assert_eq!(
                spread,
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
            );
        }
        let env = container["env"].as_sequence().unwrap();
        let names = env.iter().map(|e| e["name"].as_str().unwrap().to_owned());
        assert_known("k8s Deployment", names);
        let admin = env
            .iter()
            .find(|e| e["name"] == "ADMIN_LISTEN_ADDR")
            .expect("probes are on the admin listener")["value"]
            .as_str()
            .unwrap();
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
            assert_eq!(
                container[probe]["httpGet"]["port"].as_u64(),
                Some(u64::from(port_of(admin))),
                "{probe}"
            );
        }
        // /readyz checks its parts at once, each within 3 s.
        assert!(
            container["readinessProbe"]["timeoutSeconds"]
                .as_u64()
                .unwrap()
                > 3
        );
    }
    assert_eq!(
        roles,
        BTreeSet::from(["serve".to_owned(), "worker".to_owned()])
    );
    assert_eq!(identities.len(), 2, "one workload identity per app");
    for identity in &identities {
        assert!(
            docs.iter()
                .any(|d| kind(d) == "ServiceAccount" && d["metadata"]["name"] == identity.as_str()),
            "{identity}"
        );
    }
    let pdb = docs
        .iter()
        .find(|d| kind(d) == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget for the serve replicas");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["role"], "serve");
    let service = |name: &str| {
        docs.iter()
            .find(|d| kind(d) == "Service" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Service {name}"))
    };
    let target_ports = |d: &Value| -> Vec<u64> {
        d["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["targetPort"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        target_ports(service("codewatch")),
        [8080],
        "the public Service is getcode only"
    );
    assert_eq!(target_ports(service("codewatch-verify")), [8081]);
    assert_eq!(service("codewatch-verify")["spec"]["type"], "ClusterIP");
    let scaled = docs.iter().find(|d| kind(d) == "ScaledObject").unwrap();
    let config = docs.iter().find(|d| kind(d) == "ConfigMap").unwrap();
    let shards: usize = config["data"]["STORAGE_QUEUE_SHARDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
    let queue_names: Vec<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["queueName"].as_str().unwrap())
        .collect();
    assert_eq!(
        queue_names,
        codewatch::queue::shards::shard_names("code-requests", shards),
        "one trigger per shard, named as codewatch names them"
    );
    for trigger in triggers {
        assert_eq!(trigger["type"], "azure-queue");
        assert_eq!(trigger["metadata"]["queueLengthStrategy"], "visibleonly");
        assert_eq!(
            trigger["metadata"]["queueLength"],
            (32 / shards).max(1).to_string()
        );
    }
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "codewatch-worker");
}

#[test]
fn every_deploy_file_chooses_whether_the_unauthenticated_getcode_is_served() {
    // The sign-in API (issuing for a user, check, redeem) stays on the internal listener everywhere;
    // the sample's public getcode is a choice each file makes in the open.
    for (file, choice) in [
        (
            "deploy/k8s/codewatch.yaml",
            "- name: PUBLIC_GETCODE\n              value: \"false\"",
        ),
        (
            "deploy/azure/main.bicep",
            "{ name: 'PUBLIC_GETCODE', value: publicGetcode ? 'true' : 'false' }",
        ),
        ("deploy/compose.yaml", "PUBLIC_GETCODE: \"true\""),
    ] {
        let text = read(file);
        assert!(
            text.contains(choice),
            "{file} does not choose PUBLIC_GETCODE"
        );
        assert!(
            text.contains("VERIFY_LISTEN_ADDR"),
            "{file}: the sign-in API on its own listener"
        );
    }
    assert!(read("deploy/azure/main.bicep").contains("param publicGetcode bool = false"));
}

#[test]
fn the_bicep_template_passes_only_real_settings_and_scales_on_visible_messages() {
    let bicep = read("deploy/azure/main.bicep");
    let (_, subcommands) = cli_surface();
    let names: Vec<String> = bicep
        .lines()
        .filter_map(|l| l.trim().strip_prefix("{ name: '"))
        .filter_map(|rest| rest.split('\'').next())
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "env names found: {names:?}");
    assert_known("main.bicep", names);
    for line in bicep.lines().filter(|l| l.trim().starts_with("args:")) {
        let command = line.split('\'').nth(1).unwrap();
        assert!(subcommands.contains(command), "{command}");
    }
    for needle in [
        "queueLengthStrategy: 'visibleonly'",
        "allowSharedKeyAccess: false",
        "enableRbacAuthorization: true",
        "path: '/healthz', port: 9090",
        "path: '/readyz', port: 9090",
        "external: false, targetPort: 8081",
        "'0.0.0.0:8081'",
        "'0.0.0.0:9090'",
        "'0.0.0.0:8080'",
        // Every shard: created, granted, scaled on; both apps told how many.
        "resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in shardNames",
        "resource poisonQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in shardNames",
        "rules: [for name in shardNames",
        "queueName: name",
        "i == 0 ? queueName : '${queueName}-${i}'",
    ] {
        assert!(bicep.contains(needle), "main.bicep lacks {needle}");
    }
    assert!(
        !bicep.contains("AccountKey") && !bicep.contains("listKeys().keys"),
        "no storage keys"
    );
    assert!(
        !bicep.contains("port: 8080 }"),
        "no probe on the public port: probes and metrics live on the admin listener"
    );
    for line in bicep
        .lines()
        .filter(|l| l.trim_start().starts_with("resource "))
    {
        assert!(!line.contains("-preview'"), "a preview API version: {line}");
    }
    assert!(
        !bicep.contains("firewallRules"),
        "no firewall rule: the database is reached on the private network only"
    );
    assert!(bicep.contains("delegatedSubnetResourceId"));
    assert!(
        bicep.contains("postgres://codewatch_app:")
            && bicep.contains("postgres://codewatch_migrate:"),
        "the apps use the runtime role, the migration job the schema's owner"
    );
    assert_eq!(
        bicep
            .matches("{ name: 'MIGRATE_ON_START', value: 'false' }")
            .count(),
        2,
        "neither app changes the schema"
    );
    assert_eq!(
        bicep
            .matches("{ name: 'STORAGE_QUEUE_SHARDS', value: string(queueShards) }")
            .count(),
        2,
        "both apps see every shard"
    );
    assert_eq!(
        bicep.matches("= [for (name, i) in shardNames: {").count(),
        5,
        "each queue role granted on every shard"
    );
    let roles = read("deploy/postgres/roles.sql");
    assert!(roles.contains("codewatch_app") && roles.contains("codewatch_migrate"));
    let params: serde_json::Value =
        serde_json::from_str(&read("deploy/azure/main.parameters.json")).unwrap();
    for name in params["parameters"].as_object().unwrap().keys() {
        assert!(
            bicep.contains(&format!("param {name} ")),
            "main.parameters.json sets unknown {name}"
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_runs_as_non_root_and_sets_only_real_settings() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("--locked"));
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "a numeric user, for runAsNonRoot"
    );
    assert!(dockerfile.contains(r#"ENTRYPOINT ["codewatch"]"#));
    // Every base image pinned by its digest, not only by a tag that can move.
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(bases.len(), 2, "{bases:?}");
    for base in bases {
        let image = base.split_whitespace().next().unwrap();
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{image} is not pinned by digest"
        );
    }
    // The health check probes the admin listener ADMIN_LISTEN_ADDR names, with no port of its own.
    let healthcheck = dockerfile.replace("\\\n", " ");
    let healthcheck = healthcheck
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .unwrap();
    assert!(
        healthcheck.contains(r#"CMD ["codewatch", "probe", "--timeout-seconds", "4"]"#),
        "{healthcheck}"
    );
    assert!(!healthcheck.contains("9090"), "{healthcheck}");
    assert!(
        !dockerfile.contains("benches"),
        "no stub for a bench: building the binary never reads it"
    );
    let env_block = dockerfile
        .split("ENV ")
        .nth(1)
        .unwrap()
        .split("\nEXPOSE")
        .next()
        .unwrap();
    let names = env_block
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, _)| k.to_owned());
    assert_known("Dockerfile", names);
}

/// The build stage of `deploy/Dockerfile` as steps: `COPY` (sources, destination) and `RUN` commands,
/// with line continuations joined.
fn build_stage_steps(dockerfile: &str) -> Vec<(String, String)> {
    let joined = dockerfile.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .filter_map(|l| l.split_once(' '))
        .filter(|(op, _)| matches!(*op, "COPY" | "RUN"))
        .map(|(op, rest)| (op.to_owned(), rest.trim().to_owned()))
        .collect()
}

/// Whether `.dockerignore` keeps `path` (relative, `/`-separated) out of the build context.
fn docker_ignores(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == p || path.starts_with(&format!("{p}/")),
    })
}

fn copy_into(from: &std::path::Path, to: &std::path::Path, rel: &str, ignore: &[String]) {
    if docker_ignores(ignore, rel) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            copy_into(
                &entry.path(),
                &to.join(&name),
                &format!("{rel}/{name}"),
                ignore,
            );
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// Builds the image's build stage without Docker: a folder holding exactly what its `COPY` lines take
/// from the context (less `.dockerignore`), then its `RUN` commands in order, so a file the build needs
/// but the Dockerfile does not copy fails here. The commands run offline with the dev profile and the
/// repository's target folder (a cold release build would take most of CI's time); `scripts/test.sh slow`
/// runs it apart from the suite, since it rebuilds `target/debug/codewatch`.
#[test]
#[ignore = "run by `scripts/test.sh slow`: it rebuilds the binary the other tests run"]
fn the_image_builds_from_exactly_its_build_context() {
    let dockerfile = read("deploy/Dockerfile");
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .collect();
    let work = tempfile::tempdir().unwrap();
    let steps = build_stage_steps(&dockerfile);
    assert!(steps.iter().any(|(op, _)| op == "RUN"), "{steps:?}");
    for (op, args) in steps {
        if op == "COPY" {
            let mut parts: Vec<&str> = args.split_whitespace().collect();
            let dest = parts.pop().unwrap();
            for src in parts {
                let from = root().join(src);
                assert!(from.exists(), "COPY {src}: not in the repository");
                let name = std::path::Path::new(src).file_name().unwrap();
                let to = if dest.ends_with('/') {
                    work.path().join(dest).join(name)
                } else {
                    work.path().join(dest)
                };
                copy_into(&from, &to, src.trim_end_matches('/'), &ignore);
            }
        } else {
            let command = args
                .replace("cargo build --release", "cargo build --offline")
                .replace("--release", "");
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .current_dir(work.path())
                .env("CARGO_TARGET_DIR", root().join("target"))
                .status()
                .unwrap();
            assert!(
                status.success(),
                "RUN {command} failed in the image's build context"
            );
        }
    }
}

/// Every `codewatch_…` metric an expression names, without the summary's `_sum`/`_count` suffixes.
fn metrics_named(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("codewatch_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        names.push(base);
    }
    names
}

#[test]
fn the_dashboard_and_the_alerts_name_only_metrics_the_binary_exports() {
    let exported: BTreeSet<&str> = codewatch::ops::metrics::ALL.iter().copied().collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/codewatch.json")).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{} panels", exprs.len());
    let alerts = &yaml_docs("deploy/prometheus/alerts.yaml")[0];
    let rules = alerts["groups"][0]["rules"].as_sequence().unwrap();
    let alert_names: BTreeSet<String> = rules
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    for needed in [
        "CodewatchActivationLagHigh",
        "CodewatchPoisonMessages",
        "CodewatchOldestVisibleMessageOld",
        "CodewatchWorkerNotPolling",
        "CodewatchNotReady",
    ] {
        assert!(alert_names.contains(needed), "no alert {needed}");
    }
    exprs.extend(rules.iter().map(|r| r["expr"].as_str().unwrap().to_owned()));
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metrics_named(expr);
        assert!(!names.is_empty(), "{expr} names no codewatch metric");
        for name in names {
            assert!(
                exported.contains(name.as_str()),
                "{expr}: {name} is not exported"
            );
            used.insert(name);
        }
    }
    for metric in &exported {
        assert!(
            used.contains(*metric),
            "the dashboard shows nothing of {metric}"
        );
    }
}
