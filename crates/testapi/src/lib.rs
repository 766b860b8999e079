//! A Kubernetes API server for tests, speaking the wire protocol kube-apiserver speaks
//! for the resources Plexus uses (pods and `pods/status`, events, NADs):
//!
//! - `GET`/`POST`/`PUT`/`PATCH`/`DELETE` on namespaced objects and collections, and
//!   cluster-wide `LIST`, under `/api/v1` and `/apis/<group>/<version>`;
//! - `metav1.Status` bodies with `reason` and `code` for every error (404 NotFound,
//!   409 AlreadyExists/Conflict, 422 Invalid, 400 BadRequest, 405, 415, 5xx);
//! - `resourceVersion` on every write and list, optimistic concurrency (a stale
//!   `resourceVersion` on PUT or PATCH is 409 Conflict);
//! - JSON merge patch (RFC 7386) and strategic merge patch on maps;
//! - `fieldSelector` on `metadata.name`, `metadata.namespace` and `spec.nodeName`;
//! - `watch=true` streams of `{"type","object"}` lines from a resourceVersion.
//!
//! It serves HTTPS as kube-apiserver does ([`Security::Tls`], the default): a
//! kubeadm-like PKI (RSA 2048 keys unless ECDSA is asked for), client certificates
//! requested and verified against its CA, bearer tokens, and 401 Unauthorized for a
//! request that carries neither. Plain HTTP without authentication
//! ([`Security::Plain`]) stays for the tests that say why they need it.
//!
//! It counts every request, can fail the next requests on purpose, and can be
//! stopped (connections are then refused) to test behaviour without the API.

mod http;
mod pki;
pub mod protobuf;
mod rbac;
mod store;

pub use pki::{ClientCredentials, KeyKind, User};
pub use store::Resource;

use base64::Engine as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// How the server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// HTTPS with a certificate of this kind, and authentication (client certificate
    /// or bearer token), as every real cluster.
    Tls(KeyKind),
    /// Plain HTTP, no authentication (kube-apiserver's old insecure port).
    Plain,
}

/// How a kubeconfig authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token of the service account `kube-system/plexus` (the kind of
    /// kubeconfig Multus's and Plexus's installers write for the thin plugin).
    Token,
    /// A client certificate of `kubernetes-admin` in `system:masters` (kubeadm's admin.conf).
    ClientCertificate,
}

/// The user whose token [`Credential::Token`] kubeconfigs carry.
pub const TOKEN_USER: &str = "system:serviceaccount:kube-system:plexus";

/// A CA certificate (self-signed, never used to sign anything) for plain-HTTP
/// kubeconfigs: real kubeconfigs carry the cluster's CA, and a client given none falls
/// back to loading the system's trust store at every start, which a CNI plugin run per
/// pod should not be measured doing. Over plain HTTP it is never exercised.
const KUBECONFIG_CA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrRENDQVRXZ0F3SUJBZ0lVVERsRjhhem8rUTNrRmdpQnREZSs0NHBBeWFNd0NnWUlLb1pJemowRUF3SXcKSERFYU1CZ0dBMVVFQXd3UmNHeGxlSFZ6TFhSbGMzUmhjR2t0WTJFd0lCY05Nall4TVRJME1ESTFNakkyV2hnUApNakV5TmpFd016RXdNalV5TWpaYU1Cd3hHakFZQmdOVkJBTU1FWEJzWlhoMWN5MTBaWE4wWVhCcExXTmhNRmt3CkV3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFeGNtMncrNDRjZk9ubUNydVBTbVg0bFRocWVZdTNhTFgKeG9lRE9mSUxRZHQzVnl2ZElwL2VGSDdjSGhSSGtCSEczem91UmNITUhNb3NTUzdKSW5kT1VhTlRNRkV3SFFZRApWUjBPQkJZRUZCM2UzMVB4RTBrSW10N1MrODlHdmtwVS96M2JNQjhHQTFVZEl3UVlNQmFBRkIzZTMxUHhFMGtJCm10N1MrODlHdmtwVS96M2JNQThHQTFVZEV3RUIvd1FGTUFNQkFmOHdDZ1lJS29aSXpqMEVBd0lEU1FBd1JnSWgKQU5ZQkZPU3RJcVJBTTNZOHh3L3g4dXFJYklkTEY5YVl5UHdySVJrMmdxZlRBaUVBaER6ZHlnTU83YnB4VDMyOAo3VXdrTmgweU83eHJQbzhEM3lzSHlaL1lqV1U9Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";

