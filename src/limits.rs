//! Limits on what one client may cost the server (ARCHITECTURE.md,
//! "Limits"): token buckets for message, byte and awareness rates, and the
//! per-process accounting of connections and upgrades by client address.
//! Defaults are far above what a y-websocket client does.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `capacity` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, capacity: f64) -> Self {
        TokenBucket {
            capacity,
            rate,
            tokens: capacity,
            updated: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64) -> bool {
        self.refill(Instant::now());
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until `n` tokens are there.
    pub fn wait_for(&mut self, n: f64) -> Duration {
        self.refill(Instant::now());
        if self.tokens >= n || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }
}

/// Settings of [`ConnectionLimiter`] and of each connection's buckets.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open websocket connections per process (503 past it).
    pub max_connections: usize,
    /// Open connections per client address (429 past it).
    pub max_connections_per_ip: usize,
    /// Upgrades per second per client address, with a burst of one second's worth (429).
    pub upgrades_per_ip_per_second: f64,
    /// Messages per second per connection, with a burst of two seconds' worth (4429).
    pub messages_per_second: f64,
    /// Bytes per second per connection; the burst holds two seconds or one
    /// largest message, whichever is more (4429).
    pub bytes_per_second: f64,
    /// Awareness messages per second per connection; faster ones are
    /// coalesced (only the newest state goes out).
    pub awareness_per_second: f64,
    /// Addresses whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// An address range (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The client behind a request: the peer, or the right-most address in
/// `X-Forwarded-For` that is not a trusted proxy (when the peer is one).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    if let Some(header) = forwarded_for {
        for hop in header.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !is_trusted(ip) {
                        break;
                    }
                }
                // A hop we cannot read ends what we can trust.
                Err(_) => break,
            }
        }
    }
    client
}

/// IPv6 clients get a /64 each, so one host cannot rotate addresses.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an upgrade was refused before anything else was done for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process serves `max_connections` already (503).
    ProcessFull,
    /// This address has too many connections or upgrades too fast (429).
    AddressBusy,
}

struct AddressState {
    open: usize,
    upgrades: TokenBucket,
}

/// Addresses tracked at most; idle ones are dropped past it.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// Counts connections per process and per client address.
pub struct ConnectionLimiter {
    limits: Limits,
    state: Mutex<(usize, HashMap<IpAddr, AddressState>)>,
}

/// One admitted connection; dropping it gives its place back.
pub struct Admission {
    limiter: Arc<ConnectionLimiter>,
    address: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(limits: Limits) -> Self {
        ConnectionLimiter {
            limits,
            state: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits a connection from `client`, or says why not.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admission, Refusal> {
        let address = address_key(client);
        let Ok(mut state) = self.state.lock() else {
            return Err(Refusal::ProcessFull);
        };
        let (open, addresses) = &mut *state;
        if *open >= self.limits.max_connections {
            return Err(Refusal::ProcessFull);
        }
        if addresses.len() >= MAX_TRACKED_ADDRESSES && !addresses.contains_key(&address) {
            addresses.retain(|_, a| a.open > 0);
        }
        let rate = self.limits.upgrades_per_ip_per_second;
        let entry = addresses.entry(address).or_insert_with(|| AddressState {
            open: 0,
            upgrades: TokenBucket::new(rate, rate),
        });
        if entry.open >= self.limits.max_connections_per_ip || !entry.upgrades.try_take(1.0) {
            return Err(Refusal::AddressBusy);
        }
        entry.open += 1;
        *open += 1;
        Ok(Admission {
            limiter: self.clone(),
            address,
        })
    }

    fn release(&self, address: IpAddr) {
        if let Ok(mut state) = self.state.lock() {
            let (open, addresses) = &mut *state;
            *open = open.saturating_sub(1);
            if let Some(entry) = addresses.get_mut(&address) {
                entry.open = entry.open.saturating_sub(1);
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limiter.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            upgrades_per_ip_per_second: 100.0,
            messages_per_second: 10.0,
            bytes_per_second: 10.0,
            awareness_per_second: 10.0,
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("range")],
        }
    }

    #[test]
    fn connections_are_capped_per_process_and_address() {
        let limiter = Arc::new(ConnectionLimiter::new(limits()));
        let a: IpAddr = "1.1.1.1".parse().expect("ip");
        let b: IpAddr = "2.2.2.2".parse().expect("ip");
        let first = limiter.admit(a).expect("admitted");
        let _second = limiter.admit(a).expect("admitted");
        assert_eq!(limiter.admit(a).err(), Some(Refusal::AddressBusy));
        let _third = limiter.admit(b).expect("admitted");
        assert_eq!(limiter.admit(b).err(), Some(Refusal::ProcessFull));
        drop(first);
        assert!(limiter.admit(a).is_ok());
    }

    #[test]
    fn upgrade_rate_is_limited() {
        let mut settings = limits();
        settings.upgrades_per_ip_per_second = 1.0;
        settings.max_connections_per_ip = 100;
        settings.max_connections = 100;
        let limiter = Arc::new(ConnectionLimiter::new(settings));
        let a: IpAddr = "1.1.1.1".parse().expect("ip");
        let admitted = (0..10).filter(|_| limiter.admit(a).is_ok()).count();
        assert_eq!(admitted, 1, "a burst of one second's worth");
    }

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let trusted = limits().trusted_proxies;
        let proxy: IpAddr = "10.1.2.3".parse().expect("ip");
        let outsider: IpAddr = "8.8.8.8".parse().expect("ip");
        assert_eq!(
            client_address(outsider, Some("1.2.3.4"), &trusted),
            outsider
        );
        assert_eq!(
            client_address(proxy, Some("1.2.3.4, 10.9.9.9"), &trusted),
            "1.2.3.4".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_address(proxy, Some("spoofed, 5.6.7.8"), &trusted),
            "5.6.7.8".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_address(proxy, None, &trusted), proxy);
        let v6a: IpAddr = "2001:db8::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8::ffff".parse().expect("ip");
        assert_eq!(address_key(v6a), address_key(v6b));
    }
}
