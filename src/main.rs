//! The `oklog` binary: pick the mode, run it, exit with its code.

fn main() {
    std::process::exit(oklog::cli::main(std::env::args().collect()));
}
