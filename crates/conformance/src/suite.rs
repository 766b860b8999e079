//! The run: the suite's world (host namespace, networks, API, the candidate and its
//! daemon), then each requirement's test in its own pod namespace, its own Kubernetes
//! objects, with what the candidate left behind after it reported as a failure of that
//! test, and everything removed before the next one.

use crate::candidate::{Candidate, Daemon, Placeholders};
use crate::cluster::{Cluster, NETWORKS};
use crate::world::{self, files_below, namespace, unique, Host, ScratchDir, REFERENCE_PLUGINS};
use anyhow::{anyhow, Context, Result};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{derive_request, Attachment, Op, Runtime};
use plexus_cni::{CniError, CniResult};
use plexus_netns::NamedNetNs;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How strongly a specification asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// MUST (SHALL, REQUIRED).
    Must,
    /// SHOULD (RECOMMENDED).
    Should,
    /// MAY (OPTIONAL).
    May,
}

impl Level {
    /// Its spelling in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
}

/// One requirement and its test.
pub struct Requirement {
    /// `NPWG-4.1.2.1.3-ips-capability`, `CNI-2.3-del-idempotent`...
    pub id: &'static str,
    /// Its level.
    pub level: Level,
    /// The requirement, in the suite's words.
    pub text: &'static str,
    /// The test: `Ok` passes, an error fails with its message, [`skip`] skips.
    pub run: fn(&mut Ctx) -> Result<()>,
}

/// A test's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed, with why.
    Fail(String),
    /// Not applicable to this candidate, with why.
    Skip(String),
}

/// The result of one requirement.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The requirement's id.
    pub id: &'static str,
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: &'static str,
    /// The verdict.
    pub outcome: Outcome,
    /// How long it took.
    pub seconds: f64,
}

/// Marks a test as not applicable (returned as its error).
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// Skips the test with `why`.
pub fn skip<T>(why: impl Into<String>) -> Result<T> {
    Err(anyhow::Error::new(Skipped(why.into())))
}

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// A cluster to use instead of the test API server.
    pub kubeconfig: Option<PathBuf>,
    /// The node the pods are placed on (`@NODE@`).
    pub node: String,
    /// Time limit of one execution of the candidate.
    pub timeout: Duration,
    /// The directory of the suite's binaries (the recording plugin), `@EXEDIR@`.
    pub exe_dir: PathBuf,
}

/// The run-wide world.
pub struct Env {
    /// The candidate.
    pub candidate: Candidate,
    /// Where the candidate runs.
    pub host: Host,
    /// Links made in the host namespace (bridges), removed at the end when the host is
    /// the current namespace.
    made_links: std::sync::Mutex<Vec<String>>,
    /// The suite's namespace for its objects, and a second one.
    pub ns: String,
    /// A second namespace (cross-namespace references).
    pub other_ns: String,
    /// The API.
    pub cluster: Cluster,
    /// Where the recording plugin logs.
    pub rec: PathBuf,
    /// host-local's data directory for every network of the suite.
    pub ipam: PathBuf,
    /// The candidate's state directory (`@STATEDIR@`).
    pub state: PathBuf,
    /// A veth end in the host namespace (macvlan master).
    pub master: String,
    /// The cluster network's bridge name.
    pub cluster_bridge: String,
    /// Directories searched for plugins (the candidate's first).
    paths: Vec<PathBuf>,
    timeout: Duration,
    _daemon: Option<Daemon>,
    _api: Option<plexus_testapi::TestApiServer>,
    dir: ScratchDir,
}

