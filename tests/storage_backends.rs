//! The storage battery (`orbax::storage::battery`) against every backend
//! crate and store, the cloud ones on real protocol servers on 127.0.0.1:
//! moto (S3), fake-gcs-server (GCS) and Azurite (Azure), started by
//! `./test.sh` through `backends/servers/servers.sh`, which exports
//! `ORBAX_TEST_{S3,GCS,AZURE}_ENDPOINT`. Also: a stalled server times out
//! with an error naming the object, and real Orbax reads what we wrote to
//! each server once downloaded.
//!
//! These tests live in the core package (not in `backends/*/tests`) because
//! the battery saves and loads checkpoints, and the core already depends on
//! both backend crates; a dev-dependency cycle would build the core twice.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orbax::location::{open_store, Backend, Location, LocationOptions};
use orbax::storage::battery::{run_with, BatteryOptions};
use orbax::storage::remote::Service;
use orbax::storage::{PutMode, Storage};
use orbax::{Array, DType, LoadOptions, PyTree, SaveOptions, Scalar};
use support::orbax_python;

/// The endpoint of a local test server, or `None` outside `./test.sh`
/// (CI always runs through it, so there a missing server is a failure).
fn endpoint(service: &str) -> Option<String> {
    let var = format!("ORBAX_TEST_{service}_ENDPOINT");
    match std::env::var(&var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => panic!("CI must set {var} (./test.sh starts the servers)"),
        Err(_) => {
            eprintln!("{var} is not set: {service} checks NOT run (source backends/servers/servers.sh; servers_start)");
            None
        }
    }
}

const MIB: usize = 1 << 20;

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("battery-{name}-{}-{nanos}", std::process::id())
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/fixtures/v0_12_8_v1_multi_item")
}

