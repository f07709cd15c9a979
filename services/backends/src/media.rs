//! The one place that runs ffmpeg and ffprobe: argument lists (never a shell), no stdin,
//! a timeout, killed when dropped, and the tail of stderr in every error. They parse
//! untrusted files, so they get nothing they do not need: an empty environment (the
//! services' hold the database URL and the token key), only the `file` protocol and the
//! MP4/MOV demuxer for the upload (see [`UPLOAD_INPUT`]), and a cap on their memory.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

/// How much of a failing tool's stderr goes into the error.
const STDERR_TAIL_BYTES: usize = 600;

/// Options placed before an uploaded file's `-i`: the MP4/MOV demuxer only (an HLS
/// playlist or ffconcat list renamed `.mp4` is not followed), local files only, and no
/// external data references.
pub const UPLOAD_INPUT: [&str; 6] = [
    "-f",
    "mov",
    "-protocol_whitelist",
    "file",
    "-enable_drefs",
    "0",
];

/// Address space a tool may map (`prlimit --as`): far above what a 30 s job needs (see
/// `cargo xtask bench worker`), far below what would push a 2 GiB instance into swap.
const FFMPEG_ADDRESS_SPACE: u64 = 3 << 30;
const FFPROBE_ADDRESS_SPACE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot run {program} (is it installed?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} took longer than {timeout:?}")]
    Timeout {
        program: &'static str,
        timeout: Duration,
    },
    #[error("{program} failed ({status}): {stderr_tail}")]
    Failed {
        program: &'static str,
        status: String,
        stderr_tail: String,
    },
    /// Ended by a signal (the OOM killer, an operator): says nothing about the input.
    #[error("{program} was killed ({status}): {stderr_tail}")]
    Killed {
        program: &'static str,
        status: String,
        stderr_tail: String,
    },
    #[error("cannot understand ffprobe's report: {0}")]
    Report(#[from] serde_json::Error),
}

/// Runs ffmpeg with `args`, killing it after `timeout`.
pub async fn run_ffmpeg<I, S>(args: I, timeout: Duration) -> Result<(), MediaError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut full: Vec<std::ffi::OsString> = ["-nostdin", "-hide_banner", "-loglevel", "error"]
        .iter()
        .map(Into::into)
        .collect();
    full.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    run("ffmpeg", FFMPEG_ADDRESS_SPACE, &full, timeout)
        .await
        .map(drop)
}

async fn run(
    program: &'static str,
    address_space: u64,
    args: &[std::ffi::OsString],
    timeout: Duration,
) -> Result<Vec<u8>, MediaError> {
    // prlimit (util-linux) sets the limit and then becomes the tool (it execs it), so the
    // child killed on timeout is the tool itself; the workspace forbids the unsafe code a
    // pre_exec setrlimit would take.
    #[allow(clippy::disallowed_methods)] // this module is where media tools are spawned
    let child = tokio::process::Command::new("prlimit")
        .arg(format!("--as={address_space}"))
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        // glibc reserves 64 MiB of address space per malloc arena, up to 8 per core: on a
        // large machine that alone would pass the cap.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MediaError::Spawn { program, source })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| MediaError::Timeout { program, timeout })?
        .map_err(|source| MediaError::Spawn { program, source })?;
    if !output.status.success() {
        let (status, stderr_tail) = (output.status.to_string(), tail(&output.stderr));
        return Err(match output.status.code() {
            // prlimit could not run the tool (not installed, not executable): a fault of
            // this machine, never of the input.
            Some(code) if is_exec_failure(code) => MediaError::Spawn {
                program,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, stderr_tail),
            },
            Some(_) => MediaError::Failed {
                program,
                status,
                stderr_tail,
            },
            None => MediaError::Killed {
                program,
                status,
                stderr_tail,
            },
        });
    }
    Ok(output.stdout)
}

/// prlimit's exit codes when it cannot exec the tool (util-linux: 126 cannot execute,
/// 127 not found). ffmpeg and ffprobe themselves exit with 1 (or the error's number).
fn is_exec_failure(code: i32) -> bool {
    matches!(code, 126 | 127)
}

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_owned()
}

