//! What can go wrong, named by what was being done: opening the socket, listing a family's
//! UDP entries, or deleting one entry (shown by its tuples).

use std::fmt;

/// An error of [`Conntrack`](crate::Conntrack), saying what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a netfilter netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("listing UDP conntrack entries ({family}): {source}")]
    List {
        family: Family,
        #[source]
        source: NetlinkError,
    },
    /// `entry` is the entry as [`UdpEntry`](crate::UdpEntry)'s `Display` shows it.
    #[error("deleting the entry {entry}: {source}")]
    Delete {
        entry: String,
        #[source]
        source: NetlinkError,
    },
}

/// What went wrong on the socket itself.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("the netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request: `errno` is positive, `message` the kernel's extended
    /// acknowledgement text when it gave one.
    #[error("the kernel answered {}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel { errno: i32, message: Option<String> },
    /// The dump kept being interrupted (the table changed under it) on every attempt.
    #[error("the dump was interrupted {attempts} times in a row while the table changed")]
    Interrupted { attempts: usize },
    #[error("a malformed answer: {0}")]
    Malformed(String),
}

/// An address family ctnetlink is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// `AF_INET` / `AF_INET6`, as `nfgenmsg` carries them.
    pub(crate) const fn af(self) -> u8 {
        match self {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }

    pub(crate) fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}
