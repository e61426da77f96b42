//! What this kernel does that the crate relies on: the dump's protocol filter is honoured (no
//! TCP entry comes back), and a dump left half-read blocks the next one on the same socket.
//! Run as root in a network namespace of the test's own; the crate's behaviour is tested in
//! `tests/kernel.rs`.

use std::process::{Command, Stdio};

use skein_lab::skip::{require, require_root};

use crate::error::NetlinkError;
use crate::flow::{IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW, parse_flow, udp_dump_filter};
use crate::socket::{Dumped, Transport};

fn run(program: &str, args: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(program);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The protocol numbers of the IPv4 entries a dump with `attrs` returns.
fn dumped_protocols(transport: &mut Transport, attrs: &[u8]) -> Vec<u8> {
    let mut protos = Vec::new();
    let dumped = transport
        .dump(IPCTNL_MSG_CT_GET, 2, attrs, &mut |header, payload| {
            if header.kind == IPCTNL_MSG_CT_NEW
                && let Some(flow) = parse_flow(payload)?
            {
                protos.push(flow.orig.proto);
            }
            Ok(())
        })
        .expect("dump");
    assert_eq!(dumped, Dumped::Complete);
    protos.sort_unstable();
    protos
}

/// Runs `body` on a thread in a fresh network namespace that tracks connections.
fn in_private_netns(body: impl FnOnce() + Send + 'static) {
    if !require_root("conntrack in a network namespace") {
        return;
    }
    let nft = Command::new("nft")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(nft, "conntrack in a network namespace needs nft") {
        return;
    }
    let thread = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        run("ip", &["link", "set", "lo", "up"], "");
        // A rule that needs conntrack, so the namespace tracks at all.
        run(
            "nft",
            &["-f", "-"],
            "table inet ct_test {
                chain track { type filter hook output priority 0; policy accept; ct state new counter; }
            }",
        );
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_kernel_honours_the_udp_only_dump_filter() {
    in_private_netns(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let _tcp =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        udp.send_to(b"x", "127.0.0.1:9").expect("send");

        let mut transport = Transport::open().expect("socket");
        // The control: unfiltered, both entries come back.
        assert_eq!(dumped_protocols(&mut transport, &[]), [6, 17]);
        assert_eq!(dumped_protocols(&mut transport, &udp_dump_filter()), [17]);
    });
}

#[test]
fn a_half_read_dump_is_left_behind_with_its_socket() {
    in_private_netns(|| {
        // Enough entries for a dump of several datagrams.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for port in 1..=1000 {
            udp.send_to(b"x", ("127.0.0.2", port)).expect("send");
        }
        let mut transport = Transport::open().expect("socket");
        assert_eq!(dumped_protocols(&mut transport, &[]).len(), 1000);

        // The control: on the same socket the kernel refuses a second dump (EBUSY).
        transport.abandon_a_dump(IPCTNL_MSG_CT_GET, 2, true);
        let refused = transport.dump(IPCTNL_MSG_CT_GET, 2, &[], &mut |_, _| Ok(()));
        assert!(
            matches!(refused, Err(NetlinkError::Kernel { errno: 16, .. })),
            "{refused:?}"
        );

        // Known to be out of step, the socket is replaced and the next dump is whole.
        let mut transport = Transport::open().expect("socket");
        transport.abandon_a_dump(IPCTNL_MSG_CT_GET, 2, false);
        assert_eq!(dumped_protocols(&mut transport, &[]).len(), 1000);
    });
}
