//! The runtime side: executing a whole configuration list for ADD, DEL, CHECK,
//! STATUS and GC exactly as spec §3 says (request derivation, `prevResult`,
//! `runtimeConfig` from capabilities, reverse DEL, the libcni result cache).

use crate::args::CniArgs;
use crate::cache::{CacheEntry, ResultCache};
use crate::config::{NetworkConfigList, PluginConf};
use crate::error::{code, CniError, Result};
use crate::exec::{self, Exec, ExecRequest, Prestarted, ProcessExec, StartRequest};
use crate::result::CniResult;
use crate::version::Version;
use crate::{validate, version};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Default time a single plugin execution may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The parameters of one attachment (spec §3 "Attachment parameters").
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// Capability arguments; each plugin receives those it declares, as `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

/// A valid attachment for GC (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ValidAttachment {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// The CNI commands a runtime sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// STATUS.
    Status,
    /// GC.
    Gc,
}

impl Op {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Check => "CHECK",
            Op::Status => "STATUS",
            Op::Gc => "GC",
        }
    }
}

/// Executes configuration lists.
#[derive(Clone)]
pub struct Runtime {
    /// Directories searched for plugin binaries (`CNI_PATH`).
    pub paths: Vec<PathBuf>,
    /// How processes are run.
    pub exec: Arc<dyn Exec>,
    /// Where results are cached; `None` disables the cache.
    pub cache: Option<ResultCache>,
    /// Time limit of one plugin execution.
    pub timeout: Duration,
    /// `PATH` given to plugins (they run helpers such as iptables).
    pub path_env: String,
    /// In an ADD of a chain, start each plugin's process while the one before it works
    /// (see [`Runtime::prestart_add`]). Off by default, as libcni runs them.
    pub prestart_chained: bool,
    /// Plugins started ahead of their turn (see [`Runtime::prestart_add`]), shared by
    /// clones; dropped with the last clone, unused ones are killed.
    prestarted: Arc<Mutex<Vec<Ahead>>>,
}

