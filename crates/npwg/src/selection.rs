//! The network selection annotation `k8s.v1.cni.cncf.io/networks` (NPWG §4), both the
//! comma form (with Multus's `ns/name@ifname`) and the JSON form with every key.
//!
//! Plexus decision D1: an invalid annotation is never ignored: parsing fails with an
//! error naming the annotation, the element and the field.

use crate::names::{is_dns1123_label, is_dns1123_subdomain, ObjectRef};
use plexus_cni::validate;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// Largest annotation accepted (Kubernetes caps all annotations at 256 KiB together).
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// Most elements one annotation may hold: each is a kernel interface in the pod.
pub const MAX_ELEMENTS: usize = 128;

/// Why an annotation is invalid, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe(&format!("annotation {:?}", self.annotation)))]
pub struct SelectionError {
    /// The annotation's key.
    pub annotation: String,
    /// `element N ("ns/name")` and `field "x"`, when known.
    pub where_: Option<String>,
    /// What is wrong.
    pub msg: String,
}

impl SelectionError {
    /// The error with `source` naming what was set (the annotation, or what stands for
    /// it where the selection does not come from a pod's annotations).
    pub fn describe(&self, source: &str) -> String {
        match &self.where_ {
            Some(w) => format!("{source}: {w}: {}", self.msg),
            None => format!("{source}: {}", self.msg),
        }
    }
}

/// One requested port mapping, validated (`runtimeConfig.portMappings` shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host port, 1-65535.
    pub host_port: u16,
    /// Container port, 1-65535.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lower case, default `tcp`).
    pub protocol: String,
    /// Host IP, if any.
    pub host_ip: Option<IpAddr>,
}

/// Requested bandwidth limits (bits/s and bits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// Ingress rate.
    pub ingress_rate: Option<u64>,
    /// Ingress burst.
    pub ingress_burst: Option<u64>,
    /// Egress rate.
    pub egress_rate: Option<u64>,
    /// Egress burst.
    pub egress_burst: Option<u64>,
}

/// One validated element: a network to attach and what the pod asks of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSelection {
    /// The NAD.
    pub network: ObjectRef,
    /// Requested addresses, as written (IP or CIDR).
    pub ips: Vec<String>,
    /// Requested MAC.
    pub mac: Option<String>,
    /// Requested InfiniBand GUID.
    pub infiniband_guid: Option<String>,
    /// Requested interface name.
    pub interface: Option<String>,
    /// Requested port mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Requested bandwidth.
    pub bandwidth: Option<Bandwidth>,
    /// Explicit device (Multus extension).
    pub device_id: Option<String>,
    /// Merged into the delegate configuration's `args.cni`.
    pub cni_args: Option<Map<String, Value>>,
    /// Requested default-route gateways; `Some(vec![])` means this attachment's own gateways.
    pub default_route: Option<Vec<IpAddr>>,
    /// IPAMClaim name (NPWG v1.3).
    pub ipam_claim_reference: Option<String>,
}

impl NetworkSelection {
    /// A bare selection of `network`.
    pub fn new(network: ObjectRef) -> NetworkSelection {
        NetworkSelection {
            network,
            ips: vec![],
            mac: None,
            infiniband_guid: None,
            interface: None,
            port_mappings: vec![],
            bandwidth: None,
            device_id: None,
            cni_args: None,
            default_route: None,
            ipam_claim_reference: None,
        }
    }

