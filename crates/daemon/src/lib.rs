//! plexusd, the Plexus node daemon (thick mode). The `plexus-shim` CNI binary forwards
//! each request to it over a root-only unix socket; it runs the same engine, with the
//! same on-disk state, as thin mode, reading pods and NADs from node-scoped caches.

pub mod autoconf;
pub mod config;
pub mod hotplug;
pub mod metrics;
pub mod server;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use plexus_cni::exec::{Exec, ExecOutput, ExecRequest, ProcessExec};
use server::AppState;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{Notify, Semaphore};

/// Executes delegates chrooted into `chrootDir` (the host's root mounted in the
/// daemon's pod), through the `chroot` command.
pub struct ChrootExec {
    /// The new root.
    pub root: PathBuf,
}

impl Exec for ChrootExec {
    fn run(&self, req: &ExecRequest<'_>) -> plexus_cni::Result<ExecOutput> {
        // `chroot ROOT BINARY`: the binary's path is the host's path.
        let mut args = vec![
            self.root.display().to_string(),
            req.binary.display().to_string(),
        ];
        args.extend(req.args.iter().cloned());
        ProcessExec.run(&ExecRequest {
            binary: Path::new("/usr/sbin/chroot"),
            args,
            env: req.env.clone(),
            stdin: req.stdin,
            timeout: req.timeout,
        })
    }
}

/// Prepares the socket: directory 0700, stale socket removed, socket 0600.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    let dir = path.parent().context("socket path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).context("removing the stale socket")
        }
        _ => {}
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the socket until `stop` is notified; then stops accepting, waits (bounded)
/// for the requests in flight, and removes the socket.
pub async fn serve(state: Arc<AppState>, listener: UnixListener, stop: Arc<Notify>) -> Result<()> {
    let cfg = state.cfg.clone();
    let conns = Arc::new(Semaphore::new(cfg.connection_limit));
    // Connections that have sent nothing yet wait outside the serving slots, so idle
    // ones (at most this many, each for at most requestReadTimeoutMs) never keep a
    // request that is ready from being served.
    let waiting = Arc::new(Semaphore::new(cfg.connection_limit.saturating_mul(4)));
    let app = server::router(state.clone());
    loop {
        let idle = tokio::select! {
            p = waiting.clone().acquire_owned() => p?,
            _ = stop.notified() => break,
        };
        let (stream, _) = tokio::select! {
            a = listener.accept() => a?,
            _ = stop.notified() => break,
        };
        // The socket's file mode is the first gate; the peer's credentials the second,
        // whatever the mode of a socket directory mounted elsewhere became.
        if let Err(why) = peer_allowed(&stream, &cfg.socket_uids) {
            tracing::warn!(%why, "connection refused");
            tokio::spawn(refuse(stream, why));
            continue;
        }
        let svc = TowerToHyperService::new(app.clone());
        let read_timeout = cfg.request_read_timeout;
        let conns = conns.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(read_timeout, first_bytes(&stream))
                .await
                .is_err()
            {
                tracing::debug!("connection sent nothing in time, closed");
                return;
            }
            let Ok(permit) = conns.acquire_owned().await else {
                return;
            };
            drop(idle);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection");
            }
            drop(permit);
        });
    }
    state.ready.store(false, Ordering::SeqCst);
    drop(listener);
    let _ = std::fs::remove_file(cfg.socket_path());
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    while conns.available_permits() < cfg.connection_limit && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until the peer has sent something (or closed): a readiness wake-up alone can be
/// spurious, so the socket is peeked at.
async fn first_bytes(stream: &tokio::net::UnixStream) {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut b = [0u8; 1];
            recv(
                stream.as_raw_fd(),
                &mut b,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)
        });
        match peeked {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            _ => return,
        }
    }
}

/// Root, or a uid of `socketAllowedUids`.
fn peer_allowed(
    stream: &tokio::net::UnixStream,
    allowed: &[u32],
) -> std::result::Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("the peer's credentials cannot be read: {e}"))?;
    let uid = cred.uid();
    if uid == 0 || allowed.contains(&uid) {
        return Ok(());
    }
    Err(format!(
        "uid {uid} (pid {}) may not use the plexus daemon: only root and plexus.socketAllowedUids {allowed:?}",
        cred.pid().map(|p| p.to_string()).unwrap_or_else(|| "?".into())
    ))
}

/// Answers 403 with a CNI error, then discards what the peer sends (bounded in time and
/// size) until it closes: closed with unread data, the socket would reset and the peer
/// would never read why.
async fn refuse(mut stream: tokio::net::UnixStream, why: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = plexus_cni::CniError::new(plexus_cni::code::INVALID_ENVIRONMENT, why)
        .to_json(plexus_cni::version::CURRENT);
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 8192];
        let mut left: usize = 1 << 20;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// Serves `/metrics` (and `/healthz`) on TCP.
pub async fn serve_metrics(state: Arc<AppState>, addr: std::net::SocketAddr) -> Result<()> {
    use axum::routing::get;
    let m = state.metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let st = state.clone();
                async move {
                    if st.ready.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "not ready")
                    }
                }
            }),
        );
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics on {addr}"))?;
    axum::serve(l, app).await?;
    Ok(())
}
