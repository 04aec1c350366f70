use std::process::ExitCode;

fn main() -> ExitCode {
    amat_host::cli::main()
}
