//! `kubectl-plexus` (kubectl finds it on PATH as `kubectl plexus`):
//!
//! - `validate FILE...`: NADs and pod manifests checked offline with the rules of the
//!   CNI plugin and the webhook (the NADs of the files are the ones pods may name);
//! - `explain POD`: each of the pod's networks: where its configuration comes from, its
//!   interface, what it asks for, what network-status reports, the events; with
//!   `--cni-dir` on the pod's node, what the state file holds and what the pod's
//!   namespace really has (drift);
//! - `node`: the attachments of this node from the state files, and orphans (state
//!   without a namespace, IP reservations and cached results without state).
//!
//! Tables for people, `-o json` and `-o yaml` for scripts.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kube::api::{Api, DynamicObject, ListParams};
use plexus_admission::rules::{self, NadSource, Policy};
use plexus_cni::cache::CacheEntry;
use plexus_engine::state::{PodState, StateStore};
use plexus_npwg::nad::Nad;
use plexus_npwg::selection::parse_networks;
use plexus_npwg::{NETWORKS_ANNOTATION, RESOURCE_NAME_ANNOTATION, STATUS_ANNOTATION};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-plexus",
    version,
    about = "Plexus networks: validate manifests, explain a pod's networks, show a node's attachments"
)]
struct Cli {
    /// Output: table, json or yaml.
    #[arg(short = 'o', long, default_value = "table", global = true, value_parser = ["table", "json", "yaml"])]
    output: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Checks NADs and pod manifests (YAML or JSON, several documents per file).
    Validate {
        /// Manifests.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The node configuration (namespaceIsolation, globalNamespaces, multusNamespace).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Explains a pod's networks.
    Explain {
        /// The pod.
        pod: String,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Kubeconfig (KUBECONFIG or ~/.kube/config otherwise).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context.
        #[arg(long)]
        context: Option<String>,
        /// On the pod's node: Plexus's cniDir, to compare the state with the pod.
        #[arg(long)]
        cni_dir: Option<PathBuf>,
    },
    /// This node's attachments and orphans, from the state files.
    Node {
        /// Plexus's cniDir.
        #[arg(long, default_value = "/var/lib/cni/multus")]
        cni_dir: PathBuf,
        /// host-local's data directory.
        #[arg(long, default_value = "/var/lib/cni/networks")]
        ipam_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.command {
        Cmd::Validate { files, config } => validate(files, config.as_deref()),
        Cmd::Explain {
            pod,
            namespace,
            kubeconfig,
            context,
            cni_dir,
        } => explain(
            pod,
            namespace,
            kubeconfig.as_deref(),
            context.as_deref(),
            cni_dir.as_deref(),
        ),
        Cmd::Node { cni_dir, ipam_dir } => node(cni_dir, ipam_dir),
    };
    match r {
        Ok((report, ok)) => {
            if let Err(e) = print(&cli.output, &report) {
                eprintln!("kubectl-plexus: {e:#}");
                return ExitCode::from(2);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("kubectl-plexus: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes `report`: its `table` rows for people, or all of it as JSON or YAML.
fn print(format: &str, report: &Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let text = match format {
        "json" => serde_json::to_string_pretty(report)?,
        "yaml" => serde_saphyr::to_string(report)?,
        _ => table(report),
    };
    let _ = writeln!(out, "{}", text.trim_end());
    Ok(())
}

/// The report's `table` (a header and rows of strings) aligned in columns.
fn table(report: &Value) -> String {
    let rows: Vec<Vec<String>> = report["table"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    c.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| c.to_string())
                })
                .collect()
        })
        .collect();
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        s.push_str(line.join("   ").trim_end());
        s.push('\n');
    }
    for note in report["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        s.push_str(note);
        s.push('\n');
    }
    s
}

// ---- validate ------------------------------------------------------------------------

struct FileNads(HashMap<(String, String), Nad>);

impl NadSource for FileNads {
    fn nad(&self, ns: &str, name: &str) -> Result<Option<Nad>, String> {
        Ok(self.0.get(&(ns.to_string(), name.to_string())).cloned())
    }
}

fn validate(files: &[PathBuf], config: Option<&Path>) -> Result<(Value, bool)> {
    let policy: Policy = match config {
        Some(p) => {
            serde_json::from_slice(&std::fs::read(p).with_context(|| p.display().to_string())?)
                .with_context(|| p.display().to_string())?
        }
        None => Policy::default(),
    };
    let mut objects = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).with_context(|| f.display().to_string())?;
        for mut d in docs.into_iter().filter(|d| !d.is_null()) {
            let items = if d["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                d["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![d.take()]
            };
            for mut o in items {
                if o["metadata"]["namespace"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    o["metadata"]["namespace"] = json!("default");
                }
                objects.push((f.display().to_string(), o));
            }
        }
    }
    let mut nads = HashMap::new();
    for (_, o) in objects
        .iter()
        .filter(|(_, o)| o["kind"] == "NetworkAttachmentDefinition")
    {
        if let Ok(n) = Nad::from_object(o) {
            nads.insert((n.id.namespace.clone(), n.id.name.clone()), n);
        }
    }
    let source = FileNads(nads);
    let mut table = vec![vec![
        json!("FILE"),
        json!("KIND"),
        json!("OBJECT"),
        json!("RESULT"),
        json!("MESSAGE"),
    ]];
    let mut results = Vec::new();
    let mut ok = true;
    for (file, o) in &objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let v = match kind {
            "NetworkAttachmentDefinition" => rules::review_nad(o),
            "Pod" => rules::review_pod(o, None, &policy, &source),
            _ => continue,
        };
        ok &= v.allowed;
        let name = format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        let result = if !v.allowed {
            "refused"
        } else if v.warnings.is_empty() {
            "ok"
        } else {
            "warning"
        };
        let msg = if v.allowed {
            v.warnings.join("; ")
        } else {
            v.message.clone()
        };
        table.push(vec![
            json!(file),
            json!(kind),
            json!(name),
            json!(result),
            json!(msg),
        ]);
        results.push(
            json!({"file": file, "kind": kind, "object": name, "allowed": v.allowed,
                            "message": v.message, "warnings": v.warnings}),
        );
    }
    Ok((json!({"results": results, "table": table}), ok))
}

