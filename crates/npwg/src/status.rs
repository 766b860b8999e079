//! `k8s.v1.cni.cncf.io/network-status` entries (NPWG §5) in the shape Multus writes
//! (bare IPs, `gateway`, `mtu`, `dns` always present, `device-info`), plus what the spec
//! requires and Multus omits: a minimal entry for a result without interfaces, exactly
//! one `default: true`, and `default-route` when the selection asked for it.

use plexus_cni::ipnet::IpNet;
use plexus_cni::result::{Dns, Result100};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One entry of the status annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `ns/name` of the NAD, or the CNI name of a file-based default network.
    pub name: String,
    /// Interface in the pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// Addresses, bare (no prefix length), as Multus writes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Hardware address of `interface`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU of `interface` (Multus key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// True for the cluster-wide default network only; omitted when false, byte for byte
    /// as Multus writes it (consumers written for Multus expect that).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
    /// DNS (always present, `{}` when empty, as Multus writes it).
    pub dns: Dns,
    /// Device information (device-info-spec).
    #[serde(
        rename = "device-info",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub device_info: Option<Value>,
    /// Gateways of the result's default routes (Multus key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<String>,
    /// The spec's key, set when the selection element carried `default-route`.
    #[serde(
        rename = "default-route",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_route: Option<Vec<String>>,
}

/// Inputs of [`entries`] besides the result.
#[derive(Debug, Clone, Default)]
pub struct StatusInput<'a> {
    /// Entry name.
    pub name: &'a str,
    /// This is the cluster-wide default network.
    pub is_default: bool,
    /// `CNI_IFNAME` of the attachment, used when the result names no interface.
    pub ifname: &'a str,
    /// Device information read from the CNI device-info file.
    pub device_info: Option<Value>,
    /// The gateways installed because of `default-route`, when the element asked for it.
    pub default_route: Option<Vec<String>>,
}

fn gateways(r: &Result100) -> Vec<String> {
    r.routes
        .iter()
        .filter(|rt| rt.is_default())
        .filter_map(|rt| rt.gw.map(|g| g.to_string()))
        .collect()
}

fn bare(a: &IpNet) -> String {
    a.addr().to_string()
}

/// The entries of one attachment: one per sandbox interface; a minimal entry when the
/// result has none. For the default network exactly one entry carries `default: true`:
/// the interface owning the first IP with a gateway, else the first entry.
pub fn entries(result: &Result100, input: StatusInput<'_>) -> Vec<NetworkStatus> {
    let dns = result.dns.clone();
    let gw = gateways(result);
    let sandboxes: Vec<usize> = (0..result.interfaces.len())
        .filter(|i| !result.interfaces[*i].sandbox.is_empty())
        .collect();
    let mut out: Vec<NetworkStatus> = Vec::new();
    let base = |interface: String, ips: Vec<String>, mac: String, mtu| NetworkStatus {
        name: input.name.to_string(),
        interface,
        ips,
        mac,
        mtu,
        default: false,
        dns: dns.clone(),
        device_info: input.device_info.clone(),
        gateway: gw.clone(),
        default_route: input.default_route.clone(),
    };
    if sandboxes.is_empty() {
        // NPWG §5.1.1: a result without sandbox interfaces still gets a (minimal) entry.
        let ips = result.ips.iter().map(|ip| bare(&ip.address)).collect();
        out.push(base(input.ifname.to_string(), ips, String::new(), None));
    } else {
        for (n, &idx) in sandboxes.iter().enumerate() {
            let iface = &result.interfaces[idx];
            let ips = result
                .ips
                .iter()
                .filter(|ip| match ip.interface {
                    Some(i) if i >= 0 && (i as usize) < result.interfaces.len() => {
                        i as usize == idx
                    }
                    // Addresses that name no (valid) interface belong to the first entry.
                    _ => n == 0,
                })
                .map(|ip| bare(&ip.address))
                .collect();
            out.push(base(iface.name.clone(), ips, iface.mac.clone(), iface.mtu));
        }
    }
    if input.is_default {
        let owner = result
            .ips
            .iter()
            .find(|ip| ip.gateway.is_some())
            .and_then(|ip| ip.interface)
            .and_then(|i| result.interfaces.get(i.max(0) as usize))
            .and_then(|iface| out.iter().position(|e| e.interface == iface.name))
            .unwrap_or(0);
        out[owner].default = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_cni::CniResult;
    use serde_json::json;

    fn r(v: Value) -> Result100 {
        CniResult::from_json(v.to_string().as_bytes())
            .unwrap()
            .to_current()
    }

    #[test]
    fn bridge_like_result_gives_one_entry_for_the_sandbox_interface() {
        let res = r(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "br0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": "veth1"}, {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p"}],
            "ips": [{"interface": 2, "address": "192.0.2.5/24", "gateway": "192.0.2.1"}, {"interface": 2, "address": "2001:db8::5/64"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}, {"dst": "198.51.100.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"]}}));
        let e = entries(
            &res,
            StatusInput {
                name: "cbr0",
                is_default: true,
                ifname: "eth0",
                ..Default::default()
            },
        );
        assert_eq!(e.len(), 1);
        assert_eq!(
            serde_json::to_value(&e[0]).unwrap(),
            json!({"name": "cbr0", "interface": "eth0", "ips": ["192.0.2.5", "2001:db8::5"], "mac": "02:00:00:00:00:01",
                   "default": true, "dns": {"nameservers": ["192.0.2.53"]}, "gateway": ["192.0.2.1"]})
        );
    }

    #[test]
    fn result_without_interfaces_gets_a_minimal_entry() {
        let res = r(json!({"cniVersion": "0.2.0", "ip4": {"ip": "203.0.113.9/24"}}));
        let e = entries(
            &res,
            StatusInput {
                name: "ns/ipam-only",
                ifname: "net1",
                ..Default::default()
            },
        );
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!([{"name": "ns/ipam-only", "interface": "net1", "ips": ["203.0.113.9"], "dns": {}}])
        );
    }

    #[test]
    fn several_sandbox_interfaces_one_default() {
        let res = r(json!({"cniVersion": "1.1.0",
            "interfaces": [{"name": "a", "sandbox": "/p"}, {"name": "b", "sandbox": "/p", "mtu": 9000}],
            "ips": [{"interface": 0, "address": "192.0.2.1/24"}, {"interface": 1, "address": "198.51.100.1/24", "gateway": "198.51.100.254"}, {"address": "203.0.113.1/24"}]}));
        let e = entries(
            &res,
            StatusInput {
                name: "ns/n",
                is_default: true,
                ifname: "eth0",
                default_route: Some(vec!["198.51.100.254".into()]),
                ..Default::default()
            },
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].ips, ["192.0.2.1", "203.0.113.1"]);
        assert_eq!(e[1].ips, ["198.51.100.1"]);
        assert_eq!(e[1].mtu, Some(9000));
        assert_eq!((e[0].default, e[1].default), (false, true));
        assert_eq!(
            serde_json::to_value(&e[1]).unwrap()["default-route"],
            json!(["198.51.100.254"])
        );
    }
}
