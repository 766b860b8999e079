//! The meta-plugin under test, described by a file, so that any implementation runs
//! the same tests:
//!
//! ```json
//! {
//!   "name": "Multus (thin)",
//!   "path": ["/opt/cni/bin"],
//!   "plugin": {"type": "multus", "kubeconfig": "@KUBECONFIG@", "cniDir": "@STATEDIR@",
//!              "binDir": "@BINDIR@", "clusterNetwork": "@CLUSTER@"},
//!   "daemon": {"command": ["multus-daemon", "-config", "@RUNDIR@/daemon.json"],
//!              "files": {"daemon.json": {...}}, "readySocket": "@RUNDIR@/multus.sock"}
//! }
//! ```
//!
//! - `plugin`: the plugin object of the node's conflist, as the runtime reads it;
//! - `path`: where its binary is (searched first, as `CNI_PATH`); relative paths are
//!   relative to the file, `@EXEDIR@` is the directory of the suite's own binary;
//! - `daemon` (thick implementations): a command started once in the suite's host
//!   namespace before the tests, with `files` written to the run directory first, ready
//!   once `readySocket` exists, stopped at the end;
//! - `cniVersion`: of the conflist (default `1.1.0`).
//!
//! Placeholders, in every string: `@KUBECONFIG@` (the API), `@STATEDIR@` (where the
//! candidate keeps its state: what it leaves there after a DEL is reported),
//! `@RUNDIR@` (sockets, logs, daemon files: not checked), `@CLUSTER@` (the cluster
//! network's conflist), `@BINDIR@` (the delegates: the reference plugins and the
//! suite's recording plugin), `@NODE@` (the node's name), `@EXEDIR@`; with the built-in
//! test API server, also what in-cluster clients read: `@SERVICEACCOUNT@` (a directory
//! with `token`, `ca.crt` and `namespace`), `@APIHOST@` and `@APIPORT@`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CandidateFile {
    /// Its name in reports.
    pub name: String,
    /// The plugin object of the conflist.
    pub plugin: Map<String, Value>,
    /// Where its binary is.
    #[serde(default)]
    pub path: Vec<String>,
    /// A daemon to start first.
    #[serde(default)]
    pub daemon: Option<DaemonSpec>,
    /// The conflist's `cniVersion`.
    #[serde(default = "d_version")]
    pub cni_version: String,
}

fn d_version() -> String {
    "1.1.0".into()
}

/// A long-running part of the candidate.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Files written to the run directory before it starts (JSON values; strings are
    /// written as they are).
    #[serde(default)]
    pub files: BTreeMap<String, Value>,
    /// Ready once this path exists.
    #[serde(default)]
    pub ready_socket: Option<String>,
    /// How long to wait for it.
    #[serde(default = "d_ready")]
    pub ready_timeout_seconds: u64,
}

fn d_ready() -> u64 {
    30
}

impl DaemonSpec {
    /// The spec with `p` applied to its command, files and socket.
    pub fn resolve(&self, p: &Placeholders) -> DaemonSpec {
        DaemonSpec {
            command: self.command.iter().map(|c| p.apply(c)).collect(),
            files: self
                .files
                .iter()
                .map(|(k, v)| (k.clone(), p.apply_value(v)))
                .collect(),
            ready_socket: self.ready_socket.as_ref().map(|s| p.apply(s)),
            ready_timeout_seconds: self.ready_timeout_seconds,
        }
    }
}

/// The values of the placeholders.
#[derive(Debug, Clone, Default)]
pub struct Placeholders {
    /// `@KUBECONFIG@`.
    pub kubeconfig: PathBuf,
    /// `@STATEDIR@`.
    pub state_dir: PathBuf,
    /// `@RUNDIR@`.
    pub run_dir: PathBuf,
    /// `@CLUSTER@`.
    pub cluster: PathBuf,
    /// `@BINDIR@`.
    pub bin_dir: PathBuf,
    /// `@NODE@`.
    pub node: String,
    /// `@EXEDIR@`.
    pub exe_dir: PathBuf,
    /// `@SERVICEACCOUNT@`.
    pub service_account: PathBuf,
    /// `@APIHOST@`.
    pub api_host: String,
    /// `@APIPORT@`.
    pub api_port: String,
}

impl Placeholders {
    /// `s` with every placeholder replaced.
    pub fn apply(&self, s: &str) -> String {
        s.replace("@KUBECONFIG@", &self.kubeconfig.display().to_string())
            .replace("@STATEDIR@", &self.state_dir.display().to_string())
            .replace("@RUNDIR@", &self.run_dir.display().to_string())
            .replace("@CLUSTER@", &self.cluster.display().to_string())
            .replace("@BINDIR@", &self.bin_dir.display().to_string())
            .replace("@NODE@", &self.node)
            .replace("@EXEDIR@", &self.exe_dir.display().to_string())
            .replace(
                "@SERVICEACCOUNT@",
                &self.service_account.display().to_string(),
            )
            .replace("@APIHOST@", &self.api_host)
            .replace("@APIPORT@", &self.api_port)
    }

