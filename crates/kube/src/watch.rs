//! Node-scoped caches: a watch of this node's pods (`spec.nodeName`), trimmed to what
//! Plexus reads, and a watch of the NADs. ADD reads from them; only a miss (a pod
//! created a moment ago, a NAD just written) falls back to a live GET, after a short
//! bounded wait for the watch to deliver it. The status write uses the cached
//! resourceVersion, so a steady-state ADD makes no read at all.

use crate::api::{nad_what, pod_info, to_nad, Requests};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use plexus_cni::Result;
use plexus_engine::{Cluster, EventType, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

/// The two caches and their sync state.
pub struct Caches {
    /// This node's pods.
    pub pods: Store<Pod>,
    /// All NADs.
    pub nads: Store<DynamicObject>,
    /// The pod cache has listed once.
    pub pods_synced: AtomicBool,
    /// The NAD cache has listed once.
    pub nads_synced: AtomicBool,
    nad_resource: ApiResource,
    changes: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<PodChange>>>,
}

/// A pod of this node as the watch delivered it (hot-plug follows these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodChange {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub kind: ChangeKind,
}

/// What the watch said of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Listed when the watch (re)started.
    Listed,
    /// Created or changed.
    Applied,
    /// Deleted.
    Deleted,
}

/// Drops what Plexus never reads, so memory follows the pods of this node only (of
/// the spec, `hostNetwork` stays: hot-plug refuses those pods; and `nodeName`).
fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = None;
    pod.metadata.labels = None;
    pod.spec = pod
        .spec
        .take()
        .map(|s| k8s_openapi::api::core::v1::PodSpec {
            host_network: s.host_network,
            node_name: s.node_name,
            ..Default::default()
        });
    pod.status = None;
}

impl Caches {
    /// Starts the watches on `handle`; they reconnect with back-off for ever.
    pub fn start(client: &Client, node: Option<&str>, handle: &Handle) -> Arc<Caches> {
        let nad_resource = crate::nad_resource();
        let (pods, pod_writer) = reflector::store::<Pod>();
        let nad_writer = Writer::<DynamicObject>::new(nad_resource.clone());
        let nads = nad_writer.as_reader();
        let caches = Arc::new(Caches {
            pods,
            nads,
            pods_synced: AtomicBool::new(false),
            nads_synced: AtomicBool::new(false),
            nad_resource: nad_resource.clone(),
            changes: Default::default(),
        });
        let mut pod_cfg = watcher::Config::default();
        if let Some(n) = node {
            pod_cfg = pod_cfg.fields(&format!("spec.nodeName={n}"));
        }
        let pod_api: Api<Pod> = Api::all(client.clone());
        let c = caches.clone();
        handle.spawn(async move {
            let stream = reflector::reflector(
                pod_writer,
                watcher(pod_api, pod_cfg).modify(trim).default_backoff(),
            );
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => c.pods_synced.store(true, Ordering::SeqCst),
                    Ok(watcher::Event::InitApply(p)) => c.changed(&p, ChangeKind::Listed),
                    Ok(watcher::Event::Apply(p)) => c.changed(&p, ChangeKind::Applied),
                    Ok(watcher::Event::Delete(p)) => c.changed(&p, ChangeKind::Deleted),
                    Ok(watcher::Event::Init) => {}
                    Err(e) => tracing::warn!(error = %e, "pod watch"),
                }
            }
        });
        let nad_api: Api<DynamicObject> = Api::all_with(client.clone(), &nad_resource);
        let c = caches.clone();
        handle.spawn(async move {
            let stream = reflector::reflector(
                nad_writer,
                watcher(nad_api, watcher::Config::default()).default_backoff(),
            );
            futures_util::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => c.nads_synced.store(true, Ordering::SeqCst),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "NAD watch"),
                }
            }
        });
        caches
    }

    /// The pods of this node as the watch delivers them, from now on (one receiver:
    /// a second call replaces the first).
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<PodChange> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    fn changed(&self, pod: &Pod, kind: ChangeKind) {
        if let Some(tx) = &*self.changes.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(PodChange {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                kind,
            });
        }
    }

    /// A cached pod as the engine sees it, and whether it is on the host's network.
    pub fn pod_info(&self, namespace: &str, name: &str) -> Option<(PodInfo, bool)> {
        let p = self.pod(namespace, name)?;
        let host_network = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        Some((pod_info(&p, namespace, name), host_network))
    }

    /// Both caches listed once.
    pub fn synced(&self) -> bool {
        self.pods_synced.load(Ordering::SeqCst) && self.nads_synced.load(Ordering::SeqCst)
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    fn nad(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.nads
            .get(&ObjectRef::new_with(name, self.nad_resource.clone()).within(ns))
    }
}

