//! The pod's network namespace as the engine uses it: the interfaces already there, and
//! the default routes `default-route` replaces. The seam lets the engine's logic be
//! tested without root; [`KernelSandboxes`] is the real one (plexus-netns, rtnetlink).

use crate::routes::RouteChange;
use futures_util::TryStreamExt;
use plexus_cni::ipnet::IpNet;
use plexus_cni::{CniError, Result};
use plexus_netns::NetNs;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The interface names of a namespace, listed in the background.
pub type PendingInterfaces = Box<dyn FnOnce() -> Result<HashSet<String>> + Send>;

/// One interface of a namespace as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Its name.
    pub name: String,
    /// Its hardware address, lowercase `aa:bb:...` (empty when it has none).
    pub mac: String,
    /// Its addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
}

/// Opens the namespace `CNI_NETNS` names.
pub trait Sandboxes: Send + Sync {
    /// The namespace at `path`; an error (code 4) when it is not a network namespace.
    fn open(&self, path: &str) -> Result<Box<dyn Sandbox>>;
}

/// One pod's network namespace.
pub trait Sandbox: Send {
    /// Starts listing the interfaces present; the answer is taken later, so the listing
    /// overlaps the pod and NAD reads and the planning.
    fn interfaces_ahead(&self) -> Result<PendingInterfaces>;
    /// Removes the default routes of `change.families` on `change.ifnames` and installs
    /// `change.gateways` on `change.owner` (existing ones are kept).
    fn replace_default_routes(&self, change: &RouteChange) -> Result<()>;
    /// Every interface of the namespace with its MAC and addresses (what CHECK verifies).
    fn links(&self) -> Result<Vec<Link>>;
}

/// The kernel's namespaces.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSandboxes;

impl Sandboxes for KernelSandboxes {
    fn open(&self, path: &str) -> Result<Box<dyn Sandbox>> {
        let env = |e: String| CniError::invalid_env(format!("CNI_NETNS: {e}"));
        let ns = NetNs::open(path).map_err(|e| env(e.to_string()))?;
        // The node's own namespace is never a pod's: its interfaces and default route
        // are the node's (a delegate would replace the node's eth0 or its routes).
        let node = NetNs::current().and_then(|c| c.id());
        if let (Ok(target), Ok(node)) = (ns.id(), node) {
            if target == node {
                return Err(env(format!(
                    "{path} is the node's own network namespace ({node}), not a pod's"
                )));
            }
        }
        Ok(Box::new(KernelSandbox {
            ns,
            path: path.to_string(),
        }))
    }
}

struct KernelSandbox {
    ns: NetNs,
    path: String,
}

impl Sandbox for KernelSandbox {
    fn interfaces_ahead(&self) -> Result<PendingInterfaces> {
        let ahead = self
            .ns
            .run_ahead(|| {
                nix::net::if_::if_nameindex().map(|ifs| {
                    ifs.iter()
                        .map(|i| i.name().to_string_lossy().into_owned())
                        .collect::<HashSet<String>>()
                })
            })
            .map_err(|e| CniError::invalid_env(format!("CNI_NETNS: {e}")))?;
        let path = self.path.clone();
        Ok(Box::new(move || {
            let listed = ahead
                .wait()
                .map_err(|e| CniError::invalid_env(format!("CNI_NETNS: {e}")))?;
            listed.map_err(|e| {
                CniError::invalid_env(format!("CNI_NETNS: listing the interfaces of {path}: {e}"))
            })
        }))
    }

    fn replace_default_routes(&self, change: &RouteChange) -> Result<()> {
        let change = change.clone();
        self.ns
            .run(move || kernel_apply(&change))
            .map_err(|e| CniError::internal(format!("default-route: {e}")))?
    }

    fn links(&self) -> Result<Vec<Link>> {
        self.ns
            .run(kernel_links)
            .map_err(|e| CniError::internal(format!("listing interfaces: {e}")))?
    }
}

