//! Reads every fixture of the conformance corpus (written by real Orbax
//! releases, see `conformance/README.md`) through the library and checks
//! the protocol outputs against the expected files, byte for byte for
//! `.npy`, value for value for JSON. Also checks every `bad/` case fails
//! with its expected error class. No Python is needed. (Raw OCDBT
//! fixtures are checked by `tests/ocdbt_conformance.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use orbax::inspect::{inspect_document, keypath_json};
use orbax::storage::{LocalFileSystem, Storage};
use orbax::{blocking::block_on, npy, Checkpoint, LoadOptions, PyTree};
use serde_json::Value;

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixtures() -> Vec<Value> {
    match read_json(&conformance_dir().join("fixtures.json")) {
        Value::Array(list) => list,
        other => panic!("fixtures.json is not a list: {other}"),
    }
}

fn store() -> Arc<dyn Storage> {
    Arc::new(LocalFileSystem::new(conformance_dir().join("fixtures")))
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("fixture entry without {name}: {v}"))
}

/// Compares JSON values; numbers compare by value (an integer-valued float
/// equals the same integer only if both are floats or both integers).
fn json_diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => json_diff(&format!("{path}.{k}"), ev, av, out),
                    None => out.push(format!("{path}.{k}: missing (expected {ev})")),
                }
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{path}.{k}: unexpected {}", a[k]));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                json_diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let same = match (e.as_i64(), a.as_i64(), e.as_u64(), a.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => e.as_f64() == a.as_f64() && e.is_f64() == a.is_f64(),
            };
            if !same {
                out.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("{path}: expected {e}, got {a}")),
    }
}

fn leaf_npy(leaf: &PyTree) -> Option<Vec<u8>> {
    match leaf {
        PyTree::Array(a) => Some(npy::encode(a.dtype(), a.shape(), a.data())),
        PyTree::Scalar(s) => Some(npy::encode(s.dtype(), &[], s.bytes())),
        _ => None,
    }
}

#[test]
fn every_fixture_reads_exactly() {
    let store = store();
    let mut failures = Vec::new();
    let mut checked = 0;
    for fixture in fixtures().iter().filter(|f| f["kind"] == "checkpoint") {
        let name = str_field(fixture, "name");
        let path = str_field(fixture, "path");
        let expected_dir = conformance_dir().join("expected").join(name);
        let result = block_on(async {
            let checkpoint = Checkpoint::open(&store, path, &LoadOptions::default()).await?;
            let doc = inspect_document(&checkpoint, None).await?;
            let mut npys = Vec::new();
            for item in checkpoint.items() {
                if item.kind != orbax::layout::ItemKind::PyTree {
                    continue;
                }
                let pytree = checkpoint.pytree(item.name.as_deref()).await?;
                for (index, keypath) in pytree.keypaths().enumerate() {
                    let leaf = pytree.load_leaf_at(keypath).await?;
                    if let Some(bytes) = leaf_npy(&leaf) {
                        npys.push((item.name.clone().unwrap_or_else(|| "_".into()), index, keypath.clone(), bytes));
                    }
                }
            }
            Ok::<_, orbax::Error>((doc, npys))
        });
        let (doc, npys) = match result {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut diffs = Vec::new();
        json_diff("", &read_json(&expected_dir.join("inspect.json")), &doc, &mut diffs);
        for (item, index, keypath, bytes) in npys {
            let file = expected_dir.join("npy").join(&item).join(format!("{index}.npy"));
            match std::fs::read(&file) {
                Ok(expected) if expected == bytes => {}
                Ok(_) => diffs.push(format!(
                    "leaf {} ({}): .npy bytes differ from {}",
                    keypath,
                    keypath_json(&keypath),
                    file.display()
                )),
                Err(e) => diffs.push(format!("{}: {e}", file.display())),
            }
        }
        if diffs.is_empty() {
            checked += 1;
        } else {
            failures.push(format!("{name}:\n  {}", diffs.into_iter().take(20).collect::<Vec<_>>().join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 0, "no checkpoint fixtures were checked");
    eprintln!("{checked} checkpoint fixtures read exactly");
}

#[test]
fn every_managed_root_lists_its_steps() {
    let store = store();
    let mut checked = 0;
    for fixture in fixtures().iter().filter(|f| f["kind"] == "root") {
        let name = str_field(fixture, "name");
        let expected = read_json(&conformance_dir().join("expected").join(name).join("steps.json"));
        let steps = block_on(orbax::list_checkpoints(&store, str_field(fixture, "path"))).unwrap();
        let actual: Vec<Value> = steps
            .iter()
            .map(|s| serde_json::json!({"step": s.dir.step, "dir": s.dir.dir, "items": s.items, "metrics": s.metrics}))
            .collect();
        let mut diffs = Vec::new();
        json_diff(name, &expected, &Value::Array(actual), &mut diffs);
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        checked += 1;
    }
    eprintln!("{checked} managed roots listed exactly");
}

#[test]
fn every_bad_case_fails_with_its_error() {
    let dir = conformance_dir().join("bad");
    let cases = match read_json(&dir.join("cases.json")) {
        Value::Array(list) => list,
        other => panic!("cases.json is not a list: {other}"),
    };
    let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(&dir));
    let mut failures = Vec::new();
    for case in &cases {
        let name = str_field(case, "name");
        let kind = str_field(case, "error_kind");
        let mentions: Vec<&str> =
            case["mentions"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let report =
            block_on(orbax::verify::verify_checkpoint(&store, str_field(case, "path"), &LoadOptions::default()));
        let matched =
            report.problems.iter().any(|p| p.kind.code() == kind && mentions.iter().all(|m| p.message.contains(m)));
        if !matched {
            let found: Vec<String> = report.problems.iter().map(|p| format!("[{}] {}", p.kind, p.message)).collect();
            failures.push(format!("{name}: expected [{kind}] mentioning {mentions:?}, found {found:?}"));
        }
    }
    assert!(failures.is_empty(), "{} bad case(s) not rejected as expected:\n{}", failures.len(), failures.join("\n"));
    assert!(!cases.is_empty());
    eprintln!("{} bad cases rejected with the expected error", cases.len());
}
