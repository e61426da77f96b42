//! The command line's shape and the lab's naming rules.

use super::*;

#[test]
fn command_line_is_well_formed() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn lab_names_keep_interface_names_short() {
    for ok in ["lab", "t12345a", "abcdefgh"] {
        lab::check_name(ok).expect(ok);
    }
    for bad in ["", "Lab", "1lab", "abcdefghi", "a-b", "a b"] {
        assert!(lab::check_name(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn node_configs_are_valid_skein_configs() {
    let dir = Path::new("/run/skein-lab/x/nodes/node-1");
    let iface = lab::overlay_interface("abcdefgh", 12);
    assert!(
        iface.len() <= 15,
        "{iface}: within the kernel's limit even for the longest names"
    );
    let state = lab::state_dir_of("x", "node-1");
    let text = node_config(
        "node-1",
        dir,
        &state,
        &dir.join("node-1.kubeconfig"),
        &iface,
    );
    let file = std::env::temp_dir().join(format!("skein-lab-config-{}.toml", std::process::id()));
    std::fs::write(&file, &text).expect("write");
    let loaded = skein_config::load(Some(&file), std::iter::empty());
    let _ = std::fs::remove_file(&file);
    let loaded = loaded.expect("the lab writes configs skein accepts");
    assert_eq!(loaded.config.node.name, "node-1");
    assert_eq!(loaded.config.dashboard.listen, "127.0.0.1:9610");
    assert_eq!(loaded.config.overlay.interface, iface);
    assert_eq!(loaded.config.overlay.mode, "userspace");
    assert!(
        loaded
            .config
            .store
            .path
            .starts_with("/var/lib/skein-lab/x/node-1"),
        "state on persistent storage, where the daemon keeps its WireGuard key"
    );
}

#[test]
fn underlay_addresses_are_in_the_benchmarking_range() {
    assert_eq!(lab::node_ip(1).to_string(), "198.18.0.11");
    assert!(lab::CONTROL_PLANE_IP.octets()[..2] == [198, 18]);
}
