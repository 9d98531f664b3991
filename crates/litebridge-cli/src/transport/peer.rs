//! Who is at the other end of a loopback connection.
//!
//! Without keys, a server on loopback lets its callers in as the local user
//! (`security.local_scopes`, `admin` by default). Loopback is reached by
//! every program of the machine, though, whoever runs it: another user's,
//! or a sidecar container sharing the network namespace (a Kubernetes
//! pod's). Such a caller could take admin, and create the only key, which
//! also locks the owner out. So a keyless request is let in only when the
//! program that connected runs as litebridge's own user (or root, who can
//! read the file anyway).
//!
//! Linux tells a TCP socket's owner (the socket whose local end is the
//! caller's end of this connection) through `sock_diag` netlink, asked
//! for that one socket by its two ends: the kernel looks it up in its
//! table at once. (`/proc/self/net/tcp` tells the same, but reading it
//! walks the whole table: about 7 ms of CPU per connection on this
//! machine, a quarter of `http-query`'s throughput in `bench`. It is read
//! only where netlink is refused.) Either tells the owner only while a
//! program holds the socket: one its program closed (in `TIME_WAIT`, or
//! orphaned in `FIN_WAIT`) shows inode 0 and uid 0, so a caller that sent
//! its request and closed before it was accepted would pass for root. Only
//! a socket with an inode counts. A client connecting to 127.0.0.1 from an
//! IPv6 socket (Java's, .NET's) is found too. The lookup is made only for
//! keyless requests, once per connection. Where neither can be asked
//! (another system, `/proc` not mounted), callers are let in as before,
//! with a warning at the first: nothing tells them apart there.
//!
//! Whether the system can tell is found once, at the first lookup (the
//! server makes it before it accepts a connection), with litebridge's own
//! uid. A lookup that fails after that (out of file descriptors, say) is
//! [`Verdict::Unchecked`]: the request is refused, to be tried again, and
//! the connection asks again at its next request. It used to be taken as
//! "the system does not tell", and so let in: review 246 had another user
//! exhaust the server's descriptors with idle connections and create an
//! admin key on the next keyless request.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// The two ends of an accepted connection, and what its caller was found
/// to be (looked up once, when first asked).
#[derive(Debug, Clone)]
pub(crate) struct Peer(Arc<Ends>);

#[derive(Debug)]
struct Ends {
    local: SocketAddr,
    remote: SocketAddr,
    verdict: OnceLock<Verdict>,
}

/// What the caller of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Runs as litebridge's user.
    SameUser,
    /// Runs as another user (its uid).
    OtherUser(u32),
    /// Its socket was not found (it went away, or another namespace).
    Unknown,
    /// The system does not tell (no `/proc/net/tcp`).
    Untold,
    /// The system tells, but this lookup failed (its `errno`): refused,
    /// and looked up again at the connection's next request.
    Unchecked(i32),
}

impl Peer {
    pub(crate) fn new(local: SocketAddr, remote: SocketAddr) -> Peer {
        Peer(Arc::new(Ends {
            local,
            remote,
            verdict: OnceLock::new(),
        }))
    }

    /// Who the caller is (read from the system the first time it is told).
    pub(crate) fn verdict(&self) -> Verdict {
        if let Some(v) = self.0.verdict.get() {
            return *v;
        }
        let v = verdict(self.0.local, self.0.remote);
        if matches!(v, Verdict::Unchecked(_)) {
            return v;
        }
        *self.0.verdict.get_or_init(|| v)
    }
}

/// Finds, once, whether this system tells who holds a socket: before the
/// server accepts connections, so that a lookup failing later for want of
/// a descriptor is not taken for a system that does not tell.
pub(crate) fn probe() {
    let _ = own();
}

/// litebridge's own uid, if this system tells sockets' owners (found once).
fn own() -> Option<u32> {
    static OWN: OnceLock<Option<u32>> = OnceLock::new();
    *OWN.get_or_init(|| {
        let me = own_uid()?;
        // Netlink answers for a socket nobody has, or the table is read.
        let nowhere: SocketAddr = "127.0.0.1:1".parse().expect("an address");
        let tells = diag::owner(nowhere, nowhere).is_ok()
            || std::fs::metadata("/proc/self/net/tcp").is_ok();
        tells.then_some(me)
    })
}