/// What ffprobe says about a media file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// ffprobe's container name list, e.g. "mov,mp4,m4a,3gp,3g2,mj2".
    pub format_name: String,
    pub duration: Option<Duration>,
    /// The first real video stream (cover art is not video).
    pub video: Option<VideoStream>,
    pub has_audio: bool,
    /// Streams of every kind (video, audio, data, subtitles).
    pub streams: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VideoStream {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub pixel_format: Option<String>,
    /// Frames per second on average (frames over duration), when ffprobe can tell.
    pub frame_rate: Option<f64>,
    /// The YCbCr matrix the stream is tagged with (ffprobe's `color_space`: "bt709",
    /// "smpte170m", …); none when untagged.
    pub color_matrix: Option<String>,
    /// ffprobe's `color_range`: "tv" (limited) or "pc" (full); none when untagged.
    pub color_range: Option<String>,
}

impl Probe {
    /// MP4 and its ISO-BMFF siblings (MOV, M4V, 3GP) all report this demuxer.
    pub fn is_mp4_family(&self) -> bool {
        self.format_name.split(',').any(|f| f == "mp4")
    }
}

/// Probes `path` with ffprobe.
pub async fn probe(path: &Path, timeout: Duration) -> Result<Probe, MediaError> {
    let args: Vec<std::ffi::OsString> = [
        OsStr::new("-v"),
        OsStr::new("error"),
        OsStr::new("-hide_banner"),
        OsStr::new("-print_format"),
        OsStr::new("json"),
        OsStr::new("-show_format"),
        OsStr::new("-show_streams"),
    ]
    .into_iter()
    .chain(UPLOAD_INPUT.iter().map(OsStr::new))
    .chain([OsStr::new("-i"), path.as_os_str()])
    .map(|a| a.to_os_string())
    .collect();
    let stdout = run("ffprobe", FFPROBE_ADDRESS_SPACE, &args, timeout).await?;
    parse_probe(&stdout)
}

#[derive(Deserialize)]
struct RawProbe {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    pix_fmt: Option<String>,
    avg_frame_rate: Option<String>,
    color_space: Option<String>,
    color_range: Option<String>,
    #[serde(default)]
    disposition: std::collections::HashMap<String, i64>,
}

/// ffprobe's "30000/1001"; "0/0" (unknown) is none.
fn ratio(text: &str) -> Option<f64> {
    let (num, den) = text.split_once('/')?;
    let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
    (den > 0.0 && num > 0.0).then(|| num / den)
}

/// ffprobe writes "unknown" for a property the stream leaves untagged.
fn tagged(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| v != "unknown" && !v.is_empty())
}

#[derive(Deserialize)]
struct RawFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

/// Turns ffprobe's JSON report into a [`Probe`].
pub fn parse_probe(json: &[u8]) -> Result<Probe, MediaError> {
    let raw: RawProbe = serde_json::from_slice(json)?;
    let format = raw.format.unwrap_or(RawFormat {
        format_name: None,
        duration: None,
    });
    let duration = format
        .duration
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .map(Duration::from_secs_f64);
    let video = raw
        .streams
        .iter()
        .filter(|s| s.codec_type.as_deref() == Some("video"))
        .find(|s| s.disposition.get("attached_pic").copied().unwrap_or(0) == 0)
        .and_then(|s| {
            Some(VideoStream {
                codec: s.codec_name.clone().unwrap_or_default(),
                width: s.width?,
                height: s.height?,
                pixel_format: s.pix_fmt.clone(),
                frame_rate: s.avg_frame_rate.as_deref().and_then(ratio),
                color_matrix: tagged(&s.color_space),
                color_range: tagged(&s.color_range),
            })
        });
    Ok(Probe {
        format_name: format.format_name.unwrap_or_default(),
        duration,
        video,
        has_audio: raw
            .streams
            .iter()
            .any(|s| s.codec_type.as_deref() == Some("audio")),
        streams: raw.streams.len(),
    })
}

