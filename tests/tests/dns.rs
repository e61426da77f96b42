//! Cluster DNS end to end, in a 3-node lab through the real API server and EndpointSlice
//! controller: from pods on every node, Debian's `dig` asks both DNS addresses (the link-local
//! one and the kube-dns ClusterIP) for every record form; a new Service resolves and a deleted
//! one stops resolving within a second on every node; a pod's resolver finds short names
//! through its search path; names outside the cluster go to a stub upstream inside the lab
//! (cached, and SERVFAIL when it is gone).

use std::time::{Duration, Instant};

use skein_e2e::lab::{self, Lab};

const CLUSTER_DNS: &str = "10.43.0.10";
const NODE_LOCAL_DNS: &str = "169.254.20.10";

/// `dig @server name type +short` (and the status line) from inside `netns`: (status, answers).
fn dig(lab: &Lab, netns: &str, server: &str, name: &str, rtype: &str) -> (String, Vec<String>) {
    let at = format!("@{server}");
    let (ok, out) = lab.exec(
        netns,
        &[
            "dig",
            &at,
            name,
            rtype,
            "+tries=1",
            "+time=3",
            "+noall",
            "+comments",
            "+answer",
        ],
    );
    assert!(ok, "dig {name} {rtype} at {server} from {netns}: {out}");
    let status = out
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no status in dig's answer: {out}"));
    let mut answers: Vec<String> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| {
            // name TTL IN TYPE data...: keep "name TYPE data".
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {}", f[0], f[3], f[4..].join(" "))
        })
        .collect();
    answers.sort();
    (status, answers)
}

fn pod(name: &str, namespace: &str, node: &str, app: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n{extra}  containers: [{{name: main, image: lab, ports: [{{containerPort: 8080}}]}}]\n"
    )
}

