//! Loopback addresses for the servers a test starts, chosen so that tests running in parallel
//! processes practically never collide.

use std::net::TcpListener;

/// A loopback address (`127.a.b.c:port`) nobody listens on, for one server of one test.
///
/// Tests run in parallel processes, so a port that is free when chosen can be taken before the
/// server binds it (by another test's server, or as the source port of an outgoing connection).
/// A random address among 127.0.0.0/8's sixteen million, with a port below the ephemeral
/// range, makes that practically impossible.
pub fn loopback_addr() -> String {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let r = h.finish();
        let ip = std::net::Ipv4Addr::new(127, (r >> 8) as u8, (r >> 16) as u8, ((r >> 24) as u8).max(2));
        let port = 20_000 + ((r >> 32) % 12_000) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return format!("{ip}:{port}");
        }
    }
    panic!("no free loopback address");
}

pub(crate) fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}
