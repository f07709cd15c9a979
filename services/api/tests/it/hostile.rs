//! What a stranger might send: malformed multipart framing, media built to exhaust a
//! worker, files that are not what they claim, floods of requests. Each is refused with the
//! contract's answer and leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::sync::mpsc;

use crate::helpers::{
    detail, fixtures, peak_rss_kib, spawn_app, spawn_app_with, start_api, token_for, Options,
    TestApp,
};

const BOUNDARY: &str = "anbtestboundary";

/// Posts a hand-made multipart body to the upload route.
async fn post_raw(app: &TestApp, token: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}

fn part_header(name: &str, file_name: Option<&str>) -> String {
    let file = file_name.map_or(String::new(), |f| format!("; filename=\"{f}\""));
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n")
}

fn form_with_file(content: &[u8]) -> Vec<u8> {
    let mut body = (part_header("title", None) + "jugada\r\n").into_bytes();
    body.extend(part_header("video_file", Some("clip.mp4")).as_bytes());
    body.extend_from_slice(content);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn ffmpeg(args: &[&str], output: &Path) {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.insert(0, "-y".into());
    args.push(output.display().to_string());
    backends::media::run_ffmpeg(&args, Duration::from_secs(120))
        .await
        .expect("generate a hostile input");
}

/// An MP4 box: big-endian size, kind, payload.
fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = u32::try_from(payload.len() + 8)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(payload);
    b
}

