//! `default-route` (NPWG §4.1.2.1.9, Plexus decision D6): the element that carries it
//! gets the pod's default route(s); every other attachment loses its default routes
//! of the same family only (asking for an IPv4 default never touches IPv6 ones).
//! Several gateways are installed in order with rising metrics; an empty list means
//! "this attachment's own gateways". The cached results are patched to match the kernel.

use crate::plan::Planned;
use futures_util::TryStreamExt;
use plexus_cni::ipnet::IpNet;
use plexus_cni::result::{Result100, Route};
use plexus_cni::{CniError, CniResult, Result};
use plexus_netns::NetNs;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// Applies `default-route` if an element asked for it; returns the indices of the
/// attachments whose results changed.
pub fn apply_default_route(
    netns: &NetNs,
    mut atts: Vec<(&Planned, &mut CniResult)>,
) -> Result<Vec<usize>> {
    let Some(owner) = atts.iter().position(|(p, _)| {
        p.selection
            .as_ref()
            .is_some_and(|s| s.default_route.is_some())
    }) else {
        return Ok(vec![]);
    };
    let listed = atts[owner]
        .0
        .selection
        .as_ref()
        .and_then(|s| s.default_route.clone())
        .unwrap_or_default();
    let gws = wanted(atts[owner].0, &atts[owner].1.to_current(), &listed);
    if gws.is_empty() {
        return Err(CniError::invalid_config(format!(
            "network \"{}\": \"default-route\" is empty and the attachment has no gateway of its own",
            atts[owner].0.name
        )));
    }
    let families: Vec<bool> = [true, false]
        .into_iter()
        .filter(|v4| gws.iter().any(|g| is_v4(g) == *v4))
        .collect();
    let ifnames: Vec<String> = atts.iter().map(|(p, _)| p.ifname.clone()).collect();
    let owner_if = ifnames[owner].clone();
    let gws_k = gws.clone();
    let fams = families.clone();
    netns
        .run(move || kernel_apply(&ifnames, &owner_if, &fams, &gws_k))
        .map_err(|e| CniError::internal(format!("default-route: {e}")))??;
    // Patch the results to match the kernel.
    for (i, (_, res)) in atts.iter_mut().enumerate() {
        let mut r = res.to_current();
        r.routes
            .retain(|rt| !(rt.is_default() && families.contains(&matches!(rt.dst, IpNet::V4(_)))));
        if i == owner {
            for (n, g) in gws.iter().enumerate() {
                let dst: IpNet = if is_v4(g) {
                    "0.0.0.0/0".parse()
                } else {
                    "::/0".parse()
                }
                .unwrap_or_else(|_| IpNet::default());
                let mut route = Route::new(dst, Some(*g));
                route.priority = metric(&gws, n);
                r.routes.push(route);
            }
        }
        **res = CniResult::V100(r).convert_to(res.version())?;
    }
    Ok((0..atts.len()).collect())
}

/// Metric of gateway `n`: the order within its family (none for the first).
fn metric(gws: &[IpAddr], n: usize) -> Option<u32> {
    let rank = gws[..n]
        .iter()
        .filter(|g| is_v4(g) == is_v4(&gws[n]))
        .count() as u32;
    (rank > 0).then_some(rank)
}

fn kernel_apply(ifnames: &[String], owner: &str, families: &[bool], gws: &[IpAddr]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("default-route: runtime: {e}")))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::internal(format!("default-route: netlink: {e}")))?;
        tokio::spawn(conn);
        let index = |name: &str| {
            nix::net::if_::if_nametoindex(name)
                .map_err(|e| CniError::internal(format!("default-route: interface {name:?}: {e}")))
        };
        let indices: Vec<u32> = ifnames.iter().map(|n| index(n)).collect::<Result<_>>()?;
        for &v4 in families {
            let dump = if v4 {
                RouteMessageBuilder::<Ipv4Addr>::new().build()
            } else {
                RouteMessageBuilder::<Ipv6Addr>::new().build()
            };
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(dump)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            for r in routes {
                let oif = r.attributes.iter().find_map(|a| {
                    if let RouteAttribute::Oif(i) = a {
                        Some(*i)
                    } else {
                        None
                    }
                });
                let main = r.header.table == 254
                    || r.attributes
                        .iter()
                        .any(|a| matches!(a, RouteAttribute::Table(254)));
                let family_ok = r.header.address_family
                    == if v4 {
                        AddressFamily::Inet
                    } else {
                        AddressFamily::Inet6
                    };
                if r.header.destination_prefix_length == 0
                    && main
                    && family_ok
                    && oif.is_some_and(|o| indices.contains(&o))
                {
                    match handle.route().del(r).execute().await {
                        Ok(()) => {}
                        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_esrch() => {
                        }
                        Err(e) => return Err(nl("deleting a default route")(e)),
                    }
                }
            }
        }
        let oif = index(owner)?;
        for (n, g) in gws.iter().enumerate() {
            let mut b = match g {
                IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(*a)
                    .output_interface(oif)
                    .build(),
                IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(*a)
                    .output_interface(oif)
                    .build(),
            };
            if let Some(m) = metric(gws, n) {
                b.attributes.push(RouteAttribute::Priority(m));
            }
            match handle.route().add(b).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
                Err(e) => {
                    return Err(CniError::internal(format!(
                        "default-route: adding default via {g} dev {owner}: {e}"
                    )))
                }
            }
        }
        Ok(())
    })
}

fn libc_esrch() -> i32 {
    nix::errno::Errno::ESRCH as i32
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> CniError {
    move |e| CniError::internal(format!("default-route: {what}: {e}"))
}
