//! The PodResources v1 client and the engine's [`Devices`] over it.

use crate::checkpoint;
use crate::pb::pod_resources_lister_client::PodResourcesListerClient;
use crate::pb::{GetPodResourcesRequest, ListPodResourcesRequest, PodResources};
use hyper_util::rt::TokioIo;
use plexus_cni::{code, CniError, Result};
use plexus_engine::config::PlexusConf;
use plexus_engine::{Allocation, DeviceAttributes, Devices, DraDevice, PodInfo};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The largest answer read (a `List` names every pod of the node), as Multus allows.
const MAX_MESSAGE: usize = 16 << 20;

/// Where the kubelet is and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The PodResources socket.
    pub socket: PathBuf,
    /// The device manager's checkpoint, read when the socket is absent or refuses.
    pub checkpoint: PathBuf,
    /// Time limit of the connection and of each call.
    pub timeout: Duration,
}

impl Settings {
    /// From the `plexus` keys `podResourcesSocket`, `deviceCheckpointFile`, `kubeletTimeoutMs`.
    pub fn from_conf(c: &PlexusConf) -> Settings {
        Settings {
            socket: c.pod_resources_socket.clone(),
            checkpoint: c.device_checkpoint_file.clone(),
            timeout: Duration::from_millis(c.kubelet_timeout_ms.max(1)),
        }
    }
}

/// The runtime the client's futures run on.
enum Rt {
    /// Thin mode: a current-thread runtime made on first use (never, for pods without
    /// device-backed networks).
    Own(OnceLock<tokio::runtime::Runtime>),
    /// Thick mode: the daemon's (called from its blocking threads).
    Shared(tokio::runtime::Handle),
}

/// Why the kubelet gave no answer.
enum Failure {
    /// Nothing listens on the socket (absent, refused): the checkpoint may answer.
    Unreachable(String),
    /// No answer in time.
    Timeout,
    /// The kubelet answered with an error.
    Status(tonic::Status),
}

/// The kubelet's devices for a pod, through PodResources, else the checkpoint.
pub struct KubeletDevices {
    settings: Settings,
    rt: Rt,
    /// One connection, kept (thick mode) and re-established by tonic when it drops.
    channel: Mutex<Option<Channel>>,
    /// The kubelet refused `Get` (its feature gate off, or older than 1.27): `List` only.
    get_refused: AtomicBool,
    /// What DRA drivers publish of their devices (the ResourceSlices).
    attributes: Option<Arc<dyn DeviceAttributes>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubeletDevices {
    /// A client with a runtime of its own, made on first use (thin mode).
    pub fn new(settings: Settings) -> KubeletDevices {
        KubeletDevices {
            settings,
            rt: Rt::Own(OnceLock::new()),
            channel: Mutex::new(None),
            get_refused: AtomicBool::new(false),
            attributes: None,
        }
    }

    /// Maps the pod's DRA devices to NAD resources through `attributes` (without it,
    /// DRA devices are not used).
    pub fn with_attributes(mut self, attributes: Arc<dyn DeviceAttributes>) -> KubeletDevices {
        self.attributes = Some(attributes);
        self
    }

    /// A client on `handle`'s runtime, called from blocking threads (thick mode); its
    /// connection is kept between calls.
    pub fn on(handle: tokio::runtime::Handle, settings: Settings) -> KubeletDevices {
        KubeletDevices {
            rt: Rt::Shared(handle),
            ..KubeletDevices::new(settings)
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output> {
        match &self.rt {
            Rt::Shared(h) => Ok(h.block_on(f)),
            Rt::Own(cell) => {
                if cell.get().is_none() {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| CniError::internal(format!("tokio runtime: {e}")))?;
                    let _ = cell.set(rt);
                }
                match cell.get() {
                    Some(rt) => Ok(rt.block_on(f)),
                    None => Err(CniError::internal("tokio runtime: not made")),
                }
            }
        }
    }

    /// The channel to the kubelet, made (lazily: no I/O here) on first use. Must run
    /// inside the runtime.
    fn channel(&self) -> Result<Channel> {
        let mut c = lock(&self.channel);
        if let Some(ch) = &*c {
            return Ok(ch.clone());
        }
        let socket = self.settings.socket.clone();
        // The URI is not used: every connection goes to the socket.
        let ch = Endpoint::from_static("http://kubelet")
            .connect_timeout(self.settings.timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(TokioIo::new)
                }
            }));
        *c = Some(ch.clone());
        Ok(ch)
    }

    /// The pod's resources as the kubelet reports them; `None` when it does not know
    /// the pod.
    async fn ask(
        &self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<PodResources>, Failure> {
        let ch = self.channel().map_err(|e| Failure::Unreachable(e.msg))?;
        let mut client = PodResourcesListerClient::new(ch).max_decoding_message_size(MAX_MESSAGE);
        let t = self.settings.timeout;
        if !self.get_refused.load(Ordering::Relaxed) {
            let req = GetPodResourcesRequest {
                pod_name: name.to_string(),
                pod_namespace: namespace.to_string(),
            };
            match tokio::time::timeout(t, client.get(req)).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Ok(r)) => return Ok(r.into_inner().pod_resources),
                Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                    return Err(Failure::Unreachable(s.message().to_string()))
                }
                Ok(Err(s)) => {
                    // Get is off (KubeletPodResourcesGet) or unknown to this kubelet
                    // (Unimplemented), or the pod is not known to it: List tells.
                    let refused =
                        s.code() == tonic::Code::Unimplemented || s.message().contains("disabled");
                    if refused {
                        tracing::debug!(error = %s.message(), "kubelet refuses PodResources Get: using List");
                        self.get_refused.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        match tokio::time::timeout(t, client.list(ListPodResourcesRequest {})).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Ok(r)) => Ok(r
                .into_inner()
                .pod_resources
                .into_iter()
                .find(|p| p.namespace == namespace && p.name == name)),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                Err(Failure::Unreachable(s.message().to_string()))
            }
            Ok(Err(s)) => Err(Failure::Status(s)),
        }
    }

    fn read_checkpoint(&self, pod: &PodInfo, why: &str) -> Result<Allocation> {
        let cp = &self.settings.checkpoint;
        if pod.uid.is_empty() {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "kubelet PodResources at {}: {why}; the device checkpoint is keyed by pod UID and pod \"{}\" has none",
                    self.settings.socket.display(),
                    pod.key()
                ),
            ));
        }
        let by_resource = checkpoint::read(cp, &pod.uid).map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "kubelet PodResources at {}: {why}; and {}",
                    self.settings.socket.display(),
                    e.msg
                ),
            )
        })?;
        let mut a = Allocation {
            source: format!("kubelet device checkpoint {}", cp.display()),
            ..Default::default()
        };
        for (res, ids) in by_resource {
            a.add(&res, ids);
        }
        Ok(a)
    }
}

