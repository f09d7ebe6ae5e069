//! Text, JSON and .npy renderings of library results for the CLI.

use serde_json::{json, Value};

use orbax::inspect::{float_json, scalar_json};
use orbax::{npy, Checkpoint, Error, LeafKind, PyTree, ScalarValue, StepInfo};

/// `YYYY-MM-DD HH:MM:SS` (UTC) of nanoseconds since the Unix epoch.
fn utc(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Bytes in binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `orbax ls --json`; with `kept`, each step has `"keep": true|false`.
pub fn steps_json(steps: &[StepInfo], kept: Option<&[bool]>) -> String {
    let list: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut row = json!({"step": s.dir.step, "dir": s.dir.dir, "time_ns": s.time_ns, "size": s.size,
                   "items": s.items, "metrics": s.metrics});
            if let Some(kept) = kept {
                row["keep"] = json!(kept[i]);
            }
            row
        })
        .collect();
    serde_json::to_string_pretty(&list).expect("JSON values serialize") + "\n"
}

/// `orbax ls`; with `kept`, the first column marks the steps kept (`keep`) and deleted (`-`).
pub fn steps_table(steps: &[StepInfo], kept: Option<&[bool]>) -> String {
    let mut rows = vec![["STEP".to_string(), "TIME (UTC)".into(), "SIZE".into(), "ITEMS".into(), "METRICS".into()]];
    if kept.is_some() {
        rows[0][0] = "KEEP  STEP".into();
    }
    for (i, s) in steps.iter().enumerate() {
        let mark = kept.map(|k| if k[i] { "keep  " } else { "-     " }).unwrap_or_default();
        rows.push([
            format!("{mark}{}", s.dir.dir),
            s.time_ns.map(utc).unwrap_or_else(|| "-".into()),
            human_bytes(s.size),
            s.items.join(","),
            s.metrics.as_ref().map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if steps.is_empty() {
        out.push_str("(no committed steps)\n");
    }
    out
}

/// The human tree view of `orbax inspect`.
pub async fn tree_view(checkpoint: &Checkpoint, item: Option<&str>) -> Result<String, Error> {
    let mut out = format!("checkpoint {}\n", checkpoint.path());
    let items = checkpoint.select_items(item)?;
    for location in items {
        let name = location.name.clone().unwrap_or_else(|| "<unnamed item>".into());
        match location.kind {
            orbax::layout::ItemKind::Json { .. } => {
                let value = checkpoint.json(&name).await?;
                out.push_str(&format!("item {name} (json): {value}\n"));
            }
            orbax::layout::ItemKind::PyTree => {
                let pytree = checkpoint.pytree(location.name.as_deref()).await?;
                let metadata = pytree.metadata().await?;
                let nbytes = |l: &orbax::LeafInfo| match (&l.dtype, &l.shape) {
                    (Some(d), Some(s)) => orbax::num_elements(s).unwrap_or(0) * d.size() as u64,
                    _ => 0,
                };
                let total: u64 = metadata.leaves.iter().map(nbytes).sum();
                out.push_str(&format!(
                    "item {name} (pytree, {} leaves, {}, {}{})\n",
                    metadata.leaves.len(),
                    human_bytes(total),
                    if metadata.use_ocdbt { "ocdbt" } else { "per-leaf directories" },
                    if metadata.use_zarr3 { ", zarr3" } else { ", zarr2" },
                ));
                for leaf in &metadata.leaves {
                    let mut line = format!("  {:<40}", leaf.keypath.to_string());
                    match (&leaf.dtype, &leaf.shape) {
                        (Some(dtype), Some(shape)) => {
                            let dims = shape.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                            line.push_str(&format!(" {dtype}[{dims}] {}", human_bytes(nbytes(leaf))));
                            if let Some(storage) = leaf.storage.as_ref().filter(|s| &s.chunk_shape != shape) {
                                line.push_str(&format!(" chunks={:?}", storage.chunk_shape));
                            }
                            if let Some(s) = &leaf.sharding {
                                line.push_str(&format!(" sharding={}", s.describe()));
                            }
                            if leaf.kind == LeafKind::Scalar {
                                if let PyTree::Scalar(s) = pytree.load_leaf_at(&leaf.keypath).await? {
                                    line.push_str(&format!(" scalar = {}", scalar_json(s.value())));
                                }
                            }
                        }
                        _ if leaf.kind == LeafKind::String => {
                            if let PyTree::String(s) = pytree.load_leaf_at(&leaf.keypath).await? {
                                line.push_str(&format!(" string = {}", serde_json::Value::from(s)));
                            }
                        }
                        _ => line.push_str(&format!(" {}", leaf.kind.name())),
                    }
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
            }
        }
    }
    Ok(out)
}

fn not_a_tensor(leaf: &PyTree) -> Error {
    Error::InvalidArgument(format!("the leaf is a {}, which has no array data (use --json)", leaf.kind_name()))
}

/// `cat --npy`.
pub fn leaf_npy(leaf: &PyTree) -> Result<Vec<u8>, Error> {
    match leaf {
        PyTree::Sharded(s) => leaf_npy(&PyTree::Array(s.assemble().map_err(Error::InvalidArgument)?)),
        PyTree::Array(a) => Ok(npy::encode(a.dtype(), a.shape(), a.data())),
        PyTree::Scalar(s) => Ok(npy::encode(s.dtype(), &[], s.bytes())),
        other => Err(not_a_tensor(other)),
    }
}

/// `cat --raw`.
pub fn leaf_raw(leaf: &PyTree) -> Result<Vec<u8>, Error> {
    match leaf {
        PyTree::Sharded(s) => Ok(s.assemble().map_err(Error::InvalidArgument)?.into_data()),
        PyTree::Array(a) => Ok(a.data().to_vec()),
        PyTree::Scalar(s) => Ok(s.bytes().to_vec()),
        PyTree::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(not_a_tensor(other)),
    }
}

/// `cat --json`: scalars and strings as values, arrays as nested lists.
pub fn leaf_json(leaf: &PyTree) -> Value {
    match leaf {
        PyTree::Sharded(s) => match s.assemble() {
            Ok(a) => leaf_json(&PyTree::Array(a)),
            Err(e) => json!({ "kind": leaf.kind_name(), "error": e }),
        },
        PyTree::Scalar(s) => scalar_json(s.value()),
        PyTree::String(s) => json!(s),
        PyTree::Array(a) => {
            let values: Vec<Value> =
                (0..a.len() as usize).map(|i| scalar_json(a.get(i).unwrap_or(ScalarValue::Float(f64::NAN)))).collect();
            nest(&values, a.shape())
        }
        PyTree::None => Value::Null,
        other => json!({ "kind": other.kind_name() }),
    }
}

fn nest(values: &[Value], shape: &[u64]) -> Value {
    match shape {
        [] => values.first().cloned().unwrap_or_else(|| float_json(f64::NAN)),
        [_] => Value::Array(values.to_vec()),
        [n, rest @ ..] => {
            let step = values.len() / (*n as usize).max(1);
            Value::Array((0..*n as usize).map(|i| nest(&values[i * step..(i + 1) * step], rest)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_858_886_927_280_460), "2026-11-28 09:41:26");
    }
}
