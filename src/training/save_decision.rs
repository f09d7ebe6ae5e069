//! When to save: Orbax's save-decision policies
//! (`orbax.checkpoint.training.save_decision_policies`).

use std::collections::BTreeSet;

use super::CheckpointInfo;

/// What a policy knows besides the steps.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecisionContext {
    /// A save is still running in the background.
    pub is_saving_in_progress: bool,
    /// The caller raised the preemption flag (e.g. on SIGTERM).
    pub reached_preemption: bool,
}

/// Decides whether to save at a step.
pub trait SaveDecisionPolicy: Send + Sync + std::fmt::Debug {
    /// Whether to save `step` (its `time_ns` is now, no metrics), given the
    /// committed `previous` steps in step order.
    fn should_save(&self, step: &CheckpointInfo, previous: &[CheckpointInfo], context: &DecisionContext) -> bool;
}

/// Saves at every multiple of `interval` (`FixedIntervalPolicy`).
#[derive(Debug, Clone)]
pub struct FixedInterval(pub u64);

impl SaveDecisionPolicy for FixedInterval {
    fn should_save(&self, step: &CheckpointInfo, _: &[CheckpointInfo], _: &DecisionContext) -> bool {
        self.0 != 0 && step.step % self.0 == 0
    }
}

/// Saves at the listed steps (`SpecificStepsPolicy`).
#[derive(Debug, Clone)]
pub struct SpecificSteps(pub BTreeSet<u64>);

impl SaveDecisionPolicy for SpecificSteps {
    fn should_save(&self, step: &CheckpointInfo, _: &[CheckpointInfo], _: &DecisionContext) -> bool {
        self.0.contains(&step.step)
    }
}

/// Saves when no checkpoint exists yet (`InitialSavePolicy`).
#[derive(Debug, Clone)]
pub struct InitialSave;

impl SaveDecisionPolicy for InitialSave {
    fn should_save(&self, _: &CheckpointInfo, previous: &[CheckpointInfo], _: &DecisionContext) -> bool {
        previous.is_empty()
    }
}

/// Saves whenever no save is running, at least `minimum_interval_secs`
/// after the previous checkpoint (`ContinuousCheckpointingPolicy`).
#[derive(Debug, Clone, Default)]
pub struct Continuous {
    /// Minimum seconds between the previous checkpoint's time and this step.
    pub minimum_interval_secs: Option<u64>,
}

impl SaveDecisionPolicy for Continuous {
    fn should_save(&self, step: &CheckpointInfo, previous: &[CheckpointInfo], context: &DecisionContext) -> bool {
        if context.is_saving_in_progress {
            return false;
        }
        match (previous.last(), self.minimum_interval_secs) {
            (Some(last), Some(secs)) => step.time_ns - last.time_ns >= secs as i64 * 1_000_000_000,
            _ => true,
        }
    }
}

/// Saves when the preemption flag is raised (`PreemptionCheckpointingPolicy`).
#[derive(Debug, Clone)]
pub struct Preemption;

impl SaveDecisionPolicy for Preemption {
    fn should_save(&self, _: &CheckpointInfo, _: &[CheckpointInfo], context: &DecisionContext) -> bool {
        context.reached_preemption
    }
}

/// Saves if any of the policies says so (`AnySavePolicy`).
#[derive(Debug)]
pub struct AnySave(pub Vec<Box<dyn SaveDecisionPolicy>>);

impl SaveDecisionPolicy for AnySave {
    fn should_save(&self, step: &CheckpointInfo, previous: &[CheckpointInfo], context: &DecisionContext) -> bool {
        self.0.iter().any(|p| p.should_save(step, previous, context))
    }
}

/// Orbax's default: an initial save, continuous saves, and a save on preemption.
pub fn default_policy() -> AnySave {
    AnySave(vec![Box::new(InitialSave), Box::new(Continuous::default()), Box::new(Preemption)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, secs: i64) -> CheckpointInfo {
        CheckpointInfo { step, dir: step.to_string(), time_ns: secs * 1_000_000_000, metrics: None }
    }

    #[test]
    fn policies_decide_like_orbax() {
        let idle = DecisionContext::default();
        let busy = DecisionContext { is_saving_in_progress: true, ..idle };
        let preempted = DecisionContext { reached_preemption: true, ..idle };
        let saves = |p: &dyn SaveDecisionPolicy, prev: &[CheckpointInfo], c: &DecisionContext| {
            (0..8).filter(|&s| p.should_save(&at(s, 100), prev, c)).collect::<Vec<_>>()
        };
        assert_eq!(saves(&FixedInterval(3), &[], &idle), [0, 3, 6]);
        assert_eq!(saves(&SpecificSteps([2, 5].into()), &[], &idle), [2, 5]);
        assert_eq!(saves(&InitialSave, &[], &idle).len(), 8);
        assert!(saves(&InitialSave, &[at(0, 0)], &idle).is_empty());
        assert_eq!(saves(&Continuous::default(), &[at(0, 99)], &idle).len(), 8);
        assert!(saves(&Continuous::default(), &[], &busy).is_empty());
        let min = Continuous { minimum_interval_secs: Some(10) };
        assert!(saves(&min, &[at(0, 95)], &idle).is_empty());
        assert_eq!(saves(&min, &[at(0, 90)], &idle).len(), 8);
        assert!(saves(&Preemption, &[], &idle).is_empty());
        assert_eq!(saves(&Preemption, &[], &preempted).len(), 8);
        let any = AnySave(vec![Box::new(FixedInterval(4)), Box::new(SpecificSteps([1].into()))]);
        assert_eq!(saves(&any, &[], &idle), [0, 1, 4]);
        assert_eq!(saves(&default_policy(), &[at(0, 0)], &busy), Vec::<u64>::new());
        assert_eq!(
            saves(&default_policy(), &[at(0, 0)], &DecisionContext { reached_preemption: true, ..busy }).len(),
            8
        );
    }
}
