//! The webhook's HTTPS server: `POST /validate`, `POST /mutate`, `GET /healthz`, over
//! rustls with the certificate and key read from files and read again when they change
//! (a renewed certificate is served from the next connection on, no restart).

use crate::review::{self, Hook};
use crate::rules::{AccessSource, NadSource, Policy, Subject};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, DynamicObject};
use plexus_npwg::nad::Nad;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The largest review read (a pod update carries two pods of up to 1.5 MiB each).
pub const MAX_BODY: usize = 8 << 20;

/// How long a NAD read from the API is trusted.
const NAD_TTL: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// NADs read from the API, with when.
type NadCache = HashMap<(String, String), (Instant, Option<Nad>)>;
/// RBAC's grants: (subject, namespace, NAD) → (when, may use).
type AccessCache = HashMap<(Subject, String, String), (Instant, bool)>;
/// RBAC's answers for one review.
type Answers = HashMap<(Subject, String, String), Result<bool, String>>;

/// How long RBAC's answer is trusted.
const ACCESS_TTL: Duration = Duration::from_secs(10);
/// The files' modification times, and the key they hold.
type Loaded = (Option<(SystemTime, SystemTime)>, Arc<CertifiedKey>);

/// The webhook's state.
pub struct Webhook {
    /// The rules' settings.
    pub policy: Policy,
    /// The API, for the NADs pods name (`None`: they are not checked).
    pub api: Option<kube::Client>,
    cache: Mutex<NadCache>,
    access: Mutex<AccessCache>,
}

impl Webhook {
    /// A webhook with `policy`, reading NADs through `api`.
    pub fn new(policy: Policy, api: Option<kube::Client>) -> Webhook {
        Webhook {
            policy,
            api,
            cache: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
        }
    }

    /// May `who` use the NAD? Asked of the API server (SubjectAccessReview), cached briefly.
    async fn may_use(&self, who: &Subject, ns: &str, name: &str) -> Result<bool, String> {
        let key = (who.clone(), ns.to_string(), name.to_string());
        if let Some((at, ok)) = lock(&self.access).get(&key) {
            if at.elapsed() < ACCESS_TTL {
                return Ok(*ok);
            }
        }
        let Some(client) = &self.api else {
            return Err("the webhook has no Kubernetes API to ask".into());
        };
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.to_string()),
                    verb: Some(crate::rules::USE_VERB.to_string()),
                    group: Some("k8s.cni.cncf.io".into()),
                    resource: Some("network-attachment-definitions".into()),
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(client.clone());
        let made = tokio::time::timeout(
            Duration::from_secs(5),
            api.create(&Default::default(), &sar),
        )
        .await
        .map_err(|_| "the API did not answer the SubjectAccessReview within 5 s".to_string())?
        .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        let ok = made.status.map(|s| s.allowed).unwrap_or(false);
        // Only grants are kept: a denial is asked again, so a Role granted after it
        // applies at the next try.
        if ok {
            lock(&self.access).insert(key, (Instant::now(), ok));
        }
        Ok(ok)
    }

    async fn nad(&self, ns: &str, name: &str) -> Result<Option<Nad>, String> {
        let key = (ns.to_string(), name.to_string());
        if let Some((at, n)) = lock(&self.cache).get(&key) {
            if at.elapsed() < NAD_TTL {
                return Ok(n.clone());
            }
        }
        let Some(client) = &self.api else {
            return Err("the webhook has no Kubernetes API to read NADs from".into());
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &plexus_kube::nad_resource());
        let obj = tokio::time::timeout(Duration::from_secs(5), api.get_opt(name))
            .await
            .map_err(|_| "the API did not answer within 5 s".to_string())?
            .map_err(|e| e.to_string())?;
        let nad = match obj {
            None => None,
            Some(o) => Some(
                Nad::from_object(&serde_json::to_value(o).map_err(|e| e.to_string())?)
                    .map_err(|e| e.msg)?,
            ),
        };
        lock(&self.cache).insert(key, (Instant::now(), nad.clone()));
        Ok(nad)
    }

    /// The NADs `req`'s pod names, read first (the rules are synchronous).
    async fn prefetch(&self, req: &review::Request) -> Fetched {
        let mut out = HashMap::new();
        if req.kind == "Pod" {
            if let Ok(nets) = crate::rules::pod_networks(&req.object, &self.policy) {
                for (_, sel) in nets {
                    let k = (sel.network.namespace.clone(), sel.network.name.clone());
                    if let std::collections::hash_map::Entry::Vacant(e) = out.entry(k) {
                        let (ns, name) = e.key().clone();
                        e.insert(self.nad(&ns, &name).await);
                    }
                }
            }
        }
        let mut access = HashMap::new();
        if self.policy.access_control && req.kind == "Pod" && !review::networks_unchanged(req) {
            let sa = Subject::service_account_of(&req.object);
            for nad in crate::rules::access_checks(&req.object, &self.policy) {
                for who in [&req.user, &sa] {
                    let v = self.may_use(who, &nad.namespace, &nad.name).await;
                    access.insert((who.clone(), nad.namespace.clone(), nad.name.clone()), v);
                }
            }
        }
        Fetched(out, access)
    }
}

