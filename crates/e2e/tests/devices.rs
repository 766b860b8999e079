//! Device-backed networks (a NAD with `k8s.v1.cni.cncf.io/resourceName`) with a test
//! kubelet: the real PodResources gRPC service on a unix socket, and the device
//! manager's checkpoint in the kubelet's format. The device reaches the delegate (the
//! recording test plugin), and the reference `host-device` plugin moves a veth standing
//! in for an SR-IOV VF into the pod and back. Thin and thick mode.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_kubelet::testing::{write_checkpoint, TestKubelet};
use plexus_testapi::{Resource, TestApiServer};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const RES: &str = "vendor.example/vf";

/// A node on the test API server whose Plexus asks the kubelet at `<world>/kubelet`.
fn setup() -> (Node, TestApiServer) {
    let (mut n, api) = Node::kube(1);
    let k = n.world.subdir("kubelet");
    n.conf["binDir"] = json!(plexus_bin().parent().unwrap());
    let p = &mut n.conf["plexus"];
    p["podResourcesSocket"] = json!(k.join("kubelet.sock"));
    p["deviceCheckpointFile"] = json!(k.join("kubelet_internal_checkpoint"));
    p["devicePluginInfoDir"] = json!(n.world.subdir("dp"));
    p["kubeletTimeoutMs"] = json!(500);
    (n, api)
}

fn kubelet(n: &Node) -> TestKubelet {
    TestKubelet::start(n.world.subdir("kubelet").join("kubelet.sock")).unwrap()
}

/// A device-backed NAD.
fn device_nad(api: &TestApiServer, name: &str, config: Value) {
    let mut o = nad_object("demo", name, &config);
    o["metadata"]["annotations"] = json!({"k8s.v1.cni.cncf.io/resourceName": RES});
    api.put(Resource::Nads, o);
}

/// A NAD of the recording test plugin that takes `runtimeConfig.deviceID`.
fn recording_nad(api: &TestApiServer, rec: &Path) {
    device_nad(
        api,
        "vf",
        json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "recordDir": rec,
               "capabilities": {"deviceID": true}}),
    );
}

fn adds(rec: &Path) -> Vec<Value> {
    recorded_calls(rec)
        .into_iter()
        .filter(|c| c["env"]["CNI_COMMAND"] == "ADD")
        .collect()
}

fn status_of(api: &TestApiServer, pod: &str) -> Value {
    let p = api.get(Resource::Pods, "demo", pod).unwrap();
    serde_json::from_str(
        p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

/// What a device plugin writes for a device (device-info-spec §4.1).
fn dp_file(n: &Node, id: &str) -> Value {
    let info = json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": id}});
    std::fs::write(
        n.world
            .subdir("dp")
            .join(format!("{}-{id}-device.json", RES.replace('/', "-"))),
        info.to_string(),
    )
    .unwrap();
    info
}

fn two_references_two_devices(thick: bool) {
    let (mut n, api) = setup();
    let k = kubelet(&n);
    let rec = n.world.subdir("rec");
    recording_nad(&api, &rec);
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "uid-p", Some("vf,vf")),
    );
    // Two containers; the kubelet's order is not the order handed out.
    k.allocate("demo", "p", "a", RES, &["0000:03:02.1"]);
    k.allocate("demo", "p", "b", RES, &["0000:03:02.0"]);
    let info = dp_file(&n, "0000:03:02.0");
    let daemon = thick.then(|| {
        let d = Daemon::start(&n, json!({}));
        n.conf = n.shim_conf();
        d
    });
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[("K8S_POD_UID", "uid-p")]);
    n.add(&att).unwrap();
    let calls = adds(&rec);
    assert_eq!(calls.len(), 2);
    for (c, ifname, dev) in [
        (&calls[0], "net1", "0000:03:02.0"),
        (&calls[1], "net2", "0000:03:02.1"),
    ] {
        assert_eq!(c["env"]["CNI_IFNAME"], ifname);
        assert_eq!(c["config"]["deviceID"], dev, "{}", c["config"]);
        assert_eq!(c["config"]["pciBusID"], dev);
        assert_eq!(c["config"]["runtimeConfig"]["deviceID"], dev);
    }
    assert_eq!(
        k.calls(),
        ["Get"],
        "one question to the kubelet, for the one pod"
    );
    // device-info §4.2: the device plugin's file copied to the attachment's and reported.
    let st = status_of(&api, "p");
    assert_eq!(st[1]["device-info"], info);
    assert!(
        st[2].get("device-info").is_none(),
        "no device plugin file for the second device"
    );
    // DEL needs no kubelet: the state holds the devices.
    drop(k);
    n.del(&att).unwrap();
    let dels: Vec<Value> = recorded_calls(&rec)
        .into_iter()
        .filter(|c| c["env"]["CNI_COMMAND"] == "DEL")
        .collect();
    assert_eq!(dels[0]["config"]["deviceID"], "0000:03:02.1");
    assert_eq!(dels[1]["config"]["deviceID"], "0000:03:02.0");
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    if let Some(d) = daemon {
        d.stop();
    }
}