#[tokio::test]
async fn malformed_framing_is_refused_before_it_can_fill_memory() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;

    // A part header that never ends.
    let mut unterminated = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"a.mp4\"\r\nX-Pad: "
    )
    .into_bytes();
    unterminated.extend(std::iter::repeat_n(b'a', 200_000));
    let response = post_raw(&app, &player.token, unterminated).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(detail(response).await.contains("encabezados"));

    // Ten thousand tiny parts.
    let tiny: String = (0..10_000)
        .map(|i| part_header(&format!("f{i}"), None) + "v\r\n")
        .collect::<String>()
        + format!("--{BOUNDARY}--\r\n").as_str();
    let response = post_raw(&app, &player.token, tiny.into_bytes()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(detail(response).await.contains("encabezados"));

    // A preamble that never reaches the first boundary.
    let response = post_raw(&app, &player.token, vec![b'p'; 100_000]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    app.assert_nothing_left_behind().await;
}

/// Sends an upload over a raw connection: `head`, then `filler` bytes with no newline, with
/// a Content-Length covering both; the status the API answers (it may answer before the
/// body ends, so the two run at once) and how long that took.
async fn upload_raw(
    base: &str,
    token: &str,
    content_type: &str,
    head: &[u8],
    filler: usize,
) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let connection = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = connection.into_split();
    let request = format!(
        "POST /api/videos/upload HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        head.len() + filler
    );
    let head = [request.as_bytes(), head].concat();
    let started = std::time::Instant::now();
    let sender = tokio::spawn(async move {
        writer.write_all(&head).await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = filler;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        std::io::Result::Ok(writer)
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(120), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = reader.read(&mut buffer).await.expect("read the answer");
            assert!(n > 0, "the API closed the connection without answering");
            answer.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .expect("the API did not answer within 120 s");
    let took = started.elapsed();
    sender.abort();
    let status_line = String::from_utf8_lossy(&answer);
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    (status, took)
}

/// Review 3, N1: two bodies got past the old framing guard, and actix buffered what followed
/// them (measured: the API grew by 35-40 MiB for 40 MiB sent). Each is refused at once now,
/// having held at most the multipart budget.
#[tokio::test]
async fn framing_the_old_guard_misread_is_refused_before_the_api_grows() {
    let db = testkit::TestDatabase::create().await;
    let storage = tempfile::tempdir().unwrap();
    let env = vec![
        ("APP__DATABASE__URL".to_owned(), db.url.clone()),
        (
            "APP__STORAGE__LOCAL_DIR".to_owned(),
            storage.path().display().to_string(),
        ),
    ];
    let (server, base) = start_api(&env).await;
    let token = token_for(&reqwest::Client::new(), &base).await;
    let before_mib = peak_rss_kib(server.id().unwrap()) / 1024;
    let cases = [
        (
            "a first line that only starts with the boundary",
            format!("multipart/form-data; boundary={BOUNDARY}"),
            format!("--{BOUNDARY}X\r\n\r\n"),
        ),
        (
            "a boundary inside a quoted parameter",
            format!("multipart/form-data; charset=\"x;boundary=evil\"; boundary={BOUNDARY}"),
            "--evil\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n".to_owned(),
        ),
    ];
    for (case, content_type, head) in cases {
        let (status, took) =
            upload_raw(&base, &token, &content_type, head.as_bytes(), 40 << 20).await;
        eprintln!("{case}: {status} after {took:?}");
        assert_eq!(status, 400, "{case}");
        assert!(
            took < Duration::from_secs(20),
            "{case}: answered after {took:?}"
        );
    }
    let grown_mib = (peak_rss_kib(server.id().unwrap()) / 1024).saturating_sub(before_mib);
    eprintln!("the API's peak RSS grew by {grown_mib} MiB");
    assert!(grown_mib < 30, "the API grew by {grown_mib} MiB");
    let videos: i64 = sqlx::query_scalar("SELECT count(*) FROM videos")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(videos, 0, "a video was recorded");
}

#[tokio::test]
async fn media_built_to_exhaust_a_worker_or_reach_elsewhere_is_refused() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    let dir = tempfile::tempdir().unwrap();

    let huge = dir.path().join("8k.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=7680x4320:rate=1:duration=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
        &huge,
    )
    .await;
    let fast = dir.path().join("1000fps.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x64:rate=1000:duration=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
        &fast,
    )
    .await;
    let sample = std::fs::read(&fixtures().await.sample).unwrap();
    let empty_moov = [
        mp4_box(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41"),
        mp4_box(b"moov", b""),
        mp4_box(b"mdat", &sample[..4096]),
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a 7680x4320 picture", std::fs::read(&huge).unwrap(), "7680×4320"),
        ("1000 frames per second", std::fs::read(&fast).unwrap(), "cuadros por segundo"),
        (
            "an HLS playlist renamed .mp4",
            b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n".to_vec(),
            "MP4",
        ),
        (
            "an ffconcat list renamed .mp4",
            b"ffconcat version 1.0\nfile '/etc/passwd'\n".to_vec(),
            "MP4",
        ),
        ("a zero-length moov box", empty_moov, "pista de video"),
    ];
    for (what, content, expected) in cases {
        let response = post_raw(&app, &player.token, form_with_file(&content)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
        let detail = detail(response).await;
        assert!(detail.contains(expected), "{what}: {detail}");
    }
    app.assert_nothing_left_behind().await;

    // An external data reference: the `url ` entry of `dref` no longer says "in this
    // file". The demuxer is told not to follow references, so the media is read from the
    // upload itself, or the file is refused; nothing else is opened either way.
    let mut dref = sample.clone();
    let at = dref
        .windows(4)
        .position(|w| w == b"url ")
        .expect("the sample has a data reference");
    dref[at + 4..at + 8].copy_from_slice(&[0, 0, 0, 0]);
    let response = post_raw(&app, &player.token, form_with_file(&dref)).await;
    assert!(
        [StatusCode::CREATED, StatusCode::BAD_REQUEST].contains(&response.status()),
        "external reference: {}",
        response.status()
    );
}

#[tokio::test]
async fn a_user_gets_429_past_their_uploads_in_flight_and_the_place_frees_when_one_ends() {
    let app = spawn_app().await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    // Two uploads that start and then wait for more bytes.
    let mut holds = Vec::new();
    for _ in 0..2 {
        let (send, receive) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let mut opening = (part_header("title", None) + "lenta\r\n").into_bytes();
        opening.extend(part_header("video_file", Some("clip.mp4")).as_bytes());
        opening.extend_from_slice(&[0u8; 1024]);
        send.send(Ok(opening)).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_stream_of(receive));
        let request = app
            .client
            .post(app.url("/api/videos/upload"))
            .bearer_auth(&player.token)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body)
            .send();
        holds.push((send, tokio::spawn(request)));
    }
    // Both are in the API once their files are being staged.
    let staging = app.storage_dir.as_ref().unwrap().path().join(".incoming");
    testkit::eventually("two uploads staging", Duration::from_secs(60), || async {
        let staged = std::fs::read_dir(&staging).map_or(0, |entries| entries.count());
        (staged == 2).then_some(())
    })
    .await;
    let refused = app
        .upload(&player.token, &fixtures().await.sample, "tercera")
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(detail(refused).await.contains("subidas en curso"));
    // Another user is not affected.
    let other = app.signup("Luis", "Paz", "Cali").await;
    app.upload_sample(&other.token, "de luis").await;

    // The client gives up on both: their places are free again.
    for (send, request) in holds {
        drop(send);
        let _ = request.await;
    }
    testkit::eventually("the places freed", Duration::from_secs(60), || async {
        let response = app
            .upload(&player.token, &fixtures().await.sample, "cuarta")
            .await;
        (response.status() == StatusCode::CREATED).then_some(())
    })
    .await;
}

/// A channel's receiving end as a stream of body chunks.
fn tokio_stream_of(
    mut receive: mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| receive.poll_recv(cx))
}

