//! Sluice's cluster DNS server, independent of where its data comes from:
//! the cluster zone (what each Service publishes, per the Kubernetes
//! DNS-Based Service Discovery specification), one query in and one answer
//! out, forwarding with a cache, the UDP and TCP listeners, and metrics.
//! The agent fills the zone from its model.

pub mod clients;
pub mod forward;
pub mod memo;
pub mod metrics;
pub mod respond;
pub mod server;
pub mod zone;

#[cfg(test)]
mod fixture;
