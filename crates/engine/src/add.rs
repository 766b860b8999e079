//! ADD: admit the request, plan, write the state, run the delegates in order, apply
//! `default-route`, report; any failure after planning rolls back what was attempted.

use crate::cluster::PodInfo;
use crate::devices;
use crate::engine::{attachment, network_context, Engine, Request};
use crate::outcome::{self, Added};
use crate::plan::{self, PlanInput, Planned};
use crate::routes;
use crate::sandbox::{PendingInterfaces, Sandbox};
use crate::state::{AttachmentState, PodState, StateSync, STATE_VERSION};
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::{code, validate, CniError, CniResult, Result};
use serde_json::json;

/// A request the engine will act on: its namespace open and being listed, its pod read.
struct Admitted {
    netns: String,
    sandbox: Box<dyn Sandbox>,
    pod: Option<PodInfo>,
}

impl Engine {
    /// ADD: attaches the default network, then every selected network, in order; on
    /// any failure DELs what was attempted, in reverse, and leaves nothing behind.
    pub fn add(&self, req: &Request) -> Result<CniResult> {
        self.add_networks(req).map(|(r, _)| r)
    }

    /// [`Engine::add`], also returning the names of the networks attached, in order.
    pub fn add_networks(&self, req: &Request) -> Result<(CniResult, Vec<String>)> {
        let Some((a, present)) = self.admit(req)? else {
            return outcome::empty_result(&self.conf.cni_version, &req.ifname, netns_of(req)?)
                .map(|r| (r, vec![]));
        };
        let planned = self.plan_add(req, a.pod.as_ref())?;
        // The first delegate's process starts now, while the plan is checked and the
        // state written; it acts only once it is given its configuration (see
        // Runtime::prestart_add), and is killed if the ADD stops before.
        let rt = self.runtime(&req.cni_path);
        self.prestart(&rt, req, &a.netns, planned.first());
        let mut st = new_state(
            req,
            &a.netns,
            a.pod.as_ref(),
            &planned,
            self.source.as_ref(),
        );
        let syncing = self.save_checked(&st, &planned, &a.netns, present)?;
        let mut added = Vec::with_capacity(planned.len());
        let done = self
            .run_delegates(&rt, req, &a, &planned, &mut st, &mut added)
            .and_then(|()| syncing.wait())
            .and_then(|()| {
                self.finish_add(&rt, a.sandbox.as_ref(), &mut st, &mut added, a.pod.as_ref())
            });
        if let Err(e) = done {
            return Err(self.rollback(&rt, &mut st, e));
        }
        let master = added[0]
            .result
            .convert_to(&self.conf.cni_version)
            .map_err(|e| e.context("converting the default network's result"))?;
        Ok((master, added.into_iter().map(|a| a.planned.name).collect()))
    }