// ---- explain -------------------------------------------------------------------------

fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(tokio::runtime::Runtime, kube::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = rt.block_on(async {
        match kubeconfig {
            Some(p) => {
                kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(p)?, &opts)
                    .await
                    .map_err(anyhow::Error::from)
            }
            None => kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(anyhow::Error::from),
        }
    })?;
    let c = {
        let _g = rt.enter();
        kube::Client::try_from(config)?
    };
    Ok((rt, c))
}

fn explain(
    pod: &str,
    ns: &str,
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    cni_dir: Option<&Path>,
) -> Result<(Value, bool)> {
    let (rt, c) = client(kubeconfig, context)?;
    let pods: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "Pod")),
    );
    let Some(p) = rt.block_on(pods.get_opt(pod))? else {
        bail!("pod {ns}/{pod} not found");
    };
    let p = serde_json::to_value(p)?;
    let ann = &p["metadata"]["annotations"];
    let status: Vec<Value> = ann[STATUS_ANNOTATION]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let sel = match ann[NETWORKS_ANNOTATION].as_str() {
        None => vec![],
        Some(v) => parse_networks(v, ns).map_err(|e| {
            anyhow::anyhow!(
                "pod {ns}/{pod}: {}",
                e.describe(&format!("annotation {NETWORKS_ANNOTATION:?}"))
            )
        })?,
    };
    let nads_api = |n: &str| -> Api<DynamicObject> {
        Api::namespaced_with(c.clone(), n, &plexus_kube::nad_resource())
    };
    let mut nets = Vec::new();
    let mut table = vec![
        ["NETWORK", "INTERFACE", "CONFIG FROM", "ASKS FOR", "STATUS"]
            .map(|s| json!(s))
            .to_vec(),
    ];
    let mut notes = Vec::new();
    for (i, s) in sel.iter().enumerate() {
        let ifname = s
            .interface
            .clone()
            .unwrap_or_else(|| format!("net{}", i + 1));
        let nad = rt.block_on(nads_api(&s.network.namespace).get_opt(&s.network.name))?;
        let (from, resource) = match &nad {
            None => ("missing: no NetworkAttachmentDefinition".to_string(), None),
            Some(o) => {
                let v = serde_json::to_value(o)?;
                let res = v["metadata"]["annotations"][RESOURCE_NAME_ANNOTATION]
                    .as_str()
                    .map(str::to_string);
                let from = if v["spec"]["config"]
                    .as_str()
                    .is_some_and(|c| !c.trim().is_empty())
                {
                    "NAD spec.config".to_string()
                } else {
                    format!(
                        "the node's disk (confDir), network named {:?}",
                        s.network.name
                    )
                };
                (from, res)
            }
        };
        let asks: Vec<String> = s.capability_requests().keys().cloned().collect();
        let st = status.iter().find(|e| e["interface"] == ifname.as_str());
        let st_text = match st {
            Some(e) => format!(
                "{} {}",
                e["ips"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                e["mac"].as_str().unwrap_or_default()
            ),
            None => "not reported".to_string(),
        };
        table.push(vec![
            json!(s.network.to_string()),
            json!(ifname),
            json!(from),
            json!(asks.join(",")),
            json!(st_text.trim()),
        ]);
        nets.push(
            json!({"network": s.network.to_string(), "interface": ifname, "configFrom": from,
                         "resourceName": resource, "requests": asks, "status": st}),
        );
    }
    if sel.iter().any(|s| s.interface.is_none()) {
        notes.push("Interfaces without `interface` are net<N> by position, as when the node configuration has no defaultNetworks; the node's state (--cni-dir) is authoritative.".to_string());
    }
    let evs: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        ns,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "Event")),
    );
    let events: Vec<Value> = rt
        .block_on(evs.list(&ListParams::default()))?
        .items
        .into_iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| json!({"type": e["type"], "reason": e["reason"], "message": e["message"]}))
        .collect();
    for e in &events {
        notes.push(format!(
            "event {} {}: {}",
            e["type"].as_str().unwrap_or_default(),
            e["reason"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        ));
    }
    let mut report = json!({"pod": format!("{ns}/{pod}"), "networks": nets, "networkStatus": status, "events": events});
    let mut ok = true;
    if let Some(dir) = cni_dir {
        let node = node_view(dir, ns, pod)?;
        for d in node["drift"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            ok = false;
            notes.push(format!("drift: {d}"));
        }
        report["node"] = node;
    }
    report["table"] = json!(table);
    report["notes"] = json!(notes);
    Ok((report, ok))
}

