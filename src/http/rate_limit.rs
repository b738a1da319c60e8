//! Requests per client, for getcode and the sign-in API: `governor`'s keyed GCRA limiter, keyed by the
//! client's address (IPv6 by its network prefix, a /64 by default: one host usually holds a whole /64),
//! in bounded memory.

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter as Governor};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered at most; past it, idle ones are forgotten, and while the table is still full of
/// recent ones every request shares one overflow bucket: a flood of addresses costs bounded memory and
/// resets no one's count (governor's store cannot be asked whether a client already has a bucket).
const MAX_CLIENTS: usize = 10_000;

/// The prefix an IPv6 client is limited by unless configured (`IPV6_CLIENT_PREFIX`).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// What a bucket belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    /// An IPv4 address, or an IPv6 network of the configured prefix.
    Client(IpAddr),
    /// Every new client while the table is full of recent ones.
    Overflow,
}

/// Allows `rate` requests a second per client, in bursts of up to `burst`.
pub struct RateLimiter<C: Clock + Clone = DefaultClock> {
    limiter: Governor<Key, DashMapStateStore<Key>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    ipv6_prefix: u8,
    /// When idle clients were last forgotten: a sweep walks the whole table, so it runs at most once
    /// per [`SWEEP_EVERY`], never on every request of a flood.
    swept: Mutex<Option<Instant>>,
}

/// The shortest time between two sweeps of idle clients.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("clients", &self.limiter.len())
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter of `rate` per second with bursts of `burst`, IPv6 clients by /64.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self::with_clock(rate, burst, DEFAULT_IPV6_PREFIX, DefaultClock::default())
    }

    /// [`new`](Self::new) with IPv6 clients limited by `/ipv6_prefix` (1 to 128).
    pub fn with_ipv6_prefix(rate: f64, burst: f64, ipv6_prefix: u8) -> Self {
        Self::with_clock(rate, burst, ipv6_prefix, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// A limiter on `clock` (a fake one in tests).
    pub fn with_clock(rate: f64, burst: f64, ipv6_prefix: u8, clock: C) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate.clamp(0.001, 1e9));
        let burst = NonZeroU32::new(burst.clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limiter: Governor::dashmap_with_clock(quota, clock.clone()),
            clock,
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
            swept: Mutex::new(None),
        }
    }

    /// Takes a token for `client`; `Err(wait)` says how long until the next one.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let key = self.key(client);
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Buckets held now.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }

    /// The bucket `client` counts against.
    fn key(&self, client: IpAddr) -> Key {
        let client = match client {
            IpAddr::V4(_) => client,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(network(v6, self.ipv6_prefix)),
            },
        };
        if self.limiter.len() >= MAX_CLIENTS {
            self.sweep();
            if self.limiter.len() >= MAX_CLIENTS {
                return Key::Overflow;
            }
        }
        Key::Client(client)
    }

    /// Forgets idle clients, unless that was done less than [`SWEEP_EVERY`] ago (or is being done).
    fn sweep(&self) {
        let Ok(mut swept) = self.swept.try_lock() else {
            return;
        };
        let now = Instant::now();
        if swept.is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) {
            return;
        }
        *swept = Some(now);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `address` with every bit past the first `prefix` cleared.
fn network(address: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(address);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(rate: f64, burst: f64) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(rate, burst, 64, clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies_per_client() {
        let (limiter, clock) = limiter(2.0, 3.0);
        let (a, b) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(
            limiter.check(b).is_ok(),
            "another client has its own bucket"
        );
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(a).is_ok());
    }

    #[test]
    fn one_ipv6_host_with_a_whole_64_has_one_bucket() {
        let (limiter, _) = limiter(0.001, 2.0);
        let host = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
        let allowed = (0..60).filter(|i| limiter.check(host(*i)).is_ok()).count();
        assert_eq!(allowed, 2, "60 addresses of one /64 share its burst");
        let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(
            limiter.check(neighbour).is_ok(),
            "another /64 is another client"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let plain: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check(mapped).is_ok());
        assert!(limiter.check(plain).is_ok());
        assert!(
            limiter.check(plain).is_err(),
            "a mapped address is its IPv4 client"
        );
    }

    #[test]
    fn a_flood_of_addresses_keeps_memory_bounded() {
        let (limiter, _) = limiter(0.001, 1.0);
        for i in 0..(MAX_CLIENTS as u32 + 5_000) {
            let _ = limiter.check(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(
            limiter.clients() <= MAX_CLIENTS + 1,
            "{}",
            limiter.clients()
        );
    }
}
