//! `up`'s last step: waiting until every node's status page says ok, or, once the deadline has
//! passed, naming each node that is not and why (its parts that are not ok, with their errors).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use skein_lab::page;
use skein_lab::wait::{self, WaitError};

use crate::lab::{self, Lab, Node};

/// How long `up` gives the nodes to become healthy once their daemons run: a node waits for its
/// pod CIDR from the controller manager, then sets up its bridge, routes and peers.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The host address forwarded to `node`'s status page.
pub fn page_addr(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.page_port))
}

/// What keeps a node from being ok, from its status report (`None`: the page did not answer);
/// empty when it is ok.
pub fn node_problems(status: Option<&Value>) -> Vec<String> {
    match status {
        None => vec!["its status page does not answer".to_string()],
        Some(s) if page::is_ok(s) => Vec::new(),
        Some(s) => {
            let problems = page::problems(s);
            if problems.is_empty() {
                vec![format!("its overall health is {}", s["overall"])]
            } else {
                problems
            }
        }
    }
}

/// The error `up` ends with when some nodes are not ok: one line per node and problem.
pub fn not_healthy_report(lab: &str, after: Duration, nodes: &[(String, Vec<String>)]) -> String {
    let mut text = format!("after {after:?} not every node is ok:");
    for (node, problems) in nodes {
        for problem in problems {
            text.push_str(&format!("\n  {node}: {problem}"));
        }
    }
    text.push_str(&format!(
        "\nthe lab stays up for a look (`skein-lab --name {lab} status`, the nodes' status \
         pages); `skein-lab --name {lab} down` removes it"
    ));
    text
}

/// Waits until every node's `/api/v1/status` says ok; fails at once if a node's skein exits.
pub fn wait_until_healthy(lab: &Lab, deadline: Duration) -> anyhow::Result<()> {
    let mut unhealthy: Vec<(String, Vec<String>)> = Vec::new();
    let waited = wait::poll(deadline, Duration::from_millis(200), || {
        unhealthy.clear();
        for node in &lab.nodes {
            let process = &lab.processes[&node.name];
            if !process.pid.is_some_and(lab::alive) {
                bail!(
                    "skein on {} exited; its log: {}",
                    node.name,
                    process.log.display()
                );
            }
            let problems = node_problems(page::status(page_addr(node)).as_ref());
            if !problems.is_empty() {
                unhealthy.push((node.name.clone(), problems));
            }
        }
        Ok(unhealthy.is_empty().then_some(()))
    });
    match waited {
        Ok(()) => Ok(()),
        Err(WaitError::Failed(e)) => Err(e),
        Err(WaitError::TimedOut(after)) => bail!(not_healthy_report(&lab.name, after, &unhealthy)),
    }
}

#[cfg(test)]
mod tests;
