//! Which process owns a TCP connection on loopback, from /proc (tests run as root, so
//! every process's descriptors are readable).

use std::net::{IpAddr, SocketAddr};

/// The pid, among `pids`, owning the client socket whose local address is `addr`
/// (the peer address a server saw). None when none of them does (or it has exited).
/// /proc/net/tcp is read a page at a time while sockets come and go, so a line can be
/// missed: a miss is looked up again a few times.
pub fn socket_owner(addr: SocketAddr, pids: &[u32]) -> Option<u32> {
    for _ in 0..10 {
        if let Some(pid) = lookup(addr, pids) {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    None
}

fn lookup(addr: SocketAddr, pids: &[u32]) -> Option<u32> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    // /proc/net/tcp prints the address as the u32 in memory, in host byte order.
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port());
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str())).then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let link = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .map(|l| l.to_string_lossy() == link)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}
