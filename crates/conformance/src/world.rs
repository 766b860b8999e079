//! The suite's private machine: a "host" network namespace where the candidate and its
//! delegates run (bridges and host ends of veths go there, never on the real host), a
//! pod namespace per test, a scratch directory, and readers of kernel state through
//! `ip -j`. Everything is removed on drop.

use anyhow::{bail, Context, Result};
use plexus_netns::NamedNetNs;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across parallel runs and processes, at most 12 bytes (it fits an
/// interface name with room for a suffix), lowercase hex after a 3-letter prefix (a
/// DNS-1123 label).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().take(3).collect();
    format!("{p}{:05x}{:04x}", std::process::id() & 0xfffff, n & 0xffff)
}

/// Runs `ip` with `args` (in namespace `ns` when given); its stdout.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    if let Some(n) = ns {
        cmd.args(["-n", n]);
    }
    let out = cmd.args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} in {ns:?}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_json(ns: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ip(Some(ns), &full)?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default())
}

/// Names of the links in `ns`.
pub fn links(ns: &str) -> Result<Vec<String>> {
    Ok(ip_json(ns, &["link", "show"])?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

/// One link's `ip -j addr show` object, if it exists.
pub fn link(ns: &str, name: &str) -> Result<Option<Value>> {
    Ok(ip_json(ns, &["addr", "show"])?
        .into_iter()
        .find(|l| l["ifname"] == name))
}

/// `address/prefix` strings of a link (link-local ones left out).
pub fn addresses(ns: &str, name: &str) -> Result<Vec<String>> {
    Ok(link(ns, name)?
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect())
}

/// Routes of a family (`-4` or `-6`) as `ip -j route show` objects.
pub fn routes(ns: &str, family: &str) -> Result<Vec<Value>> {
    ip_json(ns, &[family, "route", "show"])
}

/// Files below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The IP reservations host-local holds in its data directory `dir`: files named by
/// an address (its `last_reserved_ip` and lock files are not reservations).
pub fn ip_reservations(dir: &Path) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect()
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `<tmp>/<name>`.
    pub fn new(name: &str) -> Result<ScratchDir> {
        let p = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(ScratchDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A sub-directory, created.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A named network namespace with its loopback up.
pub fn namespace(prefix: &str) -> Result<NamedNetNs> {
    let ns = NamedNetNs::create(&unique(prefix))
        .context("creating a network namespace (the suite must run as root)")?;
    ip(Some(ns.name()), &["link", "set", "lo", "up"])?;
    Ok(ns)
}

/// A veth pair in `ns` (the current namespace when `None`), both ends up; the first
/// end's name (a macvlan master).
pub fn veth_master(ns: Option<&str>) -> Result<String> {
    let a = unique("mst");
    let b = format!("{a}p");
    ip(ns, &["link", "add", &a, "type", "veth", "peer", "name", &b])?;
    ip(ns, &["link", "set", &a, "up"])?;
    ip(ns, &["link", "set", &b, "up"])?;
    Ok(a)
}

/// Where the candidate and its delegates run: a private namespace of the suite's (with
/// the built-in test API server on its loopback), or the current one (a real cluster
/// is reached from there).
pub enum Host {
    /// The suite's own namespace, removed with everything in it.
    Private(NamedNetNs),
    /// A namespace someone else owns, by its path (a harness's).
    At(std::path::PathBuf),
    /// The namespace the suite runs in.
    Current,
}

impl Host {
    /// Its name for `ip -n`; `None` for the current namespace.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Private(ns) => Some(ns.name()),
            Host::At(p) => p.file_name().and_then(|n| n.to_str()),
            Host::Current => None,
        }
    }

    /// Runs `f` in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        match self {
            Host::Private(ns) => ns.run(f).context("entering the host namespace"),
            Host::At(p) => plexus_netns::NetNs::open(p)?
                .run(f)
                .context("entering the host namespace"),
            Host::Current => Ok(f()),
        }
    }

    /// The namespace, opened, for work done from other threads (`None`: the current one).
    pub fn open(&self) -> Result<Option<plexus_netns::NetNs>> {
        match self {
            Host::Private(ns) => Ok(Some(ns.open()?)),
            Host::At(p) => Ok(Some(plexus_netns::NetNs::open(p)?)),
            Host::Current => Ok(None),
        }
    }
}

/// The reference plugins' directory: Debian's containernetworking-plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
