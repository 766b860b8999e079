//! `plexus-soak`: pods added and deleted through Plexus, thin and thick, with faults
//! injected at random (API server down or failing, plugin or daemon killed mid-ADD,
//! delegates failing or hanging, the pod's namespace gone before DEL); then nothing
//! may be left: no interface, no IP reservation, no state or cache file, no process,
//! and the daemon's memory must level off. See docs/reliability.md.

mod cycle;
mod fault;

use clap::Parser;
use cycle::{processes_with, Soak, Tally};
use plexus_e2e::meta::{bridge_host_local, nad_object, plexus_bin, Daemon, Node};
use plexus_e2e::{link_kinds, unique};
use plexus_testapi::Resource;
use serde_json::json;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Plexus fault soak: ADD/DEL cycles with random faults, then a leak check")]
struct Args {
    /// Cycles (pods) per mode.
    #[arg(long, default_value_t = 10_000)]
    cycles: usize,
    /// Modes to soak.
    #[arg(long, value_delimiter = ',', default_value = "thin,thick")]
    modes: Vec<String>,
    /// Pods in flight at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Share of cycles with a fault of their own.
    #[arg(long, default_value_t = 0.3)]
    fault_rate: f64,
    /// Share of the cycles during which the plugin or daemon may be killed; the
    /// daemon's memory is sampled over the cycles after it (one daemon lifetime).
    #[arg(long, default_value_t = 0.6)]
    kill_share: f64,
    /// Random seed (printed; the same seed gives the same faults per worker).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    println!(
        "# plexus-soak\n\nseed {seed}, {} cycles per mode, {} workers, fault rate {}, kills in the first {:.0} % of the cycles\n",
        args.cycles, args.workers, args.fault_rate, args.kill_share.clamp(0.0, 1.0) * 100.0
    );
    let mut clean = true;
    for mode in &args.modes {
        let thick = match mode.as_str() {
            "thin" => false,
            "thick" => true,
            other => {
                eprintln!("unknown mode {other:?} (thin, thick)");
                std::process::exit(2);
            }
        };
        clean &= run(&args, seed, thick);
    }
    if !clean {
        eprintln!("plexus-soak: findings above");
        std::process::exit(1);
    }
}

/// The node: a bridge and a macvlan network, one that fails and one that hangs.
fn setup(
    thick: bool,
) -> (
    Node,
    plexus_testapi::TestApiServer,
    Option<serde_json::Value>,
) {
    let (mut node, api) = Node::kube(1);
    node.conf["binDir"] = json!(plexus_bin().parent().expect("target directory"));
    node.conf["logLevel"] = json!("error");
    node.conf["plexus"]["delegateTimeoutSeconds"] = json!(1);
    let ipam = node.ipam_dir();
    let nads = [
        (
            "br",
            bridge_host_local(&unique("sbr"), "198.51.100.0/24", &ipam),
        ),
        (
            "mv",
            json!({"cniVersion": "1.0.0", "type": "macvlan", "master": node.master, "mode": "bridge",
                      "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": "203.0.113.0/24"}]]}}),
        ),
        (
            "fail",
            json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "failOn": "ADD", "errorCode": 11}),
        ),
        (
            "hang",
            json!({"cniVersion": "1.0.0", "type": "plexus-test-plugin", "hangOn": "ADD"}),
        ),
    ];
    for (name, cfg) in nads {
        api.put(Resource::Nads, nad_object("soak", name, &cfg));
    }
    let daemon_cfg = thick.then(|| Daemon::config(&node, json!({})));
    if thick {
        node.conf = node.shim_conf();
    }
    (node, api, daemon_cfg)
}

fn run(args: &Args, seed: u64, thick: bool) -> bool {
    let mode = if thick { "thick" } else { "thin" };
    let (node, api, daemon_cfg) = setup(thick);
    let daemon = daemon_cfg.as_ref().map(|c| Daemon::run(&node.world, c));
    let soak = Soak {
        node,
        api: Mutex::new(api),
        daemon: Mutex::new(daemon),
        daemon_cfg,
        generation: AtomicUsize::new(1),
        chaos: Mutex::new(()),
        next: AtomicUsize::new(0),
        cycles: args.cycles,
        rate: args.fault_rate,
        kills_until: (args.cycles as f64 * args.kill_share.clamp(0.0, 1.0)) as usize,
        sample_every: (args.cycles / 25).max(1),
        tally: Mutex::new(Tally::default()),
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..args.workers.max(1) {
            let soak = &soak;
            s.spawn(move || soak.work(seed.wrapping_add(w as u64)));
        }
    });
    let took = started.elapsed();
    soak.sample(args.cycles);
    leftovers(&soak);
    let tally = soak.tally.into_inner().unwrap_or_else(|e| e.into_inner());
    report(mode, took, &tally);
    tally.findings.is_empty()
}

