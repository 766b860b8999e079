//! Hot-plug: bringing a running pod's attachments in line with its selection
//! annotation. The state file is the truth of what is attached; the edit is matched
//! against it element by element, the new networks are attached and the removed ones
//! detached through the same steps as ADD and DEL (planning, D2's checks, libcni's
//! cache, rollback), and one network-status write reports the result.
//!
//! The rules (docs/hotplug.md):
//! - an element keeps its interface across edits: one with `interface` is matched by
//!   network and interface, one without by network, to the attachment it was given;
//!   removing an element never renames another; a new element without `interface`
//!   gets the lowest `net<N>` no attachment of the pod uses;
//! - the default network (eth0) and the node's own networks are not the annotation's:
//!   they stay; an edit that changes the default network is refused;
//! - a changed element (same network and interface, other `ips`, `mac`,
//!   `default-route`...) is refused: an attached interface is not reconfigured in
//!   place; removing the element and adding it again (two edits) re-attaches it;
//! - an edit is all or nothing: everything is checked before anything changes; when an
//!   attachment fails, the ones made by this edit are undone and nothing is detached.

use crate::cluster::PodInfo;
use crate::engine::{network_context, Engine, Request};
use crate::outcome;
use crate::plan::{self, PlanInput, Planned};
use crate::resolve::Resolved;
use crate::state::{AttachmentState, Pending, PodState};
use crate::teardown::{del_one, recorded_result};
use plexus_cni::args::CniArgs;
use plexus_cni::runtime::Runtime;
use plexus_cni::{CniError, Result};
use plexus_npwg::nad::Nad;
use plexus_npwg::selection::NetworkSelection;
use plexus_npwg::status::NetworkStatus;
use serde_json::Value;
use std::collections::BTreeSet;

/// Why a hot-plug did not happen, as the pod's events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The edit cannot be applied as written (`InterfaceAddRejected`); only another
    /// edit changes that.
    Rejected,
    /// Attaching failed and was undone (`FailedAddingInterface`); worth retrying.
    Adding,
    /// Detaching failed; the attachment stays on file to be detached again
    /// (`FailedRemovingInterface`).
    Removing,
}

impl Failure {
    /// The event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Rejected => "InterfaceAddRejected",
            Failure::Adding => "FailedAddingInterface",
            Failure::Removing => "FailedRemovingInterface",
        }
    }
}

/// A failed hot-plug.
#[derive(Debug, Clone)]
pub struct HotplugError {
    /// What kind of failure.
    pub failure: Failure,
    /// Why.
    pub error: CniError,
}

impl std::fmt::Display for HotplugError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.failure.reason(), self.error)
    }
}

/// The refusal of an edit of a pod whose state keeps no daemon configuration.
pub fn added_without_daemon(pod: &PodInfo) -> HotplugError {
    rejected(format!(
        "pod \"{}\": its networks were attached without the daemon (thin mode, or an older Plexus): hot-plug needs the configuration the daemon keeps at ADD; recreate the pod to use hot-plug",
        pod.key()
    ))
}

fn rejected(msg: impl Into<String>) -> HotplugError {
    HotplugError {
        failure: Failure::Rejected,
        error: CniError::invalid_config(msg.into()),
    }
}

fn failed(failure: Failure) -> impl Fn(CniError) -> HotplugError {
    move |error| HotplugError { failure, error }
}

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The container is not one hot-plug may touch now (the reason says why): no
    /// state (never added, or deleted), its ADD not finished, its DEL begun, another
    /// pod's, its namespace gone.
    Skipped(&'static str),
    /// The attachments already match the annotation.
    Unchanged,
    /// Interfaces attached and detached (the event messages), network-status written.
    Changed {
        /// "Add net2 [192.0.2.5/24] from ns/nad", one per attached interface.
        added: Vec<String>,
        /// "Remove net1 from ns/nad", one per detached interface.
        removed: Vec<String>,
    },
}

/// An attachment the edit adds, before it is planned.
struct New {
    resolved: Resolved,
    sel: NetworkSelection,
    ifname: String,
}

/// The edit: attachments to add, indices of the state's attachments to remove.
struct Edit {
    add: Vec<New>,
    remove: Vec<usize>,
}

