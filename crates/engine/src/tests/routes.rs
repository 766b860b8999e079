//! default-route's computation (D6), pure.

use crate::plan::Planned;
use crate::routes::{metric, patched, plan_default_route};
use plexus_cni::config::NetworkConfigList;
use plexus_cni::CniResult;
use plexus_npwg::selection::parse_networks;
use serde_json::json;
use std::net::IpAddr;

fn planned(ifname: &str, selection: Option<&str>) -> Planned {
    Planned {
        name: format!("demo/{ifname}"),
        ifname: ifname.into(),
        list: NetworkConfigList::from_value(
            json!({"cniVersion": "1.0.0", "name": ifname, "plugins": [{"type": "bridge"}]}),
        )
        .unwrap(),
        capability_args: Default::default(),
        cni_args: Default::default(),
        is_default: selection.is_none(),
        selection: selection.map(|s| parse_networks(s, "demo").unwrap().remove(0)),
        device_info_file: None,
        device: None,
        auxiliary: false,
    }
}

fn result(ifname: &str, gw4: &str, gw6: &str) -> CniResult {
    CniResult::from_value(&json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": ifname, "sandbox": "/var/run/netns/x"}],
        "ips": [{"interface": 0, "address": format!("{gw4}0/24"), "gateway": gw4},
                {"interface": 0, "address": format!("{gw6}10/64"), "gateway": gw6}],
        "routes": [{"dst": "0.0.0.0/0", "gw": gw4}, {"dst": "::/0", "gw": gw6}, {"dst": "198.51.100.0/24", "gw": gw4}]}))
    .unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn no_element_asks_nothing_changes() {
    let (p0, r0) = (
        planned("eth0", None),
        result("eth0", "192.0.2.1", "2001:db8::1"),
    );
    assert!(plan_default_route(&[(&p0, &r0)]).unwrap().is_none());
}

#[test]
fn listed_gateways_own_gateways_and_families() {
    let p0 = planned("eth0", None);
    let r0 = result("eth0", "192.0.2.1", "2001:db8::1");
    let r1 = result("net1", "198.51.100.1", "2001:db8:1::1");
    let listed = planned(
        "net1",
        Some(r#"[{"name":"a","default-route":["198.51.100.1","198.51.100.2"]}]"#),
    );
    let (owner, c) = plan_default_route(&[(&p0, &r0), (&listed, &r1)])
        .unwrap()
        .unwrap();
    assert_eq!((owner, c.owner.as_str()), (1, "net1"));
    assert_eq!(c.families, [true], "asking for IPv4 never touches IPv6");
    assert_eq!(c.gateways, ips(&["198.51.100.1", "198.51.100.2"]));
    assert_eq!(
        (metric(&c.gateways, 0), metric(&c.gateways, 1)),
        (None, Some(1))
    );
    // An empty list: the attachment's own gateways, both families.
    let own = planned("net1", Some(r#"[{"name":"a","default-route":[]}]"#));
    let (_, c) = plan_default_route(&[(&p0, &r0), (&own, &r1)])
        .unwrap()
        .unwrap();
    assert_eq!(c.gateways, ips(&["198.51.100.1", "2001:db8:1::1"]));
    assert_eq!(c.families, [true, false]);
    assert_eq!(metric(&c.gateways, 1), None, "first of its family");
}

#[test]
fn the_results_are_patched_as_the_kernel_has_them() {
    let p0 = planned("eth0", None);
    let r0 = result("eth0", "192.0.2.1", "2001:db8::1");
    let r1 = result("net1", "198.51.100.1", "2001:db8:1::1");
    let p1 = planned(
        "net1",
        Some(r#"[{"name":"a","default-route":["198.51.100.1"]}]"#),
    );
    let (_, c) = plan_default_route(&[(&p0, &r0), (&p1, &r1)])
        .unwrap()
        .unwrap();
    let routes = |r: &CniResult| -> Vec<String> {
        r.to_current()
            .routes
            .iter()
            .map(|x| {
                format!(
                    "{} {}",
                    x.dst,
                    x.gw.map(|g| g.to_string()).unwrap_or_default()
                )
            })
            .collect()
    };
    assert_eq!(
        routes(&patched(&r0, &c, false).unwrap()),
        ["::/0 2001:db8::1", "198.51.100.0/24 192.0.2.1"]
    );
    assert_eq!(
        routes(&patched(&r1, &c, true).unwrap()),
        [
            "::/0 2001:db8:1::1",
            "198.51.100.0/24 198.51.100.1",
            "0.0.0.0/0 198.51.100.1"
        ]
    );
    assert_eq!(patched(&r1, &c, true).unwrap().version(), "1.0.0");
}

#[test]
fn an_empty_list_without_a_gateway_is_an_error() {
    let p0 = planned("eth0", None);
    let r0 = result("eth0", "192.0.2.1", "2001:db8::1");
    let p1 = planned("net1", Some(r#"[{"name":"a","default-route":[]}]"#));
    let bare = CniResult::from_value(&json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "sandbox": "/x"}], "ips": [{"interface": 0, "address": "198.51.100.5/24"}]})).unwrap();
    let e = plan_default_route(&[(&p0, &r0), (&p1, &bare)]).unwrap_err();
    assert!(
        e.msg.contains("no gateway of its own") && e.msg.contains("demo/net1"),
        "{}",
        e.msg
    );
}