#[test]
fn pods_on_every_node_resolve_the_cluster_zone_and_forward_the_rest() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    let lab = Lab::up(3, &[]);
    let nodes = lab.node_names();
    // The lab's upstream: a stub in the control plane's namespace, at the nodes' dns.upstreams.
    let stub_log = format!("{}/dns-stub.log", lab.dir());
    let mut stub = lab
        .tool_in(&lab.control_plane_netns())
        .args(["dns-stub", "--listen", "198.18.0.1:53", "--log", &stub_log])
        .spawn()
        .expect("start the stub upstream");

    let mut objects = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
         spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}\n"
            .to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: default}\n\
         spec: {clusterIP: None, selector: {app: db}, ports: [{name: pg, port: 5432, targetPort: 8080}]}\n"
            .to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: alias, namespace: default}\n\
         spec: {type: ExternalName, externalName: web.default.svc.cluster.local}\n"
            .to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: outside, namespace: default}\n\
         spec: {type: ExternalName, externalName: far.example.test}\n"
            .to_string(),
        pod("web-1", "default", &nodes[0], "web", ""),
        pod("db-0", "default", &nodes[1], "db", "  hostname: db-0\n  subdomain: db\n"),
        pod("db-1", "default", &nodes[2], "db", ""),
    ];
    for (i, node) in nodes.iter().enumerate() {
        objects.push(pod(
            &format!("client-{}", i + 1),
            "default",
            node,
            "client",
            "",
        ));
    }
    objects.push(pod("elsewhere", "other", &nodes[2], "client", ""));
    lab.apply(&objects.join("---\n"));
    let clients: Vec<(String, String)> =
        lab.wait("the pods to run", Duration::from_secs(90), || {
            (1..=3)
                .map(|i| lab.pod("default", &format!("client-{i}")))
                .collect::<Option<Vec<_>>>()
        });
    let (_, web_ip) = lab.wait("web-1", Duration::from_secs(60), || {
        lab.pod("default", "web-1")
    });
    let (_, db0_ip) = lab.wait("db-0", Duration::from_secs(60), || {
        lab.pod("default", "db-0")
    });
    let (_, db1_ip) = lab.wait("db-1", Duration::from_secs(60), || {
        lab.pod("default", "db-1")
    });
    let (elsewhere, _) = lab.wait("elsewhere", Duration::from_secs(60), || {
        lab.pod("other", "elsewhere")
    });
    let services = lab.must(&["get", "services", "-o", "json"]);
    let services: serde_json::Value = serde_json::from_str(&services).expect("services");
    let web_vip = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["metadata"]["name"] == "web"))
        .and_then(|s| s["spec"]["clusterIP"].as_str())
        .expect("web's cluster IP")
        .to_string();
    let reverse = |ip: &str| {
        let mut o: Vec<&str> = ip.split('.').collect();
        o.reverse();
        format!("{}.in-addr.arpa.", o.join("."))
    };
    let dashed = |ip: &str| ip.replace('.', "-");
    // The headless Service's endpoints are ready once both db pods are.
    lab.wait("db's endpoints in DNS", Duration::from_secs(60), || {
        let (_, a) = dig(
            &lab,
            &clients[0].0,
            CLUSTER_DNS,
            "db.default.svc.cluster.local",
            "A",
        );
        (a.len() == 2).then_some(())
    });

    let svc = |n: &str| format!("{n}.default.svc.cluster.local.");
    let cases: Vec<(String, &str, &str, Vec<String>)> = vec![
        (
            "dns-version.cluster.local".into(),
            "TXT",
            "NOERROR",
            vec!["dns-version.cluster.local. TXT \"1.1.0\"".into()],
        ),
        (
            svc("web"),
            "A",
            "NOERROR",
            vec![format!("{} A {web_vip}", svc("web"))],
        ),
        (svc("web"), "AAAA", "NOERROR", vec![]),
        (
            format!("_http._tcp.{}", svc("web")),
            "SRV",
            "NOERROR",
            vec![format!(
                "_http._tcp.{} SRV 0 100 80 {}",
                svc("web"),
                svc("web")
            )],
        ),
        (
            reverse(&web_vip),
            "PTR",
            "NOERROR",
            vec![format!("{} PTR {}", reverse(&web_vip), svc("web"))],
        ),
        (svc("db"), "A", "NOERROR", {
            let mut v = vec![
                format!("{} A {db0_ip}", svc("db")),
                format!("{} A {db1_ip}", svc("db")),
            ];
            v.sort();
            v
        }),
        (
            format!("db-0.{}", svc("db")),
            "A",
            "NOERROR",
            vec![format!("db-0.{} A {db0_ip}", svc("db"))],
        ),
        (
            format!("{}.{}", dashed(&db1_ip), svc("db")),
            "A",
            "NOERROR",
            vec![format!("{}.{} A {db1_ip}", dashed(&db1_ip), svc("db"))],
        ),
        (
            reverse(&db0_ip),
            "PTR",
            "NOERROR",
            vec![format!("{} PTR db-0.{}", reverse(&db0_ip), svc("db"))],
        ),
        (
            svc("alias"),
            "A",
            "NOERROR",
            vec![
                format!("{} CNAME {}", svc("alias"), svc("web")),
                format!("{} A {web_vip}", svc("web")),
            ],
        ),
        (
            format!("{}.default.pod.cluster.local.", dashed(&web_ip)),
            "A",
            "NOERROR",
            vec![format!(
                "{}.default.pod.cluster.local. A {web_ip}",
                dashed(&web_ip)
            )],
        ),
        ("default.svc.cluster.local.".into(), "A", "NOERROR", vec![]),
        (svc("nothing"), "A", "NXDOMAIN", vec![]),
    ];
    for (netns, _) in &clients {
        for server in [CLUSTER_DNS, NODE_LOCAL_DNS] {
            for (name, rtype, status, want) in &cases {
                let (got_status, got) = dig(&lab, netns, server, name, rtype);
                assert_eq!(
                    (&got_status.as_str(), &got),
                    (status, want),
                    "{name} {rtype} at {server} from {netns}"
                );
            }
        }
    }

    // A pod's own resolver, through its search path.
    let (ok, out) = lab.exec(&clients[1].0, &["getent", "hosts", "web"]);
    assert!(ok && out.starts_with(&web_vip), "getent hosts web: {out}");
    let (ok, out) = lab.exec(&elsewhere, &["getent", "hosts", "web.default"]);
    assert!(
        ok && out.starts_with(&web_vip),
        "getent hosts web.default from namespace other: {out}"
    );

    // A new Service resolves on every node within a second; a deleted one is gone as fast.
    lab.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\n\
         spec: {selector: {app: web}, ports: [{port: 81, targetPort: 8080}]}\n",
    );
    let created = Instant::now();
    for (netns, _) in &clients {
        while dig(&lab, netns, CLUSTER_DNS, &svc("fresh"), "A")
            .1
            .is_empty()
        {
            assert!(
                created.elapsed() < Duration::from_secs(1),
                "fresh not resolvable from {netns} after 1 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "a new Service resolved on all 3 nodes {:?} after the API took it",
        created.elapsed()
    );
    lab.must(&["delete", "service", "fresh"]);
    let deleted = Instant::now();
    for (netns, _) in &clients {
        while dig(&lab, netns, CLUSTER_DNS, &svc("fresh"), "A").0 != "NXDOMAIN" {
            assert!(
                deleted.elapsed() < Duration::from_secs(1),
                "fresh still resolves from {netns} after 1 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "a deleted Service was NXDOMAIN on all 3 nodes {:?} after",
        deleted.elapsed()
    );

    // Outside the cluster: the stub answers, once for repeated lookups (the cache), and the
    // ExternalName's target comes with its CNAME.
    let stub_asked = |name: &str| {
        std::fs::read_to_string(&stub_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name))
            .count()
    };
    let (status, got) = dig(&lab, &clients[0].0, CLUSTER_DNS, "www.example.test", "A");
    assert_eq!((status.as_str(), got.len()), ("NOERROR", 1), "{got:?}");
    assert!(
        got[0].starts_with("www.example.test. A 192.0.2."),
        "{got:?}"
    );
    for _ in 0..3 {
        assert_eq!(
            dig(&lab, &clients[0].0, CLUSTER_DNS, "www.example.test", "A").1,
            got
        );
    }
    assert_eq!(
        stub_asked("www.example.test."),
        1,
        "repeated lookups reach the upstream once"
    );
    let (status, got) = dig(
        &lab,
        &clients[0].0,
        CLUSTER_DNS,
        "missing.example.test",
        "A",
    );
    assert_eq!((status.as_str(), got.len()), ("NXDOMAIN", 0));
    let (_, got) = dig(&lab, &clients[2].0, NODE_LOCAL_DNS, &svc("outside"), "A");
    // (dig's lines sorted: the target's address, then the CNAME.)
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("far.example.test. A 192.0.2."),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        format!("{} CNAME far.example.test.", svc("outside"))
    );

    // The upstream gone: SERVFAIL within the forwarder's deadline, not silence.
    stub.kill().expect("stop the stub");
    let _ = stub.wait();
    // (dig gives up after its 3 s: an answer at all means within them.)
    let (status, _) = dig(&lab, &clients[1].0, CLUSTER_DNS, "other.example.test", "A");
    assert_eq!(status, "SERVFAIL");
    // The cluster zone goes on answering.
    assert_eq!(
        dig(&lab, &clients[1].0, CLUSTER_DNS, &svc("web"), "A").0,
        "NOERROR"
    );

    // The page's section and the metrics show it, CoreDNS's names with skein's prefix.
    let node = &nodes[1];
    let dns: serde_json::Value = lab.wait(
        "the DNS section to count the queries",
        Duration::from_secs(10),
        || {
            let (code, body) = skein_e2e::http_get(lab.page(node), "/api/v1/dns")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["upstreams"][0]["healthy"] == false && v["queries"].as_u64()? > 0)
                .then_some(v)
        },
    );
    assert_eq!(dns["zone"], "cluster.local", "{dns}");
    assert_eq!(dns["upstreams"][0]["address"], "198.18.0.1:53", "{dns}");
    let answers = dns["answers"].as_array().expect("answers by rcode");
    for code in ["NOERROR", "NXDOMAIN", "SERVFAIL"] {
        assert!(
            answers
                .iter()
                .any(|a| a["rcode"] == code && a["answers"].as_u64() > Some(0)),
            "{code} in {dns}"
        );
    }
    let (_, metrics) = skein_e2e::http_get(lab.page(node), "/metrics").expect("/metrics");
    for family in [
        "skein_dns_requests_total{proto=\"udp\"}",
        "skein_dns_responses_total{rcode=\"NXDOMAIN\"}",
        "skein_dns_cache_hits_total",
        "skein_dns_upstream_healthy{to=\"198.18.0.1:53\"} 0",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics:\n{metrics}");
    }
    // `skein dns query` from the node itself asks the node-local address.
    let (ok, out) = lab.exec(
        &lab.netns(node),
        &[
            skein_e2e::skein_bin().to_str().expect("utf-8"),
            "dns",
            "query",
            "web.default.svc.cluster.local",
            "--server",
            NODE_LOCAL_DNS,
        ],
    );
    assert!(
        ok && out.contains(&format!("web.default.svc.cluster.local. 5 A {web_vip}")),
        "skein dns query: {out}"
    );
}