impl Env {
    /// Sets everything up: scratch directories, the host namespace, the test API
    /// server (unless a kubeconfig is given), the cluster network, the delegates'
    /// directory, the candidate's daemon.
    pub fn new(file: &crate::candidate::CandidateFile, base: &Path, opts: &Options) -> Result<Env> {
        let dir = ScratchDir::new(&unique("plexus-conformance-"))?;
        let host = match opts.kubeconfig {
            // A real cluster is reached from the machine's own namespace.
            Some(_) => Host::Current,
            None => Host::Private(namespace("hst")?),
        };
        let run = dir.subdir("run")?;
        let state = dir.subdir("state")?;
        let ipam = dir.subdir("ipam")?;
        let rec = dir.subdir("rec")?;
        let bin = dir.subdir("bin")?;
        // The delegates' directory: the reference plugins and the recording plugin.
        for e in std::fs::read_dir(REFERENCE_PLUGINS).with_context(|| format!("{REFERENCE_PLUGINS}: the reference CNI plugins (Debian's containernetworking-plugins)"))?.flatten() {
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()));
        }
        let recorder = opts.exe_dir.join("plexus-test-plugin");
        if !recorder.exists() {
            return Err(anyhow!(
                "{} is missing: the suite's recording plugin ships next to plexus-conformance",
                recorder.display()
            ));
        }
        std::os::unix::fs::symlink(&recorder, bin.join("plexus-test-plugin"))?;
        let sa = run.join("serviceaccount");
        let mut api_addr = None;
        let (kubeconfig, api) = match &opts.kubeconfig {
            Some(k) => (k.clone(), None),
            None => {
                let listener = host
                    .run(|| std::net::TcpListener::bind("127.0.0.1:0"))?
                    .context("binding loopback in the host namespace")?;
                let api = plexus_testapi::TestApiServer::start_on(listener);
                let kc = run.join("kubeconfig");
                api.write_kubeconfig(&kc);
                // What an in-cluster client (a thick daemon) reads.
                std::fs::create_dir_all(&sa)?;
                std::fs::write(sa.join("token"), api.token())?;
                std::fs::write(sa.join("ca.crt"), api.ca_pem().unwrap_or_default())?;
                std::fs::write(sa.join("namespace"), "kube-system")?;
                api_addr = Some(api.addr());
                (kc, Some(api))
            }
        };
        let cluster_bridge = unique("cbr");
        let cluster_conf = run.join("cluster.conflist");
        std::fs::write(
            &cluster_conf,
            json!({"cniVersion": "1.0.0", "name": "conformance-cluster", "plugins": [
                {"type": "bridge", "bridge": cluster_bridge, "isGateway": true,
                 "ipam": {"type": "host-local", "dataDir": ipam,
                          "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "plexus-test-plugin", "recordDir": rec, "passThrough": true,
                 "capabilities": {"portMappings": true}}]})
            .to_string(),
        )?;
        let p = Placeholders {
            kubeconfig: kubeconfig.clone(),
            state_dir: state.clone(),
            run_dir: run.clone(),
            cluster: cluster_conf,
            bin_dir: bin.clone(),
            node: opts.node.clone(),
            exe_dir: opts.exe_dir.clone(),
            service_account: sa,
            api_host: api_addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            api_port: api_addr.map(|a| a.port().to_string()).unwrap_or_default(),
        };
        let mut candidate = file.resolve(&p, base);
        // The runtime's own capability argument (NPWG-7.5): declared for the candidate.
        let caps = candidate
            .plugin
            .entry("capabilities")
            .or_insert_with(|| json!({}));
        if let Some(c) = caps.as_object_mut() {
            c.insert("portMappings".into(), json!(true));
        }
        let mut paths = candidate.path.clone();
        paths.push(bin);
        let master = world::veth_master(host.name())?;
        let cluster = Cluster::connect(&kubeconfig, &opts.node, host.open()?)?;
        let ns = unique("cfa");
        let other_ns = unique("cfb");
        cluster.create_namespace(&ns)?;
        cluster.create_namespace(&other_ns)?;
        let daemon = match &candidate.daemon {
            Some(d) => Some(Daemon::start(d, &run, &host)?),
            None => None,
        };
        Ok(Env {
            candidate,
            host,
            made_links: std::sync::Mutex::new(vec![master.clone(), cluster_bridge.clone()]),
            ns,
            other_ns,
            cluster,
            rec,
            ipam,
            state,
            master,
            cluster_bridge,
            paths,
            timeout: opts.timeout,
            _daemon: daemon,
            _api: api,
            dir,
        })
    }

    /// The runtime executing the candidate (no result cache: the suite passes
    /// `prevResult` itself).
    pub fn runtime(&self) -> Runtime {
        let mut rt = Runtime::new(self.paths.clone(), None);
        rt.timeout = self.timeout;
        rt.prestart_chained = false;
        rt
    }

    /// The node's conflist: the candidate alone, at `version`.
    pub fn list(&self, version: &str) -> Result<NetworkConfigList> {
        Ok(NetworkConfigList::from_value(json!({
            "cniVersion": version, "name": "conformance-net",
            "plugins": [Value::Object(self.candidate.plugin.clone())]
        }))?)
    }

    /// A scratch sub-directory of the run.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        self.dir.subdir(name)
    }

    /// Runs `f` in the host namespace.
    pub fn in_host<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.host.run(f)
    }

    /// A bridge name, removed at the end.
    pub fn bridge_name(&self) -> String {
        let n = unique("sbr");
        if let Ok(mut l) = self.made_links.lock() {
            l.push(n.clone());
        }
        n
    }

    /// The IP reservations host-local holds.
    pub fn reservations(&self) -> Vec<PathBuf> {
        world::ip_reservations(&self.ipam)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cluster.delete_namespace(&self.ns);
        self.cluster.delete_namespace(&self.other_ns);
        if let (Host::Current, Ok(links)) = (&self.host, self.made_links.lock()) {
            for l in links.iter() {
                let _ = world::ip(None, &["link", "del", l]);
            }
        }
    }
}

