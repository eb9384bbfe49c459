//! The deployment files in `deploy/` are not run here (no container engine, no systemd, no
//! cluster), so this checks what can go wrong in them against the real binary: every mode and
//! flag they pass exists and its value parses (`oklog <mode> <flags> -h` exits 0 only then),
//! every `OKLOG_*` variable names a flag of that mode, the Kubernetes objects fit together
//! (selectors, the headless Service the pods gossip through, probe paths and ports), and the
//! Dockerfile copies what exists.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::BIN;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What every deploy file sets GLIBC_TUNABLES to: vector copies up to 1 MiB instead of glibc <
/// 2.39's `rep movsb`, slow on AMD Zen with a misaligned destination (glibc bug 30994).
const COPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=1048576";

/// The environment variables `oklog <mode> -h` lists.
fn env_names(mode: &str) -> BTreeSet<String> {
    let out = Command::new(BIN).args([mode, "-h"]).output().unwrap();
    assert!(out.status.success(), "oklog {mode} -h");
    String::from_utf8(out.stdout)
        .unwrap()
        .split("($")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .map(str::to_string)
        .collect()
}

/// Run `oklog <mode> <args> -h`: it fails on an unknown flag or a bad value, before doing
/// anything else.
fn check_flags(what: &str, mode: &str, args: &[String]) {
    assert!(
        ["ingeststore", "ingest", "store"].contains(&mode),
        "{what}: mode {mode:?}"
    );
    let out = Command::new(BIN)
        .arg(mode)
        .args(args)
        .arg("-h")
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: oklog {mode} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_env(what: &str, mode: &str, names: impl IntoIterator<Item = String>) {
    let known = env_names(mode);
    for name in names {
        if name == "GLIBC_TUNABLES" {
            continue;
        }
        assert!(
            known.contains(&name),
            "{what}: {name} is not a variable of oklog {mode}"
        );
    }
}

fn str_of(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn labels(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| h.iter().map(|(k, v)| (str_of(k), str_of(v))).collect())
        .unwrap_or_default()
}

/// Whether every `selector` label is among `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_fit_together_and_pass_real_flags() {
    let docs = YamlLoader::load_from_str(&read("deploy/kubernetes/oklog.yaml")).unwrap();
    let docs: Vec<&Yaml> = docs.iter().filter(|d| !d.is_null()).collect();
    let by_kind = |kind: &str| -> Vec<&Yaml> {
        docs.iter()
            .copied()
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    };
    let services = by_kind("Service");
    let headless: Vec<&&Yaml> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"].as_str() == Some("None"))
        .collect();
    assert_eq!(headless.len(), 1, "one headless Service for gossip");
    let gossip = headless[0];
    let gossip_name = gossip["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        gossip["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert_eq!(gossip["spec"]["ports"][0]["port"].as_i64(), Some(7659));
    assert_eq!(gossip["spec"]["ports"][0]["protocol"].as_str(), Some("UDP"));

    let stores = by_kind("StatefulSet");
    let ingesters = by_kind("DaemonSet");
    assert_eq!((stores.len(), ingesters.len()), (1, 1));
    assert_eq!(
        stores[0]["spec"]["serviceName"].as_str(),
        Some(gossip_name),
        "the StatefulSet's pods are named through the headless Service"
    );
    for (workload, want_mode) in [(stores[0], "store"), (ingesters[0], "ingest")] {
        let name = workload["metadata"]["name"].as_str().unwrap().to_string();
        let spec = &workload["spec"];
        let pod_labels = labels(&spec["template"]["metadata"]["labels"]);
        assert!(
            selects(&labels(&spec["selector"]["matchLabels"]), &pod_labels),
            "{name}: its selector matches its pods"
        );
        assert!(
            selects(&labels(&gossip["spec"]["selector"]), &pod_labels),
            "{name}: its pods are behind the gossip Service"
        );
        let containers = spec["template"]["spec"]["containers"].as_vec().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let args: Vec<String> = c["args"].as_vec().unwrap().iter().map(str_of).collect();
        let mode = args[0].clone();
        assert_eq!(mode, want_mode, "{name}");
        check_flags(&name, &mode, &args[1..]);
        let flag = |f: &str| -> Option<String> {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("-{f}=")).map(str::to_string))
        };
        assert_eq!(
            flag("peer").as_deref(),
            Some(format!("{gossip_name}:7659").as_str()),
            "{name}: joins through the headless Service"
        );
        let envs: Vec<String> = c["env"]
            .as_vec()
            .map(|v| v.iter().map(|e| str_of(&e["name"])).collect())
            .unwrap_or_default();
        assert!(
            envs.contains(&"OKLOG_CLUSTER_ADVERTISE_ADDR".to_string()),
            "{name}: advertises its pod IP"
        );
        let tunable = c["env"]
            .as_vec()
            .and_then(|v| v.iter().find(|e| str_of(&e["name"]) == "GLIBC_TUNABLES"))
            .map(|e| str_of(&e["value"]));
        assert_eq!(
            tunable.as_deref(),
            Some(COPY_TUNABLE),
            "{name}: GLIBC_TUNABLES"
        );
        check_env(&name, &mode, envs);
        // Ports: the named ones match the flags' ports; probes use real paths and ports.
        let ports: BTreeMap<String, i64> = c["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|p| (str_of(&p["name"]), p["containerPort"].as_i64().unwrap()))
            .collect();
        for (port_name, flag_name) in [
            ("api", "api"),
            ("fast", "ingest.fast"),
            ("durable", "ingest.durable"),
            ("bulk", "ingest.bulk"),
            ("cluster", "cluster"),
        ] {
            if let Some(port) = ports.get(port_name) {
                let value = flag(flag_name)
                    .unwrap_or_else(|| panic!("{name}: port {port_name} but no -{flag_name}"));
                assert!(
                    value.ends_with(&format!(":{port}")),
                    "{name}: -{flag_name}={value} vs port {port}"
                );
            }
        }
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{name}: {probe}");
            assert!(
                ports.contains_key(&str_of(&get["port"])),
                "{name}: {probe} port"
            );
        }
        let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
        let path = flag("store.path")
            .or_else(|| flag("ingest.path"))
            .unwrap_or_default();
        assert!(
            path.starts_with(&format!("{mount}/")),
            "{name}: data on the volume"
        );
        // Shutdown (flush, hand over, leave) fits in the grace period.
        let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap();
        let timeout: i64 = flag("shutdown-timeout")
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            timeout < grace,
            "{name}: -shutdown-timeout within the grace period"
        );
    }
    // The user-facing Services select the right pods and target named ports that exist.
    for svc in services {
        let sel = labels(&svc["spec"]["selector"]);
        let svc_name = svc["metadata"]["name"].as_str().unwrap();
        let matched: Vec<&Yaml> = stores
            .iter()
            .chain(ingesters.iter())
            .copied()
            .filter(|w| selects(&sel, &labels(&w["spec"]["template"]["metadata"]["labels"])))
            .collect();
        assert!(!matched.is_empty(), "{svc_name} selects some pods");
        for port in svc["spec"]["ports"].as_vec().unwrap() {
            if let Some(target) = port["targetPort"].as_str() {
                for w in &matched {
                    let c = &w["spec"]["template"]["spec"]["containers"][0];
                    assert!(
                        c["ports"]
                            .as_vec()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"].as_str() == Some(target)),
                        "{svc_name}: target port {target}"
                    );
                }
            }
        }
    }
}

