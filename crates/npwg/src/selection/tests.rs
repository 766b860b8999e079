use super::*;

fn ok(v: &str) -> Vec<NetworkSelection> {
    parse_networks(v, "pods").unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn err(v: &str) -> String {
    parse_networks(v, "pods").expect_err(v).to_string()
}

#[test]
fn comma_form() {
    let s = ok(" net-a, other/net-b@data1 ,net-a ");
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].network, ObjectRef::new("pods", "net-a"));
    assert_eq!(s[1].network, ObjectRef::new("other", "net-b"));
    assert_eq!(s[1].interface.as_deref(), Some("data1"));
    assert_eq!(
        s[2].network, s[0].network,
        "the same network twice is two attachments"
    );
    assert!(ok("").is_empty());
    assert!(ok("   ").is_empty());
}

#[test]
fn json_form_every_key() {
    let s = ok(
        r#"[{"name":"n1","namespace":"ns1","ips":["192.0.2.5/24","2001:db8::5"],"mac":"02:00:5e:00:53:01",
        "interface":"data0","portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"UDP"}],
        "bandwidth":{"ingressRate":1000,"ingressBurst":2000},"cni-args":{"k":"v"},"default-route":["192.0.2.1"],
        "deviceID":"0000:00:01.0","org.example.custom":1,"infiniband-guid":"c2:11:22:33:44:55:66:77"},
        {"name":"n2","interfaceRequest":"legacy0","ipam-claim-reference":"vm-a.n2"}, {"name":"n3","namespace":""}]"#,
    );
    let a = &s[0];
    assert_eq!(a.network.to_string(), "ns1/n1");
    let caps = a.capability_requests();
    assert_eq!(caps["ips"], json!(["192.0.2.5/24", "2001:db8::5"]));
    assert_eq!(caps["mac"], "02:00:5e:00:53:01");
    assert_eq!(
        caps["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}])
    );
    assert_eq!(
        caps["bandwidth"],
        json!({"ingressRate": 1000, "ingressBurst": 2000})
    );
    assert_eq!(caps["infinibandGUID"], "c2:11:22:33:44:55:66:77");
    assert_eq!(caps["deviceID"], "0000:00:01.0");
    assert_eq!(a.default_route, Some(vec!["192.0.2.1".parse().unwrap()]));
    assert_eq!(a.cni_args.as_ref().unwrap()["k"], "v");
    assert_eq!(s[1].interface.as_deref(), Some("legacy0"));
    assert_eq!(s[1].ipam_claim_reference.as_deref(), Some("vm-a.n2"));
    assert_eq!(s[2].network.namespace, "pods");
}

