//! DEL and the rollback of a failed ADD: every attempted attachment in reverse, from
//! the local state and libcni's cache, every error collected; and, without state, the
//! attachments planned again from the pod.

use crate::add::to_state;
use crate::engine::{attachment, network_context, Engine, Request};
use crate::state::{AttachmentState, PodState, STATE_VERSION};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::Runtime;
use plexus_cni::{code, fsutil, validate, CniError, CniResult, Result};
use serde_json::Value;

impl Engine {
    /// DEL: from the local state only; every attachment in reverse, every error reported.
    /// Idempotent: with nothing known it succeeds.
    pub fn del(&self, req: &Request) -> Result<()> {
        validate::container_id(&req.container_id)?;
        validate::env_ifname(&req.ifname)?;
        let indicator = &self.conf.readiness_indicator_file;
        if !indicator.is_empty() && !std::path::Path::new(indicator).exists() {
            tracing::warn!(file = %indicator, "readiness indicator file missing; deleting anyway");
        }
        let rt = self.runtime(&req.cni_path);
        let loaded = match self.state.load(&req.container_id) {
            // A state cut short by a crash of the machine must not wedge the pod's deletion.
            Err(e) if e.code == code::DECODING_FAILURE => {
                tracing::error!(error = %e, container = %req.container_id, "DEL: unreadable state; planning again from the pod");
                None
            }
            other => other?,
        };
        let Some(mut st) = loaded.or_else(|| self.recompute_state(req)) else {
            tracing::info!(container = %req.container_id, "DEL: no state and no pod; nothing to delete");
            return self.state.remove(&req.container_id);
        };
        if let Some(n) = req.netns.as_ref().filter(|n| !n.is_empty()) {
            // A namespace that is still there must be a pod's (never the node's own).
            if std::path::Path::new(n).exists() {
                self.sandboxes.open(n)?;
            }
            st.netns = n.clone();
        }
        // Kept on file with what is left if a delegate fails: hot-plug leaves it alone.
        st.deleting = true;
        self.del_state(&rt, &mut st)?;
        self.state.remove(&req.container_id)?;
        self.torn_down(&st.pod_namespace, &st.pod_name);
        Ok(())
    }

    /// Without state (an ADD by another implementation, or state lost), the attachments
    /// are planned again from the pod, best effort.
    fn recompute_state(&self, req: &Request) -> Option<PodState> {
        let pod = self.pod(req).ok().flatten()?;
        let planned = match self.plan_add(req, Some(&pod)) {
            Ok(p) => p,
            // A selection that no longer resolves: at least the cluster network.
            Err(_) => {
                let r = self.resolver();
                let input = crate::plan::PlanInput {
                    container_id: &req.container_id,
                    ifname: &req.ifname,
                    args: &req.args,
                    pod: Some(&pod),
                };
                let nets = vec![(r.cluster_network().ok()?, None)];
                crate::plan::attachments(&r, &input, nets, vec![], &self.conf.runtime_config)
                    .ok()?
            }
        };
        Some(PodState {
            version: STATE_VERSION,
            container_id: req.container_id.clone(),
            netns: req.netns.clone().unwrap_or_default(),
            pod_namespace: pod.namespace,
            pod_name: pod.name,
            pod_uid: pod.uid,
            attachments: planned.iter().map(to_state).collect(),
            conf: None,
            cni_path: vec![],
            deleting: false,
        })
    }

    /// Undoes a failed ADD: the processes started ahead are killed, what was attempted
    /// is DELed in reverse and the state removed; `cause` is returned as it was.
    pub(crate) fn rollback(&self, rt: &Runtime, st: &mut PodState, cause: CniError) -> CniError {
        rt.discard_prestarted();
        st.deleting = true;
        tracing::warn!(error = %cause, container = %st.container_id, "ADD failed, deleting what was attempted");
        match self.del_state(rt, st) {
            Ok(()) => {
                if let Err(e) = self.state.remove(&st.container_id) {
                    tracing::error!(error = %e, "cannot remove state after rollback");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "rollback left attachments; the runtime's DEL will retry them")
            }
        }
        cause
    }

    /// DELs every attempted attachment of `st` in reverse, going on after errors; the
    /// attachments that failed stay in `st` (and on disk) so a retried DEL redoes them.
    pub(crate) fn del_state(&self, rt: &Runtime, st: &mut PodState) -> Result<()> {
        let mut errors = Vec::new();
        let mut remaining = Vec::new();
        for a in st.attachments.iter().rev().filter(|a| a.attempted) {
            let prev = recorded_result(rt, &st.container_id, a);
            match del_one(rt, st, a, prev.as_ref()) {
                Ok(()) => {}
                // An attachment whose ADD failed had to clean up after itself (CNI §4);
                // its DEL is best effort, or a plugin that cannot DEL what it never
                // made (macvlan without its master) would wedge the pod for ever. Not
                // so when its plugin was killed at its time limit: only DEL undoes it.
                Err(e) if prev.is_none() && !a.interrupted => {
                    tracing::warn!(error = %e, network = %a.name, "DEL of an attachment whose ADD failed");
                }
                Err(e) => {
                    errors.push(e);
                    remaining.push(a.clone());
                }
            }
        }
        if errors.is_empty() {
            st.attachments.clear();
            return Ok(());
        }
        remaining.reverse();
        st.attachments = remaining;
        self.state.save(st)?;
        CniError::join(errors)
    }
}

/// DEL of one attachment with the configuration, arguments and result it was added
/// with; its cache entry and device-info file go with it.
pub(crate) fn del_one(
    rt: &Runtime,
    st: &PodState,
    a: &AttachmentState,
    prev: Option<&CniResult>,
) -> Result<()> {
    let ctx = network_context(&a.name, &a.ifname);
    let list = NetworkConfigList::from_value(a.config.clone()).map_err(&ctx)?;
    let netns = Some(st.netns.as_str()).filter(|n| std::path::Path::new(n).exists());
    let att = attachment(
        &st.container_id,
        netns,
        a.ifname.clone(),
        CniArgs(a.cni_args.clone()),
        a.capability_args.clone(),
    );
    rt.del_list_with(&list, &att, prev).map_err(&ctx)?;
    if let Some(cache) = &rt.cache {
        cache.remove(&list.name, &st.container_id, &a.ifname)?;
    }
    if let Some(f) = &a.device_info_file {
        fsutil::remove_with_orphans(f)
            .map_err(|e| CniError::io(format!("removing {}: {e}", f.display())))?;
    }
    Ok(())
}

/// An attachment's ADD result: the one in memory during an ADD (and in state files that
/// carry results), else the one in libcni's result cache of `cniDir`, where the runtime
/// put it. `None`: its ADD never completed.
pub(crate) fn recorded_result(
    rt: &Runtime,
    container_id: &str,
    a: &AttachmentState,
) -> Option<CniResult> {
    if let Some(r) = a
        .result
        .as_ref()
        .and_then(|v| CniResult::from_value(v).ok())
    {
        return Some(r);
    }
    let cache = rt.cache.as_ref()?;
    let network = a.config.get("name").and_then(Value::as_str)?;
    let entry = cache.load(network, container_id, &a.ifname).ok()??;
    entry.result.and_then(|v| CniResult::from_value(&v).ok())
}