impl Engine {
    /// Brings container `container_id` of `pod` in line with the pod's selection
    /// annotation. The caller keeps the runtime's ADD, DEL and CHECK of the container
    /// from running at the same time (the daemon's per-container lock).
    pub fn reconcile(
        &self,
        container_id: &str,
        pod: &PodInfo,
    ) -> std::result::Result<Reconciled, HotplugError> {
        let Some(mut st) = self
            .state
            .load(container_id)
            .map_err(failed(Failure::Adding))?
        else {
            return Ok(Reconciled::Skipped("no state: not added, or deleted"));
        };
        if st.deleting {
            return Ok(Reconciled::Skipped("its DEL has begun"));
        }
        if !st.pod_uid.is_empty() && !pod.uid.is_empty() && st.pod_uid != pod.uid {
            return Ok(Reconciled::Skipped("the state is another pod's"));
        }
        if self.sandboxes.open(&st.netns).is_err() {
            return Ok(Reconciled::Skipped("its network namespace is gone"));
        }
        let rt = self.runtime(&st.cni_path);
        let recovered = self
            .recover(&rt, &mut st)
            .map_err(failed(Failure::Removing))?;
        if st
            .attachments
            .iter()
            .any(|a| a.attempted && recorded_result(&rt, &st.container_id, a).is_none())
        {
            return Ok(Reconciled::Skipped("its ADD has not finished"));
        }
        if st.conf.is_none() {
            return Err(added_without_daemon(pod));
        }
        let edit = self.edit(&st, pod)?;
        if edit.add.is_empty() && edit.remove.is_empty() {
            if recovered {
                self.write_status(&rt, &st, pod)
                    .map_err(failed(Failure::Adding))?;
            }
            return Ok(Reconciled::Unchanged);
        }
        self.apply(&rt, &mut st, pod, edit)
    }

    /// Finishes what a killed daemon left: an attachment half made is detached, a
    /// detach under way is completed. True when something was.
    fn recover(&self, rt: &Runtime, st: &mut PodState) -> Result<bool> {
        let pending: Vec<usize> = (0..st.attachments.len())
            .filter(|&i| st.attachments[i].pending.is_some())
            .collect();
        if pending.is_empty() {
            return Ok(false);
        }
        let mut errors = Vec::new();
        let mut gone = BTreeSet::new();
        for &i in pending.iter().rev() {
            let a = &st.attachments[i];
            tracing::info!(container = %st.container_id, network = %a.name, interface = %a.ifname, "hot-plug: finishing what the daemon left");
            let prev = recorded_result(rt, &st.container_id, a);
            match del_one(rt, st, a, prev.as_ref()) {
                Ok(()) => {
                    gone.insert(i);
                }
                // An attach cut short made nothing the delegate could DEL.
                Err(e) if prev.is_none() && a.pending == Some(Pending::Attach) => {
                    tracing::warn!(error = %e, "DEL of a hot-plug attachment that never finished");
                    gone.insert(i);
                }
                Err(e) => errors.push(e),
            }
        }
        drop_indices(st, &gone);
        self.state.save(st)?;
        if errors.is_empty() {
            Ok(true)
        } else {
            CniError::join(errors).map(|()| true)
        }
    }

