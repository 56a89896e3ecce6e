//! A local Kubernetes API server for Sluice's development and tests: what
//! kube-apiserver does (plus the kube-controller-manager controllers that
//! matter here) for the resources Sluice uses, judged by what kubectl and
//! kube-rs do with it. See `Config` for the flags.

mod admission;
mod api;
mod authn;
mod config;
mod controllers;
mod error;
mod patch;
mod pki;
mod proto;
mod rbac;
mod request;
mod resources;
mod sa_keys;
mod selectors;
mod server;
mod store;
mod tokens;

use std::{collections::HashMap, fs, net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
pub use config::{Config, parse_duration};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    admission::{IpAllocator, PortAllocator},
    authn::{Authenticator, UserInfo},
    pki::Pki,
    request::ResourceRequest,
    store::Store,
};

/// Admin-only endpoint that drops the watch history, so that every watch
/// resuming from an older resourceVersion gets 410 (as after etcd compaction).
pub const COMPACT_PATH: &str = "/sluice-debug/compact";

/// Everything a request handler or controller needs.
pub struct App {
    pub config: Config,
    pub store: Arc<Store>,
    pub pki: Pki,
    pub authn: Authenticator,
    pub ips: IpAllocator,
    pub node_ports: PortAllocator,
    /// `host:port` clients use.
    pub advertise: String,
    /// Signs ServiceAccount tokens, with this algorithm.
    pub sa_key: jsonwebtoken::EncodingKey,
    pub sa_alg: jsonwebtoken::Algorithm,
    /// Resource requests served, for `/metrics`.
    pub requests: api::RequestCounts,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The identity controllers act as.
pub fn controller_user() -> UserInfo {
    UserInfo::new(
        "system:kube-controller-manager",
        &["system:masters", "system:authenticated"],
    )
}

/// The key that signs ServiceAccount tokens: `--service-account-private-key-file`,
/// else `--tls-private-key-file`, else one made in the data directory
/// (`sa.key`, with `sa.pub`).
fn signing_key(config: &Config) -> Result<sa_keys::SigningKey> {
    let path = match (
        &config.service_account_private_key_file,
        &config.tls_private_key_file,
    ) {
        (Some(path), _) | (None, Some(path)) => path.clone(),
        (None, None) => {
            let path = config.data_dir.join("sa.key");
            if !path.exists() {
                let key = rcgen::KeyPair::generate()?;
                fs::write(&path, key.serialize_pem())?;
                fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                fs::write(config.data_dir.join("sa.pub"), key.public_key_pem())?;
            }
            path
        }
    };
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    sa_keys::signing_key(&text).with_context(|| {
        format!(
            "the ServiceAccount signing key {}: RSA (2048 to 4096 bits) or ECDSA P-256 or P-384, PEM",
            path.display()
        )
    })
}

/// The keys that verify ServiceAccount tokens: every key of every
/// `--service-account-key-file`, else `--tls-private-key-file`'s, else the
/// signing key's public half (kube-apiserver's defaults).
fn verify_keys(config: &Config, signing: &sa_keys::SigningKey) -> Result<Vec<sa_keys::VerifyKey>> {
    let files: Vec<&PathBuf> = if config.service_account_key_file.is_empty() {
        config.tls_private_key_file.iter().collect()
    } else {
        config.service_account_key_file.iter().collect()
    };
    if files.is_empty() {
        return Ok(vec![signing.public.clone()]);
    }
    let mut keys = Vec::new();
    for path in files {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.extend(
            sa_keys::verify_keys(&text)
                .with_context(|| format!("the ServiceAccount key file {}", path.display()))?,
        );
    }
    Ok(keys)
}

pub async fn start(config: Config) -> Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let pki = Pki::load_or_create(&config.data_dir)?;
    let store = Arc::new(Store::open(
        &config.data_dir.join("state.redb"),
        config.watch_history,
    )?);
    let ips = IpAllocator::new(&config.service_cluster_ip_range)?;
    let node_ports = PortAllocator::new(&config.service_node_port_range)?;
    let (services, _) = store.list("core/services/");
    for svc in &services {
        for ip in admission::cluster_ips(svc) {
            let _ = ips.claim(ip);
        }
        for port in admission::node_ports(svc) {
            let _ = node_ports.claim(port);
        }
    }
    let signing = signing_key(&config)?;
    let verify = verify_keys(&config, &signing)?;
    let tokens = match &config.token_auth_file {
        Some(path) => authn::read_token_file(path)?,
        None => HashMap::new(),
    };
    let authn = Authenticator::new(
        tokens,
        config.enable_bootstrap_token_auth,
        verify,
        &config.service_account_issuer,
        store.clone(),
    );