/// The node's state files (the engine's store), by container ID; unreadable ones left out.
fn states(cni_dir: &Path) -> Result<Vec<PodState>> {
    let store = StateStore::new(cni_dir);
    Ok(store
        .containers()?
        .iter()
        .filter_map(|cid| store.load(cid).ok().flatten())
        .collect())
}

/// The interfaces of the namespace at `netns` (none when it is gone).
fn links_in(netns: &str) -> Option<BTreeSet<String>> {
    if !Path::new(netns).exists() {
        return None;
    }
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-j", "link", "show"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n != "lo")
            .collect(),
    )
}

fn node_view(cni_dir: &Path, ns: &str, pod: &str) -> Result<Value> {
    let st = states(cni_dir)?
        .into_iter()
        .find(|s| s.pod_namespace == ns && s.pod_name == pod);
    let Some(st) = st else {
        return Ok(
            json!({"state": null, "drift": [format!("no state file for {ns}/{pod} in {}", cni_dir.join("plexus").display())]}),
        );
    };
    let want: BTreeSet<String> = st
        .attachments
        .iter()
        .filter(|a| !a.auxiliary)
        .map(|a| a.ifname.clone())
        .collect();
    let netns = st.netns.as_str();
    let mut drift = Vec::new();
    match links_in(netns) {
        None => drift.push(format!("the pod's namespace {netns} is gone")),
        Some(have) => {
            for w in want.difference(&have) {
                drift.push(format!("{w} is in the state but not in the pod"));
            }
            for h in have.difference(&want) {
                drift.push(format!("{h} is in the pod but not in the state"));
            }
        }
    }
    Ok(json!({"state": st, "drift": drift}))
}

