//! Hot-plug in the daemon: it follows this node's pods through the pod watch and, when
//! a running pod's selection annotation changes, brings the pod's attachments in line
//! (the engine's `reconcile`), one container at a time under the same per-container
//! lock as the runtime's ADD, DEL and CHECK. At start-up every pod is reconciled (an
//! edit made while the daemon was down is applied; a step it was killed in is finished
//! or undone). Outcomes are events with the reasons multus-dynamic-networks-controller
//! uses, and metrics; failures to attach or detach are retried with exponential
//! back-off and reported once.

use crate::metrics::HotplugLabels;
use crate::server::AppState;
use plexus_engine::hotplug::{Failure, HotplugError, Reconciled};
use plexus_engine::state::StateStore;
use plexus_engine::{Cluster, Engine, EventType, NetConf, PodInfo};
use plexus_kube::watch::{Caches, ChangeKind, DaemonCluster, PodChange};
use plexus_npwg::{DEFAULT_NETWORK_ANNOTATION, NETWORKS_ANNOTATION};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// First retry of a failed hot-plug, doubled at each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// One lock per container: the runtime's requests and hot-plug never act on the same
/// container at once.
#[derive(Debug, Default)]
pub struct ContainerLocks {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// Held while a container is acted on.
pub struct ContainerGuard<'a> {
    locks: &'a ContainerLocks,
    id: String,
}

impl ContainerLocks {
    /// Waits until no one acts on `id`, then holds it.
    pub fn lock(&self, id: &str) -> ContainerGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(id) {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(id.to_string());
        ContainerGuard {
            locks: self,
            id: id.to_string(),
        }
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.locks.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.remove(&self.id);
        self.locks.freed.notify_all();
    }
}

/// The runtime's ADD of a pod finished (the reconciler checks for an edit it missed).
#[derive(Debug, Clone)]
pub struct AddDone {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// When the ADD began.
    pub started: Instant,
}

type Key = (String, String);

/// Container IDs by pod.
type ByPod = HashMap<Key, Vec<String>>;

/// What the reconciler remembers of a pod.
struct Seen {
    /// The two selection annotations as last seen.
    selection: (Option<String>, Option<String>),
    /// When they last changed (the start of the hot-plug latency).
    changed_at: Instant,
}

/// The reconciler's memory.
#[derive(Default)]
struct Book {
    seen: HashMap<Key, Seen>,
    /// When a failed pod is tried again.
    retry: HashMap<Key, Instant>,
    /// The last wait before a retry, doubled at each failure in a row.
    backoff: HashMap<Key, Duration>,
    /// The failure last reported per pod: the same one is not reported again.
    reported: HashMap<Key, String>,
    /// Pods being reconciled, and those to do again when that is over.
    busy: HashSet<Key>,
    again: HashSet<Key>,
}

impl Book {
    fn forget(&mut self, key: &Key) {
        self.seen.remove(key);
        self.retry.remove(key);
        self.backoff.remove(key);
        self.reported.remove(key);
        self.again.remove(key);
    }
}

/// A pod's reconcile, done.
struct Done {
    key: Key,
    pod: PodInfo,
    changed_at: Option<Instant>,
    outcomes: Vec<Result<Reconciled, HotplugError>>,
}

/// Pods reconciled at once (each holds a blocking thread while its delegates run).
const PARALLEL: usize = 8;

/// The hot-plug reconciler.
pub struct Reconciler {
    st: Arc<AppState>,
    caches: Arc<Caches>,
    cluster: Arc<DaemonCluster>,
    index: Arc<Index>,
    done: UnboundedSender<Done>,
    parallel: Arc<tokio::sync::Semaphore>,
}

/// Which containers on file belong to which pod: read from the state files once, and
/// again after an ADD or when older than [`INDEX_TTL`] (a daemon start reconciles
/// every pod of the node: one pass over the files, not one per pod).
#[derive(Default)]
struct Index {
    built: Mutex<Option<(Instant, ByPod)>>,
}

/// How long the index is trusted without an ADD.
const INDEX_TTL: Duration = Duration::from_secs(2);

impl Index {
    fn invalidate(&self) {
        *self.built.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The containers on file of `pod`.
    fn containers(&self, store: &StateStore, pod: &PodInfo) -> Vec<String> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() > INDEX_TTL)
        {
            *built = Some((Instant::now(), scan(store)));
        }
        let key = (pod.namespace.clone(), pod.name.clone());
        built
            .as_ref()
            .and_then(|(_, m)| m.get(&key).cloned())
            .unwrap_or_default()
    }
}

/// Every state file's container, by pod.
fn scan(store: &StateStore) -> ByPod {
    let ids = match store.containers() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "hot-plug: cannot list the state files");
            return HashMap::new();
        }
    };
    let mut out = ByPod::new();
    for id in ids {
        if let Ok(Some(s)) = store.load(&id) {
            out.entry((s.pod_namespace, s.pod_name))
                .or_default()
                .push(id);
        }
    }
    out
}