/// A pod of a test.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Its sandbox's container ID.
    pub cid: String,
}

/// What a successful ADD gave.
#[derive(Debug, Clone)]
pub struct Added {
    /// The result as printed, parsed.
    pub result: CniResult,
    /// Its `cniVersion` as printed.
    pub version: String,
}

/// One test's context.
pub struct Ctx<'a> {
    /// The run.
    pub env: &'a Env,
    /// The pod's network namespace.
    pub pod_ns: NamedNetNs,
    nads: Vec<(String, String)>,
    pods: Vec<Pod>,
    /// Pods ADDed and not DELed since (by the test).
    open: Vec<(Pod, String, Option<CniResult>)>,
}

impl<'a> Ctx<'a> {
    fn new(env: &'a Env) -> Result<Ctx<'a>> {
        Ok(Ctx {
            env,
            pod_ns: namespace("pod")?,
            nads: vec![],
            pods: vec![],
            open: vec![],
        })
    }

    /// Creates a NAD named `<base>-<unique>` in the suite's namespace; its name.
    pub fn nad(&mut self, base: &str, config: Value) -> Result<String> {
        let ns = self.env.ns.clone();
        self.nad_in(&ns, base, Some(config), json!({}))
    }

    /// Creates a NAD in `ns` (without `spec` when `config` is `None`).
    pub fn nad_in(
        &mut self,
        ns: &str,
        base: &str,
        config: Option<Value>,
        annotations: Value,
    ) -> Result<String> {
        let name = format!("{base}-{}", unique("n"));
        self.env
            .cluster
            .create_nad(ns, &name, config.as_ref(), annotations)?;
        self.nads.push((ns.to_string(), name.clone()));
        Ok(name)
    }

    /// Creates a pod in the suite's namespace selecting `networks` (no annotation when `None`).
    pub fn pod(&mut self, networks: Option<&str>) -> Result<Pod> {
        let annotations = match networks {
            Some(n) => json!({NETWORKS: n}),
            None => json!({}),
        };
        self.pod_with(annotations)
    }

    /// Creates a pod with `annotations`.
    pub fn pod_with(&mut self, annotations: Value) -> Result<Pod> {
        let ns = self.env.ns.clone();
        let name = unique("pod");
        let uid = self.env.cluster.create_pod(&ns, &name, annotations)?;
        let p = Pod {
            namespace: ns,
            name,
            uid,
            cid: format!("{}{}", unique("cid"), "0".repeat(52)),
        };
        self.pods.push(p.clone());
        Ok(p)
    }

    /// The runtime's attachment of `pod` in the test's namespace.
    pub fn attachment(&self, pod: &Pod) -> Attachment {
        let args = CniArgs::parse(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.cid, pod.uid
        ))
        .unwrap_or_default();
        Attachment {
            container_id: pod.cid.clone(),
            netns: Some(self.pod_ns.path().display().to_string()),
            ifname: "eth0".into(),
            args,
            ..Default::default()
        }
    }