// ---- node ----------------------------------------------------------------------------

fn node(cni_dir: &Path, ipam_dir: &Path) -> Result<(Value, bool)> {
    let states = states(cni_dir)?;
    let known: BTreeSet<String> = states.iter().map(|s| s.container_id.clone()).collect();
    let mut table = vec![["POD", "CONTAINER", "INTERFACE", "NETWORK", "DEVICE"]
        .map(|s| json!(s))
        .to_vec()];
    let mut attachments = Vec::new();
    let mut orphans = Vec::new();
    for s in &states {
        let cid = s.container_id.as_str();
        let pod = format!("{}/{}", s.pod_namespace, s.pod_name);
        let netns = s.netns.as_str();
        if !Path::new(netns).exists() {
            orphans.push(json!({"kind": "state without a namespace", "container": cid, "pod": pod, "netns": netns}));
        }
        for a in &s.attachments {
            let dev = a
                .device
                .as_ref()
                .map(|d| d.device_id.as_str())
                .unwrap_or("");
            table.push(vec![
                json!(pod),
                json!(cid.chars().take(12).collect::<String>()),
                json!(a.ifname),
                json!(a.name),
                json!(dev),
            ]);
            attachments.push(json!({"pod": pod, "container": cid, "interface": a.ifname, "network": a.name, "device": a.device}));
        }
    }
    // host-local: <dataDir>/<network>/<ip> holds "<containerID>\r\n<ifname>".
    for net in std::fs::read_dir(ipam_dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(net.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            if name.parse::<std::net::IpAddr>().is_err() {
                continue;
            }
            let owner = std::fs::read_to_string(f.path()).unwrap_or_default();
            let cid = owner.lines().next().unwrap_or_default().trim().to_string();
            if !known.contains(&cid) {
                orphans.push(json!({"kind": "IP reservation without state", "container": cid, "file": f.path()}));
            }
        }
    }
    // libcni's result cache: {"containerId": ...}.
    for f in std::fs::read_dir(cni_dir.join("results"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let cid = std::fs::read(f.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
            .map(|e| e.container_id)
            .unwrap_or_default();
        if !known.contains(&cid) {
            orphans.push(
                json!({"kind": "cached result without state", "container": cid, "file": f.path()}),
            );
        }
    }
    let notes: Vec<String> = orphans
        .iter()
        .map(|o| {
            format!(
                "orphan: {} {} {}",
                o["kind"].as_str().unwrap_or_default(),
                o["container"].as_str().unwrap_or_default(),
                o["file"]
                    .as_str()
                    .or(o["netns"].as_str())
                    .unwrap_or_default()
            )
        })
        .collect();
    let pods: BTreeSet<(&str, &str)> = states
        .iter()
        .filter(|s| !s.attachments.is_empty())
        .map(|s| (s.pod_namespace.as_str(), s.pod_name.as_str()))
        .collect();
    let ok = orphans.is_empty();
    Ok((
        json!({"pods": pods.len(), "attachments": attachments, "orphans": orphans, "table": table, "notes": notes}),
        ok,
    ))
}
