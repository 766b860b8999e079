//! CHECK, STATUS and GC over the fakes.

use crate::inspect::gc_lists;
use crate::testing::{net, Fixture};
use plexus_npwg::NETWORKS_ANNOTATION;
use serde_json::json;
use std::collections::HashSet;

/// A pod with a 1.0.0 network and a 0.3.1 one, added; the fake namespace holds what
/// the fake plugins reported (interface n: MAC 02:00:00:00:00:0n, 192.0.2.1n/24).
fn checked() -> (Fixture, crate::Engine) {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    f.cluster.nad(
        "demo",
        "old",
        json!({"cniVersion": "0.3.1", "name": "old", "type": "tuning"}),
    );
    f.cluster
        .pod("demo", "p", &[(NETWORKS_ANNOTATION, "a,old")]);
    let e = f.engine(json!({}));
    e.add(&f.req("c1", "demo", "p")).unwrap();
    f.exec.clear();
    (f, e)
}

fn all_links(f: &Fixture, skip: &str) {
    for (n, name) in ["eth0", "net1", "net2"].iter().enumerate() {
        if *name != skip {
            f.sandboxes.link(
                name,
                &format!("02:00:00:00:00:{:02x}", n + 1),
                &format!("192.0.2.{}/24", 11 + n),
            );
        }
    }
}

#[test]
fn check_runs_on_every_attachment_with_its_result() {
    let (f, e) = checked();
    all_links(&f, "");
    e.check(&f.req("c1", "demo", "p")).unwrap();
    // The plugins' CHECK from 0.4.0 on; every attachment verified in the namespace.
    assert_eq!(f.exec.log(), ["CHECK bridge eth0", "CHECK macvlan net1"]);
    assert_eq!(
        f.exec.calls()[1].stdin["prevResult"]["interfaces"][0]["name"],
        "net1"
    );
    f.exec.fail("CHECK", "bridge", "eth0");
    f.exec.fail("CHECK", "macvlan", "net1");
    let err = e.check(&f.req("c1", "demo", "p")).unwrap_err();
    assert!(
        err.msg.contains("cluster") && err.msg.contains("demo/a"),
        "every error: {}",
        err.msg
    );
    let err = e.check(&f.req("c2", "demo", "p")).unwrap_err();
    assert_eq!(err.code, 3);
}

#[test]
fn check_sees_a_deleted_interface_of_a_pre_040_network() {
    let (f, e) = checked();
    all_links(&f, "net2");
    let err = e.check(&f.req("c1", "demo", "p")).unwrap_err();
    assert_eq!(err.code, crate::inspect::CHECK_DRIFT);
    assert!(
        err.msg.contains("demo/old") && err.msg.contains("\"net2\" is missing"),
        "{}",
        err.msg
    );
    assert!(!err.msg.contains("demo/a"), "{}", err.msg);
}

#[test]
fn check_sees_a_changed_mac_or_a_lost_address() {
    let (f, e) = checked();
    all_links(&f, "net1");
    f.sandboxes
        .link("net1", "02:00:00:00:00:99", "192.0.2.99/24");
    let err = e.check(&f.req("c1", "demo", "p")).unwrap_err();
    assert!(err.msg.contains("has MAC 02:00:00:00:00:99"), "{}", err.msg);
    assert!(
        err.msg.contains("lacks address 192.0.2.12/24"),
        "{}",
        err.msg
    );
}

#[test]
fn status_asks_every_network_of_the_node() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.dir.path().join("conf")).unwrap();
    std::fs::write(
        f.dir.path().join("conf/extra.conf"),
        json!({"cniVersion": "1.1.0", "name": "extra", "type": "tuning"}).to_string(),
    )
    .unwrap();
    let e = f.engine(json!({"defaultNetworks": ["extra"]}));
    e.status(&[]).unwrap();
    // STATUS exists from 1.1.0 on: the 1.0.0 cluster network is not asked.
    assert_eq!(f.exec.log(), ["STATUS tuning "]);
    f.exec.fail("STATUS", "tuning", "");
    assert!(e.status(&[]).is_err());
}

#[test]
fn gc_deletes_what_is_not_valid_and_forwards_the_valid_attachments() {
    let f = Fixture::new();
    let a = json!({"cniVersion": "1.1.0", "name": "a", "type": "macvlan"});
    f.cluster.nad("demo", "a", a);
    f.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a")]);
    f.cluster.pod("demo", "q", &[(NETWORKS_ANNOTATION, "a")]);
    let e = f.engine(json!({}));
    e.add(&f.req("keep", "demo", "p")).unwrap();
    e.add(&f.req("gone", "demo", "q")).unwrap();
    f.exec.clear();
    let valid = vec![plexus_cni::runtime::ValidAttachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    }];
    e.gc(&valid, &[]).unwrap();
    let log = f.exec.log();
    assert_eq!(log[..2], ["DEL macvlan net1", "DEL bridge eth0"]);
    // GC of 1.1.0 networks only; the cluster network here is 1.0.0.
    assert_eq!(log[2..], ["GC macvlan "]);
    let gc = &f.exec.calls()[2].stdin;
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "net1"}])
    );
    assert!(e.state().load("gone").unwrap().is_none());
    assert!(e.state().load("keep").unwrap().is_some());
    assert_eq!(f.cluster.told().torn_down, ["demo/q"]);
}

#[test]
fn gc_lists_each_network_once_with_its_valid_attachments() {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    for (cid, pod) in [("c1", "p1"), ("c2", "p2"), ("c3", "p3")] {
        f.cluster.pod("demo", pod, &[(NETWORKS_ANNOTATION, "a")]);
        f.engine(json!({})).add(&f.req(cid, "demo", pod)).unwrap();
    }
    let e = f.engine(json!({}));
    let states: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|c| e.state().load(c).unwrap().unwrap())
        .collect();
    let valid: HashSet<&str> = ["c1", "c3"].into_iter().collect();
    // The node's configuration names the cluster network too: it is listed once.
    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "type": "bridge"}).to_string();
    let node =
        vec![plexus_cni::config::NetworkConfigList::from_bytes_any(cluster.as_bytes()).unwrap()];
    let lists = gc_lists(&states, &valid, node);
    let shown: Vec<(String, Vec<String>)> = lists
        .iter()
        .map(|(l, v)| {
            (
                l.name.clone(),
                v.iter()
                    .map(|a| format!("{}/{}", a.container_id, a.ifname))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "cluster".to_string(),
                vec!["c1/eth0".to_string(), "c3/eth0".into()]
            ),
            (
                "a".to_string(),
                vec!["c1/net1".to_string(), "c3/net1".into()]
            ),
        ]
    );
}
