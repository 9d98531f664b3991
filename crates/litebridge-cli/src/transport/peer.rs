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
//! Linux tells a TCP socket's owner in `/proc/net/tcp` and `tcp6` (the
//! socket whose local end is the caller's end of this connection). That
//! file is read only for keyless requests, once per connection. Where it
//! cannot be read (another system, `/proc` not mounted), callers are let in
//! as before: nothing tells them apart there.

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
    /// Runs as litebridge's user, or root.
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
    let table = match remote.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let (Ok(sockets), Some(me)) = (std::fs::read_to_string(table), own_uid()) else {
        return Verdict::Untold;
    };
    // The caller's socket: its local end is our remote, and the other way.
    match owner(&sockets, remote, local) {
        Some(uid) if uid == me || uid == 0 => Verdict::SameUser,
        Some(uid) => Verdict::OtherUser(uid),
        None => Verdict::Unknown,
    }
}

/// litebridge's effective user id (`Uid:` in `/proc/self/status`).
fn own_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid owning the socket `from` -> `to` in a `/proc/net/tcp*` table.
fn owner(table: &str, from: SocketAddr, to: SocketAddr) -> Option<u32> {
    let (from, to) = (encode(from), encode(to));
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let remote = fields.next()?;
        if !local.eq_ignore_ascii_case(&from) || !remote.eq_ignore_ascii_case(&to) {
            return None;
        }
        // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid.
        fields.nth(4)?.parse().ok()
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
    }
}
