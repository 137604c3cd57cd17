//! Seeds and named sub-streams.
//!
//! A [`Seed`] is a 64-bit value. [`Seed::stream`] derives an independent seed for a named
//! purpose (`"init"`, `"sampling"`, `"data/train"`) and [`Seed::index`] one for the i-th item of
//! a stream (the i-th generated sample, the e-th epoch's shuffle). Derivation is a fixed
//! SplitMix64 / FNV-1a mix, so the same experiment seed gives the same numbers on every machine
//! and in every process. Generators are ChaCha8, whose output `rand_chacha` fixes across versions.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A reproducible seed from which named sub-streams and generators are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Seed(pub u64);

/// The generator every gaze random draw uses.
pub type Rng = ChaCha8Rng;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl Seed {
    /// The seed of a named sub-stream: different names give unrelated seeds.
    pub fn stream(self, name: &str) -> Seed {
        Seed(splitmix64(self.0 ^ splitmix64(fnv1a(name))))
    }

    /// The seed of item `i` of this stream.
    pub fn index(self, i: u64) -> Seed {
        Seed(splitmix64(splitmix64(self.0).wrapping_add(i.wrapping_mul(0xD1B5_4A32_D192_ED03))))
    }

    /// A generator seeded from this seed.
    pub fn rng(self) -> Rng {
        ChaCha8Rng::seed_from_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let s = Seed(7);
        assert_eq!(s.stream("init"), Seed(7).stream("init"));
        assert_ne!(s.stream("init"), s.stream("data"));
        assert_ne!(s.index(0), s.index(1));
        assert_ne!(Seed(7).index(0), Seed(8).index(0));
        let a: Vec<u32> = (0..4).map(|_| 0).scan(s.rng(), |r, _: i32| Some(r.random::<u32>())).collect();
        let b: Vec<u32> = (0..4).map(|_| 0).scan(s.rng(), |r, _: i32| Some(r.random::<u32>())).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn derivation_is_pinned() {
        // Values recomputed independently (a few lines of Python of the same SplitMix64 / FNV-1a
        // mix). A change here silently changes every generated data set and every init.
        assert_eq!(Seed(0).stream("data").0, 4_925_559_455_529_825_250);
        assert_eq!(Seed(42).stream("data").index(3).0, 16_361_151_061_572_669_709);
        let mut r = Seed(1).rng();
        let x: u64 = r.random();
        let mut r2 = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(x, r2.random::<u64>());
    }
}
