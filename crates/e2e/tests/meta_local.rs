//! The `plexus` meta-plugin in local mode (NADs from files, pod selection from
//! CNI_ARGS), executed as a runtime executes it, in real namespaces with the real
//! reference plugins: each annotation form and key, the D-decisions, rollback, DEL
//! without the NAD, CHECK, GC.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use serde_json::json;

fn node(n: usize) -> Node {
    Node::new(n, Mode::Local)
}

fn std_nads(n: &Node) -> String {
    let br = unique("dbr");
    n.nad("demo", "mv", macvlan_static(&n.master));
    n.nad(
        "demo",
        "br",
        bridge_host_local(&br, "198.51.100.0/24", &n.ipam_dir()),
    );
    br
}

#[test]
fn pods_with_three_networks_talk_and_leave_nothing() {
    let n = node(2);
    std_nads(&n);
    let mut atts = Vec::new();
    for (i, ip) in ["203.0.113.10/24", "203.0.113.11/24"].iter().enumerate() {
        let sel =
            format!(r#"[{{"name":"mv","ips":["{ip}"]}},{{"name":"br","interface":"data0"}}]"#);
        let att = n.attachment(
            i,
            &unique("cid"),
            "demo",
            &format!("pod{i}"),
            &[("PLEXUS_NETWORKS", &sel)],
        );
        let r = n.add(&att).unwrap().to_current();
        assert_eq!(
            r.interfaces
                .iter()
                .find(|x| !x.sandbox.is_empty())
                .unwrap()
                .name,
            "eth0",
            "the default network's result is returned"
        );
        let ctr = n.world.ctr(i);
        assert!(addresses(ctr, "eth0")[0].starts_with("192.0.2."));
        assert_eq!(addresses(ctr, "net1"), [ip.to_string()]);
        assert!(addresses(ctr, "data0")[0].starts_with("198.51.100."));
        let st = n.status("demo", &format!("pod{i}")).unwrap();
        let names: Vec<&str> = st
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cluster", "demo/mv", "demo/br"]);
        assert_eq!(st[0]["default"], true);
        // `default` is omitted when false, byte for byte as Multus writes it.
        assert!(st[1].get("default").is_none(), "{}", st[1]);
        assert_eq!(st[1]["ips"], json!([ip.split('/').next().unwrap()]));
        assert_eq!(st[1]["mac"], link(ctr, "net1").unwrap()["address"]);
        n.check(&att, &CniResult::V100(r)).unwrap();
        atts.push(att);
    }
    assert!(
        ping(n.world.ctr(0), "203.0.113.11", 2),
        "macvlan network carries traffic"
    );
    let peer = addresses(n.world.ctr(1), "data0")[0]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        ping(n.world.ctr(0), &peer, 2),
        "bridge network carries traffic"
    );
    for (i, att) in atts.iter().enumerate() {
        n.del(att).unwrap();
        n.del(att).unwrap(); // idempotent
        assert_eq!(links(n.world.ctr(i)), ["lo"]);
    }
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

use plexus_cni::CniResult;

#[test]
fn comma_form_duplicates_and_interface_names() {
    let n = node(1);
    std_nads(&n);
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "br,demo/br@second,br")],
    );
    n.add(&att).unwrap();
    let mut l = links(n.world.ctr(0));
    l.sort();
    assert_eq!(
        l,
        ["eth0", "lo", "net1", "net3", "second"],
        "net<index> as Multus numbers them"
    );
    let st = n.status("demo", "p").unwrap();
    assert_eq!(st.as_array().unwrap().len(), 4);
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn json_keys_mac_cni_args_and_default_route() {
    let n = node(1);
    std_nads(&n);
    // An empty list means the attachment's own gateway (host-local's default: the subnet's first address).
    let sel = r#"[{"name":"br","default-route":[]}]"#;
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
    n.add(&att).unwrap();
    let v4 = routes(n.world.ctr(0), "-4");
    let defaults: Vec<_> = v4.iter().filter(|r| r["dst"] == "default").collect();
    assert_eq!(defaults.len(), 1, "{v4:?}");
    assert_eq!(
        (defaults[0]["dev"].as_str(), defaults[0]["gateway"].as_str()),
        (Some("net1"), Some("198.51.100.1"))
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());

    let sel = r#"[{"name":"br","mac":"02:00:5e:00:53:42","cni-args":{"foo":"bar"},"default-route":["198.51.100.254"]}]"#;
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
    n.add(&att).unwrap();
    let ctr = n.world.ctr(0);
    assert_eq!(link(ctr, "net1").unwrap()["address"], "02:00:5e:00:53:42");
    let v4 = routes(ctr, "-4");
    let defaults: Vec<_> = v4.iter().filter(|r| r["dst"] == "default").collect();
    assert_eq!(defaults.len(), 1, "{v4:?}");
    assert_eq!(
        (defaults[0]["dev"].as_str(), defaults[0]["gateway"].as_str()),
        (Some("net1"), Some("198.51.100.254"))
    );
    let v6 = routes(ctr, "-6");
    assert!(
        v6.iter()
            .any(|r| r["dst"] == "default" && r["dev"] == "eth0"),
        "IPv6 default kept: {v6:?}"
    );
    let st = n.status("demo", "p").unwrap();
    assert_eq!(st[1]["default-route"], json!(["198.51.100.254"]));
    assert!(
        st[0].get("gateway").is_none_or(|g| !g
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "192.0.2.1")),
        "{st}"
    );
    // The state holds the config with args.cni merged; libcni's cache the patched result.
    let cni_file = |rel: String| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(n.world.subdir("cni").join(rel)).unwrap()).unwrap()
    };
    let state = cni_file(format!("plexus/{}.json", att.container_id));
    assert_eq!(
        state["attachments"][1]["config"]["plugins"][0]["args"]["cni"]["foo"],
        "bar"
    );
    let cached = cni_file(format!("results/cluster-{}-eth0", att.container_id));
    let cluster_routes = cached["result"]["routes"].as_array().unwrap();
    assert!(
        !cluster_routes.iter().any(|r| r["dst"] == "0.0.0.0/0"),
        "cached result matches the kernel"
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn requests_no_plugin_can_take_fail_before_anything_is_attached() {
    let n = node(1);
    std_nads(&n);
    let sel = r#"[{"name":"br","portMappings":[{"hostPort":8080,"containerPort":80}]}]"#;
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(
        e.msg.contains("network \"demo/br\"") && e.msg.contains("\"portMappings\""),
        "{e}"
    );
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn ips_and_mac_not_honoured_fail_and_roll_back() {
    let mut n = node(1);
    std_nads(&n);
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    // A network whose plugin ignores what is asked: it always answers 198.51.100.9.
    n.nad(
        "demo",
        "deaf",
        json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "ip": "198.51.100.9/24"}),
    );
    for (sel, needle) in [
        (
            r#"[{"name":"br"},{"name":"deaf","ips":["198.51.100.50/24"]}]"#,
            "asked for IP 198.51.100.50/24",
        ),
        (
            r#"[{"name":"br"},{"name":"deaf","mac":"02:00:5e:00:53:99"}]"#,
            "asked for MAC 02:00:5e:00:53:99",
        ),
    ] {
        let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
        let e = n.add(&att).unwrap_err();
        assert!(
            e.msg.contains("network \"demo/deaf\"") && e.msg.contains(needle),
            "{e}"
        );
        assert!(
            e.msg
                .contains("no plugin of the network declares capability"),
            "{e}"
        );
        assert_eq!(links(n.world.ctr(0)), ["lo"], "everything rolled back");
        assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    }
}