    /// Validates the environment, starts listing the pod's interfaces, waits for the
    /// default network's readiness and reads the pod. `None`: the pod is already gone
    /// (nothing will use this sandbox; Multus returns an empty result too).
    fn admit(&self, req: &Request) -> Result<Option<(Admitted, PendingInterfaces)>> {
        validate::container_id(&req.container_id)?;
        validate::env_ifname(&req.ifname)?;
        let netns = netns_of(req)?.to_string();
        let sandbox = self.sandboxes.open(&netns)?;
        // Listed on a thread in the pod's namespace while the pod and its NADs are read
        // and the plan is made; the planned names are checked against the list.
        let present = sandbox.interfaces_ahead()?;
        self.wait_ready()?;
        let pod = self.pod(req)?;
        if let (Some((ns, name)), None, Some(_)) = (req.pod_ref(), &pod, &self.cluster) {
            tracing::warn!(pod = %format!("{ns}/{name}"), "pod not found, returning an empty result");
            return Ok(None);
        }
        if let (Some(p), Some(uid)) = (&pod, req.args.get("K8S_POD_UID")) {
            if !uid.is_empty() && !p.uid.is_empty() && p.uid != uid && !p.is_static() {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!(
                        "pod \"{}\": UID mismatch: the runtime has {uid}, the API has {}",
                        p.key(),
                        p.uid
                    ),
                ));
            }
        }
        Ok(Some((
            Admitted {
                netns,
                sandbox,
                pod,
            },
            present,
        )))
    }

    /// The attachments of the pod, in order (pure planning over the resolved networks).
    pub(crate) fn plan_add(&self, req: &Request, pod: Option<&PodInfo>) -> Result<Vec<Planned>> {
        let input = PlanInput {
            container_id: &req.container_id,
            ifname: &req.ifname,
            args: &req.args,
            pod,
        };
        let r = self.resolver();
        let nets = plan::networks(&r, &input)?;
        let devices = self.devices_of(pod, &nets)?;
        plan::attachments(&r, &input, nets, devices, &self.conf.runtime_config)
    }

    /// The device of each network (none asked of the kubelet when no network needs one).
    fn devices_of(
        &self,
        pod: Option<&PodInfo>,
        nets: &[(
            crate::resolve::Resolved,
            Option<plexus_npwg::selection::NetworkSelection>,
        )],
    ) -> Result<Vec<Option<crate::devices::Device>>> {
        if !devices::needs_device(nets) {
            return Ok(vec![]);
        }
        let (Some(pod), Some(d)) = (pod, &self.devices) else {
            let Some((r, _)) = nets.iter().find(|(r, _)| r.resource_name.is_some()) else {
                return Ok(vec![]);
            };
            return Err(CniError::invalid_config(format!(
                "network \"{}\" needs a device of resource {:?}, but {}",
                r.name,
                r.resource_name.as_deref().unwrap_or_default(),
                if pod.is_none() {
                    "the request names no pod (K8S_POD_NAMESPACE, K8S_POD_NAME) to ask the kubelet about"
                } else {
                    "no kubelet is configured to ask"
                }
            )));
        };
        let alloc = d.allocation(pod)?;
        devices::assign(nets, pod, &alloc, &[])
    }

    fn prestart(&self, rt: &Runtime, req: &Request, netns: &str, p: Option<&Planned>) {
        if let (true, Some(p)) = (self.conf.plexus.prestart_delegates, p) {
            rt.prestart_add(&p.list, &planned_attachment(req, netns, p));
        }
    }

    /// Puts every planned attachment on file before the first delegate runs, and checks
    /// that none of their interfaces exists in the pod yet. The file reaches the disk
    /// while the delegates work; the ADD succeeds only once it has. With no state on
    /// file for this container, it is written while the listing finishes (and removed if
    /// the check refuses the ADD); a state already there (an ADD the runtime did not
    /// DEL) is replaced only once the check passed, so a refused ADD never loses what a
    /// DEL will need.
    fn save_checked(
        &self,
        st: &PodState,
        planned: &[Planned],
        netns: &str,
        present: PendingInterfaces,
    ) -> Result<StateSync> {
        let early = if self.state.path(&st.container_id)?.exists() {
            None
        } else {
            Some(self.state.save_then_sync(st)?)
        };
        let clash = present().and_then(|names| {
            match planned
                .iter()
                .find(|p| !p.auxiliary && names.contains(&p.ifname))
            {
                Some(p) => Err(CniError::invalid_config(format!(
                    "network \"{}\": interface {:?} already exists in {netns}",
                    p.name, p.ifname
                ))),
                None => Ok(()),
            }
        });
        match (clash, early) {
            (Ok(()), Some(s)) => Ok(s),
            (Ok(()), None) => self.state.save_then_sync(st),
            (Err(e), early) => {
                if let Some(s) = early {
                    let _ = s.wait();
                    if let Err(r) = self.state.remove(&st.container_id) {
                        tracing::error!(error = %r, "cannot remove the state of a refused ADD");
                    }
                }
                Err(e)
            }
        }
    }

    /// Each attachment in order, the next one's process started while this one works;
    /// the cluster hears of each interface as its delegate succeeds.
    fn run_delegates(
        &self,
        rt: &Runtime,
        req: &Request,
        a: &Admitted,
        planned: &[Planned],
        st: &mut PodState,
        added: &mut Vec<Added>,
    ) -> Result<()> {
        for (i, p) in planned.iter().enumerate() {
            self.prestart(rt, req, &a.netns, planned.get(i + 1));
            let one = self.add_one(rt, req, &a.netns, p).inspect_err(|e| {
                st.attachments[i].interrupted = e.interrupted;
            })?;
            st.attachments[i].result = Some(outcome::current_value(&one.result));
            if let (Some(c), Some(pod), Some(msg)) =
                (&self.cluster, &a.pod, outcome::added_message(&one))
            {
                c.interface_added(pod, &msg);
            }
            added.push(one);
        }
        Ok(())
    }

    pub(crate) fn add_one(
        &self,
        rt: &Runtime,
        req: &Request,
        netns: &str,
        p: &Planned,
    ) -> Result<Added> {
        let att = planned_attachment(req, netns, p);
        let ctx = network_context(&p.name, &p.ifname);
        self.copy_device_info(p).map_err(&ctx)?;
        let result = if p.auxiliary {
            // Multus's passthru plugin heads this chain with an empty result.
            let empty = CniResult::from_value(&json!({"cniVersion": p.list.cni_version}))?;
            rt.add_list_from(&p.list, &att, Some(empty)).map_err(&ctx)?
        } else {
            rt.add_list(&p.list, &att).map_err(&ctx)?
        };
        outcome::verify_requests(p, &result.to_current()).map_err(&ctx)?;
        let device_info = p
            .device_info_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Added {
            planned: p.clone(),
            result,
            device_info,
        })
    }

    /// device-info §4.2: the device plugin's file of the attachment's device copied to
    /// the attachment's CNI device-info file, before its delegate runs (a plugin may
    /// read or update it). A device plugin that writes no file is no error: the
    /// attachment then reports what its plugins write, if anything.
    fn copy_device_info(&self, p: &Planned) -> Result<()> {
        let (Some(d), Some(to)) = (&p.device, &p.device_info_file) else {
            return Ok(());
        };
        let Some(from) = d.plugin_info_file(&self.conf.plexus.device_plugin_info_dir) else {
            tracing::warn!(device = %d.device_id, "device ID is not a file name part: no device-info file to copy");
            return Ok(());
        };
        let bytes = match std::fs::read(&from) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %from.display(), "the device plugin wrote no device-info file");
                return Ok(());
            }
            Err(e) => {
                return Err(CniError::io(format!(
                    "reading the device plugin's device-info file {}: {e}",
                    from.display()
                )))
            }
        };
        if serde_json::from_slice::<serde_json::Value>(&bytes).map_or(true, |v| !v.is_object()) {
            return Err(CniError::invalid_config(format!(
                "the device plugin's device-info file {} is not a JSON object",
                from.display()
            )));
        }
        plexus_cni::fsutil::write_atomic(to, &bytes, 0o444, 0o755)
            .map_err(|e| CniError::io(format!("writing device-info file {}: {e}", to.display())))
    }

    /// default-route (the cached results are patched to match the kernel), then the
    /// network-status write (its failure fails the ADD).
    fn finish_add(
        &self,
        rt: &Runtime,
        sandbox: &dyn Sandbox,
        st: &mut PodState,
        added: &mut [Added],
        pod: Option<&PodInfo>,
    ) -> Result<()> {
        let changed = routes::apply_default_route(
            sandbox,
            added
                .iter_mut()
                .map(|a| (&a.planned, &mut a.result))
                .collect(),
        )?;
        for i in changed {
            let a = &added[i];
            st.attachments[i].result = Some(outcome::current_value(&a.result));
            // Keep libcni's cache in step with the kernel: DEL and CHECK read results there.
            if let Some(cache) = &rt.cache {
                if let Ok(Some(mut e)) =
                    cache.load(&a.planned.list.name, &st.container_id, &a.planned.ifname)
                {
                    e.result = Some(a.result.to_value());
                    cache.save(&e)?;
                }
            }
        }
        let (Some(pod), Some(cluster)) = (pod, &self.cluster) else {
            return Ok(());
        };
        cluster
            .report_add(pod, &outcome::network_status(added))
            .map_err(|e| e.context(format!("pod \"{}\": writing network-status", pod.key())))
    }
}

