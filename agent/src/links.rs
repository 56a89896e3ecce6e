//! Network interfaces of this namespace, and their coming and going
//! (rtnetlink link notifications).

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
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
        let (conn, handle, messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
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