    /// Matches the annotation against the state: what to add and remove, or why not.
    fn edit(&self, st: &PodState, pod: &PodInfo) -> std::result::Result<Edit, HotplugError> {
        let r = self.resolver();
        let reject = |e: CniError| HotplugError {
            failure: Failure::Rejected,
            error: e,
        };
        let desired = plan::selection(&r, pod).map_err(reject)?;
        if let Some(d) = st.attachments.iter().find(|a| a.is_default) {
            let wanted = plan::default_network_name(&r, pod).map_err(reject)?;
            if wanted != d.name {
                return Err(rejected(format!(
                    "pod \"{}\": the default network is {:?} (interface {:?}) and cannot be changed on a running pod; the pod's {} asks for {wanted:?}",
                    pod.key(),
                    d.name,
                    d.ifname,
                    pod.source_of(plexus_npwg::DEFAULT_NETWORK_ANNOTATION)
                )));
            }
        }
        let matched = match_elements(st, &desired);
        for (d, m) in desired.iter().zip(&matched) {
            if let Some(i) = m {
                let a = &st.attachments[*i];
                let was = a.selection.as_ref().map(without_interface);
                if was.as_ref() != Some(&without_interface(&d.to_element())) {
                    return Err(rejected(format!(
                        "pod \"{}\": network \"{}\" (interface {:?}): its element changed; an attached interface is not reconfigured in place: remove the element, then add it again",
                        pod.key(),
                        a.name,
                        a.ifname
                    )));
                }
            }
        }
        let keep: BTreeSet<usize> = matched.iter().flatten().copied().collect();
        let remove: Vec<usize> = (0..st.attachments.len())
            .filter(|i| st.attachments[*i].selection.is_some() && !keep.contains(i))
            .collect();
        let mut used: BTreeSet<String> = st.attachments.iter().map(|a| a.ifname.clone()).collect();
        for d in &desired {
            if let Some(n) = &d.interface {
                used.insert(n.clone());
            }
        }
        let mut add = Vec::new();
        for (d, _) in desired.iter().zip(&matched).filter(|(_, m)| m.is_none()) {
            let ifname = match &d.interface {
                Some(n) => {
                    if let Some(a) = st
                        .attachments
                        .iter()
                        .enumerate()
                        .find(|(i, a)| &a.ifname == n && !remove.contains(i))
                    {
                        return Err(rejected(format!(
                            "pod \"{}\": network \"{}\" asks for interface {n:?}, which network \"{}\" uses",
                            pod.key(),
                            d.network,
                            a.1.name
                        )));
                    }
                    n.clone()
                }
                None => {
                    let n = (1..)
                        .map(|k| format!("net{k}"))
                        .find(|n| !used.contains(n))
                        .unwrap_or_default();
                    used.insert(n.clone());
                    n
                }
            };
            add.push(New {
                resolved: self.resolve_new(d, pod)?,
                sel: d.clone(),
                ifname,
            });
        }
        Ok(Edit { add, remove })
    }

    /// The configuration of a network to attach; a NAD that is missing or unreadable
    /// is a failure to add (it may appear: the edit is retried).
    fn resolve_new(
        &self,
        d: &NetworkSelection,
        pod: &PodInfo,
    ) -> std::result::Result<Resolved, HotplugError> {
        let nad: Option<Nad> = match &self.cluster {
            Some(c) => c
                .get_nad(&d.network.namespace, &d.network.name)
                .map_err(failed(Failure::Adding))?,
            None => None,
        };
        // Not the resolver's NoNetworkFound event: the failure is reported once, as
        // FailedAddingInterface, however often the edit is retried.
        if nad.is_none() {
            return Err(HotplugError {
                failure: Failure::Adding,
                error: CniError::invalid_config(format!(
                    "network \"{}\": cannot find a network-attachment-definition ({}) in namespace ({})",
                    d.network, d.network.name, d.network.namespace
                )),
            });
        };
        self.resolver()
            .nad(&d.network, Some(pod))
            .map_err(failed(Failure::Adding))
    }

    /// The device of each new attachment (device-backed NADs): the kubelet's devices of
    /// the pod that no attachment kept by the edit uses, handed out as an ADD hands
    /// them out. Too few is a refusal (the kubelet allocates devices when the pod is
    /// created: the pod must request more); a kubelet that does not answer, a failure
    /// to add (retried).
    fn new_devices(
        &self,
        st: &PodState,
        pod: &PodInfo,
        edit: &Edit,
    ) -> std::result::Result<Vec<Option<crate::devices::Device>>, HotplugError> {
        let nets: Vec<(Resolved, Option<NetworkSelection>)> = edit
            .add
            .iter()
            .map(|n| (n.resolved.clone(), Some(n.sel.clone())))
            .collect();
        if !crate::devices::needs_device(&nets) {
            return Ok(vec![None; nets.len()]);
        }
        let Some(d) = &self.devices else {
            return Err(rejected(format!(
                "pod \"{}\": a device-backed network is asked for, and no kubelet is configured to ask",
                pod.key()
            )));
        };
        let alloc = d.allocation(pod).map_err(failed(Failure::Adding))?;
        let in_use: Vec<crate::devices::Device> = st
            .attachments
            .iter()
            .enumerate()
            .filter(|(i, _)| !edit.remove.contains(i))
            .filter_map(|(_, a)| a.device.clone())
            .collect();
        crate::devices::assign(&nets, pod, &alloc, &in_use).map_err(|error| HotplugError {
            failure: Failure::Rejected,
            error,
        })
    }

