//! A worker over a test database, local storage and the PostgreSQL queue (or moto), plus
//! ways to put jobs in front of it and to look at what it produced.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backends::db::VideoStatus;
use backends::job::{original_key, processed_key, VideoJob};
use backends::media::{self, Probe};
use backends::queue::{Delivery, JobQueue};
use backends::settings::Settings;
use backends::storage::ObjectStore;
use testkit::{TestBackends, TestDatabase};
use uuid::Uuid;
use worker::Worker;

pub const MAX_RECEIVES: u32 = 3;

pub struct Harness {
    pub db: TestDatabase,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    pub worker: Arc<Worker>,
    pub storage_dir: Option<tempfile::TempDir>,
    pub env: Vec<(String, String)>,
    pub owner: Uuid,
}

/// Where storage and the queue live.
pub enum Topology<'a> {
    /// A folder, and the PostgreSQL queue.
    Local,
    /// S3 and SQS on the moto server every test shares.
    SharedMoto,
    /// S3 and SQS on a moto server of the test's own.
    Moto(&'a testkit::Moto),
}

pub fn base_env(db: &TestDatabase) -> Vec<(String, String)> {
    vec![
        ("APP__DATABASE__URL".into(), db.url.clone()),
        ("APP__DATABASE__MIGRATE".into(), "false".into()),
        ("APP__QUEUE__MAX_RECEIVES".into(), MAX_RECEIVES.to_string()),
        ("APP__WORKER__WAIT_TIME".into(), "1s".into()),
        ("APP__WORKER__RETRY_DELAY".into(), "0s".into()),
        ("APP__PROCESSING__X264_PRESET".into(), "ultrafast".into()),
        ("APP__LOG__FILTER".into(), "warn".into()),
    ]
}

impl Harness {
    pub async fn local() -> Self {
        Self::build(false, &[]).await
    }

    pub async fn on_aws_emulator() -> Self {
        Self::build(true, &[]).await
    }

    pub async fn build(aws: bool, extra: &[(&str, &str)]) -> Self {
        let topology = if aws {
            Topology::SharedMoto
        } else {
            Topology::Local
        };
        Self::build_on(topology, extra).await
    }

    pub async fn build_on(topology: Topology<'_>, extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        let mut env = base_env(&db);
        let backends = match topology {
            Topology::Local => TestBackends::local(&db, MAX_RECEIVES),
            Topology::SharedMoto => TestBackends::on_moto(MAX_RECEIVES).await,
            Topology::Moto(moto) => TestBackends::on(moto, MAX_RECEIVES).await,
        };
        env.extend(backends.env.iter().cloned());
        let TestBackends {
            store,
            queue,
            storage_dir,
            ..
        } = backends;
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Settings::load_from(&[], env.clone()).unwrap();
        let worker = Arc::new(Worker::build(&settings).await.unwrap());
        let owner = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, first_name, last_name, city, country)
             VALUES ($1, $2, 'x', 'Ana', 'Ruiz', 'Cali', 'Colombia')",
        )
        .bind(owner)
        .bind(format!("{owner}@example.com"))
        .execute(&db.pool)
        .await
        .unwrap();
        Self {
            db,
            store,
            queue,
            worker,
            storage_dir,
            env,
            owner,
        }
    }

    /// What the API does on upload: store the original, record the video, queue the job.
    pub async fn enqueue(&self, original: &Path) -> Uuid {
        let id = Uuid::new_v4();
        let copy = tempfile::NamedTempFile::new()
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        std::fs::copy(original, &copy).unwrap();
        self.store.put_file(&original_key(id), &copy).await.unwrap();
        sqlx::query("INSERT INTO videos (id, owner_id, title) VALUES ($1, $2, 'clip')")
            .bind(id)
            .bind(self.owner)
            .execute(&self.db.pool)
            .await
            .unwrap();
        self.queue.send(&VideoJob::new(id).to_body()).await.unwrap();
        id
    }

    pub async fn receive(&self) -> Delivery {
        let mut got = self
            .queue
            .receive(1, Duration::from_secs(5), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "no job in the queue");
        got.remove(0)
    }

    pub async fn status(&self, id: Uuid) -> (VideoStatus, Option<String>) {
        let video = backends::db::find_video(&self.db.pool, id)
            .await
            .unwrap()
            .expect("video row");
        (video.status, video.error)
    }

    /// Downloads the processed file and returns it with ffprobe's report.
    pub async fn processed(&self, id: Uuid) -> (tempfile::TempPath, Probe) {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        self.store
            .get_to_file(&processed_key(id), &path)
            .await
            .unwrap();
        let probe = media::probe(&path, Duration::from_secs(30)).await.unwrap();
        (path, probe)
    }

    /// The bodies in the dead-letter queue, which stay there, visible.
    pub async fn dead_letters(&self) -> Vec<String> {
        let dlq = self.queue.dead_letter_queue().unwrap();
        let got = dlq
            .receive(10, Duration::from_secs(2), Duration::from_secs(60))
            .await
            .unwrap();
        for delivery in &got {
            dlq.change_visibility(&delivery.receipt, Duration::ZERO)
                .await
                .unwrap();
        }
        got.into_iter().map(|d| d.body).collect()
    }

    pub async fn queue_is_empty(&self) -> bool {
        self.queue
            .receive(1, Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    }

    /// Runs the worker loop in the background; send `true` to stop it.
    pub fn run_worker(
        &self,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(self.worker.clone().run(stopped));
        (stop, handle)
    }

    pub async fn wait_for(&self, id: Uuid, wanted: VideoStatus, limit: Duration) {
        testkit::eventually(
            &format!("video {id} to be {}", wanted.as_str()),
            limit,
            || async { (self.status(id).await.0 == wanted).then_some(()) },
        )
        .await;
    }
}