#[test]
fn failure_in_the_middle_rolls_back_and_a_second_add_works() {
    let n = node(1);
    std_nads(&n);
    n.nad("demo", "broken", json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "no-such-master", "ipam": {"type": "static", "addresses": [{"address": "203.0.113.99/24"}]}}));
    let cid = unique("cid");
    let att = n.attachment(0, &cid, "demo", "p", &[("PLEXUS_NETWORKS", "br,broken")]);
    let e = n.add(&att).unwrap_err();
    assert!(
        e.msg
            .contains("network \"demo/broken\" (interface \"net2\")")
            && e.msg.contains("macvlan"),
        "{e}"
    );
    assert_eq!(
        links(n.world.ctr(0)),
        ["lo"],
        "eth0 and net1 were deleted again"
    );
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // The runtime DELs after a failed ADD: still fine.
    n.del(&att).unwrap();
    let att = n.attachment(0, &cid, "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    n.add(&att).unwrap();
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn del_and_check_without_the_nad() {
    let n = node(1);
    std_nads(&n);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    let r = n.add(&att).unwrap();
    for f in files_below(&n.world.subdir("nads")) {
        std::fs::remove_file(f).unwrap();
    }
    n.check(&att, &r).unwrap();
    ip(Some(n.world.ctr(0)), &["link", "del", "net1"]);
    let e = n.check(&att, &r).unwrap_err();
    assert!(
        e.msg.contains("demo/br"),
        "CHECK names the broken attachment: {e}"
    );
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn del_after_a_state_file_cut_short_plans_again() {
    // What a crash of the machine can leave of a state file that had not reached the disk.
    let n = node(1);
    std_nads(&n);
    let cid = unique("cid");
    let att = n.attachment(0, &cid, "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    n.add(&att).unwrap();
    let state = n
        .world
        .subdir("cni")
        .join("plexus")
        .join(format!("{cid}.json"));
    std::fs::write(&state, b"").unwrap();
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // Without the NAD only the cluster network can be planned again: it is deleted,
    // the unreadable file goes, the DEL succeeds.
    n.add(&att).unwrap();
    std::fs::write(&state, b"{\"version\":").unwrap();
    for f in files_below(&n.world.subdir("nads")) {
        std::fs::remove_file(f).unwrap();
    }
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo", "net1"]);
    assert!(!state.exists());
}

#[test]
fn bad_annotations_and_missing_nads_leave_nothing() {
    let n = node(2);
    std_nads(&n);
    // Local mode's messages name what the user set (CNI_ARGS), not the annotation.
    let cases = [
        (
            "[{\"name\":\"br\"",
            "CNI_ARGS PLEXUS_NETWORKS: is neither a comma-separated list",
        ),
        (
            "../x",
            "CNI_ARGS PLEXUS_NETWORKS: element 0 (\"../x\"): namespace \"..\" is not a valid namespace name",
        ),
        ("br@abcdefghijklmnop", "longer than 15 bytes"),
        ("br@data0,mv@data0", "both request interface"),
        (
            "nope",
            "cannot find a network-attachment-definition (nope) in namespace (demo)",
        ),
        ("br@eth0", "would use interface \"eth0\""),
    ];
    for (sel, needle) in cases {
        let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
        let e = n.add(&att).unwrap_err();
        assert_eq!(e.code, 7, "{sel}: {e}");
        assert!(e.msg.contains(needle), "{sel}: {e}");
        assert!(!e.msg.contains("k8s.v1.cni.cncf.io/networks"), "{sel}: {e}");
        assert_eq!(links(n.world.ctr(0)), ["lo"], "{sel}");
        assert!(n.leftovers().is_empty(), "{sel}: {:?}", n.leftovers());
    }
    n.nad("demo", "badjson", json!("{not json"));
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "badjson")],
    );
    let e = n.add(&att).unwrap_err();
    assert!(
        e.msg
            .contains("NetworkAttachmentDefinition \"demo/badjson\": spec.config"),
        "{e}"
    );
    // An interface that already exists in the pod.
    ip(
        Some(n.world.ctr(0)),
        &[
            "link", "add", "net1", "type", "veth", "peer", "name", "net1p",
        ],
    );
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    let e = n.add(&att).unwrap_err();
    assert!(e.msg.contains("interface \"net1\" already exists"), "{e}");
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // A second ADD of a container the runtime did not DEL is refused, and the first
    // ADD's state stays on file: the DEL still removes everything it attached.
    let att = n.attachment(1, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    n.add(&att).unwrap();
    let e = n.add(&att).unwrap_err();
    assert!(e.msg.contains("interface \"eth0\" already exists"), "{e}");
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(1)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn namespace_isolation_and_global_namespaces() {
    let mut n = node(1);
    n.conf["namespaceIsolation"] = json!(true);
    n.conf["globalNamespaces"] = json!("shared");
    n.nad(
        "other",
        "br",
        bridge_host_local(&unique("obr"), "198.51.100.0/24", &n.ipam_dir()),
    );
    n.nad(
        "shared",
        "br",
        bridge_host_local(&unique("sbr"), "198.51.100.0/24", &n.ipam_dir()),
    );
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "other/br")],
    );
    let e = n.add(&att).unwrap_err();
    assert!(
        e.msg.contains("namespace isolation enabled") && e.msg.contains("target namespace other"),
        "{e}"
    );
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "shared/br")],
    );
    n.add(&att).unwrap();
    n.del(&att).unwrap();
    // The default-network annotation follows the same rule: no eth0 on another
    // namespace's NAD (kube-system included), nothing attached.
    n.nad(
        "kube-system",
        "sys",
        bridge_host_local(&unique("kbr"), "203.0.113.0/24", &n.ipam_dir()),
    );
    for other in ["other/br", "kube-system/sys", "sys"] {
        let att = n.attachment(
            0,
            &unique("cid"),
            "demo",
            "p",
            &[("PLEXUS_DEFAULT_NETWORK", other)],
        );
        let e = n.add(&att).unwrap_err();
        assert_eq!(e.code, 7, "{other}: {e}");
        assert!(
            e.msg.contains("namespace isolation enabled")
                && e.msg
                    .contains("CNI_ARGS PLEXUS_DEFAULT_NETWORK refers to target namespace"),
            "{other}: {e}"
        );
        assert_eq!(links(n.world.ctr(0)), ["lo"], "{other}");
    }
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn default_network_override_default_networks_and_system_namespaces() {
    let mut n = node(1);
    let alt = unique("alt");
    n.nad("kube-system", "alt", json!({"cniVersion": "1.0.0", "name": "alt", "type": "bridge", "bridge": alt,
        "ipam": {"type": "host-local", "dataDir": n.ipam_dir(), "ranges": [[{"subnet": "203.0.113.0/24"}]]}}));
    n.nad(
        "kube-system",
        "extra",
        bridge_host_local(&unique("ebr"), "198.51.100.0/24", &n.ipam_dir()),
    );
    n.conf["defaultNetworks"] = json!(["extra"]);
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_DEFAULT_NETWORK", "alt")],
    );
    n.add(&att).unwrap();
    assert!(
        addresses(n.world.ctr(0), "eth0")[0].starts_with("203.0.113."),
        "default network replaced"
    );
    assert!(
        addresses(n.world.ctr(0), "net1")[0].starts_with("198.51.100."),
        "defaultNetworks attached"
    );
    let st = n.status("demo", "p").unwrap();
    assert_eq!(st[0]["name"], "kube-system/alt");
    n.del(&att).unwrap();
    let att = n.attachment(0, &unique("cid"), "kube-system", "sys", &[]);
    n.add(&att).unwrap();
    assert_eq!(
        links(n.world.ctr(0)).len(),
        2,
        "system namespaces get no defaultNetworks"
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn nad_without_config_is_looked_up_on_disk_conflist_first() {
    let n = node(1);
    let conf = n.world.subdir("conf");
    std::fs::write(
        conf.join("00-disk.conf"),
        json!({"cniVersion": "1.0.0", "name": "disk", "type": "macvlan", "master": "nope"})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        conf.join("50-disk.conflist"),
        json!({"cniVersion": "1.0.0", "name": "disk", "plugins": [{"type": "bridge", "bridge": unique("kbr"),
            "ipam": {"type": "host-local", "dataDir": n.ipam_dir(), "ranges": [[{"subnet": "198.51.100.0/24"}]]}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        n.world.subdir("nads").join("disk.yaml"),
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: disk\n  namespace: demo\n",
    )
    .unwrap();
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "disk")],
    );
    n.add(&att).unwrap();
    assert!(
        addresses(n.world.ctr(0), "net1")[0].starts_with("198.51.100."),
        "the conflist won over the earlier .conf"
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn runtime_config_goes_to_the_default_network_only() {
    let mut n = node(1);
    let rec = n.world.subdir("rec");
    n.conf["capabilities"] = json!({"portMappings": true, "bandwidth": true});
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    n.conf["delegates"] = json!([{"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "plexus-test-plugin", "recordDir": rec, "capabilities": {"portMappings": true, "bandwidth": true}}]}]);
    n.nad("demo", "sec", json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "recordDir": rec, "ip": "198.51.100.9/24",
        "capabilities": {"portMappings": true, "bandwidth": true}}));
    let mut att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "sec")],
    );
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    att.capability_args.insert(
        "bandwidth".into(),
        json!({"ingressRate": 1000, "ingressBurst": 1000}),
    );
    n.add(&att).unwrap();
    let calls = recorded_calls(&rec);
    assert_eq!(
        calls[0]["config"]["runtimeConfig"]["portMappings"][0]["hostPort"], 8080,
        "default network gets the runtime's"
    );
    assert!(
        calls[1]["config"].get("runtimeConfig").is_none(),
        "D3: the secondary network gets none of it: {}",
        calls[1]["config"]
    );
    assert_eq!(calls[1]["env"]["CNI_IFNAME"], "net1");
    assert!(calls[1]["env"]["CNI_ARGS"]
        .as_str()
        .unwrap()
        .contains("K8S_POD_NAME=p"));
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn gc_removes_stale_containers_and_forwards_the_valid_list() {
    let mut n = node(2);
    let rec = n.world.subdir("rec");
    n.nad("demo", "sec", json!({"cniVersion": "1.1.0", "type": "plexus-test-plugin", "recordDir": rec, "ip": "198.51.100.9/24"}));
    n.conf["binDir"] = json!(REFERENCE_PLUGINS);
    let keep = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "a",
        &[("PLEXUS_NETWORKS", "sec")],
    );
    let stale = n.attachment(
        1,
        &unique("cid"),
        "demo",
        "b",
        &[("PLEXUS_NETWORKS", "sec")],
    );
    n.add(&keep).unwrap();
    n.add(&stale).unwrap();
    let mut list = n.list().to_value();
    list["cniVersion"] = json!("1.1.0");
    let list = plexus_cni::config::NetworkConfigList::from_value(list).unwrap();
    let valid = [plexus_cni::runtime::ValidAttachment {
        container_id: keep.container_id.clone(),
        ifname: "eth0".into(),
    }];
    let errors = n.world.host.run(|| n.rt.gc_plugins(&list, &valid)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        links(n.world.ctr(1)),
        ["lo"],
        "the stale container's interfaces are gone"
    );
    assert_eq!(
        links(n.world.ctr(0)),
        ["lo", "eth0"],
        "the valid one is untouched"
    );
    let calls = recorded_calls(&rec);
    let gc = calls
        .iter()
        .find(|c| c["env"]["CNI_COMMAND"] == "GC")
        .expect("GC forwarded to the secondary network");
    assert_eq!(
        gc["config"]["cni.dev/valid-attachments"],
        json!([{"containerID": keep.container_id, "ifname": "net1"}])
    );
    n.del(&keep).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn device_info_is_capability_driven_reported_and_removed() {
    let mut n = node(1);
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    n.nad(
        "demo",
        "dev",
        json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "ip": "198.51.100.9/24",
        "capabilities": {"CNIDeviceInfoFile": true}}),
    );
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "dev")],
    );
    n.add(&att).unwrap();
    let st = n.status("demo", "p").unwrap();
    assert_eq!(
        st[1]["device-info"],
        json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:00:1f.6"}})
    );
    let files = files_below(&n.world.subdir("devinfo"));
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("demo-dev-"),
        "{files:?}"
    );
    n.del(&att).unwrap();
    assert!(
        n.leftovers().is_empty(),
        "the device-info file is removed on DEL: {:?}",
        n.leftovers()
    );
}

