//! The test API server answers kube-rs the way kube-apiserver does: Status bodies
//! with reason and code, resourceVersion conflicts, merge patch on pods/status,
//! field selectors, watch.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use plexus_testapi::{Credential, KeyKind, Resource, Security, TestApiServer};
use serde_json::json;

fn client(api: &TestApiServer, rt: &tokio::runtime::Runtime) -> Client {
    client_as(api, rt, Credential::Token, |kc| kc)
}

/// A client from the server's kubeconfig for `credential`, edited by `edit` first.
fn client_as(
    api: &TestApiServer,
    rt: &tokio::runtime::Runtime,
    credential: Credential,
    edit: impl FnOnce(String) -> String,
) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    api.write_kubeconfig_as(&kc, credential);
    std::fs::write(&kc, edit(std::fs::read_to_string(&kc).unwrap())).unwrap();
    let cfg = rt
        .block_on(Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kc).unwrap(),
            &KubeConfigOptions::default(),
        ))
        .unwrap();
    let _g = rt.enter();
    Client::try_from(cfg).unwrap()
}

fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other}"),
    }
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}),
    )
    .unwrap()
}

#[test]
fn crud_status_codes_and_conflicts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = TestApiServer::start();
    let c = client(&api, &rt);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "ns1");
    rt.block_on(async {
        assert_eq!(
            api_err(pods.get("nope").await.unwrap_err()),
            (404, "NotFound".into())
        );
        assert!(pods.get_opt("nope").await.unwrap().is_none());
        let created = pods
            .create(&PostParams::default(), &pod("a", "n1"))
            .await
            .unwrap();
        let rv1 = created.metadata.resource_version.clone().unwrap();
        assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
        assert_eq!(
            api_err(
                pods.create(&PostParams::default(), &pod("a", "n1"))
                    .await
                    .unwrap_err()
            ),
            (409, "AlreadyExists".into())
        );
        let mut nameless = pod("x", "n1");
        nameless.metadata.name = None;
        assert_eq!(
            api_err(
                pods.create(&PostParams::default(), &nameless)
                    .await
                    .unwrap_err()
            ),
            (422, "Invalid".into())
        );
        // Merge patch on the status subresource changes annotations, not the spec.
        let patch = json!({"metadata": {"annotations": {"k": "v"}}, "spec": {"nodeName": "other"}});
        let p = pods
            .patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(p.metadata.annotations.unwrap()["k"], "v");
        assert_eq!(p.spec.unwrap().node_name.unwrap(), "n1");
        assert_ne!(p.metadata.resource_version.unwrap(), rv1);
        // A stale resourceVersion is a conflict, on PUT and on PATCH.
        let mut stale = created.clone();
        stale.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        assert_eq!(
            api_err(
                pods.replace("a", &PostParams::default(), &stale)
                    .await
                    .unwrap_err()
            ),
            (409, "Conflict".into())
        );
        let stale_patch = json!({"metadata": {"resourceVersion": rv1, "annotations": {"k": "w"}}});
        assert_eq!(
            api_err(
                pods.patch_status("a", &PatchParams::default(), &Patch::Merge(&stale_patch))
                    .await
                    .unwrap_err()
            ),
            (409, "Conflict".into())
        );
        // Server-side apply is not served: 415, as for any unknown patch type.
        let apply =
            Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}));
        assert_eq!(
            api_err(
                pods.patch("a", &PatchParams::apply("test"), &apply)
                    .await
                    .unwrap_err()
            )
            .0,
            415
        );
        pods.delete("a", &DeleteParams::default()).await.unwrap();
        assert_eq!(
            api_err(
                pods.delete("a", &DeleteParams::default())
                    .await
                    .unwrap_err()
            ),
            (404, "NotFound".into())
        );
    });
}