fn verdict(local: SocketAddr, remote: SocketAddr) -> Verdict {
    let Some(me) = own() else {
        return untold();
    };
    // The caller's socket: its local end is our remote, and the other way.
    let found = match diag::owner(remote, local) {
        Ok(found) => found,
        Err(_) => match scan(local, remote) {
            Ok(found) => found,
            Err(e) => return Verdict::Unchecked(e.raw_os_error().unwrap_or(0)),
        },
    };
    match found {
        Some(uid) if uid == me => Verdict::SameUser,
        Some(uid) => Verdict::OtherUser(uid),
        None => Verdict::Unknown,
    }
}

/// The owner of the caller's socket from `/proc/self/net/tcp*` (see the
/// module's note on its cost); `Err` when the tables cannot be read.
fn scan(local: SocketAddr, remote: SocketAddr) -> std::io::Result<Option<u32>> {
    // A table the system does not have (no IPv6) holds no socket; one that
    // cannot be read now (no descriptor left) is an error.
    let read = |table: &str| match std::fs::read_to_string(format!("/proc/self/net/{table}")) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    };
    Ok(match (remote, local) {
        (SocketAddr::V4(r), SocketAddr::V4(l)) => match owner(&read("tcp")?, remote, local) {
            Some(uid) => Some(uid),
            // From an IPv6 socket, as an IPv4-mapped address.
            None => {
                let mapped = |a: std::net::SocketAddrV4| {
                    SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                };
                owner(&read("tcp6")?, mapped(r), mapped(l))
            }
        },
        _ => owner(&read("tcp6")?, remote, local),
    })
}

/// The `sock_diag` netlink lookup of one TCP socket (`man 7 sock_diag`).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod diag {
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const HEADER: usize = 16;
    /// `inet_diag_req_v2`: family, protocol, ext, pad, states, then the
    /// socket's id (ports, addresses, interface, cookie).
    const REQUEST: usize = 8 + 48;

    /// The uid owning the TCP socket `from` -> `to`, if a program holds it
    /// (`Ok(None)`: none, or only a closed one's remains); `Err` when
    /// netlink cannot be asked.
    pub(super) fn owner(from: SocketAddr, to: SocketAddr) -> std::io::Result<Option<u32>> {
        // SAFETY: socket(2) with constant arguments; the descriptor it
        // returns is owned here and closed on drop.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let request = request(from, to);
        // SAFETY: `request` is a live buffer of its length.
        let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut answer = [0u8; 1024];
        // SAFETY: `answer` is a live, writable buffer of its length.
        let got =
            unsafe { libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
        let got = usize::try_from(got).map_err(|_| std::io::Error::last_os_error())?;
        parse(&answer[..got])
    }

    fn request(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEADER + REQUEST);
        m.extend_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&0u32.to_ne_bytes()); // the kernel's port
        // An IPv4 connection is looked up as one, whichever family its
        // sockets are (an IPv6 socket reaching 127.0.0.1 included).
        let family = match from.ip() {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        m.push(family as u8);
        m.push(libc::IPPROTO_TCP as u8);
        m.push(0); // no extensions
        m.push(0);
        m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        m.extend_from_slice(&from.port().to_be_bytes());
        m.extend_from_slice(&to.port().to_be_bytes());
        for addr in [from.ip(), to.ip()] {
            let mut bytes = [0u8; 16];
            match addr {
                IpAddr::V4(ip) => bytes[..4].copy_from_slice(&ip.octets()),
                IpAddr::V6(ip) => bytes = ip.octets(),
            }
            m.extend_from_slice(&bytes);
        }
        m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
        m.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
        m.extend_from_slice(&u32::MAX.to_ne_bytes());
        m
    }

    /// The answer: an `inet_diag_msg` (uid at 64, inode at 68 after the
    /// header), or an error (`ENOENT`: no such socket).
    pub(super) fn parse(answer: &[u8]) -> std::io::Result<Option<u32>> {
        let u16_at = |at: usize| {
            answer
                .get(at..at + 2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| {
            answer
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let short = || std::io::Error::new(std::io::ErrorKind::InvalidData, "short answer");
        match u16_at(4).ok_or_else(short)? {
            NLMSG_ERROR => {
                let code = u32_at(HEADER).ok_or_else(short)? as i32;
                if code == -libc::ENOENT {
                    Ok(None)
                } else {
                    Err(std::io::Error::from_raw_os_error(-code))
                }
            }
            SOCK_DIAG_BY_FAMILY => {
                let uid = u32_at(HEADER + 64).ok_or_else(short)?;
                let inode = u32_at(HEADER + 68).ok_or_else(short)?;
                Ok((inode != 0).then_some(uid))
            }
            other => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("netlink answered a message of type {other}"),
            )),
        }
    }
}