fn netns_of(req: &Request) -> Result<&str> {
    req.netns
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required"))
}

/// The state of a new ADD: every planned attachment, each counted as attempted.
fn new_state(
    req: &Request,
    netns: &str,
    pod: Option<&PodInfo>,
    planned: &[Planned],
    conf: Option<&serde_json::Value>,
) -> PodState {
    PodState {
        version: STATE_VERSION,
        container_id: req.container_id.clone(),
        netns: netns.to_string(),
        pod_namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
        pod_name: pod.map(|p| p.name.clone()).unwrap_or_default(),
        pod_uid: pod.map(|p| p.uid.clone()).unwrap_or_default(),
        attachments: planned.iter().map(to_state).collect(),
        conf: conf.cloned(),
        cni_path: if conf.is_some() {
            req.cni_path.clone()
        } else {
            vec![]
        },
        deleting: false,
    }
}

pub(crate) fn to_state(p: &Planned) -> AttachmentState {
    AttachmentState {
        name: p.name.clone(),
        ifname: p.ifname.clone(),
        config: p.list.to_value(),
        capability_args: p.capability_args.clone(),
        cni_args: p.cni_args.0.clone(),
        is_default: p.is_default,
        // Every planned attachment counts as attempted from the first write on: a DEL
        // of one that was never added must succeed anyway (CNI §2), and one write
        // before the first delegate is cheaper than one before each.
        attempted: true,
        interrupted: false,
        result: None,
        device_info_file: p.device_info_file.clone(),
        device: p.device.clone(),
        auxiliary: p.auxiliary,
        selection: p.selection.as_ref().map(|s| s.to_element()),
        pending: None,
    }
}

/// The runtime's attachment of a planned network.
fn planned_attachment(req: &Request, netns: &str, p: &Planned) -> Attachment {
    attachment(
        &req.container_id,
        Some(netns),
        p.ifname.clone(),
        p.cni_args.clone(),
        p.capability_args.clone(),
    )
}
