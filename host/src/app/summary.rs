//! A run's `summary.md`: what ran, how training went, and the robustness
//! curve, in words a reader of the run folder can take in at once.

use crate::config::RunConfig;
use crate::eval::Curve;
use crate::eval::report::{
    COLLAPSED_BELOW, REFERENCE_AT_LEAST, aggregate_note, dice_convention, fmt, noise_note, parts,
    rms_at,
};
use crate::train::EpochRecord;
use std::fmt::Write;

/// `summary.md`: what ran, how training went, and the robustness curve.
pub fn summary(
    cfg: &RunConfig,
    task: &str,
    data_about: Option<&str>,
    train_samples: usize,
    history: &[EpochRecord],
    curve: &Curve,
) -> String {
    let mut s = String::new();
    let method = cfg.run.method.map(|m| m.to_string()).unwrap_or_default();
    let _ = writeln!(s, "# {method} on {task}\n");
    if let Some(about) = data_about {
        let _ = writeln!(s, "- data: {about}");
    }
    let _ = writeln!(
        s,
        "- {} epochs ({} warm-up), {} training samples, batch {}, {:?} lr {}, seed {}",
        history.len(),
        if method == "std" {
            0
        } else {
            cfg.train.warmup_epochs.min(history.len())
        },
        train_samples,
        cfg.train.batch_size,
        cfg.train.optimizer,
        cfg.train.lr,
        cfg.run.seed
    );
    let atk = &cfg.train.attack;
    match method.as_str() {
        "sat" => {
            let _ = writeln!(
                s,
                "- training attack: PGD {} x{}, eps {}, beta {}",
                atk.norm, atk.steps, cfg.sat.eps, cfg.train.beta
            );
        }
        "amat" => {
            let a = &cfg.amat;
            let _ = writeln!(
                s,
                "- training attack: PGD {} x{}, per-sample margins up to {} (step {}), beta {}",
                atk.norm,
                atk.steps,
                a.eps_max,
                a.delta_eps(),
                cfg.train.beta
            );
            let judge = if a.judge.is_empty() {
                match a.tau {
                    Some(t) => format!("loss <= {t}"),
                    None => "loss <= the plugin's tau".into(),
                }
            } else {
                a.judge
                    .iter()
                    .map(|(k, v)| format!("{k} vs {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let gate = a
                .tau_clean
                .map(|t| format!("clean loss <= {t}"))
                .unwrap_or_else(|| "off".into());
            let _ = writeln!(
                s,
                "- AMAT rule {}, adversarial judgement {judge}, clean gate {gate}, reset_wrong {}",
                a.rule, a.reset_wrong
            );
        }
        _ => {}
    }
    let total: f64 = history.iter().map(|r| r.seconds).sum();
    let _ = write!(
        s,
        "- training time {total:.1} s ({:.2} s per epoch)",
        total / history.len().max(1) as f64
    );
    if method == "amat" {
        // AMAT's own cost over SAT: judging samples and searching boundaries.
        let margin: f64 = history.iter().map(|r| r.margin_seconds).sum();
        let _ = write!(
            s,
            ", of which margin updates {margin:.1} s ({:.1} %)",
            100.0 * margin / total.max(f64::MIN_POSITIVE)
        );
    }
    s.push_str("\n\n");
    for r in history.iter().filter(|r| r.warning.is_some()) {
        let _ = writeln!(
            s,
            "**Warning** (epoch {}): {}\n",
            r.epoch,
            r.warning.as_deref().unwrap_or_default()
        );
    }
    if let (Some(first), Some(last)) = (history.first(), history.last()) {
        let _ = writeln!(s, "| | first epoch | last epoch |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| clean loss | {:.4} | {:.4} |",
            first.clean_loss, last.clean_loss
        );
        let adv = |r: &EpochRecord| r.adv_loss.map(|a| format!("{a:.4}")).unwrap_or("–".into());
        let _ = writeln!(s, "| adversarial loss | {} | {} |", adv(first), adv(last));
        if method == "amat" {
            let _ = writeln!(
                s,
                "| margins min / median / max | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} |",
                first.eps_min,
                first.eps_median,
                first.eps_max,
                last.eps_min,
                last.eps_median,
                last.eps_max
            );
            let _ = writeln!(
                s,
                "| grown / crossed / stayed / not learned | | {:.0}% / {:.0}% / {:.0}% / {:.0}% |",
                100.0 * last.grown,
                100.0 * last.crossed,
                100.0 * last.stayed,
                100.0 * last.not_learned
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "## Robustness ({} split, {} samples, PGD {} {} steps, {} restart(s))\n",
        curve.split, curve.samples, curve.norm, curve.steps, curve.restarts
    );
    let _ = write!(s, "| eps | rms | loss |");
    for m in &curve.metrics {
        let _ = write!(s, " {} |", m.name);
    }
    let _ = write!(s, "\n|---|---|---|");
    for _ in &curve.metrics {
        s.push_str("---|");
    }
    s.push('\n');
    for (i, eps) in curve.eps.iter().enumerate() {
        let rms = rms_at(curve, i);
        let rms = if rms.is_nan() {
            "–".into()
        } else {
            format!("{rms:.4}")
        };
        let _ = write!(s, "| {eps} | {rms} | {:.4} |", curve.loss[i]);
        for m in &curve.metrics {
            let _ = write!(s, " {} |", fmt(m.values[i]));
        }
        s.push('\n');
    }
    let _ = write!(s, "| area | | |");
    for m in &curve.metrics {
        let _ = write!(s, " {} |", fmt(m.area));
    }
    let _ = write!(s, "\n\n{}", noise_note(curve));
    if let Some(note) = aggregate_note(curve) {
        let _ = write!(s, "\n\n{note}");
    }
    if let Some(note) = dice_convention(curve) {
        let _ = write!(s, "\n\n{note}");
    }
    // Without a reference run, only "near 0" can be said; `compare` and
    // `study` flag collapses against an STD run.
    if let Some(first) = curve.metrics.first() {
        let low: Vec<String> = parts(curve, &first.name)
            .iter()
            .filter(|m| m.values.first().is_some_and(|v| *v < COLLAPSED_BELOW))
            .map(|m| format!("{} ({:.3})", m.name, m.values[0]))
            .collect();
        if !low.is_empty() {
            let _ = write!(
                s,
                "\n\nNear 0 on clean inputs (below {COLLAPSED_BELOW}): {}. A collapse if an STD run scores at least {REFERENCE_AT_LEAST} there (`amat-host compare` flags it).",
                low.join(", ")
            );
        }
    }
    s.push_str(&format!("\n\nFiles: `epochs.jsonl`, `epochs.csv`, `robustness.json`, `robustness.csv`, `robustness.png`, `checkpoints/`{}.\n",
        if curve.cases.is_empty() { "" } else { ", `cases.csv`" }
    ));
    s
}
