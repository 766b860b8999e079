//! Planning: every selection form, interface numbering, and the decisions taken before
//! anything is attached (D2 pre-checks, D3, D6, D7, isolation, defaultNetworks).

use crate::plan::Planned;
use crate::testing::{net, Fixture};
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use serde_json::{json, Value};

fn fixture() -> Fixture {
    let f = Fixture::new();
    for (ns, name) in [
        ("demo", "a"),
        ("demo", "b"),
        ("demo", "c"),
        ("other", "x"),
        ("default", "g"),
    ] {
        f.cluster.nad(ns, name, net(name, "macvlan", json!({})));
    }
    f
}

fn plan(
    f: &Fixture,
    extra: Value,
    annotations: &[(&str, &str)],
) -> plexus_cni::Result<Vec<Planned>> {
    f.cluster.pod("demo", "p", annotations);
    let e = f.engine(extra);
    let req = f.req("c1", "demo", "p");
    let pod = e.pod(&req)?;
    e.plan_add(&req, pod.as_ref())
}

fn names(p: &[Planned]) -> Vec<(String, String)> {
    p.iter()
        .map(|p| (p.name.clone(), p.ifname.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn every_selection_form_and_the_interface_numbering() {
    let f = fixture();
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("", &[("cluster", "eth0")]),
        ("a", &[("cluster", "eth0"), ("demo/a", "net1")]),
        (
            "a, b",
            &[("cluster", "eth0"), ("demo/a", "net1"), ("demo/b", "net2")],
        ),
        (
            "default/g@data0,c",
            &[
                ("cluster", "eth0"),
                ("default/g", "data0"),
                ("demo/c", "net2"),
            ],
        ),
        (
            "a,b@data0,c",
            &[
                ("cluster", "eth0"),
                ("demo/a", "net1"),
                ("demo/b", "data0"),
                ("demo/c", "net3"),
            ],
        ),
        (
            r#"[{"name":"b","interface":"fast0"},{"name":"a","namespace":"demo"}]"#,
            &[("cluster", "eth0"), ("demo/b", "fast0"), ("demo/a", "net2")],
        ),
        // The same NAD twice gets two interfaces.
        (
            "a,a",
            &[("cluster", "eth0"), ("demo/a", "net1"), ("demo/a", "net2")],
        ),
    ];
    for (annotation, want) in cases {
        let p = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, annotation)]).unwrap();
        assert_eq!(names(&p), pairs(want), "{annotation}");
        assert!(p[0].is_default && p[1..].iter().all(|p| !p.is_default));
    }
}

#[test]
fn the_nads_of_a_selection_of_several_networks_are_announced_together_first() {
    let f = fixture();
    let p = plan(
        &f,
        json!({}),
        &[(NETWORKS_ANNOTATION, "a, other/x@data0, b")],
    )
    .unwrap();
    assert_eq!(p.len(), 4);
    assert_eq!(
        f.cluster.told().prefetched,
        [pairs(&[("demo", "a"), ("other", "x"), ("demo", "b")])]
    );
    // One network: nothing to read together.
    let f = fixture();
    plan(&f, json!({}), &[(NETWORKS_ANNOTATION, "a")]).unwrap();
    assert!(f.cluster.told().prefetched.is_empty());
}

#[test]
fn an_interface_used_twice_is_refused() {
    let f = fixture();
    let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, "a@net2,b")]).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg.contains("\"net2\"") && e.msg.contains("demo/a"),
        "{}",
        e.msg
    );
    let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, "a@eth0")]).unwrap_err();
    assert!(
        e.msg.contains("\"eth0\"") && e.msg.contains("cluster"),
        "{}",
        e.msg
    );
}

#[test]
fn d3_the_runtime_config_goes_to_the_default_network_only() {
    let f = fixture();
    let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                    "bandwidth": {"ingressRate": 1000}, "dns": {"nameservers": ["192.0.2.53"]}});
    let p = plan(
        &f,
        json!({"runtimeConfig": rc}),
        &[(NETWORKS_ANNOTATION, "a")],
    )
    .unwrap();
    assert_eq!(serde_json::Value::Object(p[0].capability_args.clone()), rc);
    assert!(
        p[1].capability_args.is_empty(),
        "{:?}",
        p[1].capability_args
    );
}

