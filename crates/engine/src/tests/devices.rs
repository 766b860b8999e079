//! Device-backed networks over the fakes: which device each reference gets, what the
//! delegates see, the device-info copy, and that DEL needs no kubelet.

use crate::testing::{net, Fixture};
use plexus_npwg::NETWORKS_ANNOTATION;
use serde_json::json;

const RES: &str = "vendor.example/vf";

fn fixture(selection: &str) -> Fixture {
    let f = Fixture::new();
    f.cluster.device_nad(
        "demo",
        "vf",
        RES,
        net(
            "vf",
            "host-device",
            json!({"capabilities": {"deviceID": true}}),
        ),
    );
    f.cluster
        .nad("demo", "plain", net("plain", "macvlan", json!({})));
    f.cluster
        .pod("demo", "p", &[(NETWORKS_ANNOTATION, selection)]);
    f
}

#[test]
fn two_references_get_two_devices_in_sorted_order_and_del_needs_no_kubelet() {
    let f = fixture("vf,plain,vf");
    f.devices
        .allocate("demo/p", RES, &["0000:03:02.1", "0000:03:02.0"]);
    // The device plugin's device-info file of the first device (device-info §4.1).
    let dp = f.dir.path().join("dp");
    std::fs::create_dir(&dp).unwrap();
    let info = json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:03:02.0"}});
    std::fs::write(
        dp.join("vendor.example-vf-0000:03:02.0-device.json"),
        info.to_string(),
    )
    .unwrap();
    let e = f.engine(json!({}));
    e.add(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(
        *f.devices.calls.lock().unwrap(),
        1,
        "one kubelet call per ADD"
    );
    let calls = f.exec.calls();
    assert_eq!(
        f.exec.log(),
        [
            "ADD bridge eth0",
            "ADD host-device net1",
            "ADD macvlan net2",
            "ADD host-device net3"
        ]
    );
    for (call, dev) in [(&calls[1], "0000:03:02.0"), (&calls[3], "0000:03:02.1")] {
        assert_eq!(call.stdin["deviceID"], dev, "{}", call.stdin);
        assert_eq!(call.stdin["pciBusID"], dev);
        assert_eq!(call.stdin["runtimeConfig"]["deviceID"], dev);
        assert!(
            call.stdin["runtimeConfig"]
                .get("CNIDeviceInfoFile")
                .is_none(),
            "not declared"
        );
    }
    assert!(calls[2].stdin.get("deviceID").is_none());
    // The state keeps each device.
    let st = e.state().load("c1").unwrap().unwrap();
    let devs: Vec<Option<&str>> = st
        .attachments
        .iter()
        .map(|a| a.device.as_ref().map(|d| d.device_id.as_str()))
        .collect();
    assert_eq!(
        devs,
        [None, Some("0000:03:02.0"), None, Some("0000:03:02.1")]
    );
    // The device plugin's file was copied and reported; the second device has none.
    let told = f.cluster.told();
    let status = &told.statuses[0].1;
    assert_eq!(status[1].device_info.as_ref(), Some(&info));
    assert_eq!(status[3].device_info, None);
    let copied = f.dir.path().join("devinfo").join("demo-vf-c1_net1");
    assert!(copied.exists());
    // DEL from the state: no kubelet call, the copy removed.
    *f.devices.down.lock().unwrap() = true;
    e.del(&f.req("c1", "demo", "p")).unwrap();
    assert_eq!(*f.devices.calls.lock().unwrap(), 1);
    assert!(!copied.exists());
    let dels: Vec<_> = f
        .exec
        .calls()
        .into_iter()
        .filter(|c| c.command == "DEL")
        .collect();
    assert_eq!(
        dels[0].stdin["deviceID"], "0000:03:02.1",
        "reverse order, same devices"
    );
    assert!(f.files().is_empty(), "{:?}", f.files());
}

#[test]
fn a_missing_device_fails_before_anything_is_attached() {
    let f = fixture("plain,vf,vf");
    f.devices.allocate("demo/p", RES, &["0000:03:02.0"]);
    let e = f.engine(json!({}));
    let err = e.add(&f.req("c1", "demo", "p")).unwrap_err();
    assert_eq!(err.code, 7);
    for part in [
        "pod \"demo/p\"",
        "network \"demo/vf\"",
        "\"vendor.example/vf\"",
    ] {
        assert!(err.msg.contains(part), "{part}: {}", err.msg);
    }
    assert!(
        f.exec.calls().is_empty(),
        "nothing attached: {:?}",
        f.exec.log()
    );
    assert!(f.files().is_empty(), "{:?}", f.files());
    assert!(!f.dir.path().join("devinfo").exists());
}

#[test]
fn a_kubelet_that_does_not_answer_fails_the_add_and_plain_pods_never_ask_it() {
    let f = fixture("vf");
    *f.devices.down.lock().unwrap() = true;
    let e = f.engine(json!({}));
    let err = e.add(&f.req("c1", "demo", "p")).unwrap_err();
    assert_eq!(err.code, 11);
    assert!(f.exec.calls().is_empty());
    f.cluster
        .pod("demo", "q", &[(NETWORKS_ANNOTATION, "plain")]);
    e.add(&f.req("c2", "demo", "q")).unwrap();
    assert_eq!(
        *f.devices.calls.lock().unwrap(),
        1,
        "only the device pod asked"
    );
}
