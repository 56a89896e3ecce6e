//! Authentication: x509 client certificates, the static token file,
//! bootstrap tokens and ServiceAccount tokens; then impersonation.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    sync::Arc,
};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::{error::ApiError, store::Store};

pub const GROUP_AUTHENTICATED: &str = "system:authenticated";
pub const GROUP_MASTERS: &str = "system:masters";
pub const LEGACY_SA_ISSUER: &str = "kubernetes/serviceaccount";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Self::default()
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// kube-apiserver's AuthenticatedGroupAdder.
    fn authenticated(mut self) -> Self {
        if !self.in_group(GROUP_AUTHENTICATED) {
            self.groups.push(GROUP_AUTHENTICATED.to_owned());
        }
        self
    }

    /// `(namespace, name)` of a ServiceAccount user.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')
    }
}

pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
    bootstrap: bool,
    sa_keys: Vec<(DecodingKey, Algorithm)>,
    issuer: String,
    store: Arc<Store>,
}

/// Parses a token file: `token,user,uid[,"group1,group2"]` per line.
pub fn read_token_file(path: &Path) -> Result<HashMap<String, UserInfo>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let mut tokens = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record?;
        if record.len() < 3 {
            anyhow::bail!(
                "token file '{}' must have at least 3 columns (token, user name, user uid), found {} on line {}",
                path.display(),
                record.len(),
                line + 1
            );
        }
        let token = record.get(0).unwrap_or_default().trim();
        if token.is_empty() {
            continue;
        }
        let groups = record.get(3).map(|g| {
            g.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        });
        tokens.insert(
            token.to_owned(),
            UserInfo {
                name: record.get(1).unwrap_or_default().to_owned(),
                uid: record.get(2).unwrap_or_default().to_owned(),
                groups: groups.unwrap_or_default(),
                extra: BTreeMap::new(),
            },
        );
    }
    Ok(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secret_data(secret: &Value, key: &str) -> Option<String> {
    let b64 = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

impl Authenticator {
    pub fn new(
        tokens: HashMap<String, UserInfo>,
        bootstrap: bool,
        sa_keys: Vec<(DecodingKey, Algorithm)>,
        issuer: &str,
        store: Arc<Store>,
    ) -> Self {
        Self {
            tokens,
            bootstrap,
            sa_keys,
            issuer: issuer.to_owned(),
            store,
        }
    }

    /// Who sent the request: the client certificate's user, else the bearer
    /// token's; `None` when no credential was presented; 401 when one was
    /// and none of the authenticators accepts it.
    pub fn authenticate(
        &self,
        cert_user: Option<&UserInfo>,
        authorization: Option<&str>,
    ) -> Result<Option<UserInfo>, ApiError> {
        if let Some(user) = cert_user {
            return Ok(Some(user.clone().authenticated()));
        }
        let Some(header) = authorization else {
            return Ok(None);
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        if let Some(user) = self.tokens.get(token) {
            return Ok(Some(user.clone().authenticated()));
        }
        if self.bootstrap
            && let Some(user) = self.bootstrap_token(token)
        {
            return Ok(Some(user.authenticated()));
        }
        if let Some(user) = self.service_account_token(token) {
            return Ok(Some(user.authenticated()));
        }
        Err(ApiError::unauthorized())
    }

    /// Bootstrap tokens (`<id>.<secret>`) from `bootstrap-token-<id>` Secrets
    /// in kube-system, with every check of kube-apiserver's authenticator.
    fn bootstrap_token(&self, token: &str) -> Option<UserInfo> {
        let (id, secret) = token.split_once('.')?;
        let valid = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !valid(id, 6) || !valid(secret, 16) {
            return None;
        }
        let obj = self
            .store
            .get(&format!("core/secrets/kube-system/bootstrap-token-{id}"))?;
        if obj
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|d| !d.is_null())
            || obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token")
        {
            return None;
        }
        let stored = secret_data(&obj, "token-secret")?;
        if !constant_time_eq(stored.as_bytes(), secret.as_bytes())
            || secret_data(&obj, "token-id")? != id
        {
            return None;
        }
        if let Some(expiration) = secret_data(&obj, "expiration") {
            // An unparseable expiration counts as expired.
            let at = time::OffsetDateTime::parse(
                &expiration,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            if at <= time::OffsetDateTime::now_utc() {
                tracing::info!(token_id = id, "rejected an expired bootstrap token");
                return None;
            }
        }
        if secret_data(&obj, "usage-bootstrap-authentication").as_deref() != Some("true") {
            return None;
        }
        let mut groups: BTreeSet<String> = BTreeSet::from(["system:bootstrappers".to_owned()]);
        if let Some(extra) = secret_data(&obj, "auth-extra-groups") {
            for g in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                let rest = g.strip_prefix("system:bootstrappers:")?;
                let ok = !rest.is_empty()
                    && rest.len() <= 256
                    && rest.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-'
                    })
                    && rest
                        .bytes()
                        .last()
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return None;
                }
                groups.insert(g.to_owned());
            }
        }
        Some(UserInfo {
            name: format!("system:bootstrap:{id}"),
            uid: String::new(),
            groups: groups.into_iter().collect(),
            extra: BTreeMap::new(),
        })
    }

    /// ServiceAccount JWTs: legacy (Secret-based) and bound tokens.
    fn service_account_token(&self, token: &str) -> Option<UserInfo> {
        let claims = self.verified_claims(token)?;
        self.service_account_user(token, &claims)
    }

    /// The claims of a ServiceAccount JWT whose signature one of the keys
    /// verifies, with a known issuer, unexpired; nothing else checked.
    pub fn verified_claims(&self, token: &str) -> Option<Value> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        self.sa_keys
            .iter()
            .filter(|(_, alg)| *alg == header.alg)
            .find_map(|(key, alg)| {
                let mut validation = Validation::new(*alg);
                validation.set_issuer(&[LEGACY_SA_ISSUER, self.issuer.as_str()]);
                validation.validate_aud = false;
                validation.required_spec_claims =
                    BTreeSet::from(["iss".to_owned(), "sub".to_owned()])
                        .into_iter()
                        .collect();
                validation.validate_exp = true;
                jsonwebtoken::decode::<Value>(token, key, &validation)
                    .ok()
                    .map(|d| d.claims)
            })
    }

    /// The user of verified ServiceAccount claims, if its account (and, for
    /// a legacy token, its Secret) still holds it.
    fn service_account_user(&self, token: &str, claims: &Value) -> Option<UserInfo> {
        let sub = claims.get("sub")?.as_str()?;
        let (namespace, name) = sub
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')?;
        let sa = self
            .store
            .get(&format!("core/serviceaccounts/{namespace}/{name}"))?;
        let sa_uid = sa.pointer("/metadata/uid")?.as_str()?;
        let (claimed_uid, secret_name) = if claims.get("iss")?.as_str()? == LEGACY_SA_ISSUER {
            (
                claims
                    .get("kubernetes.io/serviceaccount/service-account.uid")?
                    .as_str()?,
                claims
                    .get("kubernetes.io/serviceaccount/secret.name")
                    .and_then(Value::as_str),
            )
        } else {
            (
                claims
                    .pointer("/kubernetes.io/serviceaccount/uid")?
                    .as_str()?,
                None,
            )
        };
        if claimed_uid != sa_uid {
            return None;
        }
        // A legacy token is valid only while its Secret holds it.
        if let Some(secret) = secret_name {
            let obj = self
                .store
                .get(&format!("core/secrets/{namespace}/{secret}"))?;
            if secret_data(&obj, "token").as_deref() != Some(token) {
                return None;
            }
        }
        Some(UserInfo {
            name: sub.to_owned(),
            uid: sa_uid.to_owned(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
            ],
            extra: BTreeMap::new(),
        })
    }
}