    /// The element in the annotation's JSON form, every field it sets and no other:
    /// parsing it again gives the same selection. What an attachment was made from is
    /// kept in this form, so that a later edit of the element can be told apart.
    pub fn to_element(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.network.name));
        m.insert("namespace".into(), json!(self.network.namespace));
        let mut caps = self.capability_requests();
        for (cap, key) in [
            ("ips", "ips"),
            ("mac", "mac"),
            ("infinibandGUID", "infiniband-guid"),
            ("portMappings", "portMappings"),
            ("bandwidth", "bandwidth"),
            ("deviceID", "deviceID"),
        ] {
            if let Some(v) = caps.remove(cap) {
                m.insert(key.into(), v);
            }
        }
        if let Some(i) = &self.interface {
            m.insert("interface".into(), json!(i));
        }
        if let Some(a) = &self.cni_args {
            m.insert("cni-args".into(), Value::Object(a.clone()));
        }
        if let Some(gws) = &self.default_route {
            let gws: Vec<String> = gws.iter().map(IpAddr::to_string).collect();
            m.insert("default-route".into(), json!(gws));
        }
        if let Some(c) = &self.ipam_claim_reference {
            m.insert("ipam-claim-reference".into(), json!(c));
        }
        Value::Object(m)
    }

    /// The capability arguments this element requests, keyed by CNI capability name.
    pub fn capability_requests(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if !self.ips.is_empty() {
            m.insert("ips".into(), json!(self.ips));
        }
        if let Some(mac) = &self.mac {
            m.insert("mac".into(), json!(mac));
        }
        if let Some(guid) = &self.infiniband_guid {
            m.insert("infinibandGUID".into(), json!(guid));
        }
        if !self.port_mappings.is_empty() {
            let pms: Vec<Value> = self
                .port_mappings
                .iter()
                .map(|p| {
                    let mut v = json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol});
                    if let Some(ip) = p.host_ip {
                        v["hostIP"] = json!(ip.to_string());
                    }
                    v
                })
                .collect();
            m.insert("portMappings".into(), Value::Array(pms));
        }
        if let Some(b) = &self.bandwidth {
            let mut v = Map::new();
            for (k, val) in [
                ("ingressRate", b.ingress_rate),
                ("ingressBurst", b.ingress_burst),
                ("egressRate", b.egress_rate),
                ("egressBurst", b.egress_burst),
            ] {
                if let Some(x) = val {
                    v.insert(k.into(), json!(x));
                }
            }
            m.insert("bandwidth".into(), Value::Object(v));
        }
        if let Some(d) = &self.device_id {
            m.insert("deviceID".into(), json!(d));
        }
        m
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortMapping {
    #[serde(rename = "hostPort")]
    host_port: Option<i64>,
    #[serde(rename = "containerPort")]
    container_port: Option<i64>,
    protocol: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBandwidth {
    #[serde(rename = "ingressRate")]
    ingress_rate: Option<i64>,
    #[serde(rename = "ingressBurst")]
    ingress_burst: Option<i64>,
    #[serde(rename = "egressRate")]
    egress_rate: Option<i64>,
    #[serde(rename = "egressBurst")]
    egress_burst: Option<i64>,
}

/// The JSON element as written; unknown (reverse-DNS) keys are ignored, as the spec allows.
#[derive(Deserialize)]
struct RawElement {
    name: Option<String>,
    namespace: Option<String>,
    ips: Option<Vec<String>>,
    mac: Option<String>,
    #[serde(rename = "infiniband-guid")]
    infiniband_guid: Option<String>,
    interface: Option<String>,
    #[serde(rename = "interfaceRequest")]
    interface_request: Option<String>,
    #[serde(rename = "portMappings")]
    port_mappings: Option<Vec<RawPortMapping>>,
    bandwidth: Option<RawBandwidth>,
    #[serde(rename = "deviceID")]
    device_id: Option<String>,
    #[serde(rename = "cni-args")]
    cni_args: Option<Map<String, Value>>,
    #[serde(rename = "default-route")]
    default_route: Option<Vec<String>>,
    #[serde(rename = "ipam-claim-reference")]
    ipam_claim_reference: Option<String>,
}

struct Ctx<'a> {
    annotation: &'a str,
}

impl Ctx<'_> {
    fn err(&self, where_: Option<String>, msg: impl Into<String>) -> SelectionError {
        SelectionError {
            annotation: self.annotation.to_string(),
            where_,
            msg: msg.into(),
        }
    }
}

