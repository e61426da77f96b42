//! Unit tests of loading and validation, table-driven over file contents.

use super::*;
use crate::load::toml_keys;
use std::io::Write;
use std::time::Duration;

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    load(Some(file.path()), env)
}

fn problems_of(text: &str) -> Vec<Problem> {
    match load_text(text, &[]) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems for {text:?}, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let loaded = load_text("", &[]).expect("empty file is valid");
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn shipped_default_file_is_exactly_the_defaults() {
    let loaded = load_text(DEFAULT_TOML, &[]).expect("default config is valid");
    assert_eq!(loaded.config, Config::default());
}

#[test]
fn shipped_default_file_documents_every_key() {
    let documented = toml_keys(DEFAULT_TOML).expect("parses");
    assert_eq!(
        documented,
        known_keys(),
        "default.toml and the schema differ"
    );
}

#[test]
fn missing_default_path_means_defaults_but_missing_explicit_path_is_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("nope.toml");
    let err = load(Some(&missing), []).expect_err("explicit missing file");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_the_file() {
    let cases = [
        (
            "[cluster]\npod_cidrr = \"10.0.0.0/8\"\n",
            "cluster.pod_cidrr",
            "did you mean `cluster.pod_cidr`",
        ),
        (
            "[clustr]\npod_cidr = \"10.0.0.0/8\"\n",
            "clustr.pod_cidr",
            "unknown section `clustr`",
        ),
        (
            "pod_cidr = \"10.0.0.0/8\"\n",
            "pod_cidr",
            "keys belong in a section",
        ),
    ];
    for (text, key, hint) in cases {
        let err = load_text(text, &[]).expect_err(text);
        let msg = err.to_string();
        assert!(msg.contains(key), "{msg}");
        assert!(msg.contains(hint), "{msg}");
        assert!(
            msg.contains(".tmp") || msg.contains("/tmp"),
            "names the file: {msg}"
        );
    }
}

#[test]
fn empty_known_section_is_accepted() {
    load_text("[proxy]\n[dns]\n", &[]).expect("empty sections");
}

#[test]
fn invalid_values_name_key_value_and_what_is_allowed() {
    let cases = [
        (
            "[cluster]\npod_cidr = \"10.42.0.0/33\"",
            "cluster.pod_cidr = \"10.42.0.0/33\": not a CIDR",
        ),
        (
            "[cluster]\npod_cidr = \"10.42.0.1/16\"",
            "host bits are set",
        ),
        (
            "[cluster]\nservice_cidr = \"10.42.128.0/20\"",
            "overlaps cluster.pod_cidr",
        ),
        ("[cluster]\ndomain = \"Cluster.Local\"", "cluster.domain"),
        (
            "[cni]\nmtu = \"big\"",
            "cni.mtu = \"big\": expected \"auto\" or a number",
        ),
        (
            "[cni]\nbridge = \"a-very-long-bridge-name\"",
            "at most 15 are allowed",
        ),
        (
            "[cni]\nsocket = \"run/cni.sock\"",
            "cni.socket = \"run/cni.sock\": must be an absolute path",
        ),
        (
            "[overlay]\nmode = \"fast\"",
            "overlay.mode = \"fast\": expected \"auto\", \"kernel\" or \"userspace\"",
        ),
        (
            "[overlay]\npersistent_keepalive = \"soon\"",
            "overlay.persistent_keepalive",
        ),
        ("[overlay]\nlisten_port = 0", "overlay.listen_port"),
        (
            "[proxy]\nnodeport_addresses = [\"1.2.3.4/40\"]",
            "proxy.nodeport_addresses[0]",
        ),
        (
            "[dns]\ncluster_ip = \"10.99.0.10\"",
            "outside cluster.service_cidr",
        ),
        (
            "[dns]\nupstreams = [\"resolver\"]",
            "dns.upstreams[0] = \"resolver\"",
        ),
        (
            "[dashboard]\nlisten = \"0.0.0.0:9610\"",
            "dashboard.allow_remote = true",
        ),
        (
            "[dashboard]\nlisten = \"localhost\"",
            "dashboard.listen = \"localhost\": not an address",
        ),
        ("[log]\nformat = \"xml\"", "log.format = \"xml\""),
        ("[log]\nlevel = \"loud\"", "log.level = \"loud\""),
        ("[node]\nname = \"Node_1\"", "node.name"),
        (
            "[cni]\nbridge = \"skv0\"",
            "cni.bridge = \"skv0\": must not start with `skv`",
        ),
    ];
    for (text, expected) in cases {
        let problems = problems_of(text);
        let joined = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(joined.contains(expected), "for {text:?}: {joined}");
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = "[cluster]\npod_cidr = \"x\"\n[cni]\nmtu = \"y\"\n[log]\nformat = \"z\"\n";
    let keys: Vec<String> = problems_of(text).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["cluster.pod_cidr", "cni.mtu", "log.format"]);
}

#[test]
fn remote_dashboard_is_allowed_when_asked_for() {
    load_text(
        "[dashboard]\nlisten = \"0.0.0.0:9610\"\nallow_remote = true\n",
        &[],
    )
    .expect("explicit allow_remote");
}

#[test]
fn environment_overrides_the_file() {
    let loaded = load_text(
        "[dashboard]\nlisten = \"127.0.0.1:1111\"\n",
        &[
            ("SKEIN_DASHBOARD__LISTEN", "127.0.0.1:2222"),
            ("SKEIN_OVERLAY__LISTEN_PORT", "4000"),
            ("SKEIN_CNI__PORTMAP", "true"),
            ("SKEIN_DNS__UPSTREAMS", "192.0.2.1,192.0.2.2:5353"),
            ("SKEIN_TEST_SOMETHING", "1"),
            ("PATH", "/bin"),
        ],
    )
    .expect("valid");
    assert_eq!(loaded.config.dashboard.listen, "127.0.0.1:2222");
    assert_eq!(loaded.config.overlay.listen_port, 4000);
    assert!(loaded.config.cni.portmap);
    assert_eq!(loaded.config.dns.upstreams, ["192.0.2.1", "192.0.2.2:5353"]);
    assert_eq!(loaded.overrides.len(), 4);
}

#[test]
fn unknown_environment_override_is_an_error_naming_the_variable() {
    let err = load_text("", &[("SKEIN_DASHBOARD__LISTN", "x")]).expect_err("typo");
    let msg = err.to_string();
    assert!(msg.contains("SKEIN_DASHBOARD__LISTN"), "{msg}");
    assert!(msg.contains("dashboard.listen"), "{msg}");
}

#[test]
fn invalid_environment_value_is_validated_like_the_file() {
    let err = load_text("", &[("SKEIN_CLUSTER__POD_CIDR", "10.0.0.0/99")]).expect_err("bad");
    assert!(
        err.to_string()
            .contains("cluster.pod_cidr = \"10.0.0.0/99\""),
        "{err}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let err = load_text("[overlay]\nlisten_port = \"many\"\n", &[]).expect_err("type");
    assert!(err.to_string().contains("listen_port"), "{err}");
}

#[test]
fn syntax_error_names_the_file() {
    let err = load_text("[cluster\n", &[]).expect_err("syntax");
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn node_name_falls_back_to_hostname() {
    let mut config = Config::default();
    let settings = Settings::from_config(&config).expect("defaults are valid");
    assert_eq!(settings.node.name_or("Edge-1"), "edge-1");
    config.node.name = "n1".into();
    let settings = Settings::from_config(&config).expect("valid");
    assert_eq!(settings.node.name_or("edge-1"), "n1");
}

#[test]
fn settings_are_typed_values_of_the_file() {
    let loaded = load_text(
        "[overlay]\nmode = \"userspace\"\nmtu = \"1380\"\npersistent_keepalive = \"25s\"\n\
         [cni]\nbridge = \"br-pods\"\n[daemon]\nresync_interval = \"2m\"\n\
         [dns]\nupstreams = [\"192.0.2.1\", \"192.0.2.2:5353\"]\n",
        &[],
    )
    .expect("valid");
    let s = loaded.settings;
    assert_eq!(s.overlay.mode, OverlayMode::Userspace);
    assert_eq!(s.overlay.mtu, Mtu::Fixed(1380));
    assert_eq!(s.overlay.keepalive_seconds(), Some(25));
    assert_eq!(s.overlay.interface.as_str(), "skein-wg");
    assert_eq!(s.cni.bridge.as_str(), "br-pods");
    assert_eq!(s.cni.mtu, Mtu::Auto);
    assert_eq!(s.daemon.resync_interval, Duration::from_secs(120));
    assert_eq!(s.ipam.gc_interval, Duration::from_secs(300));
    assert_eq!(
        s.cluster.pod_cidr,
        "10.42.0.0/16".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(s.cluster.kubeconfig, None);
    assert_eq!(
        s.dns.upstreams,
        [
            "192.0.2.1:53".parse().unwrap(),
            "192.0.2.2:5353".parse().unwrap()
        ]
    );
    assert_eq!(s.dashboard.listen, "127.0.0.1:9610".parse().unwrap());
    assert_eq!(s.node.underlay_interface, None);
    assert_eq!(
        s.overlay.persistent_keepalive.map(|d| d.as_secs()),
        Some(25)
    );
}

#[test]
fn keepalive_zero_is_off() {
    let s = load_text("", &[]).expect("valid").settings;
    assert_eq!(s.overlay.persistent_keepalive, None);
    assert_eq!(s.overlay.keepalive_seconds(), None);
}

#[test]
fn names_that_could_reach_a_rule_are_refused_with_their_key() {
    for (text, key) in [
        ("[cni]\nbridge = \"br\\\"; flush\"", "cni.bridge"),
        ("[overlay]\ninterface = \"wg;x\"", "overlay.interface"),
        (
            "[node]\nunderlay_interface = \"eth 0\"",
            "node.underlay_interface",
        ),
    ] {
        let problems = problems_of(text);
        assert!(
            problems.iter().any(|p| p.key == key),
            "{text}: {problems:?}"
        );
    }
}

#[test]
fn resync_interval_must_be_a_positive_duration() {
    for bad in ["0s", "soon", "500ms"] {
        let problems = problems_of(&format!("[daemon]\nresync_interval = \"{bad}\""));
        assert_eq!(problems[0].key, "daemon.resync_interval", "{bad}");
    }
}

#[test]
fn effective_config_round_trips_through_toml() {
    let config = Config::default();
    let back: Config = toml::from_str(&config.to_toml()).expect("parses");
    assert_eq!(back, config);
}

#[test]
fn unknown_keys_and_bad_values_are_reported_together() {
    let text = "[cluster]\nservice_cidr = \"10.43.0.0/33\"\n[dns]\nupstream = [\"192.0.2.1\"]\n";
    let keys: Vec<String> = problems_of(text).into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["dns.upstream", "cluster.service_cidr"]);
}
