//! The lookup index: every name of the cluster zone (and of the reverse zones of the cluster's
//! CIDRs) with its records kept ready in wire form, built from one snapshot by a pure function
//! and swapped in whole, so a query never waits for a rebuild.
//!
//! The records are those of the Kubernetes DNS-Based Service Discovery specification (1.1.0),
//! as CoreDNS's `kubernetes` plugin serves them where the two differ:
//! - `dns-version.<zone>` TXT `1.1.0`; SOA and NS at the apex, `ns.dns.<zone>` the DNS
//!   addresses.
//! - A ClusterIP Service `<svc>.<ns>.svc.<zone>`: A/AAAA of its cluster IPs, PTR for each; SRV
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port, to the Service's name, whose
//!   addresses ride in the additional section. SRV at the Service's own name lists every port
//!   (CoreDNS; the specification leaves it out).
//! - A headless Service: A/AAAA of each ready endpoint (every endpoint with
//!   `publishNotReadyAddresses`); each endpoint named `<host>.<svc>.<ns>.svc.<zone>`, where
//!   `<host>` is its hostname or, without one, its address dashed (`10-42-1-5`, as CoreDNS);
//!   SRV per port per endpoint to those names; PTR of each endpoint address to its name.
//! - ExternalName: a CNAME at the Service's name (the answer adds the target's addresses).
//! - Every name that has a name below it exists (`<ns>.svc.<zone>` for every namespace,
//!   `_tcp.<svc>…`, reverse names between a zone and its PTRs): such a name answers NODATA, not
//!   NXDOMAIN (RFC 8020).
//! - Pod names `a-b-c-d.<ns>.pod.<zone>` are not stored: they are read off the question, for a
//!   namespace that exists, and with `verified` only for an address a pod of that namespace has.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use skein_cluster::{Service, ServiceType, Snapshot};

use crate::name;
use crate::records::{self, Data, RecordSet, TYPE_CNAME, TYPE_NS, TYPE_PTR};

/// The version the `dns-version` record announces.
pub const SPEC_VERSION: &str = "1.1.0";

/// Which pod names answer (`dns.pods`), as CoreDNS's `pods` option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodRecords {
    /// Any well-formed dashed address in a namespace that exists (k3s's Corefile).
    #[default]
    Insecure,
    /// Only an address a pod of that namespace has.
    Verified,
    /// None.
    Disabled,
}

/// What the index is built with besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster zone, `cluster.local` by default.
    pub domain: String,
    /// Every record's TTL, and the SOA's negative TTL, in seconds.
    pub ttl: u32,
    pub pods: PodRecords,
    /// The addresses the DNS server answers on: `ns.dns.<zone>`'s records.
    pub dns_ips: Vec<IpAddr>,
    /// CIDRs whose reverse zones are answered here, never forwarded (pods', Services').
    pub reverse_cidrs: Vec<IpNet>,
}

/// The records of one name. An `alias` (an ExternalName's CNAME target) is followed by the
/// answer for any other type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub sets: Vec<RecordSet>,
    pub alias: Option<Box<[u8]>>,
}

impl Entry {
    pub fn set(&self, rtype: u16) -> Option<&RecordSet> {
        self.sets.iter().find(|s| s.rtype == rtype)
    }
}

/// A zone answered here: its apex and its SOA record whole (owner included), for the
/// authority section of negative answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub apex: Box<[u8]>,
    pub soa: Box<[u8]>,
}

#[derive(Debug, Default)]
pub struct Index {
    /// The cluster zone first, then the reverse zones.
    pub(crate) authorities: Vec<Authority>,
    pub(crate) names: HashMap<Box<[u8]>, Entry>,
    pub(crate) pods: PodRecords,
    pub(crate) pod_ips: HashSet<(Box<[u8]>, IpAddr)>,
    pub(crate) namespaces: HashSet<Box<[u8]>>,
    pub(crate) ttl: u32,
    /// The snapshot's version it was built from.
    pub version: u64,
}

/// The zone of `authorities` that holds `name`, the closest (longest apex) first.
fn closest<'a>(authorities: &'a [Authority], name: &[u8]) -> Option<&'a Authority> {
    authorities
        .iter()
        .filter(|a| name::is_within(name, &a.apex))
        .max_by_key(|a| a.apex.len())
}

/// How a name resolves in the index.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name has these records (maybe none: NODATA).
    Name(&'a Entry),
    /// A pod name: this address.
    Pod(IpAddr),
    /// Within a zone answered here, and no such name.
    NoName,
    /// Outside every zone answered here: to forward.
    Outside,
}

