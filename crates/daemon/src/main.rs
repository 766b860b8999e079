//! `plexusd`: the Plexus node daemon.

use anyhow::{bail, Context, Result};
use clap::Parser;
use plexus_daemon::config::DaemonConfig;
use plexus_daemon::server::AppState;
use plexus_daemon::{autoconf, bind_socket, serve, serve_metrics, ChrootExec};
use plexus_kube::watch::{Caches, DaemonCluster};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

#[derive(Parser)]
#[command(name = "plexusd", version, about = "Plexus node daemon (thick mode)")]
struct Args {
    /// Daemon configuration (Multus daemon-config.json keys).
    #[arg(
        long,
        env = "PLEXUS_DAEMON_CONFIG",
        default_value = "/etc/cni/net.d/plexus.d/daemon-config.json"
    )]
    config: PathBuf,
}

fn init_logging(level: &str) {
    let max = match level {
        "debug" => tracing::Level::DEBUG,
        "error" | "panic" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(max)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn kube_client(cfg: &DaemonConfig) -> Result<Option<kube::Client>> {
    let config = match &cfg.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => kube::Config::incluster()?,
        None => return Ok(None),
    };
    Ok(Some(kube::Client::try_from(config)?))
}

/// The daemon's API limits: `plexus.apiTimeoutMs` per attempt and `plexus.apiRetries`
/// attempts, as a thin plugin given the same configuration has them. The client itself
/// gets no read limit: its watches are long polls.
fn api_settings(cfg: &DaemonConfig) -> plexus_kube::ApiSettings {
    plexus_kube::ApiSettings::limits(None, &cfg.engine)
}

/// glibc's allocator with one arena instead of eight per core, unless the operator
/// chose (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`). With
/// its defaults, plexusd's resident size kept growing with 64 pods in flight for as
/// long as pods came and went, without a level; with one arena it levels off (see
/// docs/reliability.md, "Memory under concurrency").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    let chosen = arenas_chosen(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    );
    if !chosen {
        // SAFETY: mallopt only sets an allocator parameter; it is called before any
        // other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

/// Every `every`, gives the allocator's free pages back to the kernel
/// (`malloc_trim`): freed memory between live allocations stays resident otherwise,
/// and the heap's resident size follows its busiest moment for ever after.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn give_back_free_memory(every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        // SAFETY: malloc_trim takes the allocator's own locks; it frees nothing in use.
        #[allow(unsafe_code)]
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
async fn give_back_free_memory(_every: Duration) {}

/// Whether the operator set the number of malloc arenas: `MALLOC_ARENA_MAX` is set, or
/// `GLIBC_TUNABLES` names `glibc.malloc.arena_max`.
fn arenas_chosen(malloc_arena_max: bool, tunables: Option<&str>) -> bool {
    malloc_arena_max
        || tunables.is_some_and(|t| {
            t.split(':')
                .any(|kv| kv.split('=').next() == Some("glibc.malloc.arena_max"))
        })
}

fn main() -> Result<()> {
    one_malloc_arena();
    let args = Args::parse();
    let cfg = Arc::new(DaemonConfig::load(&args.config)?);
    init_logging(&cfg.log_level);
    if !nix::unistd::Uid::effective().is_root() {
        bail!("plexusd must run as root: it enters network namespaces and runs CNI plugins");
    }
    // Tokio runs the worker cores on blocking-pool threads, and a request's engine work
    // keeps its thread (block_in_place, at most maxConcurrentRequests at once) while it
    // waits on API calls that the cores drive; its core moves to another pool thread.
    // The margin keeps a thread for both cores (and two for anything else) whatever the
    // load, so a core never waits for a thread held by work that waits on the core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(cfg.max_concurrent_requests + 4)
        .enable_all()
        .build()?;
    rt.block_on(run(cfg))
}

// Long on purpose: the daemon's start-up, step by step in the order it must happen.
async fn run(cfg: Arc<DaemonConfig>) -> Result<()> {
    let metrics = Arc::new(plexus_daemon::metrics::Metrics::default());
    let handle = tokio::runtime::Handle::current();
    let client = kube_client(&cfg).await?;
    let caches = client
        .as_ref()
        .map(|c| Caches::start(c, cfg.node_name.as_deref(), &handle));
    let cluster: Option<Arc<DaemonCluster>> = match (&client, &caches) {
        (Some(c), Some(caches)) => Some(Arc::new(DaemonCluster {
            caches: caches.clone(),
            api: api_settings(&cfg).requests(c.clone()),
            handle: handle.clone(),
            miss_wait: Duration::from_millis(500),
            added_interface_events: cfg.added_interface_events,
        })),
        _ => None,
    };
    let exec: Option<Arc<dyn plexus_cni::exec::Exec>> = cfg
        .chroot_dir
        .clone()
        .map(|root| Arc::new(ChrootExec { root }) as _);
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        cluster,
        exec,
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
        limiter: Semaphore::new(cfg.max_concurrent_requests),
        locks: Default::default(),
        adds: Default::default(),
        kubelet: Default::default(),
    });
    match (&state.cluster, &caches) {
        (Some(cluster), Some(caches)) if cfg.hotplug => {
            let tx = plexus_daemon::hotplug::start(state.clone(), caches.clone(), cluster.clone());
            let _ = state.adds.set(tx);
            tracing::info!("hot-plug: following this node's pods");
        }
        _ => tracing::info!("hot-plug: off"),
    }
    let listener = bind_socket(&cfg.socket_path())?;
    tracing::info!(socket = %cfg.socket_path().display(), node = ?cfg.node_name, "serving");
    if let Some(port) = cfg.metrics_port {
        let addr: std::net::SocketAddr = format!("{}:{port}", cfg.metrics_bind)
            .parse()
            .context("metrics address")?;
        let st = state.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_metrics(st, addr).await {
                tracing::error!(error = %e, "metrics server");
            }
        });
    }
    if cfg.config_file != "none" {
        tokio::spawn(autoconf::run(cfg.clone(), Duration::from_secs(1)));
    }
    // Ready once the caches have listed (bounded: serve anyway after 20 s, misses fall back to GETs).
    let st = state.clone();
    let c2 = caches.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while c2.as_ref().is_some_and(|c| !c.synced()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        st.ready.store(true, Ordering::SeqCst);
        loop {
            if let Some(c) = &c2 {
                st.metrics.cached_pods.set(c.pods.len() as i64);
                st.metrics.cached_nads.set(c.nads.len() as i64);
                st.metrics.caches_synced.set(i64::from(c.synced()));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::spawn(give_back_free_memory(Duration::from_secs(10)));
    let stop = Arc::new(Notify::new());
    let s2 = stop.clone();
    let st2 = state.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down: not ready any more, finishing requests in flight");
        st2.ready.store(false, Ordering::SeqCst);
        s2.notify_one();
    });
    serve(state, listener, stop).await
}

#[cfg(test)]
mod tests {
    use super::arenas_chosen;

    #[test]
    fn the_operators_arena_setting_wins() {
        assert!(!arenas_chosen(false, None));
        assert!(arenas_chosen(true, None));
        assert!(arenas_chosen(
            false,
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4")
        ));
        assert!(!arenas_chosen(false, Some("glibc.malloc.tcache_count=0")));
        assert!(!arenas_chosen(false, Some("glibc.malloc.arena_test=1")));
    }
}
