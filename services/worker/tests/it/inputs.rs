//! Every shape of input comes out as the contract's 1280×720 video.

use std::time::Duration;

use backends::db::VideoStatus;
use backends::media;
use worker::Outcome;

use crate::helpers::{
    assert_meets_spec, make_video, pixel, pixel_shown_as, put_cover_art_first, rotate_90, Harness,
};

fn is_dark(rgb: [u8; 3]) -> bool {
    rgb.iter().all(|c| *c < 40)
}

/// Bumper navy is 0x0B1F3A; allow for compression.
fn is_bumper_navy(rgb: [u8; 3]) -> bool {
    rgb[0] < 40 && rgb[1] > 15 && rgb[1] < 60 && rgb[2] > 40 && rgb[2] < 90
}

#[tokio::test]
async fn landscape_input_is_trimmed_scaled_watermarked_and_wrapped_in_bumpers() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    // 40 s with audio: the output keeps 30 s of it, drops the audio, adds 5 s of bumpers.
    let input = make_video(
        dir.path(),
        "long.mp4",
        "testsrc2=size=1920x1080:rate=30:duration=40",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=40",
            "-c:a",
            "aac",
            "-shortest",
        ],
    )
    .await;
    let id = h.enqueue(&input).await;
    assert_eq!(h.worker.handle(h.receive().await).await, Outcome::Processed);

    let (path, probe) = h.processed(id).await;
    let seconds = assert_meets_spec(&probe);
    assert!(
        (seconds - 35.0).abs() < 0.2,
        "expected 30 s + 5 s of bumpers, got {seconds}"
    );
    assert!(
        is_bumper_navy(pixel(&path, 1.0, 20, 20).await),
        "no opening bumper"
    );
    assert!(
        is_bumper_navy(pixel(&path, 34.0, 20, 20).await),
        "no closing bumper"
    );
    // The watermark (the 300×100 logo scaled to 180×60) sits 28 px from the bottom-right
    // corner of the main segment; this point is on the orange of its ball.
    let corner = pixel(&path, 10.0, 1280 - 28 - 180 + 36, 720 - 28 - 60 + 12).await;
    assert!(
        corner[0] > 180 && corner[1] > 60 && corner[1] < 150 && corner[2] < 80,
        "no watermark: {corner:?}"
    );

    let (status, error) = h.status(id).await;
    assert_eq!((status, error), (VideoStatus::Processed, None));
    let processed_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT processed_at FROM videos WHERE id = $1")
            .bind(id)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(processed_at.is_some());
    assert!(h.queue_is_empty().await, "the message was not deleted");
    let original = h
        .store
        .exists(&backends::job::original_key(id))
        .await
        .unwrap();
    assert!(original, "the original must be kept");
}

#[tokio::test]
async fn portrait_square_tiny_odd_sized_variable_rate_and_rotated_inputs_all_come_out_right() {
    let h = Harness::local().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        // (name, input, a point inside the 1280×720 frame that must be black padding)
        (
            "portrait",
            make_video(
                d,
                "portrait.mp4",
                "testsrc2=size=720x1280:rate=30:duration=3",
                &[],
            )
            .await,
            Some((100, 360)),
        ),
        (
            "square",
            make_video(
                d,
                "square.mp4",
                "testsrc2=size=480x480:rate=30:duration=3",
                &[],
            )
            .await,
            Some((100, 360)),
        ),
        (
            "tiny",
            make_video(
                d,
                "tiny.mp4",
                "testsrc2=size=320x240:rate=30:duration=3",
                &[],
            )
            .await,
            Some((60, 360)),
        ),
        (
            "odd-sized",
            make_video(
                d,
                "odd.mp4",
                "testsrc2=size=333x177:rate=25:duration=3",
                &["-vf", "scale=333:177", "-pix_fmt", "yuv444p"],
            )
            .await,
            None,
        ),
        (
            "variable frame rate",
            make_video(
                d,
                "vfr.mp4",
                "testsrc2=size=640x360:rate=60:duration=3",
                &[
                    "-vf",
                    "select='lt(mod(n\\,5)\\,2)+eq(mod(n\\,7)\\,0)'",
                    "-fps_mode",
                    "vfr",
                ],
            )
            .await,
            None,
        ),
        // A landscape frame stored with a 90° display rotation, as phones record portrait.
        (
            "rotated",
            {
                let video = make_video(
                    d,
                    "rotated.mp4",
                    "testsrc2=size=640x360:rate=30:duration=3",
                    &[],
                )
                .await;
                rotate_90(&video);
                video
            },
            Some((100, 360)),
        ),
    ];
    for (name, input, padding) in cases {
        let id = h.enqueue(&input).await;
        let outcome = h.worker.handle(h.receive().await).await;
        assert_eq!(outcome, Outcome::Processed, "{name}");
        let (path, probe) = h.processed(id).await;
        let seconds = assert_meets_spec(&probe);
        assert!((seconds - 8.0).abs() < 0.3, "{name}: {seconds} s");
        if let Some((x, y)) = padding {
            assert!(
                is_dark(pixel(&path, 4.0, x, y).await),
                "{name}: no pillarbox at ({x}, {y})"
            );
        }
        // The picture itself is there, centred.
        assert!(
            !is_dark(pixel(&path, 4.0, 640, 300).await),
            "{name}: the centre is black"
        );
    }
}

