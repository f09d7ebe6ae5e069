//! Step directory names, as Orbax's `standard_name_format` writes and
//! finds them: `<step>`, `<prefix>_<step>`, each optionally zero-padded to
//! a fixed length (`0023`, `step_0023`).

/// How step directories are named (`orbax.checkpoint.path.step.standard_name_format`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepNameFormat {
    /// `step_prefix`: the name is `<prefix>_<step>`.
    pub prefix: Option<String>,
    /// `step_format_fixed_length`: the step is zero-padded to this many digits.
    pub fixed_length: Option<usize>,
}

impl StepNameFormat {
    /// The directory name of `step`.
    ///
    /// ```
    /// use orbax::training::StepNameFormat;
    /// let f = StepNameFormat { prefix: Some("ckpt".into()), fixed_length: Some(4) };
    /// assert_eq!(f.build_name(23), "ckpt_0023");
    /// assert_eq!(f.parse_name("ckpt_0023"), Some(23));
    /// ```
    pub fn build_name(&self, step: u64) -> String {
        let digits = match self.fixed_length {
            Some(width) => format!("{step:0width$}"),
            None => step.to_string(),
        };
        match &self.prefix {
            Some(prefix) => format!("{prefix}_{digits}"),
            None => digits,
        }
    }

    /// The step of a directory name in this format, as Orbax's regular
    /// expression matches it (`(0|[1-9]\d*)`, or with a fixed length `n`:
    /// `0\d{n-1}` or `[1-9]\d{n-1}\d*`); `None` for other names.
    pub fn parse_name(&self, name: &str) -> Option<u64> {
        let digits = match &self.prefix {
            Some(prefix) => name.strip_prefix(prefix.as_str())?.strip_prefix('_')?,
            None => name,
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let well_formed = match self.fixed_length.filter(|&n| n > 0) {
            Some(n) if digits.starts_with('0') => digits.len() == n,
            Some(n) => digits.len() >= n,
            None => digits == "0" || !digits.starts_with('0'),
        };
        well_formed.then(|| digits.parse().ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_rejected() {
        let plain = StepNameFormat::default();
        assert_eq!(plain.build_name(7), "7");
        assert_eq!(plain.parse_name("7"), Some(7));
        assert_eq!(plain.parse_name("0"), Some(0));
        for other in ["07", "ckpt_7", "7.orbax-checkpoint-tmp", "metadata", ""] {
            assert_eq!(plain.parse_name(other), None, "{other}");
        }
        let padded = StepNameFormat { prefix: None, fixed_length: Some(4) };
        assert_eq!(padded.build_name(7), "0007");
        assert_eq!(padded.build_name(123456), "123456");
        assert_eq!(padded.parse_name("0007"), Some(7));
        assert_eq!(padded.parse_name("123456"), Some(123456));
        assert_eq!(padded.parse_name("007"), None);
        assert_eq!(padded.parse_name("12"), None);
        let prefixed = StepNameFormat { prefix: Some("step".into()), fixed_length: None };
        assert_eq!(prefixed.build_name(12), "step_12");
        assert_eq!(prefixed.parse_name("step_12"), Some(12));
        assert_eq!(prefixed.parse_name("step12"), None);
        assert_eq!(prefixed.parse_name("12"), None);
    }
}
