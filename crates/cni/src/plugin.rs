//! The plugin side: read `CNI_*` and stdin, validate them per command, dispatch to a
//! [`Plugin`], and produce exactly one JSON document for stdout with the exit status.

use crate::args::CniArgs;
use crate::error::{CniError, Result};
use crate::result::CniResult;
use crate::{validate, version};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// The CNI commands a plugin receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
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
    /// VERSION.
    Version,
}

impl Command {
    fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            "" => return Err(CniError::invalid_env("CNI_COMMAND is not set")),
            other => {
                return Err(CniError::invalid_env(format!(
                    "CNI_COMMAND {other:?} is not a CNI command"
                )))
            }
        })
    }

    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    pub container_id: String,
    /// `CNI_NETNS`, if set.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for STATUS and GC).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
    /// The configuration as read from stdin.
    pub stdin: Vec<u8>,
    /// The configuration, parsed.
    pub config: Value,
    /// The configuration's `cniVersion`.
    pub cni_version: String,
    /// Every environment variable the plugin was given.
    pub env: HashMap<String, String>,
}

impl Request {
    /// `prevResult`, parsed, if the configuration has one.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match self.config.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v)
                .map(Some)
                .map_err(|e| e.context("prevResult")),
        }
    }
}

/// What a plugin implements; STATUS and GC succeed by default.
pub trait Plugin {
    /// Spec versions the plugin accepts in configurations.
    fn supported_versions(&self) -> &[&'static str] {
        version::SUPPORTED
    }
    /// ADD.
    fn add(&self, req: &Request) -> Result<CniResult>;
    /// DEL: must succeed when the attachment is already gone.
    fn del(&self, req: &Request) -> Result<()>;
    /// CHECK.
    fn check(&self, req: &Request) -> Result<()>;
    /// STATUS.
    fn status(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
    /// GC.
    fn gc(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
}

/// What the process should print and exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The one JSON document for stdout (empty for a successful DEL/CHECK/STATUS/GC).
    pub stdout: Vec<u8>,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

fn var<'a>(env: &'a HashMap<String, String>, k: &str) -> &'a str {
    env.get(k).map(String::as_str).unwrap_or_default()
}

/// Runs `plugin` for the given environment and stdin.
pub fn dispatch(plugin: &dyn Plugin, env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    let mut version_for_errors = version::CURRENT.to_string();
    match dispatch_inner(plugin, env, stdin, &mut version_for_errors) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(&version_for_errors),
            exit_code: 1,
        },
    }
}

fn dispatch_inner(
    plugin: &dyn Plugin,
    env: &HashMap<String, String>,
    stdin: &[u8],
    ver: &mut String,
) -> Result<Vec<u8>> {
    let command = Command::parse(var(env, "CNI_COMMAND"))?;
    if command == Command::Version {
        return Ok(version_output(plugin, stdin));
    }
    let config: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::decode(format!(
            "network configuration on stdin is not valid JSON: {e}"
        ))
    })?;
    if !config.is_object() {
        return Err(CniError::decode(
            "network configuration on stdin is not a JSON object",
        ));
    }
    let cni_version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !plugin.supported_versions().contains(&cni_version.as_str()) {
        return Err(CniError::incompatible_version(format!(
            "cniVersion {cni_version:?} is not supported; supported: {}",
            plugin.supported_versions().join(", ")
        )));
    }
    *ver = cni_version.clone();
    let req = build_request(command, env, stdin, config, cni_version)?;
    match command {
        Command::Add => Ok(plugin.add(&req)?.convert_to(&req.cni_version)?.to_json()),
        Command::Del => plugin.del(&req).map(|_| Vec::new()),
        Command::Check => plugin.check(&req).map(|_| Vec::new()),
        Command::Status => plugin.status(&req).map(|_| Vec::new()),
        Command::Gc => plugin.gc(&req).map(|_| Vec::new()),
        Command::Version => unreachable!("handled above"),
    }
}

