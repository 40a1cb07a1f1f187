//! The `liaison` command, built in the test package so that end-to-end tests
//! can run it as a child process.

fn main() -> std::process::ExitCode {
    liaison_cli::main_entry()
}