/// The parts are joined by stream copy, which is valid only if each was encoded with the
/// same sequence and picture headers: whatever the input's size, rate, pixel format or
/// aspect ratio, the main part's must be the bumpers'. And the joined file must decode
/// without a single error, every frame of it.
#[tokio::test]
async fn the_main_part_shares_the_bumpers_headers_and_the_joined_file_decodes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inputs = [
        make_video(
            d,
            "hd.mp4",
            "testsrc2=size=1920x1080:rate=30:duration=2",
            &[],
        )
        .await,
        make_video(
            d,
            "portrait-25fps-444.mp4",
            "testsrc2=size=720x1280:rate=25:duration=2",
            &["-pix_fmt", "yuv444p"],
        )
        .await,
        // What phones record: colour tags of their own, here BT.601 at full range.
        make_video(
            d,
            "tagged-full-range.mp4",
            "testsrc2=size=1280x720:rate=30:duration=2",
            &[
                "-vf",
                "scale=out_range=full",
                "-pix_fmt",
                "yuvj420p",
                "-color_range",
                "pc",
                "-colorspace",
                "bt470bg",
                "-color_primaries",
                "bt470bg",
                "-color_trc",
                "smpte170m",
            ],
        )
        .await,
        make_video(
            d,
            "anamorphic.mp4",
            "testsrc2=size=720x576:rate=50:duration=2",
            &["-vf", "setsar=16/11"],
        )
        .await,
    ];
    // The default preset on every input; one with B-frames (parts then carry reordering
    // delays of their own) on the first.
    let runs = inputs
        .iter()
        .map(|input| (input, "ultrafast"))
        .chain([(&inputs[0], "veryfast")]);
    for (input, preset) in runs {
        let (work, output) = transcode(input, preset);
        let parts = work.path().join("parts");
        let bumper = sequence_headers(&parts.join("intro.mp4"));
        assert!(!bumper.is_empty());
        assert_eq!(
            sequence_headers(&parts.join("run-1/main.mp4")),
            bumper,
            "{} ({preset}): the main part's headers differ from the bumpers'",
            input.display()
        );
        // 2.5 s + 2 s + 2.5 s at 30 fps.
        assert_eq!(
            decode_every_frame(&output).await,
            210,
            "{} ({preset})",
            input.display()
        );
    }
}

/// Runs the worker's own `worker transcode` (a job's ffmpeg runs, no queue or database)
/// on `input` with the x264 `preset`; returns the work folder (parts under `parts/`) and
/// the joined output.
fn transcode(input: &std::path::Path, preset: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let output = work.path().join("processed.mp4");
    #[allow(clippy::disallowed_methods)] // the test runs the real binary
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("APP__PROCESSING__X264_PRESET", preset)
        .arg("transcode")
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&output)
        .arg("--work-dir")
        .arg(work.path().join("parts"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{} ({preset})", input.display());
    (work, output)
}

/// A flat green the BT.601 and BT.709 readings of the same samples tell apart (by 12, 23
/// and 4 in R, G, B), as do the two ranges (by about 10 each).
const GREEN: &str = "0x28B43C";
/// Largest difference, in any RGB channel, between the source and the output as shown.
const COLOUR_TOLERANCE: u8 = 5;

/// Each source's colours reach the output as a player shows them: the output (tagged BT.709
/// limited range) looks like the source read with its own matrix and range. Untagged HD is
/// read as BT.709, as players do; untagged SD as BT.601.
#[tokio::test]
async fn colours_come_out_as_the_source_shows_them_whatever_its_matrix_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let tags = |matrix: &'static str, range: &'static str| {
        [
            "-colorspace",
            matrix,
            "-color_primaries",
            if matrix == "bt709" {
                "bt709"
            } else {
                "smpte170m"
            },
            "-color_trc",
            if matrix == "bt709" {
                "bt709"
            } else {
                "smpte170m"
            },
            "-color_range",
            range,
        ]
    };
    // (name, size, swscale matrix and full range the samples are made with, tags)
    let cases: [(&str, &str, &str, bool, Vec<&str>); 4] = [
        ("untagged 1080p", "1920x1080", "bt709", false, vec![]),
        (
            "phone-like BT.709 portrait",
            "1080x1920",
            "bt709",
            false,
            tags("bt709", "tv").to_vec(),
        ),
        (
            "BT.601 SD",
            "640x480",
            "bt601",
            false,
            tags("smpte170m", "tv").to_vec(),
        ),
        (
            "full-range BT.601",
            "1280x720",
            "bt601",
            true,
            tags("bt470bg", "pc").to_vec(),
        ),
    ];
    for (name, size, matrix, full_range, tags) in cases {
        let range = if full_range { "pc" } else { "tv" };
        let format = if full_range { "yuvj420p" } else { "yuv420p" };
        let source = format!(
            "color=c={GREEN}:s={size}:r=30:d=2,format=rgb24,\
             scale=out_color_matrix={matrix}:out_range={range},format={format}"
        );
        let mut extra = tags.clone();
        extra.extend(["-pix_fmt", format]);
        let input = make_video(
            dir.path(),
            &format!("{}.mp4", name.replace(' ', "-")),
            &source,
            &extra,
        )
        .await;
        let (width, height) = size.split_once('x').unwrap();
        let centre = (
            width.parse::<u32>().unwrap() / 2,
            height.parse::<u32>().unwrap() / 2,
        );
        let shown = pixel_shown_as(&input, 1.0, centre, matrix, full_range).await;

        let (work, output) = transcode(&input, "ultrafast");
        // 2.5 s of intro, then the main part.
        let came_out = pixel_shown_as(&output, 3.5, (640, 360), "bt709", false).await;
        let differs = shown
            .iter()
            .zip(came_out)
            .map(|(a, b)| a.abs_diff(b))
            .max()
            .unwrap();
        assert!(
            differs <= COLOUR_TOLERANCE,
            "{name}: the source shows {shown:?}, the output {came_out:?}"
        );
        // Every part says the same about its colours, so the stream-copy join holds.
        let parts = work.path().join("parts");
        assert_eq!(
            sequence_headers(&parts.join("run-1/main.mp4")),
            sequence_headers(&parts.join("intro.mp4")),
            "{name}: the main part's headers differ from the bumpers'"
        );
        assert_eq!(decode_every_frame(&output).await, 210, "{name}");
        let probe = media::probe(&output, Duration::from_secs(30))
            .await
            .unwrap();
        let video = probe.video.unwrap();
        assert_eq!(
            (video.color_matrix.as_deref(), video.color_range.as_deref()),
            (Some("bt709"), Some("tv")),
            "{name}"
        );
    }
}

