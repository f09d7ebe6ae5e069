//! Parses every Orbax metadata file of the conformance corpus
//! (`conformance/fixtures/`, written by real Orbax 0.4.1 – 0.12.8) and
//! cross-checks the files of each item against each other.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use orbax::metadata::{
    unflatten, ArrayMetadatas, CheckpointMetadata, ItemHandlers, LegacyCheckpoint, LegacyLeaf, ShardingFile,
    StringsFile, TreeMetadata, ValueType,
};
use orbax::PyTree;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/fixtures")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every metadata file in the corpus, by kind.
fn corpus() -> BTreeMap<&'static str, Vec<PathBuf>> {
    let mut all = Vec::new();
    files(&fixtures(), &mut all);
    let mut by_kind: BTreeMap<&'static str, Vec<PathBuf>> = BTreeMap::new();
    for path in all {
        let name = path.file_name().unwrap().to_str().unwrap();
        let parent = path.parent().and_then(Path::file_name).and_then(|n| n.to_str());
        let kind = match name {
            "_METADATA" => "tree",
            "_CHECKPOINT_METADATA" => "checkpoint",
            "_sharding" => "sharding",
            "_strings.json" => "strings",
            "checkpoint" => "msgpack",
            n if n.starts_with("process_") && parent == Some("array_metadatas") => "array_metadatas",
            _ => continue,
        };
        by_kind.entry(kind).or_default().push(path);
    }
    by_kind
}

fn read(path: &Path) -> (Vec<u8>, String) {
    (fs::read(path).unwrap(), path.display().to_string())
}

/// The files of one kind (none if the corpus has no such file).
fn of_kind(kind: &str) -> Vec<PathBuf> {
    corpus().remove(kind).unwrap_or_default()
}

/// A specific corpus file; the test fails if the corpus no longer has it.
fn corpus_file(relative: &str) -> (Vec<u8>, String) {
    let path = fixtures().join(relative);
    assert!(path.is_file(), "{} is not in the corpus", path.display());
    read(&path)
}

