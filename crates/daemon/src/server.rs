//! The unix-socket API, with Multus's endpoints and bodies (reference §3.13):
//! `POST /cni` (`{"env": {...}, "config": "<base64 stdin>"}` → `{"Result": ...}`),
//! `POST /delegate` (one network, for hot-plug controllers), `/healthz`, `/readyz`.
//! CNI errors cross with their code: 400 and the CNI error object.

// Handler helpers return the HTTP answer as their error; it is built once per request.
#![allow(clippy::result_large_err)]

use crate::cache::{DaemonCluster, RequestCluster};
use crate::config::DaemonConfig;
use crate::metrics::{ErrorLabels, Metrics, NetworkLabels, RequestLabels};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use plexus_cni::plugin::{dispatch, Outcome, Plugin, Request};
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::{code, CniError, CniResult};
use plexus_engine::local::LocalCluster;
use plexus_engine::{Cluster, Engine, NetConf};
use serde::Deserialize;
use serde_json::{json, Map, Value};
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
}

#[derive(Deserialize)]
struct CniBody {
    env: HashMap<String, String>,
    config: String,
    #[serde(rename = "interfaceAttributes", default)]
    interface_attributes: Option<Map<String, Value>>,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/cni", any(cni))
        .route("/delegate", any(delegate))
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

async fn read_body(st: &AppState, method: &Method, body: Body) -> Result<CniBody, Response> {
    if method != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response());
    }
    let bytes = match tokio::time::timeout(
        st.cfg.request_read_timeout,
        axum::body::to_bytes(body, st.cfg.max_body_bytes),
    )
    .await
    {
        Err(_) => {
            return Err(cni_error(
                StatusCode::REQUEST_TIMEOUT,
                &CniError::io("request body not received in time"),
            ))
        }
        Ok(Err(e)) => {
            return Err(cni_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &CniError::io(format!(
                    "request body: {e} (limit {} bytes)",
                    st.cfg.max_body_bytes
                )),
            ))
        }
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice::<CniBody>(&bytes).map_err(|e| {
        cni_error(
            StatusCode::BAD_REQUEST,
            &CniError::decode(format!(
                "request is not {{\"env\": {{...}}, \"config\": \"<base64>\"}}: {e}"
            )),
        )
    })
}

fn decode_config(st: &AppState, b64: &str) -> Result<Vec<u8>, Response> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| {
            cni_error(
                StatusCode::BAD_REQUEST,
                &CniError::decode(format!("\"config\" is not base64: {e}")),
            )
        })?;
    st.cfg
        .overlay(&raw)
        .map_err(|e| cni_error(StatusCode::BAD_REQUEST, &CniError::decode(e)))
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
    let stdin = match decode_config(&st, &req.config) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let command = req.env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let started = Instant::now();
    st.metrics.in_flight.inc();
    let permit = st.limiter.acquire().await;
    let st2 = st.clone();
    let env = req.env;
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
async fn blocking(work: impl FnOnce() -> Outcome + Send + 'static) -> Outcome {
    let guarded = move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|p| {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Outcome {
                stdout: CniError::internal(format!("request panicked: {why}")).to_json("1.1.0"),
                exit_code: 1,
            }
        })
    };
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(guarded),
        _ => tokio::task::spawn_blocking(guarded)
            .await
            .unwrap_or_else(|e| Outcome {
                stdout: CniError::internal(format!("request task failed: {e}")).to_json("1.1.0"),
                exit_code: 1,
            }),
    }
}