/// An upload whose cover art is its first stream: the encoded (and checked) stream is the
/// video, never the picture.
#[tokio::test]
async fn the_video_is_encoded_when_cover_art_comes_first() {
    let dir = tempfile::tempdir().unwrap();
    let video = make_video(
        dir.path(),
        "green.mp4",
        &format!("color=c={GREEN}:s=1280x720:r=30:d=2"),
        &[],
    )
    .await;
    let cover = dir.path().join("cover.png");
    let with_cover = dir.path().join("with-cover.mp4");
    let args = [
        "-y",
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=640x640",
        "-frames:v",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([cover.display().to_string()]);
    media::run_ffmpeg(&args.collect::<Vec<_>>(), Duration::from_secs(30))
        .await
        .unwrap();
    let args: Vec<String> = [
        "-y".to_owned(),
        "-i".to_owned(),
        cover.display().to_string(),
        "-i".to_owned(),
        video.display().to_string(),
        "-map".to_owned(),
        "0".to_owned(),
        "-map".to_owned(),
        "1".to_owned(),
        "-c:v:0".to_owned(),
        "png".to_owned(),
        "-c:v:1".to_owned(),
        "copy".to_owned(),
        "-disposition:v:0".to_owned(),
        "attached_pic".to_owned(),
        with_cover.display().to_string(),
    ]
    .into();
    media::run_ffmpeg(&args, Duration::from_secs(30))
        .await
        .unwrap();
    put_cover_art_first(&with_cover);
    let streams = ffprobe_streams(&with_cover);
    assert!(
        streams.starts_with("png,1\nh264,0"),
        "the test input's cover art does not come first: {streams}"
    );

    let (_work, output) = transcode(&with_cover, "ultrafast");
    let centre = pixel(&output, 3.5, 640, 360).await;
    assert!(
        centre[1] > 150 && centre[0] < 80,
        "the main part shows the cover art, not the video: {centre:?}"
    );
}

/// Each stream's codec and whether it is attached art, one line a stream ("png,1").
fn ffprobe_streams(video: &std::path::Path) -> String {
    #[allow(clippy::disallowed_methods)] // media::probe keeps only the first real video
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:stream_disposition=attached_pic",
            "-of",
            "csv=p=0",
        ])
        .arg(video)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The video stream's decoder configuration (SPS and PPS), as ffprobe dumps it.
fn sequence_headers(video: &std::path::Path) -> String {
    // backends::media parses ffprobe's JSON; the decoder configuration is only in its dump.
    #[allow(clippy::disallowed_methods)]
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_streams",
            "-show_data",
        ])
        .arg(video)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .skip_while(|line| !line.starts_with("extradata="))
        .skip(1)
        .take_while(|line| line.starts_with('0'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Decodes the whole file, failing at the first error (`-xerror`); returns the number of
/// frames.
async fn decode_every_frame(video: &std::path::Path) -> u64 {
    let sums = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let args = [
        "-y".to_owned(),
        "-xerror".to_owned(),
        "-i".to_owned(),
        video.display().to_string(),
        "-f".to_owned(),
        "framemd5".to_owned(),
        sums.display().to_string(),
    ];
    media::run_ffmpeg(&args, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{} does not decode cleanly: {e}", video.display()));
    std::fs::read_to_string(&sums)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .count() as u64
}
