//! Arrays split over devices: the pieces of one global array that each
//! device (and so each process) holds, as JAX's `jax.Array` does.
//!
//! A [`ShardedArray`] is a global shape and dtype plus the [`Shard`]s this
//! process has: each shard is the region of the global index domain it
//! covers (`start..end` per dimension) and the elements of that region.
//! Replicated data appears as several shards with the same region.
//! [`device_regions`] computes which region each device of a
//! `NamedSharding` owns, following `jax.sharding.Sharding.devices_indices_map`.

use std::ops::Range;

use crate::dtype::DType;
use crate::metadata::{PartitionSpecEntry, Sharding};
use crate::pytree::{num_elements, Array};
use crate::zarr::{copy_block, Region};

/// A region of an array's index domain: `start..end` in each dimension.
pub type IndexRegion = Vec<Range<u64>>;

/// The number of elements along each dimension of a region.
pub fn region_shape(region: &[Range<u64>]) -> Vec<u64> {
    region.iter().map(|r| r.end.saturating_sub(r.start)).collect()
}

/// One device's piece of a global array.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    /// The device holding it (its JAX device id).
    pub device: i64,
    /// The region of the global array it covers.
    pub region: IndexRegion,
    /// Its elements: an array whose shape is the region's extent.
    pub data: Array,
}

/// A global array of which this process holds some shards.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedArray {
    global_shape: Vec<u64>,
    dtype: DType,
    sharding: Option<Sharding>,
    shards: Vec<Shard>,
}

impl ShardedArray {
    /// Checks that every shard has the dtype, lies inside `global_shape` and
    /// holds exactly its region's elements. `sharding`, if given, is the
    /// layout the shards came from (recorded in `_sharding` when saved).
    pub fn new(
        global_shape: Vec<u64>,
        dtype: DType,
        sharding: Option<Sharding>,
        shards: Vec<Shard>,
    ) -> Result<Self, String> {
        for shard in &shards {
            if shard.data.dtype() != dtype {
                return Err(format!(
                    "shard on device {} is {}, the array is {dtype}",
                    shard.device,
                    shard.data.dtype()
                ));
            }
            let inside = shard.region.len() == global_shape.len()
                && shard.region.iter().zip(&global_shape).all(|(r, &n)| r.start <= r.end && r.end <= n);
            if !inside {
                return Err(format!(
                    "shard on device {} covers {:?}, outside the global shape {global_shape:?}",
                    shard.device, shard.region
                ));
            }
            if shard.data.shape() != region_shape(&shard.region) {
                return Err(format!(
                    "shard on device {} covers {:?} but holds shape {:?}",
                    shard.device,
                    shard.region,
                    shard.data.shape()
                ));
            }
        }
        Ok(ShardedArray { global_shape, dtype, sharding, shards })
    }

    /// Cuts a whole array into the shards of the given devices' regions
    /// (for example the local devices' part of [`device_regions`]).
    pub fn from_array(
        array: &Array,
        sharding: Option<Sharding>,
        regions: &[(i64, IndexRegion)],
    ) -> Result<Self, String> {
        let item = array.dtype().size();
        let shards = regions
            .iter()
            .map(|(device, region)| {
                let extent = region_shape(region);
                if region.len() != array.shape().len() || region.iter().zip(array.shape()).any(|(r, &n)| r.end > n) {
                    return Err(format!("region {region:?} is outside shape {:?}", array.shape()));
                }
                let bytes = num_elements(&extent).ok_or("region too large")? as usize * item;
                let mut data = vec![0u8; bytes];
                let origin: Vec<u64> = region.iter().map(|r| r.start).collect();
                let zero = vec![0; extent.len()];
                copy_block(
                    array.data(),
                    Region { shape: array.shape(), origin: &origin },
                    &mut data,
                    Region { shape: &extent, origin: &zero },
                    &extent,
                    item,
                );
                Ok(Shard { device: *device, region: region.clone(), data: Array::new(array.dtype(), extent, data)? })
            })
            .collect::<Result<Vec<_>, String>>()?;
        ShardedArray::new(array.shape().to_vec(), array.dtype(), sharding, shards)
    }

