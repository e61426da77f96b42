//! skein's distilled cluster objects and the pure functions that build them from k8s-openapi
//! objects: only the fields the dataplane uses, parsed and with Kubernetes' defaults applied, so
//! consumers never handle strings the API left unset.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations::ANNOTATION_PREFIX;
use crate::snapshot::ObjectKey;

/// Label with which the EndpointSlice controller names a slice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The well-known label with a Node's zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours).
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub uid: String,
    /// `spec.podCIDRs`, or `spec.podCIDR` on clusters that set only that; entries that do not
    /// parse are left out.
    pub pod_cidrs: Vec<IpNet>,
    /// The first parseable `InternalIP` address.
    pub internal_ip: Option<IpAddr>,
    /// Every parseable `InternalIP` address (one per family on a dual-stack node): where
    /// NodePorts listen by default.
    pub internal_ips: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label, which topology hints name.
    pub zone: Option<String>,
    /// The `Ready` condition; `None` when it is `Unknown` or absent (the kubelet stopped
    /// reporting), which is not the same as not ready.
    pub ready: Option<bool>,
    /// Annotations under `skein.dev/`, full keys: what other nodes' skein published.
    pub skein: BTreeMap<String, String>,
    pub unschedulable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `None` until the scheduler placed the pod.
    pub node_name: Option<String>,
    /// `status.podIPs`, or `status.podIP`; unparseable entries left out.
    pub pod_ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub phase: PodPhase,
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: the pod is going away.
    pub terminating: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for a Service's single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Defaults to `port`, as the API server does.
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its namespace and name: the same shared string as the snapshot's key for it.
    pub key: ObjectKey,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without the headless marker `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP` is `None`: DNS answers with the endpoints' addresses.
    pub headless: bool,
    /// The DNS name an `ExternalName` Service aliases.
    pub external_name: Option<String>,
    /// Empty when the Service has no selector (its endpoints are managed by hand).
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub session_affinity: SessionAffinity,
    /// `spec.externalIPs` that parse.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` IPs, except those with `ipMode: Proxy` (the load balancer
    /// keeps the destination itself, so the node must not DNAT them).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` that parse; empty means every source.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Where eTP Local's health check answers; `None` unless the API allocated one.
    pub health_check_node_port: Option<u16>,
    /// `spec.publishNotReadyAddresses`: DNS lists every endpoint, ready or not.
    pub publish_not_ready_addresses: bool,
    /// Field paths of values that could not be read (an unparseable externalIP, a source
    /// range that is not a CIDR): the proxy reports them instead of silently widening.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    Ipv4,
    Ipv6,
    Fqdn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The first address that parses, so an `FQDN` slice's endpoints have none. Only the first:
    /// the API documents that consumers use the first address alone, as kube-proxy does, and the
    /// EndpointSlice controller writes exactly one. Inline, since a Vec was two allocations'
    /// worth of memory on each of the 50,000 endpoints of 10,000 Services.
    pub address: Option<IpAddr>,
    /// Unset means ready, as Kubernetes documents.
    pub ready: bool,
    /// Unset means serving.
    pub serving: bool,
    /// Unset means not terminating.
    pub terminating: bool,
    // Boxed strings, here and below: 8 bytes fewer each than a `String`, on every endpoint
    // the snapshot holds.
    pub node_name: Option<Box<str>>,
    /// The backing pod, when the target is a pod.
    pub pod_name: Option<Box<str>>,
    /// The hostname, zone and topology hints, boxed together: many endpoints have none of them,
    /// and an endpoint is kept for every address a Service reaches. `None` when all are unset.
    pub extra: Option<Box<EndpointExtra>>,
}

/// What few endpoints carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointExtra {
    /// Set for pods with `spec.hostname` (StatefulSets), which DNS names individually.
    pub hostname: Option<Box<str>>,
    pub zone: Option<Box<str>>,
    /// Topology hints (`hints.forZones`, `hints.forNodes`).
    pub hints: Option<Hints>,
}

impl Endpoint {
    pub fn hostname(&self) -> Option<&str> {
        self.extra.as_ref()?.hostname.as_deref()
    }

    pub fn zone(&self) -> Option<&str> {
        self.extra.as_ref()?.zone.as_deref()
    }

    pub fn hints(&self) -> Option<&Hints> {
        self.extra.as_ref()?.hints.as_ref()
    }
}

