//! `plexus-bench`: what Plexus adds to a pod's network setup, measured as root in real
//! namespaces with the real reference plugins, against the delegates alone and, when
//! given, against another meta-plugin in the same run. See docs/benchmarks.md.

mod cluster;
mod floor;
mod stats;
mod svg;

use anyhow::Context;
use clap::Parser;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_conformance::cluster::Cluster;
use plexus_e2e::meta::{nad_object, pod_object, Daemon, Node};
use plexus_e2e::{files_below, links, unique};
use plexus_kubelet::testing::TestKubelet;
use plexus_testapi::{KeyKind, Resource, Security, TestApiServer};
use serde_json::{json, Value};
use stats::{ms, summarize, Summary};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    about = "Plexus benchmarks: per-pod latency against the delegates alone, churn, daemon memory, API requests"
)]
struct Args {
    /// Pods per latency measurement (per mode).
    #[arg(long, default_value_t = 40)]
    pods: usize,
    /// Secondary networks per pod to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,1,3,8")]
    networks: Vec<usize>,
    /// Kinds of networks to measure: noop, device (no-op delegates of device-backed
    /// NADs: the kubelet's PodResources asked, the device handed to the delegate),
    /// bridge, macvlan, mixed.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "noop,device,bridge,macvlan,mixed"
    )]
    kinds: Vec<String>,
    /// Pods in flight for the churn runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Pods per churn run.
    #[arg(long, default_value_t = 64)]
    churn_pods: usize,
    /// NADs in the API server (besides the benchmark's own).
    #[arg(long, default_value_t = 1000)]
    nads: usize,
    /// Pods on this node in the API server.
    #[arg(long, default_value_t = 200)]
    node_pods: usize,
    /// Pods on other nodes in the API server.
    #[arg(long, default_value_t = 10_000)]
    other_pods: usize,
    /// A small run (smoke test).
    #[arg(long)]
    quick: bool,
    /// Another meta-plugin's binary, measured on the same workload.
    #[arg(long)]
    other_bin: Option<PathBuf>,
    /// Its plugin configuration (JSON); `@KUBECONFIG@`, `@WORKDIR@` and `@CLUSTER@` (the
    /// cluster network's conflist path) are replaced.
    #[arg(long)]
    other_conf: Option<PathBuf>,
    /// The other meta-plugin's daemon (thick implementations): a JSON object with
    /// `command`, `files` (written to the work directory first) and `readySocket`, as
    /// plexus-conformance's candidate files have it, with the same placeholders plus
    /// `@WORKDIR@`: `@SERVICEACCOUNT@`, `@APIHOST@` and `@APIPORT@` give the in-cluster
    /// credentials of the test API server.
    #[arg(long)]
    other_daemon: Option<PathBuf>,
    /// Write the latency plot here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run against the cluster of this kubeconfig instead of the test API server: the
    /// bench makes a namespace of its own (removed at the end) with its NADs and pods,
    /// the pods bound to a node name no kubelet has. No filler objects are made and API
    /// requests are not counted (the test API server counts them).
    /// `--other-daemon` then gets the kubeconfig user's bearer token and the cluster's
    /// CA, and the forwarder's loopback address, which the API server's certificate
    /// must name.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The test API server's transport: `rsa` (HTTPS with an RSA 2048 serving
    /// certificate, kubeadm's default), `ecdsa` (P-256) or `plain` (HTTP, to measure
    /// what TLS costs).
    #[arg(long, default_value = "rsa", value_parser = ["rsa", "ecdsa", "plain"])]
    api: String,
}

/// Where the benchmark's Kubernetes objects are.
enum Objects {
    /// The repo's test API server, in the node's namespace.
    Test(TestApiServer),
    /// A cluster given by `--kubeconfig`.
    Cluster(Box<ClusterObjects>),
}

struct ClusterObjects {
    cluster: Cluster,
    /// The bench's namespace in it, removed at the end.
    ns: String,
    /// The kubeconfig's cluster, and the forwarder's address.
    remote: cluster::Remote,
    local: std::net::SocketAddr,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        self.cluster.delete_namespace(&self.ns);
    }
}

/// The NAD API's absence, said as such.
fn nad_error(e: anyhow::Error) -> String {
    format!(
        "{e:#}: the cluster must serve NetworkAttachmentDefinitions (k8s.cni.cncf.io/v1, deploy/crd.yaml)"
    )
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    /// Every network, the cluster one included, is a plugin that only prints a result:
    /// what remains is the meta-plugin's own cost.
    Noop,
    /// No-op delegates of device-backed NADs (`resourceName`), each pod given its
    /// devices by the test kubelet: the device lookup's own cost.
    Device,
    Bridge,
    Macvlan,
    Mixed,
}