/// Walks the top-level ISO-BMFF boxes of `reader` and reports whether they add up to the
/// file. ffprobe happily reads a file cut short after its `moov` box (the index is intact,
/// the media data is not), so truncation is caught here.
pub fn mp4_boxes_complete(reader: &mut (impl Read + Seek)) -> std::io::Result<bool> {
    let len = reader.seek(SeekFrom::End(0))?;
    let mut offset = 0u64;
    let mut saw_moov = false;
    while offset < len {
        reader.seek(SeekFrom::Start(offset))?;
        let mut header = [0u8; 16];
        if len - offset < 8 {
            return Ok(false);
        }
        reader.read_exact(&mut header[..8])?;
        let size32 = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = &header[4..8];
        saw_moov |= kind == b"moov";
        let size = match size32 {
            0 => len - offset, // "extends to the end of the file"
            1 => {
                if len - offset < 16 {
                    return Ok(false);
                }
                reader.read_exact(&mut header[8..16])?;
                let mut large = [0u8; 8];
                large.copy_from_slice(&header[8..16]);
                u64::from_be_bytes(large)
            }
            n => u64::from(n),
        };
        if size < 8 || offset.checked_add(size).is_none_or(|end| end > len) {
            return Ok(false);
        }
        offset += size;
    }
    Ok(saw_moov)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A missing tool is this machine's fault, never the upload's: the API answers 503,
    /// not "not a valid MP4" (a web instance booted without ffprobe did exactly that).
    #[tokio::test]
    async fn a_tool_that_is_not_installed_is_a_spawn_error() {
        let result = run(
            "anb-no-such-media-tool",
            1 << 30,
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(result, Err(MediaError::Spawn { .. })),
            "{result:?}"
        );
    }

    fn mp4_box(kind: &[u8; 4], payload_len: usize) -> Vec<u8> {
        let mut b = u32::try_from(payload_len + 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(kind);
        b.extend(std::iter::repeat_n(0u8, payload_len));
        b
    }

    #[test]
    fn box_walk_accepts_whole_files_and_rejects_cut_ones() {
        let mut file = mp4_box(b"ftyp", 16);
        file.extend(mp4_box(b"moov", 100));
        file.extend(mp4_box(b"mdat", 1000));
        assert!(mp4_boxes_complete(&mut Cursor::new(file.clone())).unwrap());
        file.truncate(file.len() - 10);
        assert!(!mp4_boxes_complete(&mut Cursor::new(file)).unwrap());
        let no_moov = [mp4_box(b"ftyp", 16), mp4_box(b"mdat", 10)].concat();
        assert!(!mp4_boxes_complete(&mut Cursor::new(no_moov)).unwrap());
        assert!(!mp4_boxes_complete(&mut Cursor::new(b"%PDF-1.4 hello".to_vec())).unwrap());
        assert!(!mp4_boxes_complete(&mut Cursor::new(Vec::new())).unwrap());
    }

    #[test]
    fn probe_report_ignores_cover_art_and_reads_duration() {
        let json = br#"{"streams":[
            {"codec_type":"audio","codec_name":"aac"},
            {"codec_type":"video","codec_name":"mjpeg","width":300,"height":300,
             "disposition":{"attached_pic":1}}],
            "format":{"format_name":"mov,mp4,m4a,3gp,3g2,mj2","duration":"12.500000"}}"#;
        let probe = parse_probe(json).unwrap();
        assert!(probe.is_mp4_family());
        assert!(probe.has_audio);
        assert_eq!(probe.video, None);
        assert_eq!(probe.duration, Some(Duration::from_millis(12_500)));

        let json = br#"{"streams":[{"codec_type":"video","codec_name":"h264","width":1280,
            "height":720,"pix_fmt":"yuv420p","avg_frame_rate":"30000/1001"}],
            "format":{"format_name":"matroska,webm"}}"#;
        let probe = parse_probe(json).unwrap();
        assert!(!probe.is_mp4_family());
        assert_eq!(probe.duration, None);
        assert_eq!(probe.streams, 1);
        let video = probe.video.unwrap();
        assert_eq!(video.height, 720);
        assert!((video.frame_rate.unwrap() - 29.97).abs() < 0.01);
        assert_eq!(video.color_matrix, None);
        assert_eq!(ratio("0/0"), None);

        let json = br#"{"streams":[{"codec_type":"video","codec_name":"h264","width":1920,
            "height":1080,"color_space":"bt709","color_range":"unknown"}]}"#;
        let video = parse_probe(json).unwrap().video.unwrap();
        assert_eq!(video.color_matrix.as_deref(), Some("bt709"));
        assert_eq!(video.color_range, None);
    }

    #[test]
    fn stderr_tail_keeps_the_end() {
        let long = "x".repeat(2000) + "the real error";
        let t = tail(long.as_bytes());
        assert!(t.ends_with("the real error"));
        assert!(t.len() <= STDERR_TAIL_BYTES);
    }
}