    /// Attaches, then detaches, then reports. Each step is on file before its delegate
    /// runs, so a daemon killed part-way finishes or undoes it at its next start.
    fn apply(
        &self,
        rt: &Runtime,
        st: &mut PodState,
        pod: &PodInfo,
        edit: Edit,
    ) -> std::result::Result<Reconciled, HotplugError> {
        let default = st.attachments.iter().find(|a| a.is_default);
        let input_args = default
            .map(|a| CniArgs(a.cni_args.clone()))
            .unwrap_or_default();
        let default_ifname = default
            .map(|a| a.ifname.clone())
            .unwrap_or_else(|| "eth0".into());
        let input = PlanInput {
            container_id: &st.container_id.clone(),
            ifname: &default_ifname,
            args: &input_args,
            pod: Some(pod),
        };
        let devices = self.new_devices(st, pod, &edit)?;
        let r = self.resolver();
        let planned: Vec<Planned> = edit
            .add
            .into_iter()
            .zip(devices)
            .map(|(n, dev)| plan::selected_attachment(&r, &input, n.resolved, n.sel, n.ifname, dev))
            .collect::<Result<_>>()
            .map_err(|error| HotplugError {
                failure: Failure::Rejected,
                error,
            })?;
        // A new interface may take the name of one the edit removes: that one goes first.
        let (first, later): (Vec<usize>, Vec<usize>) = edit
            .remove
            .iter()
            .partition(|&&i| planned.iter().any(|p| p.ifname == st.attachments[i].ifname));
        let mut removed = self.detach(rt, st, &first)?;
        let added = self.attach(rt, st, pod, &planned)?;
        // Indices of `later` are unchanged: detach drops the attachments it removed
        // and attach appends, so shift them by what `first` dropped before them.
        let later: Vec<usize> = later
            .iter()
            .map(|&i| i - first.iter().filter(|&&f| f < i).count())
            .collect();
        removed.extend(self.detach(rt, st, &later)?);
        self.write_status(rt, st, pod)
            .map_err(failed(Failure::Adding))?;
        Ok(Reconciled::Changed { added, removed })
    }

    /// Attaches `planned` in order; on a failure the ones attached are detached again.
    fn attach(
        &self,
        rt: &Runtime,
        st: &mut PodState,
        pod: &PodInfo,
        planned: &[Planned],
    ) -> std::result::Result<Vec<String>, HotplugError> {
        if planned.is_empty() {
            return Ok(vec![]);
        }
        let base = st.attachments.len();
        for p in planned {
            let mut a = crate::add::to_state(p);
            a.pending = Some(Pending::Attach);
            st.attachments.push(a);
        }
        self.state.save(st).map_err(failed(Failure::Adding))?;
        let req = Request {
            container_id: st.container_id.clone(),
            netns: Some(st.netns.clone()),
            ifname: String::new(),
            args: CniArgs::default(),
            cni_path: st.cni_path.clone(),
        };
        let mut messages = Vec::new();
        for (k, p) in planned.iter().enumerate() {
            match self.add_one(rt, &req, &st.netns, p) {
                Ok(one) => {
                    if let Some(m) = outcome::added_message(&one) {
                        messages.push(m);
                    }
                }
                Err(e) => {
                    let e = e.context(format!("pod \"{}\": hot-plug", pod.key()));
                    // Undo this edit's attachments, the failed one included (a delegate
                    // that failed must have cleaned up, its DEL is best effort).
                    let mut undo: Vec<usize> = (base..=base + k).collect();
                    undo.reverse();
                    let mut errors = vec![];
                    for i in undo {
                        let a = st.attachments[i].clone();
                        let prev = recorded_result(rt, &st.container_id, &a);
                        if let Err(d) = del_one(rt, st, &a, prev.as_ref()) {
                            if prev.is_some() {
                                errors.push(d);
                            }
                        }
                    }
                    if errors.is_empty() {
                        st.attachments.truncate(base);
                    }
                    if let Err(s) = self.state.save(st) {
                        tracing::error!(error = %s, "hot-plug: cannot save the state after a failed attach");
                    }
                    if let Err(d) = CniError::join(errors) {
                        tracing::error!(error = %d, "hot-plug: undoing a failed attach left attachments; they are undone at the next try");
                    }
                    return Err(HotplugError {
                        failure: Failure::Adding,
                        error: e,
                    });
                }
            }
        }
        for a in &mut st.attachments[base..] {
            a.pending = None;
        }
        self.state.save(st).map_err(failed(Failure::Adding))?;
        Ok(messages)
    }