fn build_request(
    command: Command,
    env: &HashMap<String, String>,
    stdin: &[u8],
    config: Value,
    cni_version: String,
) -> Result<Request> {
    let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = var(env, "CNI_CONTAINERID").to_string();
    let ifname = var(env, "CNI_IFNAME").to_string();
    let netns = var(env, "CNI_NETNS");
    if attachment {
        if container_id.is_empty() {
            return Err(CniError::invalid_env("CNI_CONTAINERID is required"));
        }
        validate::container_id(&container_id)?;
        if ifname.is_empty() {
            return Err(CniError::invalid_env("CNI_IFNAME is required"));
        }
        validate::env_ifname(&ifname)?;
        if command != Command::Del && netns.is_empty() {
            return Err(CniError::invalid_env("CNI_NETNS is required"));
        }
    }
    Ok(Request {
        command,
        container_id,
        netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
        ifname,
        args: CniArgs::parse(var(env, "CNI_ARGS"))?,
        path: std::env::split_paths(var(env, "CNI_PATH"))
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        stdin: stdin.to_vec(),
        config,
        cni_version,
        env: env.clone(),
    })
}

fn version_output(plugin: &dyn Plugin, stdin: &[u8]) -> Vec<u8> {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| version::CURRENT.to_string());
    json!({"cniVersion": asked, "supportedVersions": plugin.supported_versions()})
        .to_string()
        .into_bytes()
}

/// The `main` of a plugin binary: environment and stdin in, one document out, exit.
pub fn run_main(plugin: &dyn Plugin) -> ! {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, &env, &stdin),
        Err(e) => Outcome {
            stdout: CniError::io(format!("reading stdin: {e}")).to_json(version::CURRENT),
            exit_code: 1,
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, req: &Request) -> Result<CniResult> {
            CniResult::from_json(format!(r#"{{"cniVersion":"1.1.0","interfaces":[{{"name":"{}","sandbox":"x"}}],"ips":[{{"interface":0,"address":"192.0.2.9/24"}}]}}"#, req.ifname).as_bytes())
        }
        fn del(&self, _req: &Request) -> Result<()> {
            Ok(())
        }
        fn check(&self, _req: &Request) -> Result<()> {
            Err(CniError::new(107, "broken"))
        }
        fn status(&self, _req: &Request) -> Result<()> {
            Err(CniError::new(50, "not ready"))
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn out_json(o: &Outcome) -> Value {
        serde_json::from_slice(&o.stdout).unwrap()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_converts_to_config_version() {
        let o = dispatch(
            &Echo,
            &env(ADD),
            br#"{"cniVersion":"0.2.0","name":"n","type":"echo"}"#,
        );
        assert_eq!(o.exit_code, 0);
        assert_eq!(
            out_json(&o),
            json!({"cniVersion":"0.2.0","ip4":{"ip":"192.0.2.9/24"}})
        );
    }

    #[test]
    fn version_command() {
        let o = dispatch(
            &Echo,
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(out_json(&o)["cniVersion"], "0.4.0");
        assert_eq!(
            out_json(&o)["supportedVersions"].as_array().unwrap().len(),
            7
        );
    }

    #[test]
    fn errors_have_codes_and_version() {
        let cfg = br#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [u8], u32, &'a str);
        let cases: Vec<Case> = vec![
            (vec![], cfg, 4, "CNI_COMMAND"),
            (vec![("CNI_COMMAND", "FOO")], cfg, 4, "FOO"),
            (ADD.to_vec(), b"{", 6, "not valid JSON"),
            (
                ADD.to_vec(),
                br#"{"cniVersion":"9.0.0"}"#,
                1,
                "not supported",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                ],
                cfg,
                4,
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "../c"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                cfg,
                4,
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "a/b"),
                ],
                cfg,
                4,
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "e"),
                ],
                cfg,
                107,
                "broken",
            ),
            (vec![("CNI_COMMAND", "STATUS")], cfg, 50, "not ready"),
        ];
        for (e, stdin, code, needle) in cases {
            let o = dispatch(&Echo, &env(&e), stdin);
            assert_eq!(o.exit_code, 1, "{e:?}");
            let v = out_json(&o);
            assert_eq!(v["code"], code, "{e:?}: {v}");
            assert!(v["msg"].as_str().unwrap().contains(needle), "{e:?}: {v}");
            assert!(v["cniVersion"].is_string());
        }
    }

    #[test]
    fn del_without_netns_prints_nothing() {
        let o = dispatch(
            &Echo,
            &env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ]),
            br#"{"cniVersion":"1.1.0","name":"n","type":"echo"}"#,
        );
        assert_eq!(
            o,
            Outcome {
                stdout: vec![],
                exit_code: 0
            }
        );
    }
}