/// A plugin process started ahead, waiting for its stdin.
struct Ahead {
    op: Op,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Box<dyn Prestarted>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("paths", &self.paths)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Runtime {
    /// A runtime running real processes found in `paths`, caching in `cache_dir`.
    pub fn new(paths: Vec<PathBuf>, cache_dir: Option<PathBuf>) -> Runtime {
        Runtime {
            paths,
            exec: Arc::new(ProcessExec),
            cache: cache_dir.map(ResultCache::new),
            timeout: DEFAULT_TIMEOUT,
            path_env: std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
            prestart_chained: false,
            prestarted: Default::default(),
        }
    }

    /// Starts the first plugin of `list` for an ADD of `att` now, ahead of its turn: the
    /// process starts (exec, loader, language runtime) while the caller does other work,
    /// then waits for its configuration on stdin, which it gets when
    /// [`Runtime::add_list`] reaches it. Nothing happens to the network before then: a
    /// plugin acts on the configuration it reads from stdin (CNI §2), and one that is
    /// never given it (the ADD failed earlier) is killed. Best effort: a plugin that
    /// cannot be started now is started in its turn, as usual.
    pub fn prestart_add(&self, list: &NetworkConfigList, att: &Attachment) {
        if let Some(p) = list.plugins.first() {
            self.prestart(Op::Add, p.plugin_type(), att);
        }
    }

    fn prestart(&self, op: Op, plugin_type: &str, att: &Attachment) {
        let Ok(binary) = exec::find_plugin(plugin_type, &self.paths) else {
            return;
        };
        let env = self.env(op, Some(att));
        let started = self.exec.start(&StartRequest {
            binary: &binary,
            args: vec![],
            env: env.clone(),
        });
        if let Ok(Some(child)) = started {
            lock(&self.prestarted).push(Ahead {
                op,
                binary,
                env,
                child,
            });
        }
    }

    /// The plugin process started ahead for exactly this execution, if any.
    fn take_prestarted(
        &self,
        op: Op,
        binary: &Path,
        env: &[(String, String)],
    ) -> Option<Box<dyn Prestarted>> {
        let mut ahead = lock(&self.prestarted);
        let i = ahead
            .iter()
            .position(|a| a.op == op && a.binary == binary && a.env == env)?;
        Some(ahead.remove(i).child)
    }

    /// Kills the plugins started ahead that were not used (an ADD that failed first).
    pub fn discard_prestarted(&self) {
        lock(&self.prestarted).clear();
    }

    fn cni_path(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn env(&self, op: Op, att: Option<&Attachment>) -> Vec<(String, String)> {
        let mut env = vec![
            ("CNI_COMMAND".to_string(), op.as_str().to_string()),
            ("CNI_PATH".to_string(), self.cni_path()),
            ("PATH".to_string(), self.path_env.clone()),
        ];
        if let Some(a) = att {
            env.push(("CNI_CONTAINERID".into(), a.container_id.clone()));
            env.push(("CNI_NETNS".into(), a.netns.clone().unwrap_or_default()));
            env.push(("CNI_IFNAME".into(), a.ifname.clone()));
            env.push(("CNI_ARGS".into(), a.args.to_env()));
        }
        env
    }

    /// Runs one plugin with an already derived request; returns its stdout.
    pub fn exec_plugin(
        &self,
        op: Op,
        plugin_type: &str,
        request: &[u8],
        att: Option<&Attachment>,
    ) -> Result<Vec<u8>> {
        let binary = exec::find_plugin(plugin_type, &self.paths)?;
        let env = self.env(op, att);
        tracing::debug!(
            plugin = plugin_type,
            command = op.as_str(),
            "executing plugin"
        );
        let out = match self.take_prestarted(op, &binary, &env) {
            Some(child) => child.finish(request, self.timeout)?,
            None => self.exec.run(&ExecRequest {
                args: vec![],
                binary: &binary,
                env,
                stdin: request,
                timeout: self.timeout,
            })?,
        };
        if !out.stderr.is_empty() {
            // Delegates' stderr is forwarded (spec §4), as log lines of ours.
            tracing::info!(plugin = plugin_type, stderr = %String::from_utf8_lossy(&out.stderr).trim_end(), "plugin stderr");
        }
        exec::interpret(&binary, out)
    }

    /// ADD: every plugin in order, each given the previous result; the final result is
    /// cached and returned in the list's version. The caller DELs after a failure.
    pub fn add_list(&self, list: &NetworkConfigList, att: &Attachment) -> Result<CniResult> {
        self.add_list_from(list, att, None)
    }

    /// ADD with a `prevResult` for the first plugin (a chain that continues another,
    /// as Multus's auxiliary chain continues after its `passthru` plugin).
    pub fn add_list_from(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        first_prev: Option<CniResult>,
    ) -> Result<CniResult> {
        check_attachment(att, true)?;
        let mut prev: Option<CniResult> = match first_prev {
            Some(p) => Some(p.convert_to(&list.cni_version)?),
            None => None,
        };
        for (i, plugin) in list.plugins.iter().enumerate() {
            // The next plugin of the chain starts while this one works.
            if let (true, Some(next)) = (self.prestart_chained, list.plugins.get(i + 1)) {
                self.prestart(Op::Add, next.plugin_type(), att);
            }
            let req = derive_request(plugin, list, Op::Add, prev.as_ref(), &att.capability_args)?;
            let out = self
                .exec_plugin(Op::Add, plugin.plugin_type(), &req, Some(att))
                .map_err(|e| ctx(e, list, plugin, Op::Add))?;
            let result = CniResult::from_json(&out)
                .and_then(|r| r.convert_to(&list.cni_version))
                .map_err(|e| ctx(e, list, plugin, Op::Add))?;
            prev = Some(result);
        }
        let result = prev.ok_or_else(|| {
            CniError::invalid_config(format!("network {:?} has no plugins", list.name))
        })?;
        if let Some(cache) = &self.cache {
            let mut entry =
                CacheEntry::new(&list.name, &att.container_id, &att.ifname, list_bytes(list));
            entry.netns = att.netns.clone().unwrap_or_default();
            entry.cni_args = att.args.0.clone();
            entry.capability_args = att.capability_args.clone();
            entry.result = Some(result.to_value());
            cache.save(&entry).map_err(|e| {
                e.context(format!("network {:?}: caching the ADD result", list.name))
            })?;
        }
        Ok(result)
    }

    /// The cached result of an attachment, converted to the list's version. A cache
    /// file that cannot be read is removed and treated as absent, as libcni does.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
    ) -> Result<Option<CniResult>> {
        let Some(cache) = &self.cache else {
            return Ok(None);
        };
        match cache.load(&list.name, &att.container_id, &att.ifname) {
            Ok(Some(CacheEntry {
                result: Some(v), ..
            })) => match CniResult::from_value(&v).and_then(|r| r.convert_to(&list.cni_version)) {
                Ok(r) => Ok(Some(r)),
                Err(e) => {
                    tracing::warn!(error = %e, network = %list.name, "unusable cached result removed");
                    cache.remove(&list.name, &att.container_id, &att.ifname)?;
                    Ok(None)
                }
            },
            Ok(_) => Ok(None),
            Err(e) if e.code == code::DECODING_FAILURE => {
                tracing::warn!(error = %e, network = %list.name, "corrupt cache file removed");
                cache.remove(&list.name, &att.container_id, &att.ifname)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// DEL: plugins in reverse order with the cached result as `prevResult` (0.4.0+);
    /// stops at the first error and keeps the cache so the DEL can be retried.
    pub fn del_list(&self, list: &NetworkConfigList, att: &Attachment) -> Result<()> {
        check_attachment(att, false)?;
        let prev = if version_at_least(&list.cni_version, "0.4.0") {
            self.cached_result(list, att)?
        } else {
            None
        };
        self.del_list_with(list, att, prev.as_ref())?;
        if let Some(cache) = &self.cache {
            cache.remove(&list.name, &att.container_id, &att.ifname)?;
        }
        Ok(())
    }

    /// DEL with an explicit `prevResult` and no cache access (the meta-plugin keeps its own state).
    pub fn del_list_with(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        prev: Option<&CniResult>,
    ) -> Result<()> {
        check_attachment(att, false)?;
        let prev = match prev {
            Some(p) if version_at_least(&list.cni_version, "0.4.0") => {
                p.convert_to(&list.cni_version).ok()
            }
            _ => None,
        };
        for plugin in list.plugins.iter().rev() {
            let req = derive_request(plugin, list, Op::Del, prev.as_ref(), &att.capability_args)?;
            self.exec_plugin(Op::Del, plugin.plugin_type(), &req, Some(att))
                .map_err(|e| ctx(e, list, plugin, Op::Del))?;
        }
        Ok(())
    }

    /// CHECK: needs 0.4.0+, honours `disableCheck`, uses the cached result.
    pub fn check_list(&self, list: &NetworkConfigList, att: &Attachment) -> Result<()> {
        check_attachment(att, true)?;
        if !version_at_least(&list.cni_version, "0.4.0") {
            return Err(CniError::incompatible_version(format!(
                "network {:?}: configuration version {:?} does not support the CHECK command",
                list.name, list.cni_version
            )));
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = self.cached_result(list, att)?.ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "network {:?}: no cached result for container {:?} interface {:?}",
                    list.name, att.container_id, att.ifname
                ),
            )
        })?;
        self.check_list_with(list, att, &prev)
    }

    /// CHECK with an explicit `prevResult`.
    pub fn check_list_with(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        prev: &CniResult,
    ) -> Result<()> {
        if list.disable_check {
            return Ok(());
        }
        let prev = prev.convert_to(&list.cni_version)?;
        for plugin in &list.plugins {
            let req = derive_request(plugin, list, Op::Check, Some(&prev), &att.capability_args)?;
            self.exec_plugin(Op::Check, plugin.plugin_type(), &req, Some(att))
                .map_err(|e| ctx(e, list, plugin, Op::Check))?;
        }
        Ok(())
    }

    /// STATUS: a no-op below 1.1.0; otherwise every plugin, the first error returned
    /// with its code (50/51).
    pub fn status_list(&self, list: &NetworkConfigList) -> Result<()> {
        if !version_at_least(&list.cni_version, "1.1.0") {
            return Ok(());
        }
        for plugin in &list.plugins {
            let req = derive_request(plugin, list, Op::Status, None, &Map::new())?;
            self.exec_plugin(Op::Status, plugin.plugin_type(), &req, None)
                .map_err(|e| ctx(e, list, plugin, Op::Status))?;
        }
        Ok(())
    }

    /// GC: DELs every cached attachment of the network that is not in `valid`, then
    /// (1.1.0+) sends GC with the valid list to every plugin, going on after errors;
    /// all errors are reported together. `disableGC` makes it a no-op.
    pub fn gc_list(&self, list: &NetworkConfigList, valid: &[ValidAttachment]) -> Result<()> {
        if list.disable_gc {
            return Ok(());
        }
        let mut errors = Vec::new();
        if let Some(cache) = &self.cache {
            for entry in cache.attachments(&list.name)? {
                if valid
                    .iter()
                    .any(|v| v.container_id == entry.container_id && v.ifname == entry.if_name)
                {
                    continue;
                }
                let att = Attachment {
                    container_id: entry.container_id.clone(),
                    netns: None,
                    ifname: entry.if_name.clone(),
                    args: CniArgs(entry.cni_args.clone()),
                    capability_args: entry.capability_args.clone(),
                };
                if let Err(e) = self.del_list(list, &att) {
                    errors.push(e);
                }
            }
        }
        if version_at_least(&list.cni_version, "1.1.0") {
            errors.extend(self.gc_plugins(list, valid));
        }
        CniError::join(errors)
    }

    /// Sends GC to every plugin of the list; returns the errors.
    pub fn gc_plugins(&self, list: &NetworkConfigList, valid: &[ValidAttachment]) -> Vec<CniError> {
        let mut errors = Vec::new();
        for plugin in &list.plugins {
            let mut req = match derive_object(plugin, list, Op::Gc, None, &Map::new()) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            // libcni sends both names of the key (it was renamed after 1.1.0 was tagged).
            let list_value = json!(valid);
            req.insert("cni.dev/valid-attachments".into(), list_value.clone());
            req.insert("cni.dev/attachments".into(), list_value);
            let bytes = Value::Object(req).to_string().into_bytes();
            if let Err(e) = self.exec_plugin(Op::Gc, plugin.plugin_type(), &bytes, None) {
                errors.push(ctx(e, list, plugin, Op::Gc));
            }
        }
        errors
    }

    /// VERSION of a plugin: the versions it supports.
    pub fn plugin_versions(&self, plugin_type: &str) -> Result<Vec<String>> {
        let req = json!({"cniVersion": version::CURRENT})
            .to_string()
            .into_bytes();
        let binary = exec::find_plugin(plugin_type, &self.paths)?;
        let env = vec![
            ("CNI_COMMAND".to_string(), "VERSION".to_string()),
            ("PATH".to_string(), self.path_env.clone()),
        ];
        let out = self.exec.run(&ExecRequest {
            args: vec![],
            binary: &binary,
            env,
            stdin: &req,
            timeout: self.timeout,
        })?;
        let stdout = exec::interpret(&binary, out)?;
        let v: Value = serde_json::from_slice(&stdout).map_err(|e| {
            CniError::decode(format!("plugin {plugin_type:?}: bad VERSION output: {e}"))
        })?;
        Ok(v.get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["0.1.0".into(), "0.2.0".into()]))
    }

