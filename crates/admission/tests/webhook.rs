//! plexus-webhook over real HTTPS (rustls, a certificate from a test CA, curl as the
//! client the API server would be), reading NADs from the repo's test API server:
//! AdmissionReviews allowed, refused naming the field, with warnings, with a JSONPatch
//! that applies; bad reviews; a renewed certificate served without a restart.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_admission::rules::{Missing, Policy};
use plexus_admission::server::{router, serve, tls_config, Webhook};
use plexus_testapi::{Resource, TestApiServer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// A CA and a serving certificate for 127.0.0.1 written to `dir/{cert,key}.pem`; the
/// CA's PEM.
fn pki(dir: &Path) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "plexus-webhook test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["plexus-webhook.kube-system.svc".into()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "plexus-webhook");
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

struct Hook {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn start(dir: &Path, api: &TestApiServer, policy: Policy) -> Hook {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kc = dir.join("kubeconfig");
    api.write_kubeconfig(&kc);
    let client = rt.block_on(async {
        let cfg = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kc).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(cfg).unwrap()
    });
    let tls = tls_config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Arc::new(Webhook::new(policy, Some(client))));
    rt.spawn(serve(listener, tls, app));
    Hook { addr, _rt: rt }
}

/// POSTs `body` to `path` with curl trusting `ca`; (HTTP status, body).
fn post(h: &Hook, ca: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca).unwrap();
    std::fs::write(dir.path().join("body"), body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args(["-H", "Content-Type: application/json", "-o"])
        .arg(dir.path().join("out"))
        .args(["-w", "%{http_code}", "--data-binary"])
        .arg(format!("@{}", dir.path().join("body").display()))
        .arg(format!("https://{}{path}", h.addr))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    if code == 0 {
        eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    (
        code,
        std::fs::read(dir.path().join("out")).unwrap_or_default(),
    )
}

fn review(kind: &str, op: &str, ns: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let group = if kind == "Pod" { "" } else { "k8s.cni.cncf.io" };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                       "kind": {"group": group, "version": "v1", "kind": kind},
                       "operation": op, "namespace": ns, "object": object, "oldObject": old,
                       "userInfo": {"username": "alice"}}})
    .to_string()
    .into_bytes()
}

fn answer(h: &Hook, ca: &str, path: &str, body: Vec<u8>) -> Value {
    let (code, out) = post(h, ca, path, &body);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    v["response"].clone()
}

