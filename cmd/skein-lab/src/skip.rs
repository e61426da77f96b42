//! Tests that need root or a tool: without it they skip with a visible message, or fail when
//! `SKEIN_TEST_ALL=1` asks for every test (as CI does). One copy for the e2e tests and the
//! crates' own kernel unit tests.

/// The variable that turns a skip into a failure.
pub const REQUIRE_ALL: &str = "SKEIN_TEST_ALL";

/// Whether a test needing `what` may run: true if `present`; otherwise it skips with a visible
/// message, or fails when [`REQUIRE_ALL`] is set.
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| v == "1") {
        panic!("{REQUIRE_ALL}=1 but this test cannot run: {what}");
    }
    eprintln!("SKIPPED: {what} (set {REQUIRE_ALL}=1 to make this a failure)");
    false
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// [`require`] for root.
pub fn require_root(what: &str) -> bool {
    require(is_root(), &format!("{what} needs root"))
}