impl Kind {
    /// Its name in `--kinds`.
    fn key(self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Device => "device",
            Kind::Bridge => "bridge",
            Kind::Macvlan => "macvlan",
            Kind::Mixed => "mixed",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Noop => "no-op delegates",
            Kind::Device => "device-backed no-op delegates",
            Kind::Bridge => "bridge+host-local",
            Kind::Macvlan => "macvlan+host-local",
            Kind::Mixed => "mixed",
        }
    }
    fn networks(self, k: usize) -> Vec<String> {
        (1..=k)
            .map(|i| match self {
                Kind::Noop => format!("n{i}"),
                Kind::Device => format!("d{i}"),
                Kind::Bridge => format!("b{i}"),
                Kind::Macvlan => format!("m{i}"),
                Kind::Mixed => {
                    if i % 2 == 1 {
                        format!("b{i}")
                    } else {
                        format!("m{i}")
                    }
                }
            })
            .collect()
    }
}

struct Bench {
    node: Node,
    api: Objects,
    /// The namespace of the bench's NADs and pods.
    ns: String,
    /// The node name of its pods.
    node_name: String,
    nad_configs: BTreeMap<String, Value>,
    thin_conf: Value,
    shim_conf: Value,
    /// The same with the no-op cluster network.
    noop_thin_conf: Value,
    noop_shim_conf: Value,
    counter: AtomicUsize,
    /// The kubelet the device kind's pods get their devices from.
    kubelet: TestKubelet,
}

/// The resource of the device kind's NADs.
const DEVICE_RESOURCE: &str = "bench.example/vf";

/// The cluster network of the no-op kind.
fn noop_cluster() -> Value {
    json!({"cniVersion": "1.0.0", "name": "cluster-noop",
           "plugins": [{"type": "plexus-test-plugin", "ip": "192.0.2.10/24"}]})
}

/// The node, the objects' place, the namespace and node name of the bench's pods.
fn connect(args: &Args, pods: usize) -> anyhow::Result<(Node, Objects, String, String)> {
    let Some(kc) = &args.kubeconfig else {
        let security = match args.api.as_str() {
            "plain" => Security::Plain,
            "ecdsa" => Security::Tls(KeyKind::EcdsaP256),
            _ => Security::Tls(KeyKind::Rsa2048),
        };
        let (node, api) = Node::kube_with(pods, security);
        return Ok((node, Objects::Test(api), "bench".into(), "node-a".into()));
    };
    // What the kubeconfig must hold is checked before anything is made.
    let remote = cluster::Remote::read(kc)?;
    if args.other_daemon.is_some() {
        remote.in_cluster().context("--other-daemon")?;
    }
    let mut node = Node::new(pods, plexus_e2e::meta::Mode::Local);
    let listener = node.loopback_listener();
    let local = listener.local_addr().expect("local address");
    let path = node.kubeconfig_path();
    cluster::write_kubeconfig(&remote.forwarded(local), &path)?;
    cluster::forward(listener, remote.target);
    node.use_kubeconfig(&path);
    let node_name = format!("plexus-bench-{}", unique("nod"));
    let c = Cluster::connect(kc, &node_name, None)?;
    let ns = format!("plexus-bench-{}", unique("ns"));
    c.create_namespace(&ns)?;
    let objects = Objects::Cluster(Box::new(ClusterObjects {
        cluster: c,
        ns: ns.clone(),
        remote,
        local,
    }));
    Ok((node, objects, ns, node_name))
}

/// The node, its objects and the bench's NADs; an error once what was made is gone.
fn setup(args: &Args) -> anyhow::Result<Bench> {
    let (mut node, api, ns, node_name) = connect(args, args.churn_pods.max(1) + 1)?;
    let socket = node.world.subdir("kubelet").join("kubelet.sock");
    let kubelet = TestKubelet::start(&socket).expect("the test kubelet");
    node.conf["plexus"]["podResourcesSocket"] = json!(socket);
    let ipam = node.ipam_dir();
    let mut nad_configs = BTreeMap::new();
    for k in 1..=8u32 {
        nad_configs.insert(format!("b{k}"), json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": unique("bb"),
            "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": format!("198.51.100.{}/27", 32 * (k - 1))}]]}}));
        nad_configs.insert(format!("m{k}"), json!({"cniVersion": "1.0.0", "type": "macvlan", "master": node.master, "mode": "bridge",
            "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": format!("203.0.113.{}/28", 16 * (k - 1))}]]}}));
        nad_configs.insert(
            format!("n{k}"),
            json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "ip": format!("198.51.100.{}/24", 200 + k)}),
        );
    }
    nad_configs.insert("churn".into(), json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": unique("cb"),
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "203.0.113.128/25"}]]}}));
    let device_annotations = json!({"k8s.v1.cni.cncf.io/resourceName": DEVICE_RESOURCE});
    for k in 1..=8u32 {
        let cfg = json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin",
                         "ip": format!("198.51.100.{}/24", 220 + k), "capabilities": {"deviceID": true}});
        nad_configs.insert(format!("d{k}"), cfg);
    }
    for (name, cfg) in &nad_configs {
        let annotations = if name.starts_with('d') {
            device_annotations.clone()
        } else {
            json!({})
        };
        match &api {
            Objects::Test(t) => {
                let mut o = nad_object(&ns, name, cfg);
                o["metadata"]["annotations"] = annotations;
                t.put(Resource::Nads, o);
            }
            Objects::Cluster(c) => {
                if let Err(e) = c.cluster.create_nad(&ns, name, Some(cfg), annotations) {
                    return Err(anyhow::anyhow!(nad_error(e)));
                }
            }
        }
    }
    if let Objects::Test(api) = &api {
        fillers(api, args);
    }
    let thin_conf = node.conf.clone();
    // The daemon's configuration has no cluster network: it comes with each request,
    // from the configuration the runtime reads (the bridge one, or the no-op one).
    let mut shim_conf = node.shim_conf();
    shim_conf["delegates"] = thin_conf["delegates"].clone();
    let mut noop_thin_conf = thin_conf.clone();
    noop_thin_conf["delegates"] = json!([noop_cluster()]);
    let mut noop_shim_conf = shim_conf.clone();
    noop_shim_conf["delegates"] = json!([noop_cluster()]);
    Ok(Bench {
        node,
        api,
        ns,
        node_name,
        nad_configs,
        thin_conf,
        shim_conf,
        noop_thin_conf,
        noop_shim_conf,
        counter: AtomicUsize::new(0),
        kubelet,
    })
}

