//! deploy/webhook.yaml and deploy/webhook-resources.yaml parse into the Kubernetes
//! types and say what the webhook needs: its paths, its port, its certificate and
//! configuration mounts, least-privilege RBAC, scopes that keep the cluster's own
//! namespace out, and match conditions (CEL, evaluated here) that send only pods naming
//! networks.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::{json, Value};
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

/// Evaluates a match condition against a pod.
fn matches(expr: &str, pod: &Value) -> bool {
    let p = cel::Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut ctx = cel::Context::default();
    ctx.add_variable("object", pod).unwrap();
    match p.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => b,
        other => panic!("not a bool: {other:?}"),
    }
}

#[test]
fn the_webhook_is_deployed_as_it_runs() {
    let d: Deployment = one("webhook.yaml", "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.command.clone().unwrap().join(" ");
    let mounts = c.volume_mounts.clone().unwrap();
    let mounted = |p: &str| mounts.iter().any(|m| p.starts_with(&m.mount_path));
    for flag in ["--tls-cert-file=", "--tls-key-file=", "--config="] {
        let path = args
            .split(' ')
            .find_map(|a| a.strip_prefix(flag))
            .unwrap_or_else(|| panic!("{flag}"));
        assert!(mounted(path), "{path} is mounted");
    }
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.read_only_root_filesystem),
        (Some(true), Some(true))
    );
    let svc: Service = one("webhook.yaml", "Service");
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 443);
    let role: ClusterRole = one("webhook.yaml", "ClusterRole");
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].verbs, ["get"]);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["network-attachment-definitions".to_string()][..])
    );
    assert_eq!(rules[1].verbs, ["create"]);
    assert_eq!(
        rules[1].resources.as_deref(),
        Some(&["subjectaccessreviews".to_string()][..])
    );
}

#[test]
fn the_configurations_scope_the_webhook() {
    let v: ValidatingWebhookConfiguration = one("webhook.yaml", "ValidatingWebhookConfiguration");
    let hooks = v.webhooks.unwrap();
    let nads = hooks.iter().find(|h| h.name.starts_with("nads.")).unwrap();
    let pods = hooks.iter().find(|h| h.name.starts_with("pods.")).unwrap();
    for h in [nads, pods] {
        assert_eq!(h.admission_review_versions, ["v1"]);
        assert_eq!(h.side_effects, "None");
        let svc = h.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.path.as_deref()),
            ("plexus-webhook", Some("/validate"))
        );
    }
    assert_eq!(nads.failure_policy.as_deref(), Some("Fail"));
    // A webhook that is down never blocks pods; kube-system is never sent.
    assert_eq!(pods.failure_policy.as_deref(), Some("Ignore"));
    let sel = pods
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    assert!(sel.iter().any(|e| e.operator == "NotIn"
        && e.values
            .as_deref()
            .unwrap_or_default()
            .contains(&"kube-system".to_string())));
    let cond = &pods.match_conditions.as_ref().unwrap()[0].expression;
    let with = |ann: Value| json!({"metadata": {"name": "p", "annotations": ann}});
    assert!(matches(
        cond,
        &with(json!({"k8s.v1.cni.cncf.io/networks": "a"}))
    ));
    assert!(matches(
        cond,
        &with(json!({"v1.multus-cni.io/default-network": "a"}))
    ));
    assert!(!matches(cond, &with(json!({"other": "x"}))));
    assert!(!matches(cond, &json!({"metadata": {"name": "p"}})));
    let m: MutatingWebhookConfiguration =
        one("webhook-resources.yaml", "MutatingWebhookConfiguration");
    let h = &m.webhooks.unwrap()[0];
    assert_eq!(
        h.client_config.service.as_ref().unwrap().path.as_deref(),
        Some("/mutate")
    );
    assert_eq!(
        h.rules.as_ref().unwrap()[0].operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert!(matches(
        &h.match_conditions.as_ref().unwrap()[0].expression,
        &with(json!({"k8s.v1.cni.cncf.io/networks": "a"}))
    ));
}
