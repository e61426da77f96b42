//! skein's nftables table, `inet skein`, and nothing else in the ruleset.
//!
//! A change is a [`Transaction`]: an ordered list of add/flush/delete operations on the table,
//! applied atomically by a [`Backend`]. The rules themselves are pure functions of the
//! node's state (see [`masquerade`]); the `nft` program backend is the thin apply step. Later
//! parts (service proxy, policy) keep to the same table and the same transaction type, so a
//! netlink backend with bounded batches can replace the program without touching them.
//!
//! ## The hook plan
//!
//! Every base chain skein will have, with the part that owns it. Parts never write another
//! part's chain. Rows marked *planned* arrive with their part; their hooks and priorities are
//! fixed now so that three parts can share one table without reordering later.
//!
//! | chain              | type   | hook        | priority      | owner    | what |
//! |--------------------|--------|-------------|---------------|----------|------|
//! | `dns_raw_pre`      | filter | prerouting  | -300 (raw)    | dns      | *planned*: NOTRACK to and from the DNS addresses |
//! | `dns_raw_out`      | filter | output      | -300 (raw)    | dns      | *planned*: NOTRACK for the node's own DNS traffic |
//! | `overlay_mss`      | filter | forward     | -150 (mangle) | overlay  | clamp TCP MSS to the route MTU through the overlay |
//! | `proxy_firewall`   | filter | prerouting  | -110          | proxy    | *planned*: reject/drop dead service ports, each rule guarded by `ct state new` |
//! | `proxy_nat_pre`    | nat    | prerouting  | -100 (dstnat) | proxy    | *planned*: Service DNAT through verdict maps |
//! | `proxy_nat_out`    | nat    | output      | -100 (dstnat) | proxy    | *planned*: DNAT of the node's own Service traffic |
//! | `proxy_filter_out` | filter | output      | -90           | proxy    | *planned*: post-DNAT checks of host-originated traffic |
//! | `policy_forward`   | filter | forward     | 0 (filter)    | policy   | *planned*: NetworkPolicy for routed and bridged pod traffic |
//! | `policy_input`     | filter | input       | 0 (filter)    | policy   | *planned*: NetworkPolicy for pod-to-host traffic |
//! | `postrouting`      | nat    | postrouting | 100 (srcnat)  | cni      | the one masquerade chain: pod traffic leaving the cluster CIDR; the proxy's masquerade mark becomes an input of this chain's builder, never a second writer |
//!
//! Bridged pod-to-pod traffic reaches the `forward` hooks only with `br_netfilter` and
//! `net.bridge.bridge-nf-call-iptables`/`-ip6tables` = 1, which the CNI part ensures (and names
//! on the page when the module is missing).
//!
//! Each chain is rebuilt by its own transaction (add, flush, fill), so the parts that own
//! different chains never undo each other's rules. An [`OwnedChain`] keeps one chain as it
//! should be: it compares the kernel's listing with the one it saw after its last apply and
//! re-applies only when they differ; [`RulesetChanges`] (the nftables netlink group) tells the
//! owner when to look.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use skein_names::{IfName, NftComment};

mod monitor;
mod owned;
#[cfg(test)]
mod tests;

pub use monitor::RulesetChanges;
pub use owned::{ChainSync, OwnedChain};

/// The one table skein owns.
pub const TABLE: &str = "skein";
pub const FAMILY: &str = "inet";
pub const CHAIN_POSTROUTING: &str = "postrouting";
pub const CHAIN_OVERLAY_MSS: &str = "overlay_mss";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft rejected the transaction: {stderr}")]
    Rejected { stderr: String },
    #[error("nft could not list chain {chain}: {stderr}")]
    List { chain: String, stderr: String },
    #[error("cannot follow nftables changes (netlink): {0}")]
    Monitor(std::io::Error),
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: &'static str,
    pub policy: &'static str,
}

/// One operation on skein's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing (never fails on an existing one).
    AddTable,
    /// Empties every chain of the table, keeping chains and sets.
    FlushTable,
    DeleteTable,
    AddChain {
        name: String,
        hook: Option<Hook>,
    },
    FlushChain {
        name: String,
    },
    AddRule {
        chain: String,
        rule: String,
        comment: Option<NftComment>,
    },
}

