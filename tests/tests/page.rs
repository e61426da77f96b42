//! The status page in a real headless Chromium: what a person sees, not just what the API says.

use skein_e2e::{Sandbox, rendered_dom, require, which};

#[test]
fn the_page_shows_the_node_name_and_each_parts_state() {
    if !require(
        which("chromium").is_some(),
        "Debian's chromium is not installed",
    ) {
        return;
    }
    let sb = Sandbox::new("page-node-1", "");
    let mut d = sb.start();
    d.wait_ready();
    let status = d.status();
    let dom = rendered_dom(&format!("http://{}/", sb.addr));

    assert!(
        dom.contains(r#"<span id="node">page-node-1</span>"#),
        "node name not rendered:\n{dom}"
    );
    assert!(
        dom.contains(r#"<dd id="ready">yes</dd>"#),
        "readiness not rendered:\n{dom}"
    );
    let parts = status["parts"].as_array().expect("parts");
    assert!(!parts.is_empty());
    for part in parts {
        let name = part["name"].as_str().expect("name");
        let state = part["state"].as_str().expect("state");
        // The part's card carries its name and a badge with its state.
        let card = dom
            .split(&format!(r#"data-part="{name}""#))
            .nth(1)
            .unwrap_or_else(|| panic!("no card for part {name}:\n{dom}"));
        let card = card.split("</li>").next().unwrap_or_default();
        assert!(
            card.contains(&format!(r#"<span class="part-name">{name}</span>"#)),
            "{card}"
        );
        // A part may move on from starting (to ok, or degraded: the overlay without a WireGuard
        // device) between the API call and the page's own fetch.
        let moved_on = ["ok", "degraded", "failed"]
            .iter()
            .any(|s| card.contains(&format!(r#"<span class="badge {s}">{s}</span>"#)));
        let badge_ok = card.contains(&format!(r#"<span class="badge {state}">{state}</span>"#))
            || (state == "starting" && moved_on);
        assert!(badge_ok, "part {name} should show state {state}: {card}");
    }
    assert!(
        !dom.contains("Waiting for the daemon"),
        "the page never rendered the status:\n{dom}"
    );
}
