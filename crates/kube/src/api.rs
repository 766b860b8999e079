//! The requests both modes make, in one place: each with the time limit and the
//! retries of transient failures (`plexus.apiTimeoutMs`, `plexus.apiRetries`), the
//! mapping of API objects to the engine's, and of API errors to CNI errors.

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use plexus_cni::{code, CniError, Result};
use plexus_engine::{EventType, PodInfo};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use serde_json::json;
use std::future::Future;
use std::time::Duration;

/// The NAD kind.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// A failed API request as a CNI error: code 11, the runtime tries again later.
pub(crate) fn api_error(what: &str, e: impl std::fmt::Display) -> CniError {
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

/// `name` read with `resourceVersion=0` (any version the API server has at hand),
/// `None` when it is not found.
async fn cached<K>(api: &Api<K>, name: &str) -> std::result::Result<Option<K>, kube::Error>
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_with(name, &kube::api::GetParams::any()).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The engine's view of a pod object.
pub(crate) fn pod_info(p: &Pod, namespace: &str, name: &str) -> PodInfo {
    PodInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        annotations: p.metadata.annotations.clone().unwrap_or_default(),
        origin: plexus_engine::PodOrigin::Api,
        node_name: p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
    }
}

pub(crate) fn nad_what(namespace: &str, name: &str) -> String {
    format!("NetworkAttachmentDefinition \"{namespace}/{name}\"")
}

/// The engine's view of a NAD object.
pub(crate) fn to_nad(what: &str, obj: Option<&DynamicObject>) -> Result<Option<Nad>> {
    match obj {
        None => Ok(None),
        Some(o) => {
            let v =
                serde_json::to_value(o).map_err(|e| CniError::decode(format!("{what}: {e}")))?;
            Nad::from_object(&v).map(Some)
        }
    }
}

/// The client with the limits every request gets.
#[derive(Clone)]
pub struct Requests {
    /// The client.
    pub client: Client,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Attempts of a request that fails transiently (at least one).
    pub retries: u32,
}

impl Requests {
    /// Runs `f` with the time limit, retrying transient failures with back-off.
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> std::result::Result<T, kube::Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, kube::Error>>,
    {
        let mut attempt = 0;
        loop {
            let r = match tokio::time::timeout(self.timeout, f()).await {
                Ok(r) => r,
                Err(_) => Err(kube::Error::Service(
                    format!("{what}: no answer within {:?}", self.timeout).into(),
                )),
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
    }

    /// `name` through `api`, `None` when it does not exist. With `cache_first`, first
    /// as the API server's watch cache has it (`resourceVersion=0`: no read from etcd,
    /// as an informer's copy), and from storage only when the cache does not have it
    /// (another API server's cache a few milliseconds behind).
    async fn read<K>(
        &self,
        api: &Api<K>,
        what: &str,
        name: &str,
        cache_first: bool,
    ) -> Result<Option<K>>
    where
        K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if cache_first {
            let hit = self
                .call(what, || cached(api, name))
                .await
                .map_err(|e| api_error(what, e))?;
            if hit.is_some() {
                return Ok(hit);
            }
        }
        self.call(what, || api.get_opt(name))
            .await
            .map_err(|e| api_error(what, e))
    }

    /// The pod object, `None` when it does not exist.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        self.pod(namespace, name, false).await
    }

    /// The pod as the API server's watch cache has it, else from storage (see `read`).
    /// Thin mode reads this way, with the consistency thick mode has from its watch.
    pub async fn get_pod_cached(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        self.pod(namespace, name, true).await
    }

    async fn pod(&self, namespace: &str, name: &str, cache_first: bool) -> Result<Option<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("pod \"{namespace}/{name}\"");
        self.read(&api, &what, name, cache_first).await
    }

    /// The NAD, `None` when it does not exist.
    pub async fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        self.nad(namespace, name, false).await
    }

    /// The NAD as the watch cache has it, else from storage (see `read`).
    pub async fn get_nad_cached(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        self.nad(namespace, name, true).await
    }

    async fn nad(&self, namespace: &str, name: &str, cache_first: bool) -> Result<Option<Nad>> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &nad_resource());
        let what = nad_what(namespace, name);
        let obj = self.read(&api, &what, name, cache_first).await?;
        to_nad(&what, obj.as_ref())
    }

    /// Writes the network-status annotation with a merge patch on `pods/status`, made
    /// conditional by `rv` (the resourceVersion the caller last saw; `None` writes
    /// unconditionally). On 409 Conflict the pod is read again and the write retried,
    /// at most 5 times; a pod that is gone is not an error.
    pub async fn write_status(
        &self,
        pod: &PodInfo,
        status: &[NetworkStatus],
        mut rv: Option<String>,
    ) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let what = format!("pod \"{}\" status", pod.key());
        let value =
            serde_json::to_string_pretty(status).map_err(|e| CniError::internal(e.to_string()))?;
        let pp = PatchParams::default();
        for _ in 0..5 {
            let body = json!({"metadata": {"resourceVersion": rv.take(),
                                          "annotations": {plexus_npwg::STATUS_ANNOTATION: &value}}});
            let merge = Patch::Merge(&body);
            match self
                .call(&what, || api.patch_status(&pod.name, &pp, &merge))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_code(&e, 409) => {
                    match self.get_pod(&pod.namespace, &pod.name).await? {
                        Some(current) => rv = current.metadata.resource_version,
                        None => return Ok(()),
                    }
                }
                Err(e) if is_code(&e, 404) => return Ok(()),
                Err(e) => return Err(api_error(&what, e)),
            }
        }
        Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{what}: conflicting updates, gave up after 5 attempts"),
        ))
    }

    /// Records an event on the pod; a failure is logged, never returned.
    pub async fn post_event(&self, pod: &PodInfo, kind: EventType, reason: &str, message: &str) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        let ev = event_object(pod, kind, reason, message);
        let pp = PostParams::default();
        if let Err(e) = self.call("event", || api.create(&pp, &ev)).await {
            tracing::warn!(error = %e, pod = %pod.key(), reason, "cannot record event");
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
