//! One soak run: the shared node, API server and daemon, and the pod cycle each worker
//! repeats (pod created, ADD, DEL retried as a runtime retries it, pod deleted).

use crate::fault::{self, Fault};
use plexus_cni::runtime::Attachment;
use plexus_cni::CniError;
use plexus_e2e::meta::{pod_object, Daemon, Node};
use plexus_e2e::{kill_9, link_kinds, try_kill_9, unique};
use plexus_netns::NamedNetNs;
use plexus_testapi::{Resource, TestApiServer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a DEL is retried before the soak calls it a leak (a runtime retries forever).
const DEL_TRIES: usize = 60;

/// What the cycles saw, by fault.
#[derive(Default)]
pub struct Tally {
    pub cycles: BTreeMap<Fault, usize>,
    pub add_ok: BTreeMap<Fault, usize>,
    /// Time spent in cycles of each fault, and the longest cycle.
    pub time: BTreeMap<Fault, (Duration, Duration)>,
    /// DELs that needed more than one try, and the codes of the failed tries.
    pub del_retried: BTreeMap<Fault, usize>,
    pub del_codes: BTreeMap<u32, usize>,
    /// Findings: anything that must not happen (a leak, a DEL that never worked, a DEL
    /// error other than "try again later").
    pub findings: Vec<String>,
    /// `(cycle, daemon generation, RSS KiB)`.
    pub rss: Vec<(usize, usize, u64)>,
    /// Kills that left a half-made interface inside the pod (see [`half_made`]).
    pub half_made: usize,
}

/// A link a delegate killed mid-ADD leaves inside the pod and its DEL cannot name:
/// macvlan (like ipvlan) creates its link under a temporary name (`veth` and 8 hex
/// digits, the reference plugins' `RandomVethName`) on the node, moves it into the pod,
/// then renames it; killed before the rename, the link is in the pod under that name,
/// and the DEL (by interface name) finds nothing. It has no peer on the node and holds
/// no address reservation (IPAM runs after the rename): it goes with the pod's namespace,
/// which the runtime removes after a failed ADD's DEL. Anything else left is a finding.
fn half_made(name: &str, kind: &str) -> bool {
    let tmp = name
        .strip_prefix("veth")
        .is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    tmp && matches!(kind, "macvlan" | "ipvlan")
}

/// The run's shared parts.
pub struct Soak {
    pub node: Node,
    pub api: Mutex<TestApiServer>,
    /// Thick mode: the daemon, its configuration and how many were started.
    pub daemon: Mutex<Option<Daemon>>,
    pub daemon_cfg: Option<Value>,
    pub generation: AtomicUsize,
    /// Held through a global fault (outage, kill), so there is one at a time.
    pub chaos: Mutex<()>,
    pub next: AtomicUsize,
    pub cycles: usize,
    pub rate: f64,
    /// Kills stop at this cycle; the daemon's memory is sampled from there on.
    pub kills_until: usize,
    pub sample_every: usize,
    pub tally: Mutex<Tally>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Soak {
    fn thick(&self) -> bool {
        self.daemon_cfg.is_some()
    }

    /// A worker: cycles until the run's count is reached.
    pub fn work(&self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.cycles {
                return;
            }
            let f = fault::pick(&mut rng, n, self.rate, n < self.kills_until);
            self.cycle(&mut rng, n, f);
            if n >= self.kills_until && n % self.sample_every == 0 {
                self.sample(n);
            }
        }
    }

    /// Records the daemon's resident memory at cycle `n` (thick mode).
    pub fn sample(&self, n: usize) {
        if let Some(d) = lock(&self.daemon).as_ref() {
            let g = self.generation.load(Ordering::Relaxed);
            lock(&self.tally).rss.push((n, g, d.rss_kib()));
        }
    }

    fn finding(&self, what: String) {
        eprintln!("finding: {what}");
        lock(&self.tally).findings.push(what);
    }

    /// The pod's networks: a bridge and a macvlan network in random order, one of them
    /// sometimes left out, and the failing or hanging one where the fault wants it.
    fn networks(rng: &mut fastrand::Rng, f: Fault) -> String {
        let mut nets: Vec<&str> = match rng.u8(0..4) {
            0 => vec!["br"],
            1 => vec!["mv"],
            2 => vec!["br", "mv"],
            _ => vec!["mv", "br"],
        };
        let bad = match f {
            Fault::DelegateFails => Some("fail"),
            Fault::DelegateHangs => Some("hang"),
            _ => None,
        };
        if let Some(b) = bad {
            let at = rng.usize(0..=nets.len());
            nets.insert(at, b);
        }
        nets.join(",")
    }

    fn cycle(&self, rng: &mut fastrand::Rng, n: usize, f: Fault) {
        let started = Instant::now();
        let pod = format!("soak-{n}");
        // The process id keeps two soaks on one machine apart (the leftover check).
        let cid = format!("soak{}n{n}x{}", std::process::id(), rng.u32(..));
        let nets = Self::networks(rng, f);
        lock(&self.api).put(
            Resource::Pods,
            pod_object("soak", &pod, &format!("uid-{n}"), Some(&nets)),
        );
        let ns = match NamedNetNs::create(&unique("sk")) {
            Ok(ns) => ns,
            Err(e) => return self.finding(format!("cycle {n}: creating a namespace: {e}")),
        };
        let mut att = self.node.attachment(0, &cid, "soak", &pod, &[]);
        att.netns = Some(ns.path().display().to_string());
        // An outage lasts through the ADD and the DEL: DEL must work without the API.
        let outage = (f == Fault::ApiDown).then(|| self.api_down());
        let added = self.add(rng, f, &att);
        // A delegate killed at its time limit (`delegateTimeoutSeconds`, 1 s here) is
        // killed mid-ADD as surely as by the soak: on a loaded machine a macvlan ADD
        // can take that long.
        let timed_out = added
            .as_ref()
            .is_err_and(|e| e.contains("did not finish within"));
        let ns = match f {
            Fault::NetnsGone => {
                if let Err(e) = ns.remove() {
                    self.finding(format!("cycle {n}: removing its namespace: {e}"));
                }
                None
            }
            _ => Some(ns),
        };
        self.del(n, f, &att);
        drop(outage);
        if let Some(ns) = ns {
            let left: Vec<(String, String)> = link_kinds(ns.name())
                .into_iter()
                .filter(|(name, _)| name != "lo")
                .collect();
            let killed_mid_add = f == Fault::Killed || timed_out;
            if killed_mid_add && !left.is_empty() && left.iter().all(|(l, k)| half_made(l, k)) {
                lock(&self.tally).half_made += 1;
            } else if !left.is_empty() {
                self.finding(format!(
                    "cycle {n} ({}): {left:?} left in the pod",
                    f.name()
                ));
            }
            if let Err(e) = ns.remove() {
                self.finding(format!("cycle {n}: removing its namespace: {e}"));
            }
        }
        lock(&self.api).delete(Resource::Pods, "soak", &pod);
        let mut t = lock(&self.tally);
        *t.cycles.entry(f).or_default() += 1;
        if added.is_ok() {
            *t.add_ok.entry(f).or_default() += 1;
        }
        let took = started.elapsed();
        let time = t.time.entry(f).or_default();
        time.0 += took;
        time.1 = time.1.max(took);
    }

    /// The ADD, with the fault of the cycle; true when it succeeded.
    /// The ADD; its error's text when it failed.
    fn add(&self, rng: &mut fastrand::Rng, f: Fault, att: &Attachment) -> Result<(), String> {
        match f {
            Fault::ApiErrors => {
                lock(&self.api).fail_next(rng.usize(1..4), 503);
                outcome(self.node.add(att))
            }
            Fault::Killed => self.killed_add(rng, att),
            _ => outcome(self.node.add(att)),
        }
    }

    /// An ADD whose plugin (thin) or daemon (thick) is killed after a random delay.
    fn killed_add(&self, rng: &mut fastrand::Rng, att: &Attachment) -> Result<(), String> {
        let _one = lock(&self.chaos);
        let delay = Duration::from_millis(rng.u64(0..40));
        std::thread::scope(|s| {
            let adding = s.spawn(|| self.node.add(att));
            std::thread::sleep(delay);
            if self.thick() {
                let mut d = lock(&self.daemon);
                if let Some(old) = d.take() {
                    kill_9(u64::from(old.pid()));
                    drop(old);
                }
                if let Some(cfg) = &self.daemon_cfg {
                    *d = Some(Daemon::run(&self.node.world, cfg));
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
            } else if let Some(pid) = plugin_pid(&att.container_id) {
                // The plugin may have finished between the look-up and the kill.
                try_kill_9(pid);
            }
            match adding.join() {
                Ok(r) => outcome(r),
                Err(_) => Err("the ADD's thread panicked".into()),
            }
        })
    }

    /// Stops the API server until the guard is dropped.
    fn api_down(&self) -> Outage<'_> {
        let one = lock(&self.chaos);
        lock(&self.api).stop();
        Outage {
            soak: self,
            _one: one,
        }
    }

    /// The runtime's DEL, retried until it works as a runtime retries it.
    fn del(&self, n: usize, f: Fault, att: &Attachment) {
        for attempt in 0..DEL_TRIES {
            match self.node.del(att) {
                Ok(()) => {
                    if attempt > 0 {
                        *lock(&self.tally).del_retried.entry(f).or_default() += 1;
                    }
                    return;
                }
                Err(e) => self.del_failed(n, f, &e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.finding(format!("cycle {n} ({}): DEL never succeeded", f.name()));
    }

    fn del_failed(&self, n: usize, f: Fault, e: &CniError) {
        *lock(&self.tally).del_codes.entry(e.code).or_default() += 1;
        // Only "try again later" (no daemon to answer) is a DEL failure a runtime
        // should see; anything else means the DEL could not be done.
        if e.code != plexus_cni::error::code::TRY_AGAIN_LATER {
            self.finding(format!("cycle {n} ({}): DEL failed: {e}", f.name()));
        }
    }
}

/// An API server outage; it ends (the server back on its address) when dropped.
struct Outage<'a> {
    soak: &'a Soak,
    _one: std::sync::MutexGuard<'a, ()>,
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        let mut api = lock(&self.soak.api);
        let addr = api.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port may be in TIME_WAIT for a moment; std binds with SO_REUSEADDR.
        loop {
            match self
                .soak
                .node
                .world
                .host
                .run(|| std::net::TcpListener::bind(addr))
            {
                Ok(Ok(l)) => return api.serve_again(l),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("the API server cannot come back on {addr}: {other:?}"),
            }
        }
    }
}

/// The `plexus` process executing the ADD of container `cid`, found by its environment.
fn plugin_pid(cid: &str) -> Option<u64> {
    let want = format!("CNI_CONTAINERID={cid}");
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        if let Some(pid) = processes_with(&want)
            .into_iter()
            .find(|p| comm(*p).as_deref() == Some("plexus"))
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Processes whose environment holds `entry` (e.g. `CNI_CONTAINERID=x`), or starts with
/// it when it ends in `*`.
pub fn processes_with(entry: &str) -> Vec<u64> {
    let (prefix, exact) = match entry.strip_suffix('*') {
        Some(p) => (p, false),
        None => (entry, true),
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0).any(|v| {
                    if exact {
                        v == prefix.as_bytes()
                    } else {
                        v.starts_with(prefix.as_bytes())
                    }
                })
            })
        })
        .collect()
}

fn comm(pid: u64) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// An ADD's outcome as the cycle keeps it: its error's text when it failed.
fn outcome(r: plexus_cni::Result<plexus_cni::CniResult>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}