/// NADs read, and RBAC's answers, for one review.
struct Fetched(
    HashMap<(String, String), Result<Option<Nad>, String>>,
    Answers,
);

impl AccessSource for Fetched {
    fn may_use(&self, who: &Subject, ns: &str, name: &str) -> Result<bool, String> {
        self.1
            .get(&(who.clone(), ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_else(|| Err("not asked".into()))
    }
}

impl NadSource for Fetched {
    fn nad(&self, ns: &str, name: &str) -> Result<Option<Nad>, String> {
        self.0
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or_else(|| Err("not read".into()))
    }
}

async fn handle(hook: Hook, st: Arc<Webhook>, body: Bytes) -> Response {
    let req = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            let code = StatusCode::from_u16(e.0).unwrap_or(StatusCode::BAD_REQUEST);
            return (code, e.1).into_response();
        }
    };
    let fetched = st.prefetch(&req).await;
    let v = match review::decide(hook, &req, &st.policy, &fetched, &fetched) {
        Ok(v) => v,
        Err(e) => {
            // The webhook fails; the API server applies the failurePolicy.
            tracing::warn!(uid = %req.uid, error = %e, "cannot decide");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot check access: {e}"),
            )
                .into_response();
        }
    };
    tracing::info!(uid = %req.uid, kind = %req.kind, op = %req.operation, allowed = v.allowed, message = %v.message, "review");
    axum::Json(review::response(&req.uid, &v)).into_response()
}

/// The routes.
pub fn router(st: Arc<Webhook>) -> Router {
    Router::new()
        .route(
            "/validate",
            post(|State(st): State<Arc<Webhook>>, body: Bytes| handle(Hook::Validate, st, body)),
        )
        .route(
            "/mutate",
            post(|State(st): State<Arc<Webhook>>, body: Bytes| handle(Hook::Mutate, st, body)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(st)
}

/// The certificate and key from files, read again when either changes.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    use anyhow::Context;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "certificate {}: no certificate in it",
        cert.display()
    );
    let k = PrivateKeyDer::from_pem_file(key).with_context(|| format!("key {}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&k)
        .with_context(|| format!("key {}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(cert)?, m(key)?))
}

impl ReloadingCert {
    /// Reads both files now (an error when they are unusable).
    pub fn new(cert: &Path, key: &Path) -> anyhow::Result<ReloadingCert> {
        let ck = load(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((mtimes(cert, key), ck)),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut cur = lock(&self.current);
        let now = mtimes(&self.cert, &self.key);
        if now.is_some() && now != cur.0 {
            match load(&self.cert, &self.key) {
                Ok(ck) => {
                    tracing::info!(cert = %self.cert.display(), "serving the renewed certificate");
                    *cur = (now, ck);
                }
                // A half-written pair (the files are replaced one after the other):
                // the old one is served until both are readable.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the renewed certificate yet")
                }
            }
        }
        Some(cur.1.clone())
    }
}

/// The TLS configuration serving `cert`/`key` (reloaded when they change).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ReloadingCert::new(cert, key)?));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` over TLS on `listener`, for ever.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    use tower::ServiceExt;
                    app.clone().oneshot(req)
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
