//! Conversions of loaded arrays to other Rust array libraries, each behind
//! a cargo feature (see `docs/decisions.md` for which libraries and why).

#[cfg(feature = "ndarray")]
pub mod ndarray;