/// Where the EndpointSlice controller wants an endpoint used (topology-aware routing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub for_zones: Vec<String>,
    pub for_nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Its namespace and name: the same shared string as the snapshot's key for it.
    pub key: ObjectKey,
    /// The Service of its `kubernetes.io/service-name` label (in the slice's namespace); `None`
    /// for slices that belong to no Service.
    pub service: Option<ObjectKey>,
    pub address_type: AddressType,
    pub endpoints: Vec<Endpoint>,
    /// Ports without a number (meaning "all ports") are left out: nothing can be forwarded to
    /// them.
    pub ports: Vec<EndpointPort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// Kept whole: compiling it is the policy engine's business, not this crate's.
    pub spec: Arc<networking::NetworkPolicySpec>,
}

impl Node {
    /// `None` for an object without a name, which the API never sends.
    pub fn from_api(node: &core::Node) -> Option<Node> {
        let name = node.metadata.name.clone()?;
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let cidrs: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
            Some(list) if !list.is_empty() => list.iter().collect(),
            _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        };
        let internal_ips: Vec<IpAddr> = status
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        let internal_ip = internal_ips.first().copied();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| match c.status.as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            });
        let skein = node
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Node {
            name,
            uid: uid(&node.metadata),
            pod_cidrs: cidrs.into_iter().filter_map(|c| c.parse().ok()).collect(),
            internal_ip,
            internal_ips,
            zone: node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned(),
            ready,
            skein,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        })
    }
}

impl Namespace {
    pub fn from_api(namespace: &core::Namespace) -> Option<Namespace> {
        Some(Namespace {
            name: namespace.metadata.name.clone()?,
            labels: labels(&namespace.metadata),
        })
    }
}

impl Pod {
    pub fn from_api(pod: &core::Pod) -> Option<Pod> {
        let (namespace, name) = namespaced(&pod.metadata)?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ips: Vec<&String> = match status.and_then(|s| s.pod_ips.as_ref()) {
            Some(list) if !list.is_empty() => list.iter().map(|p| &p.ip).collect(),
            _ => status.and_then(|s| s.pod_ip.as_ref()).into_iter().collect(),
        };
        let phase = match status.and_then(|s| s.phase.as_deref()) {
            // A pod no kubelet has reported on yet is waiting to start.
            None | Some("Pending") => PodPhase::Pending,
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some(_) => PodPhase::Unknown,
        };
        Some(Pod {
            namespace,
            name,
            uid: uid(&pod.metadata),
            node_name: spec.and_then(|s| s.node_name.clone()),
            pod_ips: ips.into_iter().filter_map(|ip| ip.parse().ok()).collect(),
            labels: labels(&pod.metadata),
            phase,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        })
    }
}

impl Service {
    pub fn from_api(service: &core::Service) -> Option<Service> {
        let (namespace, name) = namespaced(&service.metadata)?;
        let spec = service.spec.clone().unwrap_or_default();
        let service_type = match spec.type_.as_deref() {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            // The API server defaults the type to ClusterIP and rejects anything else.
            _ => ServiceType::ClusterIp,
        };
        let listed: Vec<String> = match spec.cluster_ips {
            Some(list) if !list.is_empty() => list,
            _ => spec.cluster_ip.clone().into_iter().collect(),
        };
        let headless = spec.cluster_ip.as_deref() == Some("None")
            || listed.first().map(String::as_str) == Some("None");
        let mut problems = Vec::new();
        let mut parsed = |path: &str, values: &[String]| -> Vec<IpAddr> {
            values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.trim().parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        problems.push(format!("{path}[{i}] {v:?} is not an IP address"));
                        None
                    }
                })
                .collect()
        };
        let external_ips = parsed(
            "spec.externalIPs",
            spec.external_ips.as_deref().unwrap_or_default(),
        );
        let ingress: Vec<String> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.clone())
            .collect();
        let load_balancer_ips = parsed("status.loadBalancer.ingress", &ingress);
        let load_balancer_source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, r)| match r.trim().parse::<IpNet>() {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    problems.push(format!(
                        "spec.loadBalancerSourceRanges[{i}] {r:?} is not a CIDR"
                    ));
                    None
                }
            })
            .collect();
        let session_affinity = match spec.session_affinity.as_deref() {
            Some("ClientIP") => SessionAffinity::ClientIp {
                timeout: spec
                    .session_affinity_config
                    .and_then(|c| c.client_ip)
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map_or(DEFAULT_AFFINITY_TIMEOUT, Duration::from_secs),
            },
            _ => SessionAffinity::None,
        };
        Some(Service {
            key: ObjectKey::new(namespace, name),
            service_type,
            cluster_ips: exact(listed.iter().filter_map(|ip| ip.parse().ok()).collect()),
            headless,
            external_name: spec.external_name.filter(|n| !n.is_empty()),
            selector: spec.selector.unwrap_or_default(),
            ports: exact(
                spec.ports
                    .iter()
                    .flatten()
                    .filter_map(ServicePort::from_api)
                    .collect(),
            ),
            external_traffic_policy: traffic_policy(spec.external_traffic_policy.as_deref()),
            internal_traffic_policy: traffic_policy(spec.internal_traffic_policy.as_deref()),
            session_affinity,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            health_check_node_port: spec.health_check_node_port.and_then(port_number),
            publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
            problems,
        })
    }
}

