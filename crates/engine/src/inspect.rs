//! CHECK, STATUS and GC: CHECK of every attachment from the local state, STATUS of
//! every network the node's configuration names, GC of containers the runtime no
//! longer lists and, for every network, of the attachments it still holds.

use crate::engine::{attachment, network_context, Engine, Request};
use crate::sandbox::Link;
use crate::state::PodState;
use crate::teardown::recorded_result;
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::result::Result100;
use plexus_cni::runtime::ValidAttachment;
use plexus_cni::version::Version;
use plexus_cni::{code, validate, CniError, Result};
use std::collections::HashSet;
use std::path::PathBuf;

/// CHECK's code when the pod's namespace does not hold what an attachment's ADD made
/// (a Plexus code: the spec leaves 100 and above to plugins).
pub const CHECK_DRIFT: u32 = 100;

/// The runtime's `cni.dev/valid-attachments` of a GC request (or the key's older name).
pub fn valid_attachments(req: &plexus_cni::plugin::Request) -> Result<Vec<ValidAttachment>> {
    match req
        .config
        .get("cni.dev/valid-attachments")
        .or_else(|| req.config.get("cni.dev/attachments"))
    {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| CniError::invalid_config(format!("\"cni.dev/valid-attachments\": {e}"))),
    }
}

