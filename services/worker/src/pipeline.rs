//! What one job does to a video: the ffmpeg invocations that produce the contract's output
//! (bumpers encoded once, the main part encoded per video, the parts joined without
//! re-encoding), and the check of that output. Pure functions on plain data, so they are
//! tested without running anything.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use backends::media::{Probe, VideoStream};
use backends::settings::ProcessingSettings;

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
pub const FPS: u32 = 30;
/// Longest part of the original that is kept.
pub const MAX_MAIN: Duration = Duration::from_secs(30);
/// Longest accepted output: 30 s of video plus at most 5 s of bumpers.
pub const MAX_OUTPUT: Duration = Duration::from_secs(35);
/// Bumper background: ANB navy.
const BUMPER_COLOR: &str = "0x0B1F3A";
/// Watermark height and margin, in output pixels.
const WATERMARK_HEIGHT: u32 = 60;
const WATERMARK_MARGIN: u32 = 28;
/// Logo height on the bumpers.
const BUMPER_LOGO_HEIGHT: u32 = 240;

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// How the source's samples encode colour: what the main part's scaler must know to
/// bring them to the output's BT.709 matrix and limited range. Only the matrix and range
/// are converted, not primaries or transfer: a BT.2020 or HDR source keeps its wider
/// gamut's numbers and looks paler (tone mapping is not done). Converting costs as much as the rest of
/// the main part's work together (swscale leaves its fast path for every pixel), so it is
/// done only when the source differs from the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceColors {
    /// swscale's name for the source's YCbCr matrix (`in_color_matrix`).
    pub matrix: &'static str,
    pub full_range: bool,
}

impl SourceColors {
    /// What every part of the output is, and says it is (see [`encoder_args`]).
    pub const OUTPUT: Self = Self {
        matrix: "bt709",
        full_range: false,
    };

    /// Reads the stream's tags; an untagged stream is taken as players take it: HD (wider
    /// than 1024 or taller than 576) is BT.709, smaller is BT.601, and only the JPEG pixel
    /// formats are full range.
    pub fn of(video: &VideoStream) -> Self {
        let matrix = match video.color_matrix.as_deref() {
            Some("bt709") => "bt709",
            Some("bt470bg" | "smpte170m") => "bt601",
            Some("fcc") => "fcc",
            Some("smpte240m") => "smpte240m",
            Some("bt2020nc" | "bt2020c") => "bt2020",
            // Untagged, or a matrix swscale cannot read (RGB, YCgCo): guess from the size.
            _ if video.width > 1024 || video.height > 576 => "bt709",
            _ => "bt601",
        };
        let full_range = match video.color_range.as_deref() {
            Some("pc") => true,
            Some(_) => false,
            None => video
                .pixel_format
                .as_deref()
                .is_some_and(|format| format.starts_with("yuvj")),
        };
        Self { matrix, full_range }
    }

    /// The scale filter's options that convert these colours to the output's; none when
    /// they are the output's already.
    fn conversion(self) -> String {
        if self == Self::OUTPUT {
            return String::new();
        }
        let range = if self.full_range { "pc" } else { "tv" };
        format!(
            ":in_color_matrix={}:in_range={range}:out_color_matrix={}:out_range=tv",
            self.matrix,
            Self::OUTPUT.matrix
        )
    }
}

/// The main part's filter graph: input 0 is the original, input 1 the logo PNG.
///
/// The original's first real video stream (`V`: never cover art) is brought to a constant
/// 30 fps, scaled to fit 1280×720 without distortion (bilinear: for these mostly
/// downscaling ratios it looks the same as bicubic, and the softer result is cheaper to
/// encode) with its colours brought to the output's, padded (letterbox/pillarbox) with
/// square pixels, and watermarked. Rotated phone videos arrive upright: ffmpeg applies the
/// rotation before the graph.
pub fn main_graph(colors: SourceColors) -> String {
    let conversion = colors.conversion();
    format!(
        "[0:V:0]fps={FPS},scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=decrease:force_divisible_by=2:flags=bilinear{conversion},\
         pad={WIDTH}:{HEIGHT}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p[base];\
         [1:v]scale=-2:{WATERMARK_HEIGHT}[wm];\
         [base][wm]overlay=W-w-{WATERMARK_MARGIN}:H-h-{WATERMARK_MARGIN},format=yuv420p[out]"
    )
}

/// A bumper's filter graph: the logo (input 0) centred on ANB navy for `length`.
pub fn bumper_graph(length: Duration) -> String {
    format!(
        "color=c={BUMPER_COLOR}:s={WIDTH}x{HEIGHT}:r={FPS}:d={}[bg];\
         [0:v]scale=-2:{BUMPER_LOGO_HEIGHT}[logo];\
         [bg][logo]overlay=(W-w)/2:(H-h)/2,setsar=1,format=yuv420p[out]",
        seconds(length)
    )
}