impl Index {
    /// The zone answered here that holds `name` (lower-case wire form), the closest first.
    pub fn authority(&self, name: &[u8]) -> Option<&Authority> {
        closest(&self.authorities, name)
    }

    /// `name` is lower-case wire form.
    pub fn lookup(&self, name: &[u8]) -> Lookup<'_> {
        if let Some(entry) = self.names.get(name) {
            return Lookup::Name(entry);
        }
        if self.authority(name).is_none() {
            return Lookup::Outside;
        }
        match self.pod(name) {
            Some(ip) => Lookup::Pod(ip),
            None => Lookup::NoName,
        }
    }

    /// The address a pod name stands for: `<dashed>.<ns>.pod.<zone>`.
    fn pod(&self, qname: &[u8]) -> Option<IpAddr> {
        if self.pods == PodRecords::Disabled {
            return None;
        }
        let zone = &self.authorities.first()?.apex;
        let mut labels = name::labels(qname);
        let (dashed, ns, pod) = (labels.next()?, labels.next()?, labels.next()?);
        let rest = name::parent(name::parent(name::parent(qname)?)?)?;
        if pod != b"pod" || rest != &zone[..] || !self.namespaces.contains(ns) {
            return None;
        }
        let ip = name::undashed(dashed)?;
        match self.pods {
            PodRecords::Verified if !self.pod_ips.contains(&(Box::from(ns), ip)) => None,
            _ => Some(ip),
        }
    }

    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// How many names it holds (the page's figure).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A name's records while the index is built: data deduplicated, kept in insertion order.
#[derive(Default)]
struct Pending {
    sets: BTreeMap<u16, Vec<Data>>,
    /// Per type, the additional records (owner, data) that ride with it.
    extra: BTreeMap<u16, Vec<(Vec<u8>, Data)>>,
    alias: Option<Vec<u8>>,
}

#[derive(Default)]
struct Builder {
    names: HashMap<Vec<u8>, Pending>,
}

impl Builder {
    fn add(&mut self, owner: &[u8], data: Data) {
        let set = self
            .names
            .entry(owner.to_vec())
            .or_default()
            .sets
            .entry(data.rtype())
            .or_default();
        if !set.contains(&data) {
            set.push(data);
        }
    }

    fn add_extra(&mut self, owner: &[u8], rtype: u16, extra_owner: &[u8], data: Data) {
        let extra = self
            .names
            .entry(owner.to_vec())
            .or_default()
            .extra
            .entry(rtype)
            .or_default();
        let item = (extra_owner.to_vec(), data);
        if !extra.contains(&item) {
            extra.push(item);
        }
    }

    /// A port's SRV record to `target`, at `_<port>._<proto>.<owner>` (named ports only) and at
    /// the Service's own name (CoreDNS), with the target's `addresses` in the additional section.
    fn add_srv(
        &mut self,
        owner: &[u8],
        (port_name, proto, port): (&str, skein_cluster::Protocol, u16),
        weight: u16,
        target: &[u8],
        addresses: &[IpAddr],
    ) {
        let srv = Data::Srv {
            priority: 0,
            weight,
            port,
            target: target.to_vec(),
        };
        let names = srv_name(port_name, proto, owner)
            .into_iter()
            .chain(std::iter::once(owner.to_vec()));
        for at in names {
            self.add(&at, srv.clone());
            for ip in addresses {
                self.add_extra(&at, records::TYPE_SRV, target, Data::Ip(*ip));
            }
        }
    }

    fn touch(&mut self, owner: &[u8]) {
        self.names.entry(owner.to_vec()).or_default();
    }
}

fn proto_label(p: skein_cluster::Protocol) -> &'static str {
    match p {
        skein_cluster::Protocol::Tcp => "_tcp",
        skein_cluster::Protocol::Udp => "_udp",
        skein_cluster::Protocol::Sctp => "_sctp",
    }
}

/// `_<port>._<proto>.<owner>`, when the port has a name that makes a label.
fn srv_name(port: &str, proto: skein_cluster::Protocol, owner: &[u8]) -> Option<Vec<u8>> {
    if port.is_empty() {
        return None;
    }
    name::child(
        &format!("_{port}"),
        &name::child(proto_label(proto), owner)?,
    )
}