#[test]
fn lists_field_selectors_nads_and_watch() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = TestApiServer::start();
    let c = client(&api, &rt);
    api.put(
        Resource::Pods,
        json!({"metadata": {"name": "on-a", "namespace": "x"}, "spec": {"nodeName": "node-a"}}),
    );
    api.put(
        Resource::Pods,
        json!({"metadata": {"name": "on-b", "namespace": "y"}, "spec": {"nodeName": "node-b"}}),
    );
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "mv", "namespace": "x"}, "spec": {"config": "{}"}}),
    );
    let all: Api<Pod> = Api::all(c.clone());
    let nads: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), "x", &plexus_kube::nad_resource());
    rt.block_on(async {
        let l = all.list(&ListParams::default().fields("spec.nodeName=node-a")).await.unwrap();
        assert_eq!(l.items.len(), 1);
        assert_eq!(l.items[0].metadata.name.as_deref(), Some("on-a"));
        assert!(l.metadata.resource_version.is_some());
        assert_eq!(api_err(all.list(&ListParams::default().fields("status.phase=Running")).await.unwrap_err()), (400, "BadRequest".into()));
        let n = nads.get("mv").await.unwrap();
        assert_eq!(n.data["spec"]["config"], "{}");
        assert_eq!(n.types.unwrap().kind, "NetworkAttachmentDefinition");
        let rv = l.metadata.resource_version.unwrap();
        let mut w = all.watch(&WatchParams::default().fields("spec.nodeName=node-a").timeout(5), &rv).await.unwrap().boxed();
        api.put(Resource::Pods, json!({"metadata": {"name": "later-b", "namespace": "x"}, "spec": {"nodeName": "node-b"}}));
        api.put(Resource::Pods, json!({"metadata": {"name": "later-a", "namespace": "x"}, "spec": {"nodeName": "node-a"}}));
        api.delete(Resource::Pods, "x", "on-a");
        let mut seen = Vec::new();
        while let Some(ev) = w.next().await {
            match ev.unwrap() {
                WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.metadata.name.unwrap())),
                WatchEvent::Deleted(p) => {
                    seen.push(format!("DELETED {}", p.metadata.name.unwrap()));
                    break;
                }
                other => seen.push(format!("{other:?}")),
            }
        }
        assert_eq!(seen, ["ADDED later-a", "DELETED on-a"], "only this node's pods, in order");
    });
    assert!(api.count("GET", "watch=true") >= 1);
}

#[test]
fn tls_and_authentication_as_kube_apiserver() {
    // The default server: HTTPS with an RSA 2048 certificate of its own CA; a bearer
    // token or a client certificate of that CA authenticates, anything else is 401.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = TestApiServer::start();
    assert!(api.url().starts_with("https://127.0.0.1:"));
    assert!(api.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
    api.put(
        Resource::Pods,
        json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"nodeName": "n"}}),
    );
    let get = |c: Client| {
        let pods: Api<Pod> = Api::namespaced(c, "x");
        rt.block_on(pods.get("p"))
    };
    assert!(get(client(&api, &rt)).is_ok());
    assert!(get(client_as(&api, &rt, Credential::ClientCertificate, |k| k)).is_ok());
    let token = api.token().to_string();
    let wrong = client_as(&api, &rt, Credential::Token, |k| {
        k.replace(&token, "not-a-token")
    });
    assert_eq!(
        api_err(get(wrong).unwrap_err()),
        (401, "Unauthorized".into())
    );
    let anonymous = client_as(&api, &rt, Credential::Token, |k| {
        k.replace(&format!("token: {token}"), "{}")
    });
    assert_eq!(
        api_err(get(anonymous).unwrap_err()),
        (401, "Unauthorized".into())
    );
    // A client that does not trust the server's CA does not get through the handshake
    // (the servers of one process share their keys, so the other CA is an ECDSA one).
    let other = TestApiServer::start_with(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Security::Tls(KeyKind::EcdsaP256),
    );
    let ca_line = |api: &TestApiServer| {
        let dir = tempfile::tempdir().unwrap();
        api.write_kubeconfig(&dir.path().join("kc"));
        let kc = std::fs::read_to_string(dir.path().join("kc")).unwrap();
        kc.lines()
            .find(|l| l.contains("certificate-authority-data"))
            .unwrap()
            .to_string()
    };
    let (ours, theirs) = (ca_line(&api), ca_line(&other));
    let distrusting = client_as(&api, &rt, Credential::Token, |k| k.replace(&ours, &theirs));
    assert!(matches!(
        get(distrusting).unwrap_err(),
        kube::Error::HyperError(_) | kube::Error::Service(_)
    ));
    // Tokens added later are accepted; only authenticated requests reach the log.
    api.add_token(
        "later",
        plexus_testapi::User {
            name: "someone".into(),
            groups: vec![],
        },
    );
    let later = client_as(&api, &rt, Credential::Token, |k| k.replace(&token, "later"));
    assert!(get(later).is_ok());
    assert_eq!(api.count("GET", "/pods/p"), 3);
}

