//! `orbax`: inspect, read, export and verify Orbax checkpoints.
//!
//! A thin layer over the `orbax` library: every command is a library call
//! plus formatting.

mod format;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use orbax::inspect::{inspect_document, parse_keypath, same_keypath};
use orbax::location::LocationOptions;
use orbax::storage::Storage;
use orbax::training::preservation::{AnyPreservation, EveryNSteps, LatestN};
use orbax::training::{self, CheckpointInfo, PreservationPolicy};
use orbax::{blocking::block_on, Array, Checkpoint, Error, LoadOptions, PyTree};

const EXAMPLES: &str = "\
Examples:
  orbax ls /ckpts/run1                         steps of a managed root
  orbax ls /ckpts/run1 --keep-latest 3         ... marking what that policy keeps
  orbax gc /ckpts/run1 --keep-latest 3 --keep-every 1000 --dry-run
  orbax rm /ckpts/run1 1200                    delete one step
  orbax inspect /ckpts/run1/1000               tree view of a checkpoint
  orbax inspect /ckpts/run1/1000 --json        the conformance-protocol document
  orbax cat /ckpts/run1/1000 \"['params']['w']\" --npy > w.npy
  orbax cat /ckpts/run1/1000 '[\"opt_state\", 0]' --json
  orbax export /ckpts/run1/1000 model.safetensors
  orbax export /ckpts/run1/1000 params.safetensors --keys \"['params']*\" --dtype bfloat16
  orbax verify /ckpts/run1/1000                exit status 0 if sound
  orbax import model.safetensors /ckpts/imported --zarr2
  orbax convert /ckpts/run1/1000 /tmp/per-leaf --no-ocdbt --overwrite
  orbax ls s3://bucket/run1                    any path may be a URL: s3:// gs:// az:// file:// memory:// https://
  orbax convert /ckpts/run1/1000 gs://bucket/run1/1000 --storage-option anonymous=true \\
                --storage-option endpoint=http://127.0.0.1:4443   local dir to a GCS emulator";

#[derive(Parser)]
#[command(name = "orbax", version, about = "Read Orbax (JAX) PyTree checkpoints without Python", after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    storage: StorageArgs,
}

/// How URLs are opened (local paths need none of this).
#[derive(clap::Args)]
struct StorageArgs {
    /// A storage setting for URLs, NAME=VALUE (endpoint, region, access_key_id, secret_access_key,
    /// session_token, account_name, account_key, service_account_path, allow_http, anonymous,
    /// concurrency, part_size, max_retries, timeout, connect_timeout); overrides the environment.
    #[arg(long = "storage-option", global = true, value_name = "NAME=VALUE")]
    storage_options: Vec<String>,
    /// The implementation serving URLs: object_store, opendal or native (default: per scheme,
    /// or ORBAX_STORAGE_BACKEND).
    #[arg(long, global = true)]
    backend: Option<String>,
}

impl StorageArgs {
    fn location_options(&self) -> Result<LocationOptions, Error> {
        let options = self
            .storage_options
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((name, value)) => Ok((name.to_string(), value.to_string())),
                None => Err(Error::InvalidArgument(format!("--storage-option {pair:?}: expected NAME=VALUE"))),
            })
            .collect::<Result<_, _>>()?;
        let backend = self.backend.as_deref().map(str::parse).transpose()?;
        Ok(LocationOptions { backend, options })
    }
}