/// The objects of a busy cluster in the test API server: NADs of other namespaces,
/// pods of this node and of others.
fn fillers(api: &TestApiServer, args: &Args) {
    for i in 0..args.nads {
        let cfg = json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": format!("f{i}")});
        api.put(
            Resource::Nads,
            nad_object(&format!("filler-{}", i % 50), &format!("nad-{i}"), &cfg),
        );
    }
    for i in 0..args.node_pods {
        api.put(
            Resource::Pods,
            pod_object(
                "filler",
                &format!("here-{i}"),
                &format!("uid-h{i}"),
                Some("b1"),
            ),
        );
    }
    for i in 0..args.other_pods {
        let mut p = pod_object(
            "elsewhere",
            &format!("there-{i}"),
            &format!("uid-t{i}"),
            Some("b1"),
        );
        p["spec"]["nodeName"] = json!(format!("node-{}", 1 + i % 100));
        api.put(Resource::Pods, p);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Baseline,
    Thin,
    Thick,
    Other,
    /// Thick mode's floor: the shim and one status write (floor.rs).
    Floor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "delegates alone",
            Mode::Thin => "plexus thin",
            Mode::Thick => "plexus thick",
            Mode::Other => "other meta-plugin",
            Mode::Floor => "thick floor",
        }
    }
}

/// The other meta-plugin (`--other-bin`, `--other-conf`).
struct Other {
    bin: PathBuf,
    /// Its configuration with the bridge cluster network.
    conf: Value,
    /// The same with the no-op kind's cluster network.
    noop_conf: Value,
    /// Whether it has a daemon (`--other-daemon`), whose own configuration names the
    /// bridge cluster network.
    daemon: bool,
}

impl Other {
    /// Whether it runs the cases of `kind`: not the device kind (its devices come from
    /// the bench's test kubelet, which only Plexus is told of), and with a daemon only
    /// the kinds of the bridge cluster network.
    fn runs(&self, kind: Kind) -> bool {
        match kind {
            Kind::Device => false,
            Kind::Noop => !self.daemon,
            _ => true,
        }
    }
}

struct Runner {
    rt: Runtime,
    /// The meta-plugin's conflist; `None`: the delegates alone.
    list: Option<NetworkConfigList>,
    /// The cluster network (executed by the harness for the delegates alone).
    cluster: NetworkConfigList,
}

impl Bench {
    /// The runner of `mode` for `kind`; `floor`: the floor mode's shim configuration.
    fn runner(&self, mode: Mode, kind: Kind, other: &Option<Other>, floor: &Value) -> Runner {
        let mut paths = self.node.rt.paths.clone();
        let noop = matches!(kind, Kind::Noop | Kind::Device);
        let cluster = if noop {
            noop_cluster()
        } else {
            self.thin_conf["delegates"][0].clone()
        };
        let cluster = NetworkConfigList::from_bytes_any(cluster.to_string().as_bytes())
            .expect("cluster list");
        let conf = match mode {
            Mode::Baseline => {
                paths.reverse();
                return Runner {
                    // The plugins' directories, the reference plugins' first (as
                    // Plexus's binDir is searched first).
                    rt: self.runtime(paths),
                    list: None,
                    cluster,
                };
            }
            Mode::Thin if noop => self.noop_thin_conf.clone(),
            Mode::Thick if noop => self.noop_shim_conf.clone(),
            Mode::Thin => self.thin_conf.clone(),
            Mode::Thick => self.shim_conf.clone(),
            Mode::Floor => floor.clone(),
            Mode::Other => {
                let o = other.as_ref().expect("other meta-plugin");
                paths.insert(0, o.bin.parent().map(PathBuf::from).unwrap_or_default());
                if noop {
                    o.noop_conf.clone()
                } else {
                    o.conf.clone()
                }
            }
        };
        let list = NetworkConfigList::from_value(
            json!({"cniVersion": "1.0.0", "name": "bench-net", "plugins": [conf]}),
        )
        .expect("conflist");
        Runner {
            rt: self.runtime(paths),
            list: Some(list),
            cluster,
        }
    }