#[test]
fn systemd_unit_runs_a_real_command_line() {
    let unit = read("deploy/systemd/oklog.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}="))
            .to_string()
    };
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.lines().any(|l| l == section), "{section}");
    }
    let exec = value("ExecStart");
    let words: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert!(words[0].ends_with("/oklog"), "{exec}");
    check_flags("oklog.service", &words[1], &words[2..]);
    assert_eq!(value("KillSignal"), "SIGTERM", "a graceful stop");
    assert_eq!(
        value("Environment"),
        format!("GLIBC_TUNABLES={COPY_TUNABLE}")
    );
    let state = value("StateDirectory");
    assert!(
        words
            .iter()
            .filter(|w| w.starts_with('/'))
            .skip(1)
            .all(|p| p.starts_with(&format!("/var/lib/{state}/"))),
        "data under the state directory: {exec}"
    );
    // Every variable in the environment file (set or commented out) is a flag's.
    let env = read("deploy/systemd/oklog.env");
    let names = env.lines().filter_map(|l| {
        let l = l.trim_start_matches('#');
        let (k, _) = l.split_once('=')?;
        k.starts_with("OKLOG_").then(|| k.to_string())
    });
    check_env("oklog.env", &words[1], names);
}

#[test]
fn dockerfile_builds_a_static_binary_from_files_that_exist() {
    let docker = read("deploy/Dockerfile");
    let lines: Vec<&str> = docker
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let stages: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "multi-stage");
    assert_eq!(
        stages[1].to_string(),
        "FROM scratch",
        "nothing but the binary"
    );
    assert!(docker.contains("+crt-static"), "static (DESIGN.md §10)");
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ")
            && !rest.starts_with("--from")
        {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(repo().join(src).exists(), "COPY {src}: missing");
            }
        }
    }
    let cmd = lines
        .iter()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).unwrap();
    check_flags("Dockerfile CMD", &cmd[0], &cmd[1..]);
    // ENV lines (with continuations) name real variables.
    let joined = docker.replace("\\\n", " ");
    let env_line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ENV "))
        .expect("ENV");
    let names = env_line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()));
    check_env("Dockerfile ENV", &cmd[0], names);
    assert!(
        lines.contains(&format!("ENV GLIBC_TUNABLES={COPY_TUNABLE}").as_str()),
        "Dockerfile sets GLIBC_TUNABLES"
    );
    let expose: Vec<&str> = lines
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE")
        .split_whitespace()
        .collect();
    for port in ["7650", "7651", "7652", "7653", "7659/udp"] {
        assert!(expose.contains(&port), "EXPOSE {port}");
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target"),
        "the build context skips target/"
    );
}

