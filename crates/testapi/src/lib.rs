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
//! It counts every request, can fail the next requests on purpose, and can be
//! stopped (connections are then refused) to test behaviour without the API.

mod http;
mod store;

pub use store::Resource;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A CA certificate (self-signed, never used to sign anything) for the kubeconfig: real
/// kubeconfigs carry the cluster's CA, and a client given none falls back to loading
/// the system's trust store at every start, which a CNI plugin run per pod should not
/// be measured doing. The server speaks plain HTTP, so the CA is never exercised.
const KUBECONFIG_CA: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrRENDQVRXZ0F3SUJBZ0lVVERsRjhhem8rUTNrRmdpQnREZSs0NHBBeWFNd0NnWUlLb1pJemowRUF3SXcKSERFYU1CZ0dBMVVFQXd3UmNHeGxlSFZ6TFhSbGMzUmhjR2t0WTJFd0lCY05Nall4TVRJME1ESTFNakkyV2hnUApNakV5TmpFd016RXdNalV5TWpaYU1Cd3hHakFZQmdOVkJBTU1FWEJzWlhoMWN5MTBaWE4wWVhCcExXTmhNRmt3CkV3WUhLb1pJemowQ0FRWUlLb1pJemowREFRY0RRZ0FFeGNtMncrNDRjZk9ubUNydVBTbVg0bFRocWVZdTNhTFgKeG9lRE9mSUxRZHQzVnl2ZElwL2VGSDdjSGhSSGtCSEczem91UmNITUhNb3NTUzdKSW5kT1VhTlRNRkV3SFFZRApWUjBPQkJZRUZCM2UzMVB4RTBrSW10N1MrODlHdmtwVS96M2JNQjhHQTFVZEl3UVlNQmFBRkIzZTMxUHhFMGtJCm10N1MrODlHdmtwVS96M2JNQThHQTFVZEV3RUIvd1FGTUFNQkFmOHdDZ1lJS29aSXpqMEVBd0lEU1FBd1JnSWgKQU5ZQkZPU3RJcVJBTTNZOHh3L3g4dXFJYklkTEY5YVl5UHdySVJrMmdxZlRBaUVBaER6ZHlnTU83YnB4VDMyOAo3VXdrTmgweU83eHJQbzhEM3lzSHlaL1lqV1U9Ci0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";

/// A running server.
pub struct TestApiServer {
    addr: SocketAddr,
    store: Arc<store::Store>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestApiServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> TestApiServer {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
    }

    /// Starts a server on `listener` (bound, for example, inside a test's network
    /// namespace, where the plugin under test runs).
    pub fn start_on(listener: std::net::TcpListener) -> TestApiServer {
        let store = Arc::new(store::Store::default());
        let addr = listener.local_addr().expect("local address");
        let (shutdown, thread) = serve(listener, store.clone());
        TestApiServer {
            addr,
            store,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
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
        let (shutdown, thread) = serve(listener, self.store.clone());
        self.shutdown = Some(shutdown);
        self.thread = Some(thread);
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at the server.
    pub fn write_kubeconfig(&self, path: &Path) {
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {KUBECONFIG_CA}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
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

/// Serves `store` on `listener` from a thread of its own until told to stop.
fn serve(
    listener: std::net::TcpListener,
    store: Arc<store::Store>,
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
                _ = axum::serve(listener, app) => {}
                _ = rx => {}
            }
        });
        // ...and every open connection, watch streams included, is dropped with the
        // runtime's tasks.
        rt.shutdown_timeout(std::time::Duration::from_millis(100));
    });
    (tx, thread)
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
