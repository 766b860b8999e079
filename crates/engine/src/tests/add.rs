//! ADD over the fakes: order, what is reported, and what a failure at each step tears
//! down.

use crate::testing::{net, Fixture};
use plexus_npwg::NETWORKS_ANNOTATION;
use serde_json::json;

/// A pod in `demo` with two secondary networks (macvlan, then tuning).
fn two_networks() -> Fixture {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    f.cluster.nad("demo", "b", net("b", "tuning", json!({})));
    f.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a,b")]);
    f
}

#[test]
fn add_runs_every_delegate_in_order_and_reports_once() {
    let f = two_networks();
    let e = f.engine(json!({}));
    let (r, networks) = e.add_networks(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(networks, ["cluster", "demo/a", "demo/b"]);
    assert_eq!(
        f.exec.log(),
        ["ADD bridge eth0", "ADD macvlan net1", "ADD tuning net2"]
    );
    // The default network's result, in the configuration's version.
    assert_eq!(r.version(), "1.0.0");
    assert_eq!(r.to_current().interfaces[0].name, "eth0");
    let told = f.cluster.told();
    assert_eq!(told.statuses.len(), 1, "one network-status write");
    let (pod, status) = &told.statuses[0];
    assert_eq!(pod, "demo/p");
    let ifs: Vec<&str> = status.iter().map(|s| s.interface.as_str()).collect();
    assert_eq!(ifs, ["eth0", "net1", "net2"]);
    let events: Vec<&str> = told.events.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        events,
        [
            "Add eth0 [192.0.2.11/24] from cluster",
            "Add net1 [192.0.2.12/24] from demo/a",
            "Add net2 [192.0.2.13/24] from demo/b"
        ]
    );
    assert_eq!(
        f.files(),
        [
            "plexus/c1.json",
            "results/a-c1-net1",
            "results/b-c1-net2",
            "results/cluster-c1-eth0"
        ]
    );
    // The delegates got the pod's CNI_ARGS, IgnoreUnknown first.
    let args = &f.exec.calls()[1].args;
    assert_eq!(args.get("IgnoreUnknown"), Some("1"));
    assert_eq!(args.get("K8S_POD_NAME"), Some("p"));
}

#[test]
fn a_failure_at_each_delegate_rolls_back_what_was_attempted_in_reverse() {
    let steps = [("bridge", "eth0"), ("macvlan", "net1"), ("tuning", "net2")];
    for (k, (plugin, ifname)) in steps.iter().enumerate() {
        let f = two_networks();
        f.exec.fail("ADD", plugin, ifname);
        let err = f
            .engine(json!({}))
            .add(&f.req("c1", "demo", "p"))
            .unwrap_err();
        assert_eq!(err.code, 11, "{plugin}");
        assert!(
            err.msg.contains(&format!("interface {ifname:?}")),
            "{}",
            err.msg
        );
        // Every planned attachment is on file as attempted before the first delegate,
        // so all are DELed, in reverse (a DEL of one never added must succeed, CNI §2).
        let mut want: Vec<String> = steps[..=k]
            .iter()
            .map(|(p, i)| format!("ADD {p} {i}"))
            .collect();
        want.extend(steps.iter().rev().map(|(p, i)| format!("DEL {p} {i}")));
        assert_eq!(f.exec.log(), want, "failure at {plugin}");
        assert!(f.files().is_empty(), "left behind: {:?}", f.files());
        assert!(f.cluster.told().statuses.is_empty());
    }
}

#[test]
fn a_failed_status_write_rolls_everything_back() {
    let f = two_networks();
    *f.cluster.status_fails.lock().unwrap() = true;
    let err = f
        .engine(json!({}))
        .add(&f.req("c1", "demo", "p"))
        .unwrap_err();
    assert_eq!(err.code, 11);
    assert!(err.msg.contains("writing network-status"), "{}", err.msg);
    assert_eq!(
        f.exec.log()[3..],
        ["DEL tuning net2", "DEL macvlan net1", "DEL bridge eth0"]
    );
    assert!(f.files().is_empty(), "left behind: {:?}", f.files());
}

