//! ServiceAccount tokens: legacy (Secret-held, no expiry) and bound
//! (TokenRequest, with audiences and an expiry), signed with the
//! ServiceAccount signing key (RS256, ES256 or ES384).

use jsonwebtoken::Header;
use serde_json::json;

use crate::{App, authn::LEGACY_SA_ISSUER};

pub fn legacy(
    app: &App,
    namespace: &str,
    sa: &str,
    sa_uid: &str,
    secret: &str,
) -> Result<String, String> {
    let claims = json!({
        "iss": LEGACY_SA_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
    });
    jsonwebtoken::encode(&Header::new(app.sa_alg), &claims, &app.sa_key).map_err(|e| e.to_string())
}

pub fn bound(
    app: &App,
    namespace: &str,
    sa: &str,
    sa_uid: &str,
    audiences: &[String],
    seconds: i64,
) -> Result<(String, i64), String> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let audiences = if audiences.is_empty() {
        vec![app.config.service_account_issuer.clone()]
    } else {
        audiences.to_vec()
    };
    let exp = now + seconds;
    let claims = json!({
        "iss": app.config.service_account_issuer,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": sa_uid}},
    });
    let token = jsonwebtoken::encode(&Header::new(app.sa_alg), &claims, &app.sa_key)
        .map_err(|e| e.to_string())?;
    Ok((token, exp))
}
