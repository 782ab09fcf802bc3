//! The deployment files in deploy/ (besides haproxy.cfg, which tests/balancer.rs runs): each
//! parses, names only settings the server knows, and keeps the timings that make a drain work;
//! the systemd unit passes `systemd-analyze verify` and the Patroni files `patroni
//! --validate-config` (both installed from Debian where missing).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// Installs a Debian package when `binary` is missing; the binary's path.
fn installed(binary: &str, package: &str) -> PathBuf {
    let find = || {
        ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(binary))
            .find(|path| path.exists())
    };
    if let Some(found) = find() {
        return found;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    find().unwrap_or_else(|| {
        panic!("{binary} is missing and `apt-get install -y {package}` gave {status:?}")
    })
}

/// Every document of a YAML file, through Python's yaml (Debian's python3-yaml).
fn yaml(path: &Path) -> Vec<Value> {
    let python = installed("python3", "python3-yaml");
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; \
             print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The settings the server reads from the environment, from its `--help`.
fn known_variables() -> Vec<String> {
    let out = common::binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

fn assert_known(variables: &[String], names: impl IntoIterator<Item = String>, file: &str) {
    for name in names {
        assert!(
            variables.contains(&name),
            "{file} sets {name}, which the server does not read"
        );
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {address}"))
}

#[test]
fn the_kubernetes_manifests_keep_a_guaranteed_pod_that_drains() {
    let docs = yaml(&Path::new(DEPLOY).join("kubernetes/coinbit.yaml"));
    let kind = |k: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifests"))
    };
    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // Guaranteed QoS with whole CPUs: the static CPU manager gives exclusive cores.
    let resources = &container["resources"];
    assert_eq!(resources["requests"], resources["limits"], "{resources}");
    let cpu = resources["limits"]["cpu"].as_str().unwrap();
    assert!(
        cpu.parse::<u32>().is_ok_and(|n| n >= 1),
        "whole CPUs: {cpu}"
    );
    assert!(resources["limits"]["memory"].is_string(), "{resources}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    let env: HashMap<String, Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_known(&known_variables(), env.keys().cloned(), "coinbit.yaml");
    let millis = |name: &str| -> u64 { env[name]["value"].as_str().unwrap().parse().unwrap() };
    assert_eq!(env["SHARD_SCALING"]["value"], "off");
    // The pre-stop hold matches DRAIN_DELAY, and the grace period covers both and the
    // shutdown timeout.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    assert_eq!(pre_stop * 1000, millis("DRAIN_DELAY"));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 > pre_stop * 1000 + millis("DRAIN_DELAY") + millis("SHUTDOWN_TIMEOUT"),
        "terminationGracePeriodSeconds {grace} is too short"
    );
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    assert_eq!(&kind("Service")["spec"]["selector"], labels);
    let hpa = &kind("HorizontalPodAutoscaler")["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["minReplicas"].as_u64() >= Some(2), "{hpa}");
    assert!(
        hpa["maxReplicas"].as_u64() > hpa["minReplicas"].as_u64(),
        "{hpa}"
    );
}

#[test]
fn the_patroni_and_etcd_files_describe_three_nodes_on_ports_below_32768() {
    let dir = Path::new(DEPLOY).join("patroni");
    let nodes: Vec<Value> = (1..=3)
        .map(|i| yaml(&dir.join(format!("pg{i}.yml"))).remove(0))
        .collect();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pg1", "pg2", "pg3"]);
    for node in &nodes {
        assert_eq!(node["scope"], nodes[0]["scope"]);
        assert_eq!(node["etcd3"], nodes[0]["etcd3"]);
        for address in [
            &node["restapi"]["listen"],
            &node["restapi"]["connect_address"],
            &node["postgresql"]["listen"],
            &node["postgresql"]["connect_address"],
        ] {
            assert!(port_of(address.as_str().unwrap()) < 32768, "{address}");
        }
        for host in node["etcd3"]["hosts"].as_str().unwrap().split(',') {
            assert!(port_of(host) < 32768, "{host}");
        }
    }
    let etcd = yaml(&dir.join("etcd.yml")).remove(0);
    for key in ["listen-client-urls", "listen-peer-urls", "initial-cluster"] {
        for url in etcd[key].as_str().unwrap().split(',') {
            assert!(port_of(url) < 32768, "{key}: {url}");
        }
    }

    // Patroni's own validation. The files describe three other machines: that their
    // addresses cannot be bound here, or their etcd reached, is all it may say.
    let patroni = installed("patroni", "patroni");
    for i in 1..=3 {
        let file = dir.join(format!("pg{i}.yml"));
        let out = Command::new(&patroni)
            .arg("--validate-config")
            .arg(&file)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let complaints: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("is already in use") && !l.contains("is not reachable"))
            .collect();
        assert!(complaints.is_empty(), "pg{i}.yml: {complaints:?}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_gives_the_drain_its_time() {
    let unit = Path::new(DEPLOY).join("systemd/coinbit@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let directives: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let environment: HashMap<&str, &str> = directives
        .iter()
        .filter(|(k, _)| *k == "Environment")
        .filter_map(|(_, v)| v.split_once('='))
        .collect();
    assert_known(
        &known_variables(),
        environment.keys().map(|k| k.to_string()),
        "coinbit@.service",
    );
    let value = |key: &str| {
        directives
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {key}="))
    };
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("LimitNOFILE"), "1048576");
    let stop: u64 = value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let millis = |name: &str| -> u64 { environment[name].parse().unwrap() };
    assert!(
        stop * 1000 > millis("DRAIN_DELAY") + millis("SHUTDOWN_TIMEOUT"),
        "TimeoutStopSec={stop}s leaves the drain no time"
    );

    // systemd's own check, on a copy that starts the binary just built (verify refuses a
    // command that is not there). It warns on stderr but exits 0 for a bad directive: any
    // word from it fails.
    let analyze = installed("systemd-analyze", "systemd");
    let dir = std::env::temp_dir().join(format!("coinbit-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("coinbit@.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/coinbit", env!("CARGO_BIN_EXE_coinbit")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
