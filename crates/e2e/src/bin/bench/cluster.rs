//! `--kubeconfig`: the benchmark against an existing cluster. The bench's objects go
//! to a namespace of the run's own, removed at the end; the meta-plugins, which run in
//! the bench's private node namespace, reach the API server through a forwarder: a
//! loopback listener in that namespace whose connections are relayed, byte for byte,
//! from the bench's own namespace. TLS stays end to end: the kubeconfig the plugins get
//! is the user's, with the forwarder's address as `server` and the API server's host
//! as `tls-server-name`, which kube-rs and client-go both honour.

use anyhow::{anyhow, Context, Result};
use kube::config::Kubeconfig;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;

/// Where `server` (an `https://` URL of a kubeconfig) is: its host, as certificates
/// name it, its port, and the URL's path after them (empty, or from its `/`).
pub fn server_parts(server: &str) -> Result<(String, u16, String)> {
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("kubeconfig: server {server:?} is not an https:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("kubeconfig: server {server:?}: unclosed '['"))?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(anyhow!("kubeconfig: server {server:?} has no host"));
    }
    let port = match port {
        None => 443,
        Some(p) => p
            .parse()
            .map_err(|_| anyhow!("kubeconfig: server {server:?}: bad port {p:?}"))?,
    };
    Ok((host.to_string(), port, path.to_string()))
}

/// The cluster of a kubeconfig's current context, read and checked once: where the
/// forwarder relays to, and the kubeconfig to rewrite for it.
pub struct Remote {
    kubeconfig: Kubeconfig,
    /// The current context's cluster.
    cluster: String,
    /// The API server's host and the path of its URL.
    host: String,
    path: String,
    /// The address the forwarder connects to.
    pub target: SocketAddr,
}

impl Remote {
    /// Reads the kubeconfig at `path` and resolves its current cluster's server.
    pub fn read(path: &Path) -> Result<Remote> {
        let shown = || format!("kubeconfig {}", path.display());
        let kubeconfig = Kubeconfig::read_from(path).with_context(shown)?;
        let (cluster, _) = current(&kubeconfig).with_context(shown)?;
        let server = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| anyhow!("{}: cluster {cluster:?} is not defined", shown()))?
            .server
            .clone()
            .ok_or_else(|| anyhow!("{}: cluster {cluster:?} has no server", shown()))?;
        let (host, port, path) = server_parts(&server)?;
        let target = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        Ok(Remote {
            kubeconfig,
            cluster,
            host,
            path,
            target,
        })
    }

    /// The user's kubeconfig, rewritten for the forwarder at `local`: the current
    /// context's cluster gets `server` at `local` (the original URL's path kept) and
    /// `tls-server-name` the original host unless it has one.
    pub fn forwarded(&self, local: SocketAddr) -> Kubeconfig {
        let mut kc = self.kubeconfig.clone();
        let named = kc.clusters.iter_mut().find(|c| c.name == self.cluster);
        if let Some(cluster) = named.and_then(|c| c.cluster.as_mut()) {
            cluster.server = Some(format!("https://{local}{}", self.path));
            if cluster.tls_server_name.is_none() {
                cluster.tls_server_name = Some(self.host.clone());
            }
        }
        kc
    }

    /// Its in-cluster credentials (see [`in_cluster`]).
    pub fn in_cluster(&self) -> Result<InCluster> {
        in_cluster(&self.kubeconfig)
    }
}

/// The current context's cluster and user names.
fn current(kc: &Kubeconfig) -> Result<(String, String)> {
    let context = kc
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("no current-context"))?;
    kc.contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| (c.cluster.clone(), c.user.clone().unwrap_or_default()))
        .ok_or_else(|| anyhow!("context {context:?} is not defined"))
}

/// What an in-cluster client (a thick meta-plugin's daemon) reads, taken from the
/// current context of a kubeconfig: the user's bearer token and the cluster's CA.
/// The daemon reaches the API server at the forwarder's loopback address, so the API
/// server's certificate must name 127.0.0.1 (in-cluster clients set no server name).
pub struct InCluster {
    pub token: String,
    pub ca_pem: String,
}

