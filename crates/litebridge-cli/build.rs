//! The build's identity: the commit it was built from (`LB_BUILD_COMMIT`,
//! shown by `--version` and `/metrics`), read from git when the workspace
//! is the top of a git checkout (or worktree), `unknown` otherwise (a
//! source package, or one unpacked inside another project's checkout).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .is_some_and(|top| root.canonicalize().is_ok_and(|r| r == top));
    let commit = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten()
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LB_BUILD_COMMIT={commit}");
    if !ours {
        return;
    }
    // Built again when the checked-out commit changes: this worktree's
    // HEAD, and the branches, loose (a directory, watched whole: a branch
    // packed earlier comes back loose at its next commit) or packed.
    let dir = |arg: &str| git(&["rev-parse", arg]).map(|d| root.join(d));
    let watched: Vec<PathBuf> = [
        dir("--git-dir").map(|d| d.join("HEAD")),
        dir("--git-common-dir").map(|d| d.join("refs").join("heads")),
        dir("--git-common-dir").map(|d| d.join("packed-refs")),
    ]
    .into_iter()
    .flatten()
    .filter(|p| p.exists())
    .collect();
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
