//! The lab's certificates: one CA, the API server's serving certificate, the service-account
//! signing key, and a client certificate per identity, plus the kubeconfigs that use them.
//! Throwaway by design: it all lives in the lab's directory and goes with `down`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// An identity that gets a client certificate: the API server reads the user from CN and the
/// groups from O.
#[derive(Debug, Clone)]
pub struct Client {
    /// File stem and kubeconfig name.
    pub file: String,
    pub user: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("service-account.key")
    }
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.join("service-account.pub")
    }
    pub fn kubeconfig(&self, client: &str) -> PathBuf {
        self.dir.join(format!("{client}.kubeconfig"))
    }

    /// Makes every key and certificate; `server` names the addresses and names the API server
    /// answers on.
    pub fn create(dir: &Path, server_ips: &[IpAddr], clients: &[Client]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Self {
            dir: dir.to_path_buf(),
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "skein-lab CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        write_private(&pki.ca_key(), &ca_key.serialize_pem())?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        std::fs::write(pki.ca_cert(), ca.pem())?;

        let mut names: Vec<SanType> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ]
        .into_iter()
        .map(|n| SanType::DnsName(n.try_into().expect("valid DNS name")))
        .collect();
        names.extend(server_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut serving = CertificateParams::new(Vec::<String>::new())?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names = names;
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        std::fs::write(pki.serving_cert(), serving.signed_by(&key, &ca)?.pem())?;
        write_private(&pki.serving_key(), &key.serialize_pem())?;

        let sa = KeyPair::generate()?;
        write_private(&pki.service_account_key(), &sa.serialize_pem())?;
        std::fs::write(pki.service_account_public_key(), sa.public_key_pem())?;

        for client in clients {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, client.user.clone());
            for group in &client.groups {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, group.clone());
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            std::fs::write(
                pki.dir.join(format!("{}.crt", client.file)),
                params.signed_by(&key, &ca)?.pem(),
            )?;
            write_private(
                &pki.dir.join(format!("{}.key", client.file)),
                &key.serialize_pem(),
            )?;
        }
        Ok(pki)
    }

    /// A kubeconfig for `client` (made by [`Pki::create`]) that reaches the API at `server`.
    pub fn write_kubeconfig(&self, client: &str, server: &str) -> anyhow::Result<PathBuf> {
        let path = self.kubeconfig(client);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skein-lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {client}\n  user:\n    client-certificate: {dir}/{client}.crt\n    client-key: {dir}/{client}.key\ncontexts:\n- name: skein-lab\n  context:\n    cluster: skein-lab\n    user: {client}\ncurrent-context: skein-lab\n",
            ca = self.ca_cert().display(),
            dir = self.dir.display(),
        );
        write_private(&path, &text)?;
        Ok(path)
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