pub fn in_cluster(kc: &Kubeconfig) -> Result<InCluster> {
    let (cluster_name, user) = current(kc)?;
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| anyhow!("user {user:?} is not defined"))?;
    // The token is a secret string; its serialized form is the token itself.
    let token = serde_json::to_value(auth)?["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "user {user:?} has no bearer token: an in-cluster daemon authenticates with one"
            )
        })?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| anyhow!("cluster {cluster_name:?} is not defined"))?;
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?;
            String::from_utf8(bytes).context("certificate-authority-data is not PEM")?
        }
        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| file.clone())?,
        (None, None) => {
            return Err(anyhow!(
                "cluster {cluster_name:?} names no CA: an in-cluster daemon needs one"
            ))
        }
    };
    Ok(InCluster { token, ca_pem })
}

/// Writes `kc` to `path` (as JSON, which every kubeconfig reader takes as YAML).
pub fn write_kubeconfig(kc: &Kubeconfig, path: &Path) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    serde_json::to_writer_pretty(&mut f, kc)?;
    f.flush()?;
    Ok(())
}

/// Relays every connection accepted on `listener` to `target`, each on threads of
/// its own, connecting from the namespace of the thread that calls this.
pub fn forward(listener: TcpListener, target: SocketAddr) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || relay(conn, target));
        }
    });
}

fn relay(client: TcpStream, target: SocketAddr) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut server_r, mut client_w) = (server, client);
    let _ = std::io::copy(&mut server_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_host_port_and_path() {
        let hp = |s| {
            let (h, p, _) = server_parts(s).unwrap();
            (h, p)
        };
        assert_eq!(hp("https://10.0.0.5:6443"), ("10.0.0.5".into(), 6443));
        assert_eq!(
            hp("https://api.example.com"),
            ("api.example.com".into(), 443)
        );
        assert_eq!(
            hp("https://api.example.com:8443/prefix/"),
            ("api.example.com".into(), 8443)
        );
        assert_eq!(
            hp("https://[2001:db8::1]:6443"),
            ("2001:db8::1".into(), 6443)
        );
        assert_eq!(hp("https://[2001:db8::1]"), ("2001:db8::1".into(), 443));
        assert_eq!(server_parts("https://h:1/prefix/").unwrap().2, "/prefix/");
        assert_eq!(server_parts("https://h:1").unwrap().2, "");
        for bad in [
            "http://10.0.0.5:8080",
            "https://",
            "https://[2001:db8::1",
            "https://h:x",
        ] {
            assert!(server_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_forwarded_kubeconfig_keeps_credentials_and_names_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n\
             clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443/x', certificate-authority: ca.crt}}]\n\
             users: [{name: u, user: {token: secret}}]\n",
        )
        .unwrap();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let remote = Remote::read(&p).unwrap();
        let kc = remote.forwarded(local);
        assert_eq!(remote.target, "127.0.0.1:6443".parse().unwrap());
        let c = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(c.server.as_deref(), Some("https://127.0.0.1:40000/x"));
        assert_eq!(c.tls_server_name.as_deref(), Some("127.0.0.1"));
        // Relative paths are the original file's.
        assert_eq!(
            c.certificate_authority.as_deref(),
            Some(dir.path().join("ca.crt").to_str().unwrap())
        );
        let out = dir.path().join("forwarded");
        write_kubeconfig(&kc, &out).unwrap();
        let back = Kubeconfig::read_from(&out).unwrap();
        // The credentials are written out as they were.
        assert_eq!(in_cluster(&back).unwrap().token, "secret");
    }

    #[test]
    fn a_kubeconfig_without_the_current_context_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: gone\nclusters: []\ncontexts: []\n",
        )
        .unwrap();
        let e = Remote::read(&p).err().unwrap();
        assert!(
            format!("{e:#}").contains("\"gone\" is not defined"),
            "{e:#}"
        );
    }

    #[test]
    fn in_cluster_credentials_come_from_the_current_user_and_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(dir.path().join("ca.crt"), "PEM").unwrap();
        let write = |user: &str| {
            std::fs::write(
                &p,
                format!("apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
                 clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}}}}]\n\
                 users: [{{name: u, user: {user}}}]\n"),
            )
            .unwrap();
        };
        write("{token: secret}");
        let c = in_cluster(&Kubeconfig::read_from(&p).unwrap()).unwrap();
        assert_eq!((c.token.as_str(), c.ca_pem.as_str()), ("secret", "PEM"));
        write("{client-certificate: a.crt, client-key: a.key}");
        let e = in_cluster(&Kubeconfig::read_from(&p).unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no bearer token"), "{e}");
    }
}
