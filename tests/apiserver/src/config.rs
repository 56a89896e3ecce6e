//! Flags, named after kube-apiserver's (and kube-controller-manager's) where
//! one exists.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-apiserver",
    about = "A local Kubernetes API server for development and tests"
)]
pub struct Config {
    /// Where state, the CA, keys and kubeconfigs live; survives restarts.
    #[arg(long, default_value = "apiserver-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,
    /// ClusterIPs are allocated from this range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,
    /// NodePorts are allocated from this range (`MIN-MAX`).
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Static tokens: `token,user,uid,"group1,group2"` per line.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// Keys that verify ServiceAccount tokens: every PEM key of the file
    /// (public or private keys, certificates); repeatable, so keys rotate.
    /// Default: `--tls-private-key-file`, else the signing key's public half.
    #[arg(long)]
    pub service_account_key_file: Vec<PathBuf>,
    /// The key that signs ServiceAccount tokens (RSA of 2048 to 4096 bits,
    /// or ECDSA P-256 or P-384; PEM). Default: `--tls-private-key-file`,
    /// else a key made in the data directory.
    #[arg(long)]
    pub service_account_private_key_file: Option<PathBuf>,
    /// The serving certificate (PEM, with its chain). Default: one signed by
    /// the cluster CA for the server's names, made at start.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key; also the ServiceAccount key when no
    /// other is given, as kube-apiserver's.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub service_account_issuer: String,
    /// Lifetime of signed certificates (Go duration). Unlike
    /// kube-controller-manager, durations under 10 minutes are accepted.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    pub cluster_signing_duration: Duration,
    #[arg(long)]
    pub enable_bootstrap_token_auth: bool,
    /// Auto-approve kubelet-serving CSRs whose requester may create
    /// `certificatesigningrequests/selfnodeserver` (pre-1.11 behaviour).
    #[arg(long)]
    pub approve_kubelet_serving: bool,
    /// How often open watches get a BOOKMARK (with `allowWatchBookmarks`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub watch_bookmark_interval: Duration,
    /// Watch events kept for resuming watches; older resourceVersions get 410.
    #[arg(long, default_value_t = 10_000)]
    pub watch_history: usize,
}

/// Parses a Go duration such as `8760h`, `1h30m`, `30s` or `10m0s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as 8760h, 10m or 30s");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_duration("8760h").unwrap(),
            Duration::from_secs(8760 * 3600)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("10m0s").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("h").is_err());
    }
}