#[test]
fn every_malformed_shape_is_an_error_naming_the_place() {
    let cases: &[(&str, &str)] = &[
        (
            r#"[{"name":"a"}"#,
            "neither a comma-separated list nor a JSON list",
        ),
        (r#"{"name":"a"}"#, "JSON list"),
        (r#"["a"]"#, "element 0"),
        (r#"[{"namespace":"x"}]"#, "has no \"name\""),
        (r#"[{"name":"a","ips":"192.0.2.1"}]"#, "wrong type"),
        ("a,,b", "element 1"),
        ("a,", "trailing comma"),
        ("a/b/c", "more than one '/'"),
        ("../x", "namespace \"..\" is not a valid namespace name"),
        ("..", "not a valid Kubernetes object name"),
        ("ns/..", "not a valid Kubernetes object name"),
        ("Bad_NS/net", "not a valid namespace name"),
        ("a@b@c", "'@'"),
        ("net@abcdefghijklmnop", "longer than 15 bytes"),
        ("net@a b", "contains ' '"),
        (
            r#"[{"name":"a","interface":"abcdefghijklmnop"}]"#,
            "field \"interface\"",
        ),
        (r#"[{"name":"a","interface":"x/y"}]"#, "contains '/'"),
        (
            r#"[{"name":"a","mac":"zz:00:00:00:00:00"}]"#,
            "field \"mac\"",
        ),
        (r#"[{"name":"a","mac":"02:00:00:00:00"}]"#, "6-byte"),
        (
            r#"[{"name":"a","ips":["300.1.1.1"]}]"#,
            "not an IP address or CIDR",
        ),
        (r#"[{"name":"a","ips":[]}]"#, "at least one address"),
        (
            r#"[{"name":"a","portMappings":[{"hostPort":0,"containerPort":80}]}]"#,
            "hostPort 0 is outside",
        ),
        (
            r#"[{"name":"a","portMappings":[{"hostPort":80,"containerPort":70000}]}]"#,
            "containerPort 70000",
        ),
        (
            r#"[{"name":"a","portMappings":[{"hostPort":80}]}]"#,
            "containerPort is required",
        ),
        (
            r#"[{"name":"a","portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}]"#,
            "protocol",
        ),
        (
            r#"[{"name":"a","bandwidth":{"ingressBurst":5}}]"#,
            "requires ingressRate",
        ),
        (r#"[{"name":"a","bandwidth":{"egressRate":0}}]"#, "positive"),
        (
            r#"[{"name":"a","default-route":["x"]}]"#,
            "not a gateway IP",
        ),
        (
            r#"[{"name":"a","default-route":[]},{"name":"b","default-route":["192.0.2.1"]}]"#,
            "one element only",
        ),
        (
            r#"[{"name":"a","interface":"d0"},{"name":"b","interface":"d0"}]"#,
            "both request interface \"d0\"",
        ),
        ("a@net1,b@net1", "both request interface"),
        (
            r#"[{"name":"a","ips":["192.0.2.1"],"ipam-claim-reference":"c"}]"#,
            "together with \"ips\"",
        ),
        (
            r#"[{"name":"a","infiniband-guid":"02:00:00:00:00:00"}]"#,
            "8-byte",
        ),
    ];
    for (v, needle) in cases {
        let e = err(v);
        assert!(e.contains(needle), "{v}: {e}");
        assert!(
            e.starts_with("annotation \"k8s.v1.cni.cncf.io/networks\""),
            "{e}"
        );
    }
}

#[test]
fn size_limits() {
    let huge = format!("[{{\"name\":\"{}\"}}]", "a".repeat(MAX_ANNOTATION_BYTES));
    assert!(err(&huge).contains("bytes long"));
    let many = vec!["net"; MAX_ELEMENTS + 1].join(",");
    assert!(err(&many).contains("more than the 128"));
}

#[test]
fn default_network_annotation() {
    let s = parse_default_network("calico", "kube-system").unwrap();
    assert_eq!(s.network.to_string(), "kube-system/calico");
    let e = parse_default_network("a,b", "kube-system")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("v1.multus-cni.io/default-network") && e.contains("exactly one"),
        "{e}"
    );
}

#[test]
fn an_element_written_back_parses_to_the_same_selection() {
    let v = r#"[{"name":"a","namespace":"x","ips":["192.0.2.5/24"],"mac":"02:00:00:00:00:01",
        "infiniband-guid":"00:11:22:33:44:55:66:77","interface":"data0",
        "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"udp","hostIP":"192.0.2.1"}],
        "bandwidth":{"ingressRate":1000,"ingressBurst":20},"deviceID":"0000:00:01.0",
        "cni-args":{"k":"v"},"default-route":["192.0.2.1"]},
        {"name":"b"},{"name":"c","ipam-claim-reference":"claim"}]"#;
    let sels = parse_networks(v, "pods").unwrap();
    for s in &sels {
        let again = parse_networks(&format!("[{}]", s.to_element()), "elsewhere").unwrap();
        assert_eq!(&again[0], s);
    }
    assert_eq!(
        sels[1].to_element(),
        serde_json::json!({"name": "b", "namespace": "pods"})
    );
}
