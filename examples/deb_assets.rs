//! Generates the files the Debian package ships besides the binary, into
//! the directory given as the only argument (`contrib/deb/build` passes
//! `target/deb-assets`):
//!
//! - man pages from the clap definitions (`clap_mangen`): `hookgate.1` and
//!   one page per subcommand (`hookgate-run.1`, …);
//! - shell completions from the same definitions (`clap_complete`):
//!   `hookgate.bash`, `_hookgate` (zsh), `hookgate.fish`;
//! - `hookgate.service`: `systemd/hookgate.service` with the binary at
//!   `/usr/bin/hookgate` instead of `/usr/local/bin/hookgate`, and
//!   `hookgate.sysusers` copied beside it (cargo-deb takes both from one
//!   directory).
//!
//! An example rather than a hidden subcommand, so the shipped binary carries
//! neither generator. Run: `cargo run --example deb_assets -- DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use hookgate::cli::Cli;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const SOURCE_BIN: &str = "/usr/local/bin/hookgate";
const PACKAGED_BIN: &str = "/usr/bin/hookgate";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: deb_assets OUT_DIR");
        return ExitCode::FAILURE;
    };
    match generate(Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deb_assets: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> Result<Vec<PathBuf>, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(out).map_err(|e| io(&out.display().to_string(), e))?;
    let mut files = Vec::new();

    clap_mangen::generate_to(Cli::command(), out).map_err(|e| io("man pages", e))?;
    for entry in std::fs::read_dir(out).map_err(|e| io("man pages", e))? {
        let path = entry.map_err(|e| io("man pages", e))?.path();
        if path.extension().is_some_and(|x| x == "1") {
            files.push(path);
        }
    }

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut Cli::command(), "hookgate", out)
            .map_err(|e| io(&format!("{shell} completion"), e))?;
        files.push(path);
    }

    let unit_source = Path::new(REPO).join("systemd/hookgate.service");
    let unit = std::fs::read_to_string(&unit_source)
        .map_err(|e| io(&unit_source.display().to_string(), e))?;
    // ExecStartPre=, ExecStart= and the ExecReload= check; a unit that
    // names the binary elsewhere (or no longer) must be looked at again.
    let uses = unit.matches(SOURCE_BIN).count();
    if uses != 3 {
        return Err(format!(
            "{}: expected {SOURCE_BIN} 3 times (ExecStartPre=, ExecStart=, ExecReload=), found {uses}",
            unit_source.display()
        ));
    }
    // The package ships the man pages, so its unit can point at them.
    let unit = unit
        .replace(SOURCE_BIN, PACKAGED_BIN)
        .replace(
            "# Install: see docs/install-service.md (README \"Install as a service\").",
            "# Installed by the hookgate Debian package (README \"Install from the .deb\").",
        )
        .replacen(
            "[Unit]\n",
            "[Unit]\nDocumentation=man:hookgate(1) file:/usr/share/doc/hookgate/README.md\n",
            1,
        );
    let unit_path = out.join("hookgate.service");
    std::fs::write(&unit_path, unit).map_err(|e| io("hookgate.service", e))?;
    files.push(unit_path);

    let sysusers = out.join("hookgate.sysusers");
    std::fs::copy(
        Path::new(REPO).join("contrib/deb/hookgate.sysusers"),
        &sysusers,
    )
    .map_err(|e| io("hookgate.sysusers", e))?;
    files.push(sysusers);
    files.sort();
    Ok(files)
}
