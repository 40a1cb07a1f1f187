//! The `liaison` command; everything is in the library so that tests can run
//! the same code as a child process.

fn main() -> std::process::ExitCode {
    liaison_cli::main_entry()
}
