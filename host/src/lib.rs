//! amat: adaptive-margin adversarial training for medical-image networks.
//!
//! The host owns networks and tensors (libtorch through `tch`); task plugins
//! supply a decoder, a per-sample loss and metrics, as sandboxed wasm
//! components or native dylibs.

pub mod app;
pub mod attack;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod fsio;
pub mod model;
pub mod plugin;
pub mod reference;
pub mod tensor;
pub mod train;
