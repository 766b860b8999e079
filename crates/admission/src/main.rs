//! `plexus-webhook`: the validating and mutating admission webhook for NADs and pods.

use anyhow::Context;
use clap::Parser;
use plexus_admission::rules::{Missing, Policy};
use plexus_admission::server::{router, serve, tls_config, Webhook};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Plexus admission webhook: NADs and pods checked with the CNI plugin's rules"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: String,
    /// The serving certificate (PEM chain); read again when it changes.
    #[arg(long)]
    tls_cert_file: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    tls_key_file: PathBuf,
    /// The node configuration (Multus keys: namespaceIsolation, globalNamespaces,
    /// multusNamespace), as plexusd reads it; other keys are ignored.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pods naming a NAD that does not exist: warn (admit) or deny.
    #[arg(long, value_parser = ["warn", "deny"])]
    missing_networks: Option<String>,
    /// Access control: a pod may use a NAD only when its creator or its service account
    /// is allowed the verb `use` on it (RBAC, asked with SubjectAccessReviews).
    #[arg(long)]
    access_control: bool,
    /// A kubeconfig (the in-cluster configuration otherwise).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut policy: Policy = match &args.config {
        Some(p) => {
            serde_json::from_slice(&std::fs::read(p).with_context(|| format!("{}", p.display()))?)
                .with_context(|| format!("{}", p.display()))?
        }
        None => Policy::default(),
    };
    match args.missing_networks.as_deref() {
        Some("deny") => policy.missing_networks = Missing::Deny,
        Some(_) => policy.missing_networks = Missing::Warn,
        None => {}
    }
    if args.access_control {
        policy.access_control = true;
    }
    let tls = tls_config(&args.tls_cert_file, &args.tls_key_file)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = match &args.kubeconfig {
            Some(k) => {
                kube::Config::from_custom_kubeconfig(
                    kube::config::Kubeconfig::read_from(k)?,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?
            }
            None => kube::Config::incluster().context("in-cluster Kubernetes configuration")?,
        };
        let client = kube::Client::try_from(config)?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| args.listen.clone())?;
        tracing::info!(listen = %args.listen, "serving");
        serve(
            listener,
            tls,
            router(Arc::new(Webhook::new(policy, Some(client)))),
        )
        .await;
        Ok(())
    })
}