#[test]
fn the_runtimes_own_cni_args_go_to_the_default_network_only() {
    let f = fixture();
    f.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a")]);
    let e = f.engine(json!({}));
    let mut req = f.req("c1", "demo", "p");
    // What podman passes for --ip and --mac-address, and an argument of the user's.
    req.args.set("IP", "198.51.100.9");
    req.args.set("MAC", "02:00:00:00:00:99");
    req.args.set("FOO", "bar");
    let pod = e.pod(&req).unwrap();
    let p = e.plan_add(&req, pod.as_ref()).unwrap();
    assert_eq!(p[0].cni_args.get("IP"), Some("198.51.100.9"));
    assert_eq!(p[0].cni_args.get("MAC"), Some("02:00:00:00:00:99"));
    assert_eq!(p[0].cni_args.get("FOO"), Some("bar"));
    for k in ["IP", "MAC", "FOO"] {
        assert_eq!(
            p[1].cni_args.get(k),
            None,
            "{k} stays with the default network"
        );
    }
    assert_eq!(p[1].cni_args.get("K8S_POD_NAME"), Some("p"));
    assert_eq!(p[1].cni_args.get("IgnoreUnknown"), Some("1"));
    // An element's own ips and mac still reach its network the legacy way too.
    f.cluster.pod(
        "demo",
        "p",
        &[(
            NETWORKS_ANNOTATION,
            r#"[{"name":"a","ips":["192.0.2.40/24"],"mac":"02:00:00:00:00:40"}]"#,
        )],
    );
    let pod = e.pod(&req).unwrap();
    let p = e.plan_add(&req, pod.as_ref()).unwrap();
    assert_eq!(p[1].cni_args.get("IP"), Some("192.0.2.40/24"));
    assert_eq!(p[1].cni_args.get("MAC"), Some("02:00:00:00:00:40"));
    assert_eq!(p[0].cni_args.get("IP"), Some("198.51.100.9"));
}

#[test]
fn d2_requests_go_as_capabilities_and_cni_args_and_undeclared_ones_are_refused() {
    let f = fixture();
    let sel = r#"[{"name":"a","ips":["192.0.2.40/24"],"mac":"02:00:00:00:00:40"}]"#;
    let p = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, sel)]).unwrap();
    assert_eq!(p[1].capability_args["ips"], json!(["192.0.2.40/24"]));
    assert_eq!(p[1].capability_args["mac"], json!("02:00:00:00:00:40"));
    assert_eq!(p[1].cni_args.get("IP"), Some("192.0.2.40/24"));
    assert_eq!(p[1].cni_args.get("MAC"), Some("02:00:00:00:00:40"));
    // Only the element's own network gets them.
    assert!(p[0].cni_args.get("IP").is_none());
    assert_eq!(p[0].cni_args.get("IgnoreUnknown"), Some("1"));
    let requests = [
        (
            "portMappings",
            "portMappings",
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        ),
        (
            "bandwidth",
            "bandwidth",
            json!({"ingressRate": 1000, "ingressBurst": 1000}),
        ),
        (
            "infiniband-guid",
            "infinibandGUID",
            json!("c2:11:22:33:44:55:66:77"),
        ),
    ];
    for (key, cap, value) in requests {
        let mut element = serde_json::Map::new();
        element.insert("name".into(), json!("a"));
        element.insert(key.into(), value);
        let sel = json!([element]).to_string();
        let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, &sel)]).unwrap_err();
        assert_eq!(e.code, 7, "{cap}");
        assert!(
            e.msg.contains(cap) && e.msg.contains("demo/a"),
            "{cap}: {}",
            e.msg
        );
    }
    assert!(
        f.exec.calls().is_empty(),
        "nothing is executed while planning"
    );
}

#[test]
fn d6_and_d7_are_decided_while_parsing() {
    let f = fixture();
    let two = r#"[{"name":"a","default-route":["192.0.2.1"]},{"name":"b","default-route":["192.0.2.1"]}]"#;
    let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, two)]).unwrap_err();
    assert!(e.msg.contains("default-route"), "{}", e.msg);
    let both = r#"[{"name":"a","ips":["192.0.2.40/24"],"ipam-claim-reference":"claim"}]"#;
    let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, both)]).unwrap_err();
    assert!(e.msg.contains("ipam-claim-reference"), "{}", e.msg);
    let claim = r#"[{"name":"a","ipam-claim-reference":"claim","cni-args":{"k":"v"}}]"#;
    let p = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, claim)]).unwrap();
    let cfg = p[1].list.plugins[0].to_value();
    assert_eq!(
        cfg["args"]["cni"],
        json!({"k": "v", "ipam-claim-reference": "claim"})
    );
    let events: Vec<String> = f
        .cluster
        .told()
        .events
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(
        events,
        ["InvalidNetworkSelection", "InvalidNetworkSelection"]
    );
}

