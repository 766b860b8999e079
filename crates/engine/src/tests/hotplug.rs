//! Hot-plug over the fakes: identity of interfaces across edits, refusals, failures
//! that leave the pod as it was, steps left half done by a killed daemon.

use crate::hotplug::{Failure, Reconciled};
use crate::state::Pending;
use crate::testing::{net, Fixture};
use crate::Engine;
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use serde_json::json;

/// A pod added with `networks`, as the daemon adds it.
fn added(networks: &str) -> (Fixture, Engine) {
    let f = Fixture::new();
    for (n, plugin) in [("a", "macvlan"), ("b", "tuning"), ("c", "bridge")] {
        f.cluster.nad("demo", n, net(n, plugin, json!({})));
    }
    f.cluster
        .pod("demo", "p", &[(NETWORKS_ANNOTATION, networks)]);
    let e = f.daemon_engine(json!({}));
    e.add(&f.req("c1", "demo", "p")).unwrap();
    f.exec.clear();
    (f, e)
}

/// Edits the pod's selection and reconciles its container.
fn edit(
    f: &Fixture,
    e: &Engine,
    networks: &str,
) -> Result<Reconciled, crate::hotplug::HotplugError> {
    f.cluster
        .pod("demo", "p", &[(NETWORKS_ANNOTATION, networks)]);
    let pod = f.cluster.get("demo", "p");
    e.reconcile("c1", &pod)
}

fn interfaces(e: &Engine) -> Vec<String> {
    let st = e.state().load("c1").unwrap().unwrap();
    st.attachments
        .iter()
        .map(|a| format!("{}={}", a.ifname, a.name))
        .collect()
}

fn last_status(f: &Fixture) -> Vec<String> {
    let told = f.cluster.told();
    let (_, s) = told.statuses.last().expect("a status write").clone();
    s.iter()
        .map(|e| format!("{}={}", e.interface, e.name))
        .collect()
}

#[test]
fn interfaces_keep_their_names_and_new_ones_take_the_lowest_free() {
    let (f, e) = added("a,b");
    assert_eq!(
        interfaces(&e),
        ["eth0=cluster", "net1=demo/a", "net2=demo/b"]
    );
    let statuses = f.cluster.told().statuses.len();

    // net1 (attached at pod start, unnamed) goes; net2 keeps its name.
    let r = edit(&f, &e, "b").unwrap();
    assert_eq!(
        r,
        Reconciled::Changed {
            added: vec![],
            removed: vec!["Remove net1 from demo/a".into()]
        }
    );
    assert_eq!(f.exec.log(), ["DEL macvlan net1"]);
    assert_eq!(interfaces(&e), ["eth0=cluster", "net2=demo/b"]);
    assert_eq!(f.cluster.told().statuses.len(), statuses + 1, "one write");
    assert_eq!(last_status(&f), ["eth0=cluster", "net2=demo/b"]);

    // A new unnamed element takes net1, the lowest free; a named one its name.
    f.exec.clear();
    let r = edit(&f, &e, "b,c,a@data0").unwrap();
    let Reconciled::Changed { added, removed } = r else {
        panic!("{r:?}")
    };
    assert!(removed.is_empty());
    assert_eq!(added.len(), 2, "{added:?}");
    assert!(added[0].starts_with("Add net1 [192.0.2."), "{added:?}");
    assert!(added[0].ends_with("from demo/c"), "{added:?}");
    assert_eq!(f.exec.log(), ["ADD bridge net1", "ADD macvlan data0"]);
    assert_eq!(
        interfaces(&e),
        ["eth0=cluster", "net2=demo/b", "net1=demo/c", "data0=demo/a"]
    );
    assert_eq!(
        last_status(&f),
        ["eth0=cluster", "net2=demo/b", "net1=demo/c", "data0=demo/a"]
    );
    // The selected networks get the pod's identity, not the runtime's own arguments.
    let call = &f.exec.calls()[0];
    assert_eq!(call.args.get("K8S_POD_NAME"), Some("p"));

    // The same annotation again: nothing to do, nothing run, nothing written.
    f.exec.clear();
    let writes = f.cluster.told().statuses.len();
    assert_eq!(edit(&f, &e, "b,c,a@data0").unwrap(), Reconciled::Unchanged);
    assert!(f.exec.log().is_empty());
    assert_eq!(f.cluster.told().statuses.len(), writes);

    // The runtime's DEL removes everything, hot-plugged or not.
    e.del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(
        f.exec.log(),
        [
            "DEL macvlan data0",
            "DEL bridge net1",
            "DEL tuning net2",
            "DEL bridge eth0"
        ]
    );
    assert!(f.files().is_empty(), "left: {:?}", f.files());
}

