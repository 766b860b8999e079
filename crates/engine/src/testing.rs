//! Fakes behind the engine's seams, for unit tests without root or processes: a
//! recording executor that answers as a plugin would, a cluster held in memory, and pod
//! namespaces that only record what the engine asks of them.

use crate::cluster::{Cluster, EventType, PodInfo, PodOrigin};
use crate::config::NetConf;
use crate::routes::RouteChange;
use crate::sandbox::{Link, PendingInterfaces, Sandbox, Sandboxes};
use crate::{Engine, Request};
use plexus_cni::args::CniArgs;
use plexus_cni::exec::{Exec, ExecOutput, ExecRequest};
use plexus_cni::{CniError, Result};
use plexus_npwg::nad::Nad;
use plexus_npwg::status::NetworkStatus;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One plugin execution as the fake executor saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The plugin's type (its binary's name).
    pub plugin: String,
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// The configuration on stdin.
    pub stdin: Value,
}

impl Call {
    /// `command plugin ifname`, the shape assertions compare.
    pub fn short(&self) -> String {
        format!("{} {} {}", self.command, self.plugin, self.ifname)
    }
}

/// A recording executor: every plugin succeeds as a well-behaved one would (ADD gives
/// its interface, an address from 192.0.2.0/24 and the requested `ips`/`mac`; a chained
/// plugin passes `prevResult` on), except the executions told to fail.
#[derive(Default)]
pub struct FakeExec {
    calls: Mutex<Vec<Call>>,
    /// `(command, plugin, ifname)` that fail with code 11.
    failing: Mutex<Vec<(String, String, String)>>,
    /// `(command, plugin, ifname)` killed at their time limit (they undo nothing).
    killed: Mutex<Vec<(String, String, String)>>,
    /// ADD results that ignore `runtimeConfig` (a plugin that does not honour it).
    pub ignore_requests: Mutex<bool>,
}

impl FakeExec {
    /// Makes `command` of `plugin` on `ifname` fail.
    pub fn fail(&self, command: &str, plugin: &str, ifname: &str) {
        lock(&self.failing).push((command.into(), plugin.into(), ifname.into()));
    }

    /// Makes `command` of `plugin` on `ifname` end as one killed at its time limit.
    pub fn kill(&self, command: &str, plugin: &str, ifname: &str) {
        lock(&self.killed).push((command.into(), plugin.into(), ifname.into()));
    }

    /// Every execution so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// Every execution so far, as `command plugin ifname`.
    pub fn log(&self) -> Vec<String> {
        self.calls().iter().map(Call::short).collect()
    }

    /// Forgets the executions so far.
    pub fn clear(&self) {
        lock(&self.calls).clear();
    }

    fn add_result(&self, call: &Call, netns: &str, n: usize) -> Value {
        if let Some(prev) = call.stdin.get("prevResult").filter(|v| !v.is_null()) {
            let mut prev = prev.clone();
            prev["cniVersion"] = call.stdin["cniVersion"].clone();
            return prev;
        }
        let rc = &call.stdin["runtimeConfig"];
        let honour = !*lock(&self.ignore_requests);
        let mac = rc["mac"]
            .as_str()
            .filter(|_| honour)
            .map(str::to_string)
            .unwrap_or_else(|| format!("02:00:00:00:00:{n:02x}"));
        let mut ips: Vec<Value> = Vec::new();
        if let (true, Some(asked)) = (honour, rc["ips"].as_array()) {
            for a in asked {
                ips.push(json!({"interface": 0, "address": a}));
            }
        }
        if ips.is_empty() {
            ips.push(
                json!({"interface": 0, "address": format!("192.0.2.{}/24", 10 + n),
                            "gateway": "192.0.2.1"}),
            );
        }
        json!({"cniVersion": call.stdin["cniVersion"],
               "interfaces": [{"name": call.ifname, "mac": mac, "sandbox": netns}],
               "ips": ips,
               "routes": [{"dst": "0.0.0.0/0", "gw": "192.0.2.1"}]})
    }
}

