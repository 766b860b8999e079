//! The unix-socket API, with Multus's endpoints and bodies (the types are in
//! plexus-proto): `POST /cni`, `POST /delegate` (one network, for hot-plug
//! controllers), `/healthz`, `/readyz`. CNI errors cross with their code: 400 and the
//! CNI error object.

// Handler helpers return the HTTP answer as their error; it is built once per request.
#![allow(clippy::result_large_err)]

use crate::config::DaemonConfig;
use crate::metrics::{ErrorLabels, Metrics, NetworkLabels, RequestLabels};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use plexus_cni::plugin::{answer, Answer, Plugin, Reply, Request};
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::{code, CniError, CniResult};
use plexus_engine::local::LocalCluster;
use plexus_engine::{Cluster, Engine, NetConf};
use plexus_kube::watch::{DaemonCluster, RequestCluster};
use plexus_kubelet::{KubeletDevices, Settings};
use plexus_proto::{AddReply, CniRequest};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// What every request shares.
pub struct AppState {
    /// The daemon configuration.
    pub cfg: Arc<DaemonConfig>,
    /// The cluster (caches + client), when Kubernetes is configured.
    pub cluster: Option<Arc<DaemonCluster>>,
    /// How delegates are executed.
    pub exec: Option<Arc<dyn plexus_cni::exec::Exec>>,
    /// `/readyz` answer.
    pub ready: AtomicBool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Bounds the CNI requests executed at once.
    pub limiter: Semaphore,
    /// One request or hot-plug at a time per container.
    pub locks: crate::hotplug::ContainerLocks,
    /// Tells hot-plug of finished ADDs (when it runs).
    pub adds: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::hotplug::AddDone>>,
    /// The kubelet's PodResources client, its connection kept between requests.
    pub kubelet: std::sync::Mutex<Option<Arc<KubeletDevices>>>,
}

impl AppState {
    /// The kubelet client for `settings` (the requests' configuration names them): the
    /// one kept, or a new one kept in its place. Called on the runtime's threads.
    pub(crate) fn kubelet(&self, settings: Settings) -> Option<Arc<KubeletDevices>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let mut k = self.kubelet.lock().unwrap_or_else(|p| p.into_inner());
        match &*k {
            Some(c) if *c.settings() == settings => Some(c.clone()),
            _ => {
                let mut c = KubeletDevices::on(handle, settings);
                if let Some(cluster) = &self.cluster {
                    // DRA devices are mapped to NADs through the API's ResourceSlices.
                    c = c.with_attributes(cluster.clone());
                }
                let c = Arc::new(c);
                *k = Some(c.clone());
                Some(c)
            }
        }
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(plexus_proto::CNI_PATH, any(cni))
        .route(plexus_proto::DELEGATE_PATH, any(delegate))
        .route("/healthz", any(|| async { (StatusCode::OK, "ok") }))
        .route("/readyz", any(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "not ready").into_response()
    }
}

fn cni_error(status: StatusCode, e: &CniError) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.to_json(plexus_cni::version::CURRENT),
    )
        .into_response()
}

async fn read_body(st: &AppState, method: &Method, body: Body) -> Result<CniRequest, Response> {
    if method != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response());
    }
    let bytes = match tokio::time::timeout(
        st.cfg.request_read_timeout,
        read_limited(body, st.cfg.max_body_bytes),
    )
    .await
    {
        Err(_) => {
            return Err(cni_error(
                StatusCode::REQUEST_TIMEOUT,
                &CniError::io("request body not received in time"),
            ))
        }
        Ok(Err(Some(seen))) => {
            // Code 7, not 11: the same request would be refused again.
            return Err(cni_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &CniError::invalid_config(format!(
                    "the request is larger than the daemon accepts (plexus.maxRequestBytes = {} bytes; {seen} bytes or more sent)",
                    st.cfg.max_body_bytes
                )),
            ));
        }
        Ok(Err(None)) => {
            return Err(cni_error(
                StatusCode::BAD_REQUEST,
                &CniError::io("the request body could not be read"),
            ))
        }
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice::<CniRequest>(&bytes).map_err(|e| {
        cni_error(
            StatusCode::BAD_REQUEST,
            &CniError::decode(format!(
                "request is not {{\"env\": {{...}}, \"config\": \"<base64>\"}}: {e}"
            )),
        )
    })
}

/// The body, at most `limit` bytes. A larger one is read to its end (up to 16 MiB) and
/// dropped, `Err(Some(bytes seen))`: closed with the request unread, the socket would
/// reset, and the client might never read the answer that says why. `Err(None)`: the
/// body broke off.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, Option<usize>> {
    use futures_util::StreamExt;
    const DRAIN_MAX: usize = 16 << 20;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| None)?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_MAX {
            break;
        }
    }
    if seen > limit {
        return Err(Some(seen));
    }
    Ok(buf)
}

fn decode_config(st: &AppState, req: &CniRequest) -> Result<Vec<u8>, Response> {
    let bad = |e: String| cni_error(StatusCode::BAD_REQUEST, &CniError::decode(e));
    st.cfg
        .overlay(&req.config_bytes().map_err(bad)?)
        .map_err(bad)
}

