//! The Kubernetes side of Plexus, with kube-rs: the pod, its NADs, the network-status
//! annotation (written to `pods/status` with conflict retry) and pod events.
//!
//! Every request has a time limit and transient failures (connection errors, 429,
//! 5xx) are retried with back-off, both configurable (`plexus.apiTimeoutMs`,
//! `plexus.apiRetries`): Multus's hard-coded 250 ms per try fails on slow clusters.

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use plexus_cni::{code, CniError, Result};
use plexus_engine::{Cluster, EventType, NetConf, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use serde_json::json;
use std::future::Future;
use std::time::Duration;

mod lazy;
pub use lazy::LazyKubeCluster;

/// The NAD kind.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// A cluster reached through the API server.
pub struct KubeCluster {
    rt: tokio::runtime::Runtime,
    client: Client,
    timeout: Duration,
    retries: u32,
    /// resourceVersions of the pods read, so the status write needs no second read.
    seen: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    /// NADs read together ahead of use (`None`: it does not exist).
    prefetched: std::sync::Mutex<std::collections::HashMap<(String, String), Option<Nad>>>,
}

fn api_error(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("{what}: Kubernetes API: {e}"),
    )
}

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_code(e: &kube::Error, c: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == c)
}

/// How the plugin configuration reaches the API: its `kubeconfig`, else the in-cluster
/// configuration; the time limit and the tries per request.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    kubeconfig: Option<String>,
    timeout: Duration,
    retries: u32,
}

impl ApiSettings {
    /// `None` when the configuration reaches no Kubernetes API: no `kubeconfig` and no
    /// `KUBERNETES_SERVICE_HOST`.
    pub fn of(conf: &NetConf) -> Option<ApiSettings> {
        let kubeconfig = conf.kubeconfig.clone().filter(|k| !k.is_empty());
        (kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()).then(|| {
            ApiSettings {
                kubeconfig,
                timeout: Duration::from_millis(conf.plexus.api_timeout_ms.max(1)),
                retries: conf.plexus.api_retries,
            }
        })
    }
}

impl KubeCluster {
    /// A client for `settings`: its runtime, the kubeconfig read and parsed (or the
    /// in-cluster configuration), the HTTP and TLS stack.
    pub fn connect(settings: &ApiSettings) -> Result<KubeCluster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::internal(format!("tokio runtime: {e}")))?;
        let config = match &settings.kubeconfig {
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
        Self::from_config(config, rt, settings.timeout, settings.retries)
    }

    fn from_config(
        mut config: Config,
        rt: tokio::runtime::Runtime,
        timeout: Duration,
        retries: u32,
    ) -> Result<KubeCluster> {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = {
            let _guard = rt.enter();
            Client::try_from(config)
                .map_err(|e| CniError::invalid_config(format!("Kubernetes client: {e}")))?
        };
        Ok(KubeCluster {
            rt,
            client,
            timeout,
            retries,
            seen: Default::default(),
            prefetched: Default::default(),
        })
    }

    /// Runs `f` with a time limit, retrying transient failures with back-off.
    fn call<T, F, Fut>(&self, what: &str, f: F) -> std::result::Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, kube::Error>>,
    {
        self.rt.block_on(async {
            let mut attempt = 0;
            loop {
                let r = match tokio::time::timeout(self.timeout, f()).await {
                    Ok(r) => r,
                    Err(_) => Err(kube::Error::Service(format!("{what}: no answer within {:?}", self.timeout).into())),
                };
                match r {
                    Err(e) if transient(&e) && attempt + 1 < self.retries.max(1) => {
                        attempt += 1;
                        let backoff = Duration::from_millis(100u64 << attempt.min(5));
                        tracing::warn!(error = %e, attempt, "{what}: transient API failure, retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                    }
                    other => return other,
                }
            }
        })
    }
}

impl Cluster for KubeCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("pod \"{namespace}/{name}\"");
        let pod = self
            .call(&what, || api.get_opt(name))
            .map_err(|e| api_error(&what, e))?;
        if let Some(rv) = pod
            .as_ref()
            .and_then(|p| p.metadata.resource_version.clone())
        {
            if let Ok(mut seen) = self.seen.lock() {
                seen.insert((namespace.to_string(), name.to_string()), rv);
            }
        }
        Ok(pod.map(|p| PodInfo {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: p.metadata.uid.unwrap_or_default(),
            annotations: p.metadata.annotations.unwrap_or_default(),
        }))
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(known) = self
            .prefetched
            .lock()
            .ok()
            .and_then(|p| p.get(&key).cloned())
        {
            return Ok(known);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &nad_resource());
        let what = nad_what(namespace, name);
        let obj = self
            .call(&what, || api.get_opt(name))
            .map_err(|e| api_error(&what, e))?;
        to_nad(&what, obj)
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
                        Api::namespaced_with(self.client.clone(), ns, &nad_resource());
                    async move { tokio::time::timeout(self.timeout, api.get_opt(name)).await }
                },
            )));
        let Ok(mut prefetched) = self.prefetched.lock() else {
            return;
        };
        for ((ns, name), r) in wanted.into_iter().zip(got) {
            // Failures are left to `get_nad`, with its retries and errors.
            if let Ok(Ok(obj)) = r {
                if let Ok(nad) = to_nad(&nad_what(&ns, &name), obj) {
                    prefetched.insert((ns, name), nad);
                }
            }
        }
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let what = format!("pod \"{}\" status", pod.key());
        // The version read when planning makes the first write conditional without a
        // second read.
        let rv = self
            .seen
            .lock()
            .ok()
            .and_then(|s| s.get(&(pod.namespace.clone(), pod.name.clone())).cloned());
        let pp = PatchParams::default();
        write_status_with_retry(
            pod,
            status,
            rv,
            || self.call(&what, || api.get_opt(&pod.name)),
            |patch| {
                let merge = Patch::Merge(patch);
                self.call(&what, || api.patch_status(&pod.name, &pp, &merge))
                    .map(|_| ())
            },
        )
    }

    fn events(&self, pod: &PodInfo, events: &[(EventType, String, String)]) {
        let posts = self.spawn_events(pod, events);
        self.wait_events(pod, posts);
    }

    fn report_add(
        &self,
        pod: &PodInfo,
        status: &[NetworkStatus],
        events: &[(EventType, String, String)],
    ) -> Result<()> {
        // The events go out while the status is written: the status write's block_on
        // drives the spawned posts on this runtime too.
        let posts = self.spawn_events(pod, events);
        let written = self.set_network_status(pod, status);
        self.wait_events(pod, posts);
        written
    }

    fn event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        let ev = event_object(pod, kind, reason, message);
        let pp = PostParams::default();
        if let Err(e) = self.call("event", || api.create(&pp, &ev)) {
            tracing::warn!(error = %e, pod = %pod.key(), reason, "cannot record event");
        }
    }
}