/// An ordered list of operations applied as one atomic change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// The transaction in `nft -f` syntax.
    pub fn script(&self) -> String {
        let mut out = String::new();
        let t = format!("{FAMILY} {TABLE}");
        for op in &self.ops {
            let _ = match op {
                Op::AddTable => writeln!(out, "add table {t}"),
                Op::FlushTable => writeln!(out, "flush table {t}"),
                Op::DeleteTable => writeln!(out, "delete table {t}"),
                Op::AddChain { name, hook: None } => writeln!(out, "add chain {t} {name}"),
                Op::AddChain {
                    name,
                    hook: Some(h),
                } => writeln!(
                    out,
                    "add chain {t} {name} {{ type {} hook {} priority {}; policy {}; }}",
                    h.kind, h.hook, h.priority, h.policy
                ),
                Op::FlushChain { name } => writeln!(out, "flush chain {t} {name}"),
                Op::AddRule {
                    chain,
                    rule,
                    comment: None,
                } => writeln!(out, "add rule {t} {chain} {rule}"),
                Op::AddRule {
                    chain,
                    rule,
                    comment: Some(c),
                } => {
                    // NftComment holds no quote or backslash, so it cannot end the string.
                    writeln!(out, "add rule {t} {chain} {rule} comment \"{c}\"")
                }
            };
        }
        out
    }
}

/// A fixed comment of skein's own; API names go through [`NftComment::lossy`] instead.
fn comment(text: &'static str) -> NftComment {
    NftComment::new(text).unwrap_or_else(|_| NftComment::lossy(text))
}

/// Applies transactions to the kernel, and reads back what one chain of the table holds.
pub trait Backend {
    fn apply(&self, tx: &Transaction) -> Result<(), NftError>;
    /// The kernel's listing of chain `name` of skein's table; `None` when the table or the
    /// chain does not exist.
    fn list_chain(&self, name: &str) -> Result<Option<String>, NftError>;
}

/// The `nft` program: fine for a few static rules (it re-reads the table on every run, which
/// the service proxy's thousands of rules will not afford).
#[derive(Debug, Clone, Default)]
pub struct NftProgram;

impl Backend for NftProgram {
    fn apply(&self, tx: &Transaction) -> Result<(), NftError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(NftError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(tx.script().as_bytes())
                .map_err(NftError::Spawn)?;
        }
        let out = child.wait_with_output().map_err(NftError::Spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NftError::Rejected {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn list_chain(&self, name: &str) -> Result<Option<String>, NftError> {
        let out = Command::new("nft")
            .args(["list", "chain", FAMILY, TABLE, name])
            // The missing-chain test below reads nft's message, which a locale would translate.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(NftError::Spawn)?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // nft says ENOENT for a missing table or chain.
        if stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NftError::List {
                chain: name.to_string(),
                stderr,
            })
        }
    }
}

/// The start of every chain's transaction: the table and the base chain made if missing, the
/// chain emptied; the caller adds the rules. Other chains are left as they are.
fn rebuild_chain(name: &str, hook: Hook) -> Transaction {
    let mut tx = Transaction::default();
    tx.push(Op::AddTable)
        .push(Op::AddChain {
            name: name.into(),
            hook: Some(hook),
        })
        .push(Op::FlushChain { name: name.into() });
    tx
}

/// TCP SYNs forwarded into or out of the overlay interface `ifname` get their MSS clamped to
/// the route's MTU, so a smaller MTU somewhere on the path cannot black-hole large segments.
pub fn overlay_mss_clamp(ifname: &IfName) -> Transaction {
    let mut tx = rebuild_chain(
        CHAIN_OVERLAY_MSS,
        Hook {
            kind: "filter",
            hook: "forward",
            priority: "mangle",
            policy: "accept",
        },
    );
    for dir in ["oifname", "iifname"] {
        tx.push(Op::AddRule {
            chain: CHAIN_OVERLAY_MSS.into(),
            rule: format!(
                "{dir} \"{ifname}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu"
            ),
            comment: Some(comment("MSS clamp on the overlay")),
        });
    }
    tx
}

/// The table's full state for masquerading: pod traffic from `pod_cidrs` to anywhere outside
/// `cluster_cidrs` leaves with the node's address; pod-to-pod traffic keeps its source. One
/// transaction that rebuilds its chain, so applying it twice changes nothing.
pub fn masquerade(pod_cidrs: &[IpNet], cluster_cidrs: &[IpNet]) -> Transaction {
    let mut tx = rebuild_chain(
        CHAIN_POSTROUTING,
        Hook {
            kind: "nat",
            hook: "postrouting",
            priority: "srcnat",
            policy: "accept",
        },
    );
    for pod in pod_cidrs {
        for cluster in cluster_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == pod.addr().is_ipv4())
        {
            let ip = if pod.addr().is_ipv4() { "ip" } else { "ip6" };
            tx.push(Op::AddRule {
                chain: CHAIN_POSTROUTING.into(),
                rule: format!("{ip} saddr {pod} {ip} daddr != {cluster} masquerade"),
                comment: Some(comment("pod traffic leaving the cluster")),
            });
        }
    }
    tx
}
