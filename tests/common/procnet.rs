//! Which process owns a TCP connection on loopback, from /proc (tests run as root, so
//! every process's descriptors are readable).

use std::net::{IpAddr, SocketAddr};

/// The pid, among `pids`, owning the client socket from `addr` (the peer address a
/// server saw) to `server` (that server's own address). Both ends are matched: Linux
/// gives one local port to connections to different servers at once, so a process's
/// connection to a database can share its port with another process's request. None
/// when none of them does (or it has exited).
/// /proc/net/tcp is read a page at a time while sockets come and go, so a line can be
/// missed: a miss is looked up again a few times.
pub fn socket_owner(addr: SocketAddr, server: SocketAddr, pids: &[u32]) -> Option<u32> {
    for _ in 0..10 {
        if let Some(pid) = lookup(addr, server, pids) {
            return Some(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    None
}

/// An IPv4 address as /proc/net/tcp prints it: the u32 in memory, in host byte order.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    Some(format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    ))
}

fn lookup(addr: SocketAddr, server: SocketAddr, pids: &[u32]) -> Option<u32> {
    let (local, remote) = (proc_addr(addr)?, proc_addr(server)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ours = f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str());
        ours.then(|| f.get(9).map(|s| s.to_string()))?
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