    /// The container runtime: like containerd or CRI-O through libcni, it keeps the
    /// result of every network it executes in libcni's cache.
    fn runtime(&self, paths: Vec<PathBuf>) -> Runtime {
        Runtime::new(paths, Some(self.node.world.subdir("runtime-cache")))
    }

    fn nad_list(&self, name: &str) -> NetworkConfigList {
        let mut v = self.nad_configs[name].clone();
        v["name"] = json!(name);
        NetworkConfigList::from_bytes_any(v.to_string().as_bytes()).expect("NAD list")
    }

    fn pod(&self, ctr: usize, networks: &[String]) -> Attachment {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{n}");
        let sel = networks.join(",");
        let devices: Vec<String> = networks
            .iter()
            .filter(|n| n.starts_with('d'))
            .enumerate()
            .map(|(i, _)| format!("0000:{:02x}:{:02x}.{i}", n / 256 % 256, n % 256))
            .collect();
        if !devices.is_empty() {
            let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
            self.kubelet
                .allocate(&self.ns, &name, "app", DEVICE_RESOURCE, &ids);
        }
        let sel = (!sel.is_empty()).then_some(sel.as_str());
        match &self.api {
            Objects::Test(api) => {
                api.put(
                    Resource::Pods,
                    pod_object(&self.ns, &name, &format!("uid-{n}"), sel),
                );
            }
            Objects::Cluster(c) => {
                let annotations = match sel {
                    Some(s) => json!({ plexus_conformance::cluster::NETWORKS: s }),
                    None => json!({}),
                };
                c.cluster
                    .create_pod(&self.ns, &name, annotations)
                    .unwrap_or_else(|e| panic!("creating pod {}/{name}: {e:#}", self.ns));
                // A kubelet sets a pod's network up well after the pod is made (it is
                // scheduled, seen, its sandbox made): the daemon's watch has it by then.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.node
            .attachment(ctr, &format!("bench{n}x"), &self.ns, &name, &[])
    }

    /// One pod's ADD; returns its latency.
    /// The delegates' lists and attachments, as the delegates alone run them.
    fn delegates(
        &self,
        r: &Runner,
        att: &Attachment,
        networks: &[String],
    ) -> Vec<(NetworkConfigList, Attachment)> {
        let mut out = vec![(r.cluster.clone(), att.clone())];
        for (i, n) in networks.iter().enumerate() {
            let a = Attachment {
                ifname: format!("net{}", i + 1),
                ..att.clone()
            };
            out.push((self.nad_list(n), a));
        }
        out
    }

    fn add(&self, r: &Runner, att: &Attachment, networks: &[String]) -> Duration {
        let lists = self.delegates(r, att, networks);
        let t = Instant::now();
        let res = self.node.world.host.run(|| match &r.list {
            Some(l) => r.rt.add_list(l, att).map(|_| ()),
            None => lists
                .iter()
                .try_for_each(|(l, a)| r.rt.add_list(l, a).map(|_| ())),
        });
        res.expect("host namespace")
            .unwrap_or_else(|e| panic!("ADD: {e}"));
        t.elapsed()
    }

    fn del(&self, r: &Runner, att: &Attachment, networks: &[String]) -> Duration {
        let lists = self.delegates(r, att, networks);
        let t = Instant::now();
        let res = self.node.world.host.run(|| match &r.list {
            Some(l) => r.rt.del_list(l, att),
            None => lists
                .iter()
                .rev()
                .try_for_each(|(l, a)| r.rt.del_list(l, a)),
        });
        res.expect("host namespace")
            .unwrap_or_else(|e| panic!("DEL: {e}"));
        t.elapsed()
    }

    fn leak_check(&self, ctrs: std::ops::Range<usize>) {
        for i in ctrs {
            assert_eq!(
                links(self.node.world.ctr(i)),
                ["lo"],
                "interfaces left in pod {i}"
            );
        }
        let mut left = self.node.leftovers();
        left.extend(files_below(&self.node.world.subdir("runtime-cache")));
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn latency(
    b: &Bench,
    args: &Args,
    modes: &[Mode],
    other: &Option<Other>,
    floor: &floor::Floor,
) -> Latencies {
    let mut out = BTreeMap::new();
    let mut cases: Vec<(usize, Kind)> = Vec::new();
    for &k in &args.networks {
        cases.push((k, Kind::Noop));
        if k >= 1 {
            cases.push((k, Kind::Device));
        }
        cases.push((k, Kind::Bridge));
        if k >= 1 {
            cases.push((k, Kind::Macvlan));
        }
        if k >= 2 {
            cases.push((k, Kind::Mixed));
        }
    }
    cases.retain(|(_, kind)| args.kinds.iter().any(|n| n == kind.key()));
    for &(k, kind) in &cases {
        let nets = kind.networks(k);
        let modes: Vec<Mode> = modes
            .iter()
            .copied()
            .filter(|m| *m != Mode::Other || other.as_ref().is_some_and(|o| o.runs(kind)))
            .collect();
        let floor_conf = floor.shim_conf(&nets);
        let runners: Vec<Runner> = modes
            .iter()
            .map(|&m| b.runner(m, kind, other, &floor_conf))
            .collect();
        // One warm-up pod per mode, not counted (page cache, first exec of each plugin).
        for r in &runners {
            let att = b.pod(0, &nets);
            b.add(r, &att, &nets);
            b.del(r, &att, &nets);
        }
        // Pods exist before their sandbox is set up, as with a real scheduler and kubelet.
        // Round i has one pod per mode.
        let rounds: Vec<Vec<Attachment>> = (0..args.pods)
            .map(|_| runners.iter().map(|_| b.pod(0, &nets)).collect())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut samples = vec![(Vec::new(), Vec::new()); runners.len()];
        for (i, round) in rounds.iter().enumerate() {
            // The modes take turns, in a rotating order, so that a slow spell of the
            // machine falls on all of them alike.
            for j in 0..runners.len() {
                let m = (i + j) % runners.len();
                let att = &round[m];
                samples[m].0.push(ms(b.add(&runners[m], att, &nets)));
                samples[m].1.push(ms(b.del(&runners[m], att, &nets)));
            }
        }
        b.leak_check(0..1);
        for (mode, (adds, dels)) in modes.iter().zip(samples) {
            eprintln!(
                "latency {k} {} {}: ADD median {:.1} ms",
                kind.name(),
                mode.name(),
                summarize(&adds).median
            );
            out.insert((k, kind, mode.name()), Samples { adds, dels });
        }
    }
    out
}

/// One case's latencies of one mode, in round order.
#[derive(Default)]
struct Samples {
    adds: Vec<f64>,
    dels: Vec<f64>,
}

impl Samples {
    fn add(&self) -> Summary {
        summarize(&self.adds)
    }
    fn del(&self) -> Summary {
        summarize(&self.dels)
    }
}

type Latencies = BTreeMap<(usize, Kind, &'static str), Samples>;

/// The median of the per-round differences `m[i] - b[i]` (nearest rank, as every
/// other percentile here).
fn paired_median(m: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = m.iter().zip(b).map(|(x, y)| x - y).collect();
    summarize(&d).median
}

struct ChurnResult {
    mode: &'static str,
    inflight: usize,
    add: Summary,
    del: Summary,
    add_rate: f64,
    del_rate: f64,
}

fn churn(
    b: &Bench,
    args: &Args,
    mode: Mode,
    inflight: usize,
    rss_peak: Option<(&AtomicBool, u32, &AtomicU64)>,
) -> ChurnResult {
    let r = b.runner(mode, Kind::Bridge, &None, &Value::Null);
    let nets = vec!["churn".to_string()];
    let atts: Vec<Attachment> = (0..args.churn_pods).map(|j| b.pod(j + 1, &nets)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let run = |f: &(dyn Fn(&Attachment) -> Duration + Sync)| -> (Vec<f64>, Duration) {
        let next = AtomicUsize::new(0);
        let lat = std::sync::Mutex::new(Vec::new());
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..inflight.min(atts.len()) {
                s.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(a) = atts.get(j) else { break };
                    let d = f(a);
                    lat.lock().expect("latency list").push(ms(d));
                });
            }
            if let Some((stop, pid, peak)) = rss_peak {
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                });
            }
            // Wait for the workers, then stop the sampler.
            while next.load(Ordering::Relaxed) < atts.len() + inflight.min(atts.len()) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some((stop, _, _)) = rss_peak {
                stop.store(true, Ordering::Relaxed);
            }
        });
        if let Some((stop, _, _)) = rss_peak {
            stop.store(false, Ordering::Relaxed);
        }
        (lat.into_inner().expect("latency list"), t.elapsed())
    };
    let (adds, add_wall) = run(&|a| b.add(&r, a, &nets));
    let (dels, del_wall) = run(&|a| b.del(&r, a, &nets));
    b.leak_check(1..args.churn_pods + 1);
    let n = atts.len() as f64;
    eprintln!(
        "churn {} x{inflight}: {:.1} ADD/s",
        mode.name(),
        n / add_wall.as_secs_f64()
    );
    ChurnResult {
        mode: mode.name(),
        inflight,
        add: summarize(&adds),
        del: summarize(&dels),
        add_rate: n / add_wall.as_secs_f64(),
        del_rate: n / del_wall.as_secs_f64(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// (reads, writes other than events, event writes) of an ADD and of a DEL.
type ApiCounts = [(usize, usize, usize); 2];

fn api_requests(b: &Bench, api: &TestApiServer, mode: Mode) -> ApiCounts {
    let r = b.runner(mode, Kind::Bridge, &None, &Value::Null);
    let nets = vec!["b1".to_string()];
    let att = b.pod(0, &nets);
    std::thread::sleep(Duration::from_millis(300)); // the daemon's watch has the pod
    let count = |api: &TestApiServer| {
        let reqs = api.requests();
        let reads = reqs
            .iter()
            .filter(|(m, p)| m == "GET" && !p.contains("watch=true"))
            .count();
        let writes = reqs.iter().filter(|(m, _)| m != "GET").count();
        let events = reqs
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/events"))
            .count();
        (reads, writes - events, events)
    };
    api.clear_requests();
    b.add(&r, &att, &nets);
    std::thread::sleep(Duration::from_millis(300)); // background event writes land
    let a = count(api);
    api.clear_requests();
    b.del(&r, &att, &nets);
    let d = count(api);
    [a, d]
}

fn main() {
    let mut args = Args::parse();
    if args.quick {
        args.pods = 3;
        args.networks = vec![0, 1];
        args.concurrency = vec![1, 4];
        args.churn_pods = 8;
        args.nads = 20;
        args.node_pods = 10;
        args.other_pods = 100;
    }
    // Nothing is left behind on an error: what setup made is dropped before the exit.
    let b = setup(&args).unwrap_or_else(|e| {
        eprintln!("plexus-bench: {e:#}");
        std::process::exit(2)
    });
    let kubeconfig = b.thin_conf["kubeconfig"].clone();
    let other = match (&args.other_bin, &args.other_conf) {
        (Some(bin), Some(conf)) => {
            let text = std::fs::read_to_string(conf)
                .expect("other-conf")
                .replace("@KUBECONFIG@", kubeconfig.as_str().unwrap_or_default())
                .replace(
                    "@WORKDIR@",
                    &b.node.world.subdir("other").display().to_string(),
                );
            let cluster = |name: &str, list: &Value| {
                let p = b.node.world.subdir("other").join(name);
                std::fs::write(&p, list.to_string()).expect("cluster conflist");
                p.display().to_string()
            };
            let confs = [
                (
                    false,
                    cluster("cluster.conflist", &b.thin_conf["delegates"][0]),
                ),
                (true, cluster("cluster-noop.conflist", &noop_cluster())),
            ]
            .map(|(noop, path)| {
                let text = text.replace("@CLUSTER@", &path);
                (
                    noop,
                    serde_json::from_str::<Value>(&text).expect("other-conf JSON"),
                )
            });
            Some(Other {
                bin: bin.clone(),
                conf: confs[0].1.clone(),
                noop_conf: confs[1].1.clone(),
                daemon: args.other_daemon.is_some(),
            })
        }
        _ => None,
    };
    let _other_daemon = args.other_daemon.as_ref().map(|f| {
        // The in-cluster credentials the other daemon is given.
        let (creds, addr) = match &b.api {
            Objects::Test(api) => (
                cluster::InCluster {
                    token: api.token().to_string(),
                    ca_pem: api.ca_pem().unwrap_or_default().to_string(),
                },
                api.addr(),
            ),
            // Checked in `connect`; a panic unwinds and removes what was made.
            Objects::Cluster(c) => match c.remote.in_cluster() {
                Ok(creds) => (creds, c.local),
                Err(e) => panic!("--other-daemon: {e:#}"),
            },
        };
        other_daemon(&b, &creds, addr, f)
    });
    let daemon = Daemon::start(&b.node, json!({"delegates": null, "nodeName": b.node_name}));
    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, idle_cpu0) = (daemon.rss_kib(), cpu_seconds(daemon.pid()));
    std::thread::sleep(Duration::from_secs(3));
    let idle_cpu = cpu_seconds(daemon.pid()) - idle_cpu0;

    let floor = floor::Floor::start(
        &b.node.world.host.open().expect("the host namespace"),
        &b.node.world.subdir("floor"),
        kubeconfig.as_str().unwrap_or_default().as_ref(),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut modes = vec![Mode::Baseline, Mode::Thin, Mode::Thick, Mode::Floor];
    if other.is_some() {
        modes.push(Mode::Other);
    }
    let lat = latency(&b, &args, &modes, &other, &floor);
    drop(floor);
    let mut churns = Vec::new();
    let stop = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let cpu0 = cpu_seconds(daemon.pid());
    for &c in &args.concurrency {
        // The delegates alone first: the latency spread the plugins have by themselves.
        churns.push(churn(&b, &args, Mode::Baseline, c, None));
        churns.push(churn(&b, &args, Mode::Thin, c, None));
        churns.push(churn(
            &b,
            &args,
            Mode::Thick,
            c,
            Some((&stop, daemon.pid(), &peak)),
        ));
    }
    let churn_cpu = cpu_seconds(daemon.pid()) - cpu0;
    let after_rss = daemon.rss_kib();
    let api = match &b.api {
        Objects::Test(api) => vec![
            (Mode::Thin, api_requests(&b, api, Mode::Thin)),
            (Mode::Thick, api_requests(&b, api, Mode::Thick)),
        ],
        Objects::Cluster(..) => Vec::new(),
    };
    daemon.stop();
    let lookup = device_lookup(&b);
    println!("API server: {}\n", server_description(&args));
    report(
        &args,
        &lat,
        &churns,
        &api,
        (
            idle_rss,
            idle_cpu,
            peak.load(Ordering::Relaxed),
            after_rss,
            churn_cpu,
        ),
        other.is_some(),
    );
    println!(
        "\n## Device lookup: one pod's devices from the kubelet's PodResources (ms; 200 calls)\n"
    );
    println!("| client | median | p90 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, s) in lookup {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.median, s.p90, s.p99, s.max
        );
    }
}

/// What the run's API server was, for the report.
fn server_description(args: &Args) -> String {
    match (&args.kubeconfig, args.api.as_str()) {
        (Some(kc), _) => format!(
            "the cluster of {} (through the bench's forwarder; no filler objects)",
            kc.display()
        ),
        (None, "plain") => "the test API server over plain HTTP, no authentication".into(),
        (None, "ecdsa") => {
            "the test API server over HTTPS, ECDSA P-256 serving certificate, bearer token".into()
        }
        (None, _) => {
            "the test API server over HTTPS, RSA 2048 serving certificate, bearer token".into()
        }
    }
}

/// Starts the other meta-plugin's daemon (`--other-daemon`) in the node's host
/// namespace, with in-cluster credentials (`creds`, the API server at `api_addr`) at
/// hand.
fn other_daemon(
    b: &Bench,
    creds: &cluster::InCluster,
    api_addr: std::net::SocketAddr,
    file: &std::path::Path,
) -> plexus_conformance::candidate::Daemon {
    use plexus_conformance::candidate::{Daemon as OtherDaemon, DaemonSpec, Placeholders};
    let work = b.node.world.subdir("other");
    let sa = work.join("serviceaccount");
    std::fs::create_dir_all(&sa).expect("service account directory");
    std::fs::write(sa.join("token"), &creds.token).expect("token");
    std::fs::write(sa.join("ca.crt"), &creds.ca_pem).expect("CA");
    std::fs::write(sa.join("namespace"), "kube-system").expect("namespace");
    let cluster = work.join("cluster.conflist");
    std::fs::write(&cluster, b.thin_conf["delegates"][0].to_string()).expect("cluster conflist");
    let p = Placeholders {
        kubeconfig: b.thin_conf["kubeconfig"]
            .as_str()
            .unwrap_or_default()
            .into(),
        state_dir: work.join("cni"),
        run_dir: work.clone(),
        cluster,
        bin_dir: "/usr/lib/cni".into(),
        node: b.node_name.clone(),
        exe_dir: std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(PathBuf::from))
            .unwrap_or_default(),
        service_account: sa,
        api_host: api_addr.ip().to_string(),
        api_port: api_addr.port().to_string(),
    };
    let text = std::fs::read_to_string(file)
        .expect("other-daemon file")
        .replace("@WORKDIR@", &work.display().to_string());
    let spec = serde_json::from_str::<DaemonSpec>(&text)
        .expect("other-daemon JSON")
        .resolve(&p);
    let host = plexus_conformance::world::Host::At(b.node.world.host.path().to_path_buf());
    OtherDaemon::start(&spec, &work, &host).expect("starting the other daemon")
}

/// What the device lookup costs by itself, over the test kubelet's unix socket: a new
/// client per call (thin mode: its runtime, the connection, HTTP/2's handshake, `Get`),
/// and one client kept (thick mode: `Get` on the open connection).
fn device_lookup(b: &Bench) -> [(&'static str, Summary); 2] {
    let settings = plexus_kubelet::Settings {
        socket: b.kubelet.socket().to_path_buf(),
        checkpoint: b.node.world.subdir("kubelet").join("none"),
        timeout: Duration::from_secs(10),
    };
    let pod = plexus_engine::PodInfo {
        namespace: "bench".into(),
        name: "lookup".into(),
        ..Default::default()
    };
    b.kubelet
        .allocate("bench", "lookup", "app", DEVICE_RESOURCE, &["0000:03:02.0"]);
    let call = |c: &plexus_kubelet::KubeletDevices| {
        let t = Instant::now();
        let a = plexus_engine::Devices::allocation(c, &pod).expect("the test kubelet answers");
        assert_eq!(a.resources[DEVICE_RESOURCE].len(), 1);
        ms(t.elapsed())
    };
    let fresh: Vec<f64> = (0..200)
        .map(|_| call(&plexus_kubelet::KubeletDevices::new(settings.clone())))
        .collect();
    let kept_client = plexus_kubelet::KubeletDevices::new(settings);
    call(&kept_client);
    let kept: Vec<f64> = (0..200).map(|_| call(&kept_client)).collect();
    [
        ("new client per call (thin)", summarize(&fresh)),
        ("one client kept (thick)", summarize(&kept)),
    ]
}

fn report(
    args: &Args,
    lat: &Latencies,
    churns: &[ChurnResult],
    api: &[(Mode, ApiCounts)],
    mem: (u64, f64, u64, u64, f64),
    with_other: bool,
) {
    println!(
        "## Latency per pod (ms; {} pods each, sequential)\n",
        args.pods
    );
    println!(
        "| networks | kind | mode | ADD median | p90 | p99 | max | DEL median | p90 | p99 | max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ((k, kind, mode), sm) in lat {
        let (a, d) = (sm.add(), sm.del());
        println!(
            "| {k} | {} | {mode} | {} | {} |",
            kind.name(),
            a.cells(),
            d.cells()
        );
    }
    println!("\n## Overhead over the delegates alone (ms)\n");
    println!(
        "Median of the mode minus median of the delegates alone; in brackets the median of the"
    );
    println!("per-round differences (each round runs one pod of every mode back to back).");
    println!("Thick floor: the shim's ADD answered by a server that only writes the status (no");
    println!("delegates), its median; thick / floor: thick ADD's overhead (paired) over it.\n");
    println!(
        "| networks | kind | thin ADD | thin DEL | thick ADD | thick DEL | thick floor ADD | thick / floor |{}",
        if with_other {
            " other ADD | overhead thin / other | overhead thick / other |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|---|---|---|---|{}",
        if with_other { "---|---|---|" } else { "" }
    );
    let keys: Vec<(usize, Kind)> = lat
        .keys()
        .map(|(k, kind, _)| (*k, *kind))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (k, kind) in keys {
        let none = Samples::default();
        let get = |m: Mode| lat.get(&(k, kind, m.name())).unwrap_or(&none);
        let (base, thin, thick) = (get(Mode::Baseline), get(Mode::Thin), get(Mode::Thick));
        let cell = |m: &[f64], b: &[f64]| {
            format!(
                "{:+.1} ({:+.1})",
                summarize(m).median - summarize(b).median,
                paired_median(m, b)
            )
        };
        let floor = summarize(&get(Mode::Floor).adds).median;
        print!(
            "| {k} | {} | {} | {} | {} | {} | {floor:.1} | {:.2} |",
            kind.name(),
            cell(&thin.adds, &base.adds),
            cell(&thin.dels, &base.dels),
            cell(&thick.adds, &base.adds),
            cell(&thick.dels, &base.dels),
            paired_median(&thick.adds, &base.adds) / floor.max(0.001),
        );
        if with_other {
            let o = get(Mode::Other);
            if o.adds.is_empty() {
                // Not measured for this kind (see `Other::runs`).
                print!(" — | — | — |");
            } else {
                // The ratio of the overheads (paired medians), as the targets state them.
                let other = paired_median(&o.adds, &base.adds);
                let ratio = |m: &[f64]| {
                    if other > 0.0 {
                        format!("{:.2}", paired_median(m, &base.adds) / other)
                    } else {
                        "—".to_string()
                    }
                };
                print!(
                    " {} | {} | {} |",
                    cell(&o.adds, &base.adds),
                    ratio(&thin.adds),
                    ratio(&thick.adds)
                );
            }
        }
        println!();
    }
    println!(
        "\n## Churn ({} pods per run, one secondary network; zero leaks checked after every run)\n",
        args.churn_pods
    );
    println!("| mode | in flight | ADD pods/s | ADD median | p90 | p99 | max | p99/median | DEL pods/s | DEL median | p99 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for c in churns {
        println!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.1} | {:.1} |",
            c.mode,
            c.inflight,
            c.add_rate,
            c.add.cells(),
            c.add.p99 / c.add.median.max(0.001),
            c.del_rate,
            c.del.median,
            c.del.p99
        );
    }
    let (idle, idle_cpu, peak, after, churn_cpu) = mem;
    if args.kubeconfig.is_some() {
        println!(
            "\n## plexusd memory and CPU (the bench's 33 NADs and the cluster's own objects)\n"
        );
    } else {
        println!(
            "\n## plexusd memory and CPU ({} NADs, {} pods on this node, {} pods elsewhere)\n",
            args.nads + 33,
            args.node_pods,
            args.other_pods
        );
    }
    println!(
        "| idle RSS | idle CPU (3 s) | peak RSS under churn | RSS after churn | CPU during churn |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {:.1} MiB | {idle_cpu:.2} s | {:.1} MiB | {:.1} MiB | {churn_cpu:.2} s |",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!("\n## API requests per pod (one secondary network)\n");
    if api.is_empty() {
        println!("Not counted: only the test API server counts requests (not with --kubeconfig).");
    }
    println!(
        "| mode | ADD reads | ADD writes (status) | ADD event writes | DEL reads | DEL writes |"
    );
    println!("|---|---|---|---|---|---|");
    for (m, [a, d]) in api {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            m.name(),
            a.0,
            a.1,
            a.2,
            d.0,
            d.1 + d.2
        );
    }
    if let Some(path) = &args.svg {
        let colors = ["#555555", "#1f77b4", "#d62728", "#2ca02c"];
        let modes = [Mode::Baseline, Mode::Thin, Mode::Thick, Mode::Other];
        let series: Vec<svg::Series> = modes
            .iter()
            .zip(colors)
            .map(|(m, color)| svg::Series {
                name: m.name().into(),
                color,
                points: lat
                    .iter()
                    .filter(|((_, kind, mode), _)| *kind == Kind::Bridge && *mode == m.name())
                    .map(|((k, _, _), sm)| (*k as f64, sm.add().median))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        std::fs::write(
            path,
            svg::chart("Pod ADD latency, bridge + host-local networks", &series),
        )
        .expect("writing the plot");
    }
}
