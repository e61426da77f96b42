//! Where the control socket lives.

use super::*;

#[test]
fn the_socket_lives_in_the_shared_directory() {
    assert_eq!(
        socket_path("skw1"),
        PathBuf::from("/var/run/wireguard/skw1.sock")
    );
}

use skein_lab::skip::require_root;

/// A network namespace made for one test, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name}");
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn the_control_socket_is_for_root_only() {
    if !require_root("a userspace WireGuard device in a network namespace") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let name = format!("skwt{}", std::process::id() % 100_000_000);
    let ns = Netns::new(format!("skein-wgtest-{name}"));
    std::fs::create_dir_all(SOCKET_DIR).expect("socket directory");
    // A permissive umask, as an operator's shell may have: the device must not inherit it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let netns_file = std::fs::File::open(format!("/var/run/netns/{}", ns.0)).expect("netns");
    let device_name = name.clone();
    // The device's threads inherit the namespace of the thread that starts it.
    let device = std::thread::spawn(move || {
        nix::sched::setns(netns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        run(&IfName::new(device_name.as_str()).expect("valid name"), 1)
    });
    let socket = socket_path(&name);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            !device.is_finished() && std::time::Instant::now() < deadline,
            "the device did not open {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    // Removing the socket stops the device.
    std::fs::remove_file(&socket).expect("remove socket");
    device.join().expect("device thread").expect("device ran");
    assert_eq!(mode & 0o777, 0o600, "mode of {}", socket.display());
}