/// The encoder settings every part shares. The parts are joined without re-encoding, so
/// they must carry identical sequence and picture headers: same parameters, and
/// `stitchable` so that x264 does not tune the headers to each part's content.
fn encoder_args(settings: &ProcessingSettings) -> Vec<OsString> {
    let max_rate = settings.max_bitrate_kbps;
    [
        "-map",
        "[out]",
        "-an",
        "-sn",
        "-dn",
        "-map_metadata",
        "-1",
        "-c:v",
        "libx264",
        "-preset",
        &settings.x264_preset,
        "-crf",
        &settings.crf.to_string(),
        "-maxrate",
        &format!("{max_rate}k"),
        "-bufsize",
        &format!("{}k", max_rate * 2),
        // Whatever the preset, keep the deblocking filter (no blocky edges) and make the
        // headers joinable. CABAC stays as the preset says: under the bitrate cap it buys
        // little SSIM for a quarter more encoding time ("ultrafast" drops it).
        "-x264-params",
        "deblock=0,0:stitchable=1",
        "-profile:v",
        "high",
        "-pix_fmt",
        "yuv420p",
        // Every part says the same about its colours (phone videos carry their own tags,
        // which would otherwise reach the main part's headers and not the bumpers').
        "-colorspace",
        "bt709",
        "-color_primaries",
        "bt709",
        "-color_trc",
        "bt709",
        "-color_range",
        "tv",
        "-r",
        &FPS.to_string(),
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// The filter graph runs on one thread. Its filters are cheap next to decoding and x264,
/// which already use every core; slicing them over more threads only takes cores from
/// those two: on 2 cores the main part of the bench's 1080p reference took 2.64 s this way
/// against 2.90 s with ffmpeg's default (a thread per core), the same frames either way.
const FILTER_THREADS: [&str; 2] = ["-filter_complex_threads", "1"];

/// Arguments for the ffmpeg run that turns `input` into the encoded main part `output`
/// (MP4, not yet joined). `-t` before `-i` trims on the input side, so nothing past 30 s
/// is even decoded.
pub fn main_args(
    input: &Path,
    colors: SourceColors,
    logo: &Path,
    output: &Path,
    settings: &ProcessingSettings,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-y".into()];
    args.extend(FILTER_THREADS.iter().map(OsString::from));
    args.extend(["-t".into(), seconds(MAX_MAIN).into()]);
    args.extend(backends::media::UPLOAD_INPUT.iter().map(OsString::from));
    args.extend(["-i".into(), input.as_os_str().to_owned()]);
    args.extend(["-i".into(), logo.as_os_str().to_owned()]);
    args.extend(["-filter_complex".into(), main_graph(colors).into()]);
    args.extend(encoder_args(settings));
    args.push(output.as_os_str().to_owned());
    args
}

/// Arguments for the ffmpeg run that encodes one bumper of `length` to `output`. Bumpers
/// are the same for every video: the worker encodes them once, at start-up.
pub fn bumper_args(
    length: Duration,
    logo: &Path,
    output: &Path,
    settings: &ProcessingSettings,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-y".into()];
    args.extend(FILTER_THREADS.iter().map(OsString::from));
    args.extend(["-i".into(), logo.as_os_str().to_owned()]);
    args.extend(["-filter_complex".into(), bumper_graph(length).into()]);
    args.extend(encoder_args(settings));
    args.push(output.as_os_str().to_owned());
    args
}

/// The concat demuxer's list of the parts, in order. Plain file names: the list sits in
/// the folder with the parts, and the demuxer's safe mode refuses anything else.
pub fn join_list(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| format!("file '{part}'\n"))
        .collect()
}

/// Arguments for the ffmpeg run that joins the parts listed in `list` into `output`
/// without re-encoding, with the index at the front so players can start at once.
pub fn join_args(list: &Path, output: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["-y", "-f", "concat", "-protocol_whitelist", "file", "-i"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(list.as_os_str().to_owned());
    args.extend(
        ["-map", "0:v", "-c", "copy", "-movflags", "+faststart"]
            .iter()
            .map(OsString::from),
    );
    args.push(output.as_os_str().to_owned());
    args
}

/// What must hold of the output before the video is marked processed; `bumpers` is how
/// long the intro and outro last together.
pub fn check_output(
    probe: &Probe,
    file_bytes: u64,
    max_bitrate_kbps: u32,
    bumpers: Duration,
) -> Result<(), String> {
    let video = probe
        .video
        .as_ref()
        .ok_or("the output has no video stream")?;
    if video.codec != "h264" {
        return Err(format!("the output is {} instead of H.264", video.codec));
    }
    if (video.width, video.height) != (WIDTH, HEIGHT) {
        return Err(format!(
            "the output is {}×{} instead of {WIDTH}×{HEIGHT}",
            video.width, video.height
        ));
    }
    if video.pixel_format.as_deref() != Some("yuv420p") {
        return Err(format!(
            "the output pixel format is {:?} instead of yuv420p",
            video.pixel_format
        ));
    }
    if probe.has_audio {
        return Err("the output has an audio track".to_owned());
    }
    if !probe.is_mp4_family() {
        return Err(format!("the output container is {}", probe.format_name));
    }
    let duration = probe
        .duration
        .ok_or("the output has no readable duration")?;
    // An input ffmpeg decodes to no frame at all leaves the bumpers alone.
    if duration <= bumpers + Duration::from_millis(10) {
        return Err(format!(
            "the output lasts {:.1} s: the bumpers with no video between them",
            duration.as_secs_f64()
        ));
    }
    // Frame timing can add a few milliseconds to an exactly 35 s result.
    if duration > MAX_OUTPUT + Duration::from_millis(100) {
        return Err(format!(
            "the output lasts {:.1} s, over {} s",
            duration.as_secs_f64(),
            MAX_OUTPUT.as_secs()
        ));
    }
    // The VBV cap holds the rate to max_bitrate over any stretch, plus at most one buffer
    // (bufsize = 2 × max_bitrate) that may be spent at the start; allow that and the
    // container's few percent on top. Over 30 s it is about +7 %, on a short clip more.
    let kbps = file_bytes as f64 * 8.0 / 1000.0 / duration.as_secs_f64();
    let max = f64::from(max_bitrate_kbps);
    let allowed = max * 1.05 + 2.0 * max / duration.as_secs_f64();
    if kbps > allowed {
        return Err(format!(
            "the output averages {kbps:.0} kbit/s, over {max_bitrate_kbps}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::media::VideoStream;

    fn settings() -> ProcessingSettings {
        backends::settings::Settings::load_from(&[], Vec::new())
            .unwrap()
            .processing
    }

    fn arg_after<'a>(args: &'a [OsString], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_str().unwrap())
            .collect()
    }

    fn main_args_for_test() -> Vec<OsString> {
        main_args(
            Path::new("in.mp4"),
            SourceColors::OUTPUT,
            Path::new("logo.png"),
            Path::new("main.mp4"),
            &settings(),
        )
    }

    #[test]
    fn trims_on_the_input_side_before_the_original_is_opened() {
        let args = main_args_for_test();
        let t = args.iter().position(|a| a == "-t").unwrap();
        let input = args.iter().position(|a| a == "in.mp4").unwrap();
        assert!(t < input, "-t must come before -i in.mp4");
        assert_eq!(args[t + 1], "30.000");
        assert_eq!(args.last().unwrap(), "main.mp4");
    }

    #[test]
    fn the_filter_graph_leaves_the_cores_to_the_decoder_and_x264() {
        let bumper = bumper_args(
            Duration::from_millis(2500),
            Path::new("logo.png"),
            Path::new("intro.mp4"),
            &settings(),
        );
        for args in [main_args_for_test(), bumper] {
            assert_eq!(arg_after(&args, "-filter_complex_threads"), ["1"]);
        }
    }

    #[test]
    fn encodes_h264_yuv420p_without_audio_under_the_bitrate_cap() {
        let args = main_args_for_test();
        assert_eq!(arg_after(&args, "-c:v"), ["libx264"]);
        assert_eq!(arg_after(&args, "-pix_fmt"), ["yuv420p"]);
        assert_eq!(arg_after(&args, "-maxrate"), ["4000k"]);
        assert_eq!(
            arg_after(&args, "-x264-params"),
            ["deblock=0,0:stitchable=1"]
        );
        assert_eq!(arg_after(&args, "-r"), ["30"]);
        assert!(args.iter().any(|a| a == "-an"));
        assert_eq!(arg_after(&args, "-map"), ["[out]"]);
    }

    #[test]
    fn bumpers_are_encoded_with_the_main_parts_encoder_settings() {
        let settings = settings();
        let bumper = bumper_args(
            Duration::from_millis(2500),
            Path::new("logo.png"),
            Path::new("intro.mp4"),
            &settings,
        );
        let main = main_args_for_test();
        let encoder = |args: &[OsString]| {
            let from = args.iter().position(|a| a == "-map").unwrap();
            args[from..args.len() - 1].to_vec()
        };
        assert_eq!(encoder(&bumper), encoder(&main));
        assert!(bumper_graph(Duration::from_millis(2500)).contains("d=2.500[bg]"));
    }

    #[test]
    fn main_graph_scales_pads_and_watermarks_with_square_pixels() {
        let graph = main_graph(SourceColors::OUTPUT);
        assert!(graph.starts_with("[0:V:0]fps=30"), "{graph}");
        assert!(graph.contains("scale=1280:720:force_original_aspect_ratio=decrease"));
        assert!(graph.contains("flags=bilinear"));
        assert!(graph.contains("pad=1280:720:(ow-iw)/2:(oh-ih)/2"));
        assert!(graph.contains("[base][wm]overlay=W-w-28:H-h-28"));
    }

    fn stream(
        width: u32,
        height: u32,
        format: &str,
        matrix: Option<&str>,
        range: Option<&str>,
    ) -> VideoStream {
        VideoStream {
            codec: "h264".into(),
            width,
            height,
            pixel_format: Some(format.into()),
            frame_rate: Some(30.0),
            color_matrix: matrix.map(Into::into),
            color_range: range.map(Into::into),
        }
    }

    #[test]
    fn colours_are_converted_only_when_the_source_differs_from_the_output() {
        let cases = [
            // Untagged HD is BT.709, as players take it: nothing to convert.
            (stream(1920, 1080, "yuv420p", None, None), None),
            (
                stream(1080, 1920, "yuv420p", Some("bt709"), Some("tv")),
                None,
            ),
            // Untagged SD is BT.601.
            (
                stream(640, 480, "yuv420p", None, None),
                Some("in_color_matrix=bt601:in_range=tv"),
            ),
            (
                stream(1920, 1080, "yuv420p", Some("smpte170m"), Some("tv")),
                Some("in_color_matrix=bt601:in_range=tv"),
            ),
            (
                stream(1280, 720, "yuvj420p", Some("bt470bg"), None),
                Some("in_color_matrix=bt601:in_range=pc"),
            ),
            (
                stream(1920, 1080, "yuv420p", Some("bt709"), Some("pc")),
                Some("in_color_matrix=bt709:in_range=pc"),
            ),
            (
                stream(3840, 2160, "yuv420p10le", Some("bt2020nc"), Some("tv")),
                Some("in_color_matrix=bt2020:in_range=tv"),
            ),
        ];
        for (video, expected) in cases {
            let graph = main_graph(SourceColors::of(&video));
            match expected {
                None => assert!(
                    !graph.contains("color_matrix") && !graph.contains("range="),
                    "{video:?}: {graph}"
                ),
                Some(conversion) => assert!(
                    graph.contains(&format!("{conversion}:out_color_matrix=bt709:out_range=tv")),
                    "{video:?}: {graph}"
                ),
            }
        }
    }

    #[test]
    fn the_join_copies_the_listed_parts_and_puts_the_index_first() {
        assert_eq!(
            join_list(&["intro.mp4", "main.mp4"]),
            "file 'intro.mp4'\nfile 'main.mp4'\n"
        );
        let args = join_args(Path::new("parts.txt"), Path::new("out.mp4"));
        assert_eq!(arg_after(&args, "-f"), ["concat"]);
        assert_eq!(arg_after(&args, "-c"), ["copy"]);
        assert_eq!(arg_after(&args, "-movflags"), ["+faststart"]);
        assert_eq!(args.last().unwrap(), "out.mp4");
    }

    fn probe(codec: &str, width: u32, height: u32, seconds: f64, audio: bool) -> Probe {
        Probe {
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration: Some(Duration::from_secs_f64(seconds)),
            video: Some(VideoStream {
                codec: codec.into(),
                width,
                height,
                pixel_format: Some("yuv420p".into()),
                frame_rate: Some(30.0),
                color_matrix: None,
                color_range: None,
            }),
            has_audio: audio,
            streams: 1 + usize::from(audio),
        }
    }

    #[test]
    fn output_check_accepts_the_spec_and_names_what_is_wrong() {
        let mb = 1_000_000;
        let bumpers = Duration::from_secs(5);
        check_output(
            &probe("h264", 1280, 720, 35.0, false),
            10 * mb,
            4000,
            bumpers,
        )
        .unwrap();
        // A short clip may spend the encoder's initial buffer: 3 MB in 5 s is 4.8 Mbit/s.
        check_output(&probe("h264", 1280, 720, 5.5, false), 3 * mb, 4000, bumpers).unwrap();
        let cases = [
            (probe("hevc", 1280, 720, 30.0, false), 10 * mb, "H.264"),
            (probe("h264", 1920, 1080, 30.0, false), 10 * mb, "1920×1080"),
            (probe("h264", 1280, 720, 30.0, true), 10 * mb, "audio"),
            (probe("h264", 1280, 720, 36.0, false), 10 * mb, "36.0 s"),
            (probe("h264", 1280, 720, 30.0, false), 20 * mb, "kbit/s"),
            (probe("h264", 1280, 720, 5.0, false), mb, "no video between"),
        ];
        for (probe, bytes, expected) in cases {
            let err = check_output(&probe, bytes, 4000, bumpers).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
