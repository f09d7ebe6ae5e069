//! Loading with a target, checked against what real Orbax 0.12.8 returns
//! for the same checkpoints and targets: the scenarios of Orbax's "Working
//! with PyTree Checkpoints" guide (conformance/targets/, written by
//! conformance/generate/make_targets.py, results in expected.json).

use std::sync::Arc;

use orbax::storage::{InMemory, LocalFileSystem, Storage};
use orbax::target::pad_or_truncate;
use orbax::{
    blocking, Array, ArrayTarget, DType, KeyPath, LeafTarget, LoadOptions, PyTree, SaveOptions, Scalar, Target,
};
use serde_json::Value;

fn fixtures() -> Arc<dyn Storage> {
    Arc::new(LocalFileSystem::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/targets")))
}

fn expected(scenario: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/targets/expected.json");
    let all: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    all[scenario].clone()
}

fn key(s: &str) -> KeyPath {
    KeyPath::parse_keystr(s).unwrap()
}

/// A leaf as expected.json writes it: dtype, shape, values as float64.
fn leaf_json(leaf: &PyTree) -> Value {
    let array = match leaf {
        PyTree::Array(a) => a.clone(),
        PyTree::Sharded(s) => s.assemble().unwrap(),
        PyTree::Scalar(s) => Array::new(s.dtype(), vec![], s.bytes().to_vec()).unwrap(),
        PyTree::None => return Value::from("PLACEHOLDER"),
        other => panic!("unexpected leaf {other:?}"),
    };
    let values: Vec<f64> = (0..array.len() as usize).map(|i| array.get(i).unwrap().to_f64()).collect();
    serde_json::json!({"dtype": array.dtype().to_string(), "shape": array.shape(), "values": values})
}

fn tree_json(tree: &PyTree) -> Value {
    Value::Object(tree.leaves().into_iter().map(|(k, leaf)| (k.to_string(), leaf_json(leaf))).collect())
}

fn load(path: &str, target: Target, tweak: impl FnOnce(&mut LoadOptions)) -> orbax::Result<PyTree> {
    let mut options = LoadOptions { target: Some(target), ..Default::default() };
    tweak(&mut options);
    blocking::load_pytree(&fixtures(), path, &options)
}

fn guide_metadata() -> Target {
    Target::from(blocking::pytree_metadata(&fixtures(), "guide", &LoadOptions::default()).unwrap())
}

#[test]
fn metadata_as_target_loads_each_device_shard() {
    let loaded = load("guide", guide_metadata(), |_| {}).unwrap();
    assert_eq!(tree_json(&loaded), expected("metadata_as_target"));
    // The saved sharding (8 devices on dim 0) is the target's: one 2-element shard per device.
    let PyTree::Sharded(a) = loaded.get(&key("['a']")).unwrap() else { panic!("['a'] is not sharded") };
    let regions: Vec<_> =
        a.shards().iter().map(|s| (s.device, s.region.iter().map(|r| (r.start, r.end)).collect())).collect();
    assert_eq!(regions, (0..8u64).map(|d| (d as i64, vec![(2 * d, 2 * d + 2)])).collect::<Vec<(i64, Vec<_>)>>());
    // A tiny read_concurrent_bytes bound reads the same shards, one chunk at a time.
    let bounded = load("guide", guide_metadata(), |o| o.read_concurrent_bytes = Some(1)).unwrap();
    assert_eq!(bounded, loaded);
    // Cast per shard: the same values as Orbax's int16 restore.
    let cast =
        load("guide", guide_metadata().with_dtype(DType::Int16), |o| o.read_concurrent_bytes = Some(16)).unwrap();
    assert_eq!(tree_json(&cast), expected("cast_int16"));
}

#[test]
fn cast_on_load_matches_orbax() {
    for (dtype, scenario) in [(DType::Int16, "cast_int16"), (DType::BFloat16, "cast_bfloat16")] {
        let loaded = load("guide", guide_metadata().with_dtype(dtype), |_| {}).unwrap();
        assert_eq!(tree_json(&loaded), expected(scenario), "{scenario}");
    }
}

fn different_shapes() -> Target {
    guide_metadata().map_arrays(|k, a| {
        let shape = if k.to_string() == "['a']" { vec![8] } else { vec![32] };
        LeafTarget::Array(ArrayTarget { shape, sharding: None, ..a })
    })
}

#[test]
fn shape_mismatch_names_the_leaf_and_both_shapes() {
    let orbax = expected("shape_mismatch")["error"].as_str().unwrap().to_string();
    assert!(orbax.contains("is not compatible with the stored shape: (16,)"), "{orbax}");
    let err = load("guide", different_shapes(), |_| {}).unwrap_err().to_string();
    for part in ["['a']", "(8,)", "(16,)", "enable_padding_and_truncation"] {
        assert!(err.contains(part), "{part} missing from: {err}");
    }
}

#[test]
fn pad_and_truncate_match_orbax() {
    let loaded = load("guide", different_shapes(), |o| o.enable_padding_and_truncation = true).unwrap();
    assert_eq!(tree_json(&loaded), expected("pad_truncate"));
}

fn partial_reference() -> PyTree {
    let i64s = |v: Vec<i64>| {
        PyTree::Array(
            Array::new(DType::Int64, vec![v.len() as u64], v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap(),
        )
    };
    let layer =
        || PyTree::Dict(vec![("bias".into(), i64s((0..8).collect())), ("kernel".into(), i64s((0..8).collect()))]);
    PyTree::Dict(vec![
        ("opt_state".into(), PyTree::List(vec![i64s(vec![0; 8]), i64s(vec![0; 8])])),
        ("params".into(), PyTree::Dict(vec![("layer1".into(), layer()), ("layer2".into(), layer())])),
        ("step".into(), PyTree::Scalar(Scalar::from(0i64))),
    ])
}

#[test]
fn placeholders_skip_leaves_as_orbax_does() {
    let mut target = Target::from(&partial_reference());
    for k in ["['opt_state'][0]", "['opt_state'][1]", "['params']['layer1']['bias']", "['params']['layer1']['kernel']"]
    {
        target.set(key(k), LeafTarget::Placeholder);
    }
    let loaded = load("partial", target, |_| {}).unwrap();
    assert_eq!(tree_json(&loaded), expected("placeholder"));
}

#[test]
fn a_placeholder_skips_a_whole_subtree() {
    let target = Target::from(&partial_reference()).skip(&key("['opt_state']")).skip(&key("['params']['layer1']"));
    let loaded = load("partial", target, |_| {}).unwrap();
    let mut want = expected("placeholder").as_object().unwrap().clone();
    want.retain(|_, v| v != "PLACEHOLDER");
    want.insert("['opt_state']".into(), "PLACEHOLDER".into());
    want.insert("['params']['layer1']".into(), "PLACEHOLDER".into());
    assert_eq!(tree_json(&loaded), Value::Object(want));
}

fn subset() -> Target {
    Target::from(&partial_reference())
        .skip(&key("['opt_state']"))
        .skip(&key("['params']['layer1']"))
        .skip(&key("['params']['layer2']['bias']"))
}

fn without_placeholders(target: Target) -> Target {
    Target::new(target.leaves().iter().filter(|(_, t)| *t != LeafTarget::Placeholder).cloned())
}

#[test]
fn partial_load_loads_only_the_named_leaves() {
    let loaded = load("partial", without_placeholders(subset()), |o| o.partial_load = true).unwrap();
    assert_eq!(tree_json(&loaded), expected("partial_load"));
}

#[test]
fn leaves_missing_from_the_target_are_listed() {
    let orbax = expected("subset_without_partial_load")["error"].as_str().unwrap().to_string();
    assert!(orbax.contains("opt_state:\n    - Source: MISSING"), "{orbax}");
    let err = load("partial", without_placeholders(subset()), |_| {}).unwrap_err().to_string();
    for leaf in ["['opt_state'][0]", "['opt_state'][1]", "['params']['layer1']['bias']", "['params']['layer2']['bias']"]
    {
        assert!(err.contains(&format!("{leaf}: in the checkpoint, not in the target")), "{leaf}: {err}");
    }
    assert!(err.contains("partial_load"), "{err}");
}

#[test]
fn leaves_missing_from_the_checkpoint_are_listed() {
    let orbax = expected("extra_key")["error"].as_str().unwrap().to_string();
    assert!(orbax.contains("extra:\n    - Source: 7\n    - Target: MISSING"), "{orbax}");
    let mut target = Target::from(&partial_reference());
    target.set(key("['extra']"), LeafTarget::AsSaved);
    let err = load("partial", target, |_| {}).unwrap_err().to_string();
    assert!(err.contains("['extra']: in the target, not in the checkpoint"), "{err}");
    assert!(err.contains("_METADATA"), "{err}");

    // With partial_load Orbax 0.12.8 hands back the target's own value for a
    // key the checkpoint lacks; we refuse rather than return data the
    // checkpoint never held (docs/decisions.md).
    assert!(expected("partial_load_missing")["tree"]["['params']['layer2']['gamma']"].is_object());
    let mut target = without_placeholders(subset());
    target.set(key("['params']['layer2']['gamma']"), LeafTarget::AsSaved);
    let err = load("partial", target, |o| o.partial_load = true).unwrap_err().to_string();
    assert!(err.contains("['params']['layer2']['gamma']: in the target, not in the checkpoint"), "{err}");
}

#[test]
fn scalars_are_cast_and_keep_their_kind() {
    let target = Target::new([(
        key("['step']"),
        LeafTarget::Array(ArrayTarget { shape: vec![], dtype: DType::Int16, sharding: None }),
    )]);
    let loaded = load("partial", target, |o| o.partial_load = true).unwrap();
    assert_eq!(
        loaded.get(&key("['step']")),
        Some(&PyTree::Scalar(Scalar::from_bytes(DType::Int16, 101i16.to_le_bytes().to_vec()).unwrap()))
    );
    let target = Target::new([(
        key("['step']"),
        LeafTarget::Array(ArrayTarget { shape: vec![1], dtype: DType::Int16, sharding: None }),
    )]);
    let err = load("partial", target, |o| o.partial_load = true).unwrap_err().to_string();
    assert!(err.contains("['step']") && err.contains("(1,)"), "{err}");
}

#[test]
fn an_array_target_on_a_string_leaf_is_an_error() {
    let store: Arc<dyn Storage> = Arc::new(InMemory::new());
    let tree = PyTree::Dict(vec![("name".into(), PyTree::String("run".into()))]);
    blocking::block_on(orbax::save_pytree(&store, "ckpt", &tree, &SaveOptions::default())).unwrap();
    let target = Target::new([(
        key("['name']"),
        LeafTarget::Array(ArrayTarget { shape: vec![3], dtype: DType::Float32, sharding: None }),
    )]);
    let options = LoadOptions { target: Some(target), ..Default::default() };
    let err = blocking::load_pytree(&store, "ckpt", &options).unwrap_err().to_string();
    assert!(err.contains("['name']") && err.contains("string"), "{err}");
    let as_saved = Target::new([(key("['name']"), LeafTarget::AsSaved)]);
    let options = LoadOptions { target: Some(as_saved), ..Default::default() };
    assert_eq!(blocking::load_pytree(&store, "ckpt", &options).unwrap(), tree);
}

#[test]
fn pad_or_truncate_works_per_dimension() {
    let a = Array::new(DType::UInt8, vec![2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap();
    let b = pad_or_truncate(&a, &[3, 2]).unwrap();
    assert_eq!((b.shape(), b.data()), (&[3u64, 2][..], &[1u8, 2, 4, 5, 0, 0][..]));
    let err = pad_or_truncate(&a, &[6]).unwrap_err().to_string();
    assert!(err.contains("(6,)") && err.contains("(2, 3)") && err.contains("rank"), "{err}");
}

#[test]
fn every_dtype_converts_to_every_dtype_on_load() {
    let store: Arc<dyn Storage> =
        Arc::new(LocalFileSystem::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/fixtures")));
    let path = "v0_12_8_v1_dtypes_zarr3";
    let saved = blocking::load_pytree(&store, path, &LoadOptions::default()).unwrap();
    let metadata = Target::from(blocking::pytree_metadata(&store, path, &LoadOptions::default()).unwrap());
    let saved_dtypes: std::collections::HashSet<DType> = saved
        .leaves()
        .iter()
        .filter_map(|(_, l)| if let PyTree::Array(a) = l { Some(a.dtype()) } else { None })
        .collect();
    assert!(saved_dtypes.len() >= 15, "the fixture holds only {saved_dtypes:?}");
    for &to in DType::ALL {
        let options = LoadOptions { target: Some(metadata.clone().unsharded().with_dtype(to)), ..Default::default() };
        let loaded = blocking::load_pytree(&store, path, &options).unwrap();
        for ((keypath, want), (_, got)) in saved.leaves().into_iter().zip(loaded.leaves()) {
            if let PyTree::Array(want) = want {
                assert_eq!(got, &PyTree::Array(orbax::cast::cast_array(want, to)), "{keypath} to {to}");
            }
        }
    }
}

#[test]
fn an_impossible_target_sharding_names_the_leaf() {
    use orbax::metadata::{PartitionSpecEntry, Sharding};
    let bad = Sharding::Named {
        mesh_shape: vec![8],
        axis_names: vec!["x".into()],
        axis_types: None,
        partition_spec: vec![PartitionSpecEntry::Axis("x".into()), PartitionSpecEntry::Axis("x".into())],
        device_ids: vec![],
        memory_kind: None,
    };
    let target =
        guide_metadata().map_arrays(|_, a| LeafTarget::Array(ArrayTarget { sharding: Some(bad.clone()), ..a }));
    let err = load("guide", target, |_| {}).unwrap_err().to_string();
    assert!(err.contains("['a']") && err.contains("target sharding"), "{err}");
}

#[test]
fn casts_to_small_floats_bool_and_complex_match_orbax() {
    let casts = expected("casts");
    for (name, want) in casts.as_object().unwrap() {
        let dtype = DType::from_name(name).unwrap();
        let loaded = load("guide", guide_metadata().with_dtype(dtype), |_| {}).unwrap();
        assert_eq!(&tree_json(&loaded), want, "{name}");
    }
    assert!(casts.as_object().unwrap().len() >= 6);
}