/// The namespace's links and addresses, over netlink, from a thread inside it.
fn kernel_links() -> Result<Vec<Link>> {
    let fail = |what: &str, e: rtnetlink::Error| {
        CniError::internal(format!("listing interfaces: {what}: {e}"))
    };
    with_netlink("listing interfaces", |handle| async move {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| fail("links", e))?;
        let addrs: Vec<AddressMessage> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| fail("addresses", e))?;
        Ok(links.iter().map(|l| link_of(l, &addrs)).collect())
    })
}

fn link_of(l: &LinkMessage, addrs: &[AddressMessage]) -> Link {
    let mut link = Link::default();
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => {
                link.mac = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }
            _ => {}
        }
    }
    for m in addrs.iter().filter(|m| m.header.index == l.header.index) {
        // IFA_LOCAL is the interface's own address where a peer address is set too.
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(net) = addr.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok()) {
            link.addresses.push(net);
        }
    }
    link
}

/// Runs `work` with a netlink connection of the calling thread's namespace, on a
/// runtime of its own (the thread is a short-lived one inside the pod's namespace).
fn with_netlink<T, F, Fut>(what: &str, work: F) -> Result<T>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("{what}: runtime: {e}")))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::internal(format!("{what}: netlink: {e}")))?;
        tokio::spawn(conn);
        work(handle).await
    })
}

fn kernel_apply(c: &RouteChange) -> Result<()> {
    with_netlink("default-route", |handle| async move {
        let indices: Vec<u32> = c.ifnames.iter().map(|n| index(n)).collect::<Result<_>>()?;
        for &v4 in &c.families {
            remove_defaults(&handle, v4, &indices).await?;
        }
        let oif = index(&c.owner)?;
        for (n, g) in c.gateways.iter().enumerate() {
            add_default(&handle, *g, oif, crate::routes::metric(&c.gateways, n))
                .await
                .map_err(|e| {
                    CniError::internal(format!(
                        "default-route: adding default via {g} dev {}: {e}",
                        c.owner
                    ))
                })?;
        }
        Ok(())
    })
}

fn index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| CniError::internal(format!("default-route: interface {name:?}: {e}")))
}

/// Deletes the main table's default routes of one family through `indices`.
async fn remove_defaults(handle: &rtnetlink::Handle, v4: bool, indices: &[u32]) -> Result<()> {
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
    let family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    for r in routes {
        let oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let main = r.header.table == 254
            || r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(254)));
        if r.header.destination_prefix_length == 0
            && main
            && r.header.address_family == family
            && oif.is_some_and(|o| indices.contains(&o))
        {
            match handle.route().del(r).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -(nix::errno::Errno::ESRCH as i32) => {}
                Err(e) => return Err(nl("deleting a default route")(e)),
            }
        }
    }
    Ok(())
}

async fn add_default(
    handle: &rtnetlink::Handle,
    gw: IpAddr,
    oif: u32,
    metric: Option<u32>,
) -> std::result::Result<(), rtnetlink::Error> {
    let mut b = match gw {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(a)
            .output_interface(oif)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(a)
            .output_interface(oif)
            .build(),
    };
    if let Some(m) = metric {
        b.attributes.push(RouteAttribute::Priority(m));
    }
    match handle.route().add(b).execute().await {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -(nix::errno::Errno::EEXIST as i32) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> CniError {
    move |e| CniError::internal(format!("default-route: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_links_are_read_with_mac_and_addresses() {
        // The process's own namespace, read as CHECK reads a pod's: lo is there.
        let links = kernel_links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.mac, "00:00:00:00:00:00");
    }

    #[test]
    fn the_nodes_own_namespace_and_what_is_not_one_are_refused() {
        for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
            let e = KernelSandboxes.open(path).err().expect("refused");
            assert_eq!(e.code, 4);
            assert!(
                e.msg.contains("the node's own network namespace"),
                "{}",
                e.msg
            );
        }
        let e = KernelSandboxes
            .open("/proc/self/ns/uts")
            .err()
            .expect("refused");
        assert!(e.msg.contains("not a network namespace"), "{}", e.msg);
        let e = KernelSandboxes
            .open("/etc/hostname")
            .err()
            .expect("refused");
        assert_eq!(e.code, 4);
    }
}