/// Impersonation headers (`kubectl --as`, `--as-group`, `--as-uid`).
#[derive(Debug, Default)]
pub struct Impersonation {
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Impersonation {
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        let mut imp = Self::default();
        for (name, value) in headers {
            let Ok(value) = value.to_str() else { continue };
            let name = name.as_str();
            if name.eq_ignore_ascii_case("impersonate-user") {
                imp.user = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("impersonate-group") {
                imp.groups.push(value.to_owned());
            } else if name.eq_ignore_ascii_case("impersonate-uid") {
                imp.uid = Some(value.to_owned());
            } else if let Some(key) = name.strip_prefix("impersonate-extra-") {
                imp.extra
                    .entry(crate::request::decode(key))
                    .or_default()
                    .push(value.to_owned());
            }
        }
        imp
    }

    pub fn is_requested(&self) -> bool {
        self.user.is_some()
            || !self.groups.is_empty()
            || self.uid.is_some()
            || !self.extra.is_empty()
    }

    /// The impersonated user (authorization is the caller's business).
    pub fn user(&self) -> Option<UserInfo> {
        let name = self.user.clone()?;
        let mut groups = self.groups.clone();
        if groups.is_empty()
            && let Some((namespace, _)) = name
                .strip_prefix("system:serviceaccount:")
                .and_then(|r| r.split_once(':'))
        {
            groups = vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ];
        }
        let user = UserInfo {
            name,
            uid: self.uid.clone().unwrap_or_default(),
            groups,
            extra: self.extra.clone(),
        };
        Some(if user.name == "system:anonymous" {
            user
        } else {
            user.authenticated()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn the_seed_token_file_line_parses() {
        let dir = std::env::temp_dir().join(format!("sluice-tokens-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token.csv");
        fs::write(&path, "02b50b05283e98dd0fd71db496ef01e8,kubelet-bootstrap,10001,\"system:kubelet-bootstrap\"\nabc,alice,1,\"a,b\"\n").unwrap();
        let tokens = read_token_file(&path).unwrap();
        let u = &tokens["02b50b05283e98dd0fd71db496ef01e8"];
        assert_eq!(
            (u.name.as_str(), u.uid.as_str()),
            ("kubelet-bootstrap", "10001")
        );
        assert_eq!(u.groups, ["system:kubelet-bootstrap"]);
        assert_eq!(tokens["abc"].groups, ["a", "b"]);
        fs::write(&path, "x,y\n").unwrap();
        assert!(
            read_token_file(&path)
                .unwrap_err()
                .to_string()
                .contains("at least 3 columns")
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