fn exit(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

impl Exec for FakeExec {
    fn run(&self, req: &ExecRequest<'_>) -> Result<ExecOutput> {
        let env = |k: &str| {
            req.env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let plugin = req
            .binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let call = Call {
            plugin,
            command: env("CNI_COMMAND"),
            ifname: env("CNI_IFNAME"),
            args: CniArgs::parse(&env("CNI_ARGS"))?,
            stdin: serde_json::from_slice(req.stdin).unwrap_or(Value::Null),
        };
        let n = {
            let mut calls = lock(&self.calls);
            calls.push(call.clone());
            calls.len()
        };
        let key = (
            call.command.clone(),
            call.plugin.clone(),
            call.ifname.clone(),
        );
        if lock(&self.killed).contains(&key) {
            return Err(CniError::interrupted(format!(
                "{} did not finish within 1s and was killed",
                call.short()
            )));
        }
        if lock(&self.failing).contains(&key) {
            let e = CniError::new(11, format!("{} told to fail", call.short()));
            return Ok(ExecOutput {
                status: exit(1),
                stdout: e.to_json("1.1.0"),
                stderr: vec![],
            });
        }
        let stdout = match call.command.as_str() {
            "ADD" => self.add_result(&call, &env("CNI_NETNS"), n).to_string(),
            "VERSION" => json!({"cniVersion": "1.1.0", "supportedVersions":
                                plexus_cni::version::SUPPORTED})
            .to_string(),
            _ => String::new(),
        };
        Ok(ExecOutput {
            status: exit(0),
            stdout: stdout.into_bytes(),
            stderr: vec![],
        })
    }
}

/// What the fake cluster was told.
#[derive(Debug, Default, Clone)]
pub struct Told {
    /// Every network-status written, with the pod's key.
    pub statuses: Vec<(String, Vec<NetworkStatus>)>,
    /// Every event: (reason, message).
    pub events: Vec<(String, String)>,
    /// Pods torn down.
    pub torn_down: Vec<String>,
    /// Every `prefetch_nads` call's references.
    pub prefetched: Vec<Vec<(String, String)>>,
}

/// A cluster held in memory.
#[derive(Default)]
pub struct FakeCluster {
    pods: Mutex<BTreeMap<(String, String), PodInfo>>,
    nads: Mutex<BTreeMap<(String, String), Nad>>,
    told: Mutex<Told>,
    /// The status write fails with code 11.
    pub status_fails: Mutex<bool>,
    /// Reads fail with code 11 (the API server is down).
    pub down: Mutex<bool>,
}

impl FakeCluster {
    /// Adds a pod with annotations.
    pub fn pod(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let p = PodInfo {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            origin: PodOrigin::Api,
            node_name: "node-a".into(),
        };
        lock(&self.pods).insert((namespace.into(), name.into()), p);
    }

    /// A pod added with [`FakeCluster::pod`].
    pub fn get(&self, namespace: &str, name: &str) -> PodInfo {
        lock(&self.pods)
            .get(&(namespace.into(), name.into()))
            .cloned()
            .expect("a pod of the fake cluster")
    }

    /// Adds a NAD whose `spec.config` is `config`.
    pub fn nad(&self, namespace: &str, name: &str, config: Value) {
        let obj = json!({"metadata": {"namespace": namespace, "name": name},
                         "spec": {"config": config.to_string()}});
        let nad = Nad::from_object(&obj).expect("a valid NAD");
        lock(&self.nads).insert((namespace.into(), name.into()), nad);
    }

    /// Adds a device-backed NAD (`k8s.v1.cni.cncf.io/resourceName`).
    pub fn device_nad(&self, namespace: &str, name: &str, resource: &str, config: Value) {
        let obj = json!({"metadata": {"namespace": namespace, "name": name,
                            "annotations": {plexus_npwg::RESOURCE_NAME_ANNOTATION: resource}},
                         "spec": {"config": config.to_string()}});
        let nad = Nad::from_object(&obj).expect("a valid NAD");
        lock(&self.nads).insert((namespace.into(), name.into()), nad);
    }

    /// What the cluster was told so far.
    pub fn told(&self) -> Told {
        lock(&self.told).clone()
    }

    fn check_up(&self) -> Result<()> {
        if *lock(&self.down) {
            return Err(CniError::new(11, "Kubernetes API: connection refused"));
        }
        Ok(())
    }
}

impl Cluster for FakeCluster {
    fn get_pod(&self, namespace: &str, name: &str) -> Result<Option<PodInfo>> {
        self.check_up()?;
        Ok(lock(&self.pods)
            .get(&(namespace.into(), name.into()))
            .cloned())
    }

    fn get_nad(&self, namespace: &str, name: &str) -> Result<Option<Nad>> {
        self.check_up()?;
        Ok(lock(&self.nads)
            .get(&(namespace.into(), name.into()))
            .cloned())
    }

    fn prefetch_nads(&self, refs: &[(String, String)]) {
        lock(&self.told).prefetched.push(refs.to_vec());
    }

    fn set_network_status(&self, pod: &PodInfo, status: &[NetworkStatus]) -> Result<()> {
        if *lock(&self.status_fails) {
            return Err(CniError::new(11, "Kubernetes API: internal error"));
        }
        lock(&self.told).statuses.push((pod.key(), status.to_vec()));
        Ok(())
    }

    fn event(&self, _pod: &PodInfo, _kind: EventType, reason: &str, message: &str) {
        lock(&self.told)
            .events
            .push((reason.into(), message.into()));
    }

    fn pod_torn_down(&self, namespace: &str, name: &str) {
        lock(&self.told)
            .torn_down
            .push(format!("{namespace}/{name}"));
    }
}

/// A kubelet held in memory: the devices of each pod (by `namespace/name`), the calls
/// counted, and a switch that makes it fail as a kubelet that does not answer.
#[derive(Default)]
pub struct FakeDevices {
    /// `namespace/name` → resource → device IDs.
    pub pods: Mutex<BTreeMap<String, BTreeMap<String, Vec<String>>>>,
    /// Calls so far.
    pub calls: Mutex<usize>,
    /// Fail every call.
    pub down: Mutex<bool>,
}

impl FakeDevices {
    /// Gives `pod` (`namespace/name`) the devices `ids` of `resource`.
    pub fn allocate(&self, pod: &str, resource: &str, ids: &[&str]) {
        lock(&self.pods)
            .entry(pod.into())
            .or_default()
            .insert(resource.into(), ids.iter().map(|s| s.to_string()).collect());
    }
}

impl crate::devices::Devices for FakeDevices {
    fn allocation(&self, pod: &PodInfo) -> Result<crate::devices::Allocation> {
        *lock(&self.calls) += 1;
        if *lock(&self.down) {
            return Err(CniError::new(11, "kubelet PodResources: no answer"));
        }
        let mut a = crate::devices::Allocation {
            source: "fake kubelet".into(),
            ..Default::default()
        };
        for (res, ids) in lock(&self.pods).get(&pod.key()).into_iter().flatten() {
            a.add(res, ids.iter().cloned());
        }
        Ok(a)
    }
}

/// Pod namespaces that hold a given set of interfaces and record route changes.
#[derive(Default)]
pub struct FakeSandboxes {
    /// Interfaces every namespace already has.
    pub present: Mutex<HashSet<String>>,
    /// Every default-route change asked for.
    pub routes: Arc<Mutex<Vec<RouteChange>>>,
    /// What CHECK finds in every namespace.
    pub links: Arc<Mutex<Vec<Link>>>,
}

impl FakeSandboxes {
    /// Puts interface `name` with `mac` and `address` in every namespace.
    pub fn link(&self, name: &str, mac: &str, address: &str) {
        lock(&self.links).push(Link {
            name: name.into(),
            mac: mac.into(),
            addresses: vec![address.parse().expect("an address with its prefix")],
        });
    }
}

impl Sandboxes for FakeSandboxes {
    fn open(&self, path: &str) -> Result<Box<dyn Sandbox>> {
        if !path.starts_with("/var/run/netns/") {
            return Err(CniError::invalid_env(format!(
                "CNI_NETNS: {path} is not a network namespace"
            )));
        }
        Ok(Box::new(FakeSandbox {
            present: lock(&self.present).clone(),
            routes: self.routes.clone(),
            links: self.links.clone(),
        }))
    }
}

struct FakeSandbox {
    present: HashSet<String>,
    routes: Arc<Mutex<Vec<RouteChange>>>,
    links: Arc<Mutex<Vec<Link>>>,
}

impl Sandbox for FakeSandbox {
    fn interfaces_ahead(&self) -> Result<PendingInterfaces> {
        let present = self.present.clone();
        Ok(Box::new(move || Ok(present)))
    }

    fn replace_default_routes(&self, change: &RouteChange) -> Result<()> {
        lock(&self.routes).push(change.clone());
        Ok(())
    }

    fn links(&self) -> Result<Vec<Link>> {
        Ok(lock(&self.links).clone())
    }
}

/// The plugins the fixture's `binDir` holds (empty executable files: the fake
/// executor answers for them).
const PLUGINS: &[&str] = &[
    "bridge",
    "macvlan",
    "tuning",
    "portmap",
    "static",
    "passthru",
    "host-device",
];

/// An engine over the fakes, its directories in a temporary directory.
pub struct Fixture {
    /// The temporary directory (`bin`, `cni`, `conf`, `devinfo`).
    pub dir: tempfile::TempDir,
    /// The executor.
    pub exec: Arc<FakeExec>,
    /// The cluster.
    pub cluster: Arc<FakeCluster>,
    /// The namespaces.
    pub sandboxes: Arc<FakeSandboxes>,
    /// The kubelet.
    pub devices: Arc<FakeDevices>,
}

impl Fixture {
    /// Empty cluster, nothing configured yet.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("bin")).expect("bin");
        for p in PLUGINS {
            let f = dir.path().join("bin").join(p);
            std::fs::write(&f, b"").expect("plugin file");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).expect("mode");
        }
        Fixture {
            dir,
            exec: Default::default(),
            cluster: Default::default(),
            sandboxes: Default::default(),
            devices: Default::default(),
        }
    }

    /// The plugin configuration: the cluster network a bridge, `extra` merged over it.
    pub fn conf(&self, extra: Value) -> NetConf {
        NetConf::parse(self.conf_value(extra).to_string().as_bytes())
            .expect("a valid configuration")
    }

    /// [`Fixture::conf`] as JSON.
    pub fn conf_value(&self, extra: Value) -> Value {
        let d = self.dir.path();
        let mut v = json!({"cniVersion": "1.0.0", "name": "plexus", "type": "plexus",
            "binDir": d.join("bin"), "cniDir": d.join("cni"), "confDir": d.join("conf"),
            "delegates": [{"cniVersion": "1.0.0", "name": "cluster", "type": "bridge"}],
            "plexus": {"deviceInfoDir": d.join("devinfo"), "devicePluginInfoDir": d.join("dp"),
                       "prestartDelegates": false}});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                m.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// The engine for `extra` (see [`Fixture::conf`]).
    pub fn engine(&self, extra: Value) -> Engine {
        Engine::new(
            self.conf(extra),
            Some(self.cluster.clone() as Arc<dyn Cluster>),
        )
        .with_exec(self.exec.clone())
        .with_sandboxes(self.sandboxes.clone())
        .with_devices(self.devices.clone())
    }

    /// The engine for `extra` as the daemon makes it: it keeps its configuration in
    /// each ADD's state, for hot-plug.
    pub fn daemon_engine(&self, extra: Value) -> Engine {
        let v = self.conf_value(extra.clone());
        self.engine(extra).keeping_config(v.to_string().as_bytes())
    }

    /// The request of container `cid` for pod `ns/name`.
    pub fn req(&self, cid: &str, ns: &str, name: &str) -> Request {
        Request {
            container_id: cid.into(),
            netns: Some(format!("/var/run/netns/{cid}")),
            ifname: "eth0".into(),
            args: CniArgs::parse(&format!(
                "K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
            ))
            .expect("CNI_ARGS"),
            cni_path: vec![],
        }
    }

    /// Files left under `cniDir` (state and result cache), relative paths, sorted.
    pub fn files(&self) -> Vec<String> {
        let root = self.dir.path().join("cni");
        let mut out = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(rel) = p.strip_prefix(&root) {
                    out.push(rel.display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

/// A NAD configuration of one plugin.
pub fn net(name: &str, plugin: &str, extra: Value) -> Value {
    let mut v = json!({"cniVersion": "1.0.0", "name": name, "type": plugin});
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            m.insert(k.clone(), x.clone());
        }
    }
    v
}