    /// ADD of `pod`, the conflist at `version`; the result as printed.
    pub fn add_version(
        &mut self,
        pod: &Pod,
        version: &str,
        att: Attachment,
    ) -> Result<std::result::Result<Added, CniError>> {
        let list = self.env.list(version)?;
        let rt = self.env.runtime();
        let plugin = &list.plugins[0];
        let req = derive_request(plugin, &list, Op::Add, None, &att.capability_args)?;
        let out = self
            .env
            .in_host(|| rt.exec_plugin(Op::Add, plugin.plugin_type(), &req, Some(&att)))?;
        self.open.push((pod.clone(), version.to_string(), None));
        let out = match out {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let raw: Value = match serde_json::from_slice(&out) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(CniError::decode(format!(
                    "the ADD result is not JSON: {e}: {}",
                    String::from_utf8_lossy(&out)
                ))))
            }
        };
        let version = raw["cniVersion"].as_str().unwrap_or_default().to_string();
        let result = match CniResult::from_value(&raw) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.context("the ADD result"))),
        };
        if let Some(o) = self.open.last_mut() {
            o.2 = Some(result.clone());
        }
        Ok(Ok(Added { result, version }))
    }

    /// ADD of `pod` with the candidate's configured version.
    pub fn add(&mut self, pod: &Pod) -> Result<std::result::Result<Added, CniError>> {
        let v = self.env.candidate.cni_version.clone();
        let att = self.attachment(pod);
        self.add_version(pod, &v, att)
    }

    /// ADD that must succeed.
    pub fn add_ok(&mut self, pod: &Pod) -> Result<Added> {
        self.add(pod)?.map_err(|e| anyhow!("ADD failed: {e}"))
    }

    /// DEL of `pod` (with the last ADD's result as `prevResult`).
    pub fn del(&mut self, pod: &Pod) -> Result<std::result::Result<(), CniError>> {
        let att = self.attachment(pod);
        self.del_with(pod, att)
    }

    /// DEL of `pod` with the runtime's attachment `att` (another namespace path, say).
    pub fn del_with(
        &mut self,
        pod: &Pod,
        att: Attachment,
    ) -> Result<std::result::Result<(), CniError>> {
        let (version, prev) = match self.open.iter().position(|(p, _, _)| p.cid == pod.cid) {
            Some(i) => {
                let (_, v, r) = self.open.remove(i);
                (v, r)
            }
            None => (self.env.candidate.cni_version.clone(), None),
        };
        let list = self.env.list(&version)?;
        let rt = self.env.runtime();
        self.env
            .in_host(|| rt.del_list_with(&list, &att, prev.as_ref()))
    }

    /// DEL that must succeed.
    pub fn del_ok(&mut self, pod: &Pod) -> Result<()> {
        self.del(pod)?.map_err(|e| anyhow!("DEL failed: {e}"))
    }

    /// CHECK of `pod` with `prev`.
    pub fn check(&self, pod: &Pod, prev: &CniResult) -> Result<std::result::Result<(), CniError>> {
        let list = self.env.list(&self.env.candidate.cni_version)?;
        let rt = self.env.runtime();
        let att = self.attachment(pod);
        self.env.in_host(|| rt.check_list_with(&list, &att, prev))
    }

    /// The calls the recording plugin got for `pod`'s sandbox, in order.
    pub fn calls(&self, pod: &Pod) -> Vec<Value> {
        std::fs::read_to_string(self.env.rec.join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|c| c["env"]["CNI_CONTAINERID"] == pod.cid.as_str())
            .collect()
    }

    /// The recorded calls of `command`.
    pub fn calls_of(&self, pod: &Pod, command: &str) -> Vec<Value> {
        self.calls(pod)
            .into_iter()
            .filter(|c| c["env"]["CNI_COMMAND"] == command)
            .collect()
    }

    /// The links of the pod's namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        world::links(self.pod_ns.name())
    }

    /// The pod's network-status, parsed.
    pub fn status(&self, pod: &Pod) -> Result<Option<Value>> {
        self.env.cluster.network_status(&pod.namespace, &pod.name)
    }

    /// What the candidate left: links in the pod, IP reservations, state files.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.links() {
            Ok(l) => out.extend(
                l.into_iter()
                    .filter(|l| l != "lo")
                    .map(|l| format!("interface {l} in the pod")),
            ),
            Err(e) => out.push(format!("the pod's namespace: {e}")),
        }
        out.extend(
            self.env
                .reservations()
                .iter()
                .map(|p| format!("IP reservation {}", p.display())),
        );
        out.extend(
            files_below(&self.env.state)
                .iter()
                .map(|p| format!("file {}", p.display())),
        );
        out
    }

    /// DELs what is still open, reports what is left, removes everything.
    fn finish(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let open: Vec<Pod> = self.open.iter().map(|(p, _, _)| p.clone()).collect();
        for p in open {
            if let Ok(Err(e)) = self.del(&p) {
                problems.push(format!("DEL at clean-up failed: {e}"));
            }
        }
        let left = self.leftovers();
        if !left.is_empty() {
            problems.push(format!("left behind after DEL: {}", left.join(", ")));
        }
        // A clean slate for the next test, whatever this one did.
        for f in self
            .env
            .reservations()
            .into_iter()
            .chain(files_below(&self.env.state))
        {
            let _ = std::fs::remove_file(f);
        }
        for p in &self.pods {
            self.env.cluster.delete_pod(&p.namespace, &p.name);
        }
        for (ns, n) in &self.nads {
            self.env.cluster.delete_nad(ns, n);
        }
        let _ = self.pod_ns.remove();
        problems
    }
}

