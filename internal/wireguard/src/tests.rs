//! Interface names as the kernel and the socket directory take them.

use super::*;

#[test]
fn names_longer_than_the_kernel_takes_are_refused() {
    assert!(check_name("skein-wg").is_ok());
    assert!(check_name("a23456789012345").is_ok());
    let e = check_name("a234567890123456").unwrap_err().to_string();
    assert!(e.contains("longer than 15"), "{e}");
    let e = check_name("wg/0").unwrap_err().to_string();
    assert!(e.contains("wg/0"), "{e}");
    assert!(check_name("").is_err());
}

#[test]
fn the_socket_lives_in_the_shared_directory() {
    assert_eq!(
        socket_path("skw1"),
        PathBuf::from("/var/run/wireguard/skw1.sock")
    );
}
