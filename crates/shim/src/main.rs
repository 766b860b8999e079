//! `plexus-shim`: the CNI binary of thick mode. It forwards the environment and the
//! configuration to plexusd over its unix socket and prints the answer, converted to
//! the caller's `cniVersion`, through the plugin skeleton of plexus-cni (which answers
//! VERSION itself, validates the environment and prints exactly one document). Small
//! and synchronous: no async runtime, no TLS, no Kubernetes client. It never guesses:
//! if the daemon is not there it waits a bounded time, then fails with code 11 (try
//! again later) — DEL included, so the runtime retries.

mod http;

use plexus_cni::plugin::{run_main, Plugin, Request};
use plexus_cni::{code, CniError, CniResult, Result};
use plexus_proto::{AddReply, CniRequest};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct ShimConf {
    socket: PathBuf,
    wait: Duration,
    timeout: Duration,
}

fn conf(config: &Value) -> ShimConf {
    let dir = config["daemonSocketDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or(plexus_proto::DEFAULT_SOCKET_DIR);
    let p = &config["plexus"];
    ShimConf {
        socket: plexus_proto::socket_path(dir.as_ref()),
        wait: Duration::from_secs(p["shimWaitSeconds"].as_u64().unwrap_or(30)),
        timeout: Duration::from_secs(p["shimRequestTimeoutSeconds"].as_u64().unwrap_or(600)),
    }
}

/// Sends the request; while the daemon is absent (no socket, connection refused) or
/// not ready (503 before it handled anything), waits and tries again, bounded. A request
/// the daemon has started on is never sent twice.
fn send(c: &ShimConf, body: &[u8]) -> Result<http::Response> {
    let deadline = Instant::now() + c.wait;
    loop {
        let why = match http::request(&c.socket, "POST", plexus_proto::CNI_PATH, body, c.timeout) {
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

/// Forwards the request; the daemon's CNI error comes back with its own code.
fn forward(req: &Request) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(&CniRequest::new(&req.env, &req.stdin))
        .map_err(|e| CniError::internal(format!("encoding the request: {e}")))?;
    let resp = send(&conf(&req.config), &body)?;
    if resp.status == 200 {
        return Ok(resp.body);
    }
    match serde_json::from_slice::<CniError>(&resp.body) {
        Ok(mut e) => {
            e.cni_version.clear();
            Err(e)
        }
        Err(_) => Err(CniError::internal(format!(
            "plexus daemon answered {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body).trim()
        ))),
    }
}

struct Shim;

impl Plugin for Shim {
    fn add(&self, req: &Request) -> Result<CniResult> {
        let body = forward(req)?;
        let reply: AddReply = serde_json::from_slice(&body)
            .map_err(|e| CniError::decode(format!("daemon answer: {e}")))?;
        CniResult::from_value(&reply.result)
    }
    fn del(&self, req: &Request) -> Result<()> {
        forward(req).map(drop)
    }
    fn check(&self, req: &Request) -> Result<()> {
        forward(req).map(drop)
    }
    fn status(&self, req: &Request) -> Result<()> {
        forward(req).map(drop)
    }
    fn gc(&self, req: &Request) -> Result<()> {
        forward(req).map(drop)
    }
}

fn main() {
    run_main(&Shim)
}
