//! The `amat-host` command line.

use crate::plugin::{Plugin, PluginKind, SandboxLimits};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "amat-host",
    version,
    about = "Adaptive-margin adversarial training for medical-image networks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect task plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Load a plugin (.wasm component or native .so) and print what it describes.
    Info {
        /// The plugin file.
        plugin: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AMAT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin(PluginCommand::Info { plugin, json }) => {
            let p = Plugin::load(&plugin, &SandboxLimits::default())?;
            let info = p.info();
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                let kind = match p.kind() {
                    PluginKind::Wasm => "wasm component (sandboxed)",
                    PluginKind::Native => "native library (trusted, not sandboxed)",
                };
                println!("plugin:          {}", plugin.display());
                println!("kind:            {kind}");
                println!("task:            {} {}", info.name, info.version);
                println!("description:     {}", info.description);
                println!("input channels:  {}", info.input_channels);
                println!("output channels: {}", info.output_channels);
                println!("target kind:     {:?}", info.target_kind);
                println!("tau (AMAT):      {}", info.tau);
                println!(
                    "intensity range: [{}, {}]",
                    info.intensity_min, info.intensity_max
                );
                println!("metrics:         {}", info.metric_names.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
