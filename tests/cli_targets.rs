//! `orbax cat --dtype`, `orbax export --dtype` and `orbax export --keys`,
//! run as a user would, on the Orbax-written checkpoints of
//! conformance/targets/ (values from Orbax 0.12.8 in expected.json).

use std::process::{Command, Output};

use orbax::{DType, PyTree};
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/targets");

fn orbax(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orbax")).args(args).output().expect("run orbax")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = orbax(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn expected(scenario: &str, keystr: &str) -> Value {
    let path = format!("{FIXTURES}/expected.json");
    let all: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    all[scenario][keystr].clone()
}

#[test]
fn cat_dtype_casts_like_orbax() {
    let guide = format!("{FIXTURES}/guide");
    let json: Value =
        serde_json::from_str(&stdout_ok(&["cat", &guide, "['b']", "--json", "--dtype", "int16"])).unwrap();
    let want = expected("cast_int16", "['b']")["values"].clone();
    let got: Vec<f64> = json.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(serde_json::to_value(got).unwrap(), want);

    let out = orbax(&["cat", &guide, "['b']", "--json", "--dtype", "float99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dtype \"float99\""));
}

#[test]
fn export_keys_and_dtype_select_and_cast() {
    let dir = std::env::temp_dir().join(format!("orbax-cli-targets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("params.safetensors");
    let file = file.to_str().unwrap();
    let partial = format!("{FIXTURES}/partial");
    stdout_ok(&["export", &partial, file, "--keys", "['params']['layer2']*", "--keys", "['step']", "--dtype", "int32"]);
    let tensors = orbax::import::read_safetensors(&std::fs::read(file).unwrap(), file).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["params.layer2.bias", "params.layer2.kernel", "step"]);
    for (name, leaf) in &tensors {
        let PyTree::Array(a) = leaf else { panic!("{name}: {leaf:?}") };
        assert_eq!(a.dtype(), DType::Int32, "{name}");
    }
    let PyTree::Array(kernel) = &tensors[1].1 else { unreachable!() };
    let values: Vec<i32> = kernel.data().chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, (20..28).collect::<Vec<_>>());

    let out = orbax(&["export", &partial, file, "--keys", "['nothing']*"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no leaf matches"));
    std::fs::remove_dir_all(&dir).unwrap();
}
