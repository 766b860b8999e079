//! `default-route` (NPWG §4.1.2.1.9, Plexus decision D6): the element that carries it
//! gets the pod's default route(s); every other attachment loses its default routes
//! of the same family only (asking for an IPv4 default never touches IPv6 ones).
//! Several gateways are installed in order with rising metrics; an empty list means
//! "this attachment's own gateways". The cached results are patched to match the kernel.

use crate::plan::Planned;
use crate::sandbox::Sandbox;
use plexus_cni::ipnet::IpNet;
use plexus_cni::result::{Result100, Route};
use plexus_cni::{CniError, CniResult, Result};
use std::net::IpAddr;

/// The gateways of the default routes of `r` (what status reports as `default-route`).
pub fn default_gateways(r: &Result100, _ifname: &str) -> Vec<String> {
    r.routes
        .iter()
        .filter(|rt| rt.is_default())
        .filter_map(|rt| rt.gw.map(|g| g.to_string()))
        .collect()
}

fn is_v4(a: &IpAddr) -> bool {
    a.is_ipv4()
}

/// The gateways to install for the element: the listed ones, else the attachment's own.
fn wanted(p: &Planned, r: &Result100, listed: &[IpAddr]) -> Vec<IpAddr> {
    if !listed.is_empty() {
        return listed.to_vec();
    }
    let mut own: Vec<IpAddr> = Vec::new();
    for ip in &r.ips {
        let mine = match ip.interface {
            Some(i) => r
                .interfaces
                .get(i.max(0) as usize)
                .is_some_and(|iface| iface.name == p.ifname),
            None => true,
        };
        if let (true, Some(g)) = (mine, ip.gateway) {
            if !own.contains(&g) {
                own.push(g);
            }
        }
    }
    own
}

/// What `default-route` changes in the pod's namespace: the default routes of
/// `families` (true: IPv4) leave every interface of `ifnames`, and `gateways` are
/// installed on `owner`, in order, with rising metrics within a family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// Every attachment's interface.
    pub ifnames: Vec<String>,
    /// The interface of the element that asked for the default route.
    pub owner: String,
    /// The families touched (true: IPv4, false: IPv6).
    pub families: Vec<bool>,
    /// The gateways to install, in order.
    pub gateways: Vec<IpAddr>,
}

/// The change `default-route` asks for, `None` when no element asked.
pub fn plan_default_route(atts: &[(&Planned, &CniResult)]) -> Result<Option<(usize, RouteChange)>> {
    let Some(owner) = atts.iter().position(|(p, _)| {
        p.selection
            .as_ref()
            .is_some_and(|s| s.default_route.is_some())
    }) else {
        return Ok(None);
    };
    let (p, r) = atts[owner];
    let listed = p
        .selection
        .as_ref()
        .and_then(|s| s.default_route.clone())
        .unwrap_or_default();
    let gateways = wanted(p, &r.to_current(), &listed);
    if gateways.is_empty() {
        return Err(CniError::invalid_config(format!(
            "network \"{}\": \"default-route\" is empty and the attachment has no gateway of its own",
            p.name
        )));
    }
    let families: Vec<bool> = [true, false]
        .into_iter()
        .filter(|v4| gateways.iter().any(|g| is_v4(g) == *v4))
        .collect();
    Ok(Some((
        owner,
        RouteChange {
            ifnames: atts.iter().map(|(p, _)| p.ifname.clone()).collect(),
            owner: p.ifname.clone(),
            families,
            gateways,
        },
    )))
}

/// Applies `default-route` if an element asked for it, in `sandbox`, and patches the
/// results to match the kernel; returns the indices of the attachments whose results
/// changed.
pub fn apply_default_route(
    sandbox: &dyn Sandbox,
    mut atts: Vec<(&Planned, &mut CniResult)>,
) -> Result<Vec<usize>> {
    let view: Vec<(&Planned, &CniResult)> = atts.iter().map(|(p, r)| (*p, &**r)).collect();
    let Some((owner, change)) = plan_default_route(&view)? else {
        return Ok(vec![]);
    };
    sandbox.replace_default_routes(&change)?;
    for (i, (_, res)) in atts.iter_mut().enumerate() {
        **res = patched(res, &change, i == owner)?;
    }
    Ok((0..atts.len()).collect())
}

/// `res` as the kernel has it after `change`: the family's default routes gone, and on
/// the owner the gateways installed.
pub fn patched(res: &CniResult, change: &RouteChange, owner: bool) -> Result<CniResult> {
    let mut r = res.to_current();
    r.routes.retain(|rt| {
        !(rt.is_default() && change.families.contains(&matches!(rt.dst, IpNet::V4(_))))
    });
    if owner {
        let gws = &change.gateways;
        for (n, g) in gws.iter().enumerate() {
            let dst: IpNet = if is_v4(g) {
                IpNet::V4(Default::default())
            } else {
                IpNet::V6(Default::default())
            };
            let mut route = Route::new(dst, Some(*g));
            route.priority = metric(gws, n);
            r.routes.push(route);
        }
    }
    CniResult::V100(r).convert_to(res.version())
}

/// Metric of gateway `n`: the order within its family (none for the first).
pub fn metric(gws: &[IpAddr], n: usize) -> Option<u32> {
    let rank = gws[..n]
        .iter()
        .filter(|g| is_v4(g) == is_v4(&gws[n]))
        .count() as u32;
    (rank > 0).then_some(rank)
}
