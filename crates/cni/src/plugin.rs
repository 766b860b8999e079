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

/// A plugin's answer before it is printed.
#[derive(Debug, Clone)]
pub enum Reply {
    /// ADD's result, in the configuration's `cniVersion`.
    Result(Box<CniResult>),
    /// DEL, CHECK, STATUS or GC succeeded.
    Done,
    /// VERSION's document.
    Version(Vec<u8>),
}

/// A plugin's answer and the version its error, if any, is printed in.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The reply, or the error.
    pub reply: Result<Reply>,
    /// The configuration's `cniVersion` once it was read and supported, else the
    /// current one.
    pub cni_version: String,
}

impl Answer {
    /// What the process prints and exits with.
    pub fn into_outcome(self) -> Outcome {
        match self.reply {
            Ok(Reply::Result(r)) => Outcome {
                stdout: r.to_json(),
                exit_code: 0,
            },
            Ok(Reply::Done) => Outcome {
                stdout: Vec::new(),
                exit_code: 0,
            },
            Ok(Reply::Version(v)) => Outcome {
                stdout: v,
                exit_code: 0,
            },
            Err(e) => Outcome {
                stdout: e.to_json(&self.cni_version),
                exit_code: 1,
            },
        }
    }
}

/// Runs `plugin` for the given environment and stdin.
pub fn dispatch(plugin: &dyn Plugin, env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    answer(plugin, env, stdin).into_outcome()
}

/// [`dispatch`], the answer kept typed (the daemon sends it on without printing it).
///
/// A panic of the plugin becomes an error answer (code 999, naming the panic), so the
/// runtime always reads one JSON document.
pub fn answer(plugin: &dyn Plugin, env: &HashMap<String, String>, stdin: &[u8]) -> Answer {
    let mut cni_version = version::CURRENT.to_string();
    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch_inner(plugin, env, stdin, &mut cni_version)
    }))
    .unwrap_or_else(|p| {
        Err(CniError::internal(format!(
            "plugin panicked: {}",
            panic_message(p.as_ref())
        )))
    });
    Answer { reply, cni_version }
}

/// The text of a panic's payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

fn dispatch_inner(
    plugin: &dyn Plugin,
    env: &HashMap<String, String>,
    stdin: &[u8],
    ver: &mut String,
) -> Result<Reply> {
    let command = Command::parse(var(env, "CNI_COMMAND"))?;
    if command == Command::Version {
        return Ok(Reply::Version(version_output(plugin, stdin)));
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
        Command::Add => Ok(Reply::Result(Box::new(
            plugin.add(&req)?.convert_to(&req.cni_version)?,
        ))),
        Command::Del => plugin.del(&req).map(|_| Reply::Done),
        Command::Check => plugin.check(&req).map(|_| Reply::Done),
        Command::Status => plugin.status(&req).map(|_| Reply::Done),
        Command::Gc => plugin.gc(&req).map(|_| Reply::Done),
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

    struct Panics;
    impl Plugin for Panics {
        fn add(&self, _req: &Request) -> Result<CniResult> {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            CniResult::from_json(&v[..i]) // out of bounds
        }
        fn del(&self, _req: &Request) -> Result<()> {
            panic!("deliberate")
        }
        fn check(&self, _req: &Request) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_answers_one_cni_error() {
        let mut env = HashMap::new();
        env.insert("CNI_COMMAND".to_string(), "DEL".to_string());
        env.insert("CNI_CONTAINERID".to_string(), "c1".to_string());
        env.insert("CNI_IFNAME".to_string(), "eth0".to_string());
        let stdin = br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        let out = dispatch(&Panics, &env, stdin);
        assert_eq!(out.exit_code, 1);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], 999);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().unwrap().contains("deliberate"), "{v}");
        env.insert("CNI_COMMAND".to_string(), "ADD".to_string());
        env.insert("CNI_NETNS".to_string(), "/proc/self/ns/net".to_string());
        let v: Value = serde_json::from_slice(&dispatch(&Panics, &env, stdin).stdout).unwrap();
        assert_eq!(v["code"], 999);
        assert!(v["msg"].as_str().unwrap().contains("out of range"), "{v}");
    }

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
