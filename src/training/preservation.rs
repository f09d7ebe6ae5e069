//! Which checkpoints to keep: Orbax's preservation policies
//! (`orbax.checkpoint.training.preservation_policies`). Every checkpoint a
//! policy does not preserve is deleted after each commit.

use std::collections::BTreeSet;

use serde_json::Value;

use super::CheckpointInfo;

/// Decides, for the committed checkpoints in step order, which to keep.
pub trait PreservationPolicy: Send + Sync + std::fmt::Debug {
    /// One flag per checkpoint: true keeps it.
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool>;
}

/// Keeps everything (`PreserveAll`, the default).
#[derive(Debug, Clone)]
pub struct PreserveAll;

impl PreservationPolicy for PreserveAll {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        vec![true; checkpoints.len()]
    }
}

/// Keeps the latest `n` (`LatestN`).
#[derive(Debug, Clone)]
pub struct LatestN(pub usize);

impl PreservationPolicy for LatestN {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        let first_kept = checkpoints.len().saturating_sub(self.0);
        (0..checkpoints.len()).map(|i| i >= first_kept).collect()
    }
}

/// Keeps every step divisible by `interval_steps` (`EveryNSteps`; with
/// `exact_interval: false`, the first checkpoint and each one at least
/// `interval_steps` after the previously kept one), at most the latest
/// `max_to_keep` of them.
#[derive(Debug, Clone)]
pub struct EveryNSteps {
    /// The interval; 0 (an error in Orbax) keeps every checkpoint.
    pub interval_steps: u64,
    /// Keep exact multiples rather than gaps of at least the interval.
    pub exact_interval: bool,
    /// Keep only the latest this many of the preserved ones.
    pub max_to_keep: Option<usize>,
}

impl EveryNSteps {
    /// Exact multiples of `interval_steps`, no limit (Orbax's defaults).
    pub fn new(interval_steps: u64) -> EveryNSteps {
        EveryNSteps { interval_steps, exact_interval: true, max_to_keep: None }
    }
}

impl PreservationPolicy for EveryNSteps {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        // Orbax raises on 0; we keep everything rather than guess (deleting is irreversible).
        if self.interval_steps == 0 {
            return vec![true; checkpoints.len()];
        }
        let interval = self.interval_steps;
        let mut keep: Vec<bool> = if self.exact_interval {
            checkpoints.iter().map(|c| c.step % interval == 0).collect()
        } else {
            let mut previous: Option<u64> = None;
            checkpoints
                .iter()
                .map(|c| {
                    let kept = previous.is_none_or(|p| c.step.saturating_sub(p) >= interval);
                    if kept {
                        previous = Some(c.step);
                    }
                    kept
                })
                .collect()
        };
        if let Some(max) = self.max_to_keep {
            let kept: Vec<usize> = (0..keep.len()).filter(|&i| keep[i]).collect();
            for &i in &kept[..kept.len().saturating_sub(max)] {
                keep[i] = false;
            }
        }
        keep
    }
}

/// Keeps the listed steps (`CustomSteps`).
#[derive(Debug, Clone)]
pub struct CustomSteps(pub BTreeSet<u64>);

impl PreservationPolicy for CustomSteps {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        checkpoints.iter().map(|c| self.0.contains(&c.step)).collect()
    }
}

/// Whether a larger or a smaller metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricMode {
    /// Larger is better (Orbax's `reverse=False`).
    Max,
    /// Smaller is better (`reverse=True`).
    Min,
}

/// Keeps the best `n` by a numeric top-level metric (`BestN` with
/// `get_metric_fn=lambda m: m[metric]`); checkpoints without metrics are
/// kept when `keep_checkpoints_without_metrics` (except with `n = 0`, which
/// keeps nothing, as in Orbax). Ties keep the later step
/// (Orbax sorts stably and keeps the end of the list).
#[derive(Debug, Clone)]
pub struct BestN {
    /// The metric's name in each step's metrics.
    pub metric: String,
    /// Which direction is better.
    pub mode: MetricMode,
    /// How many to keep; `None` keeps all.
    pub n: Option<usize>,
    /// Keep checkpoints that have no metrics.
    pub keep_checkpoints_without_metrics: bool,
}

impl BestN {
    fn value(&self, metrics: &Value) -> f64 {
        // Orbax's get_metric_fn would raise on a missing metric; ranking such
        // steps worst keeps the policy total.
        let worst = match self.mode {
            MetricMode::Max => f64::NEG_INFINITY,
            MetricMode::Min => f64::INFINITY,
        };
        metrics.get(&self.metric).and_then(Value::as_f64).unwrap_or(worst)
    }
}

