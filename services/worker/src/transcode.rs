//! Runs the [`pipeline`](crate::pipeline): the bumpers are encoded once, when the worker
//! starts; each video then costs one ffmpeg run for its main part and one that joins the
//! parts without re-encoding.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::media::{self, MediaError};
use backends::settings::ProcessingSettings;

use crate::{logo, pipeline};

/// Longest the encoding of one bumper may take: a few hundred milliseconds on any machine
/// that can process videos at all. Not `worker.ffmpeg_timeout`, which is a job's.
const BUMPER_TIMEOUT: Duration = Duration::from_secs(60);

/// The logo and the encoded bumpers, in a folder owned by the worker.
#[derive(Debug)]
pub struct Transcoder {
    logo: PathBuf,
    intro: Option<PathBuf>,
    outro: Option<PathBuf>,
    settings: ProcessingSettings,
}

/// Which run failed: the main part's failure may be the input's fault, the join's never is.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("encoding the main part")]
    Main(#[source] MediaError),
    #[error("joining the parts")]
    Join(#[source] MediaError),
    #[error("preparing the parts")]
    Scratch(#[source] std::io::Error),
}

/// How long each run of one video took.
#[derive(Debug, Clone, Copy, Default)]
pub struct TranscodeTimings {
    pub main: Duration,
    pub join: Duration,
}

impl Transcoder {
    /// Writes the logo and encodes the bumpers into `dir`.
    pub async fn prepare(dir: &Path, settings: &ProcessingSettings) -> anyhow::Result<Self> {
        let logo = dir.join("anb-logo.png");
        logo::write_png(&logo).context("cannot write the logo")?;
        let mut bumpers: [Option<PathBuf>; 2] = [None, None];
        for (slot, name, length) in [(0, "intro", settings.intro), (1, "outro", settings.outro)] {
            if length.is_zero() {
                continue;
            }
            // Both bumpers are usually the same length: that one is encoded once.
            if slot == 1 && settings.intro == length {
                bumpers[1] = bumpers[0].clone();
                continue;
            }
            let path = dir.join(format!("{name}.mp4"));
            media::run_ffmpeg(
                pipeline::bumper_args(length, &logo, &path, settings),
                BUMPER_TIMEOUT,
            )
            .await
            .with_context(|| format!("cannot encode the {name} bumper"))?;
            bumpers[slot] = Some(path);
        }
        let [intro, outro] = bumpers;
        Ok(Self {
            logo,
            intro,
            outro,
            settings: settings.clone(),
        })
    }

    /// Turns `input` into the processed `output`, using `job_dir` (empty, on the same file
    /// system as the bumpers) for the parts. Each run may take up to `timeout`.
    pub async fn run(
        &self,
        input: &Path,
        job_dir: &Path,
        output: &Path,
        timeout: Duration,
    ) -> Result<TranscodeTimings, TranscodeError> {
        let started = Instant::now();
        let main = job_dir.join("main.mp4");
        let probe = media::probe(input, timeout)
            .await
            .map_err(TranscodeError::Main)?;
        // Without a video stream the encoder's run below fails and says why, as for any
        // other input it cannot read.
        let colors = probe
            .video
            .as_ref()
            .map_or(pipeline::SourceColors::OUTPUT, pipeline::SourceColors::of);
        media::run_ffmpeg(
            pipeline::main_args(input, colors, &self.logo, &main, &self.settings),
            timeout,
        )
        .await
        .map_err(TranscodeError::Main)?;
        let main_took = started.elapsed();

        let joined = Instant::now();
        // Links, not copies: the list may only name files next to it.
        let link = |bumper: &Path, name: &'static str| {
            std::fs::hard_link(bumper, job_dir.join(name)).map(|()| name)
        };
        let mut parts = Vec::new();
        if let Some(intro) = &self.intro {
            parts.push(link(intro, "intro.mp4").map_err(TranscodeError::Scratch)?);
        }
        parts.push("main.mp4");
        if let Some(outro) = &self.outro {
            parts.push(link(outro, "outro.mp4").map_err(TranscodeError::Scratch)?);
        }
        let list = job_dir.join("parts.txt");
        std::fs::write(&list, pipeline::join_list(&parts)).map_err(TranscodeError::Scratch)?;
        media::run_ffmpeg(pipeline::join_args(&list, output), timeout)
            .await
            .map_err(TranscodeError::Join)?;
        Ok(TranscodeTimings {
            main: main_took,
            join: joined.elapsed(),
        })
    }
}