#[test]
fn two_elements_of_one_network_are_told_apart_by_order_and_name() {
    let (f, e) = added("a,a,b@x");
    assert_eq!(
        interfaces(&e),
        ["eth0=cluster", "net1=demo/a", "net2=demo/a", "x=demo/b"]
    );
    // One of the two unnamed elements of `a` goes: the second attachment of `a` is
    // the one removed, the first keeps net1.
    edit(&f, &e, "a,b@x").unwrap();
    assert_eq!(f.exec.log(), ["DEL macvlan net2"]);
    assert_eq!(interfaces(&e), ["eth0=cluster", "net1=demo/a", "x=demo/b"]);
}

#[test]
fn changed_elements_a_new_default_network_and_clashes_are_refused_untouched() {
    let (f, e) = added("a,b");
    let before = interfaces(&e);
    let cases = [
        (
            r#"[{"name":"a","ips":["192.0.2.77/24"]},{"name":"b"}]"#,
            "its element changed",
        ),
        (
            "a,b,c@net2",
            "interface \"net2\", which network \"demo/b\" uses",
        ),
        ("a,b,c@eth0", "interface \"eth0\""),
        ("a,b,c@z,a@z", "both request interface \"z\""),
        ("a,,b", "element 1"),
    ];
    for (value, needle) in cases {
        let err = edit(&f, &e, value).unwrap_err();
        assert_eq!(err.failure, Failure::Rejected, "{value}: {err}");
        assert!(err.error.msg.contains(needle), "{value}: {}", err.error.msg);
        assert!(err.error.msg.contains("demo/p"), "{}", err.error.msg);
    }
    f.cluster.pod(
        "demo",
        "p",
        &[
            (NETWORKS_ANNOTATION, "a,b"),
            (DEFAULT_NETWORK_ANNOTATION, "demo/c"),
        ],
    );
    let err = e.reconcile("c1", &f.cluster.get("demo", "p")).unwrap_err();
    assert_eq!(err.failure, Failure::Rejected);
    assert!(
        err.error.msg.contains("default network is \"cluster\""),
        "{}",
        err.error.msg
    );
    assert!(f.exec.log().is_empty(), "{:?}", f.exec.log());
    assert_eq!(interfaces(&e), before);
}

#[test]
fn a_missing_nad_or_a_failing_delegate_leaves_the_pod_as_it_was() {
    let (f, e) = added("a");
    let files = f.files();
    let err = edit(&f, &e, "a,b,missing").unwrap_err();
    assert_eq!(err.failure, Failure::Adding);
    assert!(err.error.msg.contains("demo/missing"), "{}", err.error.msg);
    assert!(f.exec.log().is_empty(), "checked before anything runs");

    // b attaches, c fails: b is detached again, and a (to be removed) stays.
    f.exec.fail("ADD", "bridge", "net3");
    let err = edit(&f, &e, "b,c").unwrap_err();
    assert_eq!(err.failure, Failure::Adding);
    assert!(err.error.msg.contains("demo/c"), "{}", err.error.msg);
    assert_eq!(
        f.exec.log(),
        [
            "ADD tuning net2",
            "ADD bridge net3",
            "DEL bridge net3",
            "DEL tuning net2"
        ]
    );
    assert_eq!(interfaces(&e), ["eth0=cluster", "net1=demo/a"]);
    assert_eq!(f.files(), files, "nothing of the failed edit is left");
}

