//! The deployment kit (`deploy/`): the alerts pass promtool's checks and their unit tests;
//! every metric the alerts and the Grafana dashboard name is one a running walhook
//! exports, and the probe paths answer; the Kubernetes manifests parse, their walhook
//! config is valid with the Secret's values, and they name only ports, paths, Secrets and
//! ConfigMaps that exist.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// promtool, or a failure that says how to install it.
fn promtool() -> PathBuf {
    tool(
        "promtool",
        "install Debian's prometheus package (apt-get install -y prometheus), which has it",
    )
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy("prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `walhook_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("walhook_") {
        let start = i + at;
        let mut end = start + "walhook_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        // Part of a longer word (a file name, another name) is not a metric.
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The families a running walhook's `/metrics` declares, with a histogram's series.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            out.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_kit_names_is_exported_and_the_probes_answer() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"public.prices\"\nname = \"price.changed\"\n{}",
        subscriber("shop", &rx.url(), "\"price.*\"", "")
    );
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let text = walhook.admin_get("/metrics").await.expect("/metrics answers");
    let exported = exported(&text);
    assert!(exported.contains("walhook_leader"), "{text}");
    for file in [
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/walhook.json",
    ] {
        let named = metric_names(&read(file));
        assert!(!named.is_empty(), "deploy/{file} names no metric");
        let unknown: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "deploy/{file} names metrics walhook does not export: {unknown:?}"
        );
    }
    // The probes of the manifests answer as they should on a healthy leader.
    for file in ["kubernetes/deployment.yaml", "kubernetes/sidecar.yaml"] {
        let docs = YamlLoader::load_from_str(&read(file)).unwrap();
        for c in containers(&docs[0])
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.contains("walhook")))
        {
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = c[probe]["httpGet"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: {probe} path"));
                let got = reqwest::get(format!("http://{}{path}", walhook.admin))
                    .await
                    .unwrap();
                assert_eq!(got.status().as_u16(), 200, "{file}: {probe} {path}");
            }
        }
    }
}

fn containers(deployment: &Yaml) -> Vec<Yaml> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .cloned()
        .unwrap_or_default()
}

/// Every document of every manifest in deploy/kubernetes, by file.
fn manifests() -> HashMap<String, Vec<Yaml>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let docs =
                YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
            out.insert(name, docs);
        }
    }
    out
}

#[test]
fn the_kubernetes_manifests_name_only_what_exists() {
    let all = manifests();
    let doc = |file: &str| {
        all.get(file)
            .and_then(|d| d.first())
            .unwrap_or_else(|| panic!("{file} missing"))
    };
    // The kustomization lists files that are there, and every manifest but the sidecar.
    let listed: BTreeSet<String> = doc("kustomization.yaml")["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = all
        .keys()
        .filter(|f| *f != "kustomization.yaml" && *f != "sidecar.yaml")
        .cloned()
        .collect();
    assert_eq!(listed, present);
    // The config is valid once the Secret's values fill its ${VAR}s, and reads no other.
    let secret = doc("secret.yaml");
    let values: HashMap<String, String> = secret["stringData"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect();
    let configmap = doc("configmap.yaml");
    let toml = configmap["data"]["walhook.toml"]
        .as_str()
        .expect("walhook.toml in the ConfigMap");
    let parsed = walhook::config::Config::parse(toml, "configmap.yaml", &|name| values.get(name).cloned())
        .unwrap_or_else(|e| panic!("the ConfigMap's walhook.toml: {e}"));
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let config = parsed.config;
    let admin_port: i64 = config.admin.listen.rsplit(':').next().unwrap().parse().unwrap();
    for file in ["deployment.yaml", "sidecar.yaml"] {
        let d = doc(file);
        let pod = &d["spec"]["template"];
        let labels = &pod["metadata"]["labels"];
        for (k, v) in d["spec"]["selector"]["matchLabels"].as_hash().unwrap() {
            assert_eq!(
                &labels[k.as_str().unwrap()],
                v,
                "{file}: the selector matches the pod"
            );
        }
        let walhook = containers(d)
            .into_iter()
            .find(|c| c["image"].as_str().is_some_and(|i| i.starts_with("walhook")))
            .unwrap_or_else(|| panic!("{file}: no walhook container"));
        // It runs the config where the ConfigMap is mounted.
        let args: Vec<&str> = walhook["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..2], &["run", "--config"], "{file}");
        let mount = walhook["volumeMounts"][0]["mountPath"].as_str().unwrap();
        assert_eq!(args[2], format!("{mount}/walhook.toml"), "{file}");
        let volume = walhook["volumeMounts"][0]["name"].as_str().unwrap();
        let volumes = pod["spec"]["volumes"].as_vec().unwrap();
        let source = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .expect("the mounted volume");
        assert_eq!(
            source["configMap"]["name"], configmap["metadata"]["name"],
            "{file}"
        );
        assert_eq!(
            walhook["envFrom"][0]["secretRef"]["name"], secret["metadata"]["name"],
            "{file}"
        );
        // The port is the admin port of the config, and the probes use it.
        let port = &walhook["ports"][0];
        assert_eq!(port["containerPort"].as_i64(), Some(admin_port), "{file}");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(walhook[probe]["httpGet"]["port"], port["name"], "{file}: {probe}");
        }
    }
    // The Service and the PodDisruptionBudget select walhook's pods, on its port.
    let deployment = doc("deployment.yaml");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = doc("service.yaml");
    for (k, v) in service["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v);
    }
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        containers(deployment)[0]["ports"][0]["name"]
    );
    for (k, v) in doc("pdb.yaml")["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap()
    {
        assert_eq!(&pod_labels[k.as_str().unwrap()], v);
    }
    // Two replicas: one leads, one stands by (ready to take over with /readyz?role=any).
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
}

#[test]
fn the_systemd_unit_runs_walhook_and_reloads_with_sighup() {
    let unit = read("systemd/walhook.service");
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .to_string()
    };
    assert_eq!(
        line("ExecStart="),
        "/usr/local/bin/walhook run --config /etc/walhook/walhook.toml"
    );
    assert_eq!(line("ExecReload="), "/bin/kill -HUP $MAINPID");
    // The check it runs first takes these arguments, and passes on a valid config: the
    // Kubernetes ConfigMap's, with the Secret's values in the environment.
    let pre = line("ExecStartPre=");
    let args: Vec<&str> = pre.split_whitespace().skip(1).collect();
    assert_eq!(
        args,
        ["check", "--config", "/etc/walhook/walhook.toml", "--offline"]
    );
    let all = manifests();
    let toml = all["configmap.yaml"][0]["data"]["walhook.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let env: Vec<(String, String)> = all["secret.yaml"][0]["stringData"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args: Vec<&str> = args.clone();
    args[2] = path.to_str().unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = walhook_output_env(&args, &env);
    assert_eq!(code, 0, "{out}{err}");
}
