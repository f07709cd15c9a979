//! The one description of a generated test video, for every clip the workspace makes:
//! the services' tests, the benchmarks, the capacity runs and the rehearsal. Only std here
//! (xtask builds it): it says which ffmpeg arguments make the clip, and each caller runs
//! ffmpeg its own way.

/// lavfi's `testsrc2` at 30 fps, H.264 yuv420p (x264 `preset`), optionally with temporal
/// noise (so the encoder cannot make it trivially small), a constant bitrate, BT.709 tags
/// and a 440 Hz tone in AAC.
#[derive(Clone, Debug)]
pub struct Clip {
    pub width: u32,
    pub height: u32,
    pub seconds: u32,
    /// Constant bitrate; `None` leaves x264's default rate control.
    pub kbps: Option<u32>,
    /// Strength of the noise filter (`alls`); 0 for none.
    pub noise: u32,
    pub preset: &'static str,
    pub audio: bool,
    /// Tags the stream BT.709 at limited range, as phones do; untagged otherwise, as many
    /// encoders leave HD.
    pub tagged_bt709: bool,
}

impl Clip {
    /// A plain clip: no noise, no sound, x264's default rate at `ultrafast`, untagged.
    pub fn plain(width: u32, height: u32, seconds: u32) -> Self {
        Self {
            width,
            height,
            seconds,
            kbps: None,
            noise: 0,
            preset: "ultrafast",
            audio: false,
            tagged_bt709: false,
        }
    }

    /// ffmpeg's arguments from the inputs to the muxer's options; the output path follows.
    pub fn ffmpeg_args(&self) -> Vec<String> {
        let Self {
            width,
            height,
            seconds,
            kbps,
            noise,
            preset,
            audio,
            tagged_bt709,
        } = self;
        let mut args: Vec<String> = vec![
            "-f".into(),
            "lavfi".into(),
            "-i".into(),
            format!("testsrc2=size={width}x{height}:rate=30:duration={seconds}"),
        ];
        if *audio {
            args.extend(["-f", "lavfi", "-i"].map(String::from));
            args.push(format!("sine=frequency=440:duration={seconds}"));
        }
        if *noise > 0 {
            args.extend(["-vf".into(), format!("noise=alls={noise}:allf=t")]);
        }
        args.extend(["-c:v", "libx264", "-preset", preset].map(String::from));
        if let Some(kbps) = kbps {
            args.extend([
                "-b:v".into(),
                format!("{kbps}k"),
                "-maxrate".into(),
                format!("{kbps}k"),
                "-bufsize".into(),
                format!("{}k", kbps * 2),
            ]);
        }
        args.extend(["-pix_fmt", "yuv420p"].map(String::from));
        if *tagged_bt709 {
            args.extend(
                [
                    "-colorspace",
                    "bt709",
                    "-color_primaries",
                    "bt709",
                    "-color_trc",
                    "bt709",
                    "-color_range",
                    "tv",
                ]
                .map(String::from),
            );
        }
        if *audio {
            args.extend(["-c:a", "aac", "-b:a", "128k", "-shortest"].map(String::from));
        }
        args.extend(["-movflags", "+faststart"].map(String::from));
        args
    }
}
