//! Runs the `orbax` binary over every conformance fixture, exactly as an
//! outside scorer would: `inspect --json` and `cat --npy` for every leaf,
//! compared with the expected files. Also checks the CLI's error contract on
//! the `bad/` cases.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

fn orbax(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orbax")).args(args).output().expect("run orbax")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn inspect_and_cat_match_expected_outputs() {
    let fixtures = read_json(&conformance_dir().join("fixtures.json"));
    let mut failures = Vec::new();
    let mut leaves_checked = 0;
    for fixture in fixtures.as_array().expect("list").iter().filter(|f| f["kind"] == "checkpoint") {
        let name = fixture["name"].as_str().unwrap();
        let path = conformance_dir().join("fixtures").join(fixture["path"].as_str().unwrap());
        let path = path.to_str().unwrap();
        let expected_dir = conformance_dir().join("expected").join(name);
        let out = orbax(&["inspect", path, "--json"]);
        if !out.status.success() {
            failures.push(format!("{name}: inspect failed: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let doc: Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
        let expected = read_json(&expected_dir.join("inspect.json"));
        if doc["items"].as_array().map(Vec::len) != expected["items"].as_array().map(Vec::len) {
            failures.push(format!("{name}: item count differs"));
            continue;
        }
        for item in expected["items"].as_array().unwrap().iter().filter(|i| i["kind"] == "pytree") {
            let item_dir = item["name"].as_str().unwrap_or("_");
            for (index, leaf) in item["leaves"].as_array().unwrap().iter().enumerate() {
                if leaf["kind"] != "array" && leaf["kind"] != "scalar" {
                    continue;
                }
                let keypath = leaf["keypath"].to_string();
                let mut args = vec!["cat", path, keypath.as_str(), "--npy"];
                if let Some(item_name) = item["name"].as_str() {
                    args.extend(["--item", item_name]);
                }
                let out = orbax(&args);
                let expected_npy = std::fs::read(expected_dir.join("npy").join(item_dir).join(format!("{index}.npy")));
                match expected_npy {
                    Ok(bytes) if out.status.success() && out.stdout == bytes => leaves_checked += 1,
                    Ok(_) => failures.push(format!(
                        "{name} {keypath}: cat --npy differs ({})",
                        String::from_utf8_lossy(&out.stderr)
                    )),
                    Err(e) => failures.push(format!("{name} {keypath}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    assert!(leaves_checked > 0);
    eprintln!("{leaves_checked} leaves matched through the CLI");
}

#[test]
fn bad_cases_fail_with_their_error_class() {
    let dir = conformance_dir().join("bad");
    let cases = read_json(&dir.join("cases.json"));
    for case in cases.as_array().expect("list") {
        let path = dir.join(case["path"].as_str().unwrap());
        let out = orbax(&["verify", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{}: verify passed", case["name"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let kind = case["error_kind"].as_str().unwrap();
        assert!(text.contains(&format!("error[{kind}]")), "{}: verify said {text}", case["name"]);
    }
}

#[test]
fn help_lists_every_command_with_examples() {
    let out = orbax(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["ls", "inspect", "cat", "export", "verify", "import", "convert", "Examples:"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

#[test]
fn ls_lists_the_committed_steps_of_every_root() {
    let fixtures = read_json(&conformance_dir().join("fixtures.json"));
    let mut roots = 0;
    for fixture in fixtures.as_array().unwrap().iter().filter(|f| f["kind"] == "root") {
        let name = fixture["name"].as_str().unwrap();
        let path = conformance_dir().join("fixtures").join(fixture["path"].as_str().unwrap());
        let out = orbax(&["ls", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let expected = read_json(&conformance_dir().join("expected").join(name).join("steps.json"));
        let steps =
            |v: &Value| v.as_array().unwrap().iter().map(|s| (s["step"].clone(), s["dir"].clone())).collect::<Vec<_>>();
        assert_eq!(steps(&listed), steps(&expected), "{name}");
        let table = orbax(&["ls", path.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&table.stdout).starts_with("STEP"), "{name}: table header");
        roots += 1;
    }
    assert!(roots > 0);
}

#[test]
fn export_writes_what_import_reads_back() {
    use orbax::storage::{LocalFileSystem, Storage};
    use orbax::{blocking, LoadOptions, PyTree};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let fixtures: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(conformance_dir().join("fixtures")));
    let tree = blocking::load_pytree(&fixtures, "v0_12_8_v1_nested", &LoadOptions::default()).unwrap();
    let source = conformance_dir().join("fixtures/v0_12_8_v1_nested");
    for ext in ["npz", "safetensors"] {
        let file = dir.path().join(format!("out.{ext}"));
        let out = orbax(&["export", source.to_str().unwrap(), file.to_str().unwrap()]);
        assert!(out.status.success(), "export {ext}: {}", String::from_utf8_lossy(&out.stderr));
        let imported = format!("imported_{ext}");
        let out = orbax(&["import", file.to_str().unwrap(), dir.path().join(&imported).to_str().unwrap(), "--sep", ""]);
        assert!(out.status.success(), "import {ext}: {}", String::from_utf8_lossy(&out.stderr));
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
        let back = blocking::load_pytree(&store, &imported, &LoadOptions::default()).unwrap();
        // Every array and scalar comes back under its parameter name with the same bytes.
        let mut compared = 0;
        for (path, leaf) in tree.leaves() {
            let (dtype, data) = match leaf {
                PyTree::Array(a) => (a.dtype(), a.data().to_vec()),
                PyTree::Scalar(s) => (s.dtype(), s.bytes().to_vec()),
                _ => continue,
            };
            let name = path.param_name();
            let Some(PyTree::Dict(entries)) = Some(&back) else { panic!("{ext}: not a dict") };
            let found = entries.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
            match found {
                Some(PyTree::Array(a)) => assert_eq!((a.dtype(), a.data().to_vec()), (dtype, data), "{ext}: {name}"),
                other => panic!("{ext}: {name} came back as {other:?}"),
            }
            compared += 1;
        }
        assert!(compared > 0);
    }
}
