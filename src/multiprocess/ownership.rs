//! Which process writes which region of a sharded array.
//!
//! Each distinct region is written once, by the process of its first device
//! in mesh order (the device JAX gives `replica_id` 0 in
//! `devices_indices_map` order). Device → process is the caller's
//! `device_process` function; [`contiguous_device_process`] is the default
//! assumed here: device ids `0..n` split into `count` equal contiguous
//! blocks, as JAX numbers the devices of a multi-process CPU/TPU job.

use crate::sharded::IndexRegion;

/// The default device → process assignment: device `d` of `num_devices`
/// belongs to process `d / (num_devices / process_count)`.
pub fn contiguous_device_process(num_devices: usize, process_count: usize) -> impl Fn(i64) -> usize {
    let per_process = (num_devices / process_count.max(1)).max(1);
    move |device| (device.max(0) as usize / per_process).min(process_count.saturating_sub(1))
}

/// The regions of `device_regions` (as from [`crate::sharded::device_regions`])
/// that `process` writes, each with the device that owns it for writing.
pub fn regions_written_by(
    process: usize,
    device_regions: &[(i64, IndexRegion)],
    device_process: impl Fn(i64) -> usize,
) -> Vec<(i64, IndexRegion)> {
    let mut written: Vec<(i64, IndexRegion)> = Vec::new();
    let mut seen: Vec<&IndexRegion> = Vec::new();
    for (device, region) in device_regions {
        if seen.contains(&region) {
            continue;
        }
        seen.push(region);
        if device_process(*device) == process {
            written.push((*device, region.clone()));
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_regions_are_written_once_by_the_first_devices_process() {
        // 8 devices, 4 processes; dim 0 split in 2, replicated over 4 devices each.
        let halves = |i: u64| vec![i * 4..i * 4 + 4, 0..3];
        let regions: Vec<(i64, IndexRegion)> = (0..8).map(|d| (d, halves(d as u64 / 4))).collect();
        let owner = contiguous_device_process(8, 4);
        assert_eq!(owner(5), 2);
        let written: Vec<_> = (0..4).map(|p| regions_written_by(p, &regions, &owner)).collect();
        assert_eq!(written[0], vec![(0, halves(0))]);
        assert!(written[1].is_empty());
        assert_eq!(written[2], vec![(4, halves(1))]);
        assert!(written[3].is_empty());
    }
}
