//! Hot-plug: plexusd following its node's pods in the test API server; the pods'
//! selection annotations edited as a user edits them; real namespaces, bridge and
//! host-local, traffic over what was plugged in.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_testapi::{Resource, TestApiServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const STATUS: &str = "k8s.v1.cni.cncf.io/network-status";

/// Two networks: `br` (198.51.100.0/24) and `br2` (203.0.113.0/24).
fn kube_node() -> (Node, TestApiServer) {
    let (n, api) = Node::kube(2);
    for (name, bridge, subnet) in [
        ("br", unique("hbr"), "198.51.100.0/24"),
        ("br2", unique("hbs"), "203.0.113.0/24"),
    ] {
        api.put(
            Resource::Nads,
            nad_object(
                "demo",
                name,
                &bridge_host_local(&bridge, subnet, &n.ipam_dir()),
            ),
        );
    }
    (n, api)
}

/// Sets a pod's selection annotation, keeping its other annotations (as
/// `kubectl annotate --overwrite` does).
fn edit(api: &TestApiServer, pod: &str, networks: &str) {
    let mut p = api.get(Resource::Pods, "demo", pod).unwrap();
    p["metadata"]["annotations"][NETWORKS] = json!(networks);
    api.put(Resource::Pods, p);
}

/// Waits (bounded) until `probe` holds.
fn eventually(what: &str, probe: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !probe() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `interface=network` of the pod's network-status.
fn status(api: &TestApiServer, pod: &str) -> Vec<String> {
    let p = api.get(Resource::Pods, "demo", pod).unwrap();
    let s = p["metadata"]["annotations"][STATUS]
        .as_str()
        .unwrap_or("[]");
    let v: Vec<Value> = serde_json::from_str(s).unwrap();
    v.iter()
        .map(|e| {
            format!(
                "{}={}",
                e["interface"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// `reason: message` of the pod's events, sorted.
fn events(api: &TestApiServer, uid: &str) -> Vec<String> {
    let mut ev: Vec<String> = api
        .list(Resource::Events)
        .into_iter()
        .filter(|e| e["involvedObject"]["uid"] == uid)
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    ev.sort();
    ev
}

/// The events of the pod with this reason.
fn reasons(api: &TestApiServer, uid: &str, reason: &str) -> Vec<String> {
    events(api, uid)
        .into_iter()
        .filter(|e| e.starts_with(&format!("{reason}: ")))
        .collect()
}

/// The value of one sample of the daemon's metrics.
fn metric(m: &str, sample: &str) -> u64 {
    m.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ipam_holds(n: &Node, addr: &str) -> bool {
    files_below(&n.ipam_dir())
        .iter()
        .any(|p| p.file_name().and_then(|f| f.to_str()) == Some(addr))
}

fn first_address(ns: &str, ifname: &str) -> String {
    addresses(ns, ifname)
        .into_iter()
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_network_plugged_into_a_running_pod_carries_traffic_and_goes_again() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "a", "ua", Some("br")));
    api.put(
        Resource::Pods,
        pod_object("demo", "b", "ub", Some("br,br2")),
    );
    let port = n.free_port();
    let d = Daemon::start(
        &n,
        json!({"metricsPort": port, "plexus": {"addedInterfaceEvents": false}}),
    );
    n.conf = n.shim_conf();
    let (a, b) = (n.world.ctr(0).to_string(), n.world.ctr(1).to_string());
    let att_a = n.attachment(0, &unique("cid"), "demo", "a", &[]);
    let att_b = n.attachment(1, &unique("cid"), "demo", "b", &[]);
    n.add(&att_a).unwrap();
    n.add(&att_b).unwrap();
    let b_br2 = first_address(&b, "net2");
    assert!(b_br2.starts_with("203.0.113."), "{b_br2}");
    assert!(!ping(&a, &b_br2, 1), "a has no way to br2 yet");

    // Plugged in: a gets net2 on br2 and reaches b over it.
    edit(&api, "a", "br,br2");
    eventually("net2 in pod a", || links(&a).contains(&"net2".to_string()));
    eventually("network-status of a", || {
        status(&api, "a") == ["eth0=cluster", "net1=demo/br", "net2=demo/br2"]
    });
    assert!(ping(&a, &b_br2, 2), "traffic over the plugged-in network");
    eventually("AddedInterface", || !events(&api, "ua").is_empty());
    let ev = events(&api, "ua");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        ev[0].starts_with("AddedInterface: Add net2 [203.0.113."),
        "{ev:?}"
    );

    // Unplugged: net1, attached at pod start without a name, goes with its address;
    // net2 keeps its name and its traffic.
    let a_br = first_address(&a, "net1");
    assert!(ipam_holds(&n, &a_br));
    edit(&api, "a", "br2");
    eventually("net1 gone from pod a", || {
        !links(&a).contains(&"net1".to_string())
    });
    eventually("network-status of a", || {
        status(&api, "a") == ["eth0=cluster", "net2=demo/br2"]
    });
    assert!(!ipam_holds(&n, &a_br), "its reservation is released");
    assert!(ping(&a, &b_br2, 1));
    eventually("RemovedInterface", || events(&api, "ua").len() == 2);
    assert_eq!(
        reasons(&api, "ua", "RemovedInterface"),
        ["RemovedInterface: Remove net1 from demo/br"]
    );

    // A missing network: one failure event, the pod as it was, however often it is
    // retried.
    edit(&api, "a", "br2,nope");
    eventually("FailedAddingInterface", || events(&api, "ua").len() == 3);
    let ev = reasons(&api, "ua", "FailedAddingInterface");
    assert_eq!(ev.len(), 1, "{:?}", events(&api, "ua"));
    assert!(ev[0].contains("demo/nope"), "{ev:?}");
    std::thread::sleep(Duration::from_millis(3500)); // two retries
    assert_eq!(events(&api, "ua").len(), 3, "{:?}", events(&api, "ua"));
    assert_eq!(sorted(links(&a)), ["eth0", "lo", "net2"]);
    let m = n.scrape(port);
    assert_eq!(
        metric(&m, "plexus_hotplug_total{result=\"changed\"}"),
        2,
        "{m}"
    );
    assert_eq!(
        metric(&m, "plexus_hotplug_duration_seconds_count"),
        2,
        "{m}"
    );
    // The first try and the retries after 1 s and 3 s (back-off doubles).
    let tries = metric(&m, "plexus_hotplug_total{result=\"failed_adding\"}");
    assert!((2..=3).contains(&tries), "{m}");

    // The NAD appears: the retry attaches it.
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "nope",
            &bridge_host_local(&unique("hbn"), "2001:db8:5::/64", &n.ipam_dir()),
        ),
    );
    eventually("net1 for nope", || links(&a).contains(&"net1".to_string()));
    eventually("status", || {
        status(&api, "a") == ["eth0=cluster", "net2=demo/br2", "net1=demo/nope"]
    });

    // The runtime's DEL removes everything, hot-plugged or not.
    n.del(&att_a).unwrap();
    n.del(&att_b).unwrap();
    assert_eq!(links(&a), ["lo"]);
    assert_eq!(links(&b), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn failures_a_killed_daemon_a_racing_del_and_host_network_pods() {
    let (mut n, api) = kube_node();
    api.put(
        Resource::Nads,
        nad_object(
            "demo",
            "broken",
            &json!({"cniVersion": "1.0.0", "type": "no-such-plugin"}),
        ),
    );
    api.put(Resource::Pods, pod_object("demo", "a", "ua", Some("br")));
    let mut host = pod_object("demo", "h", "uh", Some("br"));
    host["spec"]["hostNetwork"] = json!(true);
    api.put(Resource::Pods, host);
    let cfg = Daemon::config(&n, json!({}));
    let d = Daemon::run(&n.world, &cfg);
    n.conf = n.shim_conf();
    let a = n.world.ctr(0).to_string();
    let att = n.attachment(0, &unique("cid"), "demo", "a", &[]);
    n.add(&att).unwrap();
    let before = n.leftovers();

    // A delegate that fails: one event, the pod as it was, nothing left of the try.
    edit(&api, "a", "br,broken");
    eventually("FailedAddingInterface", || {
        !reasons(&api, "ua", "FailedAddingInterface").is_empty()
    });
    let ev = reasons(&api, "ua", "FailedAddingInterface");
    assert!(ev[0].contains("no-such-plugin"), "{ev:?}");
    assert_eq!(sorted(links(&a)), ["eth0", "lo", "net1"]);
    assert_eq!(n.leftovers(), before);

    // The daemon is killed; the pod is edited while it is down; the new daemon
    // applies the edit when it starts.
    drop(d);
    edit(&api, "a", "br2");
    let d = Daemon::run(&n.world, &cfg);
    eventually("net2 in a, net1 gone", || {
        sorted(links(&a)) == ["eth0", "lo", "net2"]
    });
    eventually("network-status of a", || {
        status(&api, "a") == ["eth0=cluster", "net2=demo/br2"]
    });
    assert_eq!(
        reasons(&api, "ua", "FailedAddingInterface").len(),
        1,
        "{:?}",
        events(&api, "ua")
    );

    // A pod on the host's network has nothing to plug into: refused, with the reason.
    edit(&api, "h", "br,br2");
    eventually("InterfaceAddRejected", || {
        !reasons(&api, "uh", "InterfaceAddRejected").is_empty()
    });
    assert!(reasons(&api, "uh", "InterfaceAddRejected")[0].contains("host's network"));

    // An edit racing the pod's DEL: whichever comes first, nothing is left.
    edit(&api, "a", "br2,br");
    n.del(&att).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(links(&a), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn hot_plug_off_leaves_running_pods_as_they_were_added() {
    let (mut n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "a", "ua", Some("br")));
    let d = Daemon::start(&n, json!({"hotplug": false}));
    n.conf = n.shim_conf();
    let a = n.world.ctr(0).to_string();
    let att = n.attachment(0, &unique("cid"), "demo", "a", &[]);
    n.add(&att).unwrap();
    edit(&api, "a", "br,br2");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sorted(links(&a)), ["eth0", "lo", "net1"]);
    assert!(events(&api, "ua")
        .iter()
        .all(|e| e.starts_with("AddedInterface: Add eth0") || e.contains("net1")));
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}

#[test]
fn pods_added_in_thin_mode_are_refused_when_edited_not_when_listed() {
    let (n, api) = kube_node();
    api.put(Resource::Pods, pod_object("demo", "a", "ua", Some("br")));
    let a = n.world.ctr(0).to_string();
    let att = n.attachment(0, &unique("cid"), "demo", "a", &[]);
    // Added by the thin plugin: no daemon configuration in its state.
    n.add(&att).unwrap();
    let d = Daemon::start(&n, json!({}));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        reasons(&api, "ua", "InterfaceAddRejected").is_empty(),
        "not at start-up: {:?}",
        events(&api, "ua")
    );
    edit(&api, "a", "br,br2");
    eventually("InterfaceAddRejected", || {
        !reasons(&api, "ua", "InterfaceAddRejected").is_empty()
    });
    assert!(reasons(&api, "ua", "InterfaceAddRejected")[0].contains("thin mode"));
    assert_eq!(sorted(links(&a)), ["eth0", "lo", "net1"]);
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}
