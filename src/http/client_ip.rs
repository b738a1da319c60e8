//! Who the client is, for rate limits: the TCP peer, or behind a trusted ingress the address it
//! forwarded. The forwarding header is believed only from the configured proxy ranges, and read from
//! the right: each trusted hop names the one before it, until an address outside the ranges (the
//! client). Entries may carry a port, as Azure Application Gateway writes them (`ip:port`,
//! `[v6]:port`); an entry that cannot be read ends the walk at the last trusted hop, so a client can
//! never make its own left-most entry count by hiding garbage to its right.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// Which header a trusted ingress names the client in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardHeader {
    /// `X-Forwarded-For: client, proxy1, …` (Azure Application Gateway, Front Door, most ingresses).
    #[default]
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    #[value(name = "forwarded")]
    Forwarded,
}

/// The address ranges of the ingress or load balancers in front of codewatch, and the header they
/// name the client in.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    ranges: Vec<IpNet>,
    header: ForwardHeader,
}

/// A range that is not an address range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address range such as 10.0.0.0/8 or 10.1.2.3")]
pub struct InvalidRange(String);

impl TrustedProxies {
    /// Ranges from a comma-separated list (`10.0.0.0/8, fd00::/8, 192.0.2.7`); empty trusts none.
    pub fn parse(list: &str) -> Result<Self, InvalidRange> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| InvalidRange(s.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(|ranges| Self {
                ranges,
                header: ForwardHeader::default(),
            })
    }

    /// These ranges, naming the client in `header`.
    pub fn reading(self, header: ForwardHeader) -> Self {
        Self { header, ..self }
    }

    /// Whether `ip` is one of the trusted proxies.
    pub(super) fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted proxy; then, walking the
    /// forwarding header from the right, the first address that is not a trusted proxy; the left-most
    /// if all are; the last trusted hop if an entry cannot be read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let entries = self.entries(headers);
        let mut hop = peer;
        for entry in entries.iter().rev() {
            match entry {
                Some(ip) if self.trusts(*ip) => hop = *ip,
                Some(ip) => return *ip,
                None => return hop,
            }
        }
        hop
    }

    /// The header's entries, left to right, each an address or `None` when it cannot be read.
    fn entries(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let (name, read): (&str, fn(&str) -> Option<IpAddr>) = match self.header {
            ForwardHeader::XForwardedFor => ("x-forwarded-for", address),
            ForwardHeader::Forwarded => ("forwarded", forwarded_for),
        };
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| match v.to_str() {
                Ok(text) => text.split(',').map(read).collect(),
                Err(_) => vec![None],
            })
            .collect()
    }
}

/// An address as a proxy writes it: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
fn address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|v6| v6.parse::<IpAddr>().ok())
}

/// The `for=` address of one RFC 7239 element (`for=192.0.2.60;proto=http`, `for="[2001:db8::1]:4711"`);
/// `None` for an obfuscated or `unknown` node, or an element without one.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        address(value.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    fn xff(value: &str) -> HeaderMap {
        headers("x-forwarded-for", value)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        let h = xff("198.51.100.1, 203.0.113.9, 10.1.1.1");
        assert_eq!(trusted.client(ip("10.2.3.4"), &h), ip("203.0.113.9"));
        assert_eq!(trusted.client(ip("192.0.2.7"), &h), ip("203.0.113.9"));
        assert_eq!(
            trusted.client(ip("198.51.100.50"), &h),
            ip("198.51.100.50"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.2.3.4"), &h),
            ip("10.2.3.4")
        );
        assert_eq!(
            trusted.client(ip("10.2.3.4"), &xff("garbage")),
            ip("10.2.3.4")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn entries_with_ports_as_application_gateway_writes_them_name_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let gateway = ip("10.0.0.5");
        for (header, client) in [
            ("203.0.113.9:50123", "203.0.113.9"),
            ("1.2.3.4, 203.0.113.9:50123", "203.0.113.9"),
            ("1.2.3.4, [2001:db8::7]:443", "2001:db8::7"),
            ("1.2.3.4, [2001:db8::7]", "2001:db8::7"),
            ("1.2.3.4, 2001:db8::7", "2001:db8::7"),
            ("1.2.3.4, 203.0.113.9:50123, 10.0.0.9:80", "203.0.113.9"),
        ] {
            assert_eq!(
                trusted.client(gateway, &xff(header)),
                ip(client),
                "{header}"
            );
        }
    }

    #[test]
    fn an_unreadable_entry_ends_the_walk_at_the_last_trusted_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The attacker's own left-most entry must not count because garbage sits to its right.
        for header in [
            "198.51.100.1, garbage",
            "198.51.100.1, 203.0.113.9:x",
            "198.51.100.1, [::1",
            "198.51.100.1, 10.0.0.9, unknown",
        ] {
            let client = trusted.client(ip("10.0.0.5"), &xff(header));
            assert!(trusted.trusts(client), "{header}: {client}");
        }
        assert_eq!(
            trusted.client(ip("10.0.0.5"), &xff("198.51.100.1, bad, 10.0.0.9")),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_chosen() {
        let trusted = TrustedProxies::parse("10.0.0.0/8")
            .unwrap()
            .reading(ForwardHeader::Forwarded);
        let gateway = ip("10.0.0.5");
        let h = headers(
            "forwarded",
            "for=198.51.100.1, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.9",
        );
        assert_eq!(trusted.client(gateway, &h), ip("2001:db8::7"));
        let hidden = headers("forwarded", "for=198.51.100.1, for=_hidden, for=10.0.0.9");
        assert_eq!(trusted.client(gateway, &hidden), ip("10.0.0.9"));
        assert_eq!(
            trusted.client(gateway, &xff("203.0.113.9")),
            gateway,
            "X-Forwarded-For is not read when Forwarded is chosen"
        );
    }
}