#[test]
fn namespace_isolation_and_global_namespaces() {
    let f = fixture();
    let iso = json!({"namespaceIsolation": true});
    let e = plan(&f, iso.clone(), &[(NETWORKS_ANNOTATION, "other/x")]).unwrap_err();
    assert!(
        e.msg.contains("namespace isolation") && e.msg.contains("other"),
        "{}",
        e.msg
    );
    assert_eq!(
        names(&plan(&f, iso.clone(), &[(NETWORKS_ANNOTATION, "default/g,a")]).unwrap()).len(),
        3
    );
    let other = json!({"namespaceIsolation": true, "globalNamespaces": "other"});
    assert!(plan(&f, other.clone(), &[(NETWORKS_ANNOTATION, "other/x")]).is_ok());
    assert!(plan(&f, other, &[(NETWORKS_ANNOTATION, "default/g")]).is_err());
    assert!(plan(&f, json!({}), &[(NETWORKS_ANNOTATION, "other/x")]).is_ok());
}

#[test]
fn namespace_isolation_applies_to_the_default_network_annotation_too() {
    let f = fixture();
    f.cluster
        .nad("kube-system", "alt", net("alt", "bridge", json!({})));
    f.cluster
        .nad("demo", "own", net("own", "bridge", json!({})));
    let iso = json!({"namespaceIsolation": true});
    for other in ["other/x", "kube-system/alt", "alt"] {
        let e = plan(&f, iso.clone(), &[(DEFAULT_NETWORK_ANNOTATION, other)]).unwrap_err();
        assert_eq!(e.code, 7, "{other}");
        assert!(
            e.msg.contains("namespace isolation") && e.msg.contains(DEFAULT_NETWORK_ANNOTATION),
            "{other}: {}",
            e.msg
        );
    }
    let p = plan(&f, iso.clone(), &[(DEFAULT_NETWORK_ANNOTATION, "demo/own")]).unwrap();
    assert_eq!(names(&p), pairs(&[("demo/own", "eth0")]));
    assert!(plan(&f, iso, &[(DEFAULT_NETWORK_ANNOTATION, "default/g")]).is_ok());
    // Without isolation, Multus's reading: unqualified names live in multusNamespace.
    let p = plan(&f, json!({}), &[(DEFAULT_NETWORK_ANNOTATION, "alt")]).unwrap();
    assert_eq!(names(&p), pairs(&[("kube-system/alt", "eth0")]));
    assert!(f.exec.calls().is_empty());
}

#[test]
fn default_networks_and_the_default_network_annotation() {
    let f = fixture();
    f.cluster
        .nad("kube-system", "extra", net("extra", "tuning", json!({})));
    f.cluster
        .nad("kube-system", "alt", net("alt", "bridge", json!({})));
    let p = plan(
        &f,
        json!({"defaultNetworks": ["extra"]}),
        &[(NETWORKS_ANNOTATION, "a")],
    )
    .unwrap();
    assert_eq!(
        names(&p),
        pairs(&[
            ("cluster", "eth0"),
            ("kube-system/extra", "net1"),
            ("demo/a", "net2")
        ])
    );
    let p = plan(
        &f,
        json!({}),
        &[(DEFAULT_NETWORK_ANNOTATION, "kube-system/alt")],
    )
    .unwrap();
    assert_eq!(names(&p), pairs(&[("kube-system/alt", "eth0")]));
    // Pods of the system namespaces do not get defaultNetworks.
    f.cluster.pod("kube-system", "sys", &[]);
    let e = f.engine(json!({"defaultNetworks": ["extra"]}));
    let req = f.req("c2", "kube-system", "sys");
    let pod = e.pod(&req).unwrap();
    assert_eq!(e.plan_add(&req, pod.as_ref()).unwrap().len(), 1);
}

#[test]
fn a_missing_nad_is_an_error_and_a_warning_event() {
    let f = fixture();
    let e = plan(&f, json!({}), &[(NETWORKS_ANNOTATION, "a,nope")]).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("demo/nope"), "{}", e.msg);
    let told = f.cluster.told();
    assert_eq!(told.events.len(), 1);
    assert_eq!(told.events[0].0, "NoNetworkFound");
}
