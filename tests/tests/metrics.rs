//! `/metrics` of a real `skein run`, read by the Prometheus project's own text-format parser:
//! conventional names and types, and the labels each part's metrics carry.
//!
//! A daemon without a cluster has no pod CIDR and no peers, so those families are checked to be
//! there (HELP and TYPE) without samples; the overlay's lab test checks the peer samples.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use skein_e2e::{
    Sandbox, has_prometheus_parser, http_get, prometheus_families, require, skein_bin, wait_for,
};

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {families:#?}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

/// One CNI request through the real plugin binary, as a container runtime makes it.
fn cni_status(socket: &str) {
    use std::io::Write;
    let mut child = Command::new(skein_bin())
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("plugin");
    let conf = json!({"cniVersion": "1.1.0", "name": "skein", "type": "skein", "socket": socket});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("stdin");
    child.wait().expect("plugin ran");
}

#[test]
fn metrics_parse_as_prometheus_text_with_each_parts_families_and_labels() {
    if !require(
        has_prometheus_parser(),
        "Debian's python3-prometheus-client is not installed",
    ) {
        return;
    }
    let sb = Sandbox::new("metrics-node", "");
    let mut d = sb.start();
    d.wait_ready();
    let socket = sb.tmp.path().join("cni.sock");
    wait_for("the CNI socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    // No pod CIDR without a cluster: STATUS is answered with an error, and counted.
    cni_status(socket.to_str().expect("utf-8"));
    cni_status(socket.to_str().expect("utf-8"));

    let (code, text) = http_get(sb.addr, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{text}");
    let families = prometheus_families(&text);

    for (name, kind) in [
        ("skein_ready", "gauge"),
        ("skein_part_up", "gauge"),
        ("skein_part_state", "gauge"),
        ("skein_part_restarts", "counter"),
        ("skein_cni_requests", "counter"),
        ("skein_cni_request_duration_seconds", "histogram"),
        ("skein_ipam_addresses_used", "gauge"),
        ("skein_ipam_addresses_capacity", "gauge"),
        ("skein_overlay_peers_up", "gauge"),
        ("skein_overlay_peer_rx_bytes", "counter"),
        ("skein_overlay_peer_tx_bytes", "counter"),
        ("skein_overlay_peer_handshake_age_seconds", "gauge"),
    ] {
        let f = family(&families, name);
        assert_eq!(f["type"], kind, "{f}");
        assert!(
            !f["documentation"].as_str().unwrap_or_default().is_empty(),
            "{name} has no HELP"
        );
    }
    for f in &families {
        let name = f["name"].as_str().expect("name");
        assert!(name.starts_with("skein_"), "{name} lacks the skein_ prefix");
    }

    assert_eq!(sample(&families, "skein_ready", &[]), Some(1.0));
    for part in ["store", "dashboard", "cni", "overlay", "cluster"] {
        assert!(
            sample(&families, "skein_part_up", &[("part", part)]).is_some(),
            "no skein_part_up for {part}"
        );
        assert!(
            sample(&families, "skein_part_restarts_total", &[("part", part)]).is_some(),
            "no restarts for {part}"
        );
        let states: f64 = ["starting", "ok", "degraded", "failed", "disabled"]
            .iter()
            .filter_map(|s| {
                sample(
                    &families,
                    "skein_part_state",
                    &[("part", part), ("state", s)],
                )
            })
            .sum();
        assert_eq!(states, 1.0, "{part} is in exactly one state");
    }
    assert_eq!(
        sample(&families, "skein_part_up", &[("part", "dashboard")]),
        Some(1.0),
        "the page is being served"
    );
    assert_eq!(
        sample(
            &families,
            "skein_cni_requests_total",
            &[("verb", "status"), ("result", "error")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &families,
            "skein_cni_request_duration_seconds_count",
            &[("verb", "status")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &families,
            "skein_cni_request_duration_seconds_bucket",
            &[("verb", "status"), ("le", "+Inf")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&families, "skein_overlay_peers_up", &[]), Some(0.0));
}

#[test]
fn metrics_are_served_as_prometheus_text() {
    let sb = Sandbox::new("metrics-type-node", "");
    let mut d = sb.start();
    d.wait_ready();
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null"])
        .arg(format!("http://{}/metrics", sb.addr))
        .output();
    let Ok(out) = out else {
        require(false, "curl is not installed");
        return;
    };
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
}