#[test]
fn ecdsa_and_plain_servers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ecdsa = TestApiServer::start_with(listener, Security::Tls(KeyKind::EcdsaP256));
    // Plain HTTP without authentication, the old insecure port: kept to show the
    // difference, and for tests that say why they need it.
    let plain = TestApiServer::start_plain();
    assert!(plain.url().starts_with("http://") && plain.ca_pem().is_none());
    for api in [&ecdsa, &plain] {
        let pods: Api<Pod> = Api::namespaced(client(api, &rt), "x");
        assert!(rt.block_on(pods.get_opt("p")).unwrap().is_none());
    }
}

/// `curl` against the server: method, path, extra headers, body file; (status, content
/// type, body bytes).
fn curl(
    api: &TestApiServer,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, api.ca_pem().unwrap()).unwrap();
    let out_file = dir.path().join("out");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-X", method, "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {}", api.token())])
        .args(["-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{content_type}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        let f = dir.path().join("body");
        std::fs::write(&f, b).unwrap();
        cmd.arg("--data-binary").arg(format!("@{}", f.display()));
    }
    let out = cmd.arg(format!("{}{path}", api.url())).output().unwrap();
    let meta = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, ct) = meta.split_once(' ').unwrap_or((&meta, ""));
    (
        code.parse().unwrap_or(0),
        ct.to_string(),
        std::fs::read(&out_file).unwrap_or_default(),
    )
}

#[test]
fn kubernetes_protobuf_for_built_in_types_json_for_custom_resources() {
    use plexus_testapi::protobuf;
    let api = TestApiServer::start();
    let stored = api.put(
        Resource::Pods,
        json!({"metadata": {"name": "p", "namespace": "ns", "annotations": {"a": "1"}},
               "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"cpu": "250m"}}}]}}),
    );
    const PB: &str = "application/vnd.kubernetes.protobuf";
    // A Go client's GET: protobuf preferred, JSON accepted.
    let (code, ct, body) = curl(
        &api,
        "GET",
        "/api/v1/namespaces/ns/pods/p",
        &[&format!("Accept: {PB}, application/json")],
        None,
    );
    assert_eq!((code, ct.as_str()), (200, PB));
    assert!(body.starts_with(b"k8s\0"));
    assert_eq!(protobuf::decode(Resource::Pods, &body).unwrap(), stored);
    // The status update Multus sends: PUT pods/status with a protobuf body.
    let mut next = stored.clone();
    next["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] = json!("[]");
    next["status"] = json!({"phase": "Running"});
    let pb = protobuf::encode(Resource::Pods, &next, false)
        .unwrap()
        .unwrap();
    let (code, _, _) = curl(
        &api,
        "PUT",
        "/api/v1/namespaces/ns/pods/p/status",
        &[&format!("Content-Type: {PB}")],
        Some(&pb),
    );
    assert_eq!(code, 200);
    let now = api.get(Resource::Pods, "ns", "p").unwrap();
    assert_eq!(
        now["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"],
        "[]"
    );
    assert_eq!(now["status"]["phase"], "Running");
    assert_eq!(
        now["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "250m"
    );
    // Lists in protobuf; events created from protobuf.
    let (code, ct, body) = curl(
        &api,
        "GET",
        "/api/v1/namespaces/ns/pods",
        &[&format!("Accept: {PB}")],
        None,
    );
    assert_eq!((code, ct.as_str()), (200, PB));
    assert!(body.starts_with(b"k8s\0") && body.windows(7).any(|w| w == b"PodList"));
    let ev = json!({"metadata": {"name": "e1", "namespace": "ns"}, "reason": "AddedInterface",
                    "involvedObject": {"kind": "Pod", "name": "p", "namespace": "ns"},
                    "firstTimestamp": "2026-12-06T10:00:00Z", "count": 1, "type": "Normal"});
    let pb = protobuf::encode(Resource::Events, &ev, false)
        .unwrap()
        .unwrap();
    let (code, _, _) = curl(
        &api,
        "POST",
        "/api/v1/namespaces/ns/events",
        &[&format!("Content-Type: {PB}")],
        Some(&pb),
    );
    assert_eq!(code, 201);
    let e = api.get(Resource::Events, "ns", "e1").unwrap();
    assert_eq!(
        (e["reason"].as_str(), e["firstTimestamp"].as_str()),
        (Some("AddedInterface"), Some("2026-12-06T10:00:00Z"))
    );
    // Custom resources: JSON only, as kube-apiserver serves them.
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "n", "namespace": "ns"}, "spec": {"config": "{}"}}),
    );
    let (code, ct, _) = curl(
        &api,
        "GET",
        "/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions/n",
        &[&format!("Accept: {PB}, application/json")],
        None,
    );
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    let (code, _, body) = curl(
        &api,
        "POST",
        "/apis/k8s.cni.cncf.io/v1/namespaces/ns/network-attachment-definitions",
        &[&format!("Content-Type: {PB}")],
        Some(b"k8s\0"),
    );
    assert_eq!(code, 415, "{}", String::from_utf8_lossy(&body));
    // A body that is not protobuf: 400 with a Status, nothing changed.
    let (code, _, body) = curl(
        &api,
        "PUT",
        "/api/v1/namespaces/ns/pods/p/status",
        &[&format!("Content-Type: {PB}")],
        Some(b"k8s\0\x0a\xff\xff\xff"),
    );
    assert_eq!(code, 400);
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st["reason"], "BadRequest");
    assert_eq!(
        api.get(Resource::Pods, "ns", "p").unwrap()["status"]["phase"],
        "Running"
    );
}