/// What is left once every pod is gone: files, interfaces, processes.
fn leftovers(soak: &Soak) {
    let node = &soak.node;
    let mut found = Vec::new();
    for f in node.leftovers() {
        found.push(format!("file left: {}", f.display()));
    }
    for (name, kind) in link_kinds(node.world.host()) {
        let the_master = name == node.master || name == format!("{}p", node.master);
        if kind == "veth" && !the_master || kind == "macvlan" {
            found.push(format!("interface left on the node: {name} ({kind})"));
        }
    }
    for pid in processes_with(&format!("CNI_CONTAINERID=soak{}n*", std::process::id())) {
        found.push(format!("process left: {pid}"));
    }
    let mut t = soak.tally.lock().unwrap_or_else(|e| e.into_inner());
    t.findings.extend(found);
}

fn report(mode: &str, took: std::time::Duration, t: &Tally) {
    let total: usize = t.cycles.values().sum();
    println!("## {mode}: {total} cycles in {:.0} s\n", took.as_secs_f64());
    println!("| fault | cycles | ADD succeeded | DEL retried | mean cycle | longest |\n|---|---:|---:|---:|---:|---:|");
    for (f, n) in &t.cycles {
        let (sum, max) = t.time.get(f).copied().unwrap_or_default();
        println!(
            "| {} | {n} | {} | {} | {:.0} ms | {:.0} ms |",
            f.name(),
            t.add_ok.get(f).unwrap_or(&0),
            t.del_retried.get(f).unwrap_or(&0),
            sum.as_secs_f64() * 1000.0 / (*n).max(1) as f64,
            max.as_secs_f64() * 1000.0
        );
    }
    let codes: Vec<String> = t
        .del_codes
        .iter()
        .map(|(c, n)| format!("code {c}: {n}"))
        .collect();
    println!(
        "\nfailed DEL tries (retried until they succeeded): {}",
        if codes.is_empty() {
            "none".into()
        } else {
            codes.join(", ")
        }
    );
    // One daemon lifetime: the samples of the last daemon started (kills stop before).
    let last = t.rss.iter().map(|r| r.1).max();
    let life: Vec<(usize, u64)> = t
        .rss
        .iter()
        .filter(|r| Some(r.1) == last)
        .map(|r| (r.0, r.2))
        .collect();
    if !life.is_empty() {
        let series: Vec<String> = life
            .iter()
            .map(|(n, kib)| format!("{n}:{:.1}", *kib as f64 / 1024.0))
            .collect();
        println!(
            "\nplexusd RSS (MiB) by cycle, one daemon lifetime without kills: {}",
            series.join(" ")
        );
        println!("{}", plateau(&life));
    }
    if t.half_made > 0 {
        println!(
            "\nkills that left a half-made link inside the pod (a macvlan under its temporary name, gone with the pod's namespace): {}",
            t.half_made
        );
    }
    println!(
        "\nleft behind: {}",
        if t.findings.is_empty() {
            "nothing (files, interfaces, reservations, processes)".to_string()
        } else {
            format!("{} findings", t.findings.len())
        }
    );
    for f in &t.findings {
        println!("- {f}");
    }
    println!();
}

/// Whether the daemon's memory levelled off: the last third of the samples against
/// the middle third (the first is the warm-up of a freshly started daemon).
fn plateau(rss: &[(usize, u64)]) -> String {
    let kib: Vec<u64> = rss.iter().map(|r| r.1).collect();
    let third = kib.len() / 3;
    if third == 0 {
        return "too few samples to judge a plateau".into();
    }
    let mid = kib[third..2 * third].iter().max().copied().unwrap_or(0);
    let last = kib[2 * third..].iter().max().copied().unwrap_or(0);
    let growth = last as f64 / mid.max(1) as f64 - 1.0;
    format!(
        "plateau: middle third peaks at {:.1} MiB, last third at {:.1} MiB ({:+.1} %)",
        mid as f64 / 1024.0,
        last as f64 / 1024.0,
        growth * 100.0
    )
}
