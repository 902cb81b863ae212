//! Outbound safety: subscriber URLs that resolve to loopback, link-local, private or
//! otherwise internal addresses are refused unless the subscriber allows them.

use std::net::IpAddr;

use crate::config::Config;

/// True for addresses a webhook must not reach by default.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
                // 100.64.0.0/10 carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// Resolves every subscriber URL and returns one problem line per refused target.
pub async fn check_targets(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, sub) in config.subscribers.iter().enumerate() {
        if sub.allow_private_targets {
            continue;
        }
        let Ok(url) = url::Url::parse(&sub.url) else {
            continue;
        };
        let Some(host) = url.host_str() else { continue };
        let port = url.port_or_known_default().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(a) => a.map(|a| a.ip()).collect(),
                Err(e) => {
                    problems.push(format!(
                        "subscribers[{i}].url: cannot resolve {host}: {e} (check the host name, or DNS from this machine)"
                    ));
                    continue;
                }
            },
        };
        if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
            problems.push(format!(
                "subscribers[{i}].url: {} resolves to {ip}, a loopback, private or link-local address; \
                 walhook refuses such targets unless you set subscribers[{i}].allow_private_targets = true",
                sub.url
            ));
        }
    }
    problems
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
}
