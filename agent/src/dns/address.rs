//! Makes the DNS address local to this network namespace, as NodeLocal
//! DNSCache does: on a `dummy` interface of its own, or, where the kernel
//! has no dummy driver, on the loopback device. The address stays when the
//! agent stops, so that a restarting agent rebinds at once and pods keep
//! their nameserver.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkDummy, LinkUnspec};
use thiserror::Error;

/// The interface the agent creates for the address.
pub const DUMMY_NAME: &str = "sluice-dns";

#[derive(Debug, Error)]
pub enum AddressError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot find interface `{0}`")]
    NoInterface(&'static str),
    #[error("cannot add {ip} to `{iface}`")]
    Add {
        ip: IpAddr,
        iface: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Where the address ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    Dummy,
    Loopback,
}

/// Adds `ip` (as a host address) to a dummy interface, or to `lo`.
pub async fn ensure(ip: IpAddr) -> Result<Placed, AddressError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(AddressError::Socket)?;
    let conn = tokio::spawn(conn);
    let result = place(&handle, ip).await;
    conn.abort();
    result
}

async fn place(handle: &Handle, ip: IpAddr) -> Result<Placed, AddressError> {
    let (iface, placed) = match index_of(handle, DUMMY_NAME).await {
        Some(_) => (DUMMY_NAME, Placed::Dummy),
        None => match handle
            .link()
            .add(LinkDummy::new(DUMMY_NAME).up().build())
            .execute()
            .await
        {
            Ok(()) => (DUMMY_NAME, Placed::Dummy),
            Err(e) => {
                tracing::info!(
                    "no dummy interface ({e}); the DNS address goes on the loopback device"
                );
                ("lo", Placed::Loopback)
            }
        },
    };
    let index = index_of(handle, iface)
        .await
        .ok_or(AddressError::NoInterface(iface))?;
    let _ = handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await;
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    match handle.address().add(index, ip, prefix).execute().await {
        Ok(()) => Ok(placed),
        // Already there (a restart): fine.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(placed),
        Err(source) => Err(AddressError::Add { ip, iface, source }),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Option<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index)
}
