//! Running a program inside one of the lab's network namespaces, as `ip netns exec` does, with
//! the lab's tag in its environment so that `skein-lab down` finds it even if nobody else does.

use std::ffi::OsStr;
use std::process::Command;

/// The environment variable naming the lab on every process it starts.
pub const LAB_ENV: &str = "SKEIN_LAB";

/// A command that runs `program` in `netns`, tagged as lab `lab`'s; add arguments and run it.
pub fn command(lab: &str, netns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(program)
        .env(LAB_ENV, lab);
    command
}

/// Runs `argv` in `netns` and waits: (exit success, stdout followed by stderr).
pub fn run(lab: &str, netns: &str, argv: &[&str]) -> std::io::Result<(bool, String)> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "an empty command line")
    })?;
    let out = command(lab, netns, program).args(args).output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}