#[tokio::test]
async fn signups_logins_and_votes_are_rate_limited_per_address() {
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("APP__LIMITS__AUTH_PER_MINUTE", "3".into()),
            ("APP__LIMITS__VOTES_PER_MINUTE", "2".into()),
        ],
        ..Options::default()
    })
    .await;
    let login = |forwarded_for: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&serde_json::json!({"email": "nadie@example.com", "password": "x"}));
        if let Some(address) = forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        request.send()
    };
    let player = app.signup("Ana", "Ruiz", "Cali").await; // a signup and a login: 2 of 3
    assert_eq!(
        login(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let limited = login(None).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(detail(limited).await.contains("Demasiados intentos"));
    // The test client is the trusted proxy (127.0.0.1): the address it forwards counts.
    assert_eq!(
        login(Some("203.0.113.7")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let id = app.upload_sample(&player.token, "jugada").await;
    app.publish(&id).await;
    let vote = || {
        app.client
            .post(app.url(&format!("/api/public/videos/{id}/vote")))
            .bearer_auth(&player.token)
            .send()
    };
    assert_eq!(vote().await.unwrap().status(), StatusCode::OK);
    assert_eq!(vote().await.unwrap().status(), StatusCode::BAD_REQUEST); // already voted
    assert_eq!(
        vote().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn an_upload_that_trickles_in_is_cut_off_and_leaves_nothing() {
    let app = spawn_app_with(Options {
        extra_env: vec![("APP__UPLOAD__RECEIVE_TIMEOUT", "2s".into())],
        ..Options::default()
    })
    .await;
    let player = app.signup("Ana", "Ruiz", "Cali").await;
    // A byte every half second: never idle long enough for a read timeout.
    let mut opening = (part_header("title", None) + "goteo\r\n").into_bytes();
    opening.extend(part_header("video_file", Some("clip.mp4")).as_bytes());
    let trickle = futures_util::stream::iter(
        std::iter::once(opening).chain(std::iter::repeat_n(vec![0u8], 40)),
    )
    .then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let started = std::time::Instant::now();
    let response = app
        .client
        .post(app.url("/api/videos/upload"))
        .bearer_auth(&player.token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(detail(response).await.contains("tardó más de 2 segundos"));
    assert!(started.elapsed() < Duration::from_secs(15));
    app.assert_nothing_left_behind().await;
}
