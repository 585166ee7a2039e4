//! Whether a client that sent a request and now waits for a non-streaming answer is still
//! connected. tiny_http gives a handler no read access to its connection, and a response that
//! has not started cannot be probed with a write, so on Linux the kernel's own connection table
//! is read: a connection the client closed sits in CLOSE_WAIT (or has vanished after a reset).
//! Elsewhere every client counts as connected (the generation then runs to its end, as before).

use std::net::{IpAddr, SocketAddr};

/// Whether the client at `remote`, connected to this server's `local_port`, has closed its
/// side of the connection (or reset it). False when that cannot be told.
pub fn client_gone(remote: SocketAddr, local_port: u16) -> bool {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        if let Some(state) = connection_state(&text, remote, local_port) {
            return state == CLOSE_WAIT || state == CLOSE;
        }
    }
    // Readable tables without the connection: the kernel has dropped it (a reset).
    readable
}

/// The TCP states of /proc/net/tcp (include/net/tcp_states.h) that mean the client is gone.
const CLOSE_WAIT: u8 = 0x08;
const CLOSE: u8 = 0x07;

/// The state of the connection from `remote` to `local_port` in a /proc/net/tcp{,6} table.
fn connection_state(table: &str, remote: SocketAddr, local_port: u16) -> Option<u8> {
    let want_remote = proc_address(remote);
    let want_local_port = format!(":{local_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (local, rem, state) = (fields.next()?, fields.next()?, fields.next()?);
        (rem == want_remote && local.ends_with(&want_local_port))
            .then(|| u8::from_str_radix(state, 16).ok())
            .flatten()
    })
}

/// An address as /proc/net/tcp{,6} prints it: each 32-bit word of the IP in the machine's byte
/// order, in hex, then the port; an IPv4 client of an IPv6 socket as its mapped address.
fn proc_address(addr: SocketAddr) -> String {
    let words = |octets: &[u8]| -> String {
        octets
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    let ip = match addr.ip() {
        IpAddr::V4(v4) => words(&v4.octets()),
        IpAddr::V6(v6) => words(&v6.octets()),
    };
    format!("{ip}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_client_that_closes_is_seen_gone_and_an_open_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_served, remote) = listener.accept().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        if std::fs::read_to_string("/proc/net/tcp").is_err() {
            return; // No connection table here: nothing can be told.
        }
        assert!(!client_gone(remote, port), "an open client");
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !client_gone(remote, port) {
            assert!(
                std::time::Instant::now() < deadline,
                "a closed client is seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn addresses_are_written_as_the_kernel_writes_them() {
        let line = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
                    0: 0100007F:1F90 0100007F:D6A2 08 00000000:00000000";
        let remote: SocketAddr = "127.0.0.1:54946".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(connection_state(line, remote, 8080), Some(CLOSE_WAIT));
            assert_eq!(connection_state(line, remote, 8081), None);
        }
    }
}