/// Who may call the server: the tokens it accepts, and its PKI (TLS only).
struct Auth {
    pki: Option<Arc<pki::Pki>>,
    tokens: Mutex<HashMap<String, User>>,
    /// Connections accepted (TLS: whose handshake completed).
    connections: std::sync::atomic::AtomicUsize,
    /// Requests that came over HTTP/2.
    http2_requests: std::sync::atomic::AtomicUsize,
}

impl Auth {
    /// The authenticated user of a request, `None` when it must be refused (401).
    fn user(&self, cert_user: Option<&User>, authorization: Option<&[u8]>) -> Option<User> {
        if self.pki.is_none() {
            return Some(User {
                name: "system:anonymous".into(),
                groups: vec![],
            });
        }
        if let Some(u) = cert_user {
            return Some(u.clone());
        }
        let token = authorization
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.strip_prefix("Bearer "))?;
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token.trim())
            .cloned()
    }
}

/// A running server.
pub struct TestApiServer {
    addr: SocketAddr,
    store: Arc<store::Store>,
    auth: Arc<Auth>,
    token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApiServer {
    /// Starts a server on a free loopback port, over TLS with RSA 2048 keys.
    pub fn start() -> TestApiServer {
        Self::start_on(loopback())
    }

    /// Starts a plain-HTTP server without authentication on a free loopback port; for
    /// tests that need it, each saying why.
    pub fn start_plain() -> TestApiServer {
        Self::start_with(loopback(), Security::Plain)
    }

    /// Starts a server on `listener` (bound, for example, inside a test's network
    /// namespace, where the plugin under test runs), over TLS with RSA 2048 keys.
    pub fn start_on(listener: std::net::TcpListener) -> TestApiServer {
        Self::start_with(listener, Security::Tls(KeyKind::Rsa2048))
    }

    /// Starts a server on `listener` with `security`.
    pub fn start_with(listener: std::net::TcpListener, security: Security) -> TestApiServer {
        let store = Arc::new(store::Store::default());
        let addr = listener.local_addr().expect("local address");
        let pki = match security {
            Security::Tls(kind) => Some(pki::Pki::new(kind, addr.ip())),
            Security::Plain => None,
        };
        let token = random_token();
        let auth = Arc::new(Auth {
            pki,
            tokens: Mutex::new(HashMap::from([(
                token.clone(),
                User {
                    name: TOKEN_USER.into(),
                    groups: vec![
                        "system:serviceaccounts".into(),
                        "system:serviceaccounts:kube-system".into(),
                        "system:authenticated".into(),
                    ],
                },
            )])),
            connections: Default::default(),
            http2_requests: Default::default(),
        });
        let (shutdown, thread) = serve(listener, store.clone(), auth.clone());
        TestApiServer {
            addr,
            store,
            auth,
            token,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Connections accepted so far (over TLS: handshakes completed), each a new TCP
    /// connection and, over TLS, a full handshake for the client.
    pub fn connections(&self) -> usize {
        self.auth
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests so far that came over HTTP/2 (the others came over HTTP/1.1).
    pub fn http2_requests(&self) -> usize {
        self.auth
            .http2_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.auth.pki.is_some()
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_pem(&self) -> Option<&str> {
        self.auth.pki.as_deref().map(pki::Pki::ca_pem)
    }

    /// The bearer token of [`TOKEN_USER`].
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Accepts `token` as `user` from now on.
    pub fn add_token(&self, token: &str, user: User) {
        self.auth
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), user);
    }

    /// A client certificate for `user` in `groups`, signed by the server's CA (TLS only).
    pub fn client_certificate(&self, user: &str, groups: &[&str]) -> Option<ClientCredentials> {
        self.auth.pki.as_ref().map(|p| p.client(user, groups))
    }

    /// Serves again after [`stop`](Self::stop), with the same objects, on `listener`,
    /// which must be bound to the same address (an API server back after an outage).
    pub fn serve_again(&mut self, listener: std::net::TcpListener) {
        self.stop();
        let addr = listener.local_addr().expect("local address");
        assert_eq!(
            addr, self.addr,
            "an API server comes back on its own address"
        );
        let (shutdown, thread) = serve(listener, self.store.clone(), self.auth.clone());
        self.shutdown = Some(shutdown);
        self.thread = Some(thread);
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>` (`http://` for a plain server).
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at the server, with a bearer token (TLS).
    pub fn write_kubeconfig(&self, path: &Path) {
        self.write_kubeconfig_as(path, Credential::Token);
    }

    /// Writes a kubeconfig pointing at the server, authenticating with `credential`
    /// (a plain server takes none).
    pub fn write_kubeconfig_as(&self, path: &Path, credential: Credential) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (ca, user) = match self.ca_pem() {
            None => (KUBECONFIG_CA.to_string(), "{}".to_string()),
            Some(ca) => {
                let user = match credential {
                    Credential::Token => format!("\n    token: {}", self.token),
                    Credential::ClientCertificate => {
                        let c = self
                            .client_certificate("kubernetes-admin", &["system:masters"])
                            .expect("a TLS server");
                        format!(
                            "\n    client-certificate-data: {}\n    client-key-data: {}",
                            b64(&c.cert_pem),
                            b64(&c.key_pem)
                        )
                    }
                };
                (b64(ca), user)
            }
        };
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {user}\n",
            self.url()
        );
        std::fs::write(path, kc).expect("writing kubeconfig");
    }

    /// Stops serving: later connections are refused.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Creates or replaces an object (as an administrator would with kubectl apply).
    pub fn put(&self, resource: Resource, obj: serde_json::Value) -> serde_json::Value {
        self.store.upsert(resource, obj)
    }

    /// An object, if present.
    pub fn get(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        self.store.get(resource, namespace, name)
    }

    /// Deletes an object.
    pub fn delete(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        self.store.delete(resource, namespace, name)
    }

    /// Every object of a resource.
    pub fn list(&self, resource: Resource) -> Vec<serde_json::Value> {
        self.store.list(resource, None, &[])
    }

    /// Requests received so far, as `(method, path and query)`.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.store.log()
    }

    /// Requests whose method is `method` and whose path contains `needle`.
    pub fn count(&self, method: &str, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(m, p)| m == method && p.contains(needle))
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.store.clear_log();
    }

