//! The manifests in deploy/ parse into the Kubernetes types, and say what the code needs.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::path::Path;

fn docs(file: &str) -> Vec<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    serde_saphyr::from_multiple(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn one<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let d = docs(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{kind} in {file}"));
    serde_json::from_value(d).unwrap_or_else(|e| panic!("{kind} in {file}: {e}"))
}

#[test]
fn crd_is_the_npwg_one() {
    let crd: CustomResourceDefinition = one("crd.yaml", "CustomResourceDefinition");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("network-attachment-definitions.k8s.cni.cncf.io")
    );
    assert_eq!(crd.spec.group, "k8s.cni.cncf.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "NetworkAttachmentDefinition");
    assert!(crd
        .spec
        .names
        .short_names
        .unwrap()
        .contains(&"net-attach-def".to_string()));
    let v = &crd.spec.versions[0];
    assert!(v.name == "v1" && v.served && v.storage);
}

#[test]
fn rbac_is_least_privilege() {
    let _: ServiceAccount = one("rbac.yaml", "ServiceAccount");
    let role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let mut grants: Vec<String> = Vec::new();
    for r in role.rules.unwrap() {
        for res in r.resources.unwrap() {
            for v in &r.verbs {
                assert_ne!(v, "*", "no wildcard verbs");
                grants.push(format!("{res}:{v}"));
            }
        }
    }
    grants.sort();
    grants.dedup();
    assert_eq!(
        grants,
        [
            "events:create",
            "network-attachment-definitions:get",
            "network-attachment-definitions:list",
            "network-attachment-definitions:watch",
            "pods/status:patch",
            "pods:get",
            "pods:list",
            "pods:watch"
        ]
    );
    let b: ClusterRoleBinding = one("rbac.yaml", "ClusterRoleBinding");
    assert_eq!(b.role_ref.name, "plexus");
}

#[test]
fn configmap_holds_a_valid_daemon_config() {
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let cfg = cm.data.unwrap()["daemon-config.json"].clone();
    let parsed = plexus_daemon::config::DaemonConfig::parse(cfg.as_bytes()).unwrap();
    assert_eq!(parsed.metrics_port, Some(9091));
    assert_eq!(
        parsed.metrics_bind, "127.0.0.1",
        "not on every node address"
    );
    assert_eq!(
        parsed.socket_path(),
        Path::new("/host/run/plexus/plexus.sock")
    );
}

#[test]
fn daemonset_installs_the_shim_atomically_and_is_guaranteed() {
    let ds: DaemonSet = one("daemonset.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    // The installer needs no privilege: it copies a file into a root-owned directory.
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let script = init.command.as_ref().unwrap().join(" ");
    assert!(
        script.contains("cp ") && script.contains("mv -f") && script.contains(".plexus-shim.new"),
        "{script}"
    );
    let c = &pod.containers[0];
    // Delegates run chrooted into the host's root, mounted where the config says.
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let cfg = cm.data.unwrap()["daemon-config.json"].clone();
    let cfg = plexus_daemon::config::DaemonConfig::parse(cfg.as_bytes()).unwrap();
    let root = cfg
        .chroot_dir
        .expect("chrootDir set: delegates must see the host");
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| Path::new(&m.mount_path) == root)
        .expect("the chroot directory is mounted");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        vol.host_path.as_ref().unwrap().path,
        "/",
        "the host's whole root"
    );
    // The probes reach the loopback listener from the node.
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
    }
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests, res.limits, "Guaranteed QoS");
    let env = c.env.as_ref().unwrap();
    let node = env.iter().find(|e| e.name == "PLEXUS_NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("plexus"));
    let mounts: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for needed in [
        "/host/run/plexus",
        "/var/lib/cni/multus",
        "/run/netns",
        "/opt/cni/bin",
        "/host/etc/cni/net.d",
    ] {
        assert!(mounts.contains(&needed), "{needed} mounted");
    }
}

#[test]
fn the_shim_installer_works_without_any_capability() {
    // The init container's own script, run as root with every capability dropped (as its
    // securityContext has it), against a root-owned directory standing for the host's.
    let ds: DaemonSet = one("daemonset.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let init = &pod.init_containers.unwrap()[0];
    let cmd = init.command.as_ref().unwrap();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("plexus-shim-image");
    std::fs::write(&src, b"shim").unwrap();
    let host = d.path().join("host-bin");
    std::fs::create_dir(&host).unwrap();
    let script = cmd[2]
        .replace("/usr/local/bin/plexus-shim", src.to_str().unwrap())
        .replace("/host/opt/cni/bin", host.to_str().unwrap());
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"])
        .args([&cmd[0], &cmd[1], &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(host.join("plexus-shim")).unwrap(), b"shim");
}
