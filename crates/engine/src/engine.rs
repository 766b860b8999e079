//! The operations.

use crate::cluster::{Cluster, EventType, PodInfo};
use crate::config::NetConf;
use crate::plan::{self, PlanInput, Planned};
use crate::resolve::Resolver;
use crate::routes;
use crate::state::{AttachmentState, PodState, StateStore, StateSync, STATE_VERSION};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::result::Result100;
use plexus_cni::runtime::{Attachment, Runtime, ValidAttachment};
use plexus_cni::{code, fsutil, validate, CniError, CniResult, Result};
use plexus_netns::NetNs;
use plexus_npwg::status::{self, NetworkStatus, StatusInput};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One CNI request as the engine needs it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`.
    pub cni_path: Vec<PathBuf>,
}

impl Request {
    fn pod_ref(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?,
            self.args.get("K8S_POD_NAME")?,
        ))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
    }
}

impl Request {
    /// The engine's view of a CNI request, as the plugin skeleton parsed it.
    pub fn from_cni(req: &plexus_cni::plugin::Request) -> Request {
        Request {
            container_id: req.container_id.clone(),
            netns: req.netns.as_ref().map(|p| p.display().to_string()),
            ifname: req.ifname.clone(),
            args: req.args.clone(),
            cni_path: req.path.clone(),
        }
    }
}

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

/// The engine of one request (thin mode) or of the daemon (thick mode).
pub struct Engine {
    conf: NetConf,
    cluster: Option<Arc<dyn Cluster>>,
    state: StateStore,
    exec: Option<Arc<dyn plexus_cni::exec::Exec>>,
}

struct Added {
    planned: Planned,
    result: CniResult,
    device_info: Option<Value>,
}

impl Engine {
    /// An engine for `conf`; `cluster` is `None` when neither the API nor local mode is configured.
    pub fn new(conf: NetConf, cluster: Option<Arc<dyn Cluster>>) -> Engine {
        let state = StateStore::new(&conf.cni_dir);
        Engine {
            conf,
            cluster,
            state,
            exec: None,
        }
    }

    /// Runs delegates through `exec` (the daemon's chroot executor, for example).
    pub fn with_exec(mut self, exec: Arc<dyn plexus_cni::exec::Exec>) -> Engine {
        self.exec = Some(exec);
        self
    }

    /// The state store (thin and thick mode share it).
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The configuration.
    pub fn conf(&self) -> &NetConf {
        &self.conf
    }

    fn runtime(&self, cni_path: &[PathBuf]) -> Runtime {
        let mut paths = vec![self.conf.bin_dir.clone()];
        paths.extend(
            cni_path
                .iter()
                .filter(|p| **p != self.conf.bin_dir)
                .cloned(),
        );
        let mut rt = Runtime::new(paths, Some(self.conf.cni_dir.clone()));
        rt.timeout = self.conf.delegate_timeout();
        rt.prestart_chained = self.conf.plexus.prestart_delegates;
        if let Some(e) = &self.exec {
            rt.exec = e.clone();
        }
        rt
    }

    fn resolver(&self) -> Resolver<'_> {
        Resolver {
            conf: &self.conf,
            cluster: self.cluster.as_deref(),
        }
    }

    fn wait_ready(&self) -> Result<()> {
        let f = &self.conf.readiness_indicator_file;
        if f.is_empty() {
            return Ok(());
        }
        let deadline =
            Instant::now() + Duration::from_secs(self.conf.plexus.readiness_timeout_seconds);
        loop {
            if std::path::Path::new(f).exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("the default network is not ready: readiness indicator file {f:?} does not exist"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pod(&self, req: &Request) -> Result<Option<PodInfo>> {
        let (Some(c), Some((ns, name))) = (&self.cluster, req.pod_ref()) else {
            return Ok(None);
        };
        c.get_pod(ns, name)
    }

    /// ADD: attaches the default network, then every selected network, in order; on
    /// any failure DELs what was attempted, in reverse, and leaves nothing behind.
    pub fn add(&self, req: &Request) -> Result<CniResult> {
        self.add_networks(req).map(|(r, _)| r)
    }

    /// [`Engine::add`], also returning the names of the networks attached, in order.
    pub fn add_networks(&self, req: &Request) -> Result<(CniResult, Vec<String>)> {
        validate::container_id(&req.container_id)?;
        validate::env_ifname(&req.ifname)?;
        let netns_path = req
            .netns
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| CniError::invalid_env("CNI_NETNS is required"))?;
        let netns = NetNs::open(&netns_path)
            .map_err(|e| CniError::invalid_env(format!("CNI_NETNS: {e}")))?;
        // List the interfaces already in the pod's namespace, on a thread there, while
        // the pod and its NADs are read and the plan is made; the planned names are
        // checked against the list.
        let probe = netns
            .run_ahead(|| {
                nix::net::if_::if_nameindex().map(|ifs| {
                    ifs.iter()
                        .map(|i| i.name().to_string_lossy().into_owned())
                        .collect::<HashSet<String>>()
                })
            })
            .map_err(|e| CniError::invalid_env(format!("CNI_NETNS: {e}")))?;
        self.wait_ready()?;
        let pod = self.pod(req)?;
        if let (Some((ns, name)), None, Some(_)) = (req.pod_ref(), &pod, &self.cluster) {
            // The pod is already gone: nothing will use this sandbox (Multus does the same).
            tracing::warn!(pod = %format!("{ns}/{name}"), "pod not found, returning an empty result");
            return empty_result(&self.conf.cni_version, &req.ifname, &netns_path)
                .map(|r| (r, vec![]));
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
        let input = PlanInput {
            container_id: &req.container_id,
            ifname: &req.ifname,
            args: &req.args,
            pod: pod.as_ref(),
        };
        let r = self.resolver();
        let nets = plan::networks(&r, &input)?;
        let planned = plan::attachments(&r, &input, nets, &self.conf.runtime_config)?;
        // The first delegate's process starts now, while the plan is checked and the
        // state written; it acts only once it is given its configuration (see
        // Runtime::prestart_add), and is killed if the ADD stops before.
        let rt = self.runtime(&req.cni_path);
        let ahead = self.conf.plexus.prestart_delegates;
        if let (true, Some(first)) = (ahead, planned.first()) {
            rt.prestart_add(&first.list, &planned_attachment(req, &netns_path, first));
        }
        let wanted: Vec<&Planned> = planned.iter().filter(|p| !p.auxiliary).collect();
        let mut st = PodState {
            version: STATE_VERSION,
            container_id: req.container_id.clone(),
            netns: netns_path.clone(),
            pod_namespace: pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
            pod_name: pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
            pod_uid: pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default(),
            attachments: planned.iter().map(to_state).collect(),
        };
        // Every planned attachment is on file before the first delegate runs; it reaches
        // the disk while the delegates work, and the ADD succeeds only once it has. With
        // no state on file for this container, it is written while the probe finishes in
        // the pod's namespace (and removed if the probe refuses the ADD); a state already
        // there (an ADD the runtime did not DEL) is replaced only once the probe passed,
        // so a refused ADD never loses what a DEL will need.
        let early = if self.state.path(&req.container_id)?.exists() {
            None
        } else {
            Some(self.state.save_then_sync(&st)?)
        };
        let refused = |e: CniError, early: Option<StateSync>| {
            if let Some(s) = early {
                let _ = s.wait();
                if let Err(r) = self.state.remove(&req.container_id) {
                    tracing::error!(error = %r, "cannot remove the state of a refused ADD");
                }
            }
            e
        };
        let present = probe.wait().map_err(|e| e.to_string()).and_then(|listed| {
            listed.map_err(|e| format!("listing the interfaces of {netns_path}: {e}"))
        });
        let present = match present {
            Ok(names) => names,
            Err(e) => {
                let e = CniError::invalid_env(format!("CNI_NETNS: {e}"));
                return Err(refused(e, early));
            }
        };
        let existing = wanted.iter().position(|p| present.contains(&p.ifname));
        if let Some(i) = existing {
            return Err(refused(
                CniError::invalid_config(format!(
                    "network \"{}\": interface {:?} already exists in {netns_path}",
                    wanted[i].name, wanted[i].ifname
                )),
                early,
            ));
        }
        let syncing = match early {
            Some(s) => s,
            None => self.state.save_then_sync(&st)?,
        };
        let mut added: Vec<Added> = Vec::with_capacity(planned.len());
        let early_events = match (&self.cluster, &pod) {
            (Some(c), Some(pod)) if c.posts_events_in_background() => Some((c, pod)),
            _ => None,
        };
        for i in 0..planned.len() {
            // The next delegate's process starts while this one works.
            if let (true, Some(next)) = (ahead, planned.get(i + 1)) {
                rt.prestart_add(&next.list, &planned_attachment(req, &netns_path, next));
            }
            let p = &planned[i];
            match self.add_one(&rt, req, &netns_path, p) {
                Ok(a) => {
                    st.attachments[i].result = Some(a.result.to_current_value());
                    if let (Some((c, pod)), Some((kind, reason, msg))) =
                        (early_events, added_event(&a))
                    {
                        c.event(pod, kind, &reason, &msg);
                    }
                    added.push(a);
                }
                Err(e) => return Err(self.rollback(&rt, &mut st, e)),
            }
        }
        if let Err(e) = syncing.wait() {
            return Err(self.rollback(&rt, &mut st, e));
        }
        if let Err(e) = self.finish_add(&rt, &netns, &mut st, &mut added, pod.as_ref()) {
            return Err(self.rollback(&rt, &mut st, e));
        }
        let master = added[0]
            .result
            .convert_to(&self.conf.cni_version)
            .map_err(|e| e.context("converting the default network's result"))?;
        Ok((master, added.into_iter().map(|a| a.planned.name).collect()))
    }

    fn add_one(&self, rt: &Runtime, req: &Request, netns: &str, p: &Planned) -> Result<Added> {
        let att = planned_attachment(req, netns, p);

        let ctx =
            |e: CniError| e.context(format!("network \"{}\" (interface {:?})", p.name, p.ifname));
        let result = if p.auxiliary {
            // Multus's passthru plugin heads this chain with an empty result.
            let empty = CniResult::from_value(&json!({"cniVersion": p.list.cni_version}))?;
            rt.add_list_from(&p.list, &att, Some(empty)).map_err(ctx)?
        } else {
            rt.add_list(&p.list, &att).map_err(ctx)?
        };
        verify_requests(p, &result.to_current()).map_err(ctx)?;
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

    /// default-route, the state with final results, status and events.
    fn finish_add(
        &self,
        rt: &Runtime,
        netns: &NetNs,
        st: &mut PodState,
        added: &mut [Added],
        pod: Option<&PodInfo>,
    ) -> Result<()> {
        let changed = routes::apply_default_route(
            netns,
            added
                .iter_mut()
                .map(|a| (&a.planned, &mut a.result))
                .collect(),
        )?;
        for i in changed {
            let a = &added[i];
            st.attachments[i].result = Some(a.result.to_current_value());
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
        let Some(pod) = pod else { return Ok(()) };
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let mut statuses: Vec<NetworkStatus> = Vec::new();
        for a in added.iter().filter(|a| !a.planned.auxiliary) {
            let r = a.result.to_current();
            let default_route = a
                .planned
                .selection
                .as_ref()
                .and_then(|s| s.default_route.as_ref())
                .map(|_| routes::default_gateways(&r, &a.planned.ifname));
            statuses.extend(status::entries(
                &r,
                StatusInput {
                    name: &a.planned.name,
                    is_default: a.planned.is_default,
                    ifname: &a.planned.ifname,
                    device_info: a.device_info.clone(),
                    default_route,
                },
            ));
        }
        let events: Vec<_> = if cluster.posts_events_in_background() {
            Vec::new() // recorded as each delegate succeeded
        } else {
            added.iter().filter_map(added_event).collect()
        };
        cluster
            .report_add(pod, &statuses, &events)
            .map_err(|e| e.context(format!("pod \"{}\": writing network-status", pod.key())))
    }

    fn rollback(&self, rt: &Runtime, st: &mut PodState, cause: CniError) -> CniError {
        rt.discard_prestarted();

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
    fn del_state(&self, rt: &Runtime, st: &mut PodState) -> Result<()> {
        let mut errors = Vec::new();
        let mut remaining = Vec::new();
        for a in st.attachments.iter().rev() {
            if !a.attempted {
                continue;
            }
            let prev = recorded_result(rt, &st.container_id, a);
            match self.del_one(rt, st, a, prev.as_ref()) {
                Ok(()) => {}
                // An attachment whose ADD failed had to clean up after itself (CNI §4);
                // its DEL is best effort, or a plugin that cannot DEL what it never
                // made (macvlan without its master) would wedge the pod for ever.
                Err(e) if prev.is_none() => {
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

    fn del_one(
        &self,
        rt: &Runtime,
        st: &PodState,
        a: &AttachmentState,
        prev: Option<&CniResult>,
    ) -> Result<()> {
        let ctx =
            |e: CniError| e.context(format!("network \"{}\" (interface {:?})", a.name, a.ifname));
        let list = NetworkConfigList::from_value(a.config.clone()).map_err(ctx)?;
        let netns = Some(st.netns.as_str()).filter(|n| std::path::Path::new(n).exists());
        let att = attachment(
            &st.container_id,
            netns,
            a.ifname.clone(),
            CniArgs(a.cni_args.clone()),
            a.capability_args.clone(),
        );
        rt.del_list_with(&list, &att, prev).map_err(ctx)?;
        if let Some(cache) = &rt.cache {
            cache.remove(&list.name, &st.container_id, &a.ifname)?;
        }
        if let Some(f) = &a.device_info_file {
            fsutil::remove_if_exists(f)
                .map_err(|e| CniError::io(format!("removing {}: {e}", f.display())))?;
        }
        Ok(())
    }

    /// DEL: from the local state only; every attachment in reverse, every error reported.
    /// Idempotent: with nothing known it succeeds.
    pub fn del(&self, req: &Request) -> Result<()> {
        validate::container_id(&req.container_id)?;
        validate::env_ifname(&req.ifname)?;
        if !self.conf.readiness_indicator_file.is_empty()
            && !std::path::Path::new(&self.conf.readiness_indicator_file).exists()
        {
            tracing::warn!(file = %self.conf.readiness_indicator_file, "readiness indicator file missing; deleting anyway");
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
        let mut st = match loaded {
            Some(s) => s,
            None => match self.recompute_state(req) {
                Some(s) => s,
                None => {
                    tracing::info!(container = %req.container_id, "DEL: no state and no pod; nothing to delete");
                    return self.state.remove(&req.container_id);
                }
            },
        };
        if let Some(n) = req.netns.as_ref().filter(|n| !n.is_empty()) {
            st.netns = n.clone();
        }
        self.del_state(&rt, &mut st)?;
        self.state.remove(&req.container_id)?;
        if let (Some(c), false) = (&self.cluster, st.pod_name.is_empty()) {
            c.pod_torn_down(&st.pod_namespace, &st.pod_name);
        }
        Ok(())
    }

    /// Without state (an ADD by another implementation, or state lost), the attachments
    /// are planned again from the pod, best effort.
    fn recompute_state(&self, req: &Request) -> Option<PodState> {
        let pod = self.pod(req).ok().flatten()?;
        let input = PlanInput {
            container_id: &req.container_id,
            ifname: &req.ifname,
            args: &req.args,
            pod: Some(&pod),
        };
        let r = self.resolver();
        let nets = plan::networks(&r, &input)
            .or_else(|_| r.cluster_network().map(|c| vec![(c, None)]))
            .ok()?;
        let planned = plan::attachments(&r, &input, nets, &self.conf.runtime_config).ok()?;
        let mut attachments: Vec<AttachmentState> = planned.iter().map(to_state).collect();
        attachments.iter_mut().for_each(|a| a.attempted = true);
        Some(PodState {
            version: STATE_VERSION,
            container_id: req.container_id.clone(),
            netns: req.netns.clone().unwrap_or_default(),
            pod_namespace: pod.namespace,
            pod_name: pod.name,
            pod_uid: pod.uid,
            attachments,
        })
    }

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
        let netns = req.netns.clone().unwrap_or(st.netns.clone());
        let mut errors = Vec::new();
        for a in &st.attachments {
            let ctx = |e: CniError| {
                e.context(format!("network \"{}\" (interface {:?})", a.name, a.ifname))
            };
            let run = || -> Result<()> {
                let list = NetworkConfigList::from_value(a.config.clone())?;
                let prev = recorded_result(&rt, &st.container_id, a).ok_or_else(|| {
                    CniError::new(code::UNKNOWN_CONTAINER, "no ADD result recorded")
                })?;
                if !plexus_cni::version::Version::parse(&list.cni_version)?.at_least("0.4.0") {
                    return Ok(()); // CHECK does not exist before 0.4.0.
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
                errors.push(ctx(e));
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
        let mut lists: Vec<(NetworkConfigList, Vec<ValidAttachment>)> = Vec::new();
        let mut remember = |list: NetworkConfigList, va: Option<ValidAttachment>| {
            let key = list.to_value();
            match lists.iter_mut().find(|(l, _)| l.to_value() == key) {
                Some((_, v)) => v.extend(va),
                None => lists.push((list, va.into_iter().collect())),
            }
        };
        for cid in self.state.containers()? {
            let mut st = match self.state.load(&cid) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if valid_ids.contains(cid.as_str()) {
                for a in &st.attachments {
                    if let Ok(l) = NetworkConfigList::from_value(a.config.clone()) {
                        remember(
                            l,
                            Some(ValidAttachment {
                                container_id: cid.clone(),
                                ifname: a.ifname.clone(),
                            }),
                        );
                    }
                }
                continue;
            }
            tracing::info!(container = %cid, "GC: container is not valid any more, deleting its attachments");
            for a in &st.attachments {
                if let Ok(l) = NetworkConfigList::from_value(a.config.clone()) {
                    remember(l, None);
                }
            }
            match self.del_state(&rt, &mut st) {
                Ok(()) => {
                    if let Err(e) = self.state.remove(&cid) {
                        errors.push(e);
                    }
                    if let (Some(c), false) = (&self.cluster, st.pod_name.is_empty()) {
                        c.pod_torn_down(&st.pod_namespace, &st.pod_name);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if let Ok(nets) = self.node_networks() {
            for l in nets {
                remember(l, None);
            }
        }
        for (list, valid) in &lists {
            if list.disable_gc
                || !plexus_cni::version::Version::parse(&list.cni_version)
                    .is_ok_and(|v| v.at_least("1.1.0"))
            {
                continue;
            }
            errors.extend(rt.gc_plugins(list, valid));
        }
        CniError::join(errors)
    }
}

/// An attachment's ADD result: the one in memory during an ADD (and in state files that
/// carry results), else the one in libcni's result cache of `cniDir`, where the runtime
/// put it. `None`: its ADD never completed.
fn recorded_result(rt: &Runtime, container_id: &str, a: &AttachmentState) -> Option<CniResult> {
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

fn to_state(p: &Planned) -> AttachmentState {
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
        result: None,
        device_info_file: p.device_info_file.clone(),
        auxiliary: p.auxiliary,
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

fn attachment(
    cid: &str,
    netns: Option<&str>,
    ifname: String,
    args: CniArgs,
    caps: serde_json::Map<String, Value>,
) -> Attachment {
    Attachment {
        container_id: cid.to_string(),
        netns: netns.map(str::to_string),
        ifname,
        args,
        capability_args: caps,
    }
}

/// D2: what the pod asked for is in the result, or the attachment fails.
fn verify_requests(p: &Planned, r: &Result100) -> Result<()> {
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

fn empty_result(version: &str, ifname: &str, netns: &str) -> Result<CniResult> {
    let v = json!({"cniVersion": "1.1.0", "interfaces": [{"name": ifname, "sandbox": netns}],
                   "ips": [{"address": "0.0.0.0/0", "gateway": "0.0.0.0"}]});
    CniResult::from_value(&v)?.convert_to(version)
}

trait CurrentValue {
    fn to_current_value(&self) -> Value;
}

impl CurrentValue for CniResult {
    fn to_current_value(&self) -> Value {
        CniResult::V100(self.to_current()).to_value()
    }
}

/// The `AddedInterface` event of an attachment: "Add <ifname> [<ips>] from <network>",
/// none for auxiliary plugins and for results without interfaces or addresses (Multus).
fn added_event(a: &Added) -> Option<(EventType, String, String)> {
    if a.planned.auxiliary {
        return None;
    }
    let r = a.result.to_current();
    if r.interfaces.is_empty() && r.ips.is_empty() {
        return None;
    }
    let ips: Vec<String> = r.ips.iter().map(|ip| ip.address.to_string()).collect();
    let msg = format!(
        "Add {} [{}] from {}",
        a.planned.ifname,
        ips.join(","),
        a.planned.name
    );
    Some((EventType::Normal, "AddedInterface".to_string(), msg))
}
