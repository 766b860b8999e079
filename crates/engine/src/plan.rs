//! From (configuration, pod, NADs) the ordered list of attachments: which network,
//! which interface name, which configuration bytes, which capability arguments and
//! `CNI_ARGS`. The cluster default network comes first (NPWG §6.2).

use crate::cluster::PodInfo;
use crate::config::NetConf;
use crate::devices::Device;
use crate::resolve::{Resolved, Resolver};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::{CniError, Result};
use plexus_npwg::selection::{self, NetworkSelection};
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// Capabilities a selection element may request that must be declared by a plugin of
/// the network, or the attachment fails before anything is attached (D2).
const MUST_BE_DECLARED: &[&str] = &["portMappings", "bandwidth", "infinibandGUID"];

/// One attachment to make.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Name in network-status.
    pub name: String,
    /// Interface in the pod.
    pub ifname: String,
    /// The configuration list as the delegates get it.
    pub list: NetworkConfigList,
    /// Capability arguments (become `runtimeConfig` where declared).
    pub capability_args: Map<String, Value>,
    /// `CNI_ARGS` for the delegates.
    pub cni_args: CniArgs,
    /// The cluster default network.
    pub is_default: bool,
    /// The selection element it came from.
    pub selection: Option<NetworkSelection>,
    /// The CNI device-info file, when a plugin declares `CNIDeviceInfoFile` or the
    /// network has a device.
    pub device_info_file: Option<PathBuf>,
    /// The device the kubelet allocated for it (a NAD with `resourceName`).
    pub device: Option<Device>,
    /// The auxiliary chain (`auxiliaryCNIChainName`): it continues from an empty result
    /// on the default network's interface and has no status entry of its own.
    pub auxiliary: bool,
}

