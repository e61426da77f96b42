//! The pods' hostPorts in the proxy part: the `cni` part publishes what the store pairs (each
//! mapping with the pod's addresses, in order of arrival) on the daemon's channel; the proxy
//! sets them on its state before each sync (a change wakes it), where they are diffed like a
//! Service. A port two pods claim is shown as a problem, by pod.

use skein_cluster::ObjectKey;
use skein_cni::Protocol;
use skein_nft::L4Proto;
use skein_proxy::HostPort;
use skein_proxy::sync::Computation;
use skein_store::HostPortTarget;

use super::section::ProblemRow;

/// The proxy's input from the store's rows, in the same order (the first claim of a port keeps
/// it). A pod the runtime did not name is known by its container.
pub fn for_proxy(targets: &[HostPortTarget]) -> Vec<HostPort> {
    targets
        .iter()
        .map(|t| HostPort {
            pod: if t.pod.name.is_empty() {
                ObjectKey::new(
                    t.pod.namespace.clone(),
                    format!(
                        "container-{}",
                        t.container_id.chars().take(12).collect::<String>()
                    ),
                )
            } else {
                ObjectKey::new(t.pod.namespace.clone(), t.pod.name.clone())
            },
            addr: t.address,
            port: t.mapping.container_port,
            host_port: t.mapping.host_port,
            protocol: match t.mapping.protocol {
                Protocol::Tcp => L4Proto::Tcp,
                Protocol::Udp => L4Proto::Udp,
                Protocol::Sctp => L4Proto::Sctp,
            },
            host_ip: t.mapping.host_ip,
        })
        .collect()
}

/// The host ports left out, as the page's problems.
pub fn problems<'a>(computation: &'a Computation<'_>) -> impl Iterator<Item = ProblemRow> + 'a {
    computation.host_port_clashes.iter().map(|c| ProblemRow {
        service: format!("pod {}", c.pod),
        problem: c.reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_cni::PortMapping;
    use skein_store::PodRef;

    #[test]
    fn the_stores_rows_become_the_proxys_host_ports_in_order() {
        let row = |name: &str, protocol, address: &str| HostPortTarget {
            container_id: "4c3f0ab1d2e5f6a7b8c9".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "default".into(),
                name: name.into(),
                uid: "u".into(),
            },
            mapping: PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol,
                host_ip: Some("198.18.0.11".parse().expect("ip")),
            },
            address: address.parse().expect("ip"),
        };
        let got = for_proxy(&[
            row("web", Protocol::Sctp, "10.42.1.5"),
            row("", Protocol::Udp, "10.42.1.6"),
        ]);
        assert_eq!(
            got,
            [
                HostPort {
                    pod: ObjectKey::new("default", "web"),
                    addr: "10.42.1.5".parse().expect("ip"),
                    port: 80,
                    host_port: 8080,
                    protocol: L4Proto::Sctp,
                    host_ip: Some("198.18.0.11".parse().expect("ip")),
                },
                HostPort {
                    pod: ObjectKey::new("default", "container-4c3f0ab1d2e5"),
                    addr: "10.42.1.6".parse().expect("ip"),
                    port: 80,
                    host_port: 8080,
                    protocol: L4Proto::Udp,
                    host_ip: Some("198.18.0.11".parse().expect("ip")),
                },
            ]
        );
    }
}
