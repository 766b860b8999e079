//! `plexus-hotplug-bench`: how long a hot-plug takes, from the pod's annotation update as
//! the API server stores it to the interface being in the pod with its address (attach)
//! or gone (detach). plexusd in thick mode, the repo's test API server over TLS, real
//! namespaces, bridge and host-local. One pod edited again and again, then `--at-once`
//! pods edited together. Prints a markdown report (docs/benchmarks.md, "Hot-plug").

#[path = "../bench/stats.rs"]
mod stats;

use anyhow::{bail, Context, Result};
use clap::Parser;
use plexus_e2e::meta::*;
use plexus_e2e::*;
use plexus_netns::NetNs;
use plexus_testapi::{Resource, TestApiServer};
use serde_json::json;
use stats::{ms, summarize};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "plexus-hotplug-bench")]
struct Args {
    /// Edits of the single pod (each an attach and a detach).
    #[arg(long, default_value_t = 60)]
    edits: usize,
    /// Pods edited at once in the second series.
    #[arg(long, default_value_t = 16)]
    at_once: usize,
    /// Rounds of the second series.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
}

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const LIMIT: Duration = Duration::from_secs(30);

fn edit(api: &TestApiServer, pod: &str, networks: &str) -> Instant {
    let mut p = api.get(Resource::Pods, "demo", pod).unwrap_or_default();
    p["metadata"]["annotations"][NETWORKS] = json!(networks);
    api.put(Resource::Pods, p);
    // The API server has stored it: the clock starts.
    Instant::now()
}

/// Whether `ifname` is in the namespace with an IPv4 address (netlink in the namespace).
fn ready(ns: &NetNs, ifname: &str) -> Result<bool> {
    let name = ifname.to_string();
    let found = ns.run(move || -> Result<bool> {
        Ok(nix::ifaddrs::getifaddrs()?.any(|a| {
            a.interface_name == name
                && a.address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .is_some()
        }))
    })??;
    Ok(found)
}

fn present(ns: &NetNs, ifname: &str) -> Result<bool> {
    let name = ifname.to_string();
    Ok(ns.run(move || nix::net::if_::if_nametoindex(name.as_str()).is_ok())?)
}

/// Polls every 500 µs until `done`, then the time since `t0`.
fn wait(t0: Instant, what: &str, done: impl Fn() -> Result<bool>) -> Result<Duration> {
    while !done()? {
        if t0.elapsed() > LIMIT {
            bail!("{what}: not done within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(t0.elapsed())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pods = 1 + args.at_once;
    let (mut n, api) = Node::kube(pods);
    for (name, subnet) in [("br", "198.51.100.0/24"), ("br2", "203.0.113.0/24")] {
        api.put(
            Resource::Nads,
            nad_object(
                "demo",
                name,
                &bridge_host_local(&unique("hpb"), subnet, &n.ipam_dir()),
            ),
        );
    }
    let names: Vec<String> = (0..pods).map(|i| format!("p{i}")).collect();
    for (i, p) in names.iter().enumerate() {
        api.put(
            Resource::Pods,
            pod_object("demo", p, &format!("u{i}"), Some("br")),
        );
    }
    let d = Daemon::start(&n, json!({"plexus": {"addedInterfaceEvents": false}}));
    n.conf = n.shim_conf();
    let atts: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, p)| n.attachment(i, &unique("cid"), "demo", p, &[]))
        .collect();
    for a in &atts {
        n.add(a).map_err(|e| anyhow::anyhow!("ADD: {e}"))?;
    }
    let nss: Vec<NetNs> = (0..pods)
        .map(|i| NetNs::open(n.world.ctr_path(i)))
        .collect::<std::result::Result<_, _>>()
        .context("opening the pods' namespaces")?;

    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for _ in 0..args.edits {
        let t0 = edit(&api, "p0", "br,br2");
        attach.push(ms(wait(t0, "attach", || ready(&nss[0], "net2"))?));
        let t0 = edit(&api, "p0", "br");
        detach.push(ms(wait(t0, "detach", || {
            present(&nss[0], "net2").map(|p| !p)
        })?));
    }

    let (mut attach_n, mut detach_n) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for (value, out, gone) in [
            ("br,br2", &mut attach_n, false),
            ("br", &mut detach_n, true),
        ] {
            let starts: Vec<Instant> = (1..pods).map(|i| edit(&api, &names[i], value)).collect();
            let mut left: Vec<usize> = (1..pods).collect();
            let deadline = Instant::now() + LIMIT;
            while !left.is_empty() {
                let mut still = Vec::new();
                for i in left {
                    let done = if gone {
                        !present(&nss[i], "net2")?
                    } else {
                        ready(&nss[i], "net2")?
                    };
                    if done {
                        out.push(ms(starts[i - 1].elapsed()));
                    } else {
                        still.push(i);
                    }
                }
                left = still;
                if Instant::now() > deadline {
                    bail!("{} pods not done within {LIMIT:?}", left.len());
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    for a in &atts {
        n.del(a).map_err(|e| anyhow::anyhow!("DEL: {e}"))?;
    }
    let left = n.leftovers();
    d.stop();

    println!("# plexus-hotplug-bench\n");
    println!(
        "From the annotation update stored by the API server to the interface in the pod with its address (attach) or gone (detach); milliseconds.\n"
    );
    println!("| series | samples | median | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|");
    for (name, xs) in [
        ("1 pod: attach", &attach),
        ("1 pod: detach", &detach),
        (
            &*format!("{} pods at once: attach", args.at_once),
            &attach_n,
        ),
        (
            &*format!("{} pods at once: detach", args.at_once),
            &detach_n,
        ),
    ] {
        println!("| {name} | {} | {} |", xs.len(), summarize(xs).cells());
    }
    println!(
        "\nleft behind after the pods' DEL: {}",
        if left.is_empty() {
            "nothing".to_string()
        } else {
            format!("{left:?}")
        }
    );
    if !left.is_empty() {
        bail!("not clean");
    }
    Ok(())
}