    /// The shape of the whole array.
    pub fn global_shape(&self) -> &[u64] {
        &self.global_shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The layout the shards came from, if known.
    pub fn sharding(&self) -> Option<&Sharding> {
        self.sharding.as_ref()
    }

    /// The shards this process holds.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Takes the shards.
    pub fn into_shards(self) -> Vec<Shard> {
        self.shards
    }

    /// The whole array, if the shards cover it: distinct regions must be
    /// disjoint and together as large as the array (replicas, shards with
    /// equal regions, are taken once).
    pub fn assemble(&self) -> Result<Array, String> {
        let mut distinct: Vec<&Shard> = Vec::new();
        for shard in &self.shards {
            if !distinct.iter().any(|s| s.region == shard.region) {
                distinct.push(shard);
            }
        }
        for (i, a) in distinct.iter().enumerate() {
            if let Some(b) = distinct[i + 1..].iter().find(|b| overlaps(&a.region, &b.region)) {
                return Err(format!("shards overlap without being replicas: {:?} and {:?}", a.region, b.region));
            }
        }
        let total = num_elements(&self.global_shape).ok_or("array too large")?;
        let covered: u64 = distinct.iter().map(|s| s.data.len()).sum();
        if covered != total {
            return Err(format!(
                "shards cover {covered} of the {total} elements of shape {:?}; assembling needs all of them",
                self.global_shape
            ));
        }
        let item = self.dtype.size();
        let mut data = vec![0u8; total as usize * item];
        for shard in distinct {
            let extent = region_shape(&shard.region);
            let origin: Vec<u64> = shard.region.iter().map(|r| r.start).collect();
            let zero = vec![0; extent.len()];
            copy_block(
                shard.data.data(),
                Region { shape: &extent, origin: &zero },
                &mut data,
                Region { shape: &self.global_shape, origin: &origin },
                &extent,
                item,
            );
        }
        Array::new(self.dtype, self.global_shape.clone(), data)
    }
}

fn overlaps(a: &[Range<u64>], b: &[Range<u64>]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.start < y.end && y.start < x.end)
}

