//! A small seeded random generator for fault points that a failing run can replay.

/// `SplitMix64`, seeded from `LEPUS_SEED` or the clock.
#[derive(Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// Seeded from `LEPUS_SEED` or the clock; the seed is printed, named after `test`, for
    /// replay.
    pub fn seeded(test: &str) -> SeededRng {
        let seed = std::env::var("LEPUS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            // The low 64 bits are the varying ones.
            nanos as u64
        });
        println!("{test}: seed {seed} (replay with LEPUS_SEED={seed})");
        SeededRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for test purposes (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