#[derive(clap::Args)]
struct Open {
    /// Checkpoint directory, one of its item directories, or a v0 checkpoint without items.
    path: String,
    /// Read a checkpoint whose save never finished (*.orbax-checkpoint-tmp*, *.partial_save).
    #[arg(long)]
    allow_uncommitted: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the steps of a managed root: step, time, size, items, metrics.
    Ls {
        /// The root directory (a CheckpointManager / training.Checkpointer directory).
        root: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Mark the steps this policy would keep.
        #[command(flatten)]
        keep: Keep,
    },
    /// Delete the steps of a managed root that a preservation policy does not keep.
    Gc {
        /// The root directory.
        root: String,
        #[command(flatten)]
        keep: Keep,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete one step of a managed root.
    Rm {
        /// The root directory.
        root: String,
        /// The step number.
        step: u64,
    },
    /// Show the tree of a checkpoint: keypath, dtype, shape, bytes, chunking, sharding.
    Inspect {
        #[command(flatten)]
        open: Open,
        /// Only this item (checkpointable).
        #[arg(long)]
        item: Option<String>,
        /// Print the conformance-protocol JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write one leaf to stdout.
    Cat {
        #[command(flatten)]
        open: Open,
        /// The leaf: a JSON list (`["params", 0]`) or a JAX keystr (`['params'][0]`).
        keypath: String,
        /// The item; defaults to the checkpoint's only PyTree item.
        #[arg(long)]
        item: Option<String>,
        /// As a .npy file (bfloat16 as <u2, float8/float4 as |u1 bit patterns, int4/int2 as |i1).
        #[arg(long, group = "format")]
        npy: bool,
        /// Raw little-endian C-order element bytes.
        #[arg(long, group = "format")]
        raw: bool,
        /// As JSON (nested lists for arrays).
        #[arg(long, group = "format")]
        json: bool,
        /// Only this numpy-style region of an array leaf, e.g. "0:8,:" (per dimension `a:b`, `a:`, `:b`, `:` or
        /// an index `a`, which drops the dimension); reads only the chunks it needs.
        #[arg(long, allow_hyphen_values = true)]
        slice: Option<String>,
        /// Convert to this dtype first (numpy astype semantics), e.g. float32.
        #[arg(long)]
        dtype: Option<String>,
    },
    /// Write the whole tree to a .safetensors or .npz file (tensor names: keys joined with '.').
    Export {
        #[command(flatten)]
        open: Open,
        /// Output file; the extension picks the format.
        out: String,
        /// The item; defaults to the checkpoint's only PyTree item.
        #[arg(long)]
        item: Option<String>,
        /// safetensors: store dtypes it lacks as documented stand-ins instead of failing
        /// (int4/int2 as I8, complex128 as F64[..., 2], other small floats as U8 bits).
        #[arg(long)]
        cast_unsupported: bool,
        /// Convert every array and scalar to this dtype (numpy astype semantics), e.g. float32.
        #[arg(long)]
        dtype: Option<String>,
        /// Export only the leaves whose keystr matches this glob (`*`, `?`), e.g. "['params']*";
        /// repeatable. Other leaves are not read.
        #[arg(long = "keys", value_name = "GLOB")]
        keys: Vec<String>,
    },
    /// Read every byte, check every checksum, report every problem; exit status 1 if any.
    Verify {
        #[command(flatten)]
        open: Open,
    },
    /// Write a .safetensors or .npz file as an Orbax checkpoint (tensor names split into nested dicts).
    Import {
        /// Input file: .safetensors or .npz.
        input: String,
        /// Output checkpoint directory.
        out: String,
        /// Split tensor names on this separator into nested dicts ("" keeps them flat).
        #[arg(long, default_value = ".")]
        sep: String,
        #[command(flatten)]
        layout: Layout,
    },
    /// Rewrite an Orbax checkpoint in another layout (every item).
    Convert {
        #[command(flatten)]
        open: Open,
        /// Output checkpoint directory.
        out: String,
        #[command(flatten)]
        layout: Layout,
    },
}

/// A preservation policy: keep the latest N and/or every N-th step.
#[derive(clap::Args)]
struct Keep {
    /// Keep the latest N steps.
    #[arg(long)]
    keep_latest: Option<usize>,
    /// Keep every step divisible by N.
    #[arg(long)]
    keep_every: Option<u64>,
}

impl Keep {
    fn policy(&self) -> Option<AnyPreservation> {
        let mut policies: Vec<Box<dyn PreservationPolicy>> = Vec::new();
        if let Some(n) = self.keep_latest {
            policies.push(Box::new(LatestN(n)));
        }
        if let Some(n) = self.keep_every.filter(|&n| n > 0) {
            policies.push(Box::new(EveryNSteps::new(n)));
        }
        (!policies.is_empty()).then_some(AnyPreservation(policies))
    }
}

/// Layout options of the commands that write checkpoints.
#[derive(clap::Args)]
struct Layout {
    /// One directory per array instead of an OCDBT database.
    #[arg(long)]
    no_ocdbt: bool,
    /// zarr v2 instead of zarr v3.
    #[arg(long)]
    zarr2: bool,
    /// Store chunks uncompressed.
    #[arg(long)]
    no_compression: bool,
    /// Split arrays into chunks of at most this many bytes (Orbax's chunk_byte_size).
    #[arg(long)]
    chunk_byte_size: Option<u64>,
    /// Store every array in this dtype (numpy astype semantics), e.g. bfloat16.
    #[arg(long)]
    dtype: Option<String>,
    /// Replace an existing checkpoint at the output path.
    #[arg(long)]
    overwrite: bool,
}

impl Layout {
    fn save_options(&self) -> Result<orbax::SaveOptions, Error> {
        let dtype = parse_dtype(self.dtype.as_deref())?;
        Ok(orbax::SaveOptions {
            progress: terminal_progress(),
            use_ocdbt: !self.no_ocdbt,
            use_zarr3: !self.zarr2,
            use_compression: !self.no_compression,
            overwrite: self.overwrite,
            storage: orbax::StorageOptions { dtype, chunk_byte_size: self.chunk_byte_size },
            ..Default::default()
        })
    }
}

/// Progress on stderr when it is a terminal: `writing 123 / 456 MiB`.
fn terminal_progress() -> Option<orbax::ProgressFn> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        Arc::new(|done: u64, total: u64| {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            eprint!("\rwriting {:.1} / {:.1} MiB", mib(done), mib(total));
            if done == total {
                eprintln!();
            }
        }) as orbax::ProgressFn
    })
}

