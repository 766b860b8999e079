//! The Plexus demo. It plays the container runtime of one node: it creates "pods"
//! (network namespaces), and for each one executes the `plexus` CNI plugin exactly as
//! containerd or CRI-O would (CNI_* variables, configuration on stdin). Plexus
//! attaches the cluster network as eth0 and every network the pod selects, reads the
//! NetworkAttachmentDefinitions from manifests (local mode) and writes each pod's
//! network-status. Then real traffic crosses every secondary network, everything is
//! deleted, and the demo shows that nothing is left.
//!
//! Everything happens inside namespaces the demo creates (a private "node" namespace
//! holds the bridges and the macvlan master), with documentation addresses only.

use anyhow::{bail, Context, Result};
use plexus_cni::args::CniArgs;
use plexus_cni::config::NetworkConfigList;
use plexus_cni::runtime::{Attachment, Runtime};
use plexus_netns::NamedNetNs;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

mod hotplug;

const PLUGINS: &str = "/usr/lib/cni";

struct Pod {
    name: &'static str,
    selection: &'static str,
    ns: NamedNetNs,
    cid: String,
}

fn sh(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    if let Some(n) = ns {
        c.args(["-n", n]);
    }
    let out = c.args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn title(t: &str) {
    println!("\n\x1b[1m== {t}\x1b[0m");
}

fn nad(dir: &Path, name: &str, config: Value) -> Result<()> {
    let doc = format!(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  config: '{}'\n",
        config
    );
    println!("--- {name}.yaml\n{doc}");
    std::fs::write(dir.join(format!("{name}.yaml")), doc)?;
    Ok(())
}

fn main() -> Result<()> {
    let me = std::env::current_exe()?;
    let bin_dir = me.parent().context("binary directory")?.to_path_buf();
    if !bin_dir.join("plexus").exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p plexus`",
            bin_dir.join("plexus").display()
        );
    }
    let tag = std::process::id() % 100_000;
    let work = std::env::temp_dir().join(format!("plexus-demo-{tag}"));
    let _ = std::fs::remove_dir_all(&work);
    let dirs = ["nads", "status", "cni", "ipam", "conf"].map(|d| work.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    let [nads, status, cni, ipam, conf_dir] = dirs;
    let node =
        NamedNetNs::create(&format!("dmo-node-{tag}")).context("creating namespaces needs root")?;
    let result = run(&node, tag, &bin_dir, &nads, &status, &cni, &ipam, &conf_dir);
    let _ = std::fs::remove_dir_all(&work);
    node.remove()?;
    result
}

#[allow(clippy::too_many_arguments)]
// Long on purpose: the demo's script, read top to bottom as it runs.
fn run(
    node: &NamedNetNs,
    tag: u32,
    bin_dir: &Path,
    nads: &Path,
    status: &Path,
    cni: &Path,
    ipam: &Path,
    conf_dir: &Path,
) -> Result<()> {
    let n = node.name();
    sh(Some(n), &["link", "set", "lo", "up"])?;
    sh(
        Some(n),
        &[
            "link",
            "add",
            "uplink0",
            "type",
            "veth",
            "peer",
            "name",
            "uplink0-peer",
        ],
    )?;
    sh(Some(n), &["link", "set", "uplink0", "up"])?;
    sh(Some(n), &["link", "set", "uplink0-peer", "up"])?;

    title("Plexus: several networks per pod, the NPWG way");
    println!(
        "A node namespace ({n}) stands in for the host: bridges and the macvlan master live there."
    );
    println!("Every pod gets the cluster network as eth0, and the networks its annotation");
    println!("k8s.v1.cni.cncf.io/networks selects, described by NetworkAttachmentDefinitions:");
    let data_conf = json!({"cniVersion": "1.0.0", "type": "bridge", "bridge": "data-br",
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "198.51.100.0/24"}]]}});
    nad(nads, "data", data_conf.clone())?;
    nad(
        nads,
        "storage",
        json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "uplink0", "mode": "bridge",
        "capabilities": {"ips": true}, "ipam": {"type": "static"}}),
    )?;
    nad(
        nads,
        "mgmt",
        json!({"cniVersion": "1.0.0", "plugins": [
        {"type": "bridge", "bridge": "mgmt-br", "capabilities": {"ips": true}, "ipam": {"type": "static"}},
        {"type": "tuning", "capabilities": {"mac": true}}]}),
    )?;

    let cluster = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [{"type": "bridge", "bridge": "cluster-br", "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.1"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]});
    let plexus_conf = json!({
        "type": "plexus", "binDir": PLUGINS, "cniDir": cni, "confDir": conf_dir, "logLevel": "error",
        "delegates": [cluster],
        "plexus": {"local": {"nadDir": nads, "statusDir": status}}
    });
    let list = NetworkConfigList::from_value(
        json!({"cniVersion": "1.0.0", "name": "plexus", "plugins": [plexus_conf]}),
    )?;
    println!(
        "--- the node's CNI configuration (as in /etc/cni/net.d/00-plexus.conflist)\n{}",
        serde_json::to_string_pretty(&list.to_value())?
    );

    let specs: [(&str, &str); 3] = [
        (
            "pod-a",
            r#"[{"name":"data"},{"name":"storage","ips":["203.0.113.10/24"],"interface":"stor0"},{"name":"mgmt","ips":["2001:db8:100::a/64"],"mac":"02:00:5e:10:00:0a"}]"#,
        ),
        (
            "pod-b",
            r#"[{"name":"data"},{"name":"storage","ips":["203.0.113.11/24"],"interface":"stor0"},{"name":"mgmt","ips":["2001:db8:100::b/64"],"mac":"02:00:5e:10:00:0b"}]"#,
        ),
        ("pod-c", "data"),
    ];
    let mut pods = Vec::new();
    for (i, (name, selection)) in specs.iter().enumerate() {
        let ns = NamedNetNs::create(&format!("dmo-{name}-{tag}"))?;
        sh(Some(ns.name()), &["link", "set", "lo", "up"])?;
        pods.push(Pod {
            name,
            selection,
            ns,
            cid: format!("demo{tag}c{i}"),
        });
    }
    let rt = Runtime::new(vec![bin_dir.to_path_buf(), PathBuf::from(PLUGINS)], None);
    let attachment = |p: &Pod| -> Result<Attachment> {
        let args = CniArgs::parse(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            p.name, p.cid
        ))?;
        let mut args = args;
        args.set("PLEXUS_NETWORKS", p.selection);
        Ok(Attachment {
            container_id: p.cid.clone(),
            netns: Some(p.ns.path().display().to_string()),
            ifname: "eth0".into(),
            args,
            ..Default::default()
        })
    };
    let outcome = (|| -> Result<()> {
        for p in &pods {
            title(&format!("ADD {} (networks: {})", p.name, p.selection));
            let att = attachment(p)?;
            let r = node.run(|| rt.add_list(&list, &att))??;
            println!(
                "plexus returned the cluster network's result to the runtime:\n{}",
                serde_json::to_string(&r.to_value())?
            );
            println!(
                "interfaces inside {}:\n{}",
                p.name,
                sh(Some(p.ns.name()), &["-br", "addr", "show"])?.trim_end()
            );
            let st = std::fs::read_to_string(status.join(format!("demo_{}.json", p.name)))?;
            println!("k8s.v1.cni.cncf.io/network-status of {}:\n{st}", p.name);
        }
        title("Traffic over each secondary network");
        let data_b = sh(
            Some(pods[1].ns.name()),
            &["-4", "-br", "addr", "show", "net1"],
        )?;
        let data_b = data_b
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.split('/').next())
            .context("pod-b data address")?
            .to_string();
        for (net, from, to) in [
            ("data (bridge, host-local)", 0, data_b.as_str()),
            ("data", 2, data_b.as_str()),
            ("storage (macvlan, static)", 0, "203.0.113.11"),
            ("mgmt (bridge, static IPv6)", 0, "2001:db8:100::b"),
        ] {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    pods[from].ns.name(),
                    "ping",
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    to,
                ])
                .output()?
                .status
                .success();
            println!(
                "{:<28} {} -> {:<16} {}",
                net,
                pods[from].name,
                to,
                if ok { "reply ✔" } else { "NO REPLY ✘" }
            );
            if !ok {
                bail!("no traffic on {net}");
            }
        }
        Ok(())
    })();
    title("DEL every pod");
    let mut del_errors = Vec::new();
    for p in &pods {
        let att = attachment(p)?;
        match node.run(|| rt.del_list_with(&list, &att, None))? {
            Ok(()) => println!(
                "DEL {}: ok; interfaces left: {}",
                p.name,
                sh(Some(p.ns.name()), &["-br", "link"])?.lines().count() - 1
            ),
            Err(e) => del_errors.push(format!("{}: {e}", p.name)),
        }
    }
    let hotplug = match (&outcome, del_errors.is_empty()) {
        (Ok(()), true) => {
            let work = cni.parent().unwrap_or(cni).join("hotplug");
            std::fs::create_dir_all(&work)?;
            let dirs = hotplug::Dirs {
                work: &work,
                cni,
                ipam,
            };
            hotplug::act(node, tag, bin_dir, PLUGINS, &dirs, &cluster, &data_conf)
        }
        _ => Ok(()),
    };
    let leftovers: Vec<String> = [cni, status, &ipam.join("data"), &ipam.join("cluster")]
        .iter()
        .flat_map(|d| walk(d))
        .filter(|f| !f.ends_with("lock") && !f.contains("last_reserved_ip"))
        .collect();
    println!(
        "state files, caches, status files and IP reservations left: {}",
        leftovers.len()
    );
    for p in pods {
        p.ns.remove()?;
    }
    outcome?;
    hotplug?;
    if !del_errors.is_empty() || !leftovers.is_empty() {
        bail!("not clean: {del_errors:?} {leftovers:?}");
    }
    title("Done: five pods, four networks, one plugged in and out, real traffic, nothing left");
    Ok(())
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