fn nad_what(namespace: &str, name: &str) -> String {
    format!("NetworkAttachmentDefinition \"{namespace}/{name}\"")
}

fn to_nad(what: &str, obj: Option<DynamicObject>) -> Result<Option<Nad>> {
    match obj {
        None => Ok(None),
        Some(o) => {
            let v =
                serde_json::to_value(&o).map_err(|e| CniError::decode(format!("{what}: {e}")))?;
            Nad::from_object(&v).map(Some)
        }
    }
}

type EventPost = tokio::task::JoinHandle<
    std::result::Result<std::result::Result<Event, kube::Error>, tokio::time::error::Elapsed>,
>;

impl KubeCluster {
    /// Starts posting all of a pod's events at once (they run while this runtime is
    /// driven, by [`KubeCluster::wait_events`] or any other call).
    fn spawn_events(
        &self,
        pod: &PodInfo,
        events: &[(EventType, String, String)],
    ) -> Vec<EventPost> {
        events
            .iter()
            .map(|(k, r, m)| {
                let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
                let ev = event_object(pod, *k, r, m);
                let limit = self.timeout;
                self.rt.spawn(async move {
                    tokio::time::timeout(limit, api.create(&PostParams::default(), &ev)).await
                })
            })
            .collect()
    }

    /// Waits for the posts (each has its time limit); failures are logged, never returned.
    fn wait_events(&self, pod: &PodInfo, posts: Vec<EventPost>) {
        for r in self.rt.block_on(futures_util::future::join_all(posts)) {
            match r {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, pod = %pod.key(), "cannot record event")
                }
                Ok(Err(_)) => tracing::warn!(pod = %pod.key(), "event not recorded in time"),
                Err(e) => tracing::warn!(error = %e, pod = %pod.key(), "event task failed"),
            }
        }
    }
}

/// The core/v1 Event Plexus records on a pod.
pub fn event_object(pod: &PodInfo, kind: EventType, reason: &str, message: &str) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", pod.name)),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(kind.as_str().into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("plexus".into()),
            host: None,
        }),
        reporting_component: Some("plexus".into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// Writes the network-status annotation with a merge patch on `pods/status`, made
/// conditional by `rv` (the resourceVersion the caller last saw; `None` writes
/// unconditionally). On 409 Conflict the pod is read again and the write retried, at
/// most 5 times; a pod that is gone is not an error. Thin mode and the daemon differ
/// only in how they `read` and `patch`.
pub fn write_status_with_retry(
    pod: &PodInfo,
    status: &[NetworkStatus],
    mut rv: Option<String>,
    mut read: impl FnMut() -> std::result::Result<Option<Pod>, kube::Error>,
    mut patch: impl FnMut(&serde_json::Value) -> std::result::Result<(), kube::Error>,
) -> Result<()> {
    let what = format!("pod \"{}\" status", pod.key());
    let value =
        serde_json::to_string_pretty(status).map_err(|e| CniError::internal(e.to_string()))?;
    for _ in 0..5 {
        let body = json!({"metadata": {"resourceVersion": rv.take(),
                                      "annotations": {plexus_npwg::STATUS_ANNOTATION: value}}});
        match patch(&body) {
            Ok(()) => return Ok(()),
            Err(e) if is_code(&e, 409) => match read().map_err(|e| api_error(&what, e))? {
                Some(current) => rv = current.metadata.resource_version,
                None => return Ok(()),
            },
            Err(e) if is_code(&e, 404) => return Ok(()),
            Err(e) => return Err(api_error(&what, e)),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        format!("{what}: conflicting updates, gave up after 5 attempts"),
    ))
}
