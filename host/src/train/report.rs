//! A run's per-epoch record: `epochs.jsonl` and `epochs.csv`. Each is
//! rewritten whole (atomically) from the history a checkpoint holds, so a
//! resumed run's files match an uninterrupted run's.

use super::EpochRecord;
use crate::fsio::write_atomic;
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

pub fn write_epochs(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut jsonl = String::new();
    for r in history {
        jsonl.push_str(&serde_json::to_string(r)?);
        jsonl.push('\n');
    }
    write_atomic(&dir.join("epochs.jsonl"), jsonl.as_bytes())?;
    let mut csv = String::from(
        "epoch,phase,lr,clean_loss,adv_loss,eps_min,eps_median,eps_max,eps_histogram,grown,crossed,stayed,not_learned,search_forwards,margin_seconds,seconds\n",
    );
    for r in history {
        let hist = r
            .eps_histogram
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let adv = r.adv_loss.map(|a| a.to_string()).unwrap_or_default();
        writeln!(
            csv,
            "{},{},{},{},{adv},{},{},{},{hist},{},{},{},{},{},{:.3},{:.3}",
            r.epoch,
            r.phase,
            r.lr,
            r.clean_loss,
            r.eps_min,
            r.eps_median,
            r.eps_max,
            r.grown,
            r.crossed,
            r.stayed,
            r.not_learned,
            r.search_forwards,
            r.margin_seconds,
            r.seconds
        )?;
    }
    write_atomic(&dir.join("epochs.csv"), csv.as_bytes())
}