/// Runs `reqs` against the candidate; one result per requirement, in order.
pub fn run(
    env: &Env,
    reqs: &[&Requirement],
    progress: &mut dyn FnMut(&TestResult),
) -> Vec<TestResult> {
    let mut out = Vec::new();
    for r in reqs {
        let started = Instant::now();
        let outcome = match Ctx::new(env) {
            Err(e) => Outcome::Fail(format!("setting the test up: {e:#}")),
            Ok(mut ctx) => {
                let ran =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (r.run)(&mut ctx)));
                let left = ctx.finish();
                match ran {
                    Err(_) => Outcome::Fail("the test panicked".into()),
                    Ok(Err(e)) => match e.downcast_ref::<Skipped>() {
                        Some(s) if left.is_empty() => Outcome::Skip(s.0.clone()),
                        _ => {
                            let mut msg = format!("{e:#}");
                            if let Some(s) = e.downcast_ref::<Skipped>() {
                                msg = format!("skipped ({}), but", s.0);
                            }
                            for l in &left {
                                msg.push_str("; ");
                                msg.push_str(l);
                            }
                            Outcome::Fail(msg)
                        }
                    },
                    Ok(Ok(())) if left.is_empty() => Outcome::Pass,
                    Ok(Ok(())) => Outcome::Fail(left.join("; ")),
                }
            }
        };
        let res = TestResult {
            id: r.id,
            level: r.level,
            text: r.text,
            outcome,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(&res);
        out.push(res);
    }
    out
}
