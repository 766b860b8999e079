//! `plexus-shim`: the CNI binary of thick mode. It forwards the environment and the
//! configuration to plexusd over its unix socket and prints the answer, converted to
//! the caller's `cniVersion`. Small and synchronous: no async runtime, no TLS, no
//! Kubernetes client. It never guesses: if the daemon is not there it waits a bounded
//! time, then fails with code 11 (try again later) — DEL included, so the runtime retries.

mod http;

use base64::Engine as _;
use plexus_cni::{code, version, CniError, CniResult, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct ShimConf {
    version: String,
    socket: PathBuf,
    wait: Duration,
    timeout: Duration,
}

fn conf(stdin: &[u8]) -> Result<ShimConf> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("configuration on stdin is not valid JSON: {e}")))?;
    let dir = v["daemonSocketDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("/run/plexus");
    let p = &v["plexus"];
    Ok(ShimConf {
        version: v["cniVersion"]
            .as_str()
            .unwrap_or(version::CURRENT)
            .to_string(),
        socket: PathBuf::from(dir).join("plexus.sock"),
        wait: Duration::from_secs(p["shimWaitSeconds"].as_u64().unwrap_or(30)),
        timeout: Duration::from_secs(p["shimRequestTimeoutSeconds"].as_u64().unwrap_or(600)),
    })
}

/// Sends the request; while the daemon is absent (no socket, connection refused) or
/// not ready (503 before it handled anything), waits and tries again, bounded. A request
/// the daemon has started on is never sent twice.
fn send(c: &ShimConf, body: &[u8]) -> Result<http::Response> {
    let deadline = Instant::now() + c.wait;
    loop {
        let why = match http::request(&c.socket, "POST", "/cni", body, c.timeout) {
            Ok(r) if r.status == 503 => format!(
                "it answers {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ),
            Ok(r) => return Ok(r),
            Err(http::Error::Connect(e)) => e,
            Err(http::Error::Exchange(e)) => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("plexus daemon at {}: {e}", c.socket.display()),
                ))
            }
        };
        if Instant::now() >= deadline {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "plexus daemon at {} is not ready after {:?}: {why}",
                    c.socket.display(),
                    c.wait
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Vec<u8>> {
    let command = env
        .get("CNI_COMMAND")
        .map(String::as_str)
        .unwrap_or_default();
    if command == "VERSION" {
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string));
        return Ok(json!({"cniVersion": asked.unwrap_or_else(|| version::CURRENT.into()), "supportedVersions": version::SUPPORTED}).to_string().into_bytes());
    }
    let c = conf(stdin)?;
    let fwd: HashMap<&String, &String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("CNI_") || k.starts_with("K8S_"))
        .collect();
    let body =
        json!({"env": fwd, "config": base64::engine::general_purpose::STANDARD.encode(stdin)})
            .to_string();
    let resp = send(&c, body.as_bytes())?;
    match resp.status {
        200 if command == "ADD" => {
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|e| CniError::decode(format!("daemon answer: {e}")))?;
            let r = CniResult::from_value(&v["Result"])?;
            Ok(r.convert_to(&c.version)?.to_json())
        }
        200 => Ok(Vec::new()),
        _ => match serde_json::from_slice::<CniError>(&resp.body) {
            Ok(mut e) => {
                e.cni_version.clear();
                Err(e)
            }
            Err(_) => Err(CniError::internal(format!(
                "plexus daemon answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ))),
        },
    }
}

fn main() {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let ver = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| version::CURRENT.into());
    let result = match read {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::io(format!("reading stdin: {e}"))),
    };
    let mut out = std::io::stdout().lock();
    let code = match result {
        Ok(bytes) => {
            let _ = out.write_all(&bytes);
            0
        }
        Err(e) => {
            let _ = out.write_all(&e.to_json(&ver));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}
