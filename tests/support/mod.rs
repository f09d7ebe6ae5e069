//! Helpers shared by test targets: the Python with real Orbax, and child
//! processes of the test binary.

#![allow(dead_code)] // each test target uses part of it

use std::ffi::OsString;
use std::process::{Command, Stdio};

/// The Python with real Orbax and TensorStore (`ORBAX_TS_PYTHON`; `./test.sh`
/// and so CI always set it). Without it a bare `cargo test` prints that
/// `check` is NOT run and gets `None`; under CI that is a failure.
pub fn orbax_python(check: &str) -> Option<OsString> {
    match std::env::var_os("ORBAX_TS_PYTHON") {
        None if std::env::var_os("CI").is_some() => panic!("CI must set ORBAX_TS_PYTHON (./test.sh does)"),
        None => {
            eprintln!("{check}: NOT run (set ORBAX_TS_PYTHON to a python with orbax-checkpoint and tensorstore)");
            None
        }
        some => some,
    }
}

/// Runs the test `test` of this test binary once per value of `specs`, all at
/// once, each child with `env` set to its value, and returns the line each
/// printed starting with `RESULT: ` (children select their mode by `env`).
pub fn run_children(test: &str, env: &str, specs: &[String]) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = specs
        .iter()
        .map(|spec| {
            Command::new(&exe)
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(env, spec)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(out.status.success(), "child failed: {stdout}");
            let at = stdout.find("RESULT: ").unwrap_or_else(|| panic!("child printed no result: {stdout}"));
            stdout[at..].lines().next().unwrap().to_string()
        })
        .collect()
}
