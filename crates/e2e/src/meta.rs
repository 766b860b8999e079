//! A harness that runs the `plexus` binary exactly as a container runtime does: a
//! configuration list whose only plugin is `plexus`, executed through plexus-cni's
//! runtime with `CNI_*` variables, stdin and stdout, inside the test's host namespace.

use crate::{unique, World, REFERENCE_PLUGINS};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_cni::{CniResult, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The `plexus` binary built next to the test executables.
pub fn plexus_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Next to a binary (target/<profile>/x) or one level up from a test (target/<profile>/deps/x).
    let here = exe.parent().expect("executable directory");
    let dir = if here.join("plexus").exists() {
        here
    } else {
        here.parent().expect("target directory")
    };
    let bin = dir.join("plexus");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// Where Kubernetes objects come from.
pub enum Mode {
    /// NADs in a directory, status in files.
    Local,
    /// The test API server at this kubeconfig.
    Kube(PathBuf),
}

/// A node running Plexus in a test world.
pub struct Node {
    /// Namespaces and directories.
    pub world: World,
    /// The plexus configuration (the plugin object).
    pub conf: Value,
    /// Runtime executing `plexus`.
    pub rt: Runtime,
    /// The cluster bridge (in the host namespace).
    pub cluster_bridge: String,
    /// A veth end in the host namespace usable as macvlan master.
    pub master: String,
}

impl Node {
    /// A node with `n` pod namespaces; the cluster network is a bridge with host-local
    /// addresses from 192.0.2.0/24 (gateway .1, default route) and 2001:db8:1::/64.
    pub fn new(n: usize, mode: Mode) -> Node {
        let world = World::new(n);
        let cluster_bridge = unique("cbr");
        let master = world.veth_master();
        let d = |s: &str| world.subdir(s);
        let mut conf = json!({
            "type": "plexus",
            "binDir": REFERENCE_PLUGINS,
            "cniDir": d("cni"),
            "confDir": d("conf"),
            "logLevel": "verbose",
            "capabilities": {"portMappings": true},
            "delegates": [{
                "cniVersion": "1.0.0", "name": "cluster",
                "plugins": [{"type": "bridge", "bridge": cluster_bridge, "isGateway": true,
                             "ipam": {"type": "host-local", "dataDir": d("ipam"),
                                      "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}], [{"subnet": "2001:db8:1::/64", "gateway": "2001:db8:1::1"}]],
                                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}]
            }],
            "plexus": {"deviceInfoDir": d("devinfo"), "readinessTimeoutSeconds": 2, "apiTimeoutMs": 2000, "apiRetries": 3}
        });
        match mode {
            Mode::Local => {
                conf["plexus"]["local"] = json!({"nadDir": d("nads"), "statusDir": d("status")})
            }
            Mode::Kube(kc) => conf["kubeconfig"] = json!(kc),
        }
        let own = plexus_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rt = Runtime::new(vec![own, PathBuf::from(REFERENCE_PLUGINS)], None);
        Node {
            world,
            conf,
            rt,
            cluster_bridge,
            master,
        }
    }

    /// The configuration list the runtime reads (as in /etc/cni/net.d).
    pub fn list(&self) -> NetworkConfigList {
        NetworkConfigList::from_value(
            json!({"cniVersion": "1.0.0", "name": "plexus-net", "plugins": [self.conf]}),
        )
        .expect("plexus conflist")
    }

    /// The IPAM data directory of host-local.
    pub fn ipam_dir(&self) -> PathBuf {
        self.world.subdir("ipam")
    }

    /// An attachment for pod `ns/name` in container namespace `i`, with extra `CNI_ARGS`.
    pub fn attachment(
        &self,
        i: usize,
        cid: &str,
        ns: &str,
        pod: &str,
        extra: &[(&str, &str)],
    ) -> Attachment {
        let mut args = CniArgs::parse(&format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}")).expect("args");
        for (k, v) in extra {
            args.set(k, *v);
        }
        Attachment {
            container_id: cid.into(),
            netns: Some(self.world.ctr_path(i)),
            ifname: "eth0".into(),
            args,
            ..Default::default()
        }
    }

    /// ADD through the runtime, in the host namespace.
    pub fn add(&self, att: &Attachment) -> Result<CniResult> {
        let list = self.list();
        self.world
            .host
            .run(|| self.rt.add_list(&list, att))
            .expect("entering the host namespace")
    }

    /// DEL.
    pub fn del(&self, att: &Attachment) -> Result<()> {
        let list = self.list();
        self.world
            .host
            .run(|| self.rt.del_list_with(&list, att, None))
            .expect("entering the host namespace")
    }

    /// CHECK (the runtime has no cache here, so the result is passed explicitly).
    pub fn check(&self, att: &Attachment, prev: &CniResult) -> Result<()> {
        let list = self.list();
        self.world
            .host
            .run(|| self.rt.check_list_with(&list, att, prev))
            .expect("entering the host namespace")
    }

    /// Writes a NAD manifest (local mode).
    pub fn nad(&self, ns: &str, name: &str, config: Value) {
        let doc = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                         "metadata": {"name": name, "namespace": ns}, "spec": {"config": config.to_string()}});
        std::fs::write(
            self.world.subdir("nads").join(format!("{ns}-{name}.json")),
            doc.to_string(),
        )
        .expect("writing a NAD");
    }

    /// The network-status file of a pod (local mode).
    pub fn status(&self, ns: &str, pod: &str) -> Option<Value> {
        let p = self.world.subdir("status").join(format!("{ns}_{pod}.json"));
        std::fs::read(p)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("status JSON"))
    }

    /// Files Plexus and the delegates keep (state, caches, reservations, device-info, status).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        ["cni", "devinfo", "status"]
            .iter()
            .flat_map(|d| crate::files_below(&self.world.subdir(d)))
            .chain(plexus_conformance::world::ip_reservations(&self.ipam_dir()))
            .collect()
    }
}

