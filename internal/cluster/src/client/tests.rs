//! The client's certificate reload, against a TLS server that requires a client certificate
//! and answers each request with the certificate it was shown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{CertFiles, rotating};

struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A client certificate: its files' text and what the server will echo for it.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "reload test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Self(CertifiedIssuer::self_signed(params, key).expect("CA"))
    }

    fn issue(&self, cn: &str, san: Option<SanType>, server: bool) -> (Issued, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = san.into_iter().collect();
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("sign");
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        };
        (issued, key)
    }

    fn client(&self, cn: &str) -> Issued {
        self.issue(cn, None, false).0
    }
}

/// What the server answers for a certificate: its DER in hex.
fn hex(der: &[u8]) -> String {
    der.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves HTTPS on 127.0.0.1, requiring a client certificate from `ca`; every request gets the
/// hex of the presented certificate, and the connection is closed after it.
async fn serve(ca: &Ca) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.0.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let (server, key) = ca.issue(
        "server",
        Some(SanType::IpAddress([127, 0, 0, 1].into())),
        true,
    );
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let shown = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| hex(c))
                    .unwrap_or_default();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{shown}",
                    shown.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn write_identity(dir: &Path, issued: &Issued) {
    std::fs::write(dir.join("client.crt"), &issued.cert_pem).expect("write cert");
    std::fs::write(dir.join("client.key"), &issued.key_pem).expect("write key");
}

/// A kubeconfig naming the CA and the client certificate and key by file, as a kubelet's does.
async fn config(dir: &Path, ca: &Ca, port: u16) -> kube::Config {
    std::fs::write(dir.join("ca.crt"), ca.0.pem()).expect("write ca");
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {d}/ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: {d}/client.crt\n    client-key: {d}/client.key\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        d = dir.display()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    crate::client_config(path.to_str().expect("utf-8"))
        .await
        .expect("kubeconfig loads")
}

async fn shown(client: &kube::Client) -> String {
    let request = http::Request::get("/whoami")
        .body(Vec::new())
        .expect("request");
    client
        .request_text(request)
        .await
        .expect("the server answers")
}

#[tokio::test]
async fn a_client_presents_the_rotated_certificate_without_being_rebuilt() {
    let ca = Ca::new();
    let port = serve(&ca).await;
    let dir = tempfile::tempdir().expect("tmp");
    let first = ca.client("system:node:a");
    write_identity(dir.path(), &first);
    let config = config(dir.path(), &ca, port).await;
    let files = CertFiles::of(&config).expect("the kubeconfig names files");
    let client = rotating(config, files, Duration::ZERO).expect("client");
    assert_eq!(shown(&client).await, hex(&first.der));

    // The kubelet (or k3s) rewrites both files in place.
    let second = ca.client("system:node:a");
    write_identity(dir.path(), &second);
    assert_eq!(
        shown(&client).await,
        hex(&second.der),
        "the same client now presents the new certificate"
    );
}

#[tokio::test]
async fn a_certificate_file_caught_half_written_keeps_the_previous_one_in_use() {
    let ca = Ca::new();
    let port = serve(&ca).await;
    let dir = tempfile::tempdir().expect("tmp");
    let first = ca.client("system:node:a");
    write_identity(dir.path(), &first);
    let config = config(dir.path(), &ca, port).await;
    let files = CertFiles::of(&config).expect("files");
    let client = rotating(config, files, Duration::ZERO).expect("client");
    assert_eq!(shown(&client).await, hex(&first.der));

    std::fs::write(
        dir.path().join("client.crt"),
        "-----BEGIN CERTIFICATE-----\nMIIB",
    )
    .expect("truncate");
    assert_eq!(
        shown(&client).await,
        hex(&first.der),
        "requests go on with the certificate that loaded"
    );

    // Written in full, it is picked up at the next request.
    let second = ca.client("system:node:a");
    write_identity(dir.path(), &second);
    assert_eq!(shown(&client).await, hex(&second.der));
}

#[tokio::test]
async fn only_a_kubeconfig_naming_certificate_files_has_files_to_watch() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new();
    let issued = ca.client("someone");
    write_identity(dir.path(), &issued);
    let by_file = config(dir.path(), &ca, 1).await;
    assert_eq!(
        CertFiles::of(&by_file),
        Some(CertFiles {
            cert: dir.path().join("client.crt"),
            key: dir.path().join("client.key"),
        })
    );

    let mut inline = by_file.clone();
    inline.auth_info.client_certificate_data = Some(issued.cert_pem.clone());
    assert_eq!(CertFiles::of(&inline), None, "inline data wins over files");

    let mut token = by_file;
    token.auth_info.client_certificate = None;
    token.auth_info.client_key = None;
    assert_eq!(CertFiles::of(&token), None);
}
