//! What a plugin says about itself is untrusted text: bounded and cleaned
//! before the host prints or stores it, and its metric names checked against
//! every `metrics` result.
//!
//! The metric rule: every name `describe` lists comes back from every
//! `metrics` call exactly once; a plugin may add other metrics (the
//! segmentation task adds `dice_<class>`, detection `ap50_<class>` for the
//! classes its targets hold) as long as every name is a clean metric name
//! and none repeats. Only the described names are promised to be in every
//! result.

use super::{Metric, TaskInfo};

/// Longest task name, version and metric name, in characters.
pub const MAX_NAME: usize = 64;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 1000;
/// Most metrics one call may return (and `describe` may list).
pub const MAX_METRICS: usize = 256;
/// Most input or output channels: the host sizes networks and test tensors
/// from them.
pub const MAX_CHANNELS: u32 = 4096;

/// `text` with control characters (ANSI escapes, newlines) escaped.
pub fn escaped(text: &str) -> String {
    text.chars()
        .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
            if c.is_control() {
                Box::new(c.escape_default())
            } else {
                Box::new(std::iter::once(c))
            }
        })
        .collect()
}

/// Refuses text over `max` characters without repeating it, else escapes it.
fn bounded(field: &str, text: &str, max: usize) -> Result<String, String> {
    let n = text.chars().count();
    if n > max {
        return Err(format!("{field} is {n} characters long (at most {max})"));
    }
    Ok(escaped(text))
}

/// A metric name is a short word: letters, digits and `_ - . % @ /`, so it
/// is safe as a JSON key, a CSV column and a plot legend.
fn check_metric_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a metric name is empty".into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!(
            "a metric name is {} characters long (at most {MAX_NAME})",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.%@/".contains(*c)))
    {
        return Err(format!(
            "metric name `{}` holds {:?}; use letters, digits and _ - . % @ /",
            escaped(name),
            c
        ));
    }
    Ok(())
}

/// `info` with its strings checked and escaped, or why it is refused.
pub fn clean(mut info: TaskInfo) -> Result<TaskInfo, String> {
    info.name = bounded("the task name", &info.name, MAX_NAME)?;
    if info.name.trim().is_empty() {
        return Err("task name is empty".into());
    }
    info.version = bounded("the version", &info.version, MAX_NAME)?;
    info.description = bounded("the description", &info.description, MAX_DESCRIPTION)?;
    for (what, n) in [
        ("input", info.input_channels),
        ("output", info.output_channels),
    ] {
        if n == 0 || n > MAX_CHANNELS {
            return Err(format!(
                "{what} channels = {n}; they must lie in 1..={MAX_CHANNELS}"
            ));
        }
    }
    if info.metric_names.len() > MAX_METRICS {
        return Err(format!(
            "describe lists {} metrics (at most {MAX_METRICS})",
            info.metric_names.len()
        ));
    }
    for (i, name) in info.metric_names.iter().enumerate() {
        check_metric_name(name).map_err(|e| format!("describe: {e}"))?;
        if info.metric_names[..i].contains(name) {
            return Err(format!("describe lists metric `{name}` twice"));
        }
    }
    Ok(info)
}

/// Checks one `metrics` result against the described names (see the module
/// documentation for the rule).
pub fn check_metrics(described: &[String], got: &[Metric]) -> Result<(), String> {
    if got.len() > MAX_METRICS {
        return Err(format!(
            "returned {} metrics (at most {MAX_METRICS})",
            got.len()
        ));
    }
    for (i, m) in got.iter().enumerate() {
        check_metric_name(&m.name)?;
        if got[..i].iter().any(|x| x.name == m.name) {
            return Err(format!("returned metric `{}` twice", m.name));
        }
    }
    if let Some(missing) = described
        .iter()
        .find(|n| !got.iter().any(|m| &m.name == *n))
    {
        return Err(format!(
            "describe lists metric `{missing}` but metrics did not return it (returned: {})",
            got.iter()
                .take(8)
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str) -> Metric {
        Metric {
            name: name.into(),
            value: 0.5,
        }
    }

    #[test]
    fn described_metrics_come_back_once_and_extras_must_be_clean() {
        let described = vec!["dice_mean".to_string()];
        let ok = [metric("dice_mean"), metric("dice_0"), metric("dice_7")];
        check_metrics(&described, &ok).unwrap();
        let twice = [metric("dice_mean"), metric("dice_mean")];
        assert!(
            check_metrics(&described, &twice)
                .unwrap_err()
                .contains("twice")
        );
        let renamed = [metric("dice_avg")];
        assert!(
            check_metrics(&described, &renamed)
                .unwrap_err()
                .contains("did not return it")
        );
        let dirty = [metric("dice_mean"), metric("x,\u{1b}[2J")];
        let e = check_metrics(&described, &dirty).unwrap_err();
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn names_are_bounded_and_escaped() {
        assert_eq!(escaped("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        let e = bounded("the task name", &"x".repeat(5 << 20), MAX_NAME).unwrap_err();
        assert!(e.len() < 100, "{e}");
    }
}
