//! Outbound safety: subscriber URLs that resolve to loopback, link-local, private or
//! otherwise internal addresses are refused unless the subscriber allows them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Config, Problem};

/// True for addresses a webhook must not reach by default: loopback, private, link-local,
/// unspecified, broadcast, `0.0.0.0/8`, carrier-grade NAT (`100.64.0.0/10`), benchmarking
/// (`198.18.0.0/15`), IPv6 unique-local and link-local, and every IPv6 address that carries
/// such an IPv4 address (IPv4-compatible, IPv4-mapped, NAT64, 6to4), since the network
/// may deliver it to that IPv4 address.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                // 100.64.0.0/10 carrier-grade NAT
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                // 198.18.0.0/15 benchmarking (RFC 2544), used inside some networks
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || carried_ipv4(v6).is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-compatible `::a.b.c.d` (::/96,
/// deprecated, `::` and `::1` included), IPv4-mapped `::ffff:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` (RFC 6052) and its local-use `64:ff9b:1::/48` (RFC 8215), and 6to4
/// `2002:AABB:CCDD::/48` (RFC 3056).
fn carried_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = v6.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match seg {
        [0, 0, 0, 0, 0, 0, hi, lo] | [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// What resolving the subscribers' URLs found.
#[derive(Debug, Default)]
pub struct Targets {
    /// URLs that reach a loopback, private or link-local address without
    /// `allow_private_targets`.
    pub refused: Vec<Problem>,
    /// Host names that did not resolve from this machine.
    pub unresolved: Vec<Problem>,
}

impl Targets {
    /// Both kinds, as `walhook run` refuses them.
    pub fn all(self) -> Vec<Problem> {
        let mut all = self.refused;
        all.extend(self.unresolved);
        all
    }
}

/// Resolves every subscriber URL's host name (a URL that does not parse, and one whose
/// host is an address, are the config's own problems: see `private_address`).
pub async fn check_targets(config: &Config) -> Targets {
    let mut found = Targets::default();
    for (i, sub) in config.subscribers.iter().enumerate() {
        // A NATS server is the operator's own infrastructure, not a receiver's URL.
        if sub.kind == crate::config::SubscriberKind::Nats {
            continue;
        }
        let Ok(url) = url::Url::parse(&sub.url) else {
            continue;
        };
        let Some(host) = host(&url) else { continue };
        let port = url.port_or_known_default().unwrap_or(443);
        if host.parse::<IpAddr>().is_ok() {
            continue;
        }
        let path = format!("subscribers[{i}].url");
        // Through a proxy, the proxy resolves names (this host may not even have DNS for
        // them).
        let proxied = super::http::egress::choose(
            sub.proxy.as_deref(),
            config.delivery.proxy.as_deref(),
            &super::deliver::process_env,
            url.scheme() == "https",
            host,
            port,
        )
        .is_some();
        if proxied {
            continue;
        }
        // A name that does not resolve is a typo whether or not private targets are
        // allowed (in-cluster receivers are the ones that allow them).
        let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.map(|a| a.ip()).collect(),
            Err(e) => {
                found.unresolved.push(Problem::new(
                    path,
                    format!("cannot resolve {host}: {e} (check the host name, or DNS from this machine)"),
                ));
                continue;
            }
        };
        if sub.allow_private_targets {
            continue;
        }
        if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
            found.refused.push(refusal(sub, i, ip));
        }
    }
    found
}

/// A subscriber whose URL's host is a private address, refused without looking anything
/// up (so `walhook check --offline` finds it too).
pub fn private_address(sub: &crate::config::Subscriber, i: usize) -> Option<Problem> {
    if sub.allow_private_targets || sub.kind == crate::config::SubscriberKind::Nats {
        return None;
    }
    let url = url::Url::parse(&sub.url).ok()?;
    let ip = host(&url)?.parse::<IpAddr>().ok().filter(|ip| is_private(*ip))?;
    Some(refusal(sub, i, ip))
}

/// A URL's host as a name or an address (an IPv6 address without its brackets).
fn host(url: &url::Url) -> Option<&str> {
    Some(url.host_str()?.trim_start_matches('[').trim_end_matches(']'))
}

fn refusal(sub: &crate::config::Subscriber, i: usize, ip: IpAddr) -> Problem {
    Problem::new(
        format!("subscribers[{i}].url"),
        format!(
            "{} resolves to {ip}, a loopback, private or link-local address; \
             walhook refuses such targets unless you set subscribers[{i}].allow_private_targets = true",
            sub.url
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    /// 198.18.0.0/15 (benchmarking, RFC 2544), and IPv6 addresses that carry an IPv4 one:
    /// IPv4-compatible (::/96), IPv4-mapped (::ffff:0:0/96), NAT64 (64:ff9b::/96 and the
    /// local-use 64:ff9b:1::/48) and 6to4 (2002::/16, the IPv4 in bits 16-47). Each is
    /// refused when what it carries is, and allowed when that is public.
    #[test]
    fn benchmarking_and_ipv4_carrying_ipv6_addresses() {
        for private in ["198.18.0.1", "198.19.255.254"] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["198.17.255.255", "198.20.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        let carriers = [
            |v4: &str| format!("::{v4}"),
            |v4: &str| format!("::ffff:{v4}"),
            |v4: &str| format!("64:ff9b::{v4}"),
            |v4: &str| format!("64:ff9b:1::{v4}"),
            |v4: &str| {
                let o: Vec<u8> = v4.split('.').map(|x| x.parse().unwrap()).collect();
                format!("2002:{:02x}{:02x}:{:02x}{:02x}::1", o[0], o[1], o[2], o[3])
            },
        ];
        for carry in carriers {
            for v4 in [
                "127.0.0.1",
                "10.0.0.5",
                "192.168.1.1",
                "172.16.0.1",
                "169.254.169.254",
                "100.64.0.1",
                "198.18.0.1",
                "0.0.0.0",
            ] {
                let ip = carry(v4);
                assert!(is_private(ip.parse().unwrap()), "{ip} carries {v4}");
            }
            for v4 in ["93.184.216.34", "8.8.8.8"] {
                let ip = carry(v4);
                assert!(!is_private(ip.parse().unwrap()), "{ip} carries {v4}");
            }
        }
        // The literal forms a URL might hold.
        for private in ["::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "2002:a00:1::1"] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
    }
}
