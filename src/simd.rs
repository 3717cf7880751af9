//! Runtime selection of the widest vector instructions the CPU has, for the
//! few hot loops that are written to auto-vectorize.

/// Evaluates `$body` compiled for AVX-512 (F, DQ, BW, VL) or AVX2 when the CPU
/// has them, else for the baseline. The functions `$body` calls must be
/// `#[inline(always)]` so that they are compiled with the chosen features.
/// Only the vector width changes: Rust never fuses multiplies and adds or
/// reorders float operations, so every lane computes exactly what scalar code
/// would, and results are the same bytes on every CPU.
macro_rules! with_widest_simd {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
            fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2")]
            fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the CPU supports these features, checked just above.
                unsafe { avx512(|| $body) }
            } else if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { avx2(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

pub(crate) use with_widest_simd;