#[test]
fn every_metadata_file_parses() {
    let corpus = corpus();
    assert!(corpus.values().any(|p| !p.is_empty()), "no metadata files under {}", fixtures().display());
    for (kind, paths) in &corpus {
        for path in paths {
            let (bytes, file) = read(path);
            let result = match *kind {
                "tree" => TreeMetadata::parse(&bytes, &file).map(drop),
                "checkpoint" => CheckpointMetadata::parse(&bytes, &file).map(drop),
                "sharding" => ShardingFile::parse(&bytes, &file).map(drop),
                "strings" => StringsFile::parse(&bytes, &file).map(drop),
                "msgpack" => LegacyCheckpoint::parse(&bytes, &file).map(drop),
                _ => ArrayMetadatas::parse(&bytes, &file).map(drop),
            };
            if let Err(e) = result {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn trees_rebuild_and_side_files_agree() {
    for path in &of_kind("tree") {
        let (bytes, file) = read(path);
        let tree = TreeMetadata::parse(&bytes, &file).unwrap();
        let dir = path.parent().unwrap();
        unflatten(tree.entries.iter().map(|e| (e.key_path.clone(), PyTree::None)).collect())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        if let Ok(bytes) = fs::read(dir.join("_strings.json")) {
            let strings = StringsFile::parse(&bytes, "_strings.json").unwrap();
            for e in tree.entries.iter().filter(|e| e.value_type == ValueType::String) {
                assert!(strings.get(&e.param_name()).is_some(), "{file}: no string for {}", e.param_name());
            }
        }
        if let Ok(bytes) = fs::read(dir.join("_sharding")) {
            let shardings = ShardingFile::parse(&bytes, "_sharding").unwrap();
            for (name, _) in shardings.entries() {
                let entry = tree.entries.iter().find(|e| &e.param_name() == name);
                assert!(
                    entry.is_some_and(|e| e.value_type == ValueType::JaxArray),
                    "{file}: _sharding entry {name:?} is not a jax.Array leaf"
                );
            }
        }
    }
}

#[test]
fn legacy_trees_match_their_metadata() {
    for path in &of_kind("msgpack") {
        let (bytes, file) = read(path);
        let legacy = LegacyCheckpoint::parse(&bytes, &file).unwrap();
        unflatten(legacy.leaves.iter().map(|(k, _)| (k.clone(), PyTree::None)).collect())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for (keypath, leaf) in &legacy.leaves {
            if let LegacyLeaf::Placeholder(name) = leaf {
                assert_eq!(name, &keypath.param_name(), "{file}: placeholder names its own param");
            }
        }
        let Ok(bytes) = fs::read(path.with_file_name("_METADATA")) else { continue };
        let tree = TreeMetadata::parse(&bytes, "_METADATA").unwrap();
        let legacy_paths: Vec<_> = legacy.leaves.iter().map(|(k, _)| k).collect();
        let tree_paths: Vec<_> = tree.entries.iter().map(|e| &e.key_path).collect();
        assert_eq!(legacy_paths, tree_paths, "{file}: the msgpack tree and _METADATA list the same leaves");
    }
}

#[test]
fn aggregated_values_are_decoded() {
    let (bytes, file) = corpus_file("v0_4_1_legacy_aggregate/checkpoint");
    let legacy = LegacyCheckpoint::parse(&bytes, &file).unwrap();
    let leaf = |name: &str| &legacy.leaves.iter().find(|(k, _)| k.param_name() == name).unwrap().1;
    let LegacyLeaf::Value(PyTree::Array(a)) = leaf("agg_arr") else { panic!("{:?}", leaf("agg_arr")) };
    assert_eq!((a.dtype().name(), a.shape()), ("int32", &[3u64, 2][..]));
    assert_eq!(a.data(), (0..6i32).flat_map(i32::to_le_bytes).collect::<Vec<_>>());
    assert_eq!(leaf("agg_f"), &LegacyLeaf::Value(PyTree::Scalar(0.5f64.into())));
    assert_eq!(leaf("agg_i"), &LegacyLeaf::Value(PyTree::Scalar(11i64.into())));
    let LegacyLeaf::Value(PyTree::Scalar(np)) = leaf("agg_np") else { panic!("{:?}", leaf("agg_np")) };
    assert_eq!((np.dtype().name(), np.bytes()), ("float32", &3.5f32.to_le_bytes()[..]));
    assert_eq!(leaf("ts_arr"), &LegacyLeaf::Placeholder("ts_arr".into()));
}

#[test]
fn checkpoint_metadata_forms() {
    let mut single = 0;
    for path in &of_kind("checkpoint") {
        let (bytes, file) = read(path);
        let m = CheckpointMetadata::parse(&bytes, &file).unwrap();
        match &m.item_handlers {
            ItemHandlers::Single(h) => {
                single += 1;
                assert!(h.starts_with("orbax.checkpoint."), "{file}: {h}");
            }
            ItemHandlers::Map(items) => assert!(!items.is_empty(), "{file}"),
            ItemHandlers::None => {}
        }
        assert!(m.init_timestamp_nsecs.is_some(), "{file}");
    }
    eprintln!("{single} single-handler (v0) _CHECKPOINT_METADATA files");
}

#[test]
fn named_shardings_describe_their_mesh() {
    let (bytes, file) = corpus_file("v0_12_8_v1_sharded8/state/_sharding");
    let shardings = ShardingFile::parse(&bytes, &file).unwrap();
    let described: Vec<String> = shardings.entries().iter().map(|(n, s)| format!("{n}: {}", s.describe())).collect();
    assert!(described.iter().any(|d| d.contains("NamedSharding(mesh x=4,y=2; spec (")), "{described:#?}");
}

#[test]
fn corrupt_json_is_reported_as_corrupt() {
    let (bytes, file) = corpus_file("../bad/corrupt_metadata_json/state/_METADATA");
    let e = TreeMetadata::parse(&bytes, &file).unwrap_err();
    assert_eq!(e.kind(), orbax::ErrorKind::Corrupt);
    assert!(e.to_string().contains("_METADATA"), "{e}");
}