    let listener = tokio::net::TcpListener::bind((config.bind_address, config.secure_port))
        .await
        .with_context(|| format!("binding {}:{}", config.bind_address, config.secure_port))?;
    let addr = listener.local_addr()?;
    let host = if config.bind_address.is_unspecified() {
        "127.0.0.1".parse()?
    } else {
        config.bind_address
    };
    let advertise = SocketAddr::new(host, addr.port()).to_string();

    let serving = write_credentials(&config, &pki, host, ips.first(), &advertise)?;
    let tls = pki.server_tls(&serving)?;

    let data_dir = config.data_dir.clone();
    let app = Arc::new(App {
        config,
        store,
        pki,
        authn,
        ips,
        node_ports,
        advertise,
        sa_key: signing.key,
        sa_alg: signing.alg,
        requests: api::RequestCounts::default(),
    });
    bootstrap(&app)?;

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = controllers::spawn(&app, &stop_rx);
    tasks.push(tokio::spawn(server::serve(
        listener,
        tls,
        app.clone(),
        stop_rx,
    )));
    tracing::info!(%addr, data_dir = %data_dir.display(), "sluice-apiserver is serving");
    Ok(Running {
        addr,
        data_dir,
        stop,
        tasks,
    })
}

/// Issues the serving certificate and the admin kubeconfig into the data
/// directory (both anew at each start; the CA stays).
fn write_credentials(
    config: &Config,
    pki: &Pki,
    host: std::net::IpAddr,
    first_service_ip: std::net::IpAddr,
    advertise: &str,
) -> Result<pki::Issued> {
    let mut serving_ips = vec!["127.0.0.1".parse()?, host, first_service_ip];
    serving_ips.dedup();
    let dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let serving = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(cert), Some(key)) => pki::Issued {
            cert_pem: fs::read_to_string(cert)
                .with_context(|| format!("reading {}", cert.display()))?,
            key_pem: fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?,
        },
        _ => pki.serving_cert(&serving_ips, &dns)?,
    };
    fs::write(config.data_dir.join("apiserver.crt"), &serving.cert_pem)?;
    fs::write(config.data_dir.join("apiserver.key"), &serving.key_pem)?;
    fs::set_permissions(
        config.data_dir.join("apiserver.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    let admin = pki.client_cert("kubernetes-admin", &["system:masters"], year)?;
    let server = format!("https://{advertise}");
    pki::write_kubeconfig(
        &config.data_dir.join("admin.kubeconfig"),
        &server,
        &pki.ca_pem,
        &admin,
        "admin",
    )?;
    Ok(serving)
}

/// Creates `obj` as `resource` unless it exists.
fn ensure(app: &Arc<App>, group: &str, plural: &str, namespace: &str, obj: Value) -> Result<()> {
    let resource = resources::find(group, "v1", plural).context("unknown resource")?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if app
        .store
        .get(&store::object_key(&resource.key_prefix(), namespace, name))
        .is_some()
    {
        return Ok(());
    }
    let rr = ResourceRequest {
        resource,
        namespace: namespace.to_owned(),
        name: None,
        subresource: None,
        verb: "create",
    };
    api::crud::create_object(app, &rr, &HashMap::new(), obj, &controller_user())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// What kube-apiserver creates at start: system namespaces, the default
/// RBAC policy, and the `kubernetes` Service pointing at this server.
fn bootstrap(app: &Arc<App>) -> Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(app, "", "namespaces", "", json!({"metadata": {"name": ns}}))?;
    }
    for obj in rbac::default_policy() {
        let plural = if obj["kind"] == "ClusterRole" {
            "clusterroles"
        } else {
            "clusterrolebindings"
        };
        ensure(app, "rbac.authorization.k8s.io", plural, "", obj)?;
    }
    let (host, port) = app
        .advertise
        .rsplit_once(':')
        .context("advertise address")?;
    ensure(
        app,
        "",
        "services",
        "default",
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": app.ips.first().to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port.parse::<u16>()?}]},
        }),
    )?;
    ensure(
        app,
        "discovery.k8s.io",
        "endpointslices",
        "default",
        json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [host], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port.parse::<u16>()?, "protocol": "TCP"}],
        }),
    )?;
    Ok(())
}
