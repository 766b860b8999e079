//! The demo's second act: hot-plug. plexusd runs in the node namespace (thick mode)
//! against a Kubernetes API (the repo's test API server over TLS stands in for the
//! cluster's); the runtime executes the `plexus-shim` CNI binary. A running pod gets a
//! network by an edit of its annotation, reaches another pod over it, and loses it by
//! the next edit, its address reservation released.

use crate::{sh, title};
use anyhow::{bail, Context, Result};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_netns::NamedNetNs;
use plexus_testapi::{Resource, TestApiServer};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";

/// Where the act works.
pub struct Dirs<'a> {
    /// Scratch directory of the act.
    pub work: &'a Path,
    /// State and result cache.
    pub cni: &'a Path,
    /// host-local's reservations.
    pub ipam: &'a Path,
}

struct Plexusd(Child);

impl Drop for Plexusd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn pod_object(name: &str, networks: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"),
                        "annotations": {NETWORKS: networks}},
           "spec": {"nodeName": "demo-node", "containers": [{"name": "app", "image": "registry.invalid/app"}]},
           "status": {"phase": "Running"}})
}

fn edit(api: &TestApiServer, pod: &str, networks: &str) {
    if let Some(mut p) = api.get(Resource::Pods, "demo", pod) {
        p["metadata"]["annotations"][NETWORKS] = json!(networks);
        api.put(Resource::Pods, p);
    }
}

fn ready(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let mut out = String::new();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .and_then(|()| s.read_to_string(&mut out))
        .is_ok()
        && out.starts_with("HTTP/1.1 200")
}

