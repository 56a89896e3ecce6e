//! Who may ask the secure port what, decided as the kubelet decides it
//! (`--authentication-token-webhook`, `--authorization-mode=Webhook`):
//!
//! - **Authentication.** A client certificate of the client CA is its
//!   subject's common name, with its organizations as groups; else a
//!   bearer token is sent to the API server in a TokenReview; else the
//!   request is anonymous: `system:anonymous` with `--anonymous-auth=true`,
//!   401 without. A credential that does not authenticate gets 401.
//! - **Authorization.** A SubjectAccessReview for the user on this node's
//!   Node object: the verb from the method (`GET` is `get`), the
//!   subresource from the path. `/metrics` is `nodes/metrics`; `/healthz`
//!   is `nodes/healthz`, else `nodes/proxy` (KubeletFineGrainedAuthz);
//!   everything else is `nodes/proxy`. A denial is 403, a review that
//!   fails 500.
//! - **Caching.** Tokens are kept 2 min once authenticated and 10 s once
//!   refused; decisions 5 min when allowed and 30 s when denied (the
//!   kubelet's defaults). A failed review is not kept.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    hash::Hash,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Method, StatusCode};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};

/// How long an authenticated token is trusted without asking again.
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// How long a refused token is refused without asking again.
pub const TOKEN_REFUSED_TTL: Duration = Duration::from_secs(10);
/// How long an allowed decision is kept.
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// How long a denied decision is kept.
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Entries per cache; past it, expired entries go, then the oldest.
const CACHE_ENTRIES: usize = 4096;

/// An authenticated user, as a SubjectAccessReview names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// The user of a client certificate: CN, and O as groups.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::FromDer as _;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        groups.push("system:authenticated".into());
        Some(Self {
            name,
            groups,
            ..Self::default()
        })
    }

    fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Self::default()
        }
    }
}

/// What a request asks of the Node object: a verb and, in order of
/// preference, the subresources that would allow it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    pub verb: &'static str,
    pub subresources: &'static [&'static str],
}

impl Access {
    /// The kubelet's mapping of a request to `nodes/<subresource>`.
    pub fn of(method: &Method, path: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        };
        let under = |prefix: &str| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let subresources: &'static [&'static str] = if under("/metrics") {
            &["metrics"]
        } else if under("/healthz") {
            &["healthz", "proxy"]
        } else {
            &["proxy"]
        };
        Self { verb, subresources }
    }
}

/// The answer to a request's credentials and path.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed(User),
    /// No credential (anonymous requests refused), or one that does not
    /// authenticate.
    Unauthenticated,
    Forbidden {
        user: String,
        access: Access,
    },
    /// A review could not be made.
    Failed(String),
}

impl Decision {
    /// The status and body of a refusal, in the kubelet's words.
    pub fn refusal(&self, node: &str) -> Option<(StatusCode, String)> {
        match self {
            Self::Allowed(_) => None,
            Self::Unauthenticated => Some((StatusCode::UNAUTHORIZED, "Unauthorized".into())),
            Self::Forbidden { user, access } => Some((
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={user}, verb={}, resource=nodes, subresource={}, node={node})",
                    access.verb,
                    access.subresources.join("|"),
                ),
            )),
            Self::Failed(_) => Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                "Authorization error".into(),
            )),
        }
    }
}

pub type Review<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Asks the API server: who a token is, and whether a user may.
pub trait Reviewer: Send + Sync {
    /// `None`: the token does not authenticate.
    fn token<'a>(&'a self, token: &'a str) -> Review<'a, Option<User>>;
    fn access<'a>(
        &'a self,
        user: &'a User,
        node: &'a str,
        verb: &'a str,
        subresource: &'a str,
    ) -> Review<'a, bool>;
}

/// A cache of answers, each kept for its own time.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
        }
        if entries.len() >= CACHE_ENTRIES
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, (value, now + ttl));
    }
}

/// Reviews asked of the API server and answered from the caches, for
/// `/metrics`.
#[derive(Debug, Default)]
pub struct ReviewCounts {
    pub token_reviews: AtomicU64,
    pub access_reviews: AtomicU64,
    pub cached: AtomicU64,
    pub failed: AtomicU64,
}

/// Authentication and authorization of the secure port.
pub struct Guard {
    node: String,
    anonymous: bool,
    reviewer: Arc<dyn Reviewer>,
    /// SHA-256 of a token → its user (`None`: refused).
    tokens: Cache<[u8; 32], Option<User>>,
    decisions: Cache<(User, Access), bool>,
    pub counts: ReviewCounts,
}

