#![allow(clippy::unwrap_used, reason = "tests: a failure fails the test")]

use std::sync::atomic::AtomicUsize;

use super::*;

/// Answers from fixed tables, counting what it was asked.
#[derive(Default)]
struct Fake {
    /// token → user name.
    tokens: BTreeMap<String, String>,
    /// (user, verb, subresource) allowed.
    allowed: Vec<(String, String, String)>,
    fail: bool,
    token_reviews: AtomicUsize,
    access_reviews: AtomicUsize,
}

impl Reviewer for Fake {
    fn token<'a>(&'a self, token: &'a str) -> Review<'a, Option<User>> {
        self.token_reviews.fetch_add(1, Ordering::Relaxed);
        let answer = if self.fail {
            Err("down".to_owned())
        } else {
            Ok(self.tokens.get(token).map(|name| User {
                name: name.clone(),
                groups: vec!["system:authenticated".into()],
                ..User::default()
            }))
        };
        Box::pin(async move { answer })
    }

    fn access<'a>(
        &'a self,
        user: &'a User,
        node: &'a str,
        verb: &'a str,
        subresource: &'a str,
    ) -> Review<'a, bool> {
        self.access_reviews.fetch_add(1, Ordering::Relaxed);
        let allowed = node == "node-1"
            && self
                .allowed
                .contains(&(user.name.clone(), verb.into(), subresource.into()));
        let answer = if self.fail {
            Err("down".to_owned())
        } else {
            Ok(allowed)
        };
        Box::pin(async move { answer })
    }
}

fn fake(allowed: &[(&str, &str)]) -> Arc<Fake> {
    Arc::new(Fake {
        tokens: BTreeMap::from([("good".into(), "reader".into())]),
        allowed: allowed
            .iter()
            .map(|(u, s)| ((*u).into(), "get".into(), (*s).into()))
            .collect(),
        ..Fake::default()
    })
}

fn guard(fake: &Arc<Fake>, anonymous: bool) -> Guard {
    Guard::new("node-1", anonymous, Arc::clone(fake) as Arc<dyn Reviewer>)
}

fn block<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn cert(name: &str) -> User {
    User {
        name: name.into(),
        groups: vec!["system:authenticated".into()],
        ..User::default()
    }
}

#[test]
fn paths_map_to_the_kubelets_node_subresources() {
    let get = |p| Access::of(&Method::GET, p).subresources;
    assert_eq!(get("/metrics"), ["metrics"]);
    assert_eq!(get("/metrics/cadvisor"), ["metrics"]);
    assert_eq!(get("/healthz"), ["healthz", "proxy"]);
    assert_eq!(get("/status"), ["proxy"]);
    assert_eq!(get("/metricsx"), ["proxy"]);
    assert_eq!(Access::of(&Method::POST, "/status").verb, "create");
    assert_eq!(Access::of(&Method::HEAD, "/metrics").verb, "get");
}

#[test]
fn a_bearer_token_is_reviewed_and_its_user_authorized_per_subresource() {
    let f = fake(&[("reader", "metrics")]);
    let g = guard(&f, false);
    let bearer = Some("Bearer good");
    assert!(matches!(
        block(g.decide(&Method::GET, "/metrics", None, bearer)),
        Decision::Allowed(u) if u.name == "reader"
    ));
    let status = block(g.decide(&Method::GET, "/status", None, bearer));
    assert!(matches!(&status, Decision::Forbidden { user, .. } if user == "reader"));
    assert_eq!(status.refusal("node-1").unwrap().0, StatusCode::FORBIDDEN);
    assert_eq!(
        block(g.decide(&Method::GET, "/metrics", None, Some("Bearer bad"))),
        Decision::Unauthenticated
    );
    assert_eq!(
        block(g.decide(&Method::GET, "/metrics", None, Some("Basic abc"))),
        Decision::Unauthenticated
    );
}

#[test]
fn without_credentials_a_request_is_refused_unless_anonymous_auth_and_then_authorized() {
    let f = fake(&[("system:anonymous", "healthz")]);
    assert_eq!(
        block(guard(&f, false).decide(&Method::GET, "/healthz", None, None)),
        Decision::Unauthenticated
    );
    let g = guard(&f, true);
    assert!(matches!(
        block(g.decide(&Method::GET, "/healthz", None, None)),
        Decision::Allowed(u) if u.name == "system:anonymous"
    ));
    assert!(matches!(
        block(g.decide(&Method::GET, "/metrics", None, None)),
        Decision::Forbidden { .. }
    ));
}

#[test]
fn healthz_falls_back_to_proxy() {
    let f = fake(&[("admin", "proxy")]);
    let g = guard(&f, false);
    assert!(matches!(
        block(g.decide(&Method::GET, "/healthz", Some(cert("admin")), None)),
        Decision::Allowed(_)
    ));
    assert_eq!(f.access_reviews.load(Ordering::Relaxed), 2);
    assert!(matches!(
        block(g.decide(&Method::GET, "/metrics", Some(cert("admin")), None)),
        Decision::Forbidden { .. }
    ));
}

#[test]
fn ten_requests_with_one_credential_make_one_review_of_each_kind() {
    let f = fake(&[("reader", "metrics")]);
    let g = guard(&f, false);
    for _ in 0..10 {
        assert!(matches!(
            block(g.decide(&Method::GET, "/metrics", None, Some("Bearer good"))),
            Decision::Allowed(_)
        ));
    }
    assert_eq!(f.token_reviews.load(Ordering::Relaxed), 1);
    assert_eq!(f.access_reviews.load(Ordering::Relaxed), 1);
    // Denials are kept too, and a refused token.
    for _ in 0..10 {
        block(g.decide(&Method::GET, "/status", None, Some("Bearer good")));
        block(g.decide(&Method::GET, "/status", None, Some("Bearer bad")));
    }
    assert_eq!(f.token_reviews.load(Ordering::Relaxed), 2);
    assert_eq!(f.access_reviews.load(Ordering::Relaxed), 2);
}

#[test]
fn a_failed_review_is_a_500_and_not_kept() {
    let f = Arc::new(Fake {
        fail: true,
        ..Fake::default()
    });
    let g = guard(&f, false);
    for _ in 0..2 {
        let d = block(g.decide(&Method::GET, "/metrics", Some(cert("admin")), None));
        assert_eq!(
            d.refusal("node-1").unwrap().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(f.access_reviews.load(Ordering::Relaxed), 2);
}

#[test]
fn a_cache_drops_expired_then_oldest_entries_when_full() {
    let cache: Cache<u32, u32> = Cache::new();
    for i in 0..u32::try_from(CACHE_ENTRIES).unwrap() {
        cache.put(i, i, Duration::from_secs(60 + u64::from(i)));
    }
    cache.put(u32::MAX, 1, Duration::from_secs(600));
    assert_eq!(cache.get(&0), None, "the oldest went");
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&u32::MAX), Some(1));
    cache.put(7, 7, Duration::ZERO);
    assert_eq!(cache.get(&7), None, "expired");
}
