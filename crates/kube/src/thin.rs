//! Thin mode's cluster: one process per CNI call, a current-thread runtime of its own,
//! reads straight from the API server.

use crate::api::{nad_what, pod_info, to_nad, Requests};
use crate::{nad_resource, ApiSettings};
use kube::api::{Api, DynamicObject};
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
    /// NADs read together ahead of use (`None`: it does not exist).
    prefetched: Mutex<HashMap<(String, String), Option<Nad>>>,
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
            prefetched: Default::default(),
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
        let key = (namespace.to_string(), name.to_string());
        if let Some(known) = lock(&self.prefetched).get(&key).cloned() {
            return Ok(known);
        }
        self.rt.block_on(self.api.get_nad(namespace, name))
    }

    fn prefetch_nads(&self, nads: &[(String, String)]) {
        // HTTP/1.1: requests in parallel take a connection each; worth it for several NADs.
        let mut wanted: Vec<(String, String)> = nads.to_vec();
        wanted.sort();
        wanted.dedup();
        let got = self
            .rt
            .block_on(futures_util::future::join_all(wanted.iter().map(
                |(ns, name)| {
                    let api: Api<DynamicObject> =
                        Api::namespaced_with(self.api.client.clone(), ns, &nad_resource());
                    async move { tokio::time::timeout(self.api.timeout, api.get_opt(name)).await }
                },
            )));
        let mut prefetched = lock(&self.prefetched);
        for ((ns, name), r) in wanted.into_iter().zip(got) {
            // Failures are left to `get_nad`, with its retries and errors.
            if let Ok(Ok(obj)) = r {
                if let Ok(nad) = to_nad(&nad_what(&ns, &name), obj.as_ref()) {
                    prefetched.insert((ns, name), nad);
                }
            }
        }
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        self.rt
            .block_on(self.api.write_status(pod, status, self.seen_version(pod)))
    }

    fn interface_added(&self, pod: &PodInfo, message: &str) {
        lock(&self.added).push((pod.clone(), message.to_string()));
    }

    fn report_add(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        // The events go out while the status is written, on the same runtime.
        let added = std::mem::take(&mut *lock(&self.added));
        let posts = futures_util::future::join_all(added.iter().map(|(p, msg)| {
            self.api
                .post_event(p, EventType::Normal, "AddedInterface", msg)
        }));
        let write = self.api.write_status(pod, status, self.seen_version(pod));
        let (written, _) = self.rt.block_on(futures_util::future::join(write, posts));
        written
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        self.rt
            .block_on(self.api.post_event(pod, kind, reason, message));
    }
}
