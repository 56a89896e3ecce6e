//! `RunConfig` from flags and config files: defaults, validation, and
//! the flags laid over the file.

use super::*;

fn services(c: RunConfig) -> ServicesConfig {
    c.services.expect("a Service configuration")
}

fn with_file(yaml: &str, args: Settings) -> Result<RunConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.yaml");
    fs::write(&path, yaml).unwrap();
    RunConfig::from_args(Settings {
        config: Some(path),
        ..args
    })
}

#[test]
fn every_flag_has_a_key_and_flags_win() {
    let c = with_file(
        "manifests: /m\ninterfaces: [veth*, eth0]\nservice-cidr: 10.96.0.0/12\npin-dir: /p\nconntrack-size: 8192\nlog-level: debug\n\
         conntrack-gc-interval: 3\nconntrack-lifetime-syn: 4\nconntrack-lifetime-established: 5\n\
         conntrack-lifetime-closing: 6\nconntrack-lifetime-udp: 7\nconntrack-lifetime-udp-replied: 8\n\
         max-frontends: 1000\nmax-backends: 5000\n",
        Settings::default(),
    )
    .map(services)
    .unwrap();
    assert_eq!(
        (c.dataplane.max_frontends, c.dataplane.max_backends),
        (1000, 5000)
    );
    assert_eq!(c.source, Source::Manifests("/m".into()));
    assert!(
        c.interfaces.matches("veth12")
            && c.interfaces.matches("eth0")
            && !c.interfaces.matches("eth1")
    );
    assert!(c.dataplane.config.in_service_cidr([10, 100, 0, 1]));
    assert_eq!(c.dataplane.pin_dir, PathBuf::from("/p"));
    assert_eq!(c.dataplane.conntrack_size, 8192);
    assert_eq!(
        c.dataplane.conntrack_gc_interval,
        std::time::Duration::from_secs(3)
    );
    let l = c.dataplane.config.lifetimes;
    assert_eq!(
        [
            l.syn_s,
            l.established_s,
            l.closing_s,
            l.other_s,
            l.other_replied_s
        ],
        [4, 5, 6, 7, 8]
    );

    let c = with_file(
        "manifests: /m\ninterfaces: 'veth*'\n",
        Settings {
            manifests: Some("/flag".into()),
            conntrack_size: Some(4096),
            conntrack_lifetime_closing: Some(2),
            ..Settings::default()
        },
    )
    .map(services)
    .unwrap();
    assert_eq!(c.source, Source::Manifests("/flag".into()));
    assert_eq!(c.dataplane.conntrack_size, 4096);
    assert_eq!(c.dataplane.config.lifetimes.closing_s, 2);
    assert_eq!(
        c.dataplane.config.lifetimes.established_s, 21_600,
        "the others keep their defaults"
    );
    assert_eq!(c.dataplane.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
}

#[test]
fn the_deployed_configuration_file_is_valid() {
    let cm = include_str!("../../../manifests/03-configmap.yaml");
    let (_, body) = cm.split_once("sluice.yaml: |\n").unwrap();
    let yaml: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let c = with_file(
        &yaml,
        Settings {
            manifests: Some("/m".into()),
            ..Settings::default()
        },
    )
    .map(services)
    .unwrap();
    assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Auto);
    assert_eq!(c.nodeport_range, (30_000, 32_767));
    assert_eq!(c.dataplane.maglev_size, 16_381);
    assert_eq!(
        c.dataplane.conntrack_size,
        crate::dataplane::conntrack::default_size(),
        "sized from memory"
    );
    assert_eq!(c.dataplane.config.lifetimes, Lifetimes::DEFAULT);
}

