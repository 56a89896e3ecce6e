//! The kubelet's certificate files, laid out as client-go's file store
//! lays them out: `<prefix>-<timestamp>.pem` (the certificate chain, then
//! the key; mode 0600) per certificate, and the `<prefix>-current.pem`
//! symlink to the one in use, swapped atomically through
//! `<prefix>-updated.pem` and a rename.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use thiserror::Error;
use x509_parser::prelude::{FromDer as _, X509Certificate};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A certificate chain and its private key, as PEM, with what the agent
/// needs to know of the leaf.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf: Leaf,
}

/// What matters of a certificate for rotation and reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub subject_cn: String,
    /// DNS names and IP addresses, as strings.
    pub sans: Vec<String>,
}

impl Leaf {
    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The first certificate of a PEM chain.
pub fn parse_leaf(cert_pem: &str) -> Result<Leaf, String> {
    let block = pem_blocks(cert_pem)
        .into_iter()
        .find(|(tag, _)| tag == "CERTIFICATE")
        .ok_or("no CERTIFICATE block")?;
    let (_, cert) =
        X509Certificate::from_der(&block.1).map_err(|e| format!("not a certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    };
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Leaf {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        serial: cert.raw_serial_as_string().replace(':', ""),
        subject_cn,
        sans,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(v4.into());
    }
    <[u8; 16]>::try_from(bytes).ok().map(Into::into)
}

/// `(tag, contents)` of each PEM block.
fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    pem::parse_many(text)
        .map(|blocks| {
            blocks
                .into_iter()
                .map(|p| (p.tag().to_owned(), p.into_contents()))
                .collect()
        })
        .unwrap_or_default()
}

/// The files of one certificate (`kubelet-client`, `kubelet-server`).
pub struct FileStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl FileStore {
    pub fn new(dir: &Path, prefix: &'static str) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix,
        }
    }

    /// `<dir>/<prefix>-current.pem`: what a kubeconfig points at.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    fn updated_path(&self) -> PathBuf {
        self.dir.join(format!("{}-updated.pem", self.prefix))
    }

    /// Finishes a swap that a crash interrupted: an `updated` link with no
    /// `current` becomes `current`.
    pub fn recover(&self) -> Result<(), StoreError> {
        let (current, updated) = (self.current_path(), self.updated_path());
        if fs::symlink_metadata(&current).is_err() && fs::symlink_metadata(&updated).is_ok() {
            fs::rename(&updated, &current).map_err(io(&current))?;
        }
        Ok(())
    }

    /// The certificate in use: `None` when there is none yet; an error when
    /// the file is there but unreadable, or holds no valid pair.
    pub fn current(&self) -> Result<Option<Pair>, StoreError> {
        let path = self.current_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let invalid = |what: String| StoreError::Invalid {
            path: path.clone(),
            what,
        };
        let blocks = pem_blocks(&text);
        let cert_pem: String = blocks
            .iter()
            .filter(|(tag, _)| tag == "CERTIFICATE")
            .map(|(tag, der)| pem::encode(&pem::Pem::new(tag.clone(), der.clone())))
            .collect();
        let key_pem = blocks
            .iter()
            .find(|(tag, _)| tag.ends_with("PRIVATE KEY"))
            .map(|(tag, der)| pem::encode(&pem::Pem::new(tag.clone(), der.clone())))
            .ok_or_else(|| invalid("no private key".into()))?;
        let leaf = parse_leaf(&cert_pem).map_err(invalid)?;
        // The key must be the certificate's: a half-written or mixed-up
        // file is as bad as none.
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(format!("unreadable private key: {e}")))?;
        if !cert_matches_key(&cert_pem, &key) {
            return Err(invalid(
                "the private key does not match the certificate".into(),
            ));
        }
        Ok(Some(Pair {
            cert_pem,
            key_pem,
            leaf,
        }))
    }

    /// The certificate in use if it is valid at `now`: an interrupted swap
    /// finished first, and an unreadable file logged and treated as none.
    pub fn usable(&self, now: SystemTime) -> Option<Pair> {
        if let Err(e) = self.recover() {
            tracing::warn!("{} store: {e}", self.prefix);
        }
        let current = self.current().unwrap_or_else(|e| {
            tracing::error!("{} certificate unusable: {e}", self.prefix);
            None
        });
        current.filter(|p| !p.leaf.expired(now))
    }

    /// Writes `cert_pem` + `key_pem` as a new timestamped file (0600,
    /// synced) and makes it current atomically. Returns the new file.
    pub fn update(&self, cert_pem: &str, key_pem: &str) -> Result<PathBuf, StoreError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let stamp = time::OffsetDateTime::now_utc();
        let name = format!(
            "{}-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
            self.prefix,
            stamp.year(),
            u8::from(stamp.month()),
            stamp.day(),
            stamp.hour(),
            stamp.minute(),
            stamp.second()
        );
        let mut file_path = self.dir.join(name);
        // Two rotations within a second (tests): never overwrite in place.
        let mut n = 0;
        while file_path.exists() && n < 100 {
            n += 1;
            file_path = self.dir.join(format!(
                "{}.{n}.pem",
                file_path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(self.prefix)
            ));
        }
        write_private(
            &file_path,
            &format!("{}{}", ensure_newline(cert_pem), key_pem),
        )?;
        let absolute = fs::canonicalize(&file_path).map_err(io(&file_path))?;
        let updated = self.updated_path();
        let _ = fs::remove_file(&updated);
        std::os::unix::fs::symlink(&absolute, &updated).map_err(io(&updated))?;
        let current = self.current_path();
        if fs::symlink_metadata(&current).is_ok_and(|m| m.is_file()) {
            return Err(StoreError::Invalid {
                path: current,
                what: "is a regular file, not the symlink this store manages".into(),
            });
        }
        fs::rename(&updated, &current).map_err(io(&current))?;
        Ok(absolute)
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

/// Writes a file only its owner may read (0600), synced to disk.
pub fn write_private(path: &Path, contents: &str) -> Result<(), StoreError> {
    let tmp = path.with_extension("writing");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // A file that existed keeps its mode through `open`: set it.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// Whether the leaf certificate carries `key`'s public key.
fn cert_matches_key(cert_pem: &str, key: &rcgen::KeyPair) -> bool {
    let Some((_, der)) = pem_blocks(cert_pem)
        .into_iter()
        .find(|(tag, _)| tag == "CERTIFICATE")
    else {
        return false;
    };
    X509Certificate::from_der(&der).is_ok_and(|(_, cert)| {
        cert.public_key().subject_public_key.data.as_ref() == rcgen::PublicKeyData::der_bytes(key)
    })
}

#[cfg(test)]
mod tests;
