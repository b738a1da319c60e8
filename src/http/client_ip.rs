//! Who the client is, for rate limits: the TCP peer, or behind a trusted ingress the address it
//! forwarded in `X-Forwarded-For`. The header is believed only from the configured proxy ranges.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The address ranges of the ingress or load balancers in front of codewatch.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

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
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted proxy; then the right-most
    /// `X-Forwarded-For` address that is not a trusted proxy (the left-most, if all are).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let h = headers("198.51.100.1, 203.0.113.9, 10.1.1.1");
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
            trusted.client(ip("10.2.3.4"), &headers("garbage")),
            ip("10.2.3.4")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }
}
