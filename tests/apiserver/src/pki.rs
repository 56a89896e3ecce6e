//! The cluster CA: created on first start, then kept in the data directory.
//! Issues the serving certificate and client certificates, and signs CSRs.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use time::OffsetDateTime;

pub struct Pki {
    pub ca_pem: String,
    ca_key: KeyPair,
    dir: PathBuf,
}

/// An issued certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

fn write_private(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl Pki {
    /// Loads the CA from `dir`, or creates it.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert_path.exists() && key_path.exists() {
            let ca_pem = fs::read_to_string(&cert_path)?;
            let ca_key =
                KeyPair::from_pem(&fs::read_to_string(&key_path)?).context("parsing ca.key")?;
            return Ok(Self {
                ca_pem,
                ca_key,
                dir: dir.to_path_buf(),
            });
        }
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice-apiserver-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&ca_key)?;
        fs::write(&cert_path, cert.pem())?;
        write_private(&key_path, &ca_key.serialize_pem())?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_key,
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>> {
        Ok(Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?)
    }

    fn issue(&self, mut params: CertificateParams, lifetime: Duration) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate: CN is the user name, O the groups.
    pub fn client_cert(&self, user: &str, groups: &[&str], lifetime: Duration) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, lifetime)
    }

    /// The serving certificate, for the names clients use to reach us.
    pub fn serving_cert(&self, ips: &[IpAddr], dns: &[&str]) -> Result<Issued> {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, Duration::from_secs(365 * 24 * 3600))
    }

    /// Signs a parsed CSR for `ttl`, with key usages from `usages` (the CSR's
    /// `spec.usages`). NotBefore is backdated by 5 minutes, but by no more
    /// than 10% of a short lifetime, so a client's rotation deadline at 70–90%
    /// of the lifetime stays in the future.
    pub fn sign(
        &self,
        csr: &CertificateSigningRequestParams,
        usages: &[String],
        ttl: Duration,
    ) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = csr.params.distinguished_name.clone();
        params
            .subject_alt_names
            .clone_from(&csr.params.subject_alt_names);
        params.is_ca = IsCa::ExplicitNoCa;
        for u in usages {
            match u.as_str() {
                "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => params.key_usages.push(KeyUsagePurpose::ContentCommitment),
                "data encipherment" => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
                "key agreement" => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                "code signing" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::CodeSigning),
                "email protection" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::EmailProtection),
                _ => {}
            }
        }
        let (not_before, not_after) = validity(OffsetDateTime::now_utc(), ttl);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// TLS for the secure port: our serving certificate; client certificates
    /// from the cluster CA are verified, and requests without one are let
    /// through to token authentication.
    pub fn server_tls(&self, serving: &Issued) -> Result<Arc<rustls::ServerConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()?;
        let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The validity window of a certificate signed now for `ttl`.
pub fn validity(now: OffsetDateTime, ttl: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let backdate = Duration::from_secs(300).min(ttl / 10);
    // kube-controller-manager: long certificates end `ttl - backdate` from
    // now, so their lifetime is exactly `ttl`; short ones end at `now + ttl`.
    let end = if ttl >= Duration::from_secs(8 * 3600) {
        now + ttl - backdate
    } else {
        now + ttl
    };
    (now - backdate, end)
}

/// Writes a kubeconfig with a client certificate (admin.kubeconfig).
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client: &Issued,
    user: &str,
) -> Result<()> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sluice", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&client.cert_pem),
            "client-key-data": b64(&client.key_pem),
        }}],
        "contexts": [{"name": "sluice", "context": {"cluster": "sluice", "user": user, "namespace": "default"}}],
        "current-context": "sluice",
    });
    write_private(path, &serde_yaml::to_string(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lifetimes_are_backdated_by_a_tenth_at_most() {
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let (nb, na) = validity(now, Duration::from_secs(30));
        assert_eq!(now - nb, time::Duration::seconds(3));
        assert_eq!(na - now, time::Duration::seconds(30));
        // The 70% rotation deadline of the whole lifetime is still ahead.
        let lifetime = na - nb;
        assert!(nb + lifetime * 0.7 > now);
        let (nb, na) = validity(now, Duration::from_secs(8760 * 3600));
        assert_eq!(now - nb, time::Duration::minutes(5));
        assert_eq!(na - nb, time::Duration::hours(8760));
    }
}
