//! `kafkasend completions SHELL`: a completion script for bash, zsh, fish
//! (and the other shells clap_complete knows), generated from the same
//! clap definitions the binary parses with, so it never falls behind.

use clap::Args;

/// Flags of `kafkasend completions`.
#[derive(Debug, Args, Clone)]
pub struct CompletionsArgs {
    /// Shell to write the script for
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script of the command line `cmd` for `shell` to `out`.
pub fn write(shell: clap_complete::Shell, cmd: &mut clap::Command, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, cmd, "kafkasend", out);
}