fn pod(networks: &str) -> Value {
    json!({"metadata": {"name": "web", "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
           "spec": {"containers": [{"name": "app", "image": "i"}]}})
}

/// RFC 6902 `add` operations, the only ones the webhook emits, applied to `doc`.
fn apply(doc: &mut Value, ops: &Value) {
    for op in ops.as_array().unwrap() {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let mut parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let last = parts.pop().unwrap();
        let mut cur = &mut *doc;
        for p in parts {
            cur = match cur {
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                Value::Object(m) => m.get_mut(&p).unwrap_or_else(|| panic!("{path}: no {p}")),
                _ => panic!("{path}"),
            };
        }
        cur.as_object_mut()
            .unwrap()
            .insert(last, op["value"].clone());
    }
}

#[test]
fn reviews_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let api = TestApiServer::start();
    let cfg = json!("{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\",\"master\":\"eth0\"}");
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "mv", "namespace": "apps"}, "spec": {"config": cfg}}),
    );
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "shared", "namespace": "default"}, "spec": {"config": cfg}}),
    );
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "secret", "namespace": "team-b"}, "spec": {"config": cfg}}),
    );
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "vf", "namespace": "apps",
        "annotations": {"k8s.v1.cni.cncf.io/resourceName": "vendor.example/vf"}}, "spec": {"config": cfg}}),
    );
    let policy = Policy {
        namespace_isolation: true,
        ..Default::default()
    };
    let h = start(dir.path(), &api, policy);
    let nad = |name: &str, spec: Value| {
        review(
            "NetworkAttachmentDefinition",
            "CREATE",
            "apps",
            json!({"metadata": {"name": name}, "spec": spec}),
            None,
        )
    };

    // NADs: allowed; refused naming spec.config; a warning.
    let ok = answer(&h, &ca, "/validate", nad("new", json!({"config": cfg})));
    assert_eq!(ok["allowed"], true);
    let bad = answer(
        &h,
        &ca,
        "/validate",
        nad(
            "new",
            json!({"config": "{\"cniVersion\":\"1.0.0\",\"plugins\":[{\"master\":\"eth0\"}]}"}),
        ),
    );
    assert_eq!(bad["allowed"], false);
    let msg = bad["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"apps/new\": spec.config") && msg.contains("\"type\""),
        "{msg}"
    );
    assert_eq!(bad["status"]["code"], 403);
    let warned = answer(&h, &ca, "/validate", nad("ondisk", json!({})));
    assert_eq!(warned["allowed"], true);
    assert!(
        warned["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no spec.config"),
        "{warned}"
    );

    // Pods: the selection parsed as the plugin parses it; isolation with the CNI's verdicts.
    let pod_review = |sel: &str| review("Pod", "CREATE", "apps", pod(sel), None);
    let r = answer(&h, &ca, "/validate", pod_review("mv,default/shared"));
    assert_eq!(r["allowed"], true, "{r}");
    let r = answer(&h, &ca, "/validate", pod_review("team-b/secret"));
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("target namespace team-b"),
        "{r}"
    );
    let r = answer(
        &h,
        &ca,
        "/validate",
        pod_review("[{\"name\":\"mv\",\"mac\":\"zz\"}]"),
    );
    assert_eq!(r["allowed"], false);
    let m = r["status"]["message"].as_str().unwrap();
    assert!(
        m.contains("k8s.v1.cni.cncf.io/networks") && m.contains("mac"),
        "{m}"
    );
    let r = answer(&h, &ca, "/validate", pod_review("nope"));
    assert_eq!(r["allowed"], true);
    assert!(r["warnings"][0].as_str().unwrap().contains("nope"), "{r}");
    // Hot-plug edits are reviewed.
    let r = answer(
        &h,
        &ca,
        "/validate",
        review(
            "Pod",
            "UPDATE",
            "apps",
            pod("team-b/secret"),
            Some(pod("mv")),
        ),
    );
    assert_eq!(r["allowed"], false);

    // Mutation: one unit of the device resource per reference, as a JSONPatch that applies.
    let mut p = pod("vf,mv,vf");
    p["metadata"]["namespace"] = json!("apps");
    let r = answer(
        &h,
        &ca,
        "/mutate",
        review("Pod", "CREATE", "apps", p.clone(), None),
    );
    assert_eq!(
        (r["allowed"].as_bool(), r["patchType"].as_str()),
        (Some(true), Some("JSONPatch"))
    );
    use base64::Engine as _;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    apply(&mut p, &ops);
    let res = &p["spec"]["containers"][0]["resources"];
    assert_eq!(
        (
            res["requests"]["vendor.example/vf"].as_str(),
            res["limits"]["vendor.example/vf"].as_str()
        ),
        (Some("2"), Some("2"))
    );

    // Bad input: not JSON, an old review version, a body too large; no crash.
    assert_eq!(post(&h, &ca, "/validate", b"{").0, 400);
    let (code, body) = post(
        &h,
        &ca,
        "/validate",
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#,
    );
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("admission.k8s.io/v1beta1"));
    let huge = review(
        "Pod",
        "CREATE",
        "apps",
        json!({"metadata": {"name": "x", "annotations": {"a": "x".repeat(9 << 20)}}}),
        None,
    );
    assert_eq!(post(&h, &ca, "/validate", &huge).0, 413);
    assert_eq!(
        answer(&h, &ca, "/validate", pod_review("mv"))["allowed"],
        true,
        "still serving"
    );
}