/// Elsewhere than Linux, nothing to ask.
#[cfg(not(target_os = "linux"))]
mod diag {
    pub(super) fn owner(
        _: std::net::SocketAddr,
        _: std::net::SocketAddr,
    ) -> std::io::Result<Option<u32>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// [`Verdict::Untold`], with a warning the first time.
fn untold() -> Verdict {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "this system does not tell which user runs the program at the other end of a \
             loopback connection (no /proc/self/net/tcp): without keys, every local program \
             is taken for this server's user; create a key to tell them apart"
        );
    });
    Verdict::Untold
}

/// litebridge's effective user id (`Uid:` in `/proc/self/status`).
fn own_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid owning the socket `from` -> `to` in a `/proc/net/tcp*` table,
/// if a program holds it (its inode is not 0: a closed socket's uid reads
/// 0 there, whoever had it).
fn owner(table: &str, from: SocketAddr, to: SocketAddr) -> Option<u32> {
    let (from, to) = (encode(from), encode(to));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let remote = fields.next()?;
        if !local.eq_ignore_ascii_case(&from) || !remote.eq_ignore_ascii_case(&to) {
            return None;
        }
        // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, inode.
        let uid = fields.nth(4)?.parse().ok()?;
        let inode: u64 = fields.nth(1)?.parse().ok()?;
        (inode != 0).then_some(uid)
    })
}

/// An address as the kernel prints it there: the address's 32-bit words
/// each in the machine's order, in hex, then `:` and the port in hex.
fn encode(addr: SocketAddr) -> String {
    let words: Vec<u32> = match addr.ip() {
        IpAddr::V4(ip) => vec![u32::from_ne_bytes(ip.octets())],
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    let mut s: String = words.iter().map(|w| format!("{w:08X}")).collect();
    s.push_str(&format!(":{:04X}", addr.port()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_of_this_process_is_its_own_users() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, remote) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        let peer = Peer::new(local, remote);
        assert_eq!(peer.verdict(), Verdict::SameUser);
        assert_eq!(remote, client.local_addr().unwrap());
        // Netlink and the tables agree on its owner.
        let by_netlink = diag::owner(remote, local).unwrap();
        assert!(by_netlink.is_some());
        assert_eq!(by_netlink, scan(local, remote).unwrap());
        // Closed by its program: no owner, by either.
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(diag::owner(remote, local).unwrap(), None);
        // Not a socket of this table: unknown, never someone's.
        let gone = Peer::new(server.local_addr().unwrap(), "127.0.0.1:1".parse().unwrap());
        assert_eq!(gone.verdict(), Verdict::Unknown);
    }

    #[test]
    fn the_kernels_spelling_of_an_address() {
        if cfg!(target_endian = "little") {
            assert_eq!(encode("127.0.0.1:8080".parse().unwrap()), "0100007F:1F90");
            assert_eq!(
                encode("[::1]:80".parse().unwrap()),
                "00000000000000000000000001000000:0050"
            );
        }
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0 20 4 30 10 -1\n";
        assert_eq!(
            owner(
                table,
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:40000".parse().unwrap()
            ),
            Some(1000)
        );
        // Closed by its program (TIME_WAIT): uid 0, inode 0. Not root's.
        let closed = table.replace("1000        0 12345", "   0        0     0");
        assert_eq!(
            owner(
                &closed,
                "127.0.0.1:8080".parse().unwrap(),
                "127.0.0.1:40000".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn a_client_on_an_ipv6_socket_reaching_ipv4_loopback_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Ok(client) = std::net::TcpStream::connect(format!("[::ffff:127.0.0.1]:{port}")) else {
            return; // no IPv6 here
        };
        let (server, remote) = listener.accept().unwrap();
        let peer = Peer::new(server.local_addr().unwrap(), remote);
        assert_eq!(peer.verdict(), Verdict::SameUser);
        drop(client);
    }
}
