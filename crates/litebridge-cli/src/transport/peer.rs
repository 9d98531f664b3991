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
//! Linux tells a TCP socket's owner in `/proc/self/net/tcp` and `tcp6`
//! (the socket whose local end is the caller's end of this connection),
//! but only while a program holds it: a socket its program closed (in
//! `TIME_WAIT`, or orphaned in `FIN_WAIT`) shows inode 0 and uid 0, so a
//! caller that sent its request and closed before it was accepted would
//! pass for root. Only an entry with an inode counts. A client connecting
//! to 127.0.0.1 from an IPv6 socket (Java's, .NET's) is listed in `tcp6`,
//! as `::ffff:127.0.0.1`. The table is read only for keyless requests,
//! once per connection. Where it cannot be read (another system, `/proc`
//! not mounted), callers are let in as before, with a warning at the first:
//! nothing tells them apart there.

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
}

impl Peer {
    pub(crate) fn new(local: SocketAddr, remote: SocketAddr) -> Peer {
        Peer(Arc::new(Ends {
            local,
            remote,
            verdict: OnceLock::new(),
        }))
    }

    /// Who the caller is (read from the system the first time).
    pub(crate) fn verdict(&self) -> Verdict {
        *self
            .0
            .verdict
            .get_or_init(|| verdict(self.0.local, self.0.remote))
    }
}

fn verdict(local: SocketAddr, remote: SocketAddr) -> Verdict {
    let read = |table: &str| std::fs::read_to_string(format!("/proc/self/net/{table}"));
    let Some(me) = own_uid() else {
        return untold();
    };
    // The caller's socket: its local end is our remote, and the other way.
    let found = match (remote, local) {
        (SocketAddr::V4(r), SocketAddr::V4(l)) => {
            let (Ok(v4), v6) = (read("tcp"), read("tcp6")) else {
                return untold();
            };
            owner(&v4, remote, local).or_else(|| {
                // From an IPv6 socket, as an IPv4-mapped address.
                let mapped = |a: std::net::SocketAddrV4| {
                    SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                };
                owner(&v6.ok()?, mapped(r), mapped(l))
            })
        }
        _ => match read("tcp6") {
            Ok(v6) => owner(&v6, remote, local),
            Err(_) => return untold(),
        },
    };
    match found {
        Some(uid) if uid == me => Verdict::SameUser,
        Some(uid) => Verdict::OtherUser(uid),
        None => Verdict::Unknown,
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
        let peer = Peer::new(server.local_addr().unwrap(), remote);
        assert_eq!(peer.verdict(), Verdict::SameUser);
        assert_eq!(remote, client.local_addr().unwrap());
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
