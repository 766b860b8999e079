//! DEL and its retries over the fakes: from the state only, in reverse, every error.

use crate::testing::{net, Fixture};
use plexus_npwg::NETWORKS_ANNOTATION;
use serde_json::json;

fn added() -> Fixture {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    f.cluster.nad("demo", "b", net("b", "tuning", json!({})));
    f.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a,b")]);
    f.engine(json!({})).add(&f.req("c1", "demo", "p")).unwrap();
    f.exec.clear();
    f
}

/// Pod `demo/p` selecting one macvlan network, `a`; nothing added yet.
fn one_network() -> Fixture {
    let f = Fixture::new();
    f.cluster.nad("demo", "a", net("a", "macvlan", json!({})));
    f.cluster.pod("demo", "p", &[(NETWORKS_ANNOTATION, "a")]);
    f
}

/// The runtime's retried DEL of `c1` (a fresh executor, the same state): it runs
/// exactly `expected`, succeeds and leaves nothing.
fn retried_del_runs(f: Fixture, expected: &[&str]) {
    let f = Fixture {
        exec: Default::default(),
        ..f
    };
    f.engine(json!({})).del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(f.exec.log(), expected);
    assert!(f.files().is_empty(), "left: {:?}", f.files());
}

#[test]
fn del_works_from_the_state_with_the_api_down_and_is_idempotent() {
    let f = added();
    *f.cluster.down.lock().unwrap() = true;
    let e = f.engine(json!({}));
    e.del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(
        f.exec.log(),
        ["DEL tuning net2", "DEL macvlan net1", "DEL bridge eth0"]
    );
    // Each DEL had its ADD's result as prevResult.
    let prev = &f.exec.calls()[0].stdin["prevResult"];
    assert_eq!(prev["interfaces"][0]["name"], "net2");
    assert!(f.files().is_empty(), "left: {:?}", f.files());
    assert_eq!(f.cluster.told().torn_down, ["demo/p"]);
    f.exec.clear();
    e.del(&f.req("c1", "demo", "p")).unwrap();
    assert!(f.exec.log().is_empty(), "nothing known, nothing run");
}

#[test]
fn a_failed_del_keeps_what_failed_for_the_retry() {
    let f = added();
    f.exec.fail("DEL", "macvlan", "net1");
    let e = f.engine(json!({}));
    let err = e.del(&f.req("c1", "demo", "p")).unwrap_err();
    assert_eq!(err.code, 11);
    assert!(err.msg.contains("demo/a"), "{}", err.msg);
    // The others were deleted all the same.
    assert_eq!(
        f.exec.log(),
        ["DEL tuning net2", "DEL macvlan net1", "DEL bridge eth0"]
    );
    let st = e.state().load("c1").unwrap().unwrap();
    let left: Vec<&str> = st.attachments.iter().map(|a| a.ifname.as_str()).collect();
    assert_eq!(left, ["net1"]);
    assert!(f.cluster.told().torn_down.is_empty());
    // The retried DEL redoes only what failed.
    retried_del_runs(f, &["DEL macvlan net1"]);
}

#[test]
fn without_state_del_plans_again_from_the_pod_or_does_nothing() {
    let f = one_network();
    let e = f.engine(json!({}));
    e.del(&f.req("c9", "demo", "p")).unwrap();
    assert_eq!(f.exec.log(), ["DEL macvlan net1", "DEL bridge eth0"]);
    f.exec.clear();
    e.del(&f.req("c9", "demo", "gone")).unwrap();
    assert!(f.exec.log().is_empty());
    // A selection that no longer resolves: at least the cluster network.
    f.cluster
        .pod("demo", "q", &[(NETWORKS_ANNOTATION, "deleted-nad")]);
    e.del(&f.req("c8", "demo", "q")).unwrap();
    assert_eq!(f.exec.log(), ["DEL bridge eth0"]);
    assert!(f.files().is_empty());
}

#[test]
fn del_after_a_state_file_cut_short_plans_again() {
    let f = added();
    let path = f.dir.path().join("cni/plexus/c1.json");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    f.engine(json!({})).del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(
        f.exec.log(),
        ["DEL tuning net2", "DEL macvlan net1", "DEL bridge eth0"]
    );
    assert!(f.files().is_empty(), "left: {:?}", f.files());
}

#[test]
fn a_failed_del_of_a_delegate_that_failed_its_add_is_best_effort() {
    // CNI §4: a plugin whose ADD failed cleaned up after itself; a DEL that cannot undo
    // what was never made (macvlan without its master) must not wedge the pod.
    let f = one_network();
    f.exec.fail("ADD", "macvlan", "net1");
    f.exec.fail("DEL", "macvlan", "net1");
    let e = f.engine(json!({}));
    assert_eq!(e.add(&f.req("c1", "demo", "p")).unwrap_err().code, 11);
    assert!(f.files().is_empty(), "left behind: {:?}", f.files());
}

#[test]
fn a_delegate_killed_at_its_time_limit_is_deleted_until_its_del_succeeds() {
    // Killed before it finished, the plugin undid nothing (host-local's reservation,
    // a half-made link): a failed DEL of it is kept for the runtime's retry, as for an
    // attachment that was added.
    let f = one_network();
    f.exec.kill("ADD", "macvlan", "net1");
    f.exec.fail("DEL", "macvlan", "net1");
    let e = f.engine(json!({}));
    let err = e.add(&f.req("c1", "demo", "p")).unwrap_err();
    assert!(err.msg.contains("was killed"), "{}", err.msg);
    assert_eq!(
        f.exec.log(),
        [
            "ADD bridge eth0",
            "ADD macvlan net1",
            "DEL macvlan net1",
            "DEL bridge eth0"
        ]
    );
    let st = e.state().load("c1").unwrap().unwrap();
    let left: Vec<(&str, bool)> = st
        .attachments
        .iter()
        .map(|a| (a.ifname.as_str(), a.interrupted))
        .collect();
    assert_eq!(left, [("net1", true)]);
    // The runtime's DEL (after a failed ADD, CNI §4) redoes it, and only it.
    retried_del_runs(f, &["DEL macvlan net1"]);
}
