//! The node's side of pod networking, kept as it should be: the bridge with the gateway
//! addresses and every pod's host end on it, the sysctls pods need, bridged traffic through the
//! IP hooks (`br_netfilter`), and the masquerade chain. One pass compares and repairs only the
//! difference; the part runs it at start, on kernel notifications and on the resync timer.

use ipnet::IpNet;
use skein_nft::{ChainSync, MasqueradePlan, Netlink, OwnedChain};

use super::handler::{PodNetwork, bridge_addresses};

/// What pods need of the node: forwarding, and no strict reverse-path filter dropping traffic
/// that arrives on the bridge for an address routed elsewhere (loose mode, 2, as flannel does).
const SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "2"),
    ("net.ipv4.conf.default.rp_filter", "2"),
];

/// Bridged traffic through the IP hooks: without it traffic between pods on one bridge is
/// switched at layer 2, replies after a ClusterIP DNAT skip the un-NAT, and policy never sees
/// same-node traffic. Per network namespace.
const BRIDGE_NF: [(&str, &str); 2] = [
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
];

/// The masquerade chain kept as it should be, and the nftables socket it is written with
/// (opened on first use, in the daemon's network namespace; reopened after a failure to open).
#[derive(Debug, Default)]
pub(super) struct Masquerade {
    chain: Option<OwnedChain>,
    netlink: Option<Netlink>,
}

/// What one pass found and did.
#[derive(Debug, Default)]
pub(super) struct NodeSync {
    /// Things that differed from what they should be and were put right.
    pub repairs: Vec<String>,
    /// Problems that remain (the page shows the part degraded).
    pub warnings: Vec<String>,
    pub bridge_index: Option<u32>,
}

impl PodNetwork {
    /// Compares the node with what pods on `cidrs` need and repairs the difference.
    pub(super) async fn reconcile_node(
        &self,
        cidrs: &[IpNet],
        masquerade: &mut Masquerade,
    ) -> NodeSync {
        let mut out = NodeSync::default();
        let bridge = self.settings.bridge.as_str();
        // Exclusive of ADD and DEL, for the bridge and its ports only: a pod half-way through
        // its attach is not a stray port. Sysctls and rules need no lock, so ADDs wait little.
        let exclusive = self.gc_lock.write().await;
        let gateways = Self::gateways(cidrs);
        match &gateways {
            Err(e) => out.warnings.push(e.to_string()),
            Ok(gateways) => {
                let mut ensured = self.ensured.lock().await;
                *ensured = None;
                let addresses = bridge_addresses(gateways);
                match self.net.ensure_bridge(bridge, &addresses, self.mtu).await {
                    Err(e) => out.warnings.push(e.to_string()),
                    Ok((index, mut repair)) => {
                        match self.net.ensure_ports(index).await {
                            Ok(ports) => repair.ports_attached = ports,
                            Err(e) => out.warnings.push(e.to_string()),
                        }
                        if !repair.is_empty() {
                            out.repairs.push(repair.describe(bridge));
                        }
                        *ensured = Some(cidrs.to_vec());
                        out.bridge_index = Some(index);
                    }
                }
            }
        }
        drop(exclusive);
        let bridge_nf: &[(&str, &str)] = if skein_podnet::has_br_netfilter() {
            &BRIDGE_NF
        } else {
            out.warnings.push(
                "br_netfilter is not loaded: traffic between pods on this node bypasses the \
                 IP hooks (modprobe br_netfilter; to keep it: echo br_netfilter > \
                 /etc/modules-load.d/br_netfilter.conf)"
                    .into(),
            );
            &[]
        };
        let v6: &[(&str, &str)] = if cidrs.iter().any(|c| c.addr().is_ipv6()) {
            &[("net.ipv6.conf.all.forwarding", "1")]
        } else {
            &[]
        };
        for (key, value) in SYSCTLS.iter().chain(bridge_nf).chain(v6) {
            match skein_podnet::set_sysctl(key, value) {
                Ok(true) => out.repairs.push(format!("{key} set to {value}")),
                Ok(false) => {}
                Err(e) => out.warnings.push(e.to_string()),
            }
        }
        let plan = MasqueradePlan {
            pod_cidrs: cidrs.to_vec(),
            cluster_cidrs: self.settings.cluster_cidrs.clone(),
            // The bridge's gateway addresses: the overlay's peers accept only pod-CIDR sources.
            overlay: self.settings.overlay.clone().map(|ifname| {
                let addresses = gateways.iter().flatten().map(|(_, gw)| *gw).collect();
                (ifname, addresses)
            }),
        };
        let desired = skein_nft::masquerade(&plan);
        let mut chain = masquerade
            .chain
            .take()
            .unwrap_or_else(|| OwnedChain::new(skein_nft::CHAIN_POSTROUTING, desired.clone()));
        chain.set_desired(desired);
        let netlink = masquerade.netlink.take();
        let (chain, netlink, synced) = tokio::task::spawn_blocking(move || {
            let mut netlink = match netlink.map_or_else(Netlink::new, Ok) {
                Ok(n) => n,
                Err(e) => return (chain, None, Err(e)),
            };
            let r = chain.reconcile(&mut netlink);
            (chain, Some(netlink), r)
        })
        .await
        .unwrap_or_else(|e| panic!("the masquerade reconcile panicked: {e}"));
        masquerade.chain = Some(chain);
        masquerade.netlink = netlink;
        match synced {
            Ok(ChainSync::Repaired) => out.repairs.push(format!(
                "nftables chain {} restored",
                skein_nft::CHAIN_POSTROUTING
            )),
            Ok(_) => {}
            Err(e) => out.warnings.push(format!("masquerade rules: {e}")),
        }
        out
    }
}