/// The cluster as the daemon's engine sees it.
pub struct DaemonCluster {
    /// The caches.
    pub caches: Arc<Caches>,
    /// Misses and writes, with the configured time limit and retries.
    pub api: Requests,
    /// The daemon's runtime (the engine runs on its own threads and waits on it).
    pub handle: Handle,
    /// How long a cache miss waits for the watch before a live GET.
    pub miss_wait: Duration,
    /// Record `AddedInterface` events.
    pub added_interface_events: bool,
}

impl DaemonCluster {
    /// Waits (bounded) for `probe` to find something in a cache.
    fn wait_for<T>(&self, probe: impl Fn() -> Option<T>) -> Option<T> {
        let deadline = std::time::Instant::now() + self.miss_wait;
        loop {
            if let Some(v) = probe() {
                return Some(v);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl plexus_engine::DeviceAttributes for DaemonCluster {
    fn cni_attributes(
        &self,
        node: &str,
        devices: &[plexus_engine::DraDevice],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.handle.block_on(self.api.cni_attributes(node, devices))
    }
}

impl Cluster for DaemonCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        if let Some(p) = self.wait_for(|| self.caches.pod(namespace, name)) {
            return Ok(Some(pod_info(&p, namespace, name)));
        }
        Ok(self
            .handle
            .block_on(self.api.get_pod(namespace, name))?
            .map(|p| pod_info(&p, namespace, name)))
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        match self.caches.nad(namespace, name) {
            Some(o) => to_nad(&nad_what(namespace, name), Some(&*o)),
            None => self.handle.block_on(self.api.get_nad(namespace, name)),
        }
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        // First try with the cached resourceVersion (no read); on conflict, read and retry.
        let rv = self
            .caches
            .pod(&pod.namespace, &pod.name)
            .and_then(|p| p.metadata.resource_version.clone());
        self.handle.block_on(self.api.write_status(pod, status, rv))
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        if reason == "AddedInterface" && !self.added_interface_events {
            return;
        }
        self.post_event(pod, kind, reason, message);
    }
}

impl DaemonCluster {
    /// Records an event in the background, whatever its reason (hot-plug's
    /// `AddedInterface` events are its outcome, not the ADD path's extra writes).
    pub fn post_event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        let api = self.api.clone();
        let (pod, reason, message) = (pod.clone(), reason.to_string(), message.to_string());
        // Off the request's path: the CNI answer does not wait for the event.
        self.handle.spawn(async move {
            api.post_event(&pod, kind, &reason, &message).await;
        });
    }
}

/// One request's view of the daemon's cluster: reads and the status write go straight
/// to it; the request's events are held, and posted in the background once the CNI
/// answer is on its way ([`RequestCluster::post_held`]). The runtime waits for the
/// answer, not for the events (Multus posts them asynchronously too), so their API
/// writes no longer compete with the delegates and the status write for the CPU.
pub struct RequestCluster {
    cluster: Arc<DaemonCluster>,
    held: std::sync::Mutex<Vec<HeldEvent>>,
}

struct HeldEvent {
    pod: PodInfo,
    kind: EventType,
    reason: String,
    message: String,
}

impl RequestCluster {
    /// A view for one request.
    pub fn new(cluster: Arc<DaemonCluster>) -> RequestCluster {
        RequestCluster {
            cluster,
            held: Default::default(),
        }
    }

    /// Posts the events held so far, in the background, in the order they came; it
    /// returns at once.
    pub fn post_held(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        for e in held {
            self.cluster.event(&e.pod, e.kind, &e.reason, &e.message);
        }
    }
}

impl Cluster for RequestCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        self.cluster.get_pod(namespace, name)
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        self.cluster.get_nad(namespace, name)
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.cluster.set_network_status(pod, status)
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(HeldEvent {
                pod: pod.clone(),
                kind,
                reason: reason.to_string(),
                message: message.to_string(),
            });
    }

    fn pod_torn_down(&self, namespace: &str, name: &str) {
        self.cluster.pod_torn_down(namespace, name)
    }
}
