//! The page in a real browser: Debian's chromium, headless, driven through chromedriver
//! (thirtyfour), against the real API, a real worker, PostgreSQL and local storage. A player
//! signs up, uploads with the progress bar, sees the video become "Procesado" without a
//! reload; a fan plays it, votes, and finds the player first in the rankings; the player
//! logs back in with the keyboard alone. A hostile title stays text. Screenshots of each page at phone and desktop widths land in
//! `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backends::settings::Settings;
use testkit::{eventually, free_port, videos};
use thirtyfour::prelude::*;

use crate::helpers::{spawn_app, spawn_app_with, Options};

const PHONE: (u32, u32) = (360, 800);
const DESKTOP: (u32, u32) = (1280, 900);
const WAIT: Duration = Duration::from_secs(60);

/// chromedriver on a free port, stopped (killed) when dropped.
struct Chromedriver {
    _process: tokio::process::Child,
    url: String,
}

impl Chromedriver {
    async fn start() -> Self {
        for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(program).is_file(),
                "{program} is missing: apt-get install chromium chromium-driver (cargo xtask ci does)"
            );
        }
        let port = free_port();
        #[allow(clippy::disallowed_methods)] // the browser's driver, not a media tool
        let process = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually("chromedriver to be ready", Duration::from_secs(20), || {
            let status = status.clone();
            async move {
                let body: serde_json::Value =
                    reqwest::get(&status).await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        Self {
            _process: process,
            url,
        }
    }

    /// A headless chromium on the profile folder `profile`, saving downloads in its
    /// `downloads/` without asking.
    async fn browser(&self, profile: &Path) -> WebDriver {
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary("/usr/bin/chromium").unwrap();
        caps.add_experimental_option(
            "prefs",
            serde_json::json!({
                "download.default_directory": profile.join("downloads"),
                "download.prompt_for_download": false,
            }),
        )
        .unwrap();
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--autoplay-policy=no-user-gesture-required",
            "--lang=es",
        ] {
            caps.add_arg(arg).unwrap();
        }
        caps.add_arg(&format!("--user-data-dir={}", profile.display()))
            .unwrap();
        WebDriver::new(&self.url, caps)
            .await
            .expect("a chromium session")
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = testkit::workspace_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The current page at phone and desktop widths, as `<name>-phone.png` and `-desktop.png`.
async fn screenshots(driver: &WebDriver, name: &str) {
    for (label, (width, height)) in [("phone", PHONE), ("desktop", DESKTOP)] {
        driver.set_window_rect(0, 0, width, height).await.unwrap();
        let path = screenshots_dir().join(format!("{name}-{label}.png"));
        driver.screenshot(&path).await.unwrap();
        if label == "phone" {
            // Nothing wider than the phone: no sideways scrolling.
            let overflow: i64 = driver
                .execute(
                    "return document.documentElement.scrollWidth - window.innerWidth;",
                    vec![],
                )
                .await
                .unwrap()
                .convert()
                .unwrap();
            assert!(overflow <= 0, "{name}: {overflow} px wider than a phone");
        }
    }
    driver
        .set_window_rect(0, 0, DESKTOP.0, DESKTOP.1)
        .await
        .unwrap();
}

async fn fill(driver: &WebDriver, css: &str, text: &str) {
    let field = driver.find(By::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn sign_up(driver: &WebDriver, base: &str, first: &str, last: &str, email: &str) {
    driver.goto(format!("{base}/registro")).await.unwrap();
    for (css, value) in [
        ("#first_name", first),
        ("#last_name", last),
        ("#email", email),
        ("#password1", "Canasta2026"),
        ("#password2", "Canasta2026"),
        ("#city", "Cali"),
        ("#country", "Colombia"),
    ] {
        fill(driver, css, value).await;
    }
    driver
        .find(By::Css("#registro button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the player's own page after sign-up", WAIT, || async {
        let url = driver.current_url().await.ok()?;
        url.path().ends_with("/mis-videos").then_some(())
    })
    .await;
}

/// The text of the first element `css` selects, if there is one yet.
async fn text_of(driver: &WebDriver, css: &str) -> Option<String> {
    driver.find(By::Css(css)).await.ok()?.text().await.ok()
}

async fn upload(driver: &WebDriver, title: &str, file: &Path) {
    fill(driver, "#titulo", title).await;
    driver
        .find(By::Css("#archivo"))
        .await
        .unwrap()
        .send_keys(file.display().to_string())
        .await
        .unwrap();
    driver
        .find(By::Css("#subir button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// A worker in this process on the app's database, storage and queue; send `true` to stop
/// it, then await its run.
async fn start_worker(
    app: &crate::helpers::TestApp,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let settings = Settings::load_from(&[], app.env.clone()).unwrap();
    let worker = Arc::new(worker::Worker::build(&settings).await.unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    (stop, tokio::spawn(worker.run(stopped)))
}

/// Keys typed into whatever has the focus, as a keyboard does.
async fn type_keys(driver: &WebDriver, keys: impl Into<TypingData>) {
    let focused = driver.active_element().await.unwrap();
    focused.send_keys(keys).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_uploads_and_a_fan_plays_votes_and_finds_the_player_ranked_first() {
    let app = spawn_app().await;
    let (stop_worker, worker_run) = start_worker(&app).await;
    let inputs = tempfile::tempdir().unwrap();
    let clip = inputs.path().join("jugada.mp4");
    videos::mp4(&clip, 3, 640, 360, true).await;

    let chromedriver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let driver = chromedriver.browser(profile.path()).await;
    let base = app.address.clone();

    async {
        driver.goto(format!("{base}/")).await.unwrap();
        let playable: String = driver
            .execute(
                r#"return document.createElement("video").canPlayType('video/mp4; codecs="avc1.64001f"');"#,
                vec![],
            )
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert!(!playable.is_empty(), "this chromium cannot play H.264 MP4");
        screenshots(&driver, "videos-empty").await;

        // The player.
        sign_up(&driver, &base, "Ana", "Pérez", "ana@example.com").await;
        driver
            .execute("window.sinRecargar = true;", vec![])
            .await
            .unwrap();
        upload(&driver, "Mi mejor clavada", &clip).await;
        eventually("the upload to be accepted", WAIT, || async {
            let notice = text_of(&driver, "#aviso").await?;
            notice.contains("Video subido").then_some(())
        })
        .await;
        let progress: f64 = driver
            .execute("return document.querySelector('#progreso').value;", vec![])
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert_eq!(progress, 100.0, "the progress bar did not reach the end");
        eventually("the video to become Procesado on the page", WAIT, || async {
            let status = text_of(&driver, "#mios tbody tr[data-status] td.status").await?;
            (status == "Procesado").then_some(())
        })
        .await;
        // The processed file is public: a plain link that a fan could open too.
        let href = driver
            .find(By::Css("#mios tbody tr[data-status=processed] a[download]"))
            .await
            .unwrap()
            .prop("href")
            .await
            .unwrap()
            .unwrap();
        let download = reqwest::get(&href).await.unwrap();
        assert_eq!(download.status(), 200, "{href}");
        assert_eq!(download.headers()["content-type"], "video/mp4", "{href}");
        let same_page: bool = driver
            .execute("return window.sinRecargar === true;", vec![])
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert!(same_page, "the page reloaded to show the new state");

        // A hostile title is shown as the text it is.
        let hostile = "<img src=x onerror=alert(1)>";
        upload(&driver, hostile, &clip).await;
        eventually("the hostile title in the list", WAIT, || async {
            let first = text_of(&driver, "#mios tbody tr td").await?;
            (first == hostile).then_some(())
        })
        .await;
        let images: i64 = driver
            .execute("return document.querySelectorAll('#mios img').length;", vec![])
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert_eq!(images, 0, "the title became markup");
        screenshots(&driver, "mis-videos").await;

        // The fan.
        driver.find(By::Css("#salir")).await.unwrap().click().await.unwrap();
        sign_up(&driver, &base, "Luis", "Gómez", "luis@example.com").await;
        driver.goto(format!("{base}/")).await.unwrap();
        eventually("the processed video on the public page", WAIT, || async {
            let cards = driver.find_all(By::Css("#videos .card")).await.ok()?;
            (!cards.is_empty()).then_some(())
        })
        .await;
        let plays: bool = driver
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 const v = document.querySelector('#videos video'); v.muted = true; \
                 v.play().then(() => done(true), () => done(false));",
                vec![],
            )
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert!(plays, "the browser refused to play the video");
        eventually("the video's time to advance", WAIT, || async {
            let time: f64 = driver
                .execute("return document.querySelector('#videos video').currentTime;", vec![])
                .await
                .ok()?
                .convert()
                .ok()?;
            (time > 0.5).then_some(())
        })
        .await;
        let vote = driver
            .find(By::XPath("//li[contains(@class,'card')][.//h2[text()='Mi mejor clavada']]//button"))
            .await
            .unwrap();
        vote.click().await.unwrap();
        eventually("the vote to be acknowledged", WAIT, || async {
            let label = vote.text().await.ok()?;
            (label == "Ya votaste").then_some(())
        })
        .await;
        // A second vote from a page that forgot the first (another tab, a cleared session) gets
        // the API's 400, and the page reads that status as "already voted".
        driver
            .execute("sessionStorage.removeItem('anb.voted'); location.reload();", vec![])
            .await
            .unwrap();
        let again = eventually("the vote button to be offered again", WAIT, || async {
            let button = driver
                .find(By::XPath("//li[contains(@class,'card')][.//h2[text()='Mi mejor clavada']]//button"))
                .await
                .ok()?;
            (button.text().await.ok()? == "Votar").then_some(button)
        })
        .await;
        again.click().await.unwrap();
        eventually("the second vote to be read as already voted", WAIT, || async {
            let label = again.text().await.ok()?;
            let disabled = again.attr("disabled").await.ok()?;
            (label == "Ya votaste" && disabled.is_some()).then_some(())
        })
        .await;
        screenshots(&driver, "videos").await;

        driver.goto(format!("{base}/rankings")).await.unwrap();
        eventually("the player first in the rankings", WAIT, || async {
            let first = driver
                .find(By::Css("#ranking tbody tr:first-child td:nth-child(2)"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (first == "Ana Pérez").then_some(())
        })
        .await;
        screenshots(&driver, "rankings").await;

        // With the keyboard alone: out, then back in as the player.
        driver.find(By::Css("#salir")).await.unwrap().click().await.unwrap();
        driver.goto(format!("{base}/ingresar")).await.unwrap();
        screenshots(&driver, "ingresar").await;
        let mut reached_email = false;
        for _ in 0..20 {
            let focused = driver.active_element().await.unwrap();
            if focused.attr("id").await.unwrap().as_deref() == Some("email") {
                reached_email = true;
                break;
            }
            type_keys(&driver, Key::Tab).await;
        }
        assert!(reached_email, "Tab never reaches the e-mail field");
        type_keys(&driver, "ana@example.com").await;
        type_keys(&driver, Key::Tab).await;
        type_keys(&driver, "Canasta2026").await;
        type_keys(&driver, Key::Enter).await;
        eventually("the player's page after a keyboard-only log-in", WAIT, || async {
            let url = driver.current_url().await.ok()?;
            url.path().ends_with("/mis-videos").then_some(())
        })
        .await;
    }
    .await;
    driver.quit().await.unwrap();
    stop_worker.send(true).unwrap();
    worker_run.await.unwrap().unwrap();
}

/// The one file that has finished arriving in the profile's downloads folder, once it has.
async fn downloaded(profile: &Path, what: &str) -> PathBuf {
    let folder = profile.join("downloads");
    eventually(&format!("{what} to be downloaded"), WAIT, || async {
        let files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .ok()?
            .map(|entry| entry.unwrap().path())
            .collect();
        match files.as_slice() {
            [file] if file.extension().is_some_and(|e| e == "mp4") => Some(file.clone()),
            _ => None,
        }
    })
    .await
}

/// Review 3, N2: on S3 storage "Descargar original" failed ("Failed to fetch": the script
/// fetched a redirect to storage, which the page's CSP blocks). Both downloads now save the
/// files' own bytes, with the page's CSP as strict as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_downloads_save_the_files_with_s3_storage() {
    let app = spawn_app_with(Options {
        on_aws_emulator: true,
        ..Options::default()
    })
    .await;
    let (stop_worker, worker_run) = start_worker(&app).await;
    let inputs = tempfile::tempdir().unwrap();
    let clip = inputs.path().join("jugada.mp4");
    videos::mp4(&clip, 3, 640, 360, true).await;

    let chromedriver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let driver = chromedriver.browser(profile.path()).await;
    let base = app.address.clone();
    async {
        sign_up(&driver, &base, "Ana", "Pérez", "ana@example.com").await;
        upload(&driver, "Mi mejor clavada", &clip).await;
        eventually(
            "the video to become Procesado on the page",
            WAIT,
            || async {
                let status = text_of(&driver, "#mios tbody tr[data-status] td.status").await?;
                (status == "Procesado").then_some(())
            },
        )
        .await;
        let row = driver
            .find(By::Css("#mios tbody tr[data-status=processed]"))
            .await
            .unwrap();
        let id: uuid::Uuid = row.attr("data-id").await.unwrap().unwrap().parse().unwrap();

        row.find(By::Css("button.link"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let original = downloaded(profile.path(), "the original").await;
        let notice = text_of(&driver, "#aviso").await.unwrap_or_default();
        assert!(!notice.contains("No se pudo"), "the page said: {notice}");
        assert_eq!(
            std::fs::read(&original).unwrap(),
            std::fs::read(&clip).unwrap(),
            "the original saved is not the file uploaded"
        );
        std::fs::remove_file(&original).unwrap();

        row.find(By::Css("a[download]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let processed = downloaded(profile.path(), "the processed video").await;
        let stored = inputs.path().join("stored.mp4");
        app.store
            .get_to_file(&backends::job::processed_key(id), &stored)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&processed).unwrap(),
            std::fs::read(&stored).unwrap(),
            "the processed video saved is not the one stored"
        );
        // The page is still the player's: both were downloads, not navigations away.
        let url = driver.current_url().await.unwrap();
        assert!(
            url.path().ends_with("/mis-videos"),
            "the page went to {url}"
        );
    }
    .await;
    driver.quit().await.unwrap();
    stop_worker.send(true).unwrap();
    worker_run.await.unwrap().unwrap();
}

/// Review 3, N13: `/api/docs/` runs under its own Content-Security-Policy (no inline
/// script, nothing from elsewhere), and Swagger UI still works under it: it loads the
/// OpenAPI document, lists the operations and is styled by its own stylesheet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_docs_work_under_their_content_security_policy() {
    let app = spawn_app().await;
    let page = app.get("/api/docs/", None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-security-policy"],
        api::startup::DOCS_CONTENT_SECURITY_POLICY
    );
    let chromedriver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let driver = chromedriver.browser(profile.path()).await;
    async {
        driver
            .goto(format!("{}/api/docs/", app.address))
            .await
            .unwrap();
        eventually("Swagger UI to list the operations", WAIT, || async {
            let operations = driver.find_all(By::Css(".opblock")).await.ok()?;
            (operations.len() >= 10).then_some(())
        })
        .await;
        let title_size: String = driver
            .execute(
                "return getComputedStyle(document.querySelector('.swagger-ui .info .title')).fontSize;",
                vec![],
            )
            .await
            .unwrap()
            .convert()
            .unwrap();
        assert_eq!(title_size, "36px", "Swagger UI's stylesheet did not apply");
    }
    .await;
    driver.quit().await.unwrap();
}

/// The page refuses an upload over the server's own limit before sending a byte, naming
/// the limit it was rendered with (`upload.max_bytes`, here 1 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_refuses_a_file_over_the_servers_limit_before_sending_it() {
    let app = spawn_app_with(Options {
        extra_env: vec![("APP__UPLOAD__MAX_BYTES", "1000000".into())],
        ..Options::default()
    })
    .await;
    let inputs = tempfile::tempdir().unwrap();
    let large = inputs.path().join("grande.mp4");
    std::fs::write(&large, vec![0u8; 1_500_000]).unwrap();
    let chromedriver = Chromedriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let driver = chromedriver.browser(profile.path()).await;
    let base = app.address.clone();
    async {
        sign_up(&driver, &base, "Ana", "Pérez", "ana@example.com").await;
        let label = text_of(&driver, "label[for=archivo]").await.unwrap();
        assert_eq!(label, "Video MP4 (hasta 1 MB)");
        upload(&driver, "Demasiado grande", &large).await;
        eventually("the page to refuse the file", WAIT, || async {
            let notice = text_of(&driver, "#aviso").await?;
            (notice == "El video supera los 1 MB.").then_some(())
        })
        .await;
    }
    .await;
    driver.quit().await.unwrap();
    assert_eq!(app.count_rows("videos").await, 0, "the upload was sent");
}