fn until(what: &str, probe: impl Fn() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while !probe() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("{what}: did not happen within 20 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t0.elapsed())
}

fn has_link(ns: &str, name: &str) -> bool {
    sh(Some(ns), &["link", "show", name]).is_ok()
}

fn status(api: &TestApiServer, pod: &str) -> String {
    api.get(Resource::Pods, "demo", pod)
        .and_then(|p| {
            p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn events(api: &TestApiServer, pod: &str) -> Vec<String> {
    api.list(Resource::Events)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The act. `data` is the NAD configuration of the data network of the first act.
// Long on purpose: the demo's script, read top to bottom as it runs.
pub fn act(
    node: &NamedNetNs,
    tag: u32,
    bin_dir: &Path,
    plugins: &str,
    dirs: &Dirs,
    cluster: &Value,
    data: &Value,
) -> Result<()> {
    title("Hot-plug: a network plugged into a running pod, and out again");
    println!("plexusd now runs in the node namespace (thick mode), with a Kubernetes API; the");
    println!("runtime executes the plexus-shim CNI binary. Pod-d starts with eth0 only.");
    let listener = node.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
    let api = TestApiServer::start_on(listener);
    let kc = dirs.work.join("kubeconfig");
    api.write_kubeconfig(&kc);
    api.put(
        Resource::Nads,
        json!({"metadata": {"name": "data", "namespace": "demo"}, "spec": {"config": data.to_string()}}),
    );
    api.put(Resource::Pods, pod_object("pod-d", ""));
    api.put(Resource::Pods, pod_object("pod-e", "data"));
    let run = dirs.work.join("run");
    let cfg = json!({"cniVersion": "1.0.0", "socketDir": run, "nodeName": "demo-node",
        "multusConfigFile": "none", "kubeconfig": kc, "binDir": plugins, "cniDir": dirs.cni,
        "logLevel": "error", "delegates": [cluster]});
    let cfg_path = dirs.work.join("daemon-config.json");
    std::fs::write(&cfg_path, cfg.to_string())?;
    let log = std::fs::File::create(dirs.work.join("plexusd.log"))?;
    let child = node.run(|| {
        Command::new(bin_dir.join("plexusd"))
            .arg("--config")
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
    })??;
    let daemon = Plexusd(child);
    until("plexusd ready", || ready(&run.join("plexus.sock")))?;
    let list = NetworkConfigList::from_value(json!({"cniVersion": "1.0.0", "name": "plexus",
        "plugins": [{"type": "plexus-shim", "daemonSocketDir": run}]}))?;
    let rt = Runtime::new(vec![bin_dir.to_path_buf(), PathBuf::from(plugins)], None);
    let mut pods = Vec::new();
    for (i, name) in ["pod-d", "pod-e"].iter().enumerate() {
        let ns = NamedNetNs::create(&format!("dmo-{name}-{tag}"))?;
        sh(Some(ns.name()), &["link", "set", "lo", "up"])?;
        let att = Attachment {
            container_id: format!("demo{tag}h{i}"),
            netns: Some(ns.path().display().to_string()),
            ifname: "eth0".into(),
            args: CniArgs::parse(&format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
            ))?,
            ..Default::default()
        };
        pods.push((ns, att));
    }
    let outcome = (|| -> Result<()> {
        for (ns, att) in &pods {
            node.run(|| rt.add_list(&list, att))??;
            println!(
                "ADD {}: {}",
                ns.name(),
                sh(Some(ns.name()), &["-br", "-4", "addr", "show"])?
                    .lines()
                    .filter(|l| !l.starts_with("lo"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let (d, e) = (pods[0].0.name(), pods[1].0.name());
        let e_data = sh(Some(e), &["-4", "-br", "addr", "show", "net1"])?;
        let e_data = e_data
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.split('/').next())
            .context("pod-e data address")?
            .to_string();

        println!("\n$ kubectl annotate pod pod-d --overwrite {NETWORKS}=data");
        edit(&api, "pod-d", "data");
        let took = until("net1 in pod-d", || {
            sh(Some(d), &["-4", "addr", "show", "net1"]).is_ok_and(|o| o.contains("inet "))
        })?;
        println!(
            "net1 is up in pod-d {:.0} ms after the edit: {}",
            took.as_secs_f64() * 1000.0,
            sh(Some(d), &["-br", "-4", "addr", "show", "net1"])?.trim()
        );
        until("network-status of pod-d", || {
            status(&api, "pod-d").contains("demo/data")
        })?;
        println!(
            "k8s.v1.cni.cncf.io/network-status of pod-d:\n{}",
            status(&api, "pod-d")
        );
        let ok = Command::new("ip")
            .args([
                "netns", "exec", d, "ping", "-c", "2", "-i", "0.2", "-W", "1", &e_data,
            ])
            .output()?
            .status
            .success();
        println!(
            "traffic over the plugged-in network: pod-d -> {e_data} (pod-e) {}",
            if ok { "reply ✔" } else { "NO REPLY ✘" }
        );
        if !ok {
            bail!("no traffic over the hot-plugged network");
        }
        let d_data = sh(Some(d), &["-4", "-br", "addr", "show", "net1"])?;
        let d_data = d_data
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.split('/').next())
            .unwrap_or_default()
            .to_string();

        println!("\n$ kubectl annotate pod pod-d --overwrite {NETWORKS}=");
        edit(&api, "pod-d", "");
        let took = until("net1 gone from pod-d", || !has_link(d, "net1"))?;
        // The plugin releases the address after it removed the link: the detach is
        // over once network-status says so.
        until("network-status of pod-d", || {
            !status(&api, "pod-d").contains("demo/data")
        })?;
        let reserved = dirs.ipam.join("data").join(&d_data).exists();
        println!(
            "net1 is gone from pod-d {:.0} ms after the edit; the reservation of {d_data}: {}",
            took.as_secs_f64() * 1000.0,
            if reserved {
                "STILL HELD ✘"
            } else {
                "released ✔"
            }
        );
        if reserved {
            bail!("the hot-unplugged address is still reserved");
        }
        until("RemovedInterface", || {
            events(&api, "pod-d")
                .iter()
                .any(|e| e.starts_with("RemovedInterface"))
        })?;
        println!("events of pod-d:");
        for e in events(&api, "pod-d") {
            println!("  {e}");
        }
        Ok(())
    })();
    let mut clean = true;
    for (ns, att) in &pods {
        if let Err(e) = node.run(|| rt.del_list_with(&list, att, None))? {
            println!("DEL {}: {e}", ns.name());
            clean = false;
        }
    }
    drop(daemon);
    for (ns, _) in pods {
        ns.remove()?;
    }
    outcome?;
    if !clean {
        bail!("a DEL failed");
    }
    println!("DEL pod-d, pod-e: ok");
    Ok(())
}