impl Guard {
    pub fn new(node: &str, anonymous: bool, reviewer: Arc<dyn Reviewer>) -> Self {
        Self {
            node: node.to_owned(),
            anonymous,
            reviewer,
            tokens: Cache::new(),
            decisions: Cache::new(),
            counts: ReviewCounts::default(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Decides one request: `certificate` is the verified client
    /// certificate's user, `authorization` the `Authorization` header.
    pub async fn decide(
        &self,
        method: &Method,
        path: &str,
        certificate: Option<User>,
        authorization: Option<&str>,
    ) -> Decision {
        let user = match self.authenticate(certificate, authorization).await {
            Ok(Some(user)) => user,
            Ok(None) => return Decision::Unauthenticated,
            Err(e) => return Decision::Failed(e),
        };
        let access = Access::of(method, path);
        match self.authorize(&user, &access).await {
            Ok(true) => Decision::Allowed(user),
            Ok(false) => Decision::Forbidden {
                user: user.name,
                access,
            },
            Err(e) => Decision::Failed(e),
        }
    }

    async fn authenticate(
        &self,
        certificate: Option<User>,
        authorization: Option<&str>,
    ) -> Result<Option<User>, String> {
        if let Some(user) = certificate {
            return Ok(Some(user));
        }
        let Some(header) = authorization else {
            return Ok(self.anonymous.then(User::anonymous));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        if let Some(known) = self.tokens.get(&key) {
            self.counts.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(known);
        }
        self.counts.token_reviews.fetch_add(1, Ordering::Relaxed);
        let user = self.reviewer.token(token).await.inspect_err(|_| {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        })?;
        let ttl = if user.is_some() {
            TOKEN_TTL
        } else {
            TOKEN_REFUSED_TTL
        };
        self.tokens.put(key, user.clone(), ttl);
        Ok(user)
    }

    /// Allowed if any of the access's subresources is.
    async fn authorize(&self, user: &User, access: &Access) -> Result<bool, String> {
        let key = (user.clone(), access.clone());
        if let Some(allowed) = self.decisions.get(&key) {
            self.counts.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(allowed);
        }
        let mut allowed = false;
        for sub in access.subresources {
            self.counts.access_reviews.fetch_add(1, Ordering::Relaxed);
            allowed = self
                .reviewer
                .access(user, &self.node, access.verb, sub)
                .await
                .inspect_err(|_| {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                })?;
            if allowed {
                break;
            }
        }
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.put(key, allowed, ttl);
        Ok(allowed)
    }
}

/// The API server, asked with the node's own credentials (the kubelet
/// kubeconfig, whose client certificate rotates): a client is made again
/// when the certificate it was made with is no longer current.
pub struct ApiReviewer {
    kubeconfig: PathBuf,
    /// The current client certificate's link (`kubelet-client-current.pem`).
    credentials: PathBuf,
    client: tokio::sync::Mutex<Option<(Option<PathBuf>, kube::Client)>>,
}

impl ApiReviewer {
    pub fn new(kubeconfig: PathBuf, credentials: PathBuf) -> Self {
        Self {
            kubeconfig,
            credentials,
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<kube::Client, String> {
        let using = std::fs::read_link(&self.credentials).ok();
        let mut cached = self.client.lock().await;
        if let Some((made_with, client)) = cached.as_ref()
            && *made_with == using
        {
            return Ok(client.clone());
        }
        let client = crate::source::apiserver::client_from_kubeconfig(&self.kubeconfig)
            .await
            .map_err(|e| format!("the kubelet kubeconfig: {e}"))?;
        *cached = Some((using, client.clone()));
        Ok(client)
    }
}

impl Reviewer for ApiReviewer {
    fn token<'a>(&'a self, token: &'a str) -> Review<'a, Option<User>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = Api::<TokenReview>::all(self.client().await?)
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            let info = status.user.unwrap_or_default();
            Ok(Some(User {
                name: info.username.unwrap_or_default(),
                uid: info.uid.unwrap_or_default(),
                groups: info.groups.unwrap_or_default(),
                extra: info.extra.unwrap_or_default().into_iter().collect(),
            }))
        })
    }

    fn access<'a>(
        &'a self,
        user: &'a User,
        node: &'a str,
        verb: &'a str,
        subresource: &'a str,
    ) -> Review<'a, bool> {
        Box::pin(async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name.clone()),
                    uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                    groups: Some(user.groups.clone()),
                    extra: (!user.extra.is_empty())
                        .then(|| user.extra.clone().into_iter().collect()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_owned()),
                        group: Some(String::new()),
                        version: Some("v1".into()),
                        resource: Some("nodes".into()),
                        subresource: Some(subresource.to_owned()),
                        name: Some(node.to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let answer = Api::<SubjectAccessReview>::all(self.client().await?)
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    }
}

#[cfg(test)]
mod tests;
