use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::net::IpAddr;

fn parse(v: serde_json::Value) -> CniResult {
    CniResult::from_json(v.to_string().as_bytes()).unwrap()
}

#[test]
fn empty_version_is_010() {
    let r = parse(json!({"ip4": {"ip": "192.0.2.5/24"}}));
    assert_eq!(r.version(), "0.1.0");
}

#[test]
fn unknown_version_is_code_1() {
    let e = CniResult::from_json(br#"{"cniVersion":"7.0.0"}"#).unwrap_err();
    assert_eq!(e.code, 1);
    let e = CniResult::from_json(b"not json").unwrap_err();
    assert_eq!(e.code, 6);
}

#[test]
fn up_from_020_flattens_routes_and_adds_versions() {
    let r = parse(json!({
        "cniVersion": "0.2.0",
        "ip4": {"ip": "192.0.2.5/24", "gateway": "192.0.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
        "ip6": {"ip": "2001:db8::5/64", "routes": [{"dst": "::/0", "gw": "2001:db8::1"}]},
        "dns": {"nameservers": ["192.0.2.53"]}
    }));
    let up = r.convert_to("0.4.0").unwrap();
    assert_eq!(
        up.to_value(),
        json!({
            "cniVersion": "0.4.0",
            "ips": [
                {"version": "4", "address": "192.0.2.5/24", "gateway": "192.0.2.1"},
                {"version": "6", "address": "2001:db8::5/64"}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "2001:db8::1"}],
            "dns": {"nameservers": ["192.0.2.53"]}
        })
    );
    let v1 = r.convert_to("1.1.0").unwrap().to_value();
    assert_eq!(
        v1["ips"][0],
        json!({"address": "192.0.2.5/24", "gateway": "192.0.2.1"})
    );
}

#[test]
fn down_to_020_keeps_first_of_each_family() {
    let r = parse(json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1400, "sandbox": "/run/netns/x"}],
        "ips": [
            {"interface": 0, "address": "192.0.2.5/24", "gateway": "192.0.2.1"},
            {"interface": 0, "address": "192.0.2.6/24"},
            {"interface": 0, "address": "2001:db8::5/64"}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1", "mtu": 1300}, {"dst": "2001:db8:1::/48"}]
    }));
    let down = r.convert_to("0.2.0").unwrap();
    assert_eq!(
        down.to_value(),
        json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "192.0.2.5/24", "gateway": "192.0.2.1", "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}]},
            "ip6": {"ip": "2001:db8::5/64", "routes": [{"dst": "2001:db8:1::/48"}]}
        })
    );
}

#[test]
fn down_to_040_drops_11_interface_fields_and_recomputes_version() {
    let r = parse(json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mtu": 9000, "socketPath": "/s", "pciID": "0000:00:01.0"}],
        "ips": [{"interface": 0, "address": "2001:db8::5/64"}]
    }));
    let v = r.convert_to("0.3.1").unwrap().to_value();
    assert_eq!(v["interfaces"], json!([{"name": "eth0"}]));
    assert_eq!(
        v["ips"],
        json!([{"version": "6", "interface": 0, "address": "2001:db8::5/64"}])
    );
}

#[test]
fn no_ip_cannot_go_to_020() {
    let r = parse(json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]}));
    let e = r.convert_to("0.1.0").unwrap_err();
    assert_eq!(e.code, 1);
    assert!(e.msg.contains("no valid IP addresses"), "{}", e.msg);
}

#[test]
fn unsupported_target_is_refused() {
    let r = parse(json!({"cniVersion": "1.0.0"}));
    assert_eq!(r.convert_to("0.5.0").unwrap_err().code, 1);
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(IpAddr::from(a), p).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(IpAddr::from(a), p).unwrap()),
    ]
}

fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from)
    ]
}

fn arb_route() -> impl Strategy<Value = Route> {
    (
        arb_net(),
        proptest::option::of(arb_addr()),
        proptest::option::of(1u32..9000),
        proptest::option::of(0u32..300),
    )
        .prop_map(|(dst, gw, mtu, table)| Route {
            mtu,
            table,
            ..Route::new(dst, gw)
        })
}

fn arb_result() -> impl Strategy<Value = Result100> {
    let iface = (
        "[a-z]{1,6}[0-9]",
        proptest::option::of(576u32..9000),
        "(/run/netns/[a-z]{1,5})?",
    )
        .prop_map(|(name, mtu, sandbox)| Interface {
            name,
            mtu,
            sandbox,
            ..Interface::default()
        });
    let ip = (
        proptest::option::of(0i32..3),
        arb_net(),
        proptest::option::of(arb_addr()),
    )
        .prop_map(|(interface, address, gateway)| v100::IpConfig {
            interface,
            address,
            gateway,
        });
    let dns = proptest::collection::vec("[0-9.]{1,8}", 0..2).prop_map(|nameservers| Dns {
        nameservers,
        ..Dns::default()
    });
    (
        proptest::collection::vec(iface, 0..3),
        proptest::collection::vec(ip, 0..4),
        proptest::collection::vec(arb_route(), 0..4),
        dns,
    )
        .prop_map(|(interfaces, ips, routes, dns)| Result100 {
            cni_version: "1.1.0".into(),
            interfaces,
            ips,
            routes,
            dns,
        })
}

proptest! {
    /// Converting up to any higher version and back down preserves all a lower version can hold.
    #[test]
    fn up_and_down_round_trips(r in arb_result()) {
        let r = CniResult::V100(r);
        for (i, low) in version::SUPPORTED.iter().enumerate() {
            let Ok(at_low) = r.convert_to(low) else {
                // Only 0.1.0/0.2.0 may refuse, and only for a result without IPs.
                prop_assert!(low.starts_with("0.1") || low.starts_with("0.2"));
                continue;
            };
            // JSON round trip of the lower version is lossless.
            let reparsed = CniResult::from_json(&at_low.to_json()).unwrap();
            prop_assert_eq!(&reparsed, &at_low);
            for high in &version::SUPPORTED[i..] {
                let back = at_low.convert_to(high).unwrap().convert_to(low).unwrap();
                prop_assert_eq!(&back, &at_low, "{} -> {} -> {}", low, high, low);
            }
        }
    }
}