/// The region each device owns of an array of `global_shape` laid out by
/// `sharding`, in mesh order (the device ids flattened in C order, or
/// `0..n` if none were recorded), as JAX's `devices_indices_map`: a
/// dimension split over mesh axes `(a, b, …)` is cut into
/// `size(a)·size(b)·…` pieces of `ceil(dim / pieces)` elements, the first
/// axis varying slowest; dimensions not named are replicated.
pub fn device_regions(sharding: &Sharding, global_shape: &[u64]) -> Result<Vec<(i64, IndexRegion)>, String> {
    match sharding {
        Sharding::Named { mesh_shape, axis_names, partition_spec, device_ids, .. } => {
            if mesh_shape.len() != axis_names.len() {
                return Err(format!("mesh shape {mesh_shape:?} does not match axis names {axis_names:?}"));
            }
            if partition_spec.len() > global_shape.len() {
                return Err(format!(
                    "partition spec has {} entries for an array of rank {}",
                    partition_spec.len(),
                    global_shape.len()
                ));
            }
            let devices = num_elements(mesh_shape).ok_or("mesh too large")? as usize;
            if !device_ids.is_empty() && device_ids.len() != devices {
                return Err(format!("mesh {mesh_shape:?} has {devices} devices but {} ids", device_ids.len()));
            }
            let axis = |name: &String| {
                axis_names
                    .iter()
                    .position(|a| a == name)
                    .ok_or_else(|| format!("partition spec names unknown mesh axis {name:?}"))
            };
            let dim_axes: Vec<Vec<usize>> = (0..global_shape.len())
                .map(|d| match partition_spec.get(d) {
                    None | Some(PartitionSpecEntry::None) => Ok(vec![]),
                    Some(PartitionSpecEntry::Axis(a)) => Ok(vec![axis(a)?]),
                    Some(PartitionSpecEntry::Axes(names)) => names.iter().map(axis).collect(),
                })
                .collect::<Result<_, String>>()?;
            let shard_shape = sharding.shard_shape(global_shape);
            let mut out = Vec::with_capacity(devices);
            let mut coords = vec![0u64; mesh_shape.len()];
            for flat in 0..devices {
                let mut rest = flat as u64;
                for (c, &n) in coords.iter_mut().zip(mesh_shape).rev() {
                    *c = rest % n.max(1);
                    rest /= n.max(1);
                }
                let region = dim_axes
                    .iter()
                    .zip(global_shape)
                    .zip(&shard_shape)
                    .map(|((axes, &dim), &size)| {
                        let piece = axes.iter().fold(0u64, |acc, &a| acc * mesh_shape[a] + coords[a]);
                        let start = (piece * size).min(dim);
                        start..(start + size).min(dim)
                    })
                    .collect();
                let device = if device_ids.is_empty() { flat as i64 } else { device_ids[flat] };
                out.push((device, region));
            }
            Ok(out)
        }
        Sharding::SingleDevice { device } => {
            let id = device.rsplit(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).unwrap_or(0);
            Ok(vec![(id, global_shape.iter().map(|&n| 0..n).collect())])
        }
        Sharding::Other(v) => Err(format!("cannot compute device regions of sharding {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(mesh: &[u64], axes: &[&str], spec: Vec<PartitionSpecEntry>) -> Sharding {
        Sharding::Named {
            mesh_shape: mesh.to_vec(),
            axis_names: axes.iter().map(|s| s.to_string()).collect(),
            axis_types: None,
            partition_spec: spec,
            device_ids: vec![],
            memory_kind: None,
        }
    }

    #[test]
    fn regions_follow_jax_devices_indices_map() {
        // Mesh 2x4 ('x','y'), P('x', 'y') on (8, 8): device (i, j) owns rows 4i..4i+4, cols 2j..2j+2.
        let s = named(
            &[2, 4],
            &["x", "y"],
            vec![PartitionSpecEntry::Axis("x".into()), PartitionSpecEntry::Axis("y".into())],
        );
        let r = device_regions(&s, &[8, 8]).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(r[5], (5, vec![4..8, 2..4]));
        // P(('x','y')) on (16,): 8 pieces, x major.
        let s = named(&[2, 4], &["x", "y"], vec![PartitionSpecEntry::Axes(vec!["x".into(), "y".into()])]);
        let r = device_regions(&s, &[16]).unwrap();
        assert_eq!((r[6].0, r[6].1.len(), r[6].1[0].clone()), (6, 1, 12..14));
        // P(None, 'x'): rows replicated.
        let s = named(&[2, 4], &["x", "y"], vec![PartitionSpecEntry::None, PartitionSpecEntry::Axis("x".into())]);
        let r = device_regions(&s, &[3, 5]).unwrap();
        assert_eq!(r[0].1, vec![0..3, 0..3]);
        assert_eq!(r[7].1, vec![0..3, 3..5]);
        assert!(device_regions(&named(&[2], &["x"], vec![PartitionSpecEntry::Axis("z".into())]), &[4]).is_err());
    }

    #[test]
    fn cut_and_assemble_round_trip() {
        let data: Vec<u8> = (0..48u8).collect();
        let array = Array::new(DType::UInt8, vec![6, 8], data).unwrap();
        let s = named(&[2, 4], &["x", "y"], vec![PartitionSpecEntry::Axis("x".into())]);
        let regions = device_regions(&s, &[6, 8]).unwrap();
        let sharded = ShardedArray::from_array(&array, Some(s), &regions).unwrap();
        assert_eq!(sharded.shards()[4].data.data()[..8], [24, 25, 26, 27, 28, 29, 30, 31]);
        assert_eq!(sharded.assemble().unwrap(), array);
        let partial = ShardedArray::from_array(&array, None, &regions[..4]).unwrap();
        assert!(partial.assemble().unwrap_err().contains("cover 24 of the 48"));
    }
}