#[test]
fn a_step_a_killed_daemon_left_is_finished_or_undone() {
    let (f, e) = added("a,b");
    let mut st = e.state().load("c1").unwrap().unwrap();
    // The daemon was killed while attaching a third network and while detaching b.
    let mut half = st.attachments[1].clone();
    half.ifname = "net3".into();
    half.pending = Some(Pending::Attach);
    st.attachments[2].pending = Some(Pending::Detach);
    st.attachments.push(half);
    e.state().save(&st).unwrap();
    let r = edit(&f, &e, "a").unwrap();
    assert_eq!(r, Reconciled::Unchanged, "the annotation already says a");
    assert_eq!(f.exec.log(), ["DEL macvlan net3", "DEL tuning net2"]);
    assert_eq!(interfaces(&e), ["eth0=cluster", "net1=demo/a"]);
    assert_eq!(last_status(&f), ["eth0=cluster", "net1=demo/a"]);
}

#[test]
fn what_hot_plug_leaves_alone() {
    let (f, e) = added("a");
    let pod = f.cluster.get("demo", "p");
    assert_eq!(
        e.reconcile("other", &pod).unwrap(),
        Reconciled::Skipped("no state: not added, or deleted")
    );
    // A DEL that failed part-way: what is left is never added to again.
    f.exec.fail("DEL", "macvlan", "net1");
    e.del(&f.req("c1", "demo", "p")).unwrap_err();
    assert_eq!(
        edit(&f, &e, "a,b").unwrap(),
        Reconciled::Skipped("its DEL has begun")
    );
    // A pod added in thin mode (no configuration kept) is refused with the reason.
    let g = Fixture::new();
    g.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    g.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "")]);
    let thin = g.engine(json!({}));
    thin.add(&g.req("c1", "demo", "p")).unwrap();
    g.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a")]);
    let err = thin
        .reconcile("c1", &g.cluster.get("demo", "p"))
        .unwrap_err();
    assert_eq!(err.failure, Failure::Rejected);
    assert!(err.error.msg.contains("thin mode"), "{}", err.error.msg);
}

#[test]
fn device_backed_networks_get_a_device_no_attachment_uses() {
    let (f, e) = added("a");
    f.cluster.device_nad(
        "demo",
        "sriov",
        "example.com/sriov_net",
        net("sriov", "host-device", json!({})),
    );
    // Two devices allocated at pod start; the edit asks for one, then for a second.
    f.devices.allocate(
        "demo/p",
        "example.com/sriov_net",
        &["0000:03:02.1", "0000:03:02.0"],
    );
    assert!(matches!(
        edit(&f, &e, "a,sriov").unwrap(),
        Reconciled::Changed { .. }
    ));
    let calls = f.exec.calls();
    assert_eq!(
        calls[0].stdin["deviceID"], "0000:03:02.0",
        "{}",
        calls[0].stdin
    );
    f.exec.clear();
    assert!(matches!(
        edit(&f, &e, "a,sriov,sriov").unwrap(),
        Reconciled::Changed { .. }
    ));
    assert_eq!(
        f.exec.calls()[0].stdin["deviceID"],
        "0000:03:02.1",
        "the one not in use"
    );
    let st = e.state().load("c1").unwrap().unwrap();
    let devs: Vec<&str> = st
        .attachments
        .iter()
        .filter_map(|a| a.device.as_ref())
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(devs, ["0000:03:02.0", "0000:03:02.1"]);
    // A third reference: no device left; refused, nothing attached.
    f.exec.clear();
    let err = edit(&f, &e, "a,sriov,sriov,sriov").unwrap_err();
    assert_eq!(err.failure, Failure::Rejected);
    assert!(
        err.error.msg.contains("example.com/sriov_net") && err.error.msg.contains("request 3"),
        "{}",
        err.error.msg
    );
    assert!(f.exec.log().is_empty());
    // Detaching one frees its device for the next edit, with no kubelet call for the DEL.
    *f.devices.down.lock().unwrap() = true;
    edit(&f, &e, "a,sriov").unwrap();
    assert_eq!(f.exec.log(), ["DEL host-device net3"]);
    // The kubelet not answering is a failure to add, retried later.
    let err = edit(&f, &e, "a,sriov,sriov").unwrap_err();
    assert_eq!(err.failure, Failure::Adding);
}