/// Parses the selection annotation of a pod in `pod_namespace`. An empty value selects nothing.
pub fn parse_networks(
    value: &str,
    pod_namespace: &str,
) -> Result<Vec<NetworkSelection>, SelectionError> {
    parse(crate::NETWORKS_ANNOTATION, value, pod_namespace)
}

/// Parses `v1.multus-cni.io/default-network`: exactly one element, unqualified names in `default_namespace`.
pub fn parse_default_network(
    value: &str,
    default_namespace: &str,
) -> Result<NetworkSelection, SelectionError> {
    let ann = crate::DEFAULT_NETWORK_ANNOTATION;
    let mut v = parse(ann, value, default_namespace)?;
    if v.len() != 1 {
        return Err(Ctx { annotation: ann }.err(
            None,
            format!("must name exactly one network, it names {}", v.len()),
        ));
    }
    Ok(v.remove(0))
}

/// Parses any annotation written in the selection format.
pub fn parse(
    annotation: &str,
    value: &str,
    pod_namespace: &str,
) -> Result<Vec<NetworkSelection>, SelectionError> {
    let cx = Ctx { annotation };
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(cx.err(
            None,
            format!(
                "is {} bytes long, more than the {MAX_ANNOTATION_BYTES} accepted",
                value.len()
            ),
        ));
    }
    let value = value.trim();
    if value.is_empty() {
        return Ok(vec![]);
    }
    let elements = if value.contains(['[', '{', '"']) {
        parse_json(&cx, value, pod_namespace)?
    } else {
        value
            .split(',')
            .enumerate()
            .map(|(i, item)| parse_comma_item(&cx, i, item.trim(), pod_namespace))
            .collect::<Result<Vec<_>, _>>()?
    };
    if elements.len() > MAX_ELEMENTS {
        return Err(cx.err(
            None,
            format!(
                "selects {} networks, more than the {MAX_ELEMENTS} accepted",
                elements.len()
            ),
        ));
    }
    check_across(&cx, &elements)?;
    Ok(elements)
}

fn label(i: usize, name: &str) -> String {
    format!("element {i} ({name:?})")
}

fn parse_comma_item(
    cx: &Ctx,
    i: usize,
    item: &str,
    pod_ns: &str,
) -> Result<NetworkSelection, SelectionError> {
    let at = || Some(label(i, item));
    if item.is_empty() {
        return Err(cx.err(
            Some(format!("element {i}")),
            "is empty (two commas in a row, or a trailing comma)",
        ));
    }
    let (ns, rest) = match item.split_once('/') {
        Some((ns, rest)) => (ns, rest),
        None => (pod_ns, item),
    };
    if rest.contains('/') {
        return Err(cx.err(
            at(),
            "has more than one '/'; expected [namespace/]name[@interface]",
        ));
    }
    let (name, ifname) = match rest.split_once('@') {
        Some((n, i)) => (n, Some(i)),
        None => (rest, None),
    };
    if ns.contains('@') || ifname.is_some_and(|i| i.contains('@')) {
        return Err(cx.err(
            at(),
            "has a misplaced or repeated '@'; expected [namespace/]name[@interface]",
        ));
    }
    let mut sel = NetworkSelection::new(ObjectRef::new(ns, name));
    check_ref(cx, i, item, &sel.network)?;
    if let Some(ifname) = ifname {
        validate::ifname(ifname).map_err(|e| cx.err(at(), e))?;
        sel.interface = Some(ifname.to_string());
    }
    Ok(sel)
}

fn check_ref(cx: &Ctx, i: usize, shown: &str, r: &ObjectRef) -> Result<(), SelectionError> {
    if !is_dns1123_subdomain(&r.name) {
        return Err(cx.err(
            Some(label(i, shown)),
            format!(
                "network name {:?} is not a valid Kubernetes object name (DNS-1123)",
                r.name
            ),
        ));
    }
    if !is_dns1123_label(&r.namespace) {
        return Err(cx.err(
            Some(label(i, shown)),
            format!(
                "namespace {:?} is not a valid namespace name (DNS-1123 label)",
                r.namespace
            ),
        ));
    }
    Ok(())
}