#[test]
fn missing_networks_can_be_refused_and_a_renewed_certificate_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let api = TestApiServer::start();
    let h = start(
        dir.path(),
        &api,
        Policy {
            missing_networks: Missing::Deny,
            ..Default::default()
        },
    );
    let r = answer(
        &h,
        &ca,
        "/validate",
        review("Pod", "CREATE", "apps", pod("nope"), None),
    );
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no NetworkAttachmentDefinition nope"),
        "{r}"
    );
    // The certificate is renewed in place (by another CA, so that the test tells them
    // apart).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let ca2 = pki(dir.path());
    let plain = || {
        review(
            "Pod",
            "CREATE",
            "apps",
            json!({"metadata": {"name": "x"}}),
            None,
        )
    };
    let r = answer(&h, &ca2, "/validate", plain());
    assert_eq!(r["allowed"], true);
    let (code, _) = post(&h, &ca, "/validate", &plain());
    assert_eq!(code, 0, "the old CA no longer verifies the server");
}

/// A Role granting `use` on NAD `nad` of `ns`, bound to `subject`.
fn grant(api: &TestApiServer, ns: &str, nad: &str, subject: Value) {
    let name = format!("use-{nad}-{}", subject["name"].as_str().unwrap());
    api.put(
        Resource::Roles,
        json!({"metadata": {"name": name, "namespace": ns},
               "rules": [{"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"],
                          "resourceNames": [nad], "verbs": ["use"]}]}),
    );
    api.put(
        Resource::RoleBindings,
        json!({"metadata": {"name": name, "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [subject]}),
    );
}

#[test]
fn access_control_asks_rbac_for_the_creator_and_the_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let mut api = TestApiServer::start();
    let cfg = json!("{\"cniVersion\":\"1.0.0\",\"type\":\"macvlan\",\"master\":\"eth0\"}");
    for n in ["mv", "other"] {
        api.put(
            Resource::Nads,
            json!({"metadata": {"name": n, "namespace": "apps"}, "spec": {"config": cfg}}),
        );
    }
    let h = start(
        dir.path(),
        &api,
        Policy {
            access_control: true,
            ..Default::default()
        },
    );
    let ask = |sel: &str, sa: Option<&str>| {
        let mut p = pod(sel);
        if let Some(sa) = sa {
            p["spec"]["serviceAccountName"] = json!(sa);
        }
        answer(
            &h,
            &ca,
            "/validate",
            review("Pod", "CREATE", "apps", p, None),
        )
    };
    // Nobody may use anything yet: refused, naming the users and how to grant.
    let r = ask("mv", None);
    assert_eq!(r["allowed"], false);
    let m = r["status"]["message"].as_str().unwrap();
    assert!(
        m.contains("alice")
            && m.contains("system:serviceaccount:apps:default")
            && m.contains("\"use\""),
        "{m}"
    );
    // The creator is granted mv (by name): mv is allowed, other is not.
    grant(&api, "apps", "mv", json!({"kind": "User", "name": "alice"}));
    // A denial is not cached: the grant applies at once.
    let r = ask("mv", Some("fresh"));
    assert_eq!(r["allowed"], true, "{r}");
    let r = ask("other", Some("fresh"));
    assert_eq!(r["allowed"], false, "{r}");
    // A workload's pods are created by a controller: its service account counts.
    grant(
        &api,
        "apps",
        "other",
        json!({"kind": "ServiceAccount", "name": "runner", "namespace": "apps"}),
    );
    let r = ask("other", Some("runner"));
    assert_eq!(r["allowed"], true, "{r}");
    // The API server gone: what was granted is still known for a while (cached); what
    // must be asked fails the webhook (500), and the API server applies failurePolicy.
    api.stop();
    let (code, body) = post(
        &h,
        &ca,
        "/validate",
        &review("Pod", "CREATE", "apps", pod("other"), None),
    );
    assert_eq!(code, 500, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("cannot check access"));
}