#[test]
fn thin_two_references_to_one_nad_get_two_devices_and_del_needs_no_kubelet() {
    two_references_two_devices(false);
}

#[test]
fn thick_two_references_to_one_nad_get_two_devices_and_del_needs_no_kubelet() {
    two_references_two_devices(true);
}

#[test]
fn a_missing_device_fails_the_add_naming_pod_nad_and_resource_and_leaves_nothing() {
    let (n, api) = setup();
    let k = kubelet(&n);
    let rec = n.world.subdir("rec");
    recording_nad(&api, &rec);
    api.put(
        Resource::Nads,
        nad_object("demo", "mv", &macvlan_static(&n.master)),
    );
    api.put(
        Resource::Pods,
        pod_object(
            "demo",
            "p",
            "uid-p",
            Some(r#"[{"name":"mv","ips":["203.0.113.5/24"]},{"name":"vf"},{"name":"vf"}]"#),
        ),
    );
    k.allocate("demo", "p", "a", RES, &["0000:03:02.0"]);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 7, "{e}");
    for part in [
        "pod \"demo/p\"",
        "network \"demo/vf\"",
        "\"vendor.example/vf\"",
        "request 2",
    ] {
        assert!(e.msg.contains(part), "{part}: {}", e.msg);
    }
    assert!(recorded_calls(&rec).is_empty(), "no delegate ran");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    // None at all: the same, and the message says how to get one.
    api.put(Resource::Pods, pod_object("demo", "q", "uid-q", Some("vf")));
    let e = n
        .add(&n.attachment(0, &unique("cid"), "demo", "q", &[]))
        .unwrap_err();
    assert!(
        e.msg.contains("allocated none") && e.msg.contains("request"),
        "{}",
        e.msg
    );
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

#[test]
fn kubelet_down_uses_the_checkpoint_and_a_hanging_kubelet_times_out() {
    let (n, api) = setup();
    let rec = n.world.subdir("rec");
    recording_nad(&api, &rec);
    api.put(Resource::Pods, pod_object("demo", "p", "uid-p", Some("vf")));
    // No socket: the checkpoint, keyed by the pod's UID.
    write_checkpoint(
        &n.world
            .subdir("kubelet")
            .join("kubelet_internal_checkpoint"),
        &[
            ("uid-p", "app", RES, &["0000:03:02.4"]),
            ("uid-other", "app", RES, &["0000:03:02.5"]),
        ],
    )
    .unwrap();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(adds(&rec)[0]["config"]["deviceID"], "0000:03:02.4");
    n.del(&att).unwrap();
    // A kubelet that takes the call and never answers: a time-out, code 11 (the runtime
    // tries again), nothing attached.
    let k = kubelet(&n);
    k.hang(true);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    let e = n.add(&att).unwrap_err();
    assert_eq!(e.code, 11, "{e}");
    assert!(
        e.msg.contains("no answer within 500 ms") && e.msg.contains("kubelet.sock"),
        "{}",
        e.msg
    );
    assert_eq!(adds(&rec).len(), 1, "no delegate ran");
    assert_eq!(links(n.world.ctr(0)), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
}

/// A fake PCI bus holding one device, `addr`, whose network interface is `ifname` and
/// whose driver is not a userspace one: what host-device reads of an SR-IOV VF.
fn fake_pci_bus(root: &Path, addr: &str, ifname: &str) -> PathBuf {
    let bus = root.join("devices");
    std::fs::create_dir_all(bus.join(addr).join("net").join(ifname)).unwrap();
    std::fs::create_dir_all(root.join("drivers").join("vf-test")).unwrap();
    std::os::unix::fs::symlink(
        root.join("drivers").join("vf-test"),
        bus.join(addr).join("driver"),
    )
    .unwrap();
    bus
}

/// A `host-device` that is the reference plugin itself, run in a mount namespace of its
/// own where `bus` is the PCI bus: this kernel has no SR-IOV device, so a veth stands
/// in for the VF; everything else (netlink, the move, the rename) is the plugin's.
fn host_device_on(bin: &Path, bus: &Path) {
    let script = format!(
        "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'mount --bind \"$0\" /sys/bus/pci/devices && exec {}/host-device' {}\n",
        REFERENCE_PLUGINS,
        bus.display()
    );
    let f = bin.join("host-device");
    std::fs::write(&f, script).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn host_device_moves_the_allocated_vf_into_the_pod_and_back_on_del() {
    let (mut n, api) = setup();
    let k = kubelet(&n);
    let host = n.world.host().to_string();
    let vf = unique("vf");
    let peer = unique("vfp");
    ip(
        Some(&host),
        &["link", "add", &vf, "type", "veth", "peer", "name", &peer],
    );
    let addr = "0000:03:02.3";
    let bus = fake_pci_bus(&n.world.subdir("pci"), addr, &vf);
    let bin = n.world.subdir("bin");
    host_device_on(&bin, &bus);
    // binDir first, the reference plugins through CNI_PATH.
    n.conf["binDir"] = json!(bin);
    device_nad(
        &api,
        "sriov",
        json!({"cniVersion": "1.0.0", "type": "host-device",
               "ipam": {"type": "static", "addresses": [{"address": "198.51.100.20/24"}]}}),
    );
    api.put(
        Resource::Pods,
        pod_object("demo", "p", "uid-p", Some("sriov")),
    );
    k.allocate("demo", "p", "app", RES, &[addr]);
    let info = dp_file(&n, addr);
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    let ctr = n.world.ctr(0);
    assert!(links(ctr).contains(&"net1".to_string()), "{:?}", links(ctr));
    assert_eq!(addresses(ctr, "net1"), ["198.51.100.20/24"]);
    assert!(!links(&host).contains(&vf), "the VF left the host");
    assert_eq!(status_of(&api, "p")[1]["device-info"], info);
    n.del(&att).unwrap();
    assert!(
        links(&host).contains(&vf),
        "the VF is back on the host: {:?}",
        links(&host)
    );
    assert_eq!(links(ctr), ["lo"]);
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    ip(Some(&host), &["link", "del", &vf]);
}

/// A ResourceSlice of `driver` on `node` with `devices` as `(name, attributes)`.
fn slice(name: &str, driver: &str, node: &str, devices: Value) -> Value {
    json!({"metadata": {"name": name},
           "spec": {"driver": driver, "nodeName": node,
                    "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                    "devices": devices}})
}

fn cni_device(name: &str, id: &str) -> Value {
    json!({"name": name, "attributes": {
        "k8s.cni.cncf.io/resourceName": {"string": RES},
        "k8s.cni.cncf.io/deviceID": {"string": id}}})
}

fn dra(thick: bool) {
    let (mut n, api) = setup();
    let k = kubelet(&n);
    let rec = n.world.subdir("rec");
    recording_nad(&api, &rec);
    // The pod's claim got a VF and a GPU from two DRA drivers (pod_object puts the pod
    // on node-a).
    api.put(Resource::Pods, pod_object("demo", "p", "uid-p", Some("vf")));
    k.claim(
        "demo",
        "p",
        "app",
        "p-net-7xk2q",
        ["vf.example.com", "node-a", "vf-3"],
    );
    k.claim(
        "demo",
        "p",
        "app",
        "p-net-7xk2q",
        ["gpu.example.com", "node-a", "gpu-0"],
    );
    let vf = unique("rs");
    api.put(
        Resource::ResourceSlices,
        slice(
            &format!("{vf}-a"),
            "vf.example.com",
            "node-a",
            json!([
                cni_device("vf-2", "0000:03:02.2"),
                cni_device("vf-3", "0000:03:02.3")
            ]),
        ),
    );
    // The same pool and device names on another node: never read.
    api.put(
        Resource::ResourceSlices,
        slice(
            &format!("{vf}-b"),
            "vf.example.com",
            "node-b",
            json!([cni_device("vf-3", "0000:99:00.3")]),
        ),
    );
    api.put(
        Resource::ResourceSlices,
        slice(
            &format!("{vf}-gpu"),
            "gpu.example.com",
            "node-a",
            json!([{"name": "gpu-0", "attributes": {"model": {"string": "g1"}}}]),
        ),
    );
    let daemon = thick.then(|| {
        let d = Daemon::start(&n, json!({}));
        n.conf = n.shim_conf();
        d
    });
    api.clear_requests();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    let calls = adds(&rec);
    assert_eq!(
        calls[0]["config"]["deviceID"], "0000:03:02.3",
        "{}",
        calls[0]["config"]
    );
    assert_eq!(
        calls[0]["config"]["runtimeConfig"]["deviceID"],
        "0000:03:02.3"
    );
    // One list per driver, limited to the pod's node.
    let lists: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|(_, p)| p.contains("resourceslices"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert!(
        lists
            .iter()
            .all(|p| p.contains("spec.nodeName%3Dnode-a") || p.contains("spec.nodeName=node-a")),
        "{lists:?}"
    );
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    if let Some(d) = daemon {
        d.stop();
    }
}

#[test]
fn thin_dra_devices_published_for_cni_are_attached_others_ignored() {
    dra(false);
}

#[test]
fn thick_dra_devices_published_for_cni_are_attached_others_ignored() {
    dra(true);
}

/// Hot-plug: a device-backed network added to a running pod gets a device the pod was
/// allocated and does not use yet; removing it frees the device, with no kubelet call.
#[test]
fn hot_plug_hands_out_a_device_not_in_use() {
    let (mut n, api) = setup();
    let k = kubelet(&n);
    let rec = n.world.subdir("rec");
    recording_nad(&api, &rec);
    api.put(Resource::Pods, pod_object("demo", "p", "uid-p", Some("vf")));
    k.allocate("demo", "p", "app", RES, &["0000:03:02.1", "0000:03:02.0"]);
    let d = Daemon::start(&n, json!({}));
    n.conf = n.shim_conf();
    let att = n.attachment(0, &unique("cid"), "demo", "p", &[]);
    n.add(&att).unwrap();
    assert_eq!(adds(&rec)[0]["config"]["deviceID"], "0000:03:02.0");
    let set = |sel: &str| {
        let mut p = api.get(Resource::Pods, "demo", "p").unwrap();
        p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(sel);
        api.put(Resource::Pods, p);
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    set("vf,vf");
    wait("net2 attached", &|| adds(&rec).len() == 2);
    assert_eq!(adds(&rec)[1]["env"]["CNI_IFNAME"], "net2");
    assert_eq!(
        adds(&rec)[1]["config"]["deviceID"],
        "0000:03:02.1",
        "the device not in use"
    );
    // Detached without asking the kubelet.
    k.hang(true);
    set("vf");
    wait("net2 detached", &|| {
        recorded_calls(&rec)
            .iter()
            .any(|c| c["env"]["CNI_COMMAND"] == "DEL" && c["env"]["CNI_IFNAME"] == "net2")
    });
    drop(k);
    n.del(&att).unwrap();
    assert!(n.leftovers().is_empty(), "{:?}", n.leftovers());
    d.stop();
}
