//! Helpers for tests that run as root in real network namespaces: unique names,
//! a throw-away "host" namespace per test, and readers of kernel state via `ip -j`.

use plexus_netns::NamedNetNs;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across parallel tests and test processes (65,536 per process before
/// they repeat: a soak makes one namespace per cycle), at most 12 bytes, so it
/// fits an interface name with room for a suffix.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().take(3).collect();
    format!("{p}{:05x}{:04x}", std::process::id() & 0xfffff, n & 0xffff)
}

/// Runs `ip` with `args` (in namespace `ns` when given) and returns stdout; panics on failure.
pub fn ip(ns: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    if let Some(n) = ns {
        cmd.args(["-n", n]);
    }
    let out = cmd.args(args).output().expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?} in {ns:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(ns: &str, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ip(Some(ns), &full);
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Value>(&out)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Names of the links in `ns`.
pub fn links(ns: &str) -> Vec<String> {
    ip_json(ns, &["link", "show"])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Names and kinds (`veth`, `bridge`, `macvlan`...; empty for none) of the links in `ns`.
pub fn link_kinds(ns: &str) -> Vec<(String, String)> {
    ip_json(ns, &["-d", "link", "show"])
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or_default();
            Some((name, kind.to_string()))
        })
        .collect()
}

/// One link's `ip -j addr show` object, if it exists.
pub fn link(ns: &str, name: &str) -> Option<Value> {
    ip_json(ns, &["addr", "show"])
        .into_iter()
        .find(|l| l["ifname"] == name)
}

/// `address/prefix` strings of a link.
pub fn addresses(ns: &str, name: &str) -> Vec<String> {
    link(ns, name)
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
        .collect()
}

/// Routes of a family (`-4` or `-6`) as `ip -j route show` objects.
pub fn routes(ns: &str, family: &str) -> Vec<Value> {
    ip_json(ns, &[family, "route", "show"])
}

/// Pings `addr` from `ns` (`count` packets, 1 s deadline each); true when answered.
pub fn ping(ns: &str, addr: &str, count: u32) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-i",
            "0.2",
            addr,
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A test's private world: a "host" namespace the plugins run in (bridges and host
/// ends of veths go there, never on the real host) and any number of "containers".
/// Everything is removed on drop, so a failing test leaves nothing behind.
pub struct World {
    /// The host namespace.
    pub host: NamedNetNs,
    /// Container namespaces.
    pub containers: Vec<NamedNetNs>,
    /// A directory for caches and IPAM state.
    pub dir: tempfile_dir::TempDir,
}

/// A small temporary directory owner (std only), removed on drop.
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates `/tmp/<name>`.
        pub fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&p).expect("creating a temporary directory");
            TempDir(p)
        }
        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl World {
    /// A new world with a host namespace (loopback up) and `n` container namespaces.
    pub fn new(n: usize) -> World {
        let host = NamedNetNs::create(&unique("hst")).expect("creating namespaces needs root");
        ip(Some(host.name()), &["link", "set", "lo", "up"]);
        let containers = (0..n)
            .map(|_| {
                let c = NamedNetNs::create(&unique("ctr")).expect("creating a namespace");
                ip(Some(c.name()), &["link", "set", "lo", "up"]);
                c
            })
            .collect();
        let dir = tempfile_dir::TempDir::new(&unique("plexus-e2e-"));
        World {
            host,
            containers,
            dir,
        }
    }

    /// The host namespace's name.
    pub fn host(&self) -> &str {
        self.host.name()
    }

    /// Container `i`'s name.
    pub fn ctr(&self, i: usize) -> &str {
        self.containers[i].name()
    }

    /// Container `i`'s path, for `CNI_NETNS`.
    pub fn ctr_path(&self, i: usize) -> String {
        self.containers[i].path().display().to_string()
    }

    /// A sub-directory of the test's directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("creating a test directory");
        p
    }

    /// Creates a veth pair in the host namespace, both ends up; returns the first end's name.
    pub fn veth_master(&self) -> String {
        let a = unique("mst");
        let b = format!("{a}p");
        ip(
            Some(self.host()),
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        );
        ip(Some(self.host()), &["link", "set", &a, "up"]);
        ip(Some(self.host()), &["link", "set", &b, "up"]);
        a
    }
}

/// Files below `dir`, recursively (to show that nothing was left behind).
pub use plexus_conformance::world::files_below;

/// The calls the recording test plugin logged in `dir` (`calls.jsonl`), in order; none
/// when it was never called.
pub fn recorded_calls(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line from the test plugin"))
        .collect()
}

/// Waits up to `max` for the recording test plugin's first `command` call in `dir`.
pub fn wait_for_call(dir: &Path, command: &str, max: std::time::Duration) -> Value {
    let deadline = std::time::Instant::now() + max;
    loop {
        if let Some(c) = recorded_calls(dir)
            .into_iter()
            .find(|c| c["env"]["CNI_COMMAND"] == command)
        {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the test plugin got no {command} within {max:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// True while `pid` is a process that is not a zombie.
pub fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// Waits up to `max` for `pid` to be gone; true when it is.
pub fn gone_within(pid: u64, max: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + max;
    while running(pid) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Sends SIGKILL to `pid` (with the `kill` command: this crate holds no unsafe code).
pub fn kill_9(pid: u64) {
    assert!(try_kill_9(pid), "kill -9 {pid} failed");
}

/// Sends SIGKILL to `pid`; false when it failed (the process had already exited).
pub fn try_kill_9(pid: u64) -> bool {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running kill")
        .success()
}

/// The recording test plugin (plexus-conformance's `plexus-test-plugin`), built next to
/// the other binaries of the workspace.
pub fn test_plugin() -> PathBuf {
    meta::plexus_bin().with_file_name("plexus-test-plugin")
}

/// The directory holding the test plugin binary and the reference plugins, for `CNI_PATH`.
pub fn plugin_paths(test_plugin: &Path) -> Vec<PathBuf> {
    let own = test_plugin
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    vec![PathBuf::from(REFERENCE_PLUGINS), own]
}

pub mod meta;
