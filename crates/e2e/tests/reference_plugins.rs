//! The CNI runtime of plexus-cni driving the real reference plugins in real network
//! namespaces: ADD, CHECK and DEL of whole lists, with the kernel read back after each.
//! Needs root and containernetworking-plugins in /usr/lib/cni.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::CniResult;
use plexus_e2e::*;
use serde_json::{json, Map};
use std::path::Path;

fn runtime(w: &World) -> Runtime {
    Runtime::new(plugin_paths(&test_plugin()), Some(w.subdir("cache")))
}

fn attachment(w: &World, i: usize, ifname: &str) -> Attachment {
    Attachment {
        container_id: unique("cid"),
        netns: Some(w.ctr_path(i)),
        ifname: ifname.into(),
        ..Default::default()
    }
}

fn bridge_list(version: &str, name: &str, bridge: &str, data: &Path) -> NetworkConfigList {
    NetworkConfigList::from_value(json!({
        "cniVersion": version, "name": name,
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": data,
                     "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}], [{"subnet": "2001:db8:1::/64"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}
        }]
    }))
    .unwrap()
}

/// host-local reservation files (named after the address) under `data`.
fn reservations(data: &Path) -> Vec<String> {
    files_below(data)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[test]
fn bridge_host_local_add_check_del() {
    let w = World::new(1);
    let rt = runtime(&w);
    let (br, net, data) = (unique("br"), unique("net"), w.subdir("ipam"));
    let list = bridge_list("1.0.0", &net, &br, &data);
    let att = attachment(&w, 0, "eth0");
    let host_links_before = links(w.host());

    let result = w.host.run(|| rt.add_list(&list, &att)).unwrap().unwrap();
    let r = result.to_current();
    let idx = r.first_sandbox_interface().expect("a sandbox interface");
    assert_eq!(r.interfaces[idx].name, "eth0");
    assert_eq!(r.interfaces[idx].sandbox, w.ctr_path(0));
    let mine: Vec<String> = r.ips.iter().map(|ip| ip.address.to_string()).collect();
    assert_eq!(mine.len(), 2);
    // The kernel agrees with the result.
    let kernel = addresses(w.ctr(0), "eth0");
    for a in &mine {
        assert!(kernel.contains(a), "{a} not in {kernel:?}");
    }
    let mac = link(w.ctr(0), "eth0").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(r.interfaces[idx].mac, mac);
    let v4 = routes(w.ctr(0), "-4");
    assert!(
        v4.iter()
            .any(|rt| rt["dst"] == "default" && rt["gateway"] == "192.0.2.1"),
        "{v4:?}"
    );
    assert_eq!(
        addresses(w.host(), &br),
        ["192.0.2.1/24", "2001:db8:1::1/64"]
    );
    assert_eq!(reservations(&data).len(), 2);
    assert!(rt
        .cache
        .as_ref()
        .unwrap()
        .load(&net, &att.container_id, "eth0")
        .unwrap()
        .is_some());

    w.host.run(|| rt.check_list(&list, &att)).unwrap().unwrap();
    // Break what the plugin set up: CHECK must notice.
    ip(Some(w.ctr(0)), &["addr", "flush", "dev", "eth0"]);
    assert!(w.host.run(|| rt.check_list(&list, &att)).unwrap().is_err());

    w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
    assert_eq!(links(w.ctr(0)), ["lo"]);
    let mut after: Vec<String> = links(w.host());
    after.retain(|l| l != &br);
    assert_eq!(after, host_links_before, "host ends of veths are gone");
    assert!(reservations(&data).is_empty(), "{:?}", files_below(&data));
    assert!(files_below(&w.subdir("cache")).is_empty());
    // DEL again: nothing there, still success.
    w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
}

#[test]
fn macvlan_on_veth_master_with_static_ips_carries_traffic() {
    let w = World::new(2);
    let rt = runtime(&w);
    let master = w.veth_master();
    let list = NetworkConfigList::from_value(json!({
        "cniVersion": "1.0.0", "name": unique("mv"),
        "plugins": [{"type": "macvlan", "master": master, "mode": "bridge",
                     "capabilities": {"ips": true},
                     "ipam": {"type": "static"}}]
    }))
    .unwrap();
    let mut atts = Vec::new();
    for (i, addr) in ["198.51.100.10/24", "198.51.100.11/24"].iter().enumerate() {
        let mut att = attachment(&w, i, "net1");
        let mut caps = Map::new();
        caps.insert("ips".into(), json!([addr]));
        att.capability_args = caps;
        let res = w.host.run(|| rt.add_list(&list, &att)).unwrap().unwrap();
        assert_eq!(res.to_current().ips[0].address.to_string(), *addr);
        assert_eq!(addresses(w.ctr(i), "net1"), [addr.to_string()]);
        atts.push(att);
    }
    assert!(
        ping(w.ctr(0), "198.51.100.11", 2),
        "net1 of container 0 reaches container 1"
    );
    assert!(ping(w.ctr(1), "198.51.100.10", 2), "and back");
    for (i, att) in atts.iter().enumerate() {
        w.host.run(|| rt.check_list(&list, att)).unwrap().unwrap();
        w.host.run(|| rt.del_list(&list, att)).unwrap().unwrap();
        assert_eq!(links(w.ctr(i)), ["lo"]);
    }
}

#[test]
fn chain_with_tuning_gets_prev_result_and_mac_capability() {
    let w = World::new(1);
    let rt = runtime(&w);
    let data = w.subdir("ipam");
    let list = NetworkConfigList::from_value(json!({
        "cniVersion": "1.0.0", "name": unique("chn"),
        "plugins": [
            {"type": "bridge", "bridge": unique("br"),
             "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "203.0.113.0/24"}]]}},
            // tuning 1.1.x does not substitute IFNAME on CHECK, so the name is spelled out.
            {"type": "tuning", "capabilities": {"mac": true}, "sysctl": {"net.ipv4.conf.eth1.arp_notify": "1"}, "mtu": 1400}
        ]
    }))
    .unwrap();
    let mut att = attachment(&w, 0, "eth1");
    let mut caps = Map::new();
    caps.insert("mac".into(), json!("02:00:5e:00:53:01"));
    // A capability no plugin declares is not passed on.
    caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    att.capability_args = caps;
    let r = w
        .host
        .run(|| rt.add_list(&list, &att))
        .unwrap()
        .unwrap()
        .to_current();
    let l = link(w.ctr(0), "eth1").unwrap();
    assert_eq!(l["address"], "02:00:5e:00:53:01");
    assert_eq!(l["mtu"], 1400);
    let idx = r.first_sandbox_interface().unwrap();
    assert_eq!(
        r.interfaces[idx].mac, "02:00:5e:00:53:01",
        "tuning saw prevResult and updated it"
    );
    let sysctl = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            w.ctr(0),
            "cat",
            "/proc/sys/net/ipv4/conf/eth1/arp_notify",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "1");
    w.host.run(|| rt.check_list(&list, &att)).unwrap().unwrap();
    w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
    assert_eq!(links(w.ctr(0)), ["lo"]);
    assert!(reservations(&data).is_empty());
}

#[test]
fn every_version_the_plugins_speak() {
    let w = World::new(1);
    let rt = runtime(&w);
    for (i, v) in ["0.2.0", "0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let data = w.subdir(&format!("ipam{i}"));
        let list = bridge_list(v, &unique("ver"), &unique("br"), &data);
        let att = attachment(&w, 0, &format!("v{i}"));
        let result: CniResult = w.host.run(|| rt.add_list(&list, &att)).unwrap().unwrap();
        assert_eq!(result.version(), *v);
        let v4 = result.convert_to("0.2.0").unwrap().to_value();
        assert!(
            v4["ip4"]["ip"].as_str().unwrap().starts_with("192.0.2."),
            "{v4}"
        );
        let check = w.host.run(|| rt.check_list(&list, &att)).unwrap();
        if v.starts_with("0.2") || v.starts_with("0.3") {
            assert_eq!(check.unwrap_err().code, 1, "CHECK needs 0.4.0");
        } else {
            check.unwrap();
        }
        w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
        assert!(reservations(&data).is_empty(), "{v}");
    }
    assert_eq!(links(w.ctr(0)), ["lo"]);
}

#[test]
fn cni_versions_negotiation_runs_at_the_selected_version() {
    let w = World::new(1);
    let rt = runtime(&w);
    let data = w.subdir("ipam");
    let mut v = bridge_list("0.3.1", &unique("neg"), &unique("br"), &data).to_value();
    v["cniVersions"] = json!(["0.4.0", "1.0.0", "9.0.0"]);
    let list = NetworkConfigList::from_value(v).unwrap();
    assert_eq!(list.cni_version, "1.0.0");
    let att = attachment(&w, 0, "eth0");
    let r = w.host.run(|| rt.add_list(&list, &att)).unwrap().unwrap();
    assert_eq!(r.version(), "1.0.0");
    w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
    assert!(reservations(&data).is_empty());
}

#[test]
fn bad_netns_fails_and_leaves_nothing() {
    let w = World::new(0);
    let rt = runtime(&w);
    let data = w.subdir("ipam");
    let br = unique("br");
    let list = bridge_list("1.0.0", &unique("bad"), &br, &data);
    let before = links(w.host());
    let att = Attachment {
        container_id: unique("cid"),
        netns: Some("/run/netns/does-not-exist-plexus".into()),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let e = w
        .host
        .run(|| rt.add_list(&list, &att))
        .unwrap()
        .unwrap_err();
    assert!(e.msg.contains("plugin \"bridge\" failed on ADD"), "{e}");
    assert!(e.msg.to_lowercase().contains("netns"), "{e}");
    w.host.run(|| rt.del_list(&list, &att)).unwrap().unwrap();
    let mut after = links(w.host());
    after.retain(|l| l != &br);
    assert_eq!(after, before);
    assert!(reservations(&data).is_empty());
    assert!(files_below(&w.subdir("cache")).is_empty());
}

#[test]
fn failure_in_the_middle_of_a_chain_then_del_cleans_up() {
    let w = World::new(1);
    let rt = runtime(&w);
    let data = w.subdir("ipam");
    let rec = w.subdir("rec");
    let list = NetworkConfigList::from_value(json!({
        "cniVersion": "1.0.0", "name": unique("mid"),
        "plugins": [
            {"type": "bridge", "bridge": unique("br"), "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "192.0.2.0/24"}]]}},
            {"type": "plexus-test-plugin", "behavior": "error", "errorCode": 117, "recordDir": rec}
        ]
    }))
    .unwrap();
    let att = attachment(&w, 0, "eth0");
    let e = w
        .host
        .run(|| rt.add_list(&list, &att))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, 117, "the delegate's code is kept: {e}");
    assert!(
        e.msg
            .contains("plugin \"plexus-test-plugin\" failed on ADD")
            && e.msg.contains("told to fail"),
        "{e}"
    );
    assert_eq!(
        reservations(&data).len(),
        1,
        "bridge ran before the failure"
    );
    assert!(
        files_below(&w.subdir("cache")).is_empty(),
        "a failed ADD caches nothing"
    );
    // The runtime DELs after a failed ADD; the failing plugin fails DEL too, so run the
    // DEL of a list without it, as a runtime with the original config would retry.
    let ok_list = NetworkConfigList::from_value({
        let mut v = list.to_value();
        v["plugins"].as_array_mut().unwrap().pop();
        v
    })
    .unwrap();
    w.host.run(|| rt.del_list(&ok_list, &att)).unwrap().unwrap();
    assert!(reservations(&data).is_empty());
    assert_eq!(links(w.ctr(0)), ["lo"]);
}
