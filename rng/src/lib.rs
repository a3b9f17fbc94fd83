//! The one pseudo-random generator of the project's tests and tools: the
//! engine simulator (`proxy::sim`), netfront's test harness, the host delay
//! element (`tools/netdelay`) and the fuzz checks. Deterministic per seed,
//! so a failing seed replays; not for anything that needs to be
//! unpredictable.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014): every seed, 0 included, gives a full-period
//! stream, and one addition and two multiplications per draw keep it cheap
//! enough for per-packet loss decisions.
#![no_std]
#![forbid(unsafe_code)]

/// A seeded SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0. (The modulo bias, below 2^-40
    /// for the small `n` the tests use, does not matter here.)
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `p` (0.0 never, 1.0 always): a uniform draw in
    /// [0, 1) with 53 bits, below `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Fill `buf`, eight bytes per draw (little-endian), so that filling
    /// consecutive buffers whose lengths are multiples of 8 gives the same
    /// bytes as filling their concatenation.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn known_answers() {
        // SplitMix64 from seed 0 (the reference implementation's first outputs).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn fill_is_piecewise_the_same_stream() {
        let mut whole = [0u8; 40];
        Rng::new(7).fill(&mut whole);
        let mut r = Rng::new(7);
        let (mut a, mut b) = ([0u8; 16], [0u8; 24]);
        r.fill(&mut a);
        r.fill(&mut b);
        assert_eq!(&whole[..16], &a);
        assert_eq!(&whole[16..], &b);
    }

    #[test]
    fn below_and_chance_stay_in_range() {
        let mut r = Rng::new(1);
        assert_eq!(r.below(0), 0);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
    }
}
