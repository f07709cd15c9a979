//! The pinned Python tools the tests use — the moto AWS emulator and the schemathesis
//! OpenAPI fuzzer — each in a virtualenv of its own under `target/tools`.

use std::path::PathBuf;

use anyhow::Context;
use testkit::tools::{moto_venv, schemathesis_venv, MOTO_VERSION, SCHEMATHESIS_VERSION};

use crate::paths::scratch_dir;
use crate::system::{install_packages, run_command, which};

/// A Python with the pinned `moto[server]`, in a virtualenv under `target/tools`.
pub fn ensure_moto() -> anyhow::Result<PathBuf> {
    if let Some(python) = std::env::var_os("ANB_MOTO_PYTHON") {
        return Ok(PathBuf::from(python));
    }
    let venv = python_tool(
        moto_venv(&scratch_dir()),
        &format!("moto[server]=={MOTO_VERSION}"),
        "moto.server",
    )?;
    Ok(venv.join("bin/python"))
}

/// The pinned schemathesis (the API's OpenAPI fuzzer), in its own virtualenv under
/// `target/tools` (its dependencies and moto's need not agree).
pub fn ensure_schemathesis() -> anyhow::Result<PathBuf> {
    if let Some(program) = std::env::var_os("ANB_SCHEMATHESIS") {
        return Ok(PathBuf::from(program));
    }
    let venv = python_tool(
        schemathesis_venv(&scratch_dir()),
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        "schemathesis",
    )?;
    Ok(venv.join("bin/schemathesis"))
}

/// The virtualenv `venv` with `requirement` installed (checked by importing `module`),
/// created when missing or broken.
fn python_tool(venv: PathBuf, requirement: &str, module: &str) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    let ready = python.is_file()
        && crate::system::command(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(venv);
    }
    let system_python = which("python3").context("python3 is needed for the test tools")?;
    let _ = std::fs::remove_dir_all(&venv);
    if run_command(
        crate::system::command(&system_python)
            .arg("-m")
            .arg("venv")
            .arg(&venv),
    )
    .is_err()
    {
        // Debian splits venv support into its own package.
        install_packages(&["python3-venv"])?;
        run_command(
            crate::system::command(&system_python)
                .arg("-m")
                .arg("venv")
                .arg(&venv),
        )?;
    }
    eprintln!("xtask: installing {requirement} into {}", venv.display());
    run_command(
        crate::system::command(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(requirement),
    )?;
    Ok(venv)
}
