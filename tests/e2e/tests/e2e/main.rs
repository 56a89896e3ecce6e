//! Sluice's privileged tests in one binary (as aya's integration tests
//! are): packet tests through BPF_PROG_TEST_RUN (`packet`, `xdp`, sharing
//! `packet::harness`) and end-to-end tests in network namespaces, a module
//! per concern, with the lab helpers of `common`. `cargo xtask test` runs
//! them as root, one thread; `cargo test -p sluice-e2e --test e2e clusterip::`
//! runs one module.

mod common;

mod apiserver;
mod bulk;
mod certs;
mod claims;
mod cluster;
mod clusterip;
mod conntrack;
mod dns;
mod dns_fairness;
mod dns_parity;
mod dual_stack;
mod fragments;
mod hairpin;
mod icmp;
mod ipv6_edge;
mod ipv6_tc;
mod lifecycle;
mod nodeport;
mod packet;
mod parity;
mod policy;
mod sa_keys;
mod secure_port;
mod socketlb;
mod topology;
mod xdp;