/// Generates a test input with ffmpeg; `extra` goes between the inputs and the output.
pub async fn make_video(
    dir: &Path,
    name: &str,
    source: &str,
    extra: &[&str],
) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut args: Vec<String> = vec![
        "-y".into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        source.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    if !extra.contains(&"-pix_fmt") {
        args.extend(["-pix_fmt", "yuv420p"].map(String::from));
    }
    args.extend(["-c:v", "libx264", "-preset", "ultrafast"].map(String::from));
    args.push(path.display().to_string());
    media::run_ffmpeg(&args, Duration::from_secs(120))
        .await
        .unwrap();
    path
}

/// Moves the movie header's user data (where MP4 keeps cover art) before the tracks, so a
/// demuxer lists the cover art as the first stream, as some tagging tools leave files.
/// The boxes keep their sizes, so every offset into the media data stays true.
pub fn put_cover_art_first(video: &Path) {
    fn children(bytes: &[u8], from: usize, to: usize) -> Vec<(usize, usize, [u8; 4])> {
        let mut boxes = Vec::new();
        let mut at = from;
        while at + 8 <= to {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && at + size <= to,
                "an MP4 box size this helper cannot read"
            );
            boxes.push((at, size, bytes[at + 4..at + 8].try_into().unwrap()));
            at += size;
        }
        boxes
    }
    let mut bytes = std::fs::read(video).unwrap();
    let (moov, size, _) = children(&bytes, 0, bytes.len())
        .into_iter()
        .find(|(_, _, kind)| kind == b"moov")
        .expect("a movie box");
    let mut inside = children(&bytes, moov + 8, moov + size);
    assert!(
        inside.iter().any(|(_, _, kind)| kind == b"udta"),
        "no user data to move"
    );
    inside.sort_by_key(|(_, _, kind)| match kind {
        b"mvhd" => 0,
        b"udta" => 1,
        _ => 2,
    });
    let reordered: Vec<u8> = inside
        .iter()
        .flat_map(|(at, size, _)| bytes[*at..at + size].to_vec())
        .collect();
    bytes[moov + 8..moov + size].copy_from_slice(&reordered);
    std::fs::write(video, bytes).unwrap();
}

/// Marks `video` as recorded rotated by 90°, the way phones do: the frames stay landscape
/// and the track header's display matrix says how to turn them. (ffmpeg 5.1 has no option
/// to write one, so the matrix is patched in.)
pub fn rotate_90(video: &Path) {
    let mut bytes = std::fs::read(video).unwrap();
    let tkhd = bytes
        .windows(4)
        .position(|w| w == b"tkhd")
        .expect("a track header");
    assert_eq!(bytes[tkhd + 4], 0, "expected a version 0 track header");
    // a b u / c d v / x y w, 16.16 fixed point (u, v, w are 2.30).
    let matrix: [i32; 9] = [0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x4000_0000];
    for (i, value) in matrix.iter().enumerate() {
        let at = tkhd + 44 + i * 4;
        bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }
    std::fs::write(video, bytes).unwrap();
}

/// The RGB colour of one pixel of `video` at `seconds`.
pub async fn pixel(video: &Path, seconds: f64, x: u32, y: u32) -> [u8; 3] {
    rgb_at(video, seconds, x, y, "format=rgb24").await
}

/// The pixel at (`x`, `y`) as a player shows it, reading the samples with the YCbCr
/// `matrix` and range (`full_range`) given, whatever the file's tags say.
pub async fn pixel_shown_as(
    video: &Path,
    seconds: f64,
    (x, y): (u32, u32),
    matrix: &str,
    full_range: bool,
) -> [u8; 3] {
    let range = if full_range { "pc" } else { "tv" };
    let to_rgb = format!("scale=in_color_matrix={matrix}:in_range={range},format=rgb24");
    rgb_at(video, seconds, x, y, &to_rgb).await
}

async fn rgb_at(video: &Path, seconds: f64, x: u32, y: u32, to_rgb: &str) -> [u8; 3] {
    let out = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let args = [
        "-y".to_owned(),
        "-ss".to_owned(),
        format!("{seconds:.2}"),
        "-i".to_owned(),
        video.display().to_string(),
        "-frames:v".to_owned(),
        "1".to_owned(),
        "-vf".to_owned(),
        format!("{to_rgb},crop=1:1:{x}:{y}"),
        "-f".to_owned(),
        "rawvideo".to_owned(),
        "-pix_fmt".to_owned(),
        "rgb24".to_owned(),
        out.display().to_string(),
    ];
    media::run_ffmpeg(&args, Duration::from_secs(30))
        .await
        .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    [bytes[0], bytes[1], bytes[2]]
}

/// Asserts the processed output meets the contract, and returns its duration in seconds.
pub fn assert_meets_spec(probe: &Probe) -> f64 {
    let video = probe.video.as_ref().expect("a video stream");
    assert_eq!((video.width, video.height), (1280, 720));
    assert_eq!(video.codec, "h264");
    assert_eq!(video.pixel_format.as_deref(), Some("yuv420p"));
    assert!(!probe.has_audio, "the output has audio");
    assert!(probe.is_mp4_family());
    let seconds = probe.duration.unwrap().as_secs_f64();
    assert!(seconds <= 35.1, "{seconds} s");
    seconds
}