    /// The next `n` requests fail with `code` (e.g. 503) and a Status body.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.store.fail_next(n, code, None, None);
    }

    /// The next `n` requests with this method whose path contains `needle` fail with `code`.
    pub fn fail_when(&self, method: &str, needle: &str, n: usize, code: u16) {
        self.store.fail_next(n, code, Some(method), Some(needle));
    }
}

fn loopback() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port")
}

/// 32 random bytes, base64url: a token no test can guess.
fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Serves `store` on `listener` from a thread of its own until told to stop.
fn serve(
    listener: std::net::TcpListener,
    store: Arc<store::Store>,
    auth: Arc<Auth>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let app = http::router(store);
            // Not a graceful shutdown: an API server that goes away does not wait for
            // its clients' open watches to end. The accept loop stops here...
            tokio::select! {
                _ = accept(listener, app, auth) => {}
                _ = rx => {}
            }
        });
        // ...and every open connection, watch streams included, is dropped with the
        // runtime's tasks.
        rt.shutdown_timeout(std::time::Duration::from_millis(100));
    });
    (tx, thread)
}

/// Accepts connections, each served on a task of its own: TLS first where the server
/// has a PKI (the client certificate, if any, names the connection's user), then HTTP.
async fn accept(listener: tokio::net::TcpListener, app: axum::Router, auth: Arc<Auth>) {
    let tls = auth
        .pki
        .as_ref()
        .map(|p| tokio_rustls::TlsAcceptor::from(p.server_config()));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors or a connection reset before it was accepted.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, auth, tls) = (app.clone(), auth.clone(), tls.clone());
        tokio::spawn(async move {
            let counted = || {
                auth.connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            };
            match tls {
                None => {
                    counted();
                    serve_connection(tcp, app, auth, None).await
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counted();
                    let cert_user = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| auth.pki.as_ref().and_then(|p| p.user_of(c)));
                    serve_connection(stream, app, auth, cert_user).await
                }
            }
        });
    }
}

/// One connection's requests, each authenticated first.
async fn serve_connection<S>(io: S, app: axum::Router, auth: Arc<Auth>, cert_user: Option<User>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        if req.version() == hyper::Version::HTTP_2 {
            auth.http2_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let user = auth.user(
            cert_user.as_ref(),
            req.headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        let app = app.clone();
        async move {
            match user {
                Some(_) => app.oneshot(req).await,
                None => Ok(http::unauthorized()),
            }
        }
    });
    // HTTP/1.1 with keep-alive, or HTTP/2 (chosen in the TLS handshake, or by the
    // client's preface over plain HTTP), as kube-apiserver serves both.
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
