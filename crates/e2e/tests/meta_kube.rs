//! The `plexus` meta-plugin against the repo's test API server, through kube-rs over
//! real HTTP: pod and NAD reads, network-status on `pods/status` with conflict retry,
//! events, UID checks, vanished pods, API outages on ADD and DEL.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_testapi::{Resource, TestApiServer};
use serde_json::{json, Value};

fn setup(n: usize) -> (TestApiServer, Node, String) {
    let (node, api) = Node::kube(n);
    let br = unique("kbr");
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "br",
            &bridge_host_local(&br, "198.51.100.0/24", &node.ipam_dir()),
        ),
    );
    api.put(
        Resource::Nads,
        nad_object("demo", "mv", &macvlan_static(&node.master)),
    );
    (api, node, br)
}

fn status_of(api: &TestApiServer, ns: &str, pod: &str) -> Value {
    let p = api.get(Resource::Pods, ns, pod).unwrap();
    let s = p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
        .as_str()
        .expect("network-status written");
    serde_json::from_str(s).unwrap()
}

fn events(api: &TestApiServer, reason: &str) -> Vec<Value> {
    api.list(Resource::Events)
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

#[test]
fn add_writes_status_and_events_del_works_without_the_api() {
    let (mut api, n, _) = setup(1);
    let uid = "11111111-2222-4333-8444-555555555555";
    api.put(
        Resource::Pods,
        pod_object(
            "demo",
            "web",
            uid,
            Some(r#"[{"name":"mv","ips":["203.0.113.7/24"],"interface":"fast0"},{"name":"br"}]"#),
        ),
    );
    api.clear_requests();
    let connections = api.connections();
    let http2 = api.http2_requests();
    let att = n.attachment(0, &unique("cid"), "demo", "web", &[("K8S_POD_UID", uid)]);
    n.add(&att).unwrap();
    // Every request of the ADD on one kept-alive connection: one TLS handshake. The
    // server offers HTTP/2 (as kube-apiserver does), and every request used it: the
    // pod, two NADs, the status and three events.
    assert_eq!(api.connections() - connections, 1, "{:?}", api.requests());
    assert_eq!(
        api.http2_requests() - http2,
        api.requests().len(),
        "{:?}",
        api.requests()
    );
    assert_eq!(api.requests().len(), 7, "{:?}", api.requests());
    let st = status_of(&api, "demo", "web");
    let summary: Vec<(String, String, bool)> = st
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["interface"].as_str().unwrap().into(),
                // Omitted when false, as Multus writes it.
                e.get("default")
                    .map(|d| d.as_bool().unwrap())
                    .unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("cluster".into(), "eth0".into(), true),
            ("demo/mv".into(), "fast0".into(), false),
            ("demo/br".into(), "net2".into(), false)
        ]
    );
    assert_eq!(st[1]["ips"], json!(["203.0.113.7"]));
    let added = events(&api, "AddedInterface");
    assert_eq!(added.len(), 3);
    assert!(
        added.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .starts_with("Add fast0 [203.0.113.7/24] from demo/mv")),
        "{added:?}"
    );
    assert_eq!(added[0]["involvedObject"]["uid"], uid);
    assert_eq!(added[0]["type"], "Normal");
    // Reads: the pod once (its resourceVersion makes the status write conditional); one GET per NAD.
    // Both from the API server's watch cache (resourceVersion=0), as thick mode reads
    // from its own.
    assert_eq!(
        api.count("GET", "/pods/web?"),
        1,
        "one read of the pod: {:?}",
        api.requests()
    );
    assert_eq!(api.count("GET", "/pods/web"), 1);
    assert_eq!(
        api.count("GET", "network-attachment-definitions/"),
        api.count("GET", "resourceVersion=0") - 1
    );
    assert_eq!(api.count("GET", "network-attachment-definitions/"), 2);
    assert_eq!(api.count("PATCH", "/pods/web/status"), 1);

    api.stop();
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn a_pod_and_nad_the_watch_cache_has_not_yet_are_read_from_storage() {
    // An API server's watch cache a little behind etcd (another replica's, behind a
    // load balancer) does not have a pod or NAD made just now: answered 404 for
    // resourceVersion=0, they are read again, consistently, and the ADD goes on.
    let (api, n, _) = setup(1);
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    // The reads with a query string: kube-rs asks resourceVersion=0 as `?&resourceVersion=0`.
    api.fail_when("GET", "/pods/p?", 1, 404);
    api.fail_when("GET", "network-attachment-definitions/br?", 1, 404);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    let reads = |needle: &str| {
        api.requests()
            .into_iter()
            .filter(|(m, p)| m == "GET" && p.contains(needle))
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    };
    for needle in ["/pods/p", "network-attachment-definitions/br"] {
        let r = reads(needle);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].ends_with("resourceVersion=0"), "{r:?}");
        assert!(!r[1].contains('?'), "{r:?}");
    }
    let st = status_of(&api, "demo", "p");
    assert_eq!(st[1]["name"], "demo/br", "{st}");
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn status_write_retries_a_conflict_and_transient_errors() {
    let (api, n, _) = setup(1);
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    api.fail_when("PATCH", "/status", 1, 409);
    api.fail_when("GET", "network-attachment-definitions/br", 2, 503);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(
        api.count("PATCH", "/pods/p/status"),
        2,
        "409 Conflict is retried"
    );
    assert_eq!(
        api.count("GET", "network-attachment-definitions/br"),
        3,
        "503 is retried"
    );
    assert_eq!(status_of(&api, "demo", "p").as_array().unwrap().len(), 2);
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn missing_nad_and_bad_annotation_give_warning_events() {
    let (api, n, _) = setup(1);
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "u1", Some("br,ghost")),
    );
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg
            .contains("cannot find a network-attachment-definition (ghost) in namespace (demo)"),
        "{e}"
    );
    let nf = events(&api, "NoNetworkFound");
    assert_eq!(nf.len(), 1);
    assert_eq!(nf[0]["type"], "Warning");
    api.put(
        Resource::Pods,
        pod_object(
            "demo",
            "q",
            "u2",
            Some("[{\"name\":\"br\",\"mac\":\"nope\"}]"),
        ),
    );
    let att = n.attachment(0, &unique("cid"), "demo", "q", &[]);
    let e = n.add(&att).unwrap_err();
    assert!(e.msg.contains("field \"mac\""), "{e}");
    let bad = events(&api, "InvalidNetworkSelection");
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["message"]
        .as_str()
        .unwrap()
        .contains("\"nope\" is not a 6-byte Ethernet MAC address"));
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn uid_checks_static_pods_and_vanished_pods() {
    let (api, n, _) = setup(1);
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "api-uid", Some("br")),
    );
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("K8S_POD_UID", "runtime-uid")],
    );
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 3);
    assert!(e.msg.contains("UID mismatch"), "{e}");
    // A static pod's API object is a mirror with another UID: tolerated.
    let mut mirror = pod_object("demo", "p", "api-uid", Some("br"));
    mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!("abc");
    api.put(Resource::Pods, mirror);
    n.add(&att).unwrap();
    n.del(&att).unwrap();
    // A pod deleted before its ADD: an empty result, nothing attached.
    let att = n.attachment(0, &unique("cid"), "demo", "gone", &[]);
    let r = n.add(&att).unwrap().to_current();
    assert_eq!(r.interfaces[0].name, "eth0");
    assert_eq!(r.ips[0].address.to_string(), "0.0.0.0/0");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn api_down_at_add_is_try_again_later_and_leaves_nothing() {
    let (mut api, n, _) = setup(1);
    api.stop();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(
        e.msg.contains("pod \"demo/p\"") && e.msg.contains("Kubernetes API"),
        "{e}"
    );
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn a_broken_kubeconfig_fails_add_but_not_check_or_del() {
    let (api, n, _) = setup(1);
    api.put(Resource::Pods, pod_object("demo", "p", "u1", Some("br")));
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let res = n.add(&att).unwrap();
    // The kubeconfig becomes unreadable: CHECK and DEL work from local state and never
    // make a client; a new ADD fails naming the file, and leaves nothing.
    let kc = n.conf["kubeconfig"].as_str().unwrap().to_string();
    std::fs::write(&kc, "clusters: [unterminated").unwrap();
    api.clear_requests();
    n.check(&att, &res).unwrap();
    n.del(&att).unwrap();
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    let again = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&again).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    assert!(
        e.msg.contains("\"kubeconfig\"") && e.msg.contains(&kc),
        "{e}"
    );
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn del_after_nad_and_pod_deleted_and_nad_changed() {
    let (api, n, _) = setup(1);
    api.put(
        Resource::Pods,
        pod_object(
            "demo",
            "p",
            "u1",
            Some(r#"[{"name":"br"},{"name":"mv","ips":["203.0.113.8/24"]}]"#),
        ),
    );
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let r = n.add(&att).unwrap();
    // The NAD changes to something else entirely, the other is deleted, so is the pod.
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "br",
            &json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "elsewhere"}),
        ),
    );
    api.delete(Resource::Nads, "demo", "mv");
    api.delete(Resource::Pods, "demo", "p");
    n.check(&att, &r).unwrap();
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}