fn parse_json(
    cx: &Ctx,
    value: &str,
    pod_ns: &str,
) -> Result<Vec<NetworkSelection>, SelectionError> {
    let items: Vec<Value> = serde_json::from_str(value).map_err(|e| {
        cx.err(
            None,
            format!("is neither a comma-separated list nor a JSON list of objects: {e}"),
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| json_element(cx, i, v, pod_ns))
        .collect()
}

// Long on purpose: one field of the element after another, each with its own check.
fn json_element(
    cx: &Ctx,
    i: usize,
    v: Value,
    pod_ns: &str,
) -> Result<NetworkSelection, SelectionError> {
    if !v.is_object() {
        return Err(cx.err(
            Some(format!("element {i}")),
            format!("is not a JSON object: {v}"),
        ));
    }
    let raw: RawElement = serde_json::from_value(v).map_err(|e| {
        cx.err(
            Some(format!("element {i}")),
            format!("has a field of the wrong type: {e}"),
        )
    })?;
    let name = raw.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(cx.err(Some(format!("element {i}")), "has no \"name\""));
    }
    let ns = raw
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| pod_ns.to_string());
    let network = ObjectRef::new(ns, name.clone());
    let shown = network.to_string();
    check_ref(cx, i, &shown, &network)?;
    let field = |f: &str| Some(format!("{}: field {f:?}", label(i, &shown)));
    let mut sel = NetworkSelection::new(network);
    if let Some(ips) = raw.ips {
        if ips.is_empty() {
            return Err(cx.err(field("ips"), "is empty; it must list at least one address"));
        }
        for ip in &ips {
            if ip.parse::<IpAddr>().is_err() && ip.parse::<plexus_cni::ipnet::IpNet>().is_err() {
                return Err(cx.err(field("ips"), format!("{ip:?} is not an IP address or CIDR")));
            }
        }
        sel.ips = ips;
    }
    if let Some(mac) = raw.mac {
        if !is_hw_addr(&mac, 6) {
            return Err(cx.err(
                field("mac"),
                format!("{mac:?} is not a 6-byte Ethernet MAC address"),
            ));
        }
        sel.mac = Some(mac);
    }
    if let Some(guid) = raw.infiniband_guid {
        if !is_hw_addr(&guid, 8) {
            return Err(cx.err(
                field("infiniband-guid"),
                format!("{guid:?} is not an 8-byte InfiniBand GUID"),
            ));
        }
        sel.infiniband_guid = Some(guid);
    }
    if let Some(ifname) = raw.interface.or(raw.interface_request) {
        validate::ifname(&ifname).map_err(|e| cx.err(field("interface"), e))?;
        sel.interface = Some(ifname);
    }
    if let Some(pms) = raw.port_mappings {
        sel.port_mappings = port_mappings(cx, field("portMappings"), pms)?;
    }
    if let Some(b) = raw.bandwidth {
        sel.bandwidth = Some(bandwidth(cx, field("bandwidth"), b)?);
    }
    sel.device_id = raw.device_id;
    sel.cni_args = raw.cni_args;
    if let Some(gws) = raw.default_route {
        let parsed = gws
            .iter()
            .map(|g| {
                g.parse::<IpAddr>().map_err(|_| {
                    cx.err(
                        field("default-route"),
                        format!("{g:?} is not a gateway IP address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sel.default_route = Some(parsed);
    }
    if let Some(claim) = raw.ipam_claim_reference {
        if !sel.ips.is_empty() {
            return Err(cx.err(
                field("ipam-claim-reference"),
                "cannot be used together with \"ips\"",
            ));
        }
        if !is_dns1123_subdomain(&claim) {
            return Err(cx.err(
                field("ipam-claim-reference"),
                format!("{claim:?} is not a valid IPAMClaim name"),
            ));
        }
        sel.ipam_claim_reference = Some(claim);
    }
    Ok(sel)
}

fn port(
    cx: &Ctx,
    at: &Option<String>,
    j: usize,
    key: &str,
    v: Option<i64>,
) -> Result<u16, SelectionError> {
    match v {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => Err(cx.err(
            at.clone(),
            format!("entry {j}: {key} {p} is outside 1-65535"),
        )),
        None => Err(cx.err(at.clone(), format!("entry {j}: {key} is required"))),
    }
}

fn port_mappings(
    cx: &Ctx,
    at: Option<String>,
    pms: Vec<RawPortMapping>,
) -> Result<Vec<PortMapping>, SelectionError> {
    if pms.is_empty() {
        return Err(cx.err(at, "is empty; it must hold at least one mapping"));
    }
    pms.into_iter()
        .enumerate()
        .map(|(j, p)| {
            let protocol = p
                .protocol
                .unwrap_or_else(|| "tcp".into())
                .to_ascii_lowercase();
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(cx.err(
                    at.clone(),
                    format!("entry {j}: protocol {protocol:?} is not TCP, UDP or SCTP"),
                ));
            }
            let host_ip = match p.host_ip.filter(|s| !s.is_empty()) {
                Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                    cx.err(
                        at.clone(),
                        format!("entry {j}: hostIP {s:?} is not an IP address"),
                    )
                })?),
                None => None,
            };
            Ok(PortMapping {
                host_port: port(cx, &at, j, "hostPort", p.host_port)?,
                container_port: port(cx, &at, j, "containerPort", p.container_port)?,
                protocol,
                host_ip,
            })
        })
        .collect()
}

fn bandwidth(cx: &Ctx, at: Option<String>, b: RawBandwidth) -> Result<Bandwidth, SelectionError> {
    let positive = |k: &str, v: Option<i64>| match v {
        Some(x) if x > 0 => Ok(Some(x as u64)),
        Some(x) => Err(cx.err(
            at.clone(),
            format!("{k} must be a positive number, got {x}"),
        )),
        None => Ok(None),
    };
    let out = Bandwidth {
        ingress_rate: positive("ingressRate", b.ingress_rate)?,
        ingress_burst: positive("ingressBurst", b.ingress_burst)?,
        egress_rate: positive("egressRate", b.egress_rate)?,
        egress_burst: positive("egressBurst", b.egress_burst)?,
    };
    if out.ingress_burst.is_some() && out.ingress_rate.is_none() {
        return Err(cx.err(at, "ingressBurst requires ingressRate"));
    }
    if out.egress_burst.is_some() && out.egress_rate.is_none() {
        return Err(cx.err(at, "egressBurst requires egressRate"));
    }
    if out == Bandwidth::default() {
        return Err(cx.err(at, "sets no rate"));
    }
    Ok(out)
}

fn is_hw_addr(s: &str, bytes: usize) -> bool {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == bytes
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_across(cx: &Ctx, elements: &[NetworkSelection]) -> Result<(), SelectionError> {
    let with_route: Vec<usize> = elements
        .iter()
        .enumerate()
        .filter(|(_, e)| e.default_route.is_some())
        .map(|(i, _)| i)
        .collect();
    if with_route.len() > 1 {
        return Err(cx.err(
            None,
            format!(
                "\"default-route\" may be set on one element only; elements {with_route:?} set it"
            ),
        ));
    }
    for (i, a) in elements.iter().enumerate() {
        let Some(ifa) = &a.interface else { continue };
        if let Some((j, _)) = elements
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, b)| b.interface.as_ref() == Some(ifa))
        {
            return Err(cx.err(
                None,
                format!("elements {i} and {j} both request interface {ifa:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