/// The reverse zones that cover `cidr` exactly, at label boundaries (an IPv4 /12 is sixteen
/// /16 zones); a CIDR that would need more than 256 is answered through the zone of its
/// boundary below instead.
fn reverse_zones(cidr: IpNet) -> Vec<Vec<u8>> {
    let (step, bits) = match cidr {
        IpNet::V4(_) => (8u8, 32u8),
        IpNet::V6(_) => (4u8, 128u8),
    };
    let prefix = cidr.prefix_len();
    let up = prefix.div_ceil(step) * step;
    let down = prefix / step * step;
    let target = if up - prefix <= 8 { up } else { down };
    let subnets: Vec<IpNet> = cidr
        .subnets(target)
        .map(|s| s.collect())
        .unwrap_or_default();
    let labels_kept = (target / step) as usize;
    let total_labels = (bits / step) as usize;
    subnets
        .into_iter()
        .filter_map(|net| {
            // The reverse name of the network address, without its host labels.
            let full = name::reverse(net.network());
            let mut at: &[u8] = &full;
            for _ in 0..total_labels - labels_kept {
                at = name::parent(at)?;
            }
            Some(at.to_vec())
        })
        .collect()
}

fn soa(apex: &[u8], zone: &[u8], ttl: u32, serial: u32) -> Box<[u8]> {
    let data = Data::Soa {
        mname: name::child("ns", &name::child("dns", zone).unwrap_or_default()).unwrap_or_default(),
        rname: name::child("hostmaster", zone).unwrap_or_default(),
        serial,
        refresh: 7200,
        retry: 1800,
        expire: 86400,
        minimum: ttl,
    };
    let mut out = apex.to_vec();
    out.extend(records::body(records::TYPE_SOA, ttl, &data.rdata()));
    out.into_boxed_slice()
}

/// The index of `snapshot`'s Services, endpoints, namespaces and pods.
pub fn build(snapshot: &Snapshot, config: &ZoneConfig) -> Index {
    let ttl = config.ttl;
    let zone = name::wire(&config.domain).unwrap_or_else(|| vec![0]);
    let serial = snapshot.version as u32;
    let mut b = Builder::default();

    // The apex.
    let ns_name =
        name::child("ns", &name::child("dns", &zone).unwrap_or_default()).unwrap_or_default();
    b.add(&zone, Data::Name(TYPE_NS, ns_name.clone()));
    for ip in &config.dns_ips {
        b.add(&ns_name, Data::Ip(*ip));
    }
    if let Some(version) = name::child("dns-version", &zone) {
        b.add(&version, Data::Txt(SPEC_VERSION.into()));
    }
    let svc_zone = name::child("svc", &zone).unwrap_or_default();
    let pod_zone = name::child("pod", &zone).unwrap_or_default();
    b.touch(&svc_zone);
    b.touch(&pod_zone);
    let mut namespaces = HashSet::new();
    for ns in snapshot.namespaces.keys() {
        if let Some(n) = name::child(ns, &svc_zone) {
            b.touch(&n);
        }
        if let Some(n) = name::child(ns, &pod_zone) {
            b.touch(&n);
        }
        namespaces.insert(Box::from(ns.to_ascii_lowercase().as_bytes()));
    }

    for service in snapshot.services.values() {
        let Some(owner) = name::child(service.key.namespace(), &svc_zone)
            .and_then(|ns| name::child(service.key.name(), &ns))
        else {
            continue;
        };
        service_records(&mut b, snapshot, service, &owner);
    }

    let mut pod_ips = HashSet::new();
    if config.pods == PodRecords::Verified {
        for pod in snapshot.pods.values() {
            for ip in &pod.pod_ips {
                pod_ips.insert((
                    Box::from(pod.namespace.to_ascii_lowercase().as_bytes()),
                    *ip,
                ));
            }
        }
    }

    // The zones answered here, each with SOA and NS at its apex.
    let mut authorities = vec![Authority {
        apex: zone.clone().into_boxed_slice(),
        soa: soa(&zone, &zone, ttl, serial),
    }];
    for cidr in &config.reverse_cidrs {
        for apex in reverse_zones(*cidr) {
            if authorities.iter().any(|a| *a.apex == apex[..]) {
                continue;
            }
            b.add(&apex, Data::Name(TYPE_NS, ns_name.clone()));
            authorities.push(Authority {
                soa: soa(&apex, &zone, ttl, serial),
                apex: apex.into_boxed_slice(),
            });
        }
    }

    // Every name between a record and its zone's apex exists.
    let owners: Vec<Vec<u8>> = b.names.keys().cloned().collect();
    for owner in owners {
        let Some(apex) = closest(&authorities, &owner).map(|a| a.apex.clone()) else {
            continue;
        };
        let mut at: &[u8] = &owner;
        while at.len() > apex.len() {
            match name::parent(at) {
                Some(p) => {
                    at = p;
                    b.touch(at);
                }
                None => break,
            }
        }
    }

    let names = b
        .names
        .into_iter()
        .map(|(owner, pending)| {
            let mut sets: Vec<RecordSet> = pending
                .sets
                .iter()
                .map(|(rtype, datas)| {
                    let mut bodies = Vec::new();
                    for d in datas {
                        bodies.extend(records::body(*rtype, ttl, &d.rdata()));
                    }
                    let mut extra = Vec::new();
                    let extras = pending
                        .extra
                        .get(rtype)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    for (o, d) in extras {
                        extra.extend_from_slice(o);
                        extra.extend(records::body(d.rtype(), ttl, &d.rdata()));
                    }
                    RecordSet {
                        rtype: *rtype,
                        count: datas.len() as u16,
                        bodies: bodies.into_boxed_slice(),
                        extra_count: extras.len() as u16,
                        extra: extra.into_boxed_slice(),
                    }
                })
                .collect();
            if owner == zone {
                sets.push(RecordSet {
                    rtype: records::TYPE_SOA,
                    count: 1,
                    bodies: authorities[0].soa[zone.len()..].into(),
                    ..Default::default()
                });
            } else if let Some(a) = authorities.iter().find(|a| *a.apex == owner[..]) {
                sets.push(RecordSet {
                    rtype: records::TYPE_SOA,
                    count: 1,
                    bodies: a.soa[owner.len()..].into(),
                    ..Default::default()
                });
            }
            sets.sort_by_key(|s| s.rtype);
            let entry = Entry {
                sets,
                alias: pending.alias.map(Vec::into_boxed_slice),
            };
            (owner.into_boxed_slice(), entry)
        })
        .collect();

    Index {
        authorities,
        names,
        pods: config.pods,
        pod_ips,
        namespaces,
        ttl,
        version: snapshot.version,
    }
}