fn respond(
    st: &AppState,
    handler: &str,
    command: &str,
    started: Instant,
    outcome: Outcome,
) -> Response {
    let result = if outcome.exit_code == 0 {
        "ok"
    } else {
        "error"
    };
    let labels = RequestLabels {
        handler: handler.into(),
        command: command.into(),
        result: result.into(),
    };
    st.metrics.requests.get_or_create(&labels).inc();
    st.metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    if outcome.exit_code != 0 {
        let code = serde_json::from_slice::<Value>(&outcome.stdout)
            .ok()
            .and_then(|v| v["code"].as_u64())
            .unwrap_or(999);
        st.metrics
            .errors
            .get_or_create(&ErrorLabels {
                command: command.into(),
                code: code.to_string(),
            })
            .inc();
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            outcome.stdout,
        )
            .into_response();
    }
    if command == "ADD" {
        let r: Value = serde_json::from_slice(&outcome.stdout).unwrap_or(Value::Null);
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"Result": r}).to_string(),
        )
            .into_response();
    }
    (StatusCode::OK, "").into_response()
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
        let mut e = Engine::new(conf, cluster);
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
) -> Outcome {
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
    span.in_scope(|| {
        let outcome = dispatch(&DaemonPlugin { st, cluster }, env, stdin);

        if outcome.exit_code == 0 {
            tracing::info!("done");
        } else {
            tracing::error!(error = %String::from_utf8_lossy(&outcome.stdout), "failed");
        }
        outcome
    })
}

/// `/delegate`: one network configuration for one interface of a running pod (what
/// multus-dynamic-networks-controller calls for hot-plug); no status is written.
async fn delegate(State(st): State<Arc<AppState>>, method: Method, body: Body) -> Response {
    let req = match read_body(&st, &method, body).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let config = match base64::engine::general_purpose::STANDARD.decode(&req.config) {
        Ok(c) => c,
        Err(e) => {
            return cni_error(
                StatusCode::BAD_REQUEST,
                &CniError::decode(format!("\"config\" is not base64: {e}")),
            )
        }
    };
    let command = req.env.get("CNI_COMMAND").cloned().unwrap_or_default();
    let started = Instant::now();
    let _permit = st.limiter.acquire().await;
    let st2 = st.clone();
    let outcome = blocking(move || {
        let r = run_delegate(
            &st2,
            &req.env,
            &config,
            req.interface_attributes.unwrap_or_default(),
        );
        match r {
            Ok(Some(res)) => Outcome {
                stdout: res.to_json(),
                exit_code: 0,
            },
            Ok(None) => Outcome {
                stdout: vec![],
                exit_code: 0,
            },
            Err(e) => Outcome {
                stdout: e.to_json("1.1.0"),
                exit_code: 1,
            },
        }
    })
    .await;
    respond(&st, "/delegate", &command, started, outcome)
}

fn run_delegate(
    st: &AppState,
    env: &HashMap<String, String>,
    config: &[u8],
    attrs: Map<String, Value>,
) -> plexus_cni::Result<Option<CniResult>> {
    let mut list = plexus_cni::config::NetworkConfigList::from_bytes_any(config)?;
    if let Some(Value::Object(extra)) = attrs.get("cni-args") {
        for p in &mut list.plugins {
            let args = p.raw_mut().entry("args").or_insert_with(|| json!({}));
            if let Some(cni) = args
                .as_object_mut()
                .map(|a| a.entry("cni").or_insert_with(|| json!({})))
            {
                for (k, v) in extra {
                    cni[k] = v.clone();
                }
            }
        }
    }
    let mut caps = Map::new();
    for (k, cap) in [("ips", "ips"), ("mac", "mac")] {
        if let Some(v) = attrs.get(k) {
            caps.insert(cap.into(), v.clone());
        }
    }
    let var = |k: &str| env.get(k).cloned().unwrap_or_default();
    let key = |k: &str, default: &'static str| {
        st.cfg
            .raw
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    let bin_dir = key("binDir", plexus_engine::config::DEFAULT_BIN_DIR);
    let cni_dir = key("cniDir", plexus_engine::config::DEFAULT_CNI_DIR);
    let mut paths = vec![std::path::PathBuf::from(bin_dir)];
    paths.extend(std::env::split_paths(&var("CNI_PATH")));
    let mut rt = Runtime::new(paths, Some(cni_dir.into()));
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
        "ADD" => rt.add_list(&list, &att).map(Some),
        "DEL" => rt.del_list(&list, &att).map(|_| None),
        "CHECK" => rt.check_list(&list, &att).map(|_| None),
        "STATUS" => rt.status_list(&list).map(|_| None),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not supported on /delegate"),
        )),
    }
}