/// A macvlan network on `master` with static IPAM fed by the `ips` capability.
pub fn macvlan_static(master: &str) -> Value {
    json!({"cniVersion": "1.0.0", "type": "macvlan", "master": master, "mode": "bridge",
           "capabilities": {"ips": true}, "ipam": {"type": "static"}})
}

/// A bridge network with host-local addresses from `subnet`, plus tuning with the `mac` capability.
pub fn bridge_host_local(bridge: &str, subnet: &str, data: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "bridge", "bridge": bridge, "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": subnet}]]}},
        {"type": "tuning", "capabilities": {"mac": true}}
    ]})
}

impl Node {
    /// A node whose Plexus reads a test API server listening on loopback in the
    /// node's host namespace, where the plugin runs.
    pub fn kube(n: usize) -> (Node, plexus_testapi::TestApiServer) {
        Node::kube_with(
            n,
            plexus_testapi::Security::Tls(plexus_testapi::KeyKind::Rsa2048),
        )
    }

    /// The same, with the test API server's transport `security`.
    pub fn kube_with(
        n: usize,
        security: plexus_testapi::Security,
    ) -> (Node, plexus_testapi::TestApiServer) {
        let mut node = Node::new(n, Mode::Local);
        let api = plexus_testapi::TestApiServer::start_with(node.loopback_listener(), security);
        let kc = node.kubeconfig_path();
        api.write_kubeconfig(&kc);
        node.use_kubeconfig(&kc);
        (node, api)
    }

    /// A listener on a free loopback port of the node's host namespace, where its
    /// meta-plugins reach the Kubernetes API.
    pub fn loopback_listener(&self) -> std::net::TcpListener {
        self.world
            .host
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("entering the host namespace")
            .expect("binding loopback in the host namespace")
    }

    /// Where the node's kubeconfig is written.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.world.subdir("kube").join("config")
    }

    /// Points the node's Plexus at the API server of kubeconfig `kc` (no local mode).
    pub fn use_kubeconfig(&mut self, kc: &Path) {
        if let Some(p) = self.conf["plexus"].as_object_mut() {
            p.remove("local");
        }
        self.conf["kubeconfig"] = json!(kc);
    }
}

/// A pod object as the API server stores it.
pub fn pod_object(ns: &str, name: &str, uid: &str, networks: Option<&str>) -> Value {
    let mut p = json!({"metadata": {"name": name, "namespace": ns, "uid": uid, "annotations": {}},
                       "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "registry.invalid/app"}]},
                       "status": {"phase": "Pending"}});
    if let Some(n) = networks {
        p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(n);
    }
    p
}