impl Engine {
    /// CHECK: every attachment, from the local state; all errors reported.
    pub fn check(&self, req: &Request) -> Result<()> {
        validate::container_id(&req.container_id)?;
        validate::env_ifname(&req.ifname)?;
        let st = self.state.load(&req.container_id)?.ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {:?} has no Plexus state: it was never added",
                    req.container_id
                ),
            )
        })?;
        let rt = self.runtime(&req.cni_path);
        let netns = req
            .netns
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or(st.netns.clone());
        // What the pod's namespace really holds: every attachment's interfaces are
        // verified against it, whatever its delegates' version (CHECK does not exist
        // before 0.4.0, and most networks say 0.3.1).
        let links = self.sandboxes.open(&netns)?.links()?;
        let mut errors = Vec::new();
        for a in &st.attachments {
            let run = || -> Result<()> {
                let list = NetworkConfigList::from_value(a.config.clone())?;
                let prev = recorded_result(&rt, &st.container_id, a).ok_or_else(|| {
                    CniError::new(code::UNKNOWN_CONTAINER, "no ADD result recorded")
                })?;
                verify_interfaces(&prev.to_current(), &links, &netns)?;
                if !Version::parse(&list.cni_version)?.at_least("0.4.0") {
                    return Ok(());
                }
                let att = attachment(
                    &st.container_id,
                    Some(&netns),
                    a.ifname.clone(),
                    CniArgs(a.cni_args.clone()),
                    a.capability_args.clone(),
                );
                rt.check_list_with(&list, &att, &prev)
            };
            if let Err(e) = run() {
                errors.push(network_context(&a.name, &a.ifname)(e));
            }
        }
        CniError::join(errors)
    }

    /// The networks the node's configuration names (cluster network, other inline
    /// delegates, `defaultNetworks`).
    fn node_networks(&self) -> Result<Vec<NetworkConfigList>> {
        let r = self.resolver();
        let mut out = vec![r.cluster_network()?.list];
        if self
            .conf
            .cluster_network
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            for i in 1..self.conf.delegates.len() {
                if let Some(d) = r.delegate(i) {
                    out.push(d?.list);
                }
            }
        }
        for n in &self.conf.default_networks {
            out.push(r.named(n)?.list);
        }
        Ok(out)
    }

    /// STATUS: waits for readiness, then STATUS on every network the node's config names;
    /// the first error is returned with its code (50/51).
    pub fn status(&self, cni_path: &[PathBuf]) -> Result<()> {
        self.wait_ready()
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg))?;
        let rt = self.runtime(cni_path);
        for list in self.node_networks()? {
            rt.status_list(&list)?;
        }
        Ok(())
    }

    /// GC: DELs every container whose Plexus attachment is not in `valid` and removes its
    /// state; then forwards GC to every delegate of every network known, each with the
    /// attachments of that network that are still valid. All errors are reported.
    pub fn gc(&self, valid: &[ValidAttachment], cni_path: &[PathBuf]) -> Result<()> {
        self.wait_ready()?;
        let rt = self.runtime(cni_path);
        let valid_ids: HashSet<&str> = valid.iter().map(|v| v.container_id.as_str()).collect();
        let mut errors = Vec::new();
        let mut states = Vec::new();
        for cid in self.state.containers()? {
            match self.state.load(&cid) {
                Ok(Some(s)) => states.push(s),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        let node = self.node_networks().unwrap_or_default();
        let lists = gc_lists(&states, &valid_ids, node);
        for mut st in states
            .into_iter()
            .filter(|s| !valid_ids.contains(s.container_id.as_str()))
        {
            tracing::info!(container = %st.container_id, "GC: container is not valid any more, deleting its attachments");
            match self.del_state(&rt, &mut st) {
                Ok(()) => {
                    if let Err(e) = self.state.remove(&st.container_id) {
                        errors.push(e);
                    }
                    self.torn_down(&st.pod_namespace, &st.pod_name);
                }
                Err(e) => errors.push(e),
            }
        }
        for (list, valid) in &lists {
            let gc_capable = Version::parse(&list.cni_version).is_ok_and(|v| v.at_least("1.1.0"));
            if gc_capable && !list.disable_gc {
                errors.extend(rt.gc_plugins(list, valid));
            }
        }
        CniError::join(errors)
    }
}

/// Every network known (from the states, then the node's configuration), each once,
/// with the attachments of it that stay valid: what each delegate's GC is given.
pub(crate) fn gc_lists(
    states: &[PodState],
    valid_ids: &HashSet<&str>,
    node_networks: Vec<NetworkConfigList>,
) -> Vec<(NetworkConfigList, Vec<ValidAttachment>)> {
    let mut lists: Vec<(NetworkConfigList, Vec<ValidAttachment>)> = Vec::new();
    let mut remember = |list: NetworkConfigList, va: Option<ValidAttachment>| {
        let key = list.to_value();
        match lists.iter_mut().find(|(l, _)| l.to_value() == key) {
            Some((_, v)) => v.extend(va),
            None => lists.push((list, va.into_iter().collect())),
        }
    };
    for st in states {
        let keep = valid_ids.contains(st.container_id.as_str());
        for a in &st.attachments {
            if let Ok(l) = NetworkConfigList::from_value(a.config.clone()) {
                let va = keep.then(|| ValidAttachment {
                    container_id: st.container_id.clone(),
                    ifname: a.ifname.clone(),
                });
                remember(l, va);
            }
        }
    }
    for l in node_networks {
        remember(l, None);
    }
    lists
}

/// The interfaces an ADD result put in the pod are there, with its MAC and addresses;
/// an error naming everything that is not.
pub(crate) fn verify_interfaces(r: &Result100, links: &[Link], netns: &str) -> Result<()> {
    let mut wrong = Vec::new();
    for (i, iface) in r.interfaces.iter().enumerate() {
        if iface.sandbox.is_empty() {
            continue; // a host-side interface (a bridge, a veth's peer)
        }
        let Some(link) = links.iter().find(|l| l.name == iface.name) else {
            wrong.push(format!(
                "interface {:?} is missing from {netns}",
                iface.name
            ));
            continue;
        };
        let want = iface.mac.to_ascii_lowercase();
        if !want.is_empty() && link.mac != want {
            wrong.push(format!(
                "interface {:?} has MAC {}, the ADD result says {want}",
                iface.name, link.mac
            ));
        }
        for ip in r.ips.iter().filter(|ip| ip.interface == Some(i as i32)) {
            if !link.addresses.contains(&ip.address) {
                wrong.push(format!(
                    "interface {:?} lacks address {} of the ADD result",
                    iface.name, ip.address
                ));
            }
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(CniError::new(CHECK_DRIFT, wrong.join("; ")))
}
