//! `skein run` as a black box: status API, file modes, signals, the single-daemon lock, and a
//! store that survives being killed at any point of start-up.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use skein_e2e::{Sandbox, http_get, part, wait_for};

#[test]
fn status_api_has_the_documented_fields() {
    let sb = Sandbox::new("node-a", "");
    let mut d = sb.start();
    d.wait_ready();
    let s = d.status();
    assert_eq!(s["node"], "node-a");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config_path"], sb.config.display().to_string());
    assert!(s["uptime_seconds"].is_u64(), "{s}");
    assert_eq!(s["ready"], true);
    let parts = s["parts"].as_array().expect("parts");
    let names: Vec<&str> = parts.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(
        names.contains(&"store") && names.contains(&"dashboard"),
        "{s}"
    );
    for p in parts {
        for field in ["state", "since", "last_error", "detail", "restarts"] {
            assert!(p.get(field).is_some(), "part lacks {field}: {p}");
        }
    }
    let store = wait_for("the store part to report", Duration::from_secs(10), || {
        let p = part(&d.status(), "store").clone();
        (p["state"] == "ok").then_some(p)
    });
    // The schema version is that of the newest migration this build embeds.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .expect("migrations/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let schema = format!("schema v{migrations} ");
    assert!(
        store["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&schema),
        "{store} lacks {schema:?}"
    );
    assert_eq!(http_get(sb.addr, "/healthz").map(|r| r.0), Some(200));
}

#[test]
fn state_is_private_and_sigterm_stops_cleanly_within_five_seconds() {
    let sb = Sandbox::new("node-b", "");
    let mut d = sb.start();
    d.wait_ready();
    let db = sb.state_dir().join("state.db");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "database file mode");
    assert_eq!(mode(&sb.state_dir()), 0o700, "state directory mode");
    d.signal("TERM");
    let status = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}:\n{}", d.logs());
    assert!(d.logs().contains("stopped"), "{}", d.logs());
}

#[test]
fn sigint_stops_cleanly_too() {
    let sb = Sandbox::new("node-c", "");
    let mut d = sb.start();
    d.wait_ready();
    d.signal("INT");
    let status = d.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status}:\n{}", d.logs());
}

#[test]
fn a_second_daemon_on_the_same_state_says_who_holds_it() {
    let sb = Sandbox::new("node-d", "");
    let mut first = sb.start();
    first.wait_ready();
    // Same state directory, another page port: only the lock can stop it.
    let other_port = skein_e2e::free_port().to_string();
    let mut second = sb.start_with(&[(
        "SKEIN_DASHBOARD__LISTEN",
        &format!("127.0.0.1:{other_port}"),
    )]);
    let status = second.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "second daemon must fail");
    let logs = second.logs();
    assert!(logs.contains("another skein is running"), "{logs}");
    assert!(
        logs.contains(&format!("pid {}", first.pid())),
        "names the first one's pid: {logs}"
    );
    assert_eq!(first.status()["ready"], true, "the first one is unharmed");
}

#[test]
fn a_busy_page_port_is_a_clear_error_naming_the_key() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let sb = Sandbox::new("node-e", "");
    let mut d = sb.start_with(&[("SKEIN_DASHBOARD__LISTEN", &addr.to_string())]);
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let logs = d.logs();
    assert!(
        logs.contains(&format!("dashboard.listen = \"{addr}\"")),
        "{logs}"
    );
}

#[test]
fn sigkill_at_any_point_of_startup_leaves_a_store_that_opens_cleanly() {
    let sb = Sandbox::new("node-f", "");
    // Kill at increasing points of start-up: before the store exists, while migrations run, just
    // after readiness. Each next start must open the same files and become ready.
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80, 160] {
        let mut d = sb.start();
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.signal("KILL");
        d.wait_exit(Duration::from_secs(5));
    }
    let mut d = sb.start();
    d.wait_ready();
    let store = wait_for("the store check", Duration::from_secs(10), || {
        let p = part(&d.status(), "store").clone();
        (p["state"] != "starting").then_some(p)
    });
    assert_eq!(store["state"], "ok", "{store}\n{}", d.logs());
    assert!(
        store["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("did not stop cleanly"),
        "{store}"
    );
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn json_logs_for_machines_and_no_timestamps_under_the_journal() {
    let sb = Sandbox::new("node-g", "[log]\nformat = \"json\"\n");
    let mut d = sb.start();
    d.wait_ready();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(5));
    let logs = d.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.starts_with("---")).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
    }

    let sb = Sandbox::new("node-h", "");
    let mut d = sb.start_with(&[("JOURNAL_STREAM", "8:12345")]);
    d.wait_ready();
    d.signal("TERM");
    d.wait_exit(Duration::from_secs(5));
    let logs = d.logs();
    let first = logs
        .lines()
        .find(|l| l.contains("starting skein"))
        .expect("a start line");
    assert!(
        first.trim_start().starts_with("INFO"),
        "no timestamp expected: {first}"
    );
    assert!(
        !first.contains('\u{1b}'),
        "no colour codes in the journal: {first}"
    );
}

#[test]
fn systemd_hears_ready_then_stopping() {
    use std::os::unix::net::UnixDatagram;
    let sb = Sandbox::new("node-i", "");
    let socket_path = sb.tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut d = sb.start_with(&[("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8"))]);

    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = socket
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS="), "{ready}");
    // Ready is only said once the page answers.
    assert_eq!(http_get(sb.addr, "/readyz").map(|r| r.0), Some(200));
    d.signal("TERM");
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(d.wait_exit(Duration::from_secs(5)).success());
}
