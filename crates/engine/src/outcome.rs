//! What an ADD makes of its delegates' results: the D2 check that what the pod asked
//! for is there, the network-status entries, the `AddedInterface` message, the empty
//! result of a pod that is gone. Pure.

use crate::plan::Planned;
use crate::routes;
use plexus_cni::result::Result100;
use plexus_cni::{CniError, CniResult, Result};
use plexus_npwg::status::{self, NetworkStatus, StatusInput};
use serde_json::{json, Value};

/// An attachment whose delegate succeeded.
pub(crate) struct Added {
    pub planned: Planned,
    pub result: CniResult,
    pub device_info: Option<Value>,
}

/// D2: what the pod asked for is in the result, or the attachment fails.
pub(crate) fn verify_requests(p: &Planned, r: &Result100) -> Result<()> {
    let Some(sel) = &p.selection else {
        return Ok(());
    };
    let declared = |cap: &str| p.list.plugins.iter().any(|pl| pl.has_capability(cap));
    let why = |cap: &str| {
        if declared(cap) {
            format!("a plugin declares capability {cap:?} but did not honour it")
        } else {
            format!("no plugin of the network declares capability {cap:?}")
        }
    };
    for want in &sel.ips {
        let addr = want.split('/').next().unwrap_or(want);
        if !r.ips.iter().any(|ip| ip.address.addr().to_string() == addr) {
            return Err(CniError::invalid_config(format!(
                "the pod asked for IP {want} but the result does not carry it ({})",
                why("ips")
            )));
        }
    }
    if let Some(mac) = &sel.mac {
        let iface = r
            .interfaces
            .iter()
            .find(|i| i.name == p.ifname && !i.sandbox.is_empty());
        let got = iface
            .map(|i| i.mac.to_ascii_lowercase())
            .unwrap_or_default();
        if got != mac.to_ascii_lowercase().replace('-', ":") {
            return Err(CniError::invalid_config(format!(
                "the pod asked for MAC {mac} but interface {:?} has {:?} ({})",
                p.ifname,
                got,
                why("mac")
            )));
        }
    }
    Ok(())
}

/// The network-status entries of the attachments, in order (none for the auxiliary chain).
pub(crate) fn network_status(added: &[Added]) -> Vec<NetworkStatus> {
    let mut statuses = Vec::new();
    for a in added.iter().filter(|a| !a.planned.auxiliary) {
        let wants_default_route = a
            .planned
            .selection
            .as_ref()
            .is_some_and(|s| s.default_route.is_some());
        statuses.extend(attachment_status(
            &a.planned.name,
            a.planned.is_default,
            &a.planned.ifname,
            wants_default_route,
            &a.result.to_current(),
            a.device_info.clone(),
        ));
    }
    statuses
}

/// The network-status entries of one attachment.
pub(crate) fn attachment_status(
    name: &str,
    is_default: bool,
    ifname: &str,
    wants_default_route: bool,
    r: &Result100,
    device_info: Option<Value>,
) -> Vec<NetworkStatus> {
    let default_route = wants_default_route.then(|| routes::default_gateways(r, ifname));
    status::entries(
        r,
        StatusInput {
            name,
            is_default,
            ifname,
            device_info,
            default_route,
        },
    )
}

/// The `AddedInterface` message of an attachment: "Add <ifname> [<ips>] from
/// <network>"; none for the auxiliary chain and for results without interfaces or
/// addresses (as Multus).
pub(crate) fn added_message(a: &Added) -> Option<String> {
    if a.planned.auxiliary {
        return None;
    }
    let r = a.result.to_current();
    if r.interfaces.is_empty() && r.ips.is_empty() {
        return None;
    }
    let ips: Vec<String> = r.ips.iter().map(|ip| ip.address.to_string()).collect();
    Some(format!(
        "Add {} [{}] from {}",
        a.planned.ifname,
        ips.join(","),
        a.planned.name
    ))
}

/// The result given for a pod that no longer exists.
pub(crate) fn empty_result(version: &str, ifname: &str, netns: &str) -> Result<CniResult> {
    let v = json!({"cniVersion": "1.1.0", "interfaces": [{"name": ifname, "sandbox": netns}],
                   "ips": [{"address": "0.0.0.0/0", "gateway": "0.0.0.0"}]});
    CniResult::from_value(&v)?.convert_to(version)
}

/// A result in the current version's shape, as the state keeps it.
pub(crate) fn current_value(r: &CniResult) -> Value {
    CniResult::V100(r.to_current()).to_value()
}
