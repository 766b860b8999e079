//! The engine: its configuration, its seams (cluster, executor, namespaces), and what
//! every operation shares. The operations live in `add`, `teardown` and `inspect`.

use crate::cluster::{Cluster, PodInfo};
use crate::config::NetConf;
use crate::devices::Devices;
use crate::resolve::Resolver;
use crate::sandbox::{KernelSandboxes, Sandboxes};
use crate::state::StateStore;
use plexus_cni::args::CniArgs;
use plexus_cni::exec::Exec;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::{code, CniError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
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

    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME`, when both are set.
    pub(crate) fn pod_ref(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?,
            self.args.get("K8S_POD_NAME")?,
        ))
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
    }
}

/// The engine of one request (thin mode) or of the daemon (thick mode).
pub struct Engine {
    pub(crate) conf: NetConf,
    pub(crate) cluster: Option<Arc<dyn Cluster>>,
    pub(crate) state: StateStore,
    exec: Option<Arc<dyn Exec>>,
    pub(crate) sandboxes: Arc<dyn Sandboxes>,
    /// The configuration as the runtime gave it, kept in the state for hot-plug.
    pub(crate) source: Option<Value>,
    /// The kubelet, asked for the devices of device-backed networks.
    pub(crate) devices: Option<Arc<dyn Devices>>,
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
            sandboxes: Arc::new(KernelSandboxes),
            source: None,
            devices: None,
        }
    }

    /// Asks `devices` (the kubelet) for the devices of NADs with a `resourceName`.
    pub fn with_devices(mut self, devices: Arc<dyn Devices>) -> Engine {
        self.devices = Some(devices);
        self
    }

    /// Keeps `config` (the configuration this engine was parsed from) in each ADD's
    /// state, without its per-request keys, so that the daemon can hot-plug networks
    /// into the pod later with the configuration it was added with.
    pub fn keeping_config(mut self, config: &[u8]) -> Engine {
        if let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(config) {
            for k in ["runtimeConfig", "prevResult", "args"] {
                m.remove(k);
            }
            self.source = Some(Value::Object(m));
        }
        self
    }

    /// Runs delegates through `exec` (the daemon's chroot executor, for example).
    pub fn with_exec(mut self, exec: Arc<dyn Exec>) -> Engine {
        self.exec = Some(exec);
        self
    }

    /// Reaches pods' namespaces through `sandboxes` instead of the kernel's (tests).
    pub fn with_sandboxes(mut self, sandboxes: Arc<dyn Sandboxes>) -> Engine {
        self.sandboxes = sandboxes;
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

    /// The delegates' runtime: `binDir` first, then `CNI_PATH`; libcni's cache in `cniDir`.
    pub(crate) fn runtime(&self, cni_path: &[PathBuf]) -> Runtime {
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

    pub(crate) fn resolver(&self) -> Resolver<'_> {
        Resolver {
            conf: &self.conf,
            cluster: self.cluster.as_deref(),
        }
    }

    /// Waits (bounded) for `readinessindicatorfile`; code 11 when it never comes.
    pub(crate) fn wait_ready(&self) -> Result<()> {
        let f = &self.conf.readiness_indicator_file;
        if f.is_empty() {
            return Ok(());
        }
        let deadline =
            Instant::now() + Duration::from_secs(self.conf.plexus.readiness_timeout_seconds);
        loop {
            if Path::new(f).exists() {
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

    /// The request's pod, `None` without a cluster or pod reference, or when it is gone.
    pub(crate) fn pod(&self, req: &Request) -> Result<Option<PodInfo>> {
        let (Some(c), Some((ns, name))) = (&self.cluster, req.pod_ref()) else {
            return Ok(None);
        };
        c.get_pod(ns, name)
    }

    /// Tells the cluster a pod's attachments are gone (after DEL or GC).
    pub(crate) fn torn_down(&self, namespace: &str, name: &str) {
        if let (Some(c), false) = (&self.cluster, name.is_empty()) {
            c.pod_torn_down(namespace, name);
        }
    }
}

/// The runtime's attachment of one interface.
pub(crate) fn attachment(
    cid: &str,
    netns: Option<&str>,
    ifname: String,
    args: CniArgs,
    caps: Map<String, Value>,
) -> Attachment {
    Attachment {
        container_id: cid.to_string(),
        netns: netns.map(str::to_string),
        ifname,
        args,
        capability_args: caps,
    }
}

/// The context every error of one attachment carries.
pub(crate) fn network_context(name: &str, ifname: &str) -> impl Fn(CniError) -> CniError {
    let what = format!("network \"{name}\" (interface {ifname:?})");
    move |e| e.context(what.clone())
}
