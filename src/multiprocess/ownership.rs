//! Which process writes which region of a sharded array.
//!
//! Each distinct region is written once, by the process holding its first
//! device in mesh order (the device JAX gives `replica_id` 0 in
//! `devices_indices_map` order). A process knows which devices it holds from
//! its shards, so no device → process table is needed (multi-process JAX
//! device ids are not contiguous: process 1's first CPU device is 2048).

use crate::sharded::IndexRegion;

/// The regions of `device_regions` (as from [`crate::sharded::device_regions`])
/// that a process holding the devices for which `holds` is true writes, each
/// with the device that owns it for writing.
pub fn regions_written_by(
    device_regions: &[(i64, IndexRegion)],
    holds: impl Fn(i64) -> bool,
) -> Vec<(i64, IndexRegion)> {
    let mut written: Vec<(i64, IndexRegion)> = Vec::new();
    let mut seen: Vec<&IndexRegion> = Vec::new();
    for (device, region) in device_regions {
        if seen.contains(&region) {
            continue;
        }
        seen.push(region);
        if holds(*device) {
            written.push((*device, region.clone()));
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_regions_are_written_once_by_the_holder_of_the_first_device() {
        // 8 devices, 4 processes of 2 devices each (ids as JAX numbers them:
        // 2048 per process); dim 0 split in 2, replicated over 4 devices each.
        let ids: Vec<i64> = (0..4).flat_map(|p| [p * 2048, p * 2048 + 1]).collect();
        let halves = |i: u64| vec![i * 4..i * 4 + 4, 0..3];
        let regions: Vec<(i64, IndexRegion)> =
            ids.iter().enumerate().map(|(n, &d)| (d, halves(n as u64 / 4))).collect();
        let written: Vec<_> = (0..4i64).map(|p| regions_written_by(&regions, |d| d / 2048 == p)).collect();
        assert_eq!(written[0], vec![(0, halves(0))]);
        assert!(written[1].is_empty());
        assert_eq!(written[2], vec![(4096, halves(1))]);
        assert!(written[3].is_empty());
    }
}