fn parse_dtype(name: Option<&str>) -> Result<Option<orbax::DType>, Error> {
    name.map(|name| {
        orbax::DType::from_name(name).ok_or_else(|| Error::InvalidArgument(format!("unknown dtype {name:?}")))
    })
    .transpose()
}

/// What `orbax export --dtype/--keys` loads: every matching leaf, whole, in `dtype`.
fn export_target(
    store: &Arc<dyn Storage>,
    key: &str,
    opts: &LoadOptions,
    dtype: Option<orbax::DType>,
    keys: &[String],
) -> Result<Option<orbax::Target>, Error> {
    if dtype.is_none() && keys.is_empty() {
        return Ok(None);
    }
    let mut target = orbax::Target::from(block_on(orbax::pytree_metadata(store, key, opts))?).unsharded();
    if !keys.is_empty() {
        target = target.filter_keys(keys);
        if target.leaves().is_empty() {
            return Err(Error::InvalidArgument(format!("no leaf matches {keys:?} (try `orbax inspect`)")));
        }
    }
    Ok(Some(match dtype {
        Some(dtype) => target.with_dtype(dtype),
        None => target,
    }))
}

fn options(open: &Open, item: Option<String>) -> LoadOptions {
    LoadOptions { item, allow_uncommitted: open.allow_uncommitted, ..Default::default() }
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let location_options = cli.storage.location_options()?;
    // A URL or local path as (store, key of the path in it).
    let open_url =
        |path: &str| -> Result<(Arc<dyn Storage>, String), Error> { orbax::location::open(path, &location_options) };
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| Error::InvalidArgument(format!("writing output: {e}"));
    match cli.command {
        Command::Ls { root, json, keep } => {
            let (store, key) = open_url(&root)?;
            let steps = block_on(orbax::list_checkpoints(&store, &key))?;
            let infos: Vec<CheckpointInfo> = steps
                .iter()
                .map(|s| CheckpointInfo {
                    step: s.dir.step,
                    dir: s.dir.dir.clone(),
                    time_ns: s.time_ns.unwrap_or(0),
                    metrics: s.metrics.clone(),
                })
                .collect();
            let kept = keep.policy().map(|p| p.should_preserve(&infos));
            let text = if json {
                format::steps_json(&steps, kept.as_deref())
            } else {
                format::steps_table(&steps, kept.as_deref())
            };
            out.write_all(text.as_bytes()).map_err(io)?;
        }
        Command::Gc { root, keep, dry_run } => {
            let policy = keep.policy().ok_or_else(|| {
                Error::InvalidArgument("gc needs a policy: --keep-latest N and/or --keep-every N".into())
            })?;
            let (store, key) = open_url(&root)?;
            let infos = block_on(training::list_root(&store, &key, None))?;
            let kept = policy.should_preserve(&infos);
            for (info, _) in infos.iter().zip(&kept).filter(|(_, k)| !**k) {
                if !dry_run {
                    block_on(training::delete_step_dir(&store, &orbax::storage::join_key(&key, &info.dir)))?;
                }
                writeln!(out, "{} {}", if dry_run { "would delete" } else { "deleted" }, info.dir).map_err(io)?;
            }
        }
        Command::Rm { root, step } => {
            let (store, key) = open_url(&root)?;
            let infos = block_on(training::list_root(&store, &key, None))?;
            let info = infos.iter().find(|c| c.step == step).ok_or_else(|| Error::NotACheckpoint {
                path: root.clone(),
                what: format!("no committed step {step}"),
            })?;
            block_on(training::delete_step_dir(&store, &orbax::storage::join_key(&key, &info.dir)))?;
            writeln!(out, "deleted {}", info.dir).map_err(io)?;
        }
        Command::Inspect { open, item, json } => {
            let (store, key) = open_url(&open.path)?;
            let opts = options(&open, item.clone());
            let checkpoint = block_on(Checkpoint::open(&store, &key, &opts))?;
            let text = if json {
                let doc = block_on(inspect_document(&checkpoint, item.as_deref()))?;
                serde_json::to_string_pretty(&doc).expect("JSON values serialize") + "\n"
            } else {
                block_on(format::tree_view(&checkpoint, item.as_deref()))?
            };
            out.write_all(text.as_bytes()).map_err(io)?;
        }
        Command::Cat { open, keypath, item, npy, raw, json, slice, dtype } => {
            let (store, key) = open_url(&open.path)?;
            let path = parse_keypath(&keypath).map_err(Error::InvalidArgument)?;
            let checkpoint = block_on(Checkpoint::open(&store, &key, &options(&open, item.clone())))?;
            let pytree = block_on(checkpoint.pytree(item.as_deref()))?;
            let target = pytree.keypaths().find(|k| same_keypath(k, &path)).cloned().ok_or_else(|| {
                Error::InvalidArgument(format!("no leaf {path} in {} (try `orbax inspect`)", pytree.path()))
            })?;
            let mut leaf = match slice {
                None => block_on(pytree.load_leaf_at(&target))?,
                Some(spec) => {
                    let shape = match block_on(pytree.array_shape(&target))? {
                        Some(shape) => shape,
                        None => return Err(Error::InvalidArgument(format!("--slice: leaf {path} is not an array"))),
                    };
                    let slice = orbax::slice::parse_slice(&spec, &shape).map_err(Error::InvalidArgument)?;
                    let (part, _) = block_on(pytree.read_region(&target, &slice.region, None))?;
                    let part =
                        Array::new(part.dtype(), slice.shape, part.into_data()).map_err(Error::InvalidArgument)?;
                    PyTree::Array(part)
                }
            };
            if let Some(dtype) = parse_dtype(dtype.as_deref())? {
                leaf = orbax::target::cast_leaf(leaf, dtype).map_err(|e| e.at_leaf(&target))?;
            }
            let bytes = if npy {
                format::leaf_npy(&leaf)?
            } else if raw {
                format::leaf_raw(&leaf)?
            } else if json {
                let mut text = serde_json::to_string(&format::leaf_json(&leaf)).expect("JSON values serialize");
                text.push('\n');
                text.into_bytes()
            } else {
                return Err(Error::InvalidArgument("choose an output format: --npy, --raw or --json".into()));
            };
            out.write_all(&bytes).map_err(io)?;
        }
        Command::Export { open, out: file, item, cast_unsupported, dtype, keys } => {
            let (store, key) = open_url(&open.path)?;
            let mut opts = options(&open, item);
            opts.target = export_target(&store, &key, &opts, parse_dtype(dtype.as_deref())?, &keys)?;
            opts.partial_load = !keys.is_empty();
            let tree = block_on(orbax::load_pytree(&store, &key, &opts))?;
            let bytes = if file.ends_with(".safetensors") {
                orbax::export::to_safetensors(&tree, orbax::export::SafetensorsOptions { cast_unsupported })
            } else if file.ends_with(".npz") {
                orbax::export::to_npz(&tree)
            } else {
                return Err(Error::InvalidArgument(format!("{file}: the output must end in .safetensors or .npz")));
            }
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            std::fs::write(&file, bytes).map_err(|e| Error::InvalidArgument(format!("{file}: {e}")))?;
        }
        Command::Verify { open } => {
            let (store, key) = open_url(&open.path)?;
            let report = block_on(orbax::verify::verify_checkpoint(&store, &key, &options(&open, None)));
            for p in &report.problems {
                writeln!(out, "error[{}]: {}", p.kind, p.message).map_err(io)?;
            }
            writeln!(
                out,
                "{}: {} item(s), {} leaf/leaves, {} OCDBT database(s) with {} value(s) read; {} problem(s)",
                if report.is_sound() { "sound" } else { "NOT SOUND" },
                report.items,
                report.leaves,
                report.databases,
                report.values,
                report.problems.len()
            )
            .map_err(io)?;
            if !report.is_sound() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Import { input, out, sep, layout } => {
            let bytes = std::fs::read(&input).map_err(|e| Error::InvalidArgument(format!("{input}: {e}")))?;
            let tensors = if input.ends_with(".npz") {
                orbax::import::read_npz(&bytes, &input)
            } else {
                orbax::import::read_safetensors(&bytes, &input)
            }
            .and_then(|t| orbax::import::tree_from_named(t, &sep))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            let (store, key) = open_url(&out)?;
            block_on(orbax::save_pytree(&store, &key, &tensors, &layout.save_options()?))?;
        }
        Command::Convert { open, out, layout } => {
            let (store, key) = open_url(&open.path)?;
            let checkpoint = block_on(Checkpoint::open(&store, &key, &options(&open, None)))?;
            let metadata = block_on(checkpoint.checkpointables_metadata())?;
            let items = block_on(checkpoint.load_checkpointables())?;
            let mut items: Vec<(String, orbax::Checkpointable)> =
                items.into_iter().map(|(name, item)| (name.unwrap_or_else(|| "state".into()), item)).collect();
            // Keep the source's item order (it is the order of `item_handlers`).
            if let Some(orbax::metadata::ItemHandlers::Map(handlers)) = checkpoint.metadata().map(|m| &m.item_handlers)
            {
                items.sort_by_key(|(name, _)| handlers.iter().position(|(h, _)| h == name).unwrap_or(usize::MAX));
            }
            let save = orbax::SaveOptions { sharding_for: Some(metadata.sharding_fn()), ..layout.save_options()? };
            let (out_store, out_key) = open_url(&out)?;
            block_on(orbax::save_checkpointables(&out_store, &out_key, &items, &save))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orbax: error[{}]: {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}
