//! `ferry generate`: the man pages and shell completions, made from the
//! same clap definitions the command line is parsed with, so that they can
//! never say something the command does not do.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::exit::Exit;

#[derive(clap::Subcommand)]
pub enum GenerateCommand {
    /// Write ferry.1 and a page per subcommand (ferry-cp.1, ferry-hsm-archive.1, …) into DIR
    Man {
        /// Where the pages go (created if missing), e.g. /usr/local/share/man/man1
        dir: PathBuf,
    },
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub fn run<Cli: CommandFactory>(command: GenerateCommand) -> Result<Exit, Exit> {
    let mut cli = Cli::command();
    match command {
        GenerateCommand::Man { dir } => {
            let failed = |e| Exit::Error(ferry::Error::io(&dir, e));
            std::fs::create_dir_all(&dir).map_err(failed)?;
            clap_mangen::generate_to(cli, &dir).map_err(failed)?;
        }
        GenerateCommand::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "ferry", &mut script);
            println!("{}", String::from_utf8_lossy(&script).trim_end());
        }
    }
    Ok(Exit::Ok)
}