async fn cni(State(st): State<Arc<AppState>>, method: Method, body: Body) -> Response {
    if !st.ready.load(Ordering::SeqCst) {
        // Nothing handled: the shim waits and sends the request again.
        return cni_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &CniError::new(code::TRY_AGAIN_LATER, "plexus daemon not ready"),
        );
    }
    let req = match read_body(&st, &method, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let stdin = match decode_config(&st, &req) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let command = req.var("CNI_COMMAND").to_string();
    let started = Instant::now();
    st.metrics.in_flight.inc();
    let permit = st.limiter.acquire().await;
    let st2 = st.clone();
    let env: HashMap<String, String> = req.env.into_iter().collect();
    let cluster = st.cluster.clone().map(|c| Arc::new(RequestCluster::new(c)));
    let view = cluster.clone();
    let outcome = blocking(move || run_cni(&st2, view, &env, &stdin)).await;
    drop(permit);
    st.metrics.in_flight.dec();
    let answer = respond(&st, "/cni", &command, started, outcome);
    // The request's events go out while the answer is written, not before it.
    if let Some(c) = cluster {
        c.post_held();
    }
    answer
}

/// Runs a request's blocking work (the engine waits on delegates and on API calls).
/// On the multi-thread runtime it runs right here: `block_in_place` hands this worker's
/// other tasks to another thread, so the request is not passed to a blocking thread and
/// back (two thread wake-ups on its path). A panic becomes an error answer.
async fn blocking(work: impl FnOnce() -> Answer + Send + 'static) -> Answer {
    let failed = |msg: String| Answer {
        reply: Err(CniError::internal(msg)),
        cni_version: plexus_cni::version::CURRENT.into(),
    };
    let guarded = move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|p| {
            failed(format!(
                "request panicked: {}",
                plexus_cni::plugin::panic_message(p.as_ref())
            ))
        })
    };
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(guarded),
        _ => tokio::task::spawn_blocking(guarded)
            .await
            .unwrap_or_else(|e| failed(format!("request task failed: {e}"))),
    }
}

fn respond(
    st: &AppState,
    handler: &str,
    command: &str,
    started: Instant,
    answer: Answer,
) -> Response {
    let labels = RequestLabels {
        handler: handler.into(),
        command: command.into(),
        result: if answer.reply.is_ok() { "ok" } else { "error" }.into(),
    };
    st.metrics.requests.get_or_create(&labels).inc();
    st.metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let json = [(header::CONTENT_TYPE, "application/json")];
    match answer.reply {
        Err(e) => {
            st.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    command: command.into(),
                    code: e.code.to_string(),
                })
                .inc();
            (
                StatusCode::BAD_REQUEST,
                json,
                e.to_json(&answer.cni_version),
            )
                .into_response()
        }
        Ok(Reply::Result(r)) => {
            let body = serde_json::to_vec(&AddReply {
                result: r.to_value(),
            })
            .unwrap_or_default();
            (StatusCode::OK, json, body).into_response()
        }
        Ok(Reply::Version(v)) => (StatusCode::OK, json, v).into_response(),
        Ok(Reply::Done) => (StatusCode::OK, "").into_response(),
    }
}

struct DaemonPlugin<'a> {
    st: &'a AppState,
    /// The request's view of the cluster.
    cluster: Option<Arc<RequestCluster>>,
}

impl DaemonPlugin<'_> {
    fn engine(&self, req: &Request) -> plexus_cni::Result<Engine> {
        let conf = NetConf::parse(&req.stdin)?;
        let cluster: Option<Arc<dyn Cluster>> = match &conf.plexus.local {
            Some(local) => Some(Arc::new(LocalCluster::new(local.clone(), &req.args))),
            None => self.cluster.clone().map(|c| c as Arc<dyn Cluster>),
        };
        let kubelet = self.st.kubelet(Settings::from_conf(&conf.plexus));
        let mut e = Engine::new(conf, cluster);
        if let Some(k) = kubelet {
            e = e.with_devices(k);
        }
        if self.st.cfg.hotplug && req.command == plexus_cni::plugin::Command::Add {
            e = e.keeping_config(&req.stdin);
        }
        if let Some(x) = &self.st.exec {
            e = e.with_exec(x.clone());
        }
        Ok(e)
    }
}

impl Plugin for DaemonPlugin<'_> {
    fn add(&self, req: &Request) -> plexus_cni::Result<CniResult> {
        let engine = self.engine(req)?;
        let (r, networks) = engine.add_networks(&plexus_engine::Request::from_cni(req))?;
        for network in networks {
            self.st
                .metrics
                .attachments
                .get_or_create(&NetworkLabels { network })
                .inc();
        }
        Ok(r)
    }
    fn del(&self, req: &Request) -> plexus_cni::Result<()> {
        self.engine(req)?
            .del(&plexus_engine::Request::from_cni(req))
    }
    fn check(&self, req: &Request) -> plexus_cni::Result<()> {
        self.engine(req)?
            .check(&plexus_engine::Request::from_cni(req))
    }
    fn status(&self, req: &Request) -> plexus_cni::Result<()> {
        self.engine(req)?.status(&req.path)
    }
    fn gc(&self, req: &Request) -> plexus_cni::Result<()> {
        let valid = plexus_engine::valid_attachments(req)?;
        self.engine(req)?.gc(&valid, &req.path)
    }
}

