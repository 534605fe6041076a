//! The broker addresses a connection tries, in rotation.

use super::{backoff::SplitMix64, options::AddressOrder};

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The addresses in the order they are tried: each attempt takes the next, wrapping around,
/// so a node that is down is skipped on the next attempt rather than retried.
#[derive(Debug, Clone)]
pub(crate) struct AddressRotation {
    addresses: Vec<Address>,
    next: usize,
}

impl AddressRotation {
    /// `addresses` must not be empty (options always hold at least one).
    pub(crate) fn new(mut addresses: Vec<Address>, order: AddressOrder, seed: u64) -> Self {
        if order == AddressOrder::Shuffled {
            let mut rng = SplitMix64(seed);
            // Fisher-Yates.
            for i in (1..addresses.len()).rev() {
                let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap_or(0);
                addresses.swap(i, j);
            }
        }
        AddressRotation { addresses, next: 0 }
    }

    /// The address to try next.
    pub(crate) fn next(&mut self) -> Option<Address> {
        let address = self.addresses.get(self.next % self.addresses.len().max(1))?.clone();
        self.next = self.next.wrapping_add(1);
        Some(address)
    }

    /// How many addresses there are.
    pub(crate) fn len(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ports: &[u16]) -> Vec<Address> {
        ports.iter().map(|&port| Address { host: "127.0.0.1".into(), port }).collect()
    }

    #[test]
    fn in_order_rotates_through_every_address() {
        let mut r = AddressRotation::new(addrs(&[1, 2, 3]), AddressOrder::InOrder, 0);
        let ports: Vec<u16> = (0..7).filter_map(|_| r.next()).map(|a| a.port).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn shuffled_is_a_permutation_that_depends_on_the_seed() {
        let orders: std::collections::HashSet<Vec<u16>> = (0..50)
            .map(|seed| {
                let mut r = AddressRotation::new(addrs(&[1, 2, 3, 4]), AddressOrder::Shuffled, seed);
                let mut ports: Vec<u16> = (0..4).filter_map(|_| r.next()).map(|a| a.port).collect();
                let order = ports.clone();
                ports.sort_unstable();
                assert_eq!(ports, [1, 2, 3, 4]);
                order
            })
            .collect();
        assert!(orders.len() > 5, "only {} orders in 50 seeds", orders.len());
    }

    #[test]
    fn addresses_display_like_a_uri_host() {
        assert_eq!(Address { host: "::1".into(), port: 5672 }.to_string(), "[::1]:5672");
        assert_eq!(Address { host: "rabbit".into(), port: 1 }.to_string(), "rabbit:1");
    }
}
