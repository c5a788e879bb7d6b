//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime size in
//! which every endpoint owns an almost equal share of slots, filled by each endpoint's own
//! permutation, so that when an endpoint leaves only its slots (about 1/N of keys) move.
//!
//! Everything here is a pure function of the endpoints' addresses and the key, with a fixed
//! hash (FNV-1a 64, no per-process seed): every dataplane replica that sees the same
//! endpoints sends a key to the same one.

use std::net::SocketAddr;

/// Slots in the table: a prime well above 100 × the endpoints a backend has in practice
/// (Envoy's default size too).
pub(super) const TABLE_SIZE: usize = 65_537;

/// The table: for each slot, the index of the endpoint (in the order given) that owns it.
#[derive(Debug)]
pub(super) struct Maglev {
    slots: Vec<u16>,
}

/// FNV-1a, 64 bits, from `seed` (its offset basis).
pub(super) fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a's standard offset basis.
pub(super) const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

impl Maglev {
    /// The table for `endpoints` (at most 65,535 are used; a backend never has that many).
    /// The table is the same whatever their order (it is built in address order), so
    /// replicas that list them differently agree; picks are indexes into `endpoints`.
    pub(super) fn new(endpoints: &[SocketAddr]) -> Self {
        let n = endpoints.len().min(usize::from(u16::MAX));
        if n == 0 {
            return Self { slots: Vec::new() };
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| endpoints[i]);
        let m = TABLE_SIZE as u64;
        // Each endpoint's permutation: offset + j × skip (mod M), skip in 1..M.
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| &endpoints[i])
            .map(|a| {
                let name = a.to_string();
                let offset = fnv1a(name.as_bytes(), FNV_BASIS) % m;
                let skip = fnv1a(name.as_bytes(), FNV_BASIS ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut slots = vec![u16::MAX; TABLE_SIZE];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in perms.iter().enumerate() {
                // The next slot in this endpoint's permutation that is still free.
                let slot = loop {
                    let c = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    if slots[c as usize] == u16::MAX {
                        break c as usize;
                    }
                };
                slots[slot] = u16::try_from(order[i]).unwrap_or(u16::MAX - 1);
                filled += 1;
                if filled == TABLE_SIZE {
                    break 'fill;
                }
            }
        }
        Self { slots }
    }

    /// The index of the endpoint `hash` goes to (`None`: no endpoints).
    pub(super) fn pick(&self, hash: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = (hash % TABLE_SIZE as u64) as usize;
        self.slots.get(slot).map(|i| usize::from(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    fn key(i: u32) -> u64 {
        fnv1a(format!("user-{i}").as_bytes(), FNV_BASIS)
    }

    #[test]
    fn shares_are_even_and_two_replicas_agree() {
        let eps = addrs(10);
        let (a, b) = (Maglev::new(&eps), Maglev::new(&eps));
        let mut shares = [0usize; 10];
        for i in 0..100_000 {
            let p = a.pick(key(i)).expect("an endpoint");
            assert_eq!(Some(p), b.pick(key(i)), "replicas agree");
            shares[p] += 1;
        }
        // Each a tenth, within a few percent.
        assert!(
            shares.iter().all(|s| (9_000..=11_000).contains(s)),
            "{shares:?}"
        );
    }

    #[test]
    fn removing_one_endpoint_of_ten_moves_about_a_tenth_of_the_keys() {
        let eps = addrs(10);
        let before = Maglev::new(&eps);
        let fewer: Vec<SocketAddr> = eps.iter().copied().filter(|a| a != &eps[3]).collect();
        let after = Maglev::new(&fewer);
        let keys = 100_000;
        let mut moved = 0;
        for i in 0..keys {
            let was = eps[before.pick(key(i)).expect("one")];
            let now = fewer[after.pick(key(i)).expect("one")];
            if was != now {
                moved += 1;
            }
        }
        // The removed endpoint's tenth must move; Maglev moves little more than that.
        let share = f64::from(moved) / f64::from(keys);
        assert!((0.09..=0.13).contains(&share), "{share}");
    }

    #[test]
    fn the_order_endpoints_are_listed_in_does_not_matter() {
        let eps = addrs(5);
        let mut reversed = eps.clone();
        reversed.reverse();
        let (a, b) = (Maglev::new(&eps), Maglev::new(&reversed));
        for i in 0..1000 {
            let pa = eps[a.pick(key(i)).expect("one")];
            let pb = reversed[b.pick(key(i)).expect("one")];
            assert_eq!(pa, pb);
        }
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(Maglev::new(&[]).pick(7), None);
        assert_eq!(Maglev::new(&addrs(1)).pick(7), Some(0));
    }
}
