//! Application layer: commands built from training and evaluation
//! (`cli → app → {train, eval}`); `train` and `eval` never import it.

pub mod study;
