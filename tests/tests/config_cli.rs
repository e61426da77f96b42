//! `skein config check|default`, `skein version` and `--help`, as a person would run them.

use skein_e2e::skein;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn the_default_config_passes_check() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ok, default, _) = skein(&["config", "default"], &[]);
    assert!(ok);
    assert!(default.contains("# "), "the default config is commented");
    let path = write(&dir, "default.toml", &default);
    let (ok, out, err) = skein(&["config", "check", &path], &[]);
    assert!(ok, "{err}");
    assert!(err.contains("config OK"), "{err}");
    assert!(
        out.contains("pod_cidr = \"10.42.0.0/16\""),
        "prints the effective config: {out}"
    );
}

#[test]
fn an_unknown_key_fails_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write(&dir, "typo.toml", "[dns]\nupstream = [\"192.0.2.53\"]\n");
    let (ok, _, err) = skein(&["config", "check", &path], &[]);
    assert!(!ok, "must fail");
    assert!(err.contains("dns.upstream"), "{err}");
    assert!(err.contains("did you mean `dns.upstreams`"), "{err}");
    assert!(err.contains(&path), "names the file: {err}");
}

#[test]
fn a_bad_cidr_fails_naming_key_and_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write(
        &dir,
        "cidr.toml",
        "[cluster]\npod_cidr = \"10.42.0.0/33\"\n",
    );
    let (ok, _, err) = skein(&["config", "check", &path], &[]);
    assert!(!ok);
    assert!(
        err.contains("cluster.pod_cidr = \"10.42.0.0/33\": not a CIDR"),
        "{err}"
    );
}

#[test]
fn environment_overrides_show_in_the_effective_config() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write(&dir, "empty.toml", "");
    let (ok, out, err) = skein(
        &["config", "check", &path],
        &[("SKEIN_OVERLAY__LISTEN_PORT", "51999")],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen_port = 51999"), "{out}");
    assert!(out.contains("SKEIN_OVERLAY__LISTEN_PORT"), "{out}");
}

#[test]
fn run_refuses_an_invalid_config_before_touching_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let text = format!(
        "[store]\npath = \"{}/state.db\"\n[log]\nformat = \"xml\"\n",
        state.display()
    );
    let path = write(&dir, "bad.toml", &text);
    let (ok, _, err) = skein(&["run", "--config", &path], &[]);
    assert!(!ok);
    assert!(err.contains("log.format = \"xml\""), "{err}");
    assert!(
        !state.exists(),
        "no state directory made for a config that was refused"
    );
}

#[test]
fn version_and_help_speak_plainly() {
    let (ok, out, _) = skein(&["version"], &[]);
    assert!(ok);
    assert_eq!(out.trim(), format!("skein {}", env!("CARGO_PKG_VERSION")));
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["config", "check", "--help"],
        &["config", "default", "--help"],
    ] {
        let (ok, out, _) = skein(args, &[]);
        assert!(ok, "{args:?}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    let (_, out, _) = skein(&["--help"], &[]);
    for word in ["run", "config", "version"] {
        assert!(out.contains(word), "{out}");
    }
}
