//! `kubectl plexus explain` and `kubectl plexus node` against the test API server and a
//! node with real attachments (the plexus binary, real namespaces and plugins).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_testapi::Resource;
use serde_json::{json, Value};

/// Runs kubectl-plexus in the node's host namespace, where the test API server listens.
fn kubectl_plexus(n: &Node, args: &[&str]) -> (i32, String) {
    let out = n
        .world
        .host
        .run(|| {
            std::process::Command::new(plexus_bin().with_file_name("kubectl-plexus"))
                .args(args)
                .output()
        })
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn explain_and_node_show_attachments_drift_and_orphans() {
    let (n, api) = Node::kube(1);
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "br",
            &bridge_host_local(&unique("cbr"), "198.51.100.0/24", &n.ipam_dir()),
        ),
    );
    api.put(
        Resource::Pods,
        pod_object(
            "demo",
            "web",
            "uid-web",
            Some(r#"[{"name":"br","interface":"data0"}]"#),
        ),
    );
    let att = n.attachment(0, &unique("cid"), "demo", "web", &[]);
    n.add(&att).unwrap();
    let kc = n.conf["kubeconfig"].as_str().unwrap().to_string();
    let cni = n.world.subdir("cni");
    let cni = cni.to_str().unwrap();

    // The pod's networks from the API, and the node's state agreeing with the pod.
    let (code, out) = kubectl_plexus(
        &n,
        &[
            "explain",
            "web",
            "-n",
            "demo",
            "--kubeconfig",
            &kc,
            "--cni-dir",
            cni,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("demo/br"))
        .unwrap_or_default();
    assert!(
        row.contains("data0") && row.contains("NAD spec.config") && row.contains("198.51.100."),
        "{out}"
    );
    assert!(out.contains("AddedInterface"), "the pod's events: {out}");
    let (_, js) = kubectl_plexus(
        &n,
        &[
            "explain",
            "web",
            "-n",
            "demo",
            "--kubeconfig",
            &kc,
            "--cni-dir",
            cni,
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v["networks"][0]["interface"], "data0");
    assert_eq!(v["node"]["drift"], json!([]));

    // Drift: the interface removed behind Plexus's back.
    ip(Some(n.world.ctr(0)), &["link", "del", "data0"]);
    let (code, out) = kubectl_plexus(
        &n,
        &[
            "explain",
            "web",
            "-n",
            "demo",
            "--kubeconfig",
            &kc,
            "--cni-dir",
            cni,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("drift: data0 is in the state but not in the pod"),
        "{out}"
    );

    // The node: its attachments; a reservation nobody holds is an orphan.
    let ipam = n.ipam_dir();
    let (code, out) = kubectl_plexus(
        &n,
        &[
            "node",
            "--cni-dir",
            cni,
            "--ipam-dir",
            ipam.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("demo/web") && l.contains("data0") && l.contains("demo/br")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("demo/web") && l.contains("eth0")),
        "{out}"
    );
    let stray = ipam.join("leftover");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("203.0.113.9"), "deadbeef\r\nnet9").unwrap();
    let (code, out) = kubectl_plexus(
        &n,
        &[
            "node",
            "--cni-dir",
            cni,
            "--ipam-dir",
            ipam.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["orphans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["container"] == "deadbeef"),
        "{v}"
    );
    std::fs::remove_dir_all(&stray).unwrap();
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}
