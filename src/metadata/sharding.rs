//! `<item>/_sharding`: how each `jax.Array` leaf was sharded when saved
//! (Orbax ≥ 0.4.0; see `format-spec/04-orbax-metadata.md` §5).
//!
//! Member names are `base64.urlsafe_b64encode(param_name)` and values are
//! JSON *strings* holding the sharding as JSON. Files written before
//! October 2023 (Orbax ≤ 0.4.1) use plain param names and empty-string
//! values, which carry no sharding.

use std::collections::HashMap;
use std::fmt::Write;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};

use super::json::{self, type_name};
use super::MetadataError;

/// URL-safe base64; Orbax pads with `=`, unpadded names are accepted too.
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The parsed `_sharding` file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ShardingFile {
    entries: Vec<(String, Sharding)>,
    by_name: HashMap<String, usize>,
}

/// The sharding of one array when it was saved.
#[derive(Debug, Clone, PartialEq)]
pub enum Sharding {
    /// `jax.sharding.NamedSharding`: a device mesh with named axes and a
    /// partition spec saying which mesh axes split each array dimension.
    Named {
        /// Size of each mesh axis.
        mesh_shape: Vec<u64>,
        /// Name of each mesh axis.
        axis_names: Vec<String>,
        /// `AxisType` of each mesh axis (e.g. `"AxisType.Auto"`), if recorded.
        axis_types: Option<Vec<String>>,
        /// One entry per array dimension (may be shorter than the rank:
        /// missing trailing dimensions are replicated).
        partition_spec: Vec<PartitionSpecEntry>,
        /// Device ids of the mesh, flattened in C order (empty if not recorded).
        device_ids: Vec<i64>,
        /// Memory kind (e.g. `"device"`, `"pinned_host"`), if recorded.
        memory_kind: Option<String>,
    },
    /// `jax.sharding.SingleDeviceSharding`.
    SingleDevice {
        /// The device, as `str(device)` (e.g. `"cpu:0"`, `"TFRT_CPU_0"`).
        device: String,
    },
    /// A sharding type orbax-rs does not model (e.g. `PositionalSharding`,
    /// `GSPMDSharding`), as its JSON.
    Other(Value),
}

/// How one array dimension is partitioned over the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSpecEntry {
    /// Not partitioned (`None`).
    None,
    /// Split over one mesh axis.
    Axis(String),
    /// Split over several mesh axes (a tuple of names).
    Axes(Vec<String>),
}

impl ShardingFile {
    /// Parses the bytes of a `_sharding` file; `file` names it in errors.
    ///
    /// ```
    /// use orbax::metadata::{Sharding, ShardingFile};
    /// let json = br#"{"YQ==": "{\"sharding_type\": \"SingleDeviceSharding\", \"device_str\": \"cpu:0\"}"}"#;
    /// let file = ShardingFile::parse(json, "state/_sharding").unwrap();
    /// assert_eq!(file.get("a"), Some(&Sharding::SingleDevice { device: "cpu:0".into() }));
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<ShardingFile, MetadataError> {
        let top = json::parse_object(bytes, file)?;
        let mut out = ShardingFile::default();
        for (key, value) in &top {
            let text = match value {
                // The pre-0.4.x form: plain param names, no sharding.
                Value::String(s) if s.is_empty() => continue,
                Value::String(s) => s,
                v => {
                    return Err(MetadataError::invalid(
                        file,
                        format!("value of {key:?} is {}, expected a string", type_name(v)),
                    ))
                }
            };
            let name =
                URL_SAFE_ANY_PADDING.decode(key).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
                    MetadataError::invalid(
                        file,
                        format!("member name {key:?} is not URL-safe base64 of a UTF-8 param name"),
                    )
                })?;
            let ctx = format!("sharding of {name:?}");
            let sharding = match json::parse_value(text.as_bytes(), file) {
                Ok(Value::Object(map)) => parse_sharding(&map, &ctx, file)?,
                Ok(v) => {
                    return Err(MetadataError::invalid(file, format!("{ctx} is {}, expected an object", type_name(&v))))
                }
                Err(MetadataError::Json { source, .. }) => {
                    return Err(MetadataError::invalid(file, format!("{ctx} is not valid JSON: {source}")))
                }
                Err(e) => return Err(e),
            };
            if out.by_name.insert(name.clone(), out.entries.len()).is_some() {
                return Err(MetadataError::invalid(file, format!("{ctx} appears twice")));
            }
            out.entries.push((name, sharding));
        }
        Ok(out)
    }

    /// The sharding recorded for the array with this param name.
    pub fn get(&self, param_name: &str) -> Option<&Sharding> {
        self.by_name.get(param_name).map(|&i| &self.entries[i].1)
    }

    /// Every (param name, sharding) in file order.
    pub fn entries(&self) -> &[(String, Sharding)] {
        &self.entries
    }
}

