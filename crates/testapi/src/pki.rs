//! The test API server's PKI, made as kubeadm makes a cluster's: a CA (`kubernetes`), a
//! serving certificate it signs for the server's address and the `kubernetes` service
//! names, and client certificates it signs for users (`kubernetes-admin` in
//! `system:masters`, as in kubeadm's admin.conf). Keys are RSA 2048 by default, as
//! kubeadm's are, or ECDSA P-256.
//!
//! Key generation costs (RSA 2048: a fraction of a second with optimised code), so each
//! process makes each key once and signs new certificates with it for every server: the
//! servers of one process with keys of one kind share their CA's key, and so trust each
//! other's certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// The kind of every key of a server's PKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA 2048 with SHA-256 signatures (kubeadm's default).
    Rsa2048,
    /// ECDSA P-256 with SHA-256 (kubeadm's `encryptionAlgorithm: ECDSA-P256`).
    EcdsaP256,
}

impl KeyKind {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }

    /// A new key as PKCS#8 DER.
    fn generate(self) -> Vec<u8> {
        match self {
            KeyKind::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                    .expect("generating an RSA key from the system's random source");
                key.to_pkcs8_der()
                    .expect("encoding an RSA key")
                    .as_bytes()
                    .to_vec()
            }
            KeyKind::EcdsaP256 => KeyPair::generate_for(self.alg())
                .expect("generating an ECDSA key")
                .serialize_der(),
        }
    }
}

/// The keys a process uses for every server of a kind: CA, serving, client.
struct Keys {
    ca: Vec<u8>,
    serving: Vec<u8>,
    client: Vec<u8>,
}

fn keys(kind: KeyKind) -> &'static Keys {
    static RSA: OnceLock<Keys> = OnceLock::new();
    static ECDSA: OnceLock<Keys> = OnceLock::new();
    let cell = match kind {
        KeyKind::Rsa2048 => &RSA,
        KeyKind::EcdsaP256 => &ECDSA,
    };
    cell.get_or_init(|| {
        // Three keys at once, each on its own thread: RSA generation dominates start-up.
        let (ca, serving, client) = std::thread::scope(|s| {
            let a = s.spawn(|| kind.generate());
            let b = s.spawn(|| kind.generate());
            let c = kind.generate();
            (
                a.join().expect("key thread"),
                b.join().expect("key thread"),
                c,
            )
        });
        Keys {
            ca,
            serving,
            client,
        }
    })
}

fn key_pair(der: &[u8], kind: KeyKind) -> KeyPair {
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der.to_vec()), kind.alg())
        .expect("a key made here")
}

fn name(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// Who a verified client certificate authenticates: its subject's common name is the
/// user, its organizations the groups (kube-apiserver's x509 authenticator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// A client certificate and its key, PEM-encoded, as a kubeconfig carries them.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// `client-certificate-data` (PEM).
    pub cert_pem: String,
    /// `client-key-data` (PEM, PKCS#8).
    pub key_pem: String,
}

/// One server's PKI.
pub struct Pki {
    kind: KeyKind,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    serving: (Vec<CertificateDer<'static>>, Vec<u8>),
    /// The client certificates this CA issued (DER), and whom each names.
    issued: Mutex<HashMap<Vec<u8>, User>>,
}

impl Pki {
    /// A CA and a serving certificate for `ip` (and localhost and the `kubernetes`
    /// service names, as kubeadm's apiserver certificate).
    pub fn new(kind: KeyKind, ip: IpAddr) -> Arc<Pki> {
        let k = keys(kind);
        let ca_key = key_pair(&k.ca, kind);
        let mut ca = CertificateParams::default();
        ca.distinguished_name = name("kubernetes", &[]);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("signing the CA");
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = key_pair(&k.serving, kind);
        let mut p = CertificateParams::default();
        p.distinguished_name = name("kube-apiserver", &[]);
        p.subject_alt_names = vec![SanType::IpAddress(ip)];
        if ip != IpAddr::from([127, 0, 0, 1]) {
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        }
        for dns in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            p.subject_alt_names
                .push(SanType::DnsName(dns.try_into().expect("a DNS name")));
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = p
            .signed_by(&serving_key, &issuer)
            .expect("signing the serving certificate");
        Arc::new(Pki {
            kind,
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            serving: (
                vec![serving_cert.der().clone(), ca_cert.der().clone()],
                k.serving.clone(),
            ),
            issuer,
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), for `certificate-authority-data`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `user` in `groups`, signed by the CA.
    pub fn client(&self, user: &str, groups: &[&str]) -> ClientCredentials {
        let key = key_pair(&keys(self.kind).client, self.kind);
        let mut p = CertificateParams::default();
        p.distinguished_name = name(user, groups);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p
            .signed_by(&key, &self.issuer)
            .expect("signing a client certificate");
        lock(&self.issued).insert(
            cert.der().to_vec(),
            User {
                name: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
        );
        ClientCredentials {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The user a verified client certificate names (`None` for a certificate this CA
    /// did not issue, which the TLS layer has refused already).
    pub fn user_of(&self, cert: &CertificateDer<'_>) -> Option<User> {
        lock(&self.issued).get(cert.as_ref()).cloned()
    }

    /// The server's TLS configuration: its certificate chain, client certificates
    /// requested and verified against the CA but not required (a request may carry a
    /// bearer token instead), HTTP/1.1.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA certificate");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client certificate verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.serving.1.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.serving.0.clone(), key)
            .expect("the serving certificate and its key");
        // HTTP/2 first, as kube-apiserver (Go's net/http) offers it.
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_are_2048_bits_and_certificates_chain_to_the_ca() {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let k = rsa::PrivateKey::from_pkcs8_der(&keys(KeyKind::Rsa2048).serving).unwrap();
        assert_eq!(k.size() * 8, 2048);
        let pki = Pki::new(KeyKind::Rsa2048, IpAddr::from([127, 0, 0, 1]));
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let c = pki.client("kubernetes-admin", &["system:masters"]);
        assert!(c.key_pem.contains("PRIVATE KEY"));
        // The server configuration accepts the chain and key it was given.
        let _ = pki.server_config();
    }
}