#[test]
fn subject_access_reviews_are_answered_by_rbac() {
    let api = TestApiServer::start();
    let sar = |user: &str, groups: &[&str], ns: &str, verb: &str, name: &str| {
        let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": {"namespace": ns, "verb": verb,
                     "group": "k8s.cni.cncf.io", "resource": "network-attachment-definitions", "name": name}}});
        let (code, _, out) = curl(
            &api,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &["Content-Type: application/json"],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&out));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v["status"]["allowed"].as_bool().unwrap()
    };
    assert!(!sar("alice", &[], "apps", "use", "mv"), "nothing granted");
    api.put(Resource::Roles, json!({"metadata": {"name": "nets", "namespace": "apps"},
        "rules": [{"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"],
                   "resourceNames": ["mv"], "verbs": ["use", "get"]}]}));
    api.put(
        Resource::RoleBindings,
        json!({"metadata": {"name": "nets", "namespace": "apps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nets"},
        "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "net-admins"},
                     {"kind": "ServiceAccount", "name": "runner"}]}),
    );
    assert!(sar("alice", &[], "apps", "use", "mv"));
    assert!(
        !sar("alice", &[], "apps", "use", "other"),
        "resourceNames restrict"
    );
    assert!(!sar("alice", &[], "apps", "delete", "mv"), "verbs restrict");
    assert!(
        !sar("alice", &[], "elsewhere", "use", "mv"),
        "a RoleBinding is its namespace's"
    );
    assert!(sar("bob", &["net-admins"], "apps", "use", "mv"), "groups");
    assert!(
        sar(
            "system:serviceaccount:apps:runner",
            &[],
            "apps",
            "use",
            "mv"
        ),
        "the binding's namespace is the SA's"
    );
    assert!(!sar(
        "system:serviceaccount:other:runner",
        &[],
        "apps",
        "use",
        "mv"
    ));
    // A ClusterRole bound cluster-wide.
    api.put(
        Resource::ClusterRoles,
        json!({"metadata": {"name": "all-nets"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["use"]}]}),
    );
    api.put(Resource::ClusterRoleBindings, json!({"metadata": {"name": "all-nets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "all-nets"},
        "subjects": [{"kind": "User", "name": "root-ish"}]}));
    assert!(sar("root-ish", &[], "anywhere", "use", "x"));
    // A review without a subject is Invalid, as kube-apiserver answers.
    let (code, _, _) = curl(
        &api,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        &["Content-Type: application/json"],
        Some(br#"{"spec": {"resourceAttributes": {"verb": "use"}}}"#),
    );
    assert_eq!(code, 422);
}