#[test]
fn d2_a_request_the_result_does_not_carry_fails_and_rolls_back() {
    let f = Fixture::new();
    f.cluster.nad(
        "demo",
        "a",
        net("a", "macvlan", json!({"capabilities": {"ips": true}})),
    );
    f.cluster.pod(
        "demo",
        "p",
        &[(
            NETWORKS_ANNOTATION,
            r#"[{"name":"a","ips":["192.0.2.40/24"]}]"#,
        )],
    );
    *f.exec.ignore_requests.lock().unwrap() = true;
    let err = f
        .engine(json!({}))
        .add(&f.req("c1", "demo", "p"))
        .unwrap_err();
    assert_eq!(err.code, 7);
    assert!(
        err.msg.contains("192.0.2.40/24") && err.msg.contains("did not honour"),
        "{}",
        err.msg
    );
    assert_eq!(f.exec.log()[2..], ["DEL macvlan net1", "DEL bridge eth0"]);
    assert!(f.files().is_empty());
    // Honoured, the same ADD passes and the address reaches the delegate as asked.
    *f.exec.ignore_requests.lock().unwrap() = false;
    f.engine(json!({})).add(&f.req("c1", "demo", "p")).unwrap();
    let add = &f.exec.calls()[5];
    assert_eq!(add.stdin["runtimeConfig"]["ips"], json!(["192.0.2.40/24"]));
}

#[test]
fn an_existing_interface_refuses_the_add_before_any_delegate() {
    let f = two_networks();
    f.sandboxes.present.lock().unwrap().insert("net2".into());
    let err = f
        .engine(json!({}))
        .add(&f.req("c1", "demo", "p"))
        .unwrap_err();
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("\"net2\" already exists"), "{}", err.msg);
    assert!(f.exec.log().is_empty());
    assert!(
        f.files().is_empty(),
        "the early state is removed: {:?}",
        f.files()
    );
}

#[test]
fn a_refused_add_keeps_the_state_a_del_still_needs() {
    let f = two_networks();
    let e = f.engine(json!({}));
    e.add(&f.req("c1", "demo", "p")).unwrap();
    // The runtime ADDs again without a DEL; the interfaces are there now.
    f.sandboxes
        .present
        .lock()
        .unwrap()
        .extend(["eth0".to_string(), "net1".into(), "net2".into()]);
    assert!(e.add(&f.req("c1", "demo", "p")).is_err());
    assert!(f.files().contains(&"plexus/c1.json".to_string()));
    f.exec.clear();
    e.del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(
        f.exec.log(),
        ["DEL tuning net2", "DEL macvlan net1", "DEL bridge eth0"]
    );
}

#[test]
fn bad_environment_and_a_gone_pod() {
    let f = two_networks();
    let e = f.engine(json!({}));
    let mut req = f.req("c1", "demo", "p");
    req.netns = Some("/tmp/not-a-netns".into());
    assert_eq!(e.add(&req).unwrap_err().code, 4);
    req.netns = None;
    assert_eq!(e.add(&req).unwrap_err().code, 4);
    let mut req = f.req("../x", "demo", "p");
    assert_eq!(e.add(&req).unwrap_err().code, 4);
    req = f.req("c1", "demo", "p");
    req.ifname = "a/b".into();
    assert_eq!(e.add(&req).unwrap_err().code, 4);
    // A pod that is gone gets an empty result and nothing runs.
    let r = e.add(&f.req("c1", "demo", "gone")).unwrap();
    assert_eq!(r.to_current().interfaces[0].name, "eth0");
    // A UID that is not the API's: code 3.
    let mut req = f.req("c1", "demo", "p");
    req.args.set("K8S_POD_UID", "someone-else");
    assert_eq!(e.add(&req).unwrap_err().code, 3);
    assert!(f.exec.log().is_empty());
    assert!(f.files().is_empty());
}

#[test]
fn default_route_is_applied_in_the_pod_and_the_cached_results_patched() {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    f.cluster.pod(
        "demo",
        "p",
        &[(
            NETWORKS_ANNOTATION,
            r#"[{"name":"a","default-route":["192.0.2.254"]}]"#,
        )],
    );
    f.engine(json!({})).add(&f.req("c1", "demo", "p")).unwrap();
    let changes = f.sandboxes.routes.lock().unwrap().clone();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].ifnames, ["eth0", "net1"]);
    assert_eq!(changes[0].owner, "net1");
    assert_eq!(changes[0].families, [true]);
    assert_eq!(
        changes[0].gateways,
        ["192.0.2.254".parse::<std::net::IpAddr>().unwrap()]
    );
    let cached = |f_: &str| -> serde_json::Value {
        let b = std::fs::read(f.dir.path().join("cni/results").join(f_)).unwrap();
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()["result"]["routes"].clone()
    };
    assert!(cached("cluster-c1-eth0")
        .as_array()
        .is_none_or(Vec::is_empty));
    assert_eq!(
        cached("a-c1-net1"),
        json!([{"dst": "0.0.0.0/0", "gw": "192.0.2.254"}])
    );
    let status = &f.cluster.told().statuses[0].1;
    assert_eq!(
        status[1].default_route.as_deref(),
        Some(&["192.0.2.254".to_string()][..])
    );
}