    /// Checks that every plugin binary exists and supports the list's version (libcni `ValidateNetworkList`).
    pub fn validate_list(&self, list: &NetworkConfigList) -> Result<()> {
        for plugin in &list.plugins {
            let versions = self
                .plugin_versions(plugin.plugin_type())
                .map_err(|e| ctx(e, list, plugin, Op::Add))?;
            if !versions.iter().any(|v| v == &list.cni_version) {
                return Err(CniError::incompatible_version(format!(
                    "network {:?}: plugin {:?} does not support config version {:?} (it supports {})",
                    list.name, plugin.plugin_type(), list.cni_version, versions.join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn list_bytes(list: &NetworkConfigList) -> Vec<u8> {
    list.to_value().to_string().into_bytes()
}

fn version_at_least(v: &str, min: &str) -> bool {
    Version::parse(v).map(|v| v.at_least(min)).unwrap_or(false)
}

fn ctx(e: CniError, list: &NetworkConfigList, plugin: &PluginConf, op: Op) -> CniError {
    e.context(format!(
        "network {:?}: plugin {:?} failed on {}",
        list.name,
        plugin.plugin_type(),
        op.as_str()
    ))
}

fn check_attachment(att: &Attachment, needs_netns: bool) -> Result<()> {
    validate::container_id(&att.container_id)?;
    validate::env_ifname(&att.ifname)?;
    if needs_netns && att.netns.as_deref().unwrap_or_default().is_empty() {
        return Err(CniError::invalid_env("CNI_NETNS is required"));
    }
    Ok(())
}

/// The request object for one plugin (spec §3 "Deriving execution configuration"):
/// `cniVersion` and `name` injected, `runtimeConfig` = declared ∩ provided capabilities,
/// `prevResult` when given, `capabilities` and reserved `cni.dev/` keys removed.
pub fn derive_object(
    plugin: &PluginConf,
    list: &NetworkConfigList,
    op: Op,
    prev: Option<&CniResult>,
    capability_args: &Map<String, Value>,
) -> Result<Map<String, Value>> {
    let mut req = plugin.raw().clone();
    req.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    req.insert("name".into(), Value::String(list.name.clone()));
    let mut rc = Map::new();
    if matches!(op, Op::Add | Op::Del | Op::Check) {
        for cap in plugin.capabilities() {
            if let Some(v) = capability_args.get(cap) {
                rc.insert(cap.to_string(), v.clone());
            }
        }
    }
    req.shift_remove("capabilities");
    req.shift_remove("runtimeConfig");
    req.shift_remove("prevResult");
    req.retain(|k, _| !k.starts_with("cni.dev/"));
    if !rc.is_empty() {
        req.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(p) = prev {
        req.insert(
            "prevResult".into(),
            p.convert_to(&list.cni_version)?.to_value(),
        );
    }
    Ok(req)
}

/// [`derive_object`] as bytes.
pub fn derive_request(
    plugin: &PluginConf,
    list: &NetworkConfigList,
    op: Op,
    prev: Option<&CniResult>,
    capability_args: &Map<String, Value>,
) -> Result<Vec<u8>> {
    Ok(
        Value::Object(derive_object(plugin, list, op, prev, capability_args)?)
            .to_string()
            .into_bytes(),
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_derivation_follows_spec() {
        let list = NetworkConfigList::from_value(json!({
            "cniVersion": "1.1.0", "name": "n",
            "plugins": [{"type": "p", "keep": {"x": 1}, "capabilities": {"portMappings": true, "mac": true, "ips": false},
                         "runtimeConfig": {"stale": 1}, "cni.dev/evil": 1}]
        }))
        .unwrap();
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        caps.insert("ips".into(), json!(["192.0.2.4/24"]));
        caps.insert("bandwidth".into(), json!({}));
        let prev = CniResult::from_json(
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"192.0.2.4/24"}]}"#,
        )
        .unwrap();
        let req = derive_object(&list.plugins[0], &list, Op::Add, Some(&prev), &caps).unwrap();
        assert_eq!(
            Value::Object(req),
            json!({"type": "p", "keep": {"x": 1}, "cniVersion": "1.1.0", "name": "n",
                   "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
                   "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "192.0.2.4/24"}]}})
        );
        let req = derive_object(&list.plugins[0], &list, Op::Status, None, &caps).unwrap();
        assert!(!req.contains_key("runtimeConfig") && !req.contains_key("prevResult"));
    }

    #[test]
    fn attachment_checks() {
        let rt = Runtime::new(vec![], None);
        let list = NetworkConfigList::from_value(
            json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"p"}]}),
        )
        .unwrap();
        let att = Attachment {
            container_id: "../x".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(rt.add_list(&list, &att).unwrap_err().code, 4);
        let att = Attachment {
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            ..Default::default()
        };
        assert!(rt
            .add_list(&list, &att)
            .unwrap_err()
            .msg
            .contains("CNI_NETNS"));
        let att = Attachment {
            container_id: "c".into(),
            netns: Some("/x".into()),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let e = rt.add_list(&list, &att).unwrap_err();
        assert!(e.msg.contains("failed to find plugin \"p\""), "{}", e.msg);
    }
}
