//! Which UDP conntrack entries must go after a sync (kube-proxy does the same): UDP has no
//! connection end, so an entry DNATed to an endpoint that left keeps its client talking to
//! nothing until it times out; and entries made while a Service port had no endpoint (not
//! DNATed) would keep bypassing the endpoints it now has. The pods' UDP host ports alike.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use skein_nft::L4Proto;

use crate::host_ports::HostPort;
use crate::service_map::ServicePort;

/// One deletion to ask the kernel for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StaleFlow {
    /// Entries to `dst` DNATed to `endpoint`.
    Nat { dst: SocketAddr, endpoint: IpAddr },
    /// Entries to NodePort `port` (any node address) DNATed to `endpoint`.
    PortNat { port: u16, endpoint: IpAddr },
    /// Entries to `dst` that were not DNATed.
    Unnated { dst: SocketAddr },
    /// Entries to NodePort `port` that were not DNATed.
    PortUnnated { port: u16 },
}

/// What matters of one UDP Service port for its flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPort {
    destinations: Vec<SocketAddr>,
    node_port: Option<u16>,
    endpoints: BTreeSet<IpAddr>,
}

/// The UDP Service ports of a sync, keyed by their display name.
pub type UdpPorts = BTreeMap<String, UdpPort>;

pub fn udp_ports<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> UdpPorts {
    ports
        .into_iter()
        .filter(|p| p.protocol == L4Proto::Udp)
        .map(|p| {
            let destinations = p
                .cluster_ips
                .iter()
                .chain(p.external_ips.iter())
                .map(|ip| SocketAddr::new(*ip, p.port))
                .collect();
            // Every endpoint either traffic policy can reach now.
            let endpoints = p
                .internal_endpoints()
                .iter()
                .chain(p.external_endpoints())
                .map(|b| b.addr)
                .collect();
            (
                p.display(),
                UdpPort {
                    destinations,
                    node_port: p.node_port,
                    endpoints,
                },
            )
        })
        .collect()
}

/// The UDP host ports programmed in a sync, as [`UdpPorts`] under names of their own (one per
/// claim, so a port that passes to another pod changes endpoints): one bound to a host IP has
/// that destination, one for any address is a port of every address, as a NodePort. Which
/// flows go then is what the reference portmap plugin deletes after an ADD (every unNATed flow
/// to a new port), and those to a pod that left the port.
pub fn host_udp_ports<'a>(ports: impl IntoIterator<Item = &'a HostPort>) -> UdpPorts {
    ports
        .into_iter()
        .filter(|p| p.protocol == L4Proto::Udp)
        .map(|p| {
            let bound = p.bound_to();
            (
                format!("hostPort {}", p.display()),
                UdpPort {
                    destinations: bound
                        .map(|ip| SocketAddr::new(ip, p.host_port))
                        .into_iter()
                        .collect(),
                    node_port: bound.is_none().then_some(p.host_port),
                    endpoints: [p.addr].into(),
                },
            )
        })
        .collect()
}

/// The deletions from one sync's UDP ports to the next's.
pub fn stale_flows(before: &UdpPorts, after: &UdpPorts) -> BTreeSet<StaleFlow> {
    let mut out = BTreeSet::new();
    for (name, old) in before {
        let new = after.get(name);
        let kept: BTreeSet<IpAddr> = new.map(|n| n.endpoints.clone()).unwrap_or_default();
        for endpoint in old.endpoints.difference(&kept) {
            for dst in &old.destinations {
                out.insert(StaleFlow::Nat {
                    dst: *dst,
                    endpoint: *endpoint,
                });
            }
            if let Some(port) = old.node_port {
                out.insert(StaleFlow::PortNat {
                    port,
                    endpoint: *endpoint,
                });
            }
        }
    }
    for (name, new) in after {
        let had = before.get(name).is_some_and(|o| !o.endpoints.is_empty());
        if had || new.endpoints.is_empty() {
            continue;
        }
        for dst in &new.destinations {
            out.insert(StaleFlow::Unnated { dst: *dst });
        }
        if let Some(port) = new.node_port {
            out.insert(StaleFlow::PortUnnated { port });
        }
    }
    out
}