#[test]
fn grafana_data_source_points_the_loki_type_at_the_api_port() {
    let docs = YamlLoader::load_from_str(&read("deploy/grafana/datasource.yaml")).unwrap();
    let doc = &docs[0];
    assert_eq!(doc["apiVersion"].as_i64(), Some(1));
    let ds = &doc["datasources"][0];
    assert_eq!(
        str_of(&ds["type"]),
        "loki",
        "Grafana's own Loki data source"
    );
    assert_eq!(str_of(&ds["access"]), "proxy");
    let url = str_of(&ds["url"]);
    assert!(
        url.starts_with("http://") && url.ends_with(":7650"),
        "the API port, without /loki (Grafana adds /loki/api/v1/...): {url}"
    );
    let max = ds["jsonData"]["maxLines"].as_i64().unwrap();
    assert!(
        (1..=oklog::loki::params::MAX_LIMIT as i64).contains(&max),
        "maxLines within what a query may ask: {max}"
    );
}

#[test]
fn grafana_dashboard_and_alert_rule_query_oklog_with_logql_it_runs() {
    let ds = YamlLoader::load_from_str(&read("deploy/grafana/datasource.yaml")).unwrap();
    let uid = str_of(&ds[0]["datasources"][0]["uid"]);
    // The dashboard: every target's LogQL parses (with the variable as Grafana fills it).
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/oklog-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "{p}");
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().replace("$service", ".+"));
        }
    }
    assert!(
        exprs
            .iter()
            .any(|e| e.starts_with("sum by (service_name) (rate("))
    );
    // The alert rule: its query is the panel's, on the same data source.
    let rules = YamlLoader::load_from_str(&read("deploy/grafana/alerts.yaml")).unwrap();
    let rule = &rules[0]["groups"][0]["rules"][0];
    let a = &rule["data"][0];
    assert_eq!(str_of(&a["datasourceUid"]), uid);
    let alert = str_of(&a["model"]["expr"]);
    exprs.push(alert.clone());
    assert_eq!(
        alert, exprs[0],
        "the alert rule watches the dashboard's panel"
    );
    assert_eq!(str_of(&rule["condition"]), "C");
    for e in &exprs {
        if let Err(err) = oklog::logql::parse(e) {
            panic!("{e}: {err}");
        }
    }
    let dashboards = YamlLoader::load_from_str(&read("deploy/grafana/dashboards.yaml")).unwrap();
    assert_eq!(str_of(&dashboards[0]["providers"][0]["type"]), "file");
}