impl PreservationPolicy for BestN {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        let n = match self.n {
            Some(0) => return vec![false; checkpoints.len()],
            Some(n) if checkpoints.len() > n => n,
            _ => return vec![true; checkpoints.len()],
        };
        let mut ranked: Vec<(usize, f64)> = checkpoints
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.metrics.as_ref().map(|m| (i, self.value(m))))
            .collect();
        // Ascending by "goodness": the best end up last, as in Orbax.
        ranked.sort_by(|a, b| match self.mode {
            MetricMode::Max => a.1.total_cmp(&b.1),
            MetricMode::Min => b.1.total_cmp(&a.1),
        });
        let mut keep = vec![false; checkpoints.len()];
        for &(i, _) in &ranked[ranked.len().saturating_sub(n)..] {
            keep[i] = true;
        }
        if self.keep_checkpoints_without_metrics {
            for (i, c) in checkpoints.iter().enumerate() {
                keep[i] |= c.metrics.is_none();
            }
        }
        keep
    }
}

/// Keeps what any of the policies keeps (`AnyPreservationPolicy`).
#[derive(Debug)]
pub struct AnyPreservation(pub Vec<Box<dyn PreservationPolicy>>);

impl PreservationPolicy for AnyPreservation {
    fn should_preserve(&self, checkpoints: &[CheckpointInfo]) -> Vec<bool> {
        let mut keep = vec![false; checkpoints.len()];
        for policy in &self.0 {
            for (k, p) in keep.iter_mut().zip(policy.should_preserve(checkpoints)) {
                *k |= p;
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps(list: &[u64]) -> Vec<CheckpointInfo> {
        list.iter().map(|&s| CheckpointInfo { step: s, dir: s.to_string(), time_ns: 0, metrics: None }).collect()
    }

    fn kept(policy: &dyn PreservationPolicy, checkpoints: &[CheckpointInfo]) -> Vec<u64> {
        let flags = policy.should_preserve(checkpoints);
        checkpoints.iter().zip(flags).filter(|(_, k)| *k).map(|(c, _)| c.step).collect()
    }

    #[test]
    fn step_policies() {
        let c = steps(&[0, 3, 5, 10, 12, 20, 21]);
        assert_eq!(kept(&PreserveAll, &c), [0, 3, 5, 10, 12, 20, 21]);
        assert_eq!(kept(&LatestN(2), &c), [20, 21]);
        assert_eq!(kept(&LatestN(0), &c), Vec::<u64>::new());
        assert_eq!(kept(&LatestN(10), &c).len(), 7);
        assert_eq!(kept(&EveryNSteps::new(5), &c), [0, 5, 10, 20]);
        assert_eq!(kept(&EveryNSteps { max_to_keep: Some(2), ..EveryNSteps::new(5) }, &c), [10, 20]);
        let gaps = EveryNSteps { exact_interval: false, ..EveryNSteps::new(5) };
        assert_eq!(kept(&gaps, &c), [0, 5, 10, 20]);
        assert_eq!(kept(&gaps, &steps(&[1, 4, 7, 9, 13])), [1, 7, 13]);
        assert_eq!(kept(&EveryNSteps::new(0), &c).len(), 7);
        assert_eq!(kept(&CustomSteps([3, 21, 99].into()), &c), [3, 21]);
        let any = AnyPreservation(vec![Box::new(LatestN(1)), Box::new(CustomSteps([3].into()))]);
        assert_eq!(kept(&any, &c), [3, 21]);
    }

    #[test]
    fn best_n() {
        let mut c = steps(&[1, 2, 3, 4, 5]);
        for (info, loss) in c.iter_mut().zip([Some(0.5), None, Some(0.2), Some(0.9), Some(0.2)]) {
            info.metrics = loss.map(|l| json!({ "loss": l }));
        }
        let best = |mode, n, keep_without| BestN {
            metric: "loss".into(),
            mode,
            n,
            keep_checkpoints_without_metrics: keep_without,
        };
        assert_eq!(kept(&best(MetricMode::Min, Some(2), true), &c), [2, 3, 5]);
        assert_eq!(kept(&best(MetricMode::Min, Some(2), false), &c), [3, 5]);
        assert_eq!(kept(&best(MetricMode::Min, Some(1), false), &c), [5]);
        assert_eq!(kept(&best(MetricMode::Max, Some(2), false), &c), [1, 4]);
        assert_eq!(kept(&best(MetricMode::Max, None, false), &c).len(), 5);
        // As in Orbax, n = 0 keeps nothing, not even steps without metrics.
        assert_eq!(kept(&best(MetricMode::Max, Some(0), true), &c), Vec::<u64>::new());
    }
}
