//! Orbax metadata files (being written).
