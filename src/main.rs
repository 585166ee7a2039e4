use std::process::ExitCode;

fn main() -> ExitCode {
    qsparse::cli::main()
}