#[test]
fn the_tc_attach_path_has_a_key_a_flag_a_default_and_a_check() {
    let c = with_file(
        "manifests: /m\ninterfaces: veth*\ntc-attach: netlink\n",
        Settings::default(),
    )
    .map(services)
    .unwrap();
    assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Netlink);
    let args = |v: Option<&str>| Settings {
        manifests: Some("/m".into()),
        interfaces: Some("veth*".into()),
        tc_attach: v.map(Into::into),
        ..Settings::default()
    };
    let c = services(RunConfig::from_args(args(None)).unwrap());
    assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Auto);
    let c = services(RunConfig::from_args(args(Some("tcx"))).unwrap());
    assert_eq!(c.dataplane.tc_attach, crate::dataplane::TcAttach::Tcx);
    let err = RunConfig::from_args(args(Some("bpf")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tc-attach"), "{err}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one table of bad values")]
fn xdp_settings_have_keys_defaults_and_checks() {
    let c = with_file(
        "manifests: /m\ninterfaces: veth*\nexternal-interfaces: [eth0, bond*]\nxdp-mode: generic\nnodeport-range: 20000-20999\nmaglev-table-size: 65521\n",
        Settings::default(),
    )
    .map(services)
    .unwrap();
    let ext = c.external_interfaces.unwrap();
    assert!(ext.matches("eth0") && ext.matches("bond0") && !ext.matches("veth1"));
    assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Generic);
    assert_eq!(c.nodeport_range, (20_000, 20_999));
    assert_eq!(
        c.snat_ports,
        sluice_abi::config::DEFAULT_SNAT_PORTS,
        "the default SNAT ports"
    );
    assert!(
        c.dataplane.config.in_nodeport_range(20_500)
            && !c.dataplane.config.in_nodeport_range(30_000)
    );
    assert_eq!(c.dataplane.maglev_size, 65_521);
    assert_eq!(
        (c.dataplane.max_frontends, c.dataplane.max_backends),
        (
            sluice_abi::maps::MAX_SERVICES,
            sluice_abi::maps::MAX_BACKENDS
        ),
        "the defaults"
    );

    let args = || Settings {
        manifests: Some("/m".into()),
        interfaces: Some("veth*".into()),
        ..Settings::default()
    };
    let c = services(RunConfig::from_args(args()).unwrap());
    assert!(
        c.external_interfaces.is_none(),
        "default: the node's interfaces"
    );
    assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Auto);
    assert_eq!(c.nodeport_range, DEFAULT_NODEPORT_RANGE);
    assert_eq!(c.dataplane.maglev_size, 16_381);
    let c = services(
        RunConfig::from_args(Settings {
            xdp_mode: Some("tc".into()),
            ..args()
        })
        .unwrap(),
    );
    assert_eq!(c.dataplane.xdp_mode, crate::dataplane::XdpAttach::Tc);
    for (bad, key) in [
        (
            Settings {
                xdp_mode: Some("fast".into()),
                ..args()
            },
            "xdp-mode",
        ),
        (
            Settings {
                nodeport_range: Some("32767-30000".into()),
                ..args()
            },
            "nodeport-range",
        ),
        (
            Settings {
                snat_port_range: Some("32000-33000".into()),
                ..args()
            },
            "snat-port-range",
        ),
        (
            Settings {
                nodeport_range: Some("0-100".into()),
                ..args()
            },
            "nodeport-range",
        ),
        (
            Settings {
                maglev_table_size: Some(16_000),
                ..args()
            },
            "maglev-table-size",
        ),
        (
            Settings {
                maglev_table_size: Some(131),
                ..args()
            },
            "maglev-table-size",
        ),
        (
            Settings {
                max_frontends: Some(8),
                ..args()
            },
            "max-frontends",
        ),
        (
            Settings {
                max_backends: Some(1 << 25),
                ..args()
            },
            "max-backends",
        ),
    ] {
        let err = RunConfig::from_args(bad).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let err = with_file("manifests: /m\nintefaces: eth0\n", Settings::default()).unwrap_err();
    let msg = format!("{err}");
    assert!(msg.contains("unknown field `intefaces`"), "{msg}");
}

#[test]
fn bad_values_are_named() {
    let args = || Settings {
        manifests: Some("/m".into()),
        interfaces: Some("eth0".into()),
        ..Settings::default()
    };
    let err = RunConfig::from_args(Settings {
        service_cidr: Some("10.96.0.0/33".into()),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("service-cidr"));
    // One range per family at most.
    for cidrs in [
        "10.96.0.0/12,10.112.0.0/12",
        "fd00::/108,fd01::/108",
        "10.96.0.0/12,",
    ] {
        let err = RunConfig::from_args(Settings {
            service_cidr: Some(cidrs.into()),
            ..args()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("one of each IP family"),
            "{cidrs}: {err}"
        );
    }
    let both = RunConfig::from_args(Settings {
        service_cidr: Some("10.96.0.0/12, fd00:96::/108".into()),
        ..args()
    })
    .map(services)
    .unwrap();
    let c = both.dataplane.config;
    assert!(c.in_service_cidr([10, 100, 0, 1]));
    assert!(c.in_service_cidr6(sluice_abi::addr::In6::from_octets(
        "fd00:96::a".parse::<std::net::Ipv6Addr>().unwrap().octets()
    )));
    assert!(matches!(
        RunConfig::from_args(Settings {
            kubeconfig: Some("/k".into()),
            ..args()
        }),
        Err(ConfigError::TwoSources)
    ));
    assert!(matches!(
        RunConfig::from_args(Settings {
            interfaces: Some(" , ".into()),
            ..args()
        }),
        Err(ConfigError::NoInterfaces)
    ));
    let err = RunConfig::from_args(Settings {
        conntrack_lifetime_udp: Some(0),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("conntrack-lifetime-udp"), "{err}");
    assert!(matches!(
        RunConfig::from_args(Settings {
            conntrack_size: Some(1000),
            ..args()
        }),
        Err(ConfigError::ConntrackSize)
    ));
}

#[test]
fn series_per_service_are_off_all_or_the_top_n() {
    use crate::status::PerService;
    let per_service = |on: Option<bool>, top: Option<u32>| {
        RunConfig::from_args(Settings {
            manifests: Some("/m".into()),
            interfaces: Some("veth*".into()),
            socket_lb: Some(false),
            metrics_per_service: on,
            metrics_per_service_top: top,
            ..Settings::default()
        })
        .map(|c| c.metrics_per_service)
    };
    assert_eq!(per_service(None, None).unwrap(), PerService::Off);
    assert_eq!(per_service(Some(true), None).unwrap(), PerService::All);
    assert_eq!(
        per_service(Some(true), Some(20)).unwrap(),
        PerService::Top(20)
    );
    assert!(matches!(
        per_service(None, Some(20)),
        Err(ConfigError::TopWithoutPerService)
    ));
    assert!(matches!(
        per_service(Some(true), Some(0)),
        Err(ConfigError::TopZero)
    ));
}

#[test]
fn the_secure_ports_auth_and_tls_settings_are_checked() {
    let args = || Settings {
        cert_dir: Some("/pki".into()),
        node_name: Some("node-1".into()),
        ..Settings::default()
    };
    let c = RunConfig::from_args(args()).unwrap();
    let certs = c.certs.unwrap();
    assert!(
        !certs.anonymous_auth,
        "anonymous requests refused by default"
    );
    assert_eq!(certs.tls, crate::servers::kubelet::TlsPolicy::default());
    let c = RunConfig::from_args(Settings {
        anonymous_auth: Some(true),
        tls_min_version: Some("VersionTLS13".into()),
        tls_cipher_suites: Some(
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256".into(),
        ),
        ..args()
    })
    .unwrap();
    let certs = c.certs.unwrap();
    assert!(certs.anonymous_auth && certs.tls.tls13_only);
    assert_eq!(certs.tls.cipher_suites.len(), 2);
    for (min, suites, needle) in [
        (Some("VersionTLS10"), None, "VersionTLS10 is not offered"),
        (Some("TLS1.3"), None, "unknown TLS version"),
        (
            None,
            Some("TLS_RSA_WITH_RC4_128_SHA"),
            "TLS_RSA_WITH_RC4_128_SHA",
        ),
    ] {
        let err = RunConfig::from_args(Settings {
            tls_min_version: min.map(Into::into),
            tls_cipher_suites: suites.map(Into::into),
            ..args()
        })
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(matches!(
        RunConfig::from_args(Settings {
            manifests: Some("/m".into()),
            interfaces: Some("eth0".into()),
            anonymous_auth: Some(true),
            ..Settings::default()
        }),
        Err(ConfigError::SecurePortWithoutCerts)
    ));
}

#[test]
fn forward_zones_and_the_forwarding_protocol_are_parsed_and_checked() {
    let args = || Settings {
        manifests: Some("/m".into()),
        interfaces: Some("eth0".into()),
        dns_ip: Some("169.254.20.10".parse().unwrap()),
        upstream: Some("10.0.0.1".into()),
        ..Settings::default()
    };
    let c = RunConfig::from_args(Settings {
        forward_zone: Some(vec![
            "corp.example=10.0.0.53,10.0.0.54:5353".into(),
            "Lab.Test.=[fd00::53]:53".into(),
        ]),
        dns_force_tcp: Some(true),
        ..args()
    })
    .unwrap();
    let dns = services(c).dns.unwrap();
    assert_eq!(
        dns.forward_zones,
        vec![
            (
                "corp.example.".to_owned(),
                vec![
                    "10.0.0.53:53".parse().unwrap(),
                    "10.0.0.54:5353".parse().unwrap()
                ]
            ),
            (
                "Lab.Test.".to_owned(),
                vec!["[fd00::53]:53".parse().unwrap()]
            ),
        ]
    );
    assert_eq!(dns.protocol, sluice_dns::forward::Protocol::ForceTcp);
    for bad in [
        "corp.example",
        "=10.0.0.1",
        "corp.example=",
        "corp.example=nohost",
    ] {
        let err = RunConfig::from_args(Settings {
            forward_zone: Some(vec![bad.into()]),
            ..args()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::ForwardZone(_)), "{bad}: {err}");
    }
    assert!(matches!(
        RunConfig::from_args(Settings {
            dns_prefer_udp: Some(true),
            dns_force_tcp: Some(true),
            ..args()
        }),
        Err(ConfigError::DnsProtocols)
    ));
    let c = RunConfig::from_args(args()).unwrap();
    assert_eq!(
        services(c).dns.unwrap().protocol,
        sluice_dns::forward::Protocol::SameAsClient
    );
}

#[test]
fn nodeport_addresses_are_every_address_by_default_or_cidrs_and_primary() {
    let args = || Settings {
        manifests: Some("/m".into()),
        interfaces: Some("eth0".into()),
        ..Settings::default()
    };
    let c = services(RunConfig::from_args(args()).unwrap());
    assert_eq!(
        c.nodeport_addresses,
        crate::external::NodePortAddresses::All
    );
    let c = services(
        RunConfig::from_args(Settings {
            nodeport_addresses: Some("192.168.0.0/16, primary".into()),
            ..args()
        })
        .unwrap(),
    );
    assert_eq!(
        c.nodeport_addresses,
        crate::external::NodePortAddresses::Only {
            cidrs: vec![("192.168.0.0".parse().unwrap(), 16)],
            primary: true
        }
    );
    let err = RunConfig::from_args(Settings {
        nodeport_addresses: Some("eth0".into()),
        ..args()
    })
    .unwrap_err();
    assert!(err.to_string().contains("nodeport-addresses"), "{err}");
}

#[test]
fn dns_ips_are_one_to_three_with_one_ipv6_passed_by_the_dataplane() {
    let with = |ips: &str| {
        RunConfig::from_args(Settings {
            manifests: Some("/m".into()),
            interfaces: Some("eth0".into()),
            dns_ip: Some(ips.parse().unwrap()),
            upstream: Some("10.0.0.1".into()),
            ..Settings::default()
        })
    };
    let c = services(with("169.254.20.10,10.96.0.10,fd00:96::a").unwrap());
    let dp = c.dataplane.config;
    assert!(dp.is_local_ip([169, 254, 20, 10]) && dp.is_local_ip([10, 96, 0, 10]));
    let six: std::net::Ipv6Addr = "fd00:96::a".parse().unwrap();
    assert!(dp.is_local_ip6(six.octets()));
    assert_eq!(c.dns.unwrap().ips.len(), 3);
    for bad in [
        "fd00::1,fd00::2",
        "10.0.0.1,10.0.0.2,10.0.0.3",
        "169.254.20.10,10.96.0.10,fd00::1,fd00::2",
    ] {
        assert!(matches!(with(bad), Err(ConfigError::DnsIp)), "{bad}");
    }
}
