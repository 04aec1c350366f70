//! The end-to-end tests, one module per concern, linked as one binary.

mod support;

mod abi_drift;
mod amat_rules;
mod cli_plugin;
mod contract_versions;
mod datasets;
mod detection;
mod distributed;
mod generate;
mod landmark;
mod layering;
mod native_abi;
mod plugin_contract;
mod plugin_new;
mod sandbox;
mod sandbox_holes;
mod segmentation_data;
mod silent_failures;
mod speed_options;
mod study;
mod training;
mod volumes;
mod vs_pytorch_parity;