impl ServicePort {
    /// `None` for a port number outside 1..=65535, which the API server rejects anyway.
    pub fn from_api(port: &core::ServicePort) -> Option<ServicePort> {
        let number = port_number(port.port)?;
        let target_port = match &port.target_port {
            Some(IntOrString::Int(n)) => {
                port_number(*n).map_or(TargetPort::Number(number), TargetPort::Number)
            }
            Some(IntOrString::String(s)) if !s.is_empty() => TargetPort::Name(s.clone()),
            _ => TargetPort::Number(number),
        };
        Some(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            protocol: protocol(port.protocol.as_deref()),
            port: number,
            target_port,
            node_port: port.node_port.and_then(port_number),
        })
    }
}

impl EndpointSlice {
    /// `None` also for an address type this skein does not know: guessing how to read its
    /// addresses could send traffic to the wrong place.
    pub fn from_api(slice: &discovery::EndpointSlice) -> Option<EndpointSlice> {
        let (namespace, name) = namespaced(&slice.metadata)?;
        let address_type = match slice.address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            _ => return None,
        };
        Some(EndpointSlice {
            service: slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(|service| ObjectKey::new(&namespace, service)),
            key: ObjectKey::new(namespace, name),
            address_type,
            endpoints: slice
                .endpoints
                .iter()
                .flatten()
                .map(Endpoint::from_api)
                .collect(),
            ports: exact(
                slice
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(EndpointPort {
                            name: p.name.clone().unwrap_or_default(),
                            protocol: protocol(p.protocol.as_deref()),
                            port: port_number(p.port?)?,
                        })
                    })
                    .collect(),
            ),
        })
    }
}

impl Endpoint {
    pub fn from_api(endpoint: &discovery::Endpoint) -> Endpoint {
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        Endpoint {
            address: endpoint.addresses.iter().find_map(|a| a.parse().ok()),
            ready: conditions.ready.unwrap_or(true),
            serving: conditions.serving.unwrap_or(true),
            terminating: conditions.terminating.unwrap_or(false),
            node_name: endpoint.node_name.as_deref().map(Into::into),
            pod_name: endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref())
                .map(Into::into),
            extra: Some(Box::new(EndpointExtra {
                hostname: endpoint.hostname.as_deref().map(Into::into),
                zone: endpoint.zone.as_deref().map(Into::into),
                hints: endpoint.hints.as_ref().map(|h| Hints {
                    for_zones: h
                        .for_zones
                        .iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                    for_nodes: h
                        .for_nodes
                        .iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                }),
            }))
            .filter(|e| **e != EndpointExtra::default()),
        }
    }
}

/// `v` without spare capacity: a collect through `filter_map` reserves room for four, and the
/// snapshot keeps these lists for every Service and endpoint (50,000 at 10,000 Services).
fn exact<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

impl NetworkPolicy {
    pub fn from_api(policy: &networking::NetworkPolicy) -> Option<NetworkPolicy> {
        let (namespace, name) = namespaced(&policy.metadata)?;
        Some(NetworkPolicy {
            namespace,
            name,
            spec: Arc::new(policy.spec.clone().unwrap_or_default()),
        })
    }
}

fn namespaced(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn uid(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn protocol(p: Option<&str>) -> Protocol {
    match p {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        // TCP is the API's default, and it rejects other values.
        _ => Protocol::Tcp,
    }
}

fn traffic_policy(p: Option<&str>) -> TrafficPolicy {
    match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}
