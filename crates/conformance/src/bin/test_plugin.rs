//! The recording delegate of the conformance suite and of the tests. It records every call (command, CNI_* variables, the
//! configuration it got, its pid and its parent's) as one JSON line in `recordDir/calls.jsonl`, and behaves as
//! its configuration's `behavior` says: `ok` (default), `error` (prints a CNI error
//! with `errorCode`), `garbage` (prints non-JSON and exits 0), `crash` (prints garbage,
//! writes to stderr, exits 3), `hang` (sleeps), `silent` (ADD prints nothing).
//! `failOn`/`hangOn` apply `error`/`hang` to one command only (`failOn` only while the
//! file `failWhileExists` names exists, when given). STATUS fails with
//! `statusCode` when set. With `passThrough` and a `prevResult`, ADD returns the previous
//! result unchanged (a plugin chained only to watch). It uses the plugin skeleton of
//! plexus-cni.

use plexus_cni::plugin::{dispatch, Plugin, Request};
use plexus_cni::result::CniResult;
use plexus_cni::{CniError, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};

struct TestPlugin;

fn record(config: &Value, env: &HashMap<String, String>) {
    let Some(dir) = config.get("recordDir").and_then(Value::as_str) else {
        return;
    };
    // The pids let a test kill the plugin's parent and see what becomes of the plugin.
    let line = json!({"env": env, "config": config, "pid": std::process::id(),
                      "ppid": std::os::unix::process::parent_id()});
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/calls.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
}

impl Plugin for TestPlugin {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let prev = req.prev_result()?;
        if let Some(path) = req.config["runtimeConfig"]["CNIDeviceInfoFile"].as_str() {
            // What an SR-IOV-like plugin does with the capability (device-info-spec §5.1).
            let info =
                json!({"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:00:1f.6"}});
            if let Some(dir) = std::path::Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(path, info.to_string())
                .map_err(|e| CniError::io(format!("{path}: {e}")))?;
        }
        // `passThrough`: a plugin chained only to watch: the previous result, unchanged.
        if let (Some(p), true) = (&prev, req.config["passThrough"] == true) {
            return Ok(p.clone());
        }
        let ip = req
            .config
            .get("ip")
            .and_then(Value::as_str)
            .unwrap_or("192.0.2.100/24");
        let mut result = match prev {
            Some(p) => p.to_current(),
            None => CniResult::from_json(br#"{"cniVersion":"1.1.0"}"#)?.to_current(),
        };
        result.interfaces.push(plexus_cni::result::Interface {
            name: req.ifname.clone(),
            sandbox: req
                .netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        });
        let idx = (result.interfaces.len() - 1) as i32;
        let address = ip
            .parse()
            .map_err(|e| CniError::invalid_config(format!("ip {ip:?}: {e}")))?;
        result.ips.push(plexus_cni::result::v100::IpConfig {
            interface: Some(idx),
            address,
            gateway: None,
        });
        Ok(CniResult::V100(result))
    }

    fn del(&self, _req: &Request) -> Result<()> {
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<()> {
        match req.prev_result()? {
            Some(_) => Ok(()),
            None => Err(CniError::invalid_config("CHECK without prevResult")),
        }
    }

    fn status(&self, req: &Request) -> Result<()> {
        match req.config.get("statusCode").and_then(Value::as_u64) {
            Some(code) => Err(CniError::new(code as u32, "test plugin not ready")),
            None => Ok(()),
        }
    }
}

fn main() {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let config: Value = serde_json::from_slice(&stdin).unwrap_or(Value::Null);
    record(&config, &env);
    let command = env
        .get("CNI_COMMAND")
        .map(String::as_str)
        .unwrap_or_default();
    let mut behavior = if command == "VERSION" {
        "ok"
    } else {
        config
            .get("behavior")
            .and_then(Value::as_str)
            .unwrap_or("ok")
    };
    // `failOn`: fail only this command (e.g. a DEL that cannot complete); with
    // `failWhileExists`, only while that file exists (a failure that goes away).
    if config.get("failOn").and_then(Value::as_str) == Some(command)
        && config
            .get("failWhileExists")
            .and_then(Value::as_str)
            .is_none_or(|f| std::path::Path::new(f).exists())
    {
        behavior = "error";
    }
    // `hangOn`: hang only on this command (an ADD stuck while DEL still works).
    if config.get("hangOn").and_then(Value::as_str) == Some(command) {
        behavior = "hang";
    }
    let mut out = std::io::stdout();
    match behavior {
        "error" => {
            let code = config
                .get("errorCode")
                .and_then(Value::as_u64)
                .unwrap_or(100) as u32;
            let _ = out.write_all(
                &CniError::new(code, "test plugin was told to fail")
                    .with_details("behavior=error")
                    .to_json("1.0.0"),
            );
            std::process::exit(1);
        }
        "garbage" => {
            let _ = out.write_all(b"this is not json");
            std::process::exit(0);
        }
        "crash" => {
            let _ = out.write_all(b"panic: something");
            eprintln!("goroutine 1 [running]: fake crash");
            std::process::exit(3);
        }
        "hang" => {
            std::thread::sleep(std::time::Duration::from_secs(300));
            std::process::exit(0);
        }
        "silent" if command == "ADD" => std::process::exit(0),
        _ => {}
    }
    let outcome = dispatch(&TestPlugin, &env, &stdin);
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
