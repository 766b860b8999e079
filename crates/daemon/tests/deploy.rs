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

/// The host path a daemon path is mounted from, when a hostPath volume holds it.
fn host_path_of(
    pod: &k8s_openapi::api::core::v1::PodSpec,
    path: &Path,
) -> Option<std::path::PathBuf> {
    let mounts = pod.containers[0].volume_mounts.as_ref()?;
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let vol = pod.volumes.as_ref()?.iter().find(|v| v.name == m.name)?;
    let host = &vol.host_path.as_ref()?.path;
    Some(Path::new(host).join(path.strip_prefix(&m.mount_path).ok()?))
}

#[test]
fn the_kubelet_and_device_info_paths_are_the_hosts() {
    let ds: DaemonSet = one("daemonset.yaml", "DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let cfg: serde_json::Value =
        serde_json::from_str(&cm.data.unwrap()["daemon-config.json"]).unwrap();
    // The engine keys as every request gets them (the daemon's overlaid on the defaults).
    let p: plexus_engine::config::PlexusConf =
        serde_json::from_value(cfg.get("plexus").cloned().unwrap_or_default()).unwrap();
    for (what, path) in [
        ("podResourcesSocket", p.pod_resources_socket.as_path()),
        ("deviceCheckpointFile", &p.device_checkpoint_file),
        ("devicePluginInfoDir", &p.device_plugin_info_dir),
        // Written by the daemon, read by the delegates chrooted into the host's root: one path.
        ("deviceInfoDir", &p.device_info_dir),
    ] {
        assert_eq!(
            host_path_of(&pod, path).as_deref(),
            Some(path),
            "{what} {} must be the host's own path",
            path.display()
        );
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

/// The node-bound status policy, evaluated with a CEL interpreter as the API server
/// evaluates a ValidatingAdmissionPolicy: match conditions, then the variables in order,
/// then every validation; the messages of those that fail (none: allowed).
struct Policy {
    matches: Vec<cel::Program>,
    variables: Vec<(String, cel::Program)>,
    /// Each validation with its messageExpression (CEL) or its plain message.
    validations: Vec<(cel::Program, Result<cel::Program, String>)>,
}

impl Policy {
    fn load() -> Policy {
        use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
        let p: ValidatingAdmissionPolicy =
            one("node-bound-status.yaml", "ValidatingAdmissionPolicy");
        let spec = p.spec.unwrap();
        let compile = |e: &str| cel::Program::compile(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        Policy {
            matches: spec
                .match_conditions
                .unwrap()
                .iter()
                .map(|m| compile(&m.expression))
                .collect(),
            variables: spec
                .variables
                .unwrap()
                .iter()
                .map(|v| (v.name.clone(), compile(&v.expression)))
                .collect(),
            validations: spec
                .validations
                .unwrap()
                .iter()
                .map(|v| {
                    let msg = match &v.message_expression {
                        Some(e) => Ok(compile(e)),
                        None => Err(v.message.clone().unwrap()),
                    };
                    (compile(&v.expression), msg)
                })
                .collect(),
        }
    }

    /// None when the request is not matched, else the messages of the failed validations.
    fn admit(
        &self,
        user: &str,
        node: Option<&str>,
        old: &Value,
        new: &Value,
    ) -> Option<Vec<String>> {
        let mut extra = serde_json::Map::new();
        if let Some(n) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                serde_json::json!([n]),
            );
        }
        let request = serde_json::json!({"operation": "UPDATE", "subResource": "status",
            "userInfo": {"username": user, "extra": extra}});
        let mut ctx = cel::Context::default();
        ctx.add_variable("request", &request).unwrap();
        ctx.add_variable("object", new).unwrap();
        ctx.add_variable("oldObject", old).unwrap();
        let truth = |ctx: &cel::Context, p: &cel::Program| match p.execute(ctx) {
            Ok(cel::Value::Bool(b)) => b,
            other => panic!("not a bool: {other:?}"),
        };
        if !self.matches.iter().all(|m| truth(&ctx, m)) {
            return None;
        }
        let mut vars: std::collections::HashMap<String, cel::Value> = Default::default();
        for (name, p) in &self.variables {
            let mut c = cel::Context::default();
            c.add_variable("request", &request).unwrap();
            c.add_variable("object", new).unwrap();
            c.add_variable("oldObject", old).unwrap();
            c.add_variable_from_value("variables", vars.clone());
            let v = p
                .execute(&c)
                .unwrap_or_else(|e| panic!("variable {name}: {e}"));
            vars.insert(name.clone(), v);
        }
        ctx.add_variable_from_value("variables", vars);
        let mut failed = Vec::new();
        for (p, msg) in &self.validations {
            if !truth(&ctx, p) {
                failed.push(match msg {
                    Ok(m) => match m.execute(&ctx) {
                        Ok(cel::Value::String(s)) => s.to_string(),
                        other => panic!("messageExpression: {other:?}"),
                    },
                    Err(plain) => plain.clone(),
                });
            }
        }
        Some(failed)
    }
}

fn pod(node: &str, annotations: Value, labels: Value, phase: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "demo", "annotations": annotations, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": phase}})
}

#[test]
fn node_bound_status_policy_lets_plexusd_write_network_status_on_its_own_node_only() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
    let binding: ValidatingAdmissionPolicyBinding =
        one("node-bound-status.yaml", "ValidatingAdmissionPolicyBinding");
    let bspec = binding.spec.unwrap();
    assert_eq!(
        bspec.policy_name.as_deref(),
        Some("plexus-node-bound-status")
    );
    assert_eq!(bspec.validation_actions.unwrap(), ["Deny"]);
    // The user the policy matches is the daemon's service account of rbac.yaml.
    let sa: ServiceAccount = one("rbac.yaml", "ServiceAccount");
    let user = format!(
        "system:serviceaccount:{}:{}",
        sa.metadata.namespace.unwrap(),
        sa.metadata.name.unwrap()
    );
    let policy = Policy::load();
    const NS: &str = "k8s.v1.cni.cncf.io/network-status";
    let old = pod(
        "n1",
        serde_json::json!({"keep": "x"}),
        serde_json::json!({"app": "a"}),
        "Pending",
    );
    let written = pod(
        "n1",
        serde_json::json!({"keep": "x", NS: "[]"}),
        serde_json::json!({"app": "a"}),
        "Pending",
    );

    // The status write of plexusd on the pod's node.
    assert_eq!(
        policy.admit(&user, Some("n1"), &old, &written),
        Some(vec![])
    );
    // Replacing and removing the annotation are writes of it too.
    let replaced = pod(
        "n1",
        serde_json::json!({"keep": "x", NS: "[{}]"}),
        serde_json::json!({"app": "a"}),
        "Pending",
    );
    assert_eq!(
        policy.admit(&user, Some("n1"), &written, &replaced),
        Some(vec![])
    );
    assert_eq!(
        policy.admit(&user, Some("n1"), &written, &old),
        Some(vec![])
    );
    // A pod without annotations or labels at all.
    let bare =
        serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {}});
    let mut bare_written = bare.clone();
    bare_written["metadata"]["annotations"] = serde_json::json!({NS: "[]"});
    assert_eq!(
        policy.admit(&user, Some("n1"), &bare, &bare_written),
        Some(vec![])
    );

    // Another node's pod, a token that names no node.
    let refused = policy.admit(&user, Some("n2"), &old, &written).unwrap();
    assert_eq!(
        refused,
        ["plexusd on node n2 may not write the status of pod p, which is not on its node"]
    );
    let refused = policy.admit(&user, None, &old, &written).unwrap();
    assert!(refused[0].contains("names no node"), "{refused:?}");
    // An unscheduled pod is on no node.
    let mut unscheduled = old.clone();
    unscheduled["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeName");
    assert_eq!(
        policy
            .admit(&user, Some("n1"), &unscheduled, &written)
            .unwrap()
            .len(),
        1
    );

    // Anything but the network-status annotation.
    for changed in [
        pod(
            "n1",
            serde_json::json!({"keep": "y", NS: "[]"}),
            serde_json::json!({"app": "a"}),
            "Pending",
        ),
        pod(
            "n1",
            serde_json::json!({NS: "[]"}),
            serde_json::json!({"app": "a"}),
            "Pending",
        ),
        pod(
            "n1",
            serde_json::json!({"keep": "x", "new": "z"}),
            serde_json::json!({"app": "a"}),
            "Pending",
        ),
        pod(
            "n1",
            serde_json::json!({"keep": "x"}),
            serde_json::json!({"app": "b"}),
            "Pending",
        ),
        pod(
            "n1",
            serde_json::json!({"keep": "x"}),
            serde_json::json!({}),
            "Pending",
        ),
        pod(
            "n1",
            serde_json::json!({"keep": "x"}),
            serde_json::json!({"app": "a"}),
            "Running",
        ),
    ] {
        let refused = policy.admit(&user, Some("n1"), &old, &changed).unwrap();
        assert_eq!(refused.len(), 1, "{changed}: {refused:?}");
        assert!(
            refused[0].starts_with("plexusd may change only"),
            "{refused:?}"
        );
    }

    // Other users, the kubelet or another service account, are not matched.
    for other in ["system:node:n1", "system:serviceaccount:kube-system:other"] {
        assert_eq!(policy.admit(other, Some("n2"), &old, &replaced), None);
    }
}