    /// `v` with every placeholder replaced in its strings.
    pub fn apply_value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.apply(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.apply_value(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.apply_value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// A candidate ready to run: its plugin object and paths resolved.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its name.
    pub name: String,
    /// The plugin object, placeholders applied.
    pub plugin: Map<String, Value>,
    /// Its `type`.
    pub plugin_type: String,
    /// Where its binary is.
    pub path: Vec<PathBuf>,
    /// The conflist's version.
    pub cni_version: String,
    /// The daemon, placeholders applied.
    pub daemon: Option<DaemonSpec>,
}

impl CandidateFile {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<CandidateFile> {
        let bytes =
            std::fs::read(path).with_context(|| format!("candidate file {}", path.display()))?;
        let f: CandidateFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("candidate file {}", path.display()))?;
        if f.plugin
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            bail!(
                "candidate file {}: \"plugin\" has no \"type\"",
                path.display()
            );
        }
        if let Some(d) = &f.daemon {
            if d.command.is_empty() {
                bail!(
                    "candidate file {}: \"daemon.command\" is empty",
                    path.display()
                );
            }
            for name in d.files.keys() {
                if name.is_empty() || name.contains('/') || name.starts_with('.') {
                    bail!(
                        "candidate file {}: \"daemon.files\" key {name:?} must be a plain file name",
                        path.display()
                    );
                }
            }
        }
        Ok(f)
    }

    /// The candidate with `p` applied; relative paths resolved against `base`.
    pub fn resolve(&self, p: &Placeholders, base: &Path) -> Candidate {
        let plugin = match p.apply_value(&Value::Object(self.plugin.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let daemon = self.daemon.as_ref().map(|d| d.resolve(p));
        Candidate {
            name: self.name.clone(),
            plugin_type: plugin
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            plugin,
            path: self
                .path
                .iter()
                .map(|s| {
                    let s = PathBuf::from(p.apply(s));
                    if s.is_absolute() {
                        s
                    } else {
                        base.join(s)
                    }
                })
                .collect(),
            cni_version: self.cni_version.clone(),
            daemon,
        }
    }
}

/// A running daemon, killed (with its process group) when dropped.
pub struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    /// Writes its files and starts it in `host` (the suite's host namespace); waits
    /// for its socket.
    pub fn start(spec: &DaemonSpec, run_dir: &Path, host: &crate::world::Host) -> Result<Daemon> {
        for (name, v) in &spec.files {
            let body = match v {
                Value::String(s) => s.clone().into_bytes(),
                other => serde_json::to_vec_pretty(other)?,
            };
            std::fs::write(run_dir.join(name), body)
                .with_context(|| format!("daemon file {name}"))?;
        }
        let log = run_dir.join("daemon.log");
        let stderr = std::fs::File::create(&log).context("daemon log")?;
        let stdout = stderr.try_clone().context("daemon log")?;
        let child = host
            .run(|| {
                std::process::Command::new(&spec.command[0])
                    .args(&spec.command[1..])
                    .stdout(stdout)
                    .stderr(stderr)
                    .spawn()
            })?
            .with_context(|| format!("starting {:?}", spec.command[0]))?;
        let mut d = Daemon { child, log };
        if let Some(sock) = &spec.ready_socket {
            let deadline = Instant::now() + Duration::from_secs(spec.ready_timeout_seconds);
            while !Path::new(sock).exists() {
                if let Ok(Some(st)) = d.child.try_wait() {
                    bail!("the daemon exited ({st}): {}", d.log_tail());
                }
                if Instant::now() > deadline {
                    bail!(
                        "the daemon's socket {sock} did not appear within {}s: {}",
                        spec.ready_timeout_seconds,
                        d.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(d)
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = s.len().saturating_sub(2000);
        s.get(start..).unwrap_or_default().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let f = dir.join("c.json");
        std::fs::write(&f, body).unwrap_or_default();
        f
    }

    #[test]
    fn placeholders_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let f = write(
            dir.path(),
            r#"{"name": "x", "path": ["bin", "@EXEDIR@"],
            "plugin": {"type": "x", "kubeconfig": "@KUBECONFIG@", "l": ["@NODE@-@STATEDIR@"]},
            "daemon": {"command": ["@EXEDIR@/d", "@RUNDIR@/c"], "files": {"c": {"k": "@CLUSTER@"}}}}"#,
        );
        let c = CandidateFile::load(&f).unwrap_or_else(|e| panic!("{e}"));
        let p = Placeholders {
            kubeconfig: "/k".into(),
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            cluster: "/c.conflist".into(),
            bin_dir: "/b".into(),
            node: "n".into(),
            exe_dir: "/e".into(),
            ..Default::default()
        };
        let r = c.resolve(&p, Path::new("/base"));
        assert_eq!(r.plugin["kubeconfig"], "/k");
        assert_eq!(r.plugin["l"][0], "n-/s");
        assert_eq!(r.path, [PathBuf::from("/base/bin"), PathBuf::from("/e")]);
        assert_eq!(r.cni_version, "1.1.0");
        let d = r.daemon.unwrap_or_else(|| panic!("daemon"));
        assert_eq!(d.command, ["/e/d", "/r/c"]);
        assert_eq!(d.files["c"]["k"], "/c.conflist");
    }

    #[test]
    fn bad_files_name_the_field() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (body, want) in [
            (r#"{"name": "x", "plugin": {}}"#, "\"type\""),
            (
                r#"{"name": "x", "plugin": {"type": "x"}, "oops": 1}"#,
                "oops",
            ),
            (
                r#"{"name": "x", "plugin": {"type": "x"}, "daemon": {"command": []}}"#,
                "daemon.command",
            ),
            (
                r#"{"name": "x", "plugin": {"type": "x"}, "daemon": {"command": ["d"], "files": {"../x": 1}}}"#,
                "../x",
            ),
            ("not json", "candidate file"),
        ] {
            let e = CandidateFile::load(&write(dir.path(), body))
                .err()
                .unwrap_or_else(|| panic!("{body} loaded"));
            assert!(format!("{e:#}").contains(want), "{body}: {e:#}");
        }
    }
}