/// A NAD object with `config`.
pub fn nad_object(ns: &str, name: &str, config: &Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": {"config": config.to_string()}})
}

/// A running plexusd for a node, started inside the node's host namespace.
pub struct Daemon {
    child: std::process::Child,
    /// The socket directory.
    pub socket_dir: PathBuf,
    /// Where its config lives.
    pub config_path: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts plexusd with the node's engine keys plus `extra` daemon keys (a key whose
    /// value is null is removed), and waits until ready.
    pub fn start(node: &Node, extra: Value) -> Daemon {
        Daemon::run(&node.world, &Daemon::config(node, extra))
    }

    /// The daemon configuration [`start`](Self::start) uses: the node's engine keys
    /// plus `extra` daemon keys (a key whose value is null is removed).
    pub fn config(node: &Node, extra: Value) -> Value {
        let socket_dir = node.world.subdir("run");
        let mut cfg = node.conf.clone();
        let obj = cfg.as_object_mut().expect("config object");
        obj.remove("type");
        obj.insert("cniVersion".into(), json!("1.0.0"));
        obj.insert("socketDir".into(), json!(socket_dir));
        obj.insert("nodeName".into(), json!("node-a"));
        obj.insert("multusConfigFile".into(), json!("none"));
        if let Some(e) = extra.as_object() {
            for (k, v) in e {
                match (obj.get_mut(k), v) {
                    (_, Value::Null) => {
                        obj.remove(k);
                    }
                    // `plexus` keys are merged, not replaced.
                    (Some(Value::Object(mine)), Value::Object(theirs)) => {
                        mine.extend(theirs.clone())
                    }
                    _ => {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        cfg
    }

    /// Starts plexusd in `world`'s host namespace with configuration `cfg` (as written
    /// by [`start`](Self::start): restarting a killed daemon), and waits until ready.
    pub fn run(world: &World, cfg: &Value) -> Daemon {
        let socket_dir = world.subdir("run");
        let dir = world.subdir("daemon");
        let config_path = dir.join("daemon-config.json");
        std::fs::write(&config_path, cfg.to_string()).expect("daemon config");
        let log = dir.join("plexusd.log");
        let bin = plexus_bin().with_file_name("plexusd");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = world
            .host
            .run(|| {
                std::process::Command::new(&bin)
                    .arg("--config")
                    .arg(&config_path)
                    .stdout(std::process::Stdio::null())
                    .stderr(stderr)
                    .spawn()
            })
            .expect("entering the host namespace")
            .expect("starting plexusd");
        let d = Daemon {
            child,
            socket_dir,
            config_path,
            log,
        };
        d.wait_ready(std::time::Duration::from_secs(25));
        d
    }

    /// The socket.
    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join("plexus.sock")
    }

    /// Sends raw bytes and returns the raw answer.
    pub fn raw(&self, bytes: &[u8]) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(bytes)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn wait_ready(&self, max: std::time::Duration) {
        let deadline = std::time::Instant::now() + max;
        while std::time::Instant::now() < deadline {
            if self
                .raw(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "plexusd not ready: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) {
        let _ = nix_kill(self.child.id());
        let _ = self.child.wait();
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// A free TCP port on the loopback of the node's host namespace.
    pub fn free_port(&self) -> u16 {
        self.loopback_listener()
            .local_addr()
            .expect("a free port")
            .port()
    }

    /// The daemon's `/metrics` on `port` of the node's loopback.
    pub fn scrape(&self, port: u16) -> String {
        self.world
            .host
            .run(|| -> std::io::Result<String> {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })
            .expect("entering the host namespace")
            .expect("the metrics endpoint")
    }

    /// The plugin configuration of thick mode (what the runtime reads): only the shim
    /// and where its daemon is; the daemon overlays its own keys.
    pub fn shim_conf(&self) -> Value {
        json!({"type": "plexus-shim", "daemonSocketDir": self.world.subdir("run"), "plexus": {"shimWaitSeconds": 1}})
    }
}
