//! The kernel's notifications of link, address and route changes in this network namespace
//! (rtnetlink multicast groups), distilled to what a part needs to decide whether to look again.

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteAttribute;

use crate::{PodNetError, link_name};

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared, changed or went (`removed`); `controller` is its bridge, if any.
    Link {
        index: u32,
        name: Option<String>,
        controller: Option<u32>,
        up: bool,
        removed: bool,
    },
    Address {
        index: u32,
        removed: bool,
    },
    /// A route through `oif` (when it has one) was added or removed.
    Route {
        oif: Option<u32>,
        removed: bool,
    },
    /// Notifications were lost (a burst overflowed the socket): anything may have changed.
    Lost,
}

/// The stream of [`KernelEvent`]s; [`kernel_events`] makes it.
pub struct KernelEvents {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
        netlink_sys::SocketAddr,
    )>,
}

impl std::fmt::Debug for KernelEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEvents").finish_non_exhaustive()
    }
}

impl KernelEvents {
    /// The next change; `None` when the socket closed.
    pub async fn next(&mut self) -> Option<KernelEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            let event = match message.payload {
                NetlinkPayload::InnerMessage(inner) => distill(inner),
                NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => Some(KernelEvent::Lost),
                _ => None,
            };
            if let Some(event) = event {
                return Some(event);
            }
        }
    }
}

fn distill(message: RouteNetlinkMessage) -> Option<KernelEvent> {
    let link = |m: &rtnetlink::packet_route::link::LinkMessage, removed| KernelEvent::Link {
        index: m.header.index,
        name: link_name(m),
        controller: m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        }),
        up: m
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        removed,
    };
    let route = |m: &rtnetlink::packet_route::route::RouteMessage, removed| KernelEvent::Route {
        oif: m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        removed,
    };
    Some(match &message {
        RouteNetlinkMessage::NewLink(m) => link(m, false),
        RouteNetlinkMessage::DelLink(m) => link(m, true),
        RouteNetlinkMessage::NewAddress(m) => KernelEvent::Address {
            index: m.header.index,
            removed: false,
        },
        RouteNetlinkMessage::DelAddress(m) => KernelEvent::Address {
            index: m.header.index,
            removed: true,
        },
        RouteNetlinkMessage::NewRoute(m) => route(m, false),
        RouteNetlinkMessage::DelRoute(m) => route(m, true),
        _ => return None,
    })
}

/// Subscribes to link, address and route changes in the calling thread's network namespace.
/// The returned future drives the socket: run it for as long as the events are read.
pub fn kernel_events()
-> Result<(impl Future<Output = ()> + Send + 'static, KernelEvents), PodNetError> {
    use netlink_sys::AsyncSocket;
    let (mut connection, _, messages) =
        rtnetlink::new_connection().map_err(|source| PodNetError::Io {
            action: "opening a netlink socket for change notifications".into(),
            source,
        })?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&netlink_sys::SocketAddr::new(0, groups))
        .map_err(|source| PodNetError::Io {
            action: "joining the kernel's link, address and route notifications".into(),
            source,
        })?;
    Ok((connection, KernelEvents { messages }))
}