#[test]
fn status_reaches_the_cluster_network_and_waits_for_readiness() {
    let mut n = node(1);
    let rec = n.world.subdir("rec");
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    n.conf["delegates"] = json!([{"cniVersion": "1.1.0", "name": "cluster", "plugins": [
        {"type": "plexus-test-plugin", "recordDir": rec, "statusCode": 51}]}]);
    let mut list = n.list().to_value();
    list["cniVersion"] = json!("1.1.0");
    let list = plexus_cni::config::NetworkConfigList::from_value(list).unwrap();
    let e = n
        .world
        .host
        .run(|| n.rt.status_list(&list))
        .unwrap()
        .unwrap_err();
    assert_eq!(
        e.code, 51,
        "the delegate's STATUS code reaches the runtime: {e}"
    );
    n.conf["readinessindicatorfile"] = json!(n.world.subdir("ready").join("flag"));
    let mut list = n.list().to_value();
    list["cniVersion"] = json!("1.1.0");
    let list = plexus_cni::config::NetworkConfigList::from_value(list).unwrap();
    let e = n
        .world
        .host
        .run(|| n.rt.status_list(&list))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, 50, "not ready yet: {e}");
    assert!(e.msg.contains("readiness indicator file"), "{e}");
}

#[test]
fn auxiliary_chain_runs_after_every_network() {
    let mut n = node(1);
    let rec = n.world.subdir("rec");
    let conf = n.world.subdir("netd");
    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge", "bridge": unique("abr"),
        "ipam": {"type": "host-local", "dataDir": n.ipam_dir(), "ranges": [[{"subnet": "192.0.2.0/24"}]]}}]});
    std::fs::write(conf.join("10-cluster.conflist"), cluster.to_string()).unwrap();
    std::fs::create_dir_all(conf.join("aux")).unwrap();
    std::fs::write(
        conf.join("aux/10-rec.conf"),
        json!({"type": "plexus-test-plugin", "recordDir": rec, "ip": "203.0.113.1/32"}).to_string(),
    )
    .unwrap();
    n.conf.as_object_mut().unwrap().remove("delegates");
    n.conf["clusterNetwork"] = json!(conf.join("10-cluster.conflist"));
    n.conf["auxiliaryCNIChainName"] = json!("aux");
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let r = n.add(&att).unwrap().to_current();
    assert!(
        r.ips[0].address.to_string().starts_with("192.0.2."),
        "the runtime still gets the cluster network's result"
    );
    let calls = recorded_calls(&rec);
    assert_eq!(calls[0]["env"]["CNI_COMMAND"], "ADD");
    assert_eq!(calls[0]["env"]["CNI_IFNAME"], "eth0");
    assert_eq!(calls[0]["config"]["name"], "aux");
    assert_eq!(
        calls[0]["config"]["prevResult"],
        json!({"cniVersion": "1.0.0"}),
        "it continues from an empty result"
    );
    assert_eq!(
        n.status("demo", "p").unwrap().as_array().unwrap().len(),
        1,
        "no status entry of its own"
    );
    n.del(&att).unwrap();
    let calls = recorded_calls(&rec);
    assert_eq!(calls.len(), 2, "DEL reached the auxiliary chain");
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn selection_keys_reach_the_delegates() {
    let mut n = node(1);
    let rec = n.world.subdir("rec");
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    n.nad(
        "demo",
        "caps",
        json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "plexus-test-plugin", "recordDir": rec, "ip": "198.51.100.9/24",
         "capabilities": {"portMappings": true, "bandwidth": true, "infinibandGUID": true}}]}),
    );
    let sel = r#"[{"name":"caps","interface":"data9",
        "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"UDP","hostIP":"198.51.100.1"}],
        "bandwidth":{"ingressRate":1000000,"ingressBurst":2000000,"egressRate":3000000},
        "infiniband-guid":"c2:11:22:33:44:55:66:77","deviceID":"0000:00:1f.6",
        "ipam-claim-reference":"vm-a.caps","cni-args":{"k":"v"}}]"#;
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("PLEXUS_NETWORKS", sel)]);
    n.add(&att).unwrap();
    let calls = recorded_calls(&rec);
    let c = &calls[0]["config"];
    assert_eq!(calls[0]["env"]["CNI_IFNAME"], "data9");
    assert_eq!(
        c["runtimeConfig"]["portMappings"],
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "198.51.100.1"}])
    );
    assert_eq!(
        c["runtimeConfig"]["bandwidth"],
        json!({"ingressRate": 1000000, "ingressBurst": 2000000, "egressRate": 3000000})
    );
    assert_eq!(
        c["runtimeConfig"]["infinibandGUID"],
        "c2:11:22:33:44:55:66:77"
    );
    assert_eq!(
        (c["deviceID"].as_str(), c["pciBusID"].as_str()),
        (Some("0000:00:1f.6"), Some("0000:00:1f.6"))
    );
    assert_eq!(
        c["args"]["cni"],
        json!({"k": "v", "ipam-claim-reference": "vm-a.caps"})
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn the_runtimes_ip_and_mac_reach_the_default_network_only() {
    // What podman passes for `--ip` and `--mac-address`: the default network's, not the
    // others' (they failed with "failed to allocate all requested IPs", or got the MAC).
    let n = node(1);
    std_nads(&n);
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[
            ("PLEXUS_NETWORKS", "br"),
            ("IP", "192.0.2.77"),
            ("MAC", "02:00:00:00:00:77"),
        ],
    );
    n.add(&att).unwrap();
    let ctr = n.world.ctr(0);
    assert_eq!(addresses(ctr, "eth0")[0], "192.0.2.77/24");
    assert!(addresses(ctr, "net1")[0].starts_with("198.51.100."));
    assert_ne!(link(ctr, "net1").unwrap()["address"], "02:00:00:00:00:77");
    n.del(&att).unwrap();
    assert_eq!(links(ctr), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn check_sees_what_a_pre_040_network_lost() {
    // Most NADs say 0.3.1, where CHECK does not exist: Plexus verifies the interfaces of
    // every attachment in the pod's namespace itself.
    let n = node(1);
    let mut old = bridge_host_local(&unique("obr"), "198.51.100.0/24", &n.ipam_dir());
    old["cniVersion"] = json!("0.3.1");
    n.nad("demo", "old", old);
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "old")],
    );
    let r = n.add(&att).unwrap();
    n.check(&att, &r).unwrap();
    let ctr = n.world.ctr(0);
    let mac = link(ctr, "net1").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    ip(
        Some(ctr),
        &["link", "set", "net1", "address", "02:00:00:00:00:66"],
    );
    let e = n.check(&att, &r).unwrap_err();
    assert!(
        e.msg.contains("demo/old") && e.msg.contains(&format!("the ADD result says {mac}")),
        "{e}"
    );
    ip(Some(ctr), &["link", "del", "net1"]);
    let e = n.check(&att, &r).unwrap_err();
    assert_eq!(e.code, 100, "{e}");
    assert!(e.msg.contains("\"net1\" is missing"), "{e}");
    n.del(&att).unwrap();
    assert_eq!(links(ctr), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn runtime_generated_names_are_accepted_in_local_mode() {
    // podman passes its container name as K8S_POD_NAMESPACE and K8S_POD_NAME.
    let n = node(1);
    std_nads(&n);
    let name = "eloquent_rosalind";
    let att = n.attachment(
        0,
        &unique("cid"),
        name,
        name,
        &[("PLEXUS_NETWORKS", "demo/br")],
    );
    n.add(&att).unwrap();
    let status = n
        .world
        .subdir("status")
        .join("eloquent%5Frosalind_eloquent%5Frosalind.json");
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert_eq!(st[1]["name"], "demo/br");
    n.del(&att).unwrap();
    assert!(!status.exists());
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // A name no file can hold is refused before anything is attached.
    let long = "x".repeat(300);
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        &long,
        &[("PLEXUS_NETWORKS", "br")],
    );
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 4, "{e}");
    assert!(e.msg.contains("K8S_POD_NAME"), "{e}");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn a_delegate_dies_with_the_plugin_that_started_it() {
    let mut n = node(1);
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    let rec = n.world.subdir("rec");
    n.nad(
        "demo",
        "stuck",
        json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "recordDir": rec, "hangOn": "ADD"}),
    );
    let att = n.attachment(
        0,
        &unique("cid"),
        "demo",
        "p",
        &[("PLEXUS_NETWORKS", "stuck")],
    );
    let (call, add) = std::thread::scope(|s| {
        let adding = s.spawn(|| n.add(&att));
        let call = wait_for_call(&rec, "ADD", std::time::Duration::from_secs(20));
        // The hanging delegate's parent is the plexus process the runtime started.
        kill_9(call["ppid"].as_u64().unwrap());
        (call, adding.join().unwrap())
    });
    assert!(add.is_err(), "the killed plugin answered: {add:?}");
    let pid = call["pid"].as_u64().unwrap();
    assert!(
        gone_within(pid, std::time::Duration::from_secs(5)),
        "delegate {pid} outlived the plugin that started it"
    );
    // What the killed ADD attached (eth0) goes with the runtime's DEL, as always.
    n.del(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn a_restart_without_its_selection_is_refused_when_local_require_selection_is_set() {
    // A runtime that does not keep CNI_ARGS restarts a container without
    // PLEXUS_NETWORKS: with local.requireSelection the ADD fails and says why, instead
    // of giving the container its default network alone.
    let mut n = node(1);
    std_nads(&n);
    n.conf["plexus"]["local"]["requireSelection"] = json!(true);
    let cid = unique("cid");
    let att = n.attachment(0, &cid, "demo", "p", &[("PLEXUS_NETWORKS", "br")]);
    n.add(&att).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo", "eth0", "net1"]);
    n.del(&att).unwrap();
    let restarted = n.attachment(0, &cid, "demo", "p", &[]);
    let e = n.add(&restarted).unwrap_err();
    assert_eq!(e.code, 4, "{e}");
    assert!(
        e.msg
            .contains("neither PLEXUS_NETWORKS nor PLEXUS_DEFAULT_NETWORK"),
        "{e}"
    );
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // PLEXUS_NETWORKS= asks for the default network alone.
    let alone = n.attachment(0, &cid, "demo", "p", &[("PLEXUS_NETWORKS", "")]);
    n.add(&alone).unwrap();
    assert_eq!(links(n.world.ctr(0)), ["lo", "eth0"]);
    n.del(&alone).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

/// The admission webhook's rules give the verdicts the plugin gives when the pod is set
/// up: the namespace-isolation cases above, run through both.
#[test]
fn admission_gives_the_plugins_namespace_isolation_verdicts() {
    use plexus_admission::rules::{review_pod, NadSource, Policy};
    struct AllExist;
    impl NadSource for AllExist {
        fn nad(&self, ns: &str, name: &str) -> Result<Option<plexus_npwg::nad::Nad>, String> {
            plexus_npwg::nad::Nad::from_object(
                &json!({"metadata": {"name": name, "namespace": ns}}),
            )
            .map(Some)
            .map_err(|e| e.msg)
        }
    }
    let mut n = node(1);
    n.conf["namespaceIsolation"] = json!(true);
    n.conf["globalNamespaces"] = json!("shared");
    for (ns, name, subnet) in [
        ("demo", "br", "192.0.2.128/26"),
        ("other", "br", "198.51.100.0/26"),
        ("shared", "br", "198.51.100.64/26"),
        ("kube-system", "sys", "203.0.113.0/26"),
    ] {
        n.nad(
            ns,
            name,
            bridge_host_local(&unique("ibr"), subnet, &n.ipam_dir()),
        );
    }
    let policy = Policy {
        namespace_isolation: true,
        global_namespaces: "shared".into(),
        ..Default::default()
    };
    for (arg, annotation, value) in [
        ("PLEXUS_NETWORKS", "k8s.v1.cni.cncf.io/networks", "br"),
        ("PLEXUS_NETWORKS", "k8s.v1.cni.cncf.io/networks", "other/br"),
        (
            "PLEXUS_NETWORKS",
            "k8s.v1.cni.cncf.io/networks",
            "shared/br",
        ),
        (
            "PLEXUS_NETWORKS",
            "k8s.v1.cni.cncf.io/networks",
            r#"[{"name":"br","namespace":"other"}]"#,
        ),
        (
            "PLEXUS_DEFAULT_NETWORK",
            "v1.multus-cni.io/default-network",
            "other/br",
        ),
        (
            "PLEXUS_DEFAULT_NETWORK",
            "v1.multus-cni.io/default-network",
            "kube-system/sys",
        ),
        (
            "PLEXUS_DEFAULT_NETWORK",
            "v1.multus-cni.io/default-network",
            "sys",
        ),
    ] {
        let att = n.attachment(0, &unique("cid"), "demo", "p", &[(arg, value)]);
        let plugin = n.add(&att);
        if plugin.is_ok() {
            n.del(&att).unwrap();
        }
        let pod = json!({"metadata": {"name": "p", "namespace": "demo", "annotations": {annotation: value}},
                         "spec": {"containers": [{"name": "c"}]}});
        let admission = review_pod(&pod, None, &policy, &AllExist);
        assert_eq!(
            admission.allowed,
            plugin.is_ok(),
            "{annotation}={value}: the plugin says {:?}, admission says {admission:?}",
            plugin.err()
        );
        if !admission.allowed {
            assert!(
                admission.message.contains("namespace isolation enabled"),
                "{}",
                admission.message
            );
        }
    }
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}