/// Starts the reconciler; the returned sender is for the runtime's finished ADDs.
pub fn start(
    st: Arc<AppState>,
    caches: Arc<Caches>,
    cluster: Arc<DaemonCluster>,
) -> UnboundedSender<AddDone> {
    let changes = caches.subscribe();
    let (tx, adds) = tokio::sync::mpsc::unbounded_channel();
    let (done, finished) = tokio::sync::mpsc::unbounded_channel();
    let r = Arc::new(Reconciler {
        st,
        caches,
        cluster,
        index: Default::default(),
        done,
        parallel: Arc::new(tokio::sync::Semaphore::new(PARALLEL)),
    });
    tokio::spawn(r.run(changes, adds, finished));
    tx
}

fn selection_of(pod: &PodInfo) -> (Option<String>, Option<String>) {
    (
        pod.annotations.get(NETWORKS_ANNOTATION).cloned(),
        pod.annotations.get(DEFAULT_NETWORK_ANNOTATION).cloned(),
    )
}

impl Reconciler {
    async fn run(
        self: Arc<Self>,
        mut changes: UnboundedReceiver<PodChange>,
        mut adds: UnboundedReceiver<AddDone>,
        mut finished: UnboundedReceiver<Done>,
    ) {
        let mut book = Book::default();
        loop {
            let next = book.retry.values().min().copied();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => self.on_change(&mut book, c),
                    None => return,
                },
                Some(a) = adds.recv() => self.on_add(&mut book, a),
                Some(d) = finished.recv() => self.finish(&mut book, d),
                () = sleep => {
                    let now = Instant::now();
                    let due: Vec<Key> = book.retry.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
                    for k in due {
                        self.reconcile(&mut book, k, ChangeKind::Applied);
                    }
                }
            }
        }
    }

    fn on_change(&self, book: &mut Book, c: PodChange) {
        let key = (c.namespace.clone(), c.name.clone());
        if c.kind == ChangeKind::Deleted {
            book.forget(&key);
            return;
        }
        let Some((pod, _)) = self.caches.pod_info(&c.namespace, &c.name) else {
            return;
        };
        let sel = selection_of(&pod);
        let first = !book.seen.contains_key(&key);
        match book.seen.get_mut(&key) {
            // A status write, a label, a relist of the watch: nothing to do.
            Some(s) if s.selection == sel => return,
            Some(s) => {
                s.selection = sel;
                s.changed_at = Instant::now();
                book.reported.remove(&key);
                book.retry.remove(&key);
                book.backoff.remove(&key);
            }
            None => {
                book.seen.insert(
                    key.clone(),
                    Seen {
                        selection: sel,
                        changed_at: Instant::now(),
                    },
                );
            }
        }
        // A pod created now is attached by its ADD, with the annotation it has then.
        if first && c.kind == ChangeKind::Applied {
            return;
        }
        self.reconcile(book, key, c.kind);
    }

    fn on_add(&self, book: &mut Book, a: AddDone) {
        self.index.invalidate();
        let key = (a.namespace, a.name);
        // The ADD read the pod before the edit: it attached the old selection.
        if book
            .seen
            .get(&key)
            .is_some_and(|s| s.changed_at > a.started)
        {
            self.reconcile(book, key, ChangeKind::Applied);
        }
    }

    /// Starts the reconcile of a pod (at most [`PARALLEL`] at once); one already under
    /// way is done again when it is over.
    fn reconcile(&self, book: &mut Book, key: Key, kind: ChangeKind) {
        book.retry.remove(&key);
        if book.busy.contains(&key) {
            book.again.insert(key);
            return;
        }
        let Some((pod, host_network)) = self.caches.pod_info(&key.0, &key.1) else {
            return;
        };
        if host_network {
            if kind == ChangeKind::Applied {
                let e = HotplugError {
                    failure: Failure::Rejected,
                    error: plexus_cni::CniError::invalid_config(format!(
                        "pod \"{}\" is on the host's network: it has no network namespace of its own to attach networks to",
                        pod.key()
                    )),
                };
                self.failed(book, &key, &pod, &e);
            }
            return;
        }
        book.busy.insert(key.clone());
        let changed_at = book.seen.get(&key).map(|s| s.changed_at);
        let edited = kind == ChangeKind::Applied;
        let (st, cluster, index) = (self.st.clone(), self.cluster.clone(), self.index.clone());
        let (done, parallel) = (self.done.clone(), self.parallel.clone());
        tokio::spawn(async move {
            let _turn = parallel.acquire_owned().await;
            let p = pod.clone();
            let outcomes = tokio::task::spawn_blocking(move || {
                reconcile_pod(&st, &cluster, &p, &index, edited)
            })
            .await
            .unwrap_or_default();
            let _ = done.send(Done {
                key,
                pod,
                changed_at,
                outcomes,
            });
        });
    }

    /// A pod's reconcile is over: its events, metrics and retry.
    fn finish(&self, book: &mut Book, d: Done) {
        let Done {
            key,
            pod,
            changed_at,
            outcomes,
        } = d;
        book.busy.remove(&key);
        let (mut failed, mut clean) = (false, true);
        for outcome in outcomes {
            match outcome {
                Ok(Reconciled::Changed { added, removed }) => {
                    for m in &added {
                        self.cluster
                            .post_event(&pod, EventType::Normal, "AddedInterface", m);
                    }
                    for m in &removed {
                        self.cluster
                            .post_event(&pod, EventType::Normal, "RemovedInterface", m);
                    }
                    self.count("changed");
                    if let Some(t) = changed_at {
                        self.st
                            .metrics
                            .hotplug_latency
                            .observe(t.elapsed().as_secs_f64());
                    }
                    tracing::info!(pod = %pod.key(), ?added, ?removed, "hot-plug done");
                }
                Ok(Reconciled::Unchanged) => {}
                Ok(Reconciled::Skipped(why)) => {
                    tracing::debug!(pod = %pod.key(), why, "hot-plug: skipped");
                }
                Err(e) => {
                    self.failed(book, &key, &pod, &e);
                    failed |= e.failure != Failure::Rejected;
                    clean = false;
                }
            }
        }
        if !book.seen.contains_key(&key) {
            // Deleted meanwhile.
            book.forget(&key);
            return;
        }
        if book.again.remove(&key) {
            self.reconcile(book, key, ChangeKind::Applied);
        } else if failed {
            let delay = book
                .backoff
                .get(&key)
                .map(|d| (*d * 2).min(RETRY_MAX))
                .unwrap_or(RETRY_FIRST);
            book.backoff.insert(key.clone(), delay);
            book.retry.insert(key, Instant::now() + delay);
        } else {
            book.backoff.remove(&key);
            if clean {
                // A success after failures: the next failure is news again.
                book.reported.remove(&key);
            }
        }
    }

    /// One event per distinct failure of a pod, however often it is retried.
    fn failed(&self, book: &mut Book, key: &Key, pod: &PodInfo, e: &HotplugError) {
        let result = match e.failure {
            Failure::Rejected => "rejected",
            Failure::Adding => "failed_adding",
            Failure::Removing => "failed_removing",
        };
        self.count(result);
        tracing::warn!(pod = %pod.key(), error = %e, "hot-plug failed");
        let msg = e.error.to_string();
        if book.reported.get(key) != Some(&msg) {
            self.cluster
                .post_event(pod, EventType::Warning, e.failure.reason(), &msg);
            book.reported.insert(key.clone(), msg);
        }
    }

    fn count(&self, result: &str) {
        self.st
            .metrics
            .hotplug
            .get_or_create(&HotplugLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// Reconciles every container of `pod` on file (normally one), each under its lock.
/// A container whose state names another pod UID is the engine's to skip.
fn reconcile_pod(
    st: &AppState,
    cluster: &Arc<DaemonCluster>,
    pod: &PodInfo,
    index: &Index,
    edited: bool,
) -> Vec<Result<Reconciled, HotplugError>> {
    let store = StateStore::new(&st.cfg.cni_dir);
    let mut out = Vec::new();
    for id in index.containers(&store, pod) {
        let _held = st.locks.lock(&id);
        out.push(reconcile_container(st, cluster, &store, &id, pod, edited));
    }
    out
}

/// One container: its engine made from the configuration its ADD kept.
fn reconcile_container(
    st: &AppState,
    cluster: &Arc<DaemonCluster>,
    store: &StateStore,
    id: &str,
    pod: &PodInfo,
    edited: bool,
) -> Result<Reconciled, HotplugError> {
    let adding = |error| HotplugError {
        failure: Failure::Adding,
        error,
    };
    let Some(state) = store.load(id).map_err(adding)? else {
        return Ok(Reconciled::Skipped("no state: deleted"));
    };
    if state.deleting {
        return Ok(Reconciled::Skipped("its DEL has begun"));
    }
    let Some(kept) = &state.conf else {
        // Pods added before (thin mode, an older Plexus) are refused when edited, not
        // each time the daemon starts and lists them.
        if !edited {
            return Ok(Reconciled::Skipped(
                "added without the daemon's configuration",
            ));
        }
        return Err(plexus_engine::hotplug::added_without_daemon(pod));
    };
    let conf = NetConf::parse(kept.to_string().as_bytes()).map_err(adding)?;
    if conf.plexus.local.is_some() {
        return Ok(Reconciled::Skipped("local mode: no annotations to follow"));
    }
    let kubelet = st.kubelet(plexus_kubelet::Settings::from_conf(&conf.plexus));
    let mut engine = Engine::new(conf, Some(cluster.clone() as Arc<dyn Cluster>));
    if let Some(x) = &st.exec {
        engine = engine.with_exec(x.clone());
    }
    if let Some(k) = kubelet {
        engine = engine.with_devices(k);
    }
    engine.reconcile(id, pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_per_container_and_others_unblocked() {
        let locks = Arc::new(ContainerLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _held = locks.lock("c1");
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        // Another container is not held up by one that is held.
        let _c1 = locks.lock("c1");
        let _c2 = locks.lock("c2");
        assert!(locks.busy.lock().unwrap().len() == 2);
    }
}
