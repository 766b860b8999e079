//! `kubectl plexus validate` on manifests, offline: the webhook's rules, a table for
//! people, JSON for scripts, exit 1 when something is refused.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use serde_json::Value;

fn run(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-plexus"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn manifests_are_checked_with_the_plugins_rules() {
    let dir = tempfile::tempdir().unwrap();
    let nads = dir.path().join("nads.yaml");
    std::fs::write(
        &nads,
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: mv, namespace: apps}
spec:
  config: '{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth0", "capabilities": {"ips": true}}'
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: broken, namespace: apps}
spec:
  config: '{"cniVersion": "1.0.0", "plugins": [{"master": "eth0"}]}'
"#,
    )
    .unwrap();
    let pods = dir.path().join("pods.json");
    std::fs::write(
        &pods,
        r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "good", "namespace": "apps",
   "annotations": {"k8s.v1.cni.cncf.io/networks": "[{\"name\": \"mv\", \"ips\": [\"192.0.2.5/24\"]}]"}},
   "spec": {"containers": [{"name": "c", "image": "i"}]}},
  {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "typo", "namespace": "apps",
   "annotations": {"k8s.v1.cni.cncf.io/networks": "mv@"}},
   "spec": {"containers": [{"name": "c", "image": "i"}]}},
  {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere", "namespace": "apps",
   "annotations": {"k8s.v1.cni.cncf.io/networks": "unknown"}},
   "spec": {"containers": [{"name": "c", "image": "i"}]}}]}"#,
    )
    .unwrap();
    let (code, out) = run(&["validate", nads.to_str().unwrap(), pods.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("FILE") && lines[0].contains("RESULT"),
        "{out}"
    );
    let row = |obj: &str| {
        lines
            .iter()
            .find(|l| l.contains(obj))
            .copied()
            .unwrap_or_default()
    };
    assert!(row("apps/mv ").contains(" ok"), "{out}");
    assert!(
        row("apps/broken").contains("refused") && row("apps/broken").contains("spec.config"),
        "{out}"
    );
    assert!(row("apps/good").contains(" ok"), "{out}");
    assert!(
        row("apps/typo").contains("refused")
            && row("apps/typo").contains("k8s.v1.cni.cncf.io/networks"),
        "{out}"
    );
    assert!(
        row("apps/elsewhere").contains("warning") && row("apps/elsewhere").contains("unknown"),
        "{out}"
    );
    let (code, out) = run(&["validate", "-o", "json", nads.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["results"][1]["allowed"], false);
    let (code, out) = run(&["validate", "-o", "yaml", pods.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("allowed: false"), "{out}");
    // A file that is not YAML: an error naming it, exit 2.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "a: [").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-plexus"))
        .args(["validate", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
}