/// The device-plugin devices of one pod's containers, by resource, and its DRA devices.
fn allocation(p: Option<PodResources>, source: String) -> (Allocation, Vec<DraDevice>) {
    let mut a = Allocation {
        source,
        ..Default::default()
    };
    let mut dra = BTreeSet::new();
    for c in p.into_iter().flat_map(|p| p.containers) {
        for d in c.devices {
            a.add(&d.resource_name, d.device_ids);
        }
        // A claim shared by several containers is reported for each.
        for r in c.dynamic_resources {
            for cr in r.claim_resources {
                dra.insert(DraDevice {
                    claim: r.claim_name.clone(),
                    driver: cr.driver_name,
                    pool: cr.pool_name,
                    device: cr.device_name,
                });
            }
        }
    }
    (a, dra.into_iter().collect())
}

impl Devices for KubeletDevices {
    fn allocation(&self, pod: &PodInfo) -> Result<Allocation> {
        let socket = &self.settings.socket;
        if !socket.exists() {
            tracing::debug!(socket = %socket.display(), "no kubelet PodResources socket: reading the device checkpoint");
            return self.read_checkpoint(pod, "no such socket");
        }
        match self.block_on(self.ask(&pod.namespace, &pod.name))? {
            Ok(p) => {
                let (mut a, dra) =
                    allocation(p, format!("kubelet PodResources at {}", socket.display()));
                if let (false, Some(attrs)) = (dra.is_empty(), &self.attributes) {
                    // DRA: the devices a driver publishes for CNI join the resource
                    // they name (Multus's attributes); the others (a GPU) are not ours.
                    let found = attrs
                        .cni_attributes(&pod.node_name, &dra)
                        .map_err(|e| e.context(format!("pod \"{}\": DRA devices", pod.key())))?;
                    for (d, attr) in dra.iter().zip(found) {
                        match attr {
                            Some((res, id)) => a.add(&res, [id]),
                            None => tracing::debug!(driver = %d.driver, pool = %d.pool, device = %d.device,
                                "DRA device without k8s.cni.cncf.io attributes: not a network device"),
                        }
                    }
                    a.source.push_str(" and the ResourceSlices of its DRA devices");
                }
                Ok(a)
            }
            Err(Failure::Unreachable(why)) => {
                tracing::warn!(socket = %socket.display(), error = %why, "kubelet PodResources unreachable: reading the device checkpoint");
                self.read_checkpoint(pod, &format!("unreachable ({why})"))
            }
            Err(Failure::Timeout) => Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "kubelet PodResources at {}: no answer within {} ms about the devices of pod \"{}\"",
                    socket.display(),
                    self.settings.timeout.as_millis(),
                    pod.key()
                ),
            )),
            Err(Failure::Status(s)) => Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "kubelet PodResources at {}: {:?}: {}",
                    socket.display(),
                    s.code(),
                    s.message()
                ),
            )),
        }
    }
}
