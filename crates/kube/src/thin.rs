//! Thin mode's cluster: one process per CNI call, a current-thread runtime of its own,
//! reads straight from the API server, every request of a call one after the other on
//! one kept-alive connection (one TCP and TLS handshake per call).

use crate::api::{pod_info, Requests};
use crate::ApiSettings;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use plexus_cni::{CniError, Result};
use plexus_engine::{Cluster, EventType, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use std::collections::HashMap;
use std::sync::Mutex;

/// A cluster reached through the API server.
pub struct KubeCluster {
    rt: tokio::runtime::Runtime,
    api: Requests,
    /// resourceVersions of the pods read, so the status write needs no second read.
    seen: Mutex<HashMap<(String, String), String>>,
    /// `AddedInterface` messages, posted while the status is written.
    added: Mutex<Vec<(PodInfo, String)>>,
}

impl KubeCluster {
    /// A client for `settings`: its runtime, the kubeconfig read and parsed (or the
    /// in-cluster configuration), the HTTP and TLS stack.
    pub fn connect(settings: &ApiSettings) -> Result<KubeCluster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::internal(format!("tokio runtime: {e}")))?;
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    CniError::invalid_config(format!("\"kubeconfig\" {path:?}: {e}"))
                })?;
                rt.block_on(Config::from_custom_kubeconfig(
                    kc,
                    &KubeConfigOptions::default(),
                ))
                .map_err(|e| CniError::invalid_config(format!("\"kubeconfig\" {path:?}: {e}")))?
            }
            None => Config::incluster().map_err(|e| {
                CniError::invalid_config(format!("in-cluster Kubernetes config: {e}"))
            })?,
        };
        settings.limit(&mut config);
        let client = {
            let _guard = rt.enter();
            Client::try_from(config)
                .map_err(|e| CniError::invalid_config(format!("Kubernetes client: {e}")))?
        };
        Ok(KubeCluster {
            rt,
            api: settings.requests(client),
            seen: Default::default(),
            added: Default::default(),
        })
    }
}

impl KubeCluster {
    /// The pod's resourceVersion as read when planning: it makes the first status write
    /// conditional without a second read.
    fn seen_version(&self, pod: &PodInfo) -> Option<String> {
        lock(&self.seen)
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl plexus_engine::DeviceAttributes for KubeCluster {
    fn cni_attributes(
        &self,
        node: &str,
        devices: &[plexus_engine::DraDevice],
    ) -> Result<Vec<Option<(String, String)>>> {
        self.rt.block_on(self.api.cni_attributes(node, devices))
    }
}

impl Cluster for KubeCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let pod = self.rt.block_on(self.api.get_pod(namespace, name))?;
        if let Some(rv) = pod
            .as_ref()
            .and_then(|p| p.metadata.resource_version.clone())
        {
            lock(&self.seen).insert((namespace.to_string(), name.to_string()), rv);
        }
        Ok(pod.map(|p| pod_info(&p, namespace, name)))
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        // One at a time on the kept connection (see `report_add`), not in parallel.
        self.rt.block_on(self.api.get_nad(namespace, name))
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.rt
            .block_on(self.api.write_status(pod, status, self.seen_version(pod)))
    }

    fn interface_added(&self, pod: &PodInfo, message: &str) {
        lock(&self.added).push((pod.clone(), message.to_string()));
    }

    fn report_add(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        // The status first, then the events, one after the other on the connection the
        // ADD's reads used: HTTP/1.1 runs one request at a time per connection, and a
        // request in parallel would open another, paying a TCP and TLS handshake (more
        // than a request on a kept connection against a real API server).
        let added = std::mem::take(&mut *lock(&self.added));
        self.rt.block_on(async {
            let written = self
                .api
                .write_status(pod, status, self.seen_version(pod))
                .await;
            for (p, msg) in &added {
                self.api
                    .post_event(p, EventType::Normal, "AddedInterface", msg)
                    .await;
            }
            written
        })
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        self.rt
            .block_on(self.api.post_event(pod, kind, reason, message));
    }
}