fn parse_sharding(map: &Map<String, Value>, ctx: &str, file: &str) -> Result<Sharding, MetadataError> {
    let invalid = |what: String| MetadataError::invalid(file, format!("{ctx}: {what}"));
    let member = |key: &str| map.get(key).ok_or_else(|| invalid(format!("no {key}")));
    match map.get("sharding_type").and_then(Value::as_str) {
        Some("NamedSharding") => {
            let mesh_shape = json::u64_list(member("shape")?, &format!("{ctx}: shape"), file)?;
            let axis_names = json::string_list(member("axis_names")?, &format!("{ctx}: axis_names"), file)?;
            if axis_names.len() != mesh_shape.len() {
                return Err(invalid(format!(
                    "{} axis names for a mesh of rank {}",
                    axis_names.len(),
                    mesh_shape.len()
                )));
            }
            let axis_types = match map.get("axis_types") {
                None | Some(Value::Null) => None,
                Some(v) => Some(json::string_list(v, &format!("{ctx}: axis_types"), file)?),
            };
            let partition_spec = match member("partition_spec")? {
                Value::Array(items) => items
                    .iter()
                    .map(|e| {
                        partition_entry(e).ok_or_else(|| {
                            invalid(format!("partition_spec entry {e} is not null, a name or a list of names"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                v => return Err(invalid(format!("partition_spec is {}, expected a list", type_name(v)))),
            };
            let device_ids = match map.get("device_mesh") {
                None | Some(Value::Null) => Vec::new(),
                Some(mesh) => {
                    let mesh = mesh.get("mesh").ok_or_else(|| invalid("device_mesh has no mesh".into()))?;
                    let mut ids = Vec::new();
                    flatten_mesh(mesh, mesh_shape.len(), &mut ids).map_err(invalid)?;
                    let expected = crate::pytree::num_elements(&mesh_shape);
                    if expected != Some(ids.len() as u64) {
                        return Err(invalid(format!(
                            "device_mesh has {} devices, the mesh shape {mesh_shape:?} needs {expected:?}",
                            ids.len()
                        )));
                    }
                    ids
                }
            };
            Ok(Sharding::Named {
                mesh_shape,
                axis_names,
                axis_types,
                partition_spec,
                device_ids,
                memory_kind: json::opt_string(map, "memory_kind", &format!("{ctx}: "), file)?,
            })
        }
        Some("SingleDeviceSharding") => match member("device_str")? {
            Value::String(device) => Ok(Sharding::SingleDevice { device: device.clone() }),
            v => Err(invalid(format!("device_str is {}, expected a string", type_name(v)))),
        },
        Some(_) => Ok(Sharding::Other(Value::Object(map.clone()))),
        None => Err(invalid("no sharding_type string".into())),
    }
}

fn partition_entry(e: &Value) -> Option<PartitionSpecEntry> {
    match e {
        Value::Null => Some(PartitionSpecEntry::None),
        Value::String(s) => Some(PartitionSpecEntry::Axis(s.clone())),
        Value::Array(names) => {
            names.iter().map(|n| n.as_str().map(str::to_string)).collect::<Option<_>>().map(PartitionSpecEntry::Axes)
        }
        _ => None,
    }
}

/// Appends the `id`s of a nested device mesh of the given rank in C order.
fn flatten_mesh(mesh: &Value, rank: usize, out: &mut Vec<i64>) -> Result<(), String> {
    match mesh {
        Value::Array(items) if rank > 0 => items.iter().try_for_each(|m| flatten_mesh(m, rank - 1, out)),
        Value::Object(device) if rank == 0 => {
            let id =
                device.get("id").and_then(Value::as_i64).ok_or_else(|| format!("device {mesh} has no integer id"))?;
            out.push(id);
            Ok(())
        }
        _ => Err(format!("device_mesh is not nested to the mesh rank {rank} (found {mesh})")),
    }
}

impl Sharding {
    /// A short human description, e.g. `NamedSharding(mesh x=4,y=2; spec ('x', None))`.
    ///
    /// ```
    /// use orbax::metadata::{PartitionSpecEntry, Sharding};
    /// let s = Sharding::Named {
    ///     mesh_shape: vec![4, 2],
    ///     axis_names: vec!["x".into(), "y".into()],
    ///     axis_types: None,
    ///     partition_spec: vec![PartitionSpecEntry::Axis("x".into()), PartitionSpecEntry::None],
    ///     device_ids: (0..8).collect(),
    ///     memory_kind: None,
    /// };
    /// assert_eq!(s.describe(), "NamedSharding(mesh x=4,y=2; spec ('x', None))");
    /// ```
    pub fn describe(&self) -> String {
        match self {
            Sharding::Named { mesh_shape, axis_names, partition_spec, memory_kind, .. } => {
                let mesh: Vec<String> = axis_names.iter().zip(mesh_shape).map(|(n, s)| format!("{n}={s}")).collect();
                let spec: Vec<String> = partition_spec
                    .iter()
                    .map(|e| match e {
                        PartitionSpecEntry::None => "None".to_string(),
                        PartitionSpecEntry::Axis(a) => crate::python_repr::repr_str(a),
                        PartitionSpecEntry::Axes(axes) => crate::python_repr::repr_str_tuple(axes),
                    })
                    .collect();
                let spec = match spec.as_slice() {
                    [one] => format!("({one},)"),
                    many => format!("({})", many.join(", ")),
                };
                let mut out = format!("NamedSharding(mesh {}; spec {spec}", mesh.join(","));
                if let Some(kind) = memory_kind {
                    let _ = write!(out, "; memory {kind}");
                }
                out.push(')');
                out
            }
            Sharding::SingleDevice { device } => format!("SingleDeviceSharding({device})"),
            Sharding::Other(v) => match v.get("sharding_type").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => "unknown sharding".to_string(),
            },
        }
    }
}

impl Sharding {
    /// The JSON object Orbax stores for this sharding (the inverse of
    /// parsing), with members in Orbax's order.
    pub fn to_json(&self) -> Value {
        match self {
            Sharding::Named { mesh_shape, axis_names, axis_types, partition_spec, device_ids, memory_kind } => {
                let mut map = serde_json::Map::new();
                map.insert("sharding_type".into(), Value::from("NamedSharding"));
                map.insert("shape".into(), Value::from(mesh_shape.clone()));
                map.insert("axis_names".into(), Value::from(axis_names.clone()));
                if let Some(types) = axis_types {
                    map.insert("axis_types".into(), Value::from(types.clone()));
                }
                let spec: Vec<Value> = partition_spec
                    .iter()
                    .map(|e| match e {
                        PartitionSpecEntry::None => Value::Null,
                        PartitionSpecEntry::Axis(a) => Value::from(a.clone()),
                        PartitionSpecEntry::Axes(axes) => Value::from(axes.clone()),
                    })
                    .collect();
                map.insert("partition_spec".into(), Value::Array(spec));
                if !device_ids.is_empty() {
                    map.insert("device_mesh".into(), serde_json::json!({ "mesh": nest_ids(device_ids, mesh_shape) }));
                }
                if let Some(kind) = memory_kind {
                    map.insert("memory_kind".into(), Value::from(kind.clone()));
                }
                Value::Object(map)
            }
            Sharding::SingleDevice { device } => {
                serde_json::json!({"sharding_type": "SingleDeviceSharding", "device_str": device})
            }
            Sharding::Other(v) => v.clone(),
        }
    }

    /// The shape of one device's shard of an array of `global_shape`: each
    /// dimension divided (rounding up) by the product of the mesh axes its
    /// partition-spec entry names.
    pub fn shard_shape(&self, global_shape: &[u64]) -> Vec<u64> {
        match self {
            Sharding::Named { mesh_shape, axis_names, partition_spec, .. } => {
                let size = |name: &String| {
                    axis_names.iter().position(|a| a == name).map_or(1, |i| mesh_shape.get(i).copied().unwrap_or(1))
                };
                global_shape
                    .iter()
                    .enumerate()
                    .map(|(d, &dim)| {
                        let parts: u64 = match partition_spec.get(d) {
                            None | Some(PartitionSpecEntry::None) => 1,
                            Some(PartitionSpecEntry::Axis(a)) => size(a),
                            Some(PartitionSpecEntry::Axes(axes)) => axes.iter().map(size).product(),
                        };
                        dim.div_ceil(parts.max(1))
                    })
                    .collect()
            }
            _ => global_shape.to_vec(),
        }
    }
}

/// `[{"id": n}, ...]` nested to the mesh shape.
fn nest_ids(ids: &[i64], shape: &[u64]) -> Value {
    match shape {
        [] | [_] => Value::Array(ids.iter().map(|id| serde_json::json!({ "id": id })).collect()),
        [n, rest @ ..] => {
            let step = ids.len() / (*n as usize).max(1);
            Value::Array((0..*n as usize).map(|i| nest_ids(&ids[i * step..(i + 1) * step], rest)).collect())
        }
    }
}

impl ShardingFile {
    /// The text of a `_sharding` file for `(param name, sharding)` pairs, as
    /// Orbax writes it: a compact JSON object (keys sorted) from the
    /// url-safe base64 of each name (with `=` padding) to the sharding's
    /// JSON, itself serialized like Python's `json.dumps`.
    pub fn encode(entries: &[(String, Sharding)]) -> String {
        let mut keyed: Vec<(String, String)> = entries
            .iter()
            .map(|(name, sharding)| {
                let key = base64::engine::general_purpose::URL_SAFE.encode(name.as_bytes());
                (key, crate::pyjson::to_string(&sharding.to_json(), crate::pyjson::JsonStyle::Python))
            })
            .collect();
        keyed.sort();
        let object: serde_json::Map<String, Value> = keyed.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        crate::pyjson::to_string(&Value::Object(object), crate::pyjson::JsonStyle::Compact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn encoding_round_trips_orbax_bytes() {
        let text = format!("{{\"eA==\":{}}}", serde_json::to_string(NAMED).unwrap());
        let file = ShardingFile::parse(text.as_bytes(), "f").unwrap();
        let entries: Vec<(String, Sharding)> = file.entries().to_vec();
        assert_eq!(ShardingFile::encode(&entries), text);
        let s = file.get("x").unwrap();
        assert_eq!(s.shard_shape(&[8, 6]), vec![2, 6]);
    }

    const NAMED: &str = r#"{"sharding_type": "NamedSharding", "shape": [4, 2], "axis_names": ["x", "y"], "axis_types": ["AxisType.Auto", "AxisType.Auto"], "partition_spec": ["x", null], "device_mesh": {"mesh": [[{"id": 0}, {"id": 1}], [{"id": 2}, {"id": 3}], [{"id": 4}, {"id": 5}], [{"id": 6}, {"id": 7}]]}}"#;
    const SINGLE: &str = r#"{"sharding_type": "SingleDeviceSharding", "device_str": "cpu:0"}"#;

    /// A `_sharding` file with these (param name, sharding JSON) members.
    fn file(members: &[(&str, &str)]) -> String {
        let map: Map<String, Value> = members
            .iter()
            .map(|(name, v)| (base64::engine::general_purpose::URL_SAFE.encode(name), Value::String(v.to_string())))
            .collect();
        Value::Object(map).to_string()
    }

    fn parse(s: &str) -> Result<ShardingFile, MetadataError> {
        ShardingFile::parse(s.as_bytes(), "state/_sharding")
    }

    #[test]
    fn named_and_single_device() {
        let text = file(&[("a", NAMED), ("params.dense.kernel", SINGLE)]);
        assert!(text.contains("\"YQ==\""), "padded urlsafe base64: {text}");
        assert!(text.contains("cGFyYW1zLmRlbnNlLmtlcm5lbA=="));
        let f = parse(&text).unwrap();
        assert_eq!(
            f.get("a"),
            Some(&Sharding::Named {
                mesh_shape: vec![4, 2],
                axis_names: vec!["x".into(), "y".into()],
                axis_types: Some(vec!["AxisType.Auto".into(), "AxisType.Auto".into()]),
                partition_spec: vec![PartitionSpecEntry::Axis("x".into()), PartitionSpecEntry::None],
                device_ids: (0..8).collect(),
                memory_kind: None,
            })
        );
        assert_eq!(f.get("a").unwrap().describe(), "NamedSharding(mesh x=4,y=2; spec ('x', None))");
        let single = f.get("params.dense.kernel").unwrap();
        assert_eq!(single, &Sharding::SingleDevice { device: "cpu:0".into() });
        assert_eq!(single.describe(), "SingleDeviceSharding(cpu:0)");
        assert_eq!(f.get("b"), None);
        assert_eq!(f.entries().len(), 2);
    }

    #[test]
    fn spec_forms_and_optional_members() {
        let json = r#"{"sharding_type": "NamedSharding", "shape": [2, 2], "axis_names": ["a", "b"], "partition_spec": [["a", "b"]], "memory_kind": "pinned_host"}"#;
        let f = parse(&file(&[("w", json)])).unwrap();
        let s = f.get("w").unwrap();
        let Sharding::Named { partition_spec, device_ids, axis_types, .. } = s else { panic!("{s:?}") };
        assert_eq!(partition_spec, &[PartitionSpecEntry::Axes(vec!["a".into(), "b".into()])]);
        assert!(device_ids.is_empty());
        assert_eq!(axis_types, &None);
        assert_eq!(s.describe(), "NamedSharding(mesh a=2,b=2; spec (('a', 'b'),); memory pinned_host)");
        let empty_spec =
            r#"{"sharding_type": "NamedSharding", "shape": [1], "axis_names": ["a"], "partition_spec": []}"#;
        assert_eq!(
            parse(&file(&[("w", empty_spec)])).unwrap().get("w").unwrap().describe(),
            "NamedSharding(mesh a=1; spec ())"
        );
    }

    #[test]
    fn other_sharding_types_are_kept_as_json() {
        let f = parse(&file(&[("p", r#"{"sharding_type": "PositionalSharding", "shape": [8]}"#)])).unwrap();
        let s = f.get("p").unwrap();
        assert!(matches!(s, Sharding::Other(v) if v["shape"] == serde_json::json!([8])));
        assert_eq!(s.describe(), "PositionalSharding");
    }

    #[test]
    fn legacy_plain_keys_with_empty_values() {
        let f = parse(r#"{"jarr":""}"#).unwrap();
        assert_eq!(f.get("jarr"), None);
        assert!(f.entries().is_empty());
    }

    #[test]
    fn unpadded_names_are_accepted() {
        let f = parse(&format!(r#"{{"YQ": {}}}"#, Value::String(SINGLE.into()))).unwrap();
        assert!(f.get("a").is_some());
    }

    #[test]
    fn malformed() {
        let cases: Vec<(String, &str)> = vec![
            ("[]".into(), "expected a JSON object"),
            (r#"{"YQ==": 1}"#.into(), "value of \"YQ==\" is a number"),
            (format!(r#"{{"not base64!": {}}}"#, Value::String(SINGLE.into())), "not URL-safe base64"),
            (file(&[("a", "{not json")]), "sharding of \"a\" is not valid JSON"),
            (file(&[("a", "[1]")]), "sharding of \"a\" is an array"),
            (file(&[("a", r#"{"device_str": "cpu:0"}"#)]), "no sharding_type"),
            (file(&[("a", r#"{"sharding_type": "SingleDeviceSharding"}"#)]), "no device_str"),
            (file(&[("a", r#"{"sharding_type": "SingleDeviceSharding", "device_str": 0}"#)]), "device_str is a number"),
            (
                file(&[("a", r#"{"sharding_type": "NamedSharding", "axis_names": [], "partition_spec": []}"#)]),
                "no shape",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [2], "axis_names": ["x", "y"], "partition_spec": []}"#,
                )]),
                "2 axis names for a mesh of rank 1",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [2], "axis_names": ["x"], "partition_spec": [1]}"#,
                )]),
                "partition_spec entry 1",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [2], "axis_names": ["x"], "partition_spec": [], "device_mesh": {"mesh": [{"id": 0}]}}"#,
                )]),
                "1 devices",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [1], "axis_names": ["x"], "partition_spec": [], "device_mesh": {"mesh": [[{"id": 0}]]}}"#,
                )]),
                "not nested to the mesh rank",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [1], "axis_names": ["x"], "partition_spec": [], "device_mesh": {"mesh": [{"id": "0"}]}}"#,
                )]),
                "has no integer id",
            ),
            (
                file(&[(
                    "a",
                    r#"{"sharding_type": "NamedSharding", "shape": [1], "axis_names": ["x"], "partition_spec": [], "device_mesh": {}}"#,
                )]),
                "device_mesh has no mesh",
            ),
        ];
        for (json, expected) in cases {
            let e = parse(&json).unwrap_err();
            assert!(e.to_string().contains(expected), "{json}: {e}");
            assert_eq!(e.kind(), ErrorKind::Corrupt);
        }
    }
}
