//! Which instruction set a kernel runs with, chosen at run time.
//!
//! Detection goes through pulp's tokens (`V4` = AVX-512 F/BW/CD/DQ/VL, `V3` = AVX2+FMA); holding a
//! token proves the CPU has the features, which is what makes calling the `#[target_feature]`
//! kernels sound. Tests force every level the machine supports, so each SIMD path is compared
//! with the scalar reference on the same inputs.

use std::fmt;

/// The environment variable the command line, the benchmarks and the examples read a forced level
/// from (`QSPARSE_ISA=avx2 qsparse bench`): see [`Isa::choose`].
pub const ISA_VARIABLE: &str = "QSPARSE_ISA";

/// An instruction-set level a kernel can be run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every SIMD kernel is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (pulp's `V3`).
    Avx2,
    /// x86-64 AVX-512 F/BW/CD/DQ/VL (pulp's `V4`); VNNI is used where present.
    Avx512,
    /// aarch64 Advanced SIMD (pulp's `Neon`).
    Neon,
}

impl Isa {
    /// The best level this CPU supports.
    pub fn best() -> Isa {
        Self::available().last().copied().unwrap_or(Isa::Scalar)
    }

    /// The level `name` (`scalar`, `avx2`, `avx512`, `neon`) if this CPU has it, else the best:
    /// how the levels are compared end to end (the command line reads the name from
    /// [`ISA_VARIABLE`]; the measuring commands report the level they ran with).
    pub fn choose(name: Option<&str>) -> Isa {
        let named = name.and_then(|v| {
            Self::available()
                .into_iter()
                .find(|isa| isa.name().eq_ignore_ascii_case(v.trim()))
        });
        named.unwrap_or_else(Self::best)
    }

    /// Every level this CPU supports, from scalar up.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::v3().is_some() {
                v.push(Isa::Avx2);
            }
            if x86::v4().is_some() {
                v.push(Isa::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if pulp::aarch64::Neon::try_new().is_some() {
            v.push(Isa::Neon);
        }
        v
    }

    /// Whether this CPU can run kernels at this level.
    pub fn is_available(self) -> bool {
        Self::available().contains(&self)
    }

    /// The level's name (`scalar`, `avx2`, `avx512`, `neon`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use pulp::x86::{V3, V4};

    /// AVX2 + FMA, plus F16C for half-precision loads (every AVX2 CPU has it, pulp's V3 does
    /// not list it, so it is checked here).
    pub fn v3() -> Option<V3> {
        V3::try_new().filter(|_| std::arch::is_x86_feature_detected!("f16c"))
    }

    pub fn v4() -> Option<V4> {
        v3()?;
        V4::try_new()
    }

    /// Proof that this CPU has AVX-512 VNNI (`vpdpwssd`, `vpdpbusd`), used by the int8 kernels:
    /// only [`Vnni::detect`] makes one.
    #[derive(Debug, Clone, Copy)]
    pub struct Vnni(());

    impl Vnni {
        pub fn detect() -> Option<Vnni> {
            std::arch::is_x86_feature_detected!("avx512vnni").then_some(Vnni(()))
        }
    }

    /// Proof that this CPU has GFNI (`vgf2p8affineqb`), used by the ternary kernels: only
    /// [`Gfni::detect`] makes one.
    #[derive(Debug, Clone, Copy)]
    pub struct Gfni(());

    impl Gfni {
        pub fn detect() -> Option<Gfni> {
            std::arch::is_x86_feature_detected!("gfni").then_some(Gfni(()))
        }
    }
}