/// Options of a store on a local server: its endpoint, test credentials,
/// 5 MiB parts (so the 11 MiB streamed object is a 3-part upload).
fn server_options(service: Service, endpoint: &str) -> LocationOptions {
    let mut options = vec![("endpoint", endpoint.to_string()), ("part_size", (5 * MIB).to_string())];
    match service {
        Service::S3 => options.extend([
            ("access_key_id", "test".into()),
            ("secret_access_key", "test".into()),
            ("region", "us-east-1".into()),
        ]),
        Service::Azure => options.extend([
            ("account_name", "devstoreaccount1".into()),
            // Azurite's published development key.
            (
                "account_key",
                "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into(),
            ),
        ]),
        Service::Gcs => options.push(("anonymous", "true".into())),
        _ => {}
    }
    LocationOptions { backend: None, options: options.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
}

fn server_store(service: Service, backend: Backend, endpoint: &str) -> Arc<dyn Storage> {
    let location = Location { service, bucket: "test".into(), path: String::new() };
    open_store(&location, backend, &server_options(service, endpoint)).expect("open the test bucket")
}

fn battery(list_keys: usize) -> BatteryOptions {
    BatteryOptions {
        list_keys,
        enforces_conditional_create: true,
        streamed_bytes: 11 * MIB,
        orbax_fixture: Some(fixture()),
    }
}

async fn run_on_server(service: Service, backend: Backend, var: &str, list_keys: usize) {
    let Some(url) = endpoint(var) else { return };
    let store = server_store(service, backend, &url);
    let started = Instant::now();
    run_with(&store, &unique(&format!("{var}-{backend:?}")), &battery(list_keys)).await;
    eprintln!("{backend:?} on {var} ({url}): battery passed in {:.1?}", started.elapsed());
}

// Listing more than 1000 keys is slow on moto (~6 s per 1100 puts): once per server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_on_s3() {
    run_on_server(Service::S3, Backend::ObjectStore, "S3", 1100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opendal_on_s3() {
    run_on_server(Service::S3, Backend::OpenDal, "S3", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_on_azure() {
    run_on_server(Service::Azure, Backend::ObjectStore, "AZURE", 1100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opendal_on_azure() {
    run_on_server(Service::Azure, Backend::OpenDal, "AZURE", 20).await;
}

/// fake-gcs-server accepts and ignores `ifGenerationMatch` on the uploads
/// OpenDAL makes, and has no XML multipart upload: conditional creates and
/// multipart are not provable locally (see docs/storage.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opendal_on_gcs() {
    let Some(url) = endpoint("GCS") else { return };
    let store = server_store(Service::Gcs, Backend::OpenDal, &url);
    let options = BatteryOptions { enforces_conditional_create: false, streamed_bytes: 3 * MIB, ..battery(1100) };
    run_with(&store, &unique("gcs-opendal"), &options).await;
}

/// object_store writes to GCS through the XML API, which fake-gcs-server
/// lacks: objects are written through OpenDAL and read through object_store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_reads_gcs() {
    let Some(url) = endpoint("GCS") else { return };
    let writer = server_store(Service::Gcs, Backend::OpenDal, &url);
    let reader = server_store(Service::Gcs, Backend::ObjectStore, &url);
    let prefix = unique("gcs-object-store");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let k = format!("{prefix}/blob");
    writer.put(&k, data.clone().into(), PutMode::Overwrite).await.unwrap();
    assert_eq!(reader.get(&k).await.unwrap(), data);
    assert_eq!(reader.head(&k).await.unwrap().size, 100_000);
    let ranges = [10..20, 50_000..50_100, 99_990..100_000];
    for (range, got) in ranges.iter().zip(reader.get_ranges(&k, &ranges).await.unwrap()) {
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    assert!(reader.get_range(&k, 99_990..100_010).await.is_err(), "past the end is an error");

    // An Orbax-written checkpoint uploaded to GCS reads exactly through object_store.
    let fixture = fixture();
    let local: Arc<dyn Storage> = Arc::new(orbax::storage::LocalFileSystem::new(fixture.parent().unwrap()));
    let name = fixture.file_name().unwrap().to_str().unwrap();
    for object in local.list(name).await.unwrap() {
        let data = local.get(&object.key).await.unwrap();
        writer.put(&format!("{prefix}/{}", object.key), data, PutMode::Overwrite).await.unwrap();
    }
    let options = LoadOptions::default();
    let expected = orbax::load_checkpointables(&local, name, &options).await.unwrap();
    let got = orbax::load_checkpointables(&reader, &format!("{prefix}/{name}"), &options).await.unwrap();
    assert!(got == expected, "object_store reads the Orbax checkpoint on GCS exactly");
    let listed = reader.list(&prefix).await.unwrap();
    assert_eq!(listed.len(), local.list(name).await.unwrap().len() + 1);
    reader.delete_prefix(&prefix).await.unwrap();
    assert!(writer.list(&prefix).await.unwrap().is_empty(), "object_store deletes on GCS");
}

async fn run_local(service: Service, backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let bucket = match service {
        Service::Fs => dir.path().join("bucket").to_string_lossy().into_owned(),
        _ => unique("memory"),
    };
    let location = Location { service, bucket, path: String::new() };
    let options = LocationOptions { backend: None, options: vec![("part_size".into(), (5 * MIB).to_string())] };
    let store = open_store(&location, backend, &options).unwrap();
    run_with(&store, "battery", &battery(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_on_local_fs() {
    run_local(Service::Fs, Backend::ObjectStore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_in_memory() {
    run_local(Service::Memory, Backend::ObjectStore).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opendal_on_local_fs() {
    run_local(Service::Fs, Backend::OpenDal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opendal_in_memory() {
    run_local(Service::Memory, Backend::OpenDal).await;
}

/// A server that accepts connections and never answers: every request
/// must fail after the timeout with an error that names the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_server_times_out_naming_the_object() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming() {
            held.push(connection);
        }
    });
    for backend in [Backend::ObjectStore, Backend::OpenDal] {
        let mut options = server_options(Service::S3, &format!("http://{address}"));
        options.options.extend([("timeout".into(), "1".into()), ("max_retries".into(), "0".into())]);
        let location = Location { service: Service::S3, bucket: "test".into(), path: String::new() };
        let store = open_store(&location, backend, &options).unwrap();
        let started = Instant::now();
        let error = store.get("run/7/manifest.ocdbt").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(20), "{backend:?} gave up after {:?}", started.elapsed());
        assert!(error.to_string().contains("run/7/manifest.ocdbt"), "{backend:?}: {error}");
        eprintln!("{backend:?} on a stalled server: {error}");
    }
}

fn sample() -> PyTree {
    let floats = |v: &[f32]| {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        PyTree::Array(Array::new(DType::Float32, vec![v.len() as u64], bytes).unwrap())
    };
    PyTree::Dict(vec![
        ("w".into(), floats(&[1.0, 1.5, -1.0])),
        ("b".into(), floats(&[2.0; 4])),
        ("step".into(), PyTree::Scalar(Scalar::from(7i64))),
    ])
}

const ORBAX_LOAD: &str = r#"
import json, os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, numpy as np
import orbax.checkpoint.experimental.v1 as ocp
out = {}
for path in sys.argv[1:]:
    tree = ocp.load_pytree(path)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out[path] = {jax.tree_util.keystr(p): np.asarray(v).tolist() for p, v in flat}
print(json.dumps(out))
"#;

/// We save to each server, download the objects byte for byte, and real
/// Orbax (`ORBAX_TS_PYTHON`, set by `./test.sh`) loads every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_orbax_reads_what_we_wrote_to_each_server() {
    let combos = [
        (Service::S3, Backend::ObjectStore, "S3"),
        (Service::S3, Backend::OpenDal, "S3"),
        (Service::Azure, Backend::ObjectStore, "AZURE"),
        (Service::Azure, Backend::OpenDal, "AZURE"),
        (Service::Gcs, Backend::OpenDal, "GCS"),
    ];
    let downloads = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (service, backend, var) in combos {
        let Some(url) = endpoint(var) else { return };
        let store = server_store(service, backend, &url);
        let key = unique(&format!("for-orbax-{var}-{backend:?}"));
        orbax::save_pytree(&store, &key, &sample(), &SaveOptions::default()).await.unwrap();
        let target = downloads.path().join(format!("{var}-{backend:?}"));
        for object in store.list(&key).await.unwrap() {
            let file = target.join(&object.key[key.len() + 1..]);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, store.get(&object.key).await.unwrap()).unwrap();
        }
        store.delete_prefix(&key).await.unwrap();
        paths.push(target);
    }
    let Some(python) = orbax_python("storage_backends: the real-Orbax check") else { return };
    let output = std::process::Command::new(python)
        .args(["-c", ORBAX_LOAD])
        .args(&paths)
        .env("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "Orbax failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let loaded: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let expected = serde_json::json!({"['b']": [2.0, 2.0, 2.0, 2.0], "['step']": 7, "['w']": [1.0, 1.5, -1.0]});
    for path in &paths {
        assert_eq!(loaded[path.to_str().unwrap()], expected, "Orbax's reading of {}", path.display());
    }
}

fn orbax_cli(args: &[&str], storage: &[String]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_orbax"));
    command.args(args);
    for option in storage {
        command.args(["--storage-option", option]);
    }
    let output = command.output().expect("run orbax");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "orbax {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The CLI on URLs: `convert` from a local Orbax checkpoint to each server
/// (and between servers), then `ls`, `inspect`, `cat`, `verify`, `export`
/// and `import` on the URLs, with the same output as on the local copy.
#[test]
fn the_cli_works_on_urls() {
    let servers = [("S3", "s3"), ("GCS", "gs"), ("AZURE", "az")];
    let mut urls = Vec::new();
    for (var, scheme) in servers {
        let Some(url) = endpoint(var) else { return };
        let service = orbax::location::parse(&format!("{scheme}://test")).unwrap().service;
        let options: Vec<String> =
            server_options(service, &url).options.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        urls.push((format!("{scheme}://test/{}", unique("cli")), options));
    }
    let fixture = fixture();
    let local = fixture.to_str().unwrap();
    let expected_inspect = orbax_cli(&["inspect", local, "--json"], &[]);
    let expected_cat = orbax_cli(&["cat", local, "--item", "params", "['w']", "--json"], &[]);
    let dir = tempfile::tempdir().unwrap();
    for (root, options) in &urls {
        let step = format!("{root}/5");
        orbax_cli(&["convert", local, &step], options);
        assert_eq!(orbax_cli(&["inspect", &step, "--json"], options), expected_inspect, "{step}");
        assert_eq!(orbax_cli(&["cat", &step, "--item", "params", "['w']", "--json"], options), expected_cat);
        assert!(orbax_cli(&["verify", &step], options).starts_with("sound"), "{step}");
        let listing = orbax_cli(&["ls", root, "--json"], options);
        assert!(listing.contains("\"5\""), "{root}: {listing}");
        let exported = dir.path().join("params.safetensors");
        orbax_cli(&["export", &step, exported.to_str().unwrap(), "--item", "params"], options);
        let imported = format!("{root}/imported");
        orbax_cli(&["import", exported.to_str().unwrap(), &imported], options);
        assert!(orbax_cli(&["verify", &imported], options).starts_with("sound"), "{imported}");
    }
    // Between two servers in one command, each configured by its own
    // service's environment variables: S3 (moto) to GCS (fake-gcs-server).
    let (s3, gcs) = (endpoint("S3").unwrap(), endpoint("GCS").unwrap());
    let target = format!("gs://test/{}", unique("cli-cross"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orbax"))
        .args(["convert", &format!("{}/5", urls[0].0), &target])
        .env("AWS_ENDPOINT_URL", &s3)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("STORAGE_EMULATOR_HOST", emulator_host(&gcs))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let gcs_options = &urls[1].1;
    assert_eq!(orbax_cli(&["inspect", &target, "--json"], gcs_options), expected_inspect);
}

/// `STORAGE_EMULATOR_HOST` is `host:port`, as Google's client libraries take it.
fn emulator_host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// A static web server with `Range` support (Python's `http.server` has none).
const RANGE_SERVER: &str = r#"
import http.server, io, os, re, sys
os.chdir(sys.argv[1])
class Handler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return super().send_head()
        try:
            data = open(self.translate_path(self.path), "rb").read()
        except OSError:
            self.send_error(404)
            return None
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start:end + 1])
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// `http(s)://` URLs are read-only object_store HTTP stores: objects, ranges
/// and sizes on a static web server (serving the Orbax fixture) read
/// exactly; writes fail with an error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_urls_read_objects() {
    use std::io::BufRead;
    let fixture = fixture();
    let mut server = std::process::Command::new("python3")
        .args(["-c", RANGE_SERVER])
        .arg(&fixture)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the web server");
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let url = format!("http://127.0.0.1:{}/params", port.trim());
    let (store, key) = orbax::location::open(&url, &LocationOptions::default()).unwrap();
    let result = async move {
        let local = std::fs::read(fixture.join("params/_METADATA")).unwrap();
        let object = format!("{key}/_METADATA");
        assert_eq!(store.get(&object).await.unwrap(), local);
        assert_eq!(store.head(&object).await.unwrap().size, local.len() as u64);
        assert_eq!(store.get_range(&object, 5..25).await.unwrap(), &local[5..25]);
        let ranges = [0..3, 10..12, 40..60];
        for (range, got) in ranges.iter().zip(store.get_ranges(&object, &ranges).await.unwrap()) {
            assert_eq!(&got[..], &local[range.start as usize..range.end as usize]);
        }
        let write = store.put("params/new", "x".into(), PutMode::Overwrite).await.unwrap_err();
        assert!(write.to_string().contains("params/new"), "{write}");
    };
    let outcome = tokio::spawn(result).await;
    server.kill().unwrap();
    server.wait().unwrap();
    outcome.unwrap();
}