fn service_records(b: &mut Builder, snapshot: &Snapshot, service: &Service, owner: &[u8]) {
    if service.service_type == ServiceType::ExternalName {
        if let Some(target) = service.external_name.as_deref().and_then(name::wire) {
            b.add(owner, Data::Name(TYPE_CNAME, target.clone()));
            b.names.entry(owner.to_vec()).or_default().alias = Some(target);
        }
        return;
    }
    if !service.headless && !service.cluster_ips.is_empty() {
        for ip in &service.cluster_ips {
            b.add(owner, Data::Ip(*ip));
            b.add(&name::reverse(*ip), Data::Name(TYPE_PTR, owner.to_vec()));
        }
        for port in &service.ports {
            b.add_srv(
                owner,
                (&port.name, port.protocol, port.port),
                100,
                owner,
                &service.cluster_ips,
            );
        }
        return;
    }
    // Headless: the endpoints themselves.
    let mut endpoints: Vec<(IpAddr, Vec<u8>, &skein_cluster::EndpointSlice)> = Vec::new();
    for slice in snapshot.slices_of(&service.key) {
        for ep in &slice.endpoints {
            let Some(ip) = ep.address else { continue };
            if !ep.ready && !service.publish_not_ready_addresses {
                continue;
            }
            let host = ep
                .hostname()
                .map_or_else(|| name::dashed(ip), str::to_string);
            let Some(host_name) = name::child(&host, owner) else {
                continue;
            };
            if endpoints
                .iter()
                .any(|(i, h, _)| *i == ip && *h == host_name)
            {
                continue;
            }
            endpoints.push((ip, host_name, slice));
        }
    }
    if endpoints.is_empty() {
        b.touch(owner);
    }
    let weight = (100 / endpoints.len().max(1)).max(1) as u16;
    for (ip, host_name, slice) in &endpoints {
        b.add(owner, Data::Ip(*ip));
        b.add(host_name, Data::Ip(*ip));
        b.add(&name::reverse(*ip), Data::Name(TYPE_PTR, host_name.clone()));
        for port in &slice.ports {
            b.add_srv(
                owner,
                (&port.name, port.protocol, port.port),
                weight,
                host_name,
                &[*ip],
            );
        }
    }
}
