//! The test clips xtask's commands upload (benchmarks, capacity runs, the rehearsal), made
//! once and kept under `target/`: every one is a [`Clip`], the description the services'
//! tests use too.

use std::path::Path;

pub use testkit::clip::Clip;

use crate::system::run_command;

/// Runs ffmpeg to make `clip` at `path` unless the file exists; writes to a partial file
/// first so an interrupted run never leaves a half file under the final name.
pub fn generate_once(clip: &Clip, path: &Path, what: &str) -> anyhow::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    eprintln!("xtask: generating {what} (once)");
    let partial = path.with_extension("partial.mp4");
    run_command(
        crate::system::command("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
            .args(clip.ffmpeg_args())
            .arg(&partial),
    )?;
    std::fs::rename(&partial, path)?;
    Ok(())
}
