//! Links Intel's crypto_mb statically when `scripts/fetch-ippcp` has put it in place (or
//! `GATEHOUSE_IPPCP_DIR` names a folder holding `lib/libcrypto_mb.a`), and then sets
//! `cfg(gatehouse_mb)`. Without it the crate still builds: `status()` says `NotBuilt`.

use std::env;
use std::path::PathBuf;

/// The crypto_mb release `scripts/fetch-ippcp` installs (`mb/ippcp-requirements.txt` pins it).
const IPPCP_VERSION: &str = "2026.2.0";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gatehouse_mb)");
    println!("cargo::rerun-if-env-changed=GATEHOUSE_IPPCP_DIR");
    println!("cargo::rerun-if-changed=build.rs");

    let dir = match env::var_os("GATEHOUSE_IPPCP_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest
                .join("..")
                .join("target")
                .join("ippcp")
                .join(IPPCP_VERSION)
        }
    };
    let lib_dir = dir.join("lib");
    let lib = lib_dir.join("libcrypto_mb.a");
    // Watch the file and its folder, so that fetching the library later (or removing it)
    // rebuilds the crate in the other mode.
    println!("cargo::rerun-if-changed={}", lib.display());
    println!("cargo::rerun-if-changed={}", lib_dir.display());

    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        // crypto_mb's AVX-512 code is x86-64 only, and the wheel is a Linux build.
        return;
    }
    if !lib.is_file() {
        println!(
            "cargo::warning=gatehouse-mb: {} not found; building without the multi-buffer \
             verifier (status() = NotBuilt). Run scripts/fetch-ippcp to fetch it.",
            lib.display()
        );
        return;
    }
    println!("cargo::rustc-link-search=native={}", lib_dir.display());
    println!("cargo::rustc-link-lib=static=crypto_mb");
    println!("cargo::rustc-cfg=gatehouse_mb");
}
