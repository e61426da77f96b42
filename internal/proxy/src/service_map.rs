//! The service map: each Service port the proxy programs, per address family, with the
//! endpoints its traffic may reach, chosen as kube-proxy chooses them. Pure: the snapshot and
//! the node's context in, plain data out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use skein_cluster::{
    AddressType, EndpointSlice, ObjectKey, Protocol, Service, ServiceType, SessionAffinity,
    Snapshot, TrafficPolicy,
};
use skein_nft::L4Proto;

/// What the proxy needs to know about the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (endpoints with this `nodeName` are local).
    pub node: String,
    /// This node's zone, for topology hints.
    pub zone: Option<String>,
    /// The cluster's pod CIDRs: traffic from them is pod traffic.
    pub cluster_cidrs: Vec<IpNet>,
    /// The service CIDRs: an address in them that no Service holds is dropped.
    pub service_cidrs: Vec<IpNet>,
    /// Where NodePorts answer (`proxy.nodeport_addresses`, resolved).
    pub nodeport_ips: Vec<IpAddr>,
    /// Addresses never DNATed nor rejected (the cluster DNS addresses skein answers itself).
    pub exempt_ips: Vec<IpAddr>,
}

/// One endpoint a Service port may reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The backing pod's name, for the page.
    pub pod: Option<Box<str>>,
}

/// One port of one Service in one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ObjectKey,
    /// Empty for a Service's single unnamed port.
    pub port_name: String,
    pub ipv6: bool,
    pub protocol: L4Proto,
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    /// `externalIPs` and load-balancer ingress IPs: external destinations.
    pub external_ips: Vec<IpAddr>,
    /// The subset of `external_ips` from load-balancer ingress (source ranges apply to them).
    pub load_balancer_ips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    pub node_port: Option<u16>,
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity: Option<Duration>,
    // Shared lists: when every endpoint is ready (the usual case) the cluster set is the whole
    // list, and is kept once rather than twice for each of 10,000 Services.
    /// Every endpoint of the port in this family, whatever its conditions.
    pub all: Arc<[Backend]>,
    /// What cluster-policy traffic (ClusterIP; external traffic with eTP Cluster) reaches.
    pub cluster: Arc<[Backend]>,
    /// The local endpoints external traffic with eTP Local reaches.
    pub local: Arc<[Backend]>,
}

impl ServicePort {
    /// `namespace/name:port` (or without `:port` for an unnamed one), as people write it.
    pub fn display(&self) -> String {
        let family = if self.ipv6 { " (IPv6)" } else { "" };
        if self.port_name.is_empty() {
            format!("{}{family}", self.service)
        } else {
            format!("{}:{}{family}", self.service, self.port_name)
        }
    }

    /// What ClusterIP traffic reaches: the cluster set, or the local one with iTP Local.
    pub fn internal_endpoints(&self) -> &[Backend] {
        if self.internal_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    /// What external traffic reaches.
    pub fn external_endpoints(&self) -> &[Backend] {
        if self.external_local {
            &self.local
        } else {
            &self.cluster
        }
    }

    pub fn has_external(&self) -> bool {
        !self.external_ips.is_empty() || self.node_port.is_some()
    }
}

/// A Service (or one of its ports) the proxy cannot program, and why, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unprogrammable {
    pub service: ObjectKey,
    pub reason: String,
}

/// The Services that get rules, and those that cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMap {
    pub ports: Vec<ServicePort>,
    pub problems: Vec<Unprogrammable>,
}

/// The service map of one Service: every port in every family it has (headless and
/// ExternalName Services have none).
pub fn service_ports(
    key: &ObjectKey,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    ctx: &NodeContext,
) -> Result<Vec<ServicePort>, Vec<String>> {
    if service.headless || service.service_type == ServiceType::ExternalName {
        return Ok(Vec::new());
    }
    let mut problems: Vec<String> = service.problems.clone();
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let cluster_ips: Vec<IpAddr> = service
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == ipv6)
            .collect();
        if cluster_ips.is_empty() {
            continue;
        }
        let family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == ipv6)
                .collect()
        };
        let load_balancer_ips = if service.service_type == ServiceType::LoadBalancer {
            family(&service.load_balancer_ips)
        } else {
            Vec::new()
        };
        let mut external_ips = family(&service.external_ips);
        external_ips.extend(load_balancer_ips.iter().copied());
        external_ips.sort();
        external_ips.dedup();
        for sp in &service.ports {
            let protocol = match sp.protocol {
                Protocol::Tcp => L4Proto::Tcp,
                Protocol::Udp => L4Proto::Udp,
                Protocol::Sctp => L4Proto::Sctp,
            };
            let all: Arc<[Backend]> =
                backends(service, &sp.name, sp.protocol, ipv6, slices, ctx).into();
            let (cluster, local) = categorize(&all, slices, &sp.name, ctx);
            let share = |set: Vec<Backend>| -> Arc<[Backend]> {
                if set[..] == all[..] {
                    all.clone()
                } else {
                    set.into()
                }
            };
            let (cluster, local) = (share(cluster), share(local));
            out.push(ServicePort {
                service: key.clone(),
                port_name: sp.name.clone(),
                ipv6,
                protocol,
                port: sp.port,
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                source_ranges: service
                    .load_balancer_source_ranges
                    .iter()
                    .copied()
                    .filter(|n| n.addr().is_ipv6() == ipv6)
                    .collect(),
                node_port: match service.service_type {
                    ServiceType::NodePort | ServiceType::LoadBalancer => sp.node_port,
                    _ => None,
                },
                external_local: service.external_traffic_policy == TrafficPolicy::Local,
                internal_local: service.internal_traffic_policy == TrafficPolicy::Local,
                affinity: match service.session_affinity {
                    SessionAffinity::ClientIp { timeout } => Some(timeout),
                    SessionAffinity::None => None,
                },
                all,
                cluster,
                local,
            });
        }
    }
    if service.service_type == ServiceType::LoadBalancer
        && !service.load_balancer_source_ranges.is_empty()
        && out.iter().all(|p| p.source_ranges.is_empty())
    {
        problems.push(
            "spec.loadBalancerSourceRanges has no range of the Service's address families"
                .to_string(),
        );
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        // Programming the rest would widen what the Service allows (a source range left out
        // lets everyone in), so a Service with a value skein cannot read gets no rules.
        Err(problems)
    }
}

