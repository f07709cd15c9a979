//! `spawn_app()` and friends: a running API with its own database, storage and queue.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use backends::queue::JobQueue;
use backends::settings::Settings;
use backends::storage::ObjectStore;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::{eventually, free_port, videos, TestBackends, TestDatabase};
use tokio::sync::OnceCell;

pub const JWT_SECRET: &str = "integration-tests-secret-0123456789abcdef";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Arc<dyn JobQueue>,
    /// Local storage root, when the app uses local storage.
    pub storage_dir: Option<tempfile::TempDir>,
    /// The settings the app was built with, as variables: a worker built from them works
    /// on the same database, storage and queue.
    pub env: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Options {
    pub on_aws_emulator: bool,
    pub extra_env: Vec<(&'static str, String)>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let db = TestDatabase::create().await;
    let mut env: Vec<(String, String)> = vec![
        ("APP__DATABASE__URL".into(), db.url.clone()),
        ("APP__DATABASE__MIGRATE".into(), "false".into()),
        ("APP__SERVER__PORT".into(), "0".into()),
        ("APP__SERVER__WORKERS".into(), "2".into()),
        ("APP__SERVER__SHUTDOWN_TIMEOUT".into(), "1s".into()),
        ("APP__AUTH__JWT_SECRET".into(), JWT_SECRET.into()),
        ("APP__PUBLIC__RANKINGS_REFRESH".into(), "0s".into()),
        ("APP__PUBLIC__VIDEOS_REFRESH".into(), "0s".into()),
        ("APP__LOG__FILTER".into(), "warn".into()),
        // Every test client comes from 127.0.0.1: tests of the limits turn them back on.
        ("APP__LIMITS__AUTH_PER_MINUTE".into(), "0".into()),
        ("APP__LIMITS__VOTES_PER_MINUTE".into(), "0".into()),
    ];
    let backends = if options.on_aws_emulator {
        TestBackends::on_moto(5).await
    } else {
        TestBackends::local(&db, 5)
    };
    env.extend(backends.env.iter().cloned());
    let TestBackends {
        store,
        queue,
        storage_dir,
        ..
    } = backends;
    env.extend(
        options
            .extra_env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    let settings = Settings::load_from(&[], env.clone()).expect("test settings");
    let app = api::Application::build(settings).await.expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        db,
        store,
        queue,
        storage_dir,
        env,
    }
}

pub struct Player {
    pub id: String,
    pub token: String,
    pub email: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn signup(&self, first: &str, last: &str, city: &str) -> Player {
        let email = format!(
            "{}.{}@example.com",
            first.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let body = json!({
            "first_name": first, "last_name": last, "email": email,
            "password1": "Canasta2026", "password2": "Canasta2026",
            "city": city, "country": "Colombia",
        });
        let response = self
            .client
            .post(self.url("/api/auth/signup"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        let id = created["user_id"].as_str().unwrap().to_owned();
        let token = self.login(&email, "Canasta2026").await;
        Player { id, token, email }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let response = self
            .client
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn upload_form(&self, token: &str, form: Form) -> reqwest::Response {
        self.client
            .post(self.url("/api/videos/upload"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads `file` with `title`; returns the response.
    pub async fn upload(&self, token: &str, file: &Path, title: &str) -> reqwest::Response {
        let bytes = tokio::fs::read(file).await.unwrap();
        let part = Part::bytes(bytes)
            .file_name("clip.mp4")
            .mime_str("video/mp4")
            .unwrap();
        self.upload_form(
            token,
            Form::new()
                .text("title", title.to_owned())
                .part("video_file", part),
        )
        .await
    }

    /// Uploads the small sample video and returns its id.
    pub async fn upload_sample(&self, token: &str, title: &str) -> String {
        let response = self.upload(token, &fixtures().await.sample, title).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        let body: Value = response.json().await.unwrap();
        body["task_id"].as_str().unwrap().to_owned()
    }

    /// What the worker would do: store a processed file and mark the video processed.
    pub async fn publish(&self, video_id: &str) {
        let id: uuid::Uuid = video_id.parse().unwrap();
        let temp = tempfile::NamedTempFile::new().unwrap();
        tokio::fs::write(temp.path(), b"processed video bytes")
            .await
            .unwrap();
        let (_, path) = temp.keep().unwrap();
        self.store
            .put_file(&backends::job::processed_key(id), &path)
            .await
            .unwrap();
        sqlx::query("UPDATE videos SET status = 'processed', processed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// Messages waiting in the job queue (received ones are left where they were).
    pub async fn queued_jobs(&self) -> Vec<backends::job::VideoJob> {
        let received = self
            .queue
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        let mut jobs = Vec::new();
        for delivery in received {
            self.queue
                .change_visibility(&delivery.receipt, Duration::ZERO)
                .await
                .unwrap();
            jobs.push(backends::job::VideoJob::from_body(&delivery.body).unwrap());
        }
        jobs
    }

    /// Asserts that nothing of any upload remains: no row, no object, no job, no staged file.
    pub async fn assert_nothing_left_behind(&self) {
        assert_eq!(
            self.count_rows("videos").await,
            0,
            "a video row was left behind"
        );
        assert_eq!(
            self.store.list("").await.unwrap(),
            Vec::<String>::new(),
            "objects left behind"
        );
        assert!(
            self.queued_jobs().await.is_empty(),
            "a job was left in the queue"
        );
        if let Some(dir) = &self.storage_dir {
            let staging = dir.path().join(".incoming");
            let leftovers: Vec<PathBuf> = std::fs::read_dir(&staging)
                .map(|entries| entries.map(|e| e.unwrap().path()).collect())
                .unwrap_or_default();
            assert!(
                leftovers.is_empty(),
                "staged files left behind: {leftovers:?}"
            );
        }
    }
}

pub async fn detail(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error body");
    body["detail"].as_str().expect("a detail string").to_owned()
}

/// Test inputs, generated once per test process.
pub struct Fixtures {
    _dir: tempfile::TempDir,
    pub sample: PathBuf,
    pub audio_only: PathBuf,
    pub truncated: PathBuf,
    pub pdf: PathBuf,
    pub empty: PathBuf,
}

pub async fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceCell<Fixtures> = OnceCell::const_new();
    FIXTURES
        .get_or_init(|| async {
            let dir = tempfile::tempdir().unwrap();
            let sample = dir.path().join("sample.mp4");
            videos::mp4(&sample, 2, 320, 240, true).await;
            let audio_only = dir.path().join("audio.mp4");
            videos::audio_only_mp4(&audio_only, 2).await;
            let truncated = dir.path().join("truncated.mp4");
            let bytes = std::fs::read(&sample).unwrap();
            std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
            let pdf = dir.path().join("document.mp4");
            videos::junk(&pdf, 20_000, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n");
            let empty = dir.path().join("empty.mp4");
            std::fs::write(&empty, b"").unwrap();
            Fixtures {
                _dir: dir,
                sample,
                audio_only,
                truncated,
                pdf,
                empty,
            }
        })
        .await
}

/// The API binary on a free port with `env`, and its base URL once it answers.
pub async fn start_api(env: &[(String, String)]) -> (tokio::process::Child, String) {
    let port = free_port();
    #[allow(clippy::disallowed_methods)] // the test runs the real binary
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("APP__SERVER__PORT", port.to_string())
        .env("APP__AUTH__JWT_SECRET", JWT_SECRET)
        .env("APP__LOG__FILTER", "warn")
        .envs(
            std::env::var("EXPERIMENT_ARENAS")
                .ok()
                .map(|v| ("MALLOC_ARENA_MAX".to_owned(), v)),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually("the API to come up", Duration::from_secs(120), || async {
        client
            .get(format!("{base}/api/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
    })
    .await;
    (server, base)
}

/// The largest resident size the process has had, in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Signs a new player up and logs them in; returns the access token.
pub async fn token_for(client: &reqwest::Client, base: &str) -> String {
    let email = format!("ana.{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = json!({"first_name": "Ana", "last_name": "Ruiz", "email": email,
        "password1": "Canasta2026", "password2": "Canasta2026", "city": "Cali", "country": "Colombia"});
    let response = client
        .post(format!("{base}/api/auth/signup"))
        .json(&signup)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email, "password": "Canasta2026"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["access_token"].as_str().unwrap().to_owned()
}
