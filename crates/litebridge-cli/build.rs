//! The build's identity: the commit it was built from (`LB_BUILD_COMMIT`,
//! shown by `--version` and `/metrics`), read from git when the source is a
//! git checkout, `unknown` otherwise (a source package).

use std::process::Command;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
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
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LB_BUILD_COMMIT={commit}");
    // Built again when the checked-out commit changes: HEAD, and the
    // branch it names.
    // branch it names (a loose file, or packed); only files that exist (a
    // missing one would run this script at every build).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = std::path::Path::new(&dir);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let watched = ["HEAD", "packed-refs"]
            .into_iter()
            .map(|f| dir.join(f))
            .chain(branch.map(|b| dir.join(b)));
        for file in watched.filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
