//! `up`'s last step: waiting until every node's status page says ok, or, once the deadline has
//! passed, naming each node that is not and why (its parts that are not ok, with their errors).
//! A lab set up broken on purpose waits only for its daemons to be ready.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;
use skein_lab::page;
use skein_lab::wait::{self, WaitError};

use crate::lab::{self, Lab, Node};

/// How long `up` gives the nodes to become healthy once their daemons start: a node opens its
/// store, waits for its pod CIDR from the controller manager, then sets up its bridge, routes
/// and peers (seconds on an idle machine; the margin is for a busy one).
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The host address forwarded to `node`'s status page.
pub fn page_addr(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.page_port))
}

/// What `up` waits for on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The status page's overall health is ok.
    Healthy,
    /// The daemon answers `/readyz` with 200, whatever its parts say.
    Ready,
}

impl Want {
    pub fn waiting_for(self) -> &'static str {
        match self {
            Want::Healthy => "waiting for every node's status page to say ok",
            Want::Ready => "waiting for every node's skein to be ready",
        }
    }

    /// What keeps `node` from what is wanted; empty when it is there.
    fn problems(self, node: &Node) -> Vec<String> {
        match self {
            Want::Healthy => node_problems(page::status(page_addr(node)).as_ref()),
            Want::Ready => match page::http_get(page_addr(node), "/readyz") {
                Some((200, _)) => Vec::new(),
                Some((code, body)) => vec![format!("not ready ({code}): {}", body.trim())],
                None => vec!["its status page does not answer".to_string()],
            },
        }
    }
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
    text.push_str(&problem_lines(nodes));
    text.push_str(&format!(
        "\nthe lab stays up for a look (`skein-lab --name {lab} status`, the nodes' status \
         pages); `skein-lab --name {lab} down` removes it"
    ));
    text
}

/// One line per node and problem, each starting on a new line.
fn problem_lines(nodes: &[(String, Vec<String>)]) -> String {
    let mut text = String::new();
    for (node, problems) in nodes {
        for problem in problems {
            text.push_str(&format!("\n  {node}: {problem}"));
        }
    }
    text
}

/// Waits until every node is as wanted (ok includes ready); fails at once if a node's skein
/// exits. A lab that only had to be ready says which nodes are not ok, and returns.
pub fn wait_for_nodes(lab: &Lab, want: Want, deadline: Duration) -> anyhow::Result<()> {
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
            let problems = want.problems(node);
            if !problems.is_empty() {
                unhealthy.push((node.name.clone(), problems));
            }
        }
        Ok(unhealthy.is_empty().then_some(()))
    });
    match waited {
        Ok(()) if want == Want::Ready => {
            let unhealthy: Vec<(String, Vec<String>)> = lab
                .nodes
                .iter()
                .map(|n| (n.name.clone(), Want::Healthy.problems(n)))
                .filter(|(_, problems)| !problems.is_empty())
                .collect();
            if !unhealthy.is_empty() {
                eprintln!("note: not every node is ok:{}", problem_lines(&unhealthy));
            }
            Ok(())
        }
        Ok(()) => Ok(()),
        Err(WaitError::Failed(e)) => Err(e),
        Err(WaitError::TimedOut(after)) if want == Want::Ready => bail!(
            "after {after:?} not every node's skein is ready:{}",
            problem_lines(&unhealthy)
        ),
        Err(WaitError::TimedOut(after)) => bail!(not_healthy_report(&lab.name, after, &unhealthy)),
    }
}

#[cfg(test)]
mod tests;