fn run_cni(
    st: &AppState,
    cluster: Option<Arc<RequestCluster>>,
    env: &HashMap<String, String>,
    stdin: &[u8],
) -> Answer {
    let args = plexus_cni::args::CniArgs::parse(
        env.get("CNI_ARGS").map(String::as_str).unwrap_or_default(),
    )
    .unwrap_or_default();
    let pod = format!(
        "{}/{}",
        args.get("K8S_POD_NAMESPACE").unwrap_or("-"),
        args.get("K8S_POD_NAME").unwrap_or("-")
    );
    let span = tracing::info_span!("cni", command = %env.get("CNI_COMMAND").map(String::as_str).unwrap_or(""),
        container = %env.get("CNI_CONTAINERID").map(String::as_str).unwrap_or(""), %pod);
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    let started = Instant::now();
    span.in_scope(|| {
        // ADD, DEL and CHECK of a container never overlap a hot-plug of it.
        let _held = match (command, env.get("CNI_CONTAINERID")) {
            ("ADD" | "DEL" | "CHECK", Some(id)) if !id.is_empty() => Some(st.locks.lock(id)),
            _ => None,
        };
        let answered = answer(&DaemonPlugin { st, cluster }, env, stdin);
        if let (true, "ADD", Some(tx), Some(ns), Some(name)) = (
            answered.reply.is_ok(),
            command,
            st.adds.get(),
            args.get("K8S_POD_NAMESPACE"),
            args.get("K8S_POD_NAME"),
        ) {
            let _ = tx.send(crate::hotplug::AddDone {
                namespace: ns.to_string(),
                name: name.to_string(),
                started,
            });
        }
        match &answered.reply {
            Ok(_) => tracing::info!("done"),
            Err(e) => tracing::error!(error = %e, "failed"),
        }
        answered
    })
}

/// `/delegate`: one network configuration for one interface of a running pod (what
/// multus-dynamic-networks-controller calls for hot-plug); no status is written.
async fn delegate(State(st): State<Arc<AppState>>, method: Method, body: Body) -> Response {
    let req = match read_body(&st, &method, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let config = match req.config_bytes() {
        Ok(c) => c,
        Err(e) => return cni_error(StatusCode::BAD_REQUEST, &CniError::decode(e)),
    };
    let command = req.var("CNI_COMMAND").to_string();
    let started = Instant::now();
    let _permit = st.limiter.acquire().await;
    let st2 = st.clone();
    let answered = blocking(move || Answer {
        reply: run_delegate(&st2, &req, &config),
        cni_version: plexus_cni::version::CURRENT.into(),
    })
    .await;
    respond(&st, "/delegate", &command, started, answered)
}

fn run_delegate(st: &AppState, req: &CniRequest, config: &[u8]) -> plexus_cni::Result<Reply> {
    let attrs = req.interface_attributes.clone().unwrap_or_default();
    let mut list = plexus_cni::config::NetworkConfigList::from_bytes_any(config)?;
    if let Some(Value::Object(extra)) = attrs.get("cni-args") {
        for p in &mut list.plugins {
            p.merge_cni_args(extra);
        }
    }
    let mut caps = Map::new();
    for (k, cap) in [("ips", "ips"), ("mac", "mac")] {
        if let Some(v) = attrs.get(k) {
            caps.insert(cap.into(), v.clone());
        }
    }
    let var = |k: &str| req.var(k).to_string();
    let mut paths = vec![st.cfg.bin_dir.clone()];
    paths.extend(std::env::split_paths(&var("CNI_PATH")));
    let mut rt = Runtime::new(paths, Some(st.cfg.cni_dir.clone()));
    rt.timeout = std::time::Duration::from_secs(st.cfg.engine.delegate_timeout_seconds.max(1));
    if let Some(x) = &st.exec {
        rt.exec = x.clone();
    }
    let att = Attachment {
        container_id: var("CNI_CONTAINERID"),
        netns: Some(var("CNI_NETNS")).filter(|s| !s.is_empty()),
        ifname: var("CNI_IFNAME"),
        args: plexus_cni::args::CniArgs::parse(&var("CNI_ARGS"))?,
        capability_args: caps,
    };
    match var("CNI_COMMAND").as_str() {
        "ADD" => rt.add_list(&list, &att).map(|r| Reply::Result(Box::new(r))),
        "DEL" => rt.del_list(&list, &att).map(|_| Reply::Done),
        "CHECK" => rt.check_list(&list, &att).map(|_| Reply::Done),
        "STATUS" => rt.status_list(&list).map(|_| Reply::Done),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not supported on /delegate"),
        )),
    }
}