/// What planning needs of the request.
pub struct PlanInput<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_IFNAME` (the default network's interface).
    pub ifname: &'a str,
    /// Incoming `CNI_ARGS`.
    pub args: &'a CniArgs,
    /// The pod, when known.
    pub pod: Option<&'a PodInfo>,
}

fn selection_error(e: selection::SelectionError, pod: Option<&PodInfo>) -> CniError {
    CniError::invalid_config(match pod {
        Some(p) => format!(
            "pod \"{}\": {}",
            p.key(),
            e.describe(&p.source_of(&e.annotation))
        ),
        None => e.to_string(),
    })
}

/// The networks of the pod, in order, with their selection elements.
pub fn networks(
    r: &Resolver,
    input: &PlanInput,
) -> Result<Vec<(Resolved, Option<NetworkSelection>)>> {
    let mut out = node_networks(r, input.pod)?;
    if let Some(pod) = input.pod {
        out.extend(selected_networks(r, pod)?);
    }
    Ok(out)
}

/// The default network (or the pod's `default-network` NAD), the other inline
/// delegates, and `defaultNetworks` unless the pod is in a system namespace.
fn node_networks(
    r: &Resolver,
    pod: Option<&PodInfo>,
) -> Result<Vec<(Resolved, Option<NetworkSelection>)>> {
    let conf = r.conf;
    let mut out = Vec::new();
    let default_override = pod
        .and_then(|p| p.annotations.get(DEFAULT_NETWORK_ANNOTATION))
        .filter(|v| !v.trim().is_empty());
    match default_override {
        Some(v) => {
            let sel = selection::parse_default_network(v, &conf.multus_namespace)
                .map_err(|e| selection_error(e, pod))?;
            if let Some(p) = pod {
                check_isolation(conf, p, DEFAULT_NETWORK_ANNOTATION, &sel)?;
            }
            out.push((r.nad(&sel.network, pod)?, None));
        }
        None => out.push((r.cluster_network()?, None)),
    }
    if conf
        .cluster_network
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        for i in 1..conf.delegates.len() {
            if let Some(d) = r.delegate(i) {
                out.push((d?, None));
            }
        }
    }
    if pod.is_some_and(|p| !conf.system_namespaces.contains(&p.namespace)) {
        for n in &conf.default_networks {
            out.push((r.named(n).map_err(|e| e.context("defaultNetworks"))?, None));
        }
    }
    Ok(out)
}

/// The networks of the selection annotation, each resolved; an invalid annotation is
/// an error and a warning event (D1), a reference isolation forbids an error.
fn selected_networks(
    r: &Resolver,
    pod: &PodInfo,
) -> Result<Vec<(Resolved, Option<NetworkSelection>)>> {
    let selections = selection(r, pod)?;
    if let (Some(c), true) = (r.cluster, selections.len() > 1) {
        let refs: Vec<(String, String)> = selections
            .iter()
            .map(|s| (s.network.namespace.clone(), s.network.name.clone()))
            .collect();
        c.prefetch_nads(&refs);
    }
    selections
        .into_iter()
        .map(|sel| Ok((r.nad(&sel.network, Some(pod))?, Some(sel))))
        .collect()
}

/// The elements of the selection annotation, parsed and checked against
/// `namespaceIsolation`, not resolved.
pub(crate) fn selection(r: &Resolver, pod: &PodInfo) -> Result<Vec<NetworkSelection>> {
    let value = pod
        .annotations
        .get(NETWORKS_ANNOTATION)
        .map(String::as_str)
        .unwrap_or_default();
    let selections = selection::parse_networks(value, &pod.namespace).map_err(|e| {
        // D1: an invalid selection is never ignored; the pod shows why it does not start.
        if let Some(c) = r.cluster {
            c.event(
                pod,
                crate::cluster::EventType::Warning,
                "InvalidNetworkSelection",
                &e.describe(&pod.source_of(&e.annotation)),
            );
        }
        selection_error(e, Some(pod))
    })?;
    for sel in &selections {
        check_isolation(r.conf, pod, NETWORKS_ANNOTATION, sel)?;
    }
    Ok(selections)
}

/// The name in network-status of the pod's default network: its
/// `v1.multus-cni.io/default-network` NAD, else the cluster network.
pub(crate) fn default_network_name(r: &Resolver, pod: &PodInfo) -> Result<String> {
    match pod
        .annotations
        .get(DEFAULT_NETWORK_ANNOTATION)
        .filter(|v| !v.trim().is_empty())
    {
        Some(v) => selection::parse_default_network(v, &r.conf.multus_namespace)
            .map(|s| s.network.to_string())
            .map_err(|e| selection_error(e, Some(pod))),
        None => Ok(r.cluster_network()?.name),
    }
}

/// `namespaceIsolation`: whatever annotation names it, a pod may use a NAD of its own
/// namespace or of a global one only (the networks of the node's configuration,
/// `clusterNetwork` and `defaultNetworks`, are the administrator's, not the pod's).
fn check_isolation(
    conf: &NetConf,
    pod: &PodInfo,
    annotation: &str,
    sel: &NetworkSelection,
) -> Result<()> {
    let ns = &sel.network.namespace;
    if !plexus_npwg::names::isolation_allows(
        conf.namespace_isolation,
        &pod.namespace,
        ns,
        &conf.global_namespaces(),
    ) {
        return Err(CniError::invalid_config(format!(
            "pod \"{}\": namespace isolation enabled, {} violates permission: pod is in namespace {} but {} refers to target namespace {ns} (network \"{}\")",
            pod.key(),
            match pod.origin {
                crate::cluster::PodOrigin::Api => "annotation",
                crate::cluster::PodOrigin::CniArgs => "CNI_ARGS",
            },
            pod.namespace,
            pod.source_of(annotation),
            sel.network
        )));
    }
    Ok(())
}

/// Builds the attachments from the networks; `devices` holds the device of each
/// network, in order (empty when none has one).
pub fn attachments(
    r: &Resolver,
    input: &PlanInput,
    nets: Vec<(Resolved, Option<NetworkSelection>)>,
    devices: Vec<Option<Device>>,
    runtime_config: &Map<String, Value>,
) -> Result<Vec<Planned>> {
    let (base_args, pod_args) = request_args(input.args);
    let mut out: Vec<Planned> = Vec::with_capacity(nets.len());
    let mut devices = devices.into_iter();
    for (i, (resolved, sel)) in nets.into_iter().enumerate() {
        let device = devices.next().flatten();
        let ifname = interface_name(i, input.ifname, sel.as_ref());
        if let Some(prev) = out.iter().find(|p| p.ifname == ifname) {
            return Err(CniError::invalid_config(format!(
                "network \"{}\" would use interface {ifname:?}, which network \"{}\" already uses",
                resolved.name, prev.name
            )));
        }
        // D3: the runtime's runtimeConfig is the default network's only.
        let runtime = (i == 0).then_some(runtime_config);
        let args = if i == 0 { &base_args } else { &pod_args };
        out.push(attachment(
            r, input, resolved, sel, ifname, args, runtime, device,
        )?);
    }
    if let Some(aux) = auxiliary_chain(r, input, &out)? {
        out.push(aux);
    }
    Ok(out)
}

/// The `CNI_ARGS` of the default network (the runtime's, without Plexus's own keys)
/// and of the others: like its runtimeConfig (D3), the runtime's own CNI_ARGS
/// (podman's IP= and MAC=, anything else it passes) are the default network's; the
/// other networks get the pod's identity and what their own selection element asks for.
fn request_args(args: &CniArgs) -> (CniArgs, CniArgs) {
    let mut base_args = CniArgs(
        args.0
            .iter()
            .filter(|(k, _)| !k.starts_with("PLEXUS_"))
            .cloned()
            .collect(),
    );
    if base_args.get("IgnoreUnknown").is_none() {
        base_args.0.insert(0, ("IgnoreUnknown".into(), "1".into()));
    }
    let pod_args = CniArgs(
        base_args
            .0
            .iter()
            .filter(|(k, _)| k == "IgnoreUnknown" || k.starts_with("K8S_"))
            .cloned()
            .collect(),
    );
    (base_args, pod_args)
}

/// One selected network attached to a running pod (hot-plug) on `ifname`, planned as
/// an ADD plans it: the element's requests, D2's capability check, the pod's
/// `CNI_ARGS` (`input.args` are the default network's, as the runtime gave them).
pub(crate) fn selected_attachment(
    r: &Resolver,
    input: &PlanInput,
    resolved: Resolved,
    sel: NetworkSelection,
    ifname: String,
    device: Option<Device>,
) -> Result<Planned> {
    let (_, pod_args) = request_args(input.args);
    attachment(
        r,
        input,
        resolved,
        Some(sel),
        ifname,
        &pod_args,
        None,
        device,
    )
}

/// `CNI_IFNAME` for the default network (index 0), the element's `interface`, else
/// `net<index>` as Multus numbers them.
fn interface_name(i: usize, default: &str, sel: Option<&NetworkSelection>) -> String {
    match (i, sel.and_then(|s| s.interface.as_ref())) {
        (0, _) => default.to_string(),
        (_, Some(n)) => n.clone(),
        _ => format!("net{i}"),
    }
}

/// One attachment: the element's requests applied to the configuration (D2: the
/// capabilities no plugin declares refused), the capability arguments (the runtime's
/// for the default network, D3) and `CNI_ARGS`, the device, the device-info file.
/// `runtime_config` is given for the default network only.
#[allow(clippy::too_many_arguments)]
fn attachment(
    r: &Resolver,
    input: &PlanInput,
    resolved: Resolved,
    sel: Option<NetworkSelection>,
    ifname: String,
    base_args: &CniArgs,
    runtime_config: Option<&Map<String, Value>>,
    device: Option<Device>,
) -> Result<Planned> {
    let is_default = runtime_config.is_some();
    let mut capability_args = runtime_config.cloned().unwrap_or_default();
    let mut list = resolved.list;
    let mut cni_args = base_args.clone();
    if let Some(s) = &sel {
        apply_selection(&mut list, s);
        capability_args = s.capability_requests();
        for cap in MUST_BE_DECLARED {
            if capability_args.contains_key(*cap)
                && !list.plugins.iter().any(|p| p.has_capability(cap))
            {
                return Err(CniError::invalid_config(format!(
                    "network \"{}\": the pod requests {cap:?} but no plugin of the network declares capability {cap:?}",
                    resolved.name
                )));
            }
        }
        // The legacy way Multus passes them too, for plugins that read CNI_ARGS.
        if !s.ips.is_empty() {
            cni_args.set("IP", s.ips.join(","));
        }
        if let Some(mac) = &s.mac {
            cni_args.set("MAC", mac.clone());
        }
    }
    if let Some(d) = &device {
        // As Multus: in every plugin's configuration (sriov-cni, host-device read
        // `deviceID`; older plugins `pciBusID`), and as `runtimeConfig.deviceID` for the
        // plugins that declare the capability.
        set_device_id(&mut list, &d.device_id);
        capability_args.insert("deviceID".into(), json!(d.device_id));
    }
    // device-info §4.2 and §5.1: a file for every network with a device, and for every
    // network a plugin of which declares CNIDeviceInfoFile.
    let device_info_file = (device.is_some()
        || list
            .plugins
            .iter()
            .any(|p| p.has_capability("CNIDeviceInfoFile")))
    .then(|| {
        r.conf.plexus.device_info_dir.join(format!(
            "{}-{}_{}",
            resolved.name.replace('/', "-"),
            input.container_id,
            ifname
        ))
    });
    if let Some(f) = &device_info_file {
        capability_args.insert("CNIDeviceInfoFile".into(), json!(f));
    }
    Ok(Planned {
        is_default,
        name: resolved.name,
        ifname,
        list,
        capability_args,
        cni_args,
        selection: sel,
        device_info_file,
        device,
        auxiliary: false,
    })
}

/// `auxiliaryCNIChainName`: the plugins in `<dir of clusterNetwork>/<name>/*.conf`,
/// run after every network on the default network's interface (Multus runs them
/// behind its `passthru` plugin). Nothing when the directory holds no plugin.
fn auxiliary_chain(
    r: &Resolver,
    input: &PlanInput,
    planned: &[Planned],
) -> Result<Option<Planned>> {
    let name = &r.conf.auxiliary_cni_chain_name;
    if name.is_empty() {
        return Ok(None);
    }
    let cn = r.conf.cluster_network.as_deref().unwrap_or_default();
    if !cn.starts_with('/') {
        return Err(CniError::invalid_config(format!(
            "\"auxiliaryCNIChainName\" {name:?} needs \"clusterNetwork\" to be a file or directory path, it is {cn:?}"
        )));
    }
    let p = std::path::Path::new(cn);
    let dir = if p.is_dir() {
        p
    } else {
        p.parent().unwrap_or(p)
    };
    let plugins = plexus_cni::loader::sibling_plugins(dir, name)?;
    if plugins.is_empty() {
        return Ok(None);
    }
    let version = planned
        .first()
        .map(|m| m.list.cni_version.clone())
        .unwrap_or_else(|| "1.0.0".into());
    let list = NetworkConfigList::from_value(json!({
        "cniVersion": version, "name": name,
        "plugins": plugins.iter().map(|p| p.to_value()).collect::<Vec<_>>()
    }))?;
    let base = planned
        .first()
        .map(|m| m.cni_args.clone())
        .unwrap_or_default();
    Ok(Some(Planned {
        name: name.clone(),
        ifname: input.ifname.to_string(),
        list,
        capability_args: Map::new(),
        cni_args: base,
        is_default: false,
        selection: None,
        device_info_file: None,
        device: None,
        auxiliary: true,
    }))
}

/// Config mutations a selection element asks for: `cni-args` merged into every
/// plugin's `args.cni` (the annotation wins), `deviceID`/`pciBusID`, and
/// `ipam-claim-reference` passed on in `args.cni`.
fn apply_selection(list: &mut NetworkConfigList, s: &NetworkSelection) {
    let mut extra = s.cni_args.clone().unwrap_or_default();
    if let Some(claim) = &s.ipam_claim_reference {
        extra.insert("ipam-claim-reference".into(), json!(claim));
    }
    for p in &mut list.plugins {
        p.merge_cni_args(&extra);
    }
    if let Some(dev) = &s.device_id {
        set_device_id(list, dev);
    }
}

/// `deviceID` and `pciBusID` in every plugin's configuration.
fn set_device_id(list: &mut NetworkConfigList, dev: &str) {
    for p in &mut list.plugins {
        let raw = p.raw_mut();
        raw.insert("deviceID".into(), json!(dev));
        raw.insert("pciBusID".into(), json!(dev));
    }
}
