//! The .deb and .rpm built by `packaging/build.sh`: installed and removed for real with dpkg on
//! this machine, and the .rpm's file list compared with the .deb's. Needs root; the packages
//! must have been built first (tests/run.sh does it).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use skein_e2e::{is_root, require, which};

fn packages_dir() -> PathBuf {
    std::env::var_os("SKEIN_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packages"))
}

/// The newest file in the packages directory with this extension.
fn newest(ext: &str) -> Option<PathBuf> {
    std::fs::read_dir(packages_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(ok, "{program} {args:?} failed:\n{text}");
    text
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "skein"])
        .1
        .contains("installed")
}

/// Regular files of a package listing, with the systemd unit directory spelled one way
/// (Debian installs units under /lib, RPM distributions under /usr/lib; merged /usr makes them one).
fn normalize(paths: impl Iterator<Item = String>) -> BTreeSet<String> {
    paths
        .map(|p| p.trim().trim_start_matches('.').to_string())
        .map(|p| {
            p.replacen("/lib/systemd/", "/usr/lib/systemd/", 1)
                .replacen("/usr/usr/", "/usr/", 1)
        })
        // Debian policy wants a copyright file; RPM keeps the licence in its header instead.
        .filter(|p| !p.is_empty() && p != "/usr/share/doc/skein/copyright")
        .collect()
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn unit_path() -> &'static str {
    [
        "/lib/systemd/system/skein.service",
        "/usr/lib/systemd/system/skein.service",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or_else(|| panic!("skein.service is not installed"))
}

#[test]
fn deb_installs_removes_keeping_config_and_rpm_lists_the_same_files() {
    if !require(is_root(), "installing packages needs root")
        || !require(
            which("dpkg").is_some() && which("rpm").is_some(),
            "dpkg and rpm are needed",
        )
    {
        return;
    }
    let (Some(deb), Some(rpm)) = (newest("deb"), newest("rpm")) else {
        require(
            false,
            "no packages in target/packages: run packaging/build.sh first",
        );
        return;
    };
    if installed() {
        if !require(
            std::env::var_os(skein_e2e::REQUIRE_ALL).is_some(),
            "a skein package is installed on this machine; not touching it",
        ) {
            return;
        }
        must("dpkg", &["-P", "skein"]);
    }
    let deb = deb.display().to_string();
    let rpm = rpm.display().to_string();

    // Same files in both packages.
    // `dpkg-deb -c` prints `tar tv` lines; directories start with 'd', the path is last.
    let deb_listing = must("dpkg-deb", &["-c", &deb]);
    let deb_files = normalize(
        deb_listing
            .lines()
            .filter(|l| !l.starts_with('d'))
            .filter_map(|l| l.split_whitespace().last().map(str::to_string)),
    );
    let rpm_files = normalize(must("rpm", &["-qlp", &rpm]).lines().map(str::to_string));
    assert_eq!(
        deb_files, rpm_files,
        "the .deb and the .rpm ship different files"
    );
    for expected in [
        "/usr/bin/skein",
        "/etc/skein/config.toml",
        "/usr/lib/systemd/system/skein.service",
        "/usr/lib/systemd/system/skein-wireguard.service",
    ] {
        assert!(
            deb_files.contains(expected),
            "{expected} missing from {deb_files:?}"
        );
    }
    let rpm_config = must("rpm", &["-qcp", &rpm]);
    assert!(
        rpm_config.contains("/etc/skein/config.toml"),
        "rpm marks the config: {rpm_config}"
    );
    let rpm_scripts = must("rpm", &["-qp", "--scripts", &rpm]);
    assert!(
        rpm_scripts.contains("install -d -m 0700 /var/lib/skein"),
        "{rpm_scripts}"
    );

    // Install: every file where stated.
    must("dpkg", &["-i", &deb]);
    let guard = Purge;
    assert_eq!(mode("/usr/bin/skein"), 0o755);
    assert!(must("/usr/bin/skein", &["version"]).starts_with("skein "));
    assert_eq!(mode("/etc/skein/config.toml"), 0o600);
    let shipped = std::fs::read_to_string("/etc/skein/config.toml").expect("config");
    assert_eq!(shipped, skein_config_default());
    assert_eq!(mode("/var/lib/skein"), 0o700);
    let listed = must("dpkg", &["-L", "skein"]);
    for path in ["/usr/bin/skein", "/etc/skein/config.toml", "skein.service"] {
        assert!(listed.contains(path), "dpkg -L lacks {path}:\n{listed}");
    }
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "skein"]);
    assert!(
        conffiles.contains("/etc/skein/config.toml"),
        "conffile: {conffiles}"
    );
    must(
        "/usr/bin/skein",
        &["config", "check", "/etc/skein/config.toml"],
    );

    let device_unit = unit_path().replace("skein.service", "skein-wireguard.service");
    let device_text = std::fs::read_to_string(&device_unit).expect("the device's unit");
    assert!(
        !device_text
            .lines()
            .any(|l| l.trim_start().starts_with("PartOf=")),
        "a daemon restart must not take the tunnel down with it"
    );
    if which("systemd-analyze").is_some() {
        // Verified together: skein.service names the device's unit in Wants= and After=.
        let (ok, text) = run("systemd-analyze", &["verify", unit_path(), &device_unit]);
        // It exits 0 on directives it ignores, so any output at all is a finding.
        assert!(
            ok && text.trim().is_empty(),
            "systemd-analyze verify on the units:\n{text}"
        );
    }

    // Remove: the program goes, the operator's config stays.
    std::fs::write(
        "/etc/skein/config.toml",
        format!("{shipped}\n# edited by the operator\n"),
    )
    .expect("edit");
    must("dpkg", &["-r", "skein"]);
    assert!(
        !Path::new("/usr/bin/skein").exists(),
        "binary left after dpkg -r"
    );
    assert!(
        !Path::new("/lib/systemd/system/skein.service").exists(),
        "unit left after dpkg -r"
    );
    let kept =
        std::fs::read_to_string("/etc/skein/config.toml").expect("config kept after dpkg -r");
    assert!(kept.contains("edited by the operator"));

    // Purge: the config and the state go too.
    must("dpkg", &["-P", "skein"]);
    assert!(
        !Path::new("/etc/skein/config.toml").exists(),
        "config left after purge"
    );
    assert!(
        !Path::new("/var/lib/skein").exists(),
        "state left after purge"
    );
    drop(guard);
}

fn skein_config_default() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../internal/config/default.toml"),
    )
    .expect("default.toml")
}

/// The `[Service]` settings of a unit in the source tree's `systemd/`: (key, value) in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            settings.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    settings
}

#[test]
fn both_units_create_files_for_root_only() {
    // The daemon's key file and sockets, and the device's control socket, carry or reach the
    // WireGuard private key; a umask of 0077 keeps anything they create from others.
    for unit in ["skein.service", "skein-wireguard.service"] {
        let umasks: Vec<String> = service_settings(unit)
            .into_iter()
            .filter(|(k, _)| k == "UMask")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(umasks, ["0077"], "{unit}: UMask= in [Service]");
    }
}

/// Leaves the machine as it was even when an assertion fails half-way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() || Path::new("/etc/skein/config.toml").exists() {
            let _ = Command::new("dpkg").args(["-P", "skein"]).output();
        }
    }
}