/// The endpoints of one Service port in one family: each slice's port of that name and
/// protocol (the EndpointSlice controller resolves named target ports per endpoint, so
/// endpoints of one Service port may listen on different numbers), duplicates merged.
fn backends(
    _service: &Service,
    port_name: &str,
    protocol: Protocol,
    ipv6: bool,
    slices: &[Arc<EndpointSlice>],
    ctx: &NodeContext,
) -> Vec<Backend> {
    let want = if ipv6 {
        AddressType::Ipv6
    } else {
        AddressType::Ipv4
    };
    let mut out: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == want) {
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(addr) = ep.address else {
                continue;
            };
            if addr.is_ipv6() != ipv6 {
                continue;
            }
            let backend = Backend {
                addr,
                port: port.port,
                local: ep.node_name.as_deref() == Some(ctx.node.as_str()),
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                pod: ep.pod_name.clone(),
            };
            // A duplicate (an endpoint in two slices while the controller moves it) keeps
            // the readier copy.
            out.entry((addr, port.port))
                .and_modify(|b| {
                    if backend.ready && !b.ready {
                        *b = backend.clone();
                    }
                })
                .or_insert(backend);
        }
    }
    out.into_values().collect()
}

/// kube-proxy's `CategorizeEndpoints`: the cluster set is the ready endpoints (narrowed by
/// topology hints when every ready endpoint has them and some are for this node or zone), or,
/// when none is ready, the serving-and-terminating ones; the local set is the same choice among
/// this node's endpoints.
fn categorize(
    all: &[Backend],
    slices: &[Arc<EndpointSlice>],
    port_name: &str,
    ctx: &NodeContext,
) -> (Vec<Backend>, Vec<Backend>) {
    let pick = |pool: Vec<&Backend>| -> Vec<Backend> {
        let ready: Vec<Backend> = pool
            .iter()
            .filter(|b| b.ready)
            .map(|b| (*b).clone())
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        pool.iter()
            .filter(|b| b.serving && b.terminating)
            .map(|b| (*b).clone())
            .collect()
    };
    let topology = topology_filter(all, slices, port_name, ctx);
    let cluster_pool: Vec<&Backend> = match &topology {
        Some(keep) => all.iter().filter(|b| keep.contains(&b.addr)).collect(),
        None => all.iter().collect(),
    };
    let mut cluster = pick(cluster_pool);
    if cluster.is_empty() && topology.is_some() {
        cluster = pick(all.iter().collect());
    }
    let local = pick(all.iter().filter(|b| b.local).collect());
    (cluster, local)
}

/// The addresses topology hints allow for this node, or `None` when hints do not apply: some
/// ready endpoint lacks hints, or none is for this node (by `forNodes`) or its zone.
fn topology_filter(
    all: &[Backend],
    slices: &[Arc<EndpointSlice>],
    _port_name: &str,
    ctx: &NodeContext,
) -> Option<Vec<IpAddr>> {
    let ready: Vec<IpAddr> = all.iter().filter(|b| b.ready).map(|b| b.addr).collect();
    if ready.is_empty() {
        return None;
    }
    let mut hints = BTreeMap::new();
    for slice in slices {
        for ep in &slice.endpoints {
            if let Some(addr) = ep.address {
                hints.insert(addr, ep.hints());
            }
        }
    }
    let mut by_node = Vec::new();
    let mut by_zone = Vec::new();
    for addr in &ready {
        let h = hints.get(addr)?.as_ref()?;
        if h.for_zones.is_empty() && h.for_nodes.is_empty() {
            return None;
        }
        if h.for_nodes.contains(&ctx.node) {
            by_node.push(*addr);
        }
        if ctx
            .zone
            .as_ref()
            .is_some_and(|z| h.for_zones.iter().any(|hz| hz == z))
        {
            by_zone.push(*addr);
        }
    }
    // forNodes (PreferSameNode) wins when any endpoint names this node, as in kube-proxy.
    if !by_node.is_empty() {
        return Some(by_node);
    }
    if !by_zone.is_empty() {
        return Some(by_zone);
    }
    None
}

/// The whole service map of a snapshot, in key order. Two Services claiming the same
/// destination (an externalIP and port another Service also lists, a NodePort twice): the first
/// in namespace/name order keeps it, the other is reported by name.
pub fn service_map(snapshot: &Snapshot, ctx: &NodeContext) -> ServiceMap {
    let mut map = ServiceMap::default();
    for (key, service) in &snapshot.services {
        match service_ports(key, service, snapshot.slices_of(key), ctx) {
            Ok(ports) => map.ports.extend(ports),
            Err(reasons) => map
                .problems
                .extend(reasons.into_iter().map(|reason| Unprogrammable {
                    service: key.clone(),
                    reason,
                })),
        }
    }
    map
}
