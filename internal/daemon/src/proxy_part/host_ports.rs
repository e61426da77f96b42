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

    /// The host ports' rules as the kernel takes them (the fib, nfproto and port-only map
    /// expressions), a restart adopting them unchanged, and one mapping going.
    #[test]
    fn host_ports_land_in_the_kernel_and_a_restart_adopts_them_unchanged() {
        use skein_nft::{Backend, Netlink};
        use skein_proxy::{Mirror, NodeContext, ProxyState};
        if !skein_lab::skip::require_root("nftables in a private network namespace") {
            return;
        }
        let port = |pod: &str, addr: &str, host_port, protocol, host_ip: Option<&str>| HostPort {
            pod: ObjectKey::new("default", pod),
            addr: addr.parse().expect("ip"),
            port: 8080,
            host_port,
            protocol,
            host_ip: host_ip.map(|ip| ip.parse().expect("ip")),
        };
        let ports = vec![
            port("a", "10.42.1.5", 80, L4Proto::Tcp, None),
            port("a", "fd42::1:5", 80, L4Proto::Tcp, None),
            port("b", "10.42.1.6", 53, L4Proto::Udp, Some("127.0.0.1")),
            port("c", "10.42.1.7", 9000, L4Proto::Sctp, Some("0.0.0.0")),
        ];
        let (restart_changes, removal_changes) =
            crate::proxy_part::tests::in_private_netns(move || {
                let ctx = NodeContext {
                    node: "n1".into(),
                    ..NodeContext::default()
                };
                let snapshot = skein_cluster::Snapshot::default();
                let mut nl = Netlink::new().expect("netlink");
                let mut state = ProxyState::new(ctx.clone());
                state.set_host_ports(ports.clone());
                for tx in state
                    .plan(&snapshot, &ctx, true)
                    .take_transactions(super::super::MAX_TRANSACTION)
                {
                    nl.apply(&tx).expect("the kernel takes the host port rules");
                }

                let mut again = ProxyState::new(ctx.clone());
                again.adopt(Mirror::from_dump(&nl.dump().expect("dump").expect("table")));
                again.set_host_ports(ports.clone());
                let restart = again.plan(&snapshot, &ctx, true);

                again.set_host_ports(ports[1..].to_vec());
                let mut removal = again.plan(&snapshot, &ctx, false);
                for tx in removal.take_transactions(super::super::MAX_TRANSACTION) {
                    nl.apply(&tx).expect("apply the removal");
                }
                nl.apply(&again.deletions(&removal.delete_later))
                    .expect("delete the flushed chain");
                (
                    restart.changed,
                    (removal.changed, removal.delete_later.len()),
                )
            });
        assert_eq!(
            restart_changes, 0,
            "a restart with the same host ports changes nothing"
        );
        assert_eq!(
            removal_changes,
            (1, 1),
            "one element out, one chain flushed and deleted"
        );
    }
}