    /// Detaches the attachments at `indices` (in reverse order of attachment); one
    /// that fails stays on file, marked, and is detached again at the next try.
    fn detach(
        &self,
        rt: &Runtime,
        st: &mut PodState,
        indices: &[usize],
    ) -> std::result::Result<Vec<String>, HotplugError> {
        if indices.is_empty() {
            return Ok(vec![]);
        }
        for &i in indices {
            st.attachments[i].pending = Some(Pending::Detach);
        }
        self.state.save(st).map_err(failed(Failure::Removing))?;
        let mut gone = BTreeSet::new();
        let mut messages = Vec::new();
        let mut errors = Vec::new();
        for &i in indices.iter().rev() {
            let a = st.attachments[i].clone();
            let prev = recorded_result(rt, &st.container_id, &a);
            match del_one(rt, st, &a, prev.as_ref()) {
                Ok(()) => {
                    gone.insert(i);
                    messages.push(format!("Remove {} from {}", a.ifname, a.name));
                }
                Err(e) => errors.push(network_context(&a.name, &a.ifname)(e)),
            }
        }
        messages.reverse();
        drop_indices(st, &gone);
        self.state.save(st).map_err(failed(Failure::Removing))?;
        CniError::join(errors).map_err(failed(Failure::Removing))?;
        Ok(messages)
    }

    /// network-status from the state and the recorded results: every attachment, in order.
    fn write_status(&self, rt: &Runtime, st: &PodState, pod: &PodInfo) -> Result<()> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        c.set_network_status(pod, &status_of(rt, st))
            .map_err(|e| e.context(format!("pod \"{}\": writing network-status", pod.key())))
    }
}

/// The network-status of a container's attachments as they are on file.
pub(crate) fn status_of(rt: &Runtime, st: &PodState) -> Vec<NetworkStatus> {
    let mut out = Vec::new();
    for a in st
        .attachments
        .iter()
        .filter(|a| !a.auxiliary && a.pending.is_none())
    {
        let Some(r) = recorded_result(rt, &st.container_id, a) else {
            continue;
        };
        let wants_default_route = a
            .selection
            .as_ref()
            .is_some_and(|s| s.get("default-route").is_some());
        let device_info = a
            .device_info_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.extend(outcome::attachment_status(
            &a.name,
            a.is_default,
            &a.ifname,
            wants_default_route,
            &r.to_current(),
            device_info,
        ));
    }
    out
}

/// For each desired element, the index of the state's attachment it already has:
/// first the elements that name their interface (same network and interface), then the
/// others, in order (same network: first one made from an element without
/// `interface`, then any whose interface no element asks for by name).
fn match_elements(st: &PodState, desired: &[NetworkSelection]) -> Vec<Option<usize>> {
    let mut taken = vec![false; st.attachments.len()];
    let mut out = vec![None; desired.len()];
    let selected = |a: &AttachmentState| a.selection.is_some() && a.pending.is_none();
    for (d, sel) in desired.iter().enumerate() {
        if let Some(n) = &sel.interface {
            let net = sel.network.to_string();
            if let Some(i) = (0..st.attachments.len()).find(|&i| {
                let a = &st.attachments[i];
                !taken[i] && selected(a) && &a.ifname == n && a.name == net
            }) {
                taken[i] = true;
                out[d] = Some(i);
            }
        }
    }
    let named: BTreeSet<&str> = desired
        .iter()
        .filter_map(|s| s.interface.as_deref())
        .collect();
    for (d, sel) in desired.iter().enumerate() {
        if sel.interface.is_some() {
            continue;
        }
        let net = sel.network.to_string();
        let candidate = |unnamed_only: bool| {
            (0..st.attachments.len()).find(|&i| {
                let a = &st.attachments[i];
                let was_unnamed = a
                    .selection
                    .as_ref()
                    .is_some_and(|s| s.get("interface").is_none());
                !taken[i]
                    && selected(a)
                    && a.name == net
                    && (if unnamed_only {
                        was_unnamed
                    } else {
                        !named.contains(a.ifname.as_str())
                    })
            })
        };
        if let Some(i) = candidate(true).or_else(|| candidate(false)) {
            taken[i] = true;
            out[d] = Some(i);
        }
    }
    out
}

fn without_interface(element: &Value) -> Value {
    let mut v = element.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("interface");
    }
    v
}

fn drop_indices(st: &mut PodState, gone: &BTreeSet<usize>) {
    let mut i = 0;
    st.attachments.retain(|_| {
        let keep = !gone.contains(&i);
        i += 1;
        keep
    });
}
