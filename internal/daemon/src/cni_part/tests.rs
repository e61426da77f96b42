//! The GC plan and which kernel notifications concern the bridge.

use std::collections::BTreeSet;

use skein_names::IfName;
use skein_podnet::KernelEvent;
use skein_store::{Lease, PodRef};

use super::{concerns_the_bridge, plan_gc};

fn lease(container: &str, uid: &str) -> Lease {
    Lease {
        cidr: "10.42.1.0/24".parse().unwrap(),
        address: "10.42.1.5".parse().unwrap(),
        container_id: container.into(),
        ifname: "eth0".into(),
        pod: PodRef {
            namespace: "default".into(),
            name: format!("pod-{container}"),
            uid: uid.into(),
        },
        created_at: 0,
    }
}

fn host_end(container: &str) -> String {
    skein_podnet::host_ifname(container, "eth0")
}

fn attachment(container: &str) -> (String, String) {
    (container.to_string(), "eth0".to_string())
}

#[test]
fn without_the_runtimes_list_a_lease_goes_only_when_pod_and_interface_are_both_gone() {
    let leases = [
        lease("a", "uid-a"), // pod known, link present
        lease("b", "uid-b"), // pod gone, link present: kept (the runtime may still use it)
        lease("c", "uid-c"), // pod known, link gone: kept (the pod's ADD may be in flight)
        lease("d", "uid-d"), // both gone: freed
    ];
    let links: BTreeSet<String> = [host_end("a"), host_end("b")].into();
    let pods: BTreeSet<String> = ["uid-a".to_string(), "uid-c".to_string()].into();
    let plan = plan_gc(&leases, &links, None, Some(&pods));
    assert_eq!(
        plan.keep,
        [attachment("a"), attachment("b"), attachment("c")].into()
    );
    assert!(plan.detach.is_empty(), "{plan:?}");
}

#[test]
fn before_the_first_cluster_view_no_lease_counts_as_gone() {
    let leases = [lease("d", "uid-d")];
    let plan = plan_gc(&leases, &BTreeSet::new(), None, None);
    assert_eq!(plan.keep, [attachment("d")].into());
}

#[test]
fn with_the_runtimes_list_whatever_it_no_longer_knows_goes_and_its_link_is_detached() {
    let leases = [
        lease("a", "uid-a"),
        lease("b", "uid-b"),
        lease("c", "uid-c"),
    ];
    let links: BTreeSet<String> = [host_end("a"), host_end("b")].into();
    let valid: BTreeSet<(String, String)> = [attachment("a")].into();
    let pods: BTreeSet<String> = ["uid-b".to_string()].into();
    let plan = plan_gc(&leases, &links, Some(&valid), Some(&pods));
    assert_eq!(plan.keep, [attachment("a")].into());
    assert_eq!(plan.detach, [("eth0".to_string(), host_end("b"))]);
}

#[test]
fn bridge_notifications_are_told_from_pod_churn() {
    let bridge = IfName::new("skein0").unwrap();
    let link = |name: &str, controller: Option<u32>, removed| KernelEvent::Link {
        index: 9,
        name: Some(name.into()),
        controller,
        up: true,
        removed,
    };
    let bridge_event = |index, up, removed| KernelEvent::Link {
        index,
        name: Some("skein0".into()),
        controller: None,
        up,
        removed,
    };
    let cases = [
        (bridge_event(4, true, true), true),
        // Made anew: another index.
        (bridge_event(5, true, false), true),
        (bridge_event(4, false, false), true),
        // A port came or went: the bridge's own NEWLINK, same index, up.
        (bridge_event(4, true, false), false),
        // A new pod's host end, born on the bridge: no drift.
        (link(&host_end("a"), Some(4), false), false),
        // A host end off the bridge (the bridge was re-made): drift.
        (link(&host_end("a"), None, false), true),
        (link(&host_end("a"), None, true), false),
        (link("eth0", None, false), false),
        (
            KernelEvent::Address {
                index: 4,
                removed: true,
            },
            true,
        ),
        (
            KernelEvent::Address {
                index: 4,
                removed: false,
            },
            false,
        ),
        (
            KernelEvent::Address {
                index: 7,
                removed: true,
            },
            false,
        ),
        (
            KernelEvent::Route {
                oif: Some(4),
                removed: true,
            },
            false,
        ),
        (KernelEvent::Lost, true),
    ];
    for (event, expected) in cases {
        assert_eq!(
            concerns_the_bridge(&event, &bridge, Some(4)),
            expected,
            "{event:?}"
        );
    }
}
