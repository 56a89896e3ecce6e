//! ServiceAccount token keys, as kube-apiserver and kube-controller-manager
//! take them: RSA (2048 to 4096 bits, signed RS256) and ECDSA (P-256 as
//! ES256, P-384 as ES384), in any of the PEM forms `openssl` and kubeadm
//! write.
//!
//! - The signing key (`--service-account-private-key-file`): PKCS#1
//!   (`RSA PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`) or SEC1
//!   (`EC PRIVATE KEY`, with or without an `EC PARAMETERS` block before it).
//! - Verification keys (`--service-account-key-file`, repeatable): every
//!   PEM block of every file, public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`),
//!   private keys (their public half) and certificates (their key), so that
//!   keys can rotate with old and new in one file.

use anyhow::{Context as _, Result, bail};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _, EncodeRsaPrivateKey as _},
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        LineEnding,
    },
    traits::PublicKeyParts as _,
};

/// A key that verifies tokens.
pub type VerifyKey = (DecodingKey, Algorithm);

/// The key that signs tokens.
pub struct SigningKey {
    pub key: EncodingKey,
    pub alg: Algorithm,
    /// Its public half.
    pub public: VerifyKey,
}

/// One public key, of a kind tokens are signed with.
enum Public {
    Rsa(RsaPublicKey),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

impl Public {
    /// From `SubjectPublicKeyInfo` DER.
    fn from_spki(der: &[u8]) -> Result<Self> {
        if let Ok(k) = RsaPublicKey::from_public_key_der(der) {
            return Ok(Self::Rsa(k));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::PublicKey::from_public_key_der(der) {
            return Ok(Self::P384(k));
        }
        bail!("a public key that is neither RSA nor ECDSA P-256 or P-384")
    }

    fn verify_key(&self) -> Result<VerifyKey> {
        Ok(match self {
            Self::Rsa(k) => {
                check_rsa_size(k.size() * 8)?;
                let pem = k.to_public_key_pem(LineEnding::LF)?;
                (DecodingKey::from_rsa_pem(pem.as_bytes())?, Algorithm::RS256)
            }
            Self::P256(k) => (
                DecodingKey::from_ec_pem(k.to_public_key_pem(LineEnding::LF)?.as_bytes())?,
                Algorithm::ES256,
            ),
            Self::P384(k) => (
                DecodingKey::from_ec_pem(k.to_public_key_pem(LineEnding::LF)?.as_bytes())?,
                Algorithm::ES384,
            ),
        })
    }
}

fn check_rsa_size(bits: usize) -> Result<()> {
    if !(2048..=4096).contains(&bits) {
        bail!("an RSA key of {bits} bits: 2048 to 4096 are accepted");
    }
    Ok(())
}

/// A private key from one PEM block: signing, and its public half.
fn private(block: &pem::Pem) -> Result<Option<SigningKey>> {
    let der = block.contents();
    let rsa = match block.tag() {
        "RSA PRIVATE KEY" => Some(RsaPrivateKey::from_pkcs1_der(der)?),
        "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_der(der).ok(),
        _ => None,
    };
    if let Some(k) = rsa {
        check_rsa_size(k.size() * 8)?;
        let pem = k.to_pkcs1_pem(LineEnding::LF)?;
        return Ok(Some(SigningKey {
            key: EncodingKey::from_rsa_pem(pem.as_bytes())?,
            alg: Algorithm::RS256,
            public: Public::Rsa(k.to_public_key()).verify_key()?,
        }));
    }
    let (p256, p384) = match block.tag() {
        "EC PRIVATE KEY" => (
            p256::SecretKey::from_sec1_der(der).ok(),
            p384::SecretKey::from_sec1_der(der).ok(),
        ),
        "PRIVATE KEY" => (
            p256::SecretKey::from_pkcs8_der(der).ok(),
            p384::SecretKey::from_pkcs8_der(der).ok(),
        ),
        _ => return Ok(None),
    };
    if let Some(k) = p256 {
        let pem = k.to_pkcs8_pem(LineEnding::LF)?;
        return Ok(Some(SigningKey {
            key: EncodingKey::from_ec_pem(pem.as_bytes())?,
            alg: Algorithm::ES256,
            public: Public::P256(k.public_key()).verify_key()?,
        }));
    }
    if let Some(k) = p384 {
        let pem = k.to_pkcs8_pem(LineEnding::LF)?;
        return Ok(Some(SigningKey {
            key: EncodingKey::from_ec_pem(pem.as_bytes())?,
            alg: Algorithm::ES384,
            public: Public::P384(k.public_key()).verify_key()?,
        }));
    }
    bail!("a private key that is neither RSA nor ECDSA P-256 or P-384")
}

/// The signing key in `text` (the first private key; other blocks, such as
/// `EC PARAMETERS`, are passed over).
pub fn signing_key(text: &str) -> Result<SigningKey> {
    let blocks = pem::parse_many(text).context("not PEM")?;
    for block in &blocks {
        if let Some(key) = private(block)? {
            return Ok(key);
        }
    }
    bail!("no private key (RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)")
}

/// Every verification key in `text`.
pub fn verify_keys(text: &str) -> Result<Vec<VerifyKey>> {
    let blocks = pem::parse_many(text).context("not PEM")?;
    let mut keys = Vec::new();
    for block in &blocks {
        let key = match block.tag() {
            "PUBLIC KEY" => Public::from_spki(block.contents())?.verify_key()?,
            "RSA PUBLIC KEY" => {
                Public::Rsa(RsaPublicKey::from_pkcs1_der(block.contents())?).verify_key()?
            }
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
                    .map_err(|e| anyhow::anyhow!("a certificate: {e}"))?;
                Public::from_spki(cert.public_key().raw)?.verify_key()?
            }
            _ => match private(block)? {
                Some(k) => k.public,
                None => continue,
            },
        };
        keys.push(key);
    }
    if keys.is_empty() {
        bail!("no key (PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE or a private key)");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

    use jsonwebtoken::{Header, Validation};

    use super::*;

    /// Signs with `private` and verifies with every key of `public`.
    fn round_trip(private: &str, public: &str) -> Algorithm {
        let signing = signing_key(private).unwrap();
        let claims = serde_json::json!({"sub": "x", "iss": "i"});
        let token = jsonwebtoken::encode(&Header::new(signing.alg), &claims, &signing.key).unwrap();
        let keys = verify_keys(public).unwrap();
        let mut validation = Validation::new(signing.alg);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        assert!(
            keys.iter()
                .filter(|(_, alg)| *alg == signing.alg)
                .any(
                    |(k, _)| jsonwebtoken::decode::<serde_json::Value>(&token, k, &validation)
                        .is_ok()
                ),
            "signed with {:?}, not verified",
            signing.alg
        );
        signing.alg
    }

    #[test]
    fn rsa_and_ecdsa_keys_in_every_pem_form_sign_and_verify() {
        let rsa = RsaPrivateKey::new(&mut rand_core(), 2048).unwrap();
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let pkcs8 = rsa.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let public = rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(round_trip(&pkcs1, &public), Algorithm::RS256);
        assert_eq!(round_trip(&pkcs8, &pkcs1), Algorithm::RS256);

        let ec = p256::SecretKey::random(&mut rand_core());
        let sec1 = ec.to_sec1_pem(LineEnding::LF).unwrap().to_string();
        // As `openssl ecparam -genkey` writes it: parameters first.
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{sec1}"
        );
        let ec_public = ec.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(round_trip(&with_params, &ec_public), Algorithm::ES256);
        let p384 = p384::SecretKey::random(&mut rand_core());
        let p384_pem = p384.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        assert_eq!(round_trip(&p384_pem, &p384_pem), Algorithm::ES384);

        // One file of several keys: any of them verifies.
        let both = format!("{ec_public}{public}");
        assert_eq!(verify_keys(&both).unwrap().len(), 2);
        assert_eq!(round_trip(&pkcs1, &both), Algorithm::RS256);
        assert_eq!(round_trip(&sec1, &both), Algorithm::ES256);
    }

    #[test]
    fn small_rsa_keys_and_other_blocks_are_refused() {
        let small = RsaPrivateKey::new(&mut rand_core(), 1024).unwrap();
        let pem = small.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let err = signing_key(&pem).err().unwrap().to_string();
        assert!(err.contains("1024 bits"), "{err}");
        assert!(verify_keys("-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n").is_err());
        assert!(signing_key("not pem").is_err());
    }

    fn rand_core() -> rsa::rand_core::OsRng {
        rsa::rand_core::OsRng
    }
}
