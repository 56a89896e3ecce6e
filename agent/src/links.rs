//! Network interfaces of this namespace and their IPv4 addresses, and
//! their coming and going (rtnetlink link and address notifications).

use std::net::IpAddr;

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkMessage},
    },
    sys::SocketAddr,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LinksError {
    #[error("cannot open an rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot list the interfaces")]
    Dump(#[source] rtnetlink::Error),
    #[error("cannot list the addresses")]
    DumpAddresses(#[source] rtnetlink::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface exists (new, or changed state or name).
    Present {
        index: u32,
        name: String,
    },
    Gone {
        index: u32,
        name: String,
    },
    /// An address (not of host scope, nor an IPv6 link-local one) was
    /// added to an interface.
    AddressAdded {
        index: u32,
        addr: IpAddr,
    },
    AddressRemoved {
        index: u32,
        addr: IpAddr,
    },
}

/// Subscribed to link notifications; `list` then `next` sees every
/// interface, with no gap between the dump and the notifications.
pub struct LinkWatcher {
    handle: Handle,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl LinkWatcher {
    /// Must be called inside a tokio runtime.
    pub fn start() -> Result<Self, LinksError> {
        let (conn, handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv4Ifaddr,
        ])
        .map_err(LinksError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle, messages })
    }

    /// Every interface now.
    pub async fn list(&self) -> Result<Vec<(u32, String)>, LinksError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(LinksError::Dump)?;
        Ok(links.iter().filter_map(name_of).collect())
    }

    /// Every address (as `AddressAdded` has them) now: (ifindex, address),
    /// in the kernel's order (an interface's primary address first).
    pub async fn addresses(&self) -> Result<Vec<(u32, IpAddr)>, LinksError> {
        let addrs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(LinksError::DumpAddresses)?;
        Ok(addrs.iter().filter_map(address_of).collect())
    }

    /// The next change; `None` when the socket closed.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (msg, _) = self.messages.next().await?;
            let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                continue;
            };
            match inner {
                RouteNetlinkMessage::NewLink(link) => {
                    if let Some((index, name)) = name_of(&link) {
                        return Some(LinkEvent::Present { index, name });
                    }
                }
                RouteNetlinkMessage::DelLink(link) => {
                    if let Some((index, name)) = name_of(&link) {
                        return Some(LinkEvent::Gone { index, name });
                    }
                }
                RouteNetlinkMessage::NewAddress(a) => {
                    if let Some((index, addr)) = address_of(&a) {
                        return Some(LinkEvent::AddressAdded { index, addr });
                    }
                }
                RouteNetlinkMessage::DelAddress(a) => {
                    if let Some((index, addr)) = address_of(&a) {
                        return Some(LinkEvent::AddressRemoved { index, addr });
                    }
                }
                _ => {}
            }
        }
    }
}

fn name_of(link: &LinkMessage) -> Option<(u32, String)> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some((link.header.index, name.clone())),
        _ => None,
    })
}

/// The address of an address message, unless it is of host scope
/// (127.0.0.1, `::1`) or an IPv6 link-local one (`fe80::/10`, never a node
/// address to serve on): the local address (`IFA_LOCAL`), not a
/// point-to-point peer.
fn address_of(a: &AddressMessage) -> Option<(u32, IpAddr)> {
    if a.header.scope == AddressScope::Host {
        return None;
    }
    let pick = |local: bool| {
        a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let addr = pick(true).or_else(|| pick(false))?;
    if addr.is_ipv6() && a.header.scope == AddressScope::Link {
        return None;
    }
    Some((a.header.index, addr))
}
