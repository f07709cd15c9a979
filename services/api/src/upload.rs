//! Receiving an upload: the multipart body is streamed to a staging file while its size is
//! counted (never held in memory), then checked by content with ffprobe.

use std::path::Path;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::error::PayloadError;
use actix_web::{web, HttpRequest};
use backends::media::{self, MediaError, Probe};
use backends::settings::UploadSettings;
use futures_util::TryStreamExt;
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::multipart_limits::{BodyBudget, BudgetedBody, MAX_HELD};

/// Longest title accepted, in characters (as the OpenAPI document states).
pub const MAX_TITLE_CHARS: usize = 500;

const NOT_MULTIPART: &str =
    "Se esperaba un formulario multipart/form-data con los campos video_file y title.";
const NOT_MP4: &str = "El archivo no es un video MP4 válido (está dañado, incompleto o no es MP4).";

/// A fully received upload, staged on disk. The file is removed when this is dropped,
/// unless it was moved into storage first.
#[derive(Debug)]
pub struct StagedUpload {
    pub title: String,
    pub file: TempPath,
    pub size: u64,
}

pub fn too_large(max_bytes: u64) -> ApiError {
    ApiError::bad_request(format!(
        "El archivo supera el tamaño máximo permitido de {} MB.",
        megabytes(max_bytes)
    ))
}

/// `bytes` in decimal megabytes, as the API and the page state the upload limit: "100",
/// "50", "2.5".
pub fn megabytes(bytes: u64) -> String {
    let tenths = (bytes as f64 / 100_000.0).round() / 10.0;
    format!("{tenths}")
}

/// Reads the form, writing `video_file` to a file in `staging_dir`. Stops reading and
/// fails as soon as more than `max_bytes` have arrived, or the parser holds more than
/// [`MAX_HELD`] of framing (see [`crate::multipart_limits`]).
pub async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    staging_dir: &Path,
    max_bytes: u64,
) -> Result<StagedUpload, ApiError> {
    let (body, budget) = BudgetedBody::new(payload);
    // actix takes the boundary from its own parse of the Content-Type (quoted parameters
    // and all) and refuses a missing or foreign one on the first field.
    let form = Multipart::new(req.headers(), body);
    read_form(form, &budget, staging_dir, max_bytes)
        .await
        .map_err(|e| match e {
            FormError::Multipart(MultipartError::Payload(PayloadError::Overflow))
                if budget.exceeded() =>
            {
                ApiError::bad_request(format!(
                    "Los encabezados y separadores del formulario superan {} KiB.",
                    MAX_HELD / 1024
                ))
            }
            FormError::Multipart(_) => ApiError::bad_request(NOT_MULTIPART),
            FormError::Api(e) => e,
        })
}

/// A failure while reading the form: the parser's (explained by the caller, who knows the
/// framing watch), or an answer already decided.
enum FormError {
    Multipart(MultipartError),
    Api(ApiError),
}

impl From<ApiError> for FormError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<MultipartError> for FormError {
    fn from(e: MultipartError) -> Self {
        Self::Multipart(e)
    }
}

async fn read_form(
    mut form: Multipart,
    budget: &BodyBudget,
    staging_dir: &Path,
    max_bytes: u64,
) -> Result<StagedUpload, FormError> {
    let mut title: Option<String> = None;
    let mut staged: Option<(TempPath, u64)> = None;
    let mut received_total = 0u64;
    while let Some(field) = form.try_next().await? {
        match field.name().unwrap_or_default() {
            "video_file" => {
                if staged.is_some() {
                    return Err(
                        ApiError::bad_request("Envíe un solo archivo en video_file.").into(),
                    );
                }
                let room = max_bytes.saturating_sub(received_total);
                let (path, size) = stage_file(field, budget, staging_dir, room, max_bytes).await?;
                received_total += size;
                staged = Some((path, size));
            }
            "title" => {
                // A character is at most 4 bytes in UTF-8.
                let text = read_small(field, budget, 4 * MAX_TITLE_CHARS).await?;
                title = Some(text);
            }
            _ => {
                // Unknown fields are read and dropped, but count towards the size limit.
                let mut field = field;
                while let Some(chunk) = next_chunk(&mut field, budget).await? {
                    received_total += chunk.len() as u64;
                    if received_total > max_bytes {
                        return Err(too_large(max_bytes).into());
                    }
                }
            }
        }
    }
    let title = crate::routes::text_field(title, "title", MAX_TITLE_CHARS)?;
    let Some((file, size)) = staged else {
        return Err(ApiError::bad_request("Falta el archivo de video (video_file).").into());
    };
    if size == 0 {
        return Err(ApiError::bad_request("El archivo de video está vacío.").into());
    }
    Ok(StagedUpload { title, file, size })
}

/// The field's next chunk of content, reported to the body's budget.
async fn next_chunk(
    field: &mut Field,
    budget: &BodyBudget,
) -> Result<Option<web::Bytes>, MultipartError> {
    let chunk = field.try_next().await?;
    if let Some(chunk) = &chunk {
        budget.handed_out(chunk.len());
    }
    Ok(chunk)
}

async fn stage_file(
    mut field: Field,
    budget: &BodyBudget,
    staging_dir: &Path,
    room: u64,
    max_bytes: u64,
) -> Result<(TempPath, u64), FormError> {
    let staging_failed =
        |e: std::io::Error| ApiError::unavailable("No se pudo guardar el archivo.", e);
    tokio::fs::create_dir_all(staging_dir)
        .await
        .map_err(staging_failed)?;
    let temp = tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".mp4")
        .tempfile_in(staging_dir)
        .map_err(staging_failed)?;
    let (file, path) = temp.into_parts();
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut size = 0u64;
    while let Some(chunk) = next_chunk(&mut field, budget).await? {
        size += chunk.len() as u64;
        if size > room {
            // `path` is dropped: the partial file goes too.
            return Err(too_large(max_bytes).into());
        }
        file.write_all(&chunk).await.map_err(staging_failed)?;
    }
    file.flush().await.map_err(staging_failed)?;
    Ok((path, size))
}

async fn read_small(
    mut field: Field,
    budget: &BodyBudget,
    limit: usize,
) -> Result<String, FormError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = next_chunk(&mut field, budget).await? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > limit {
            return Err(ApiError::bad_request(format!(
                "El campo title admite como máximo {MAX_TITLE_CHARS} caracteres."
            ))
            .into());
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("El título no es texto UTF-8 válido.").into())
}

/// Checks the staged file by content: a complete ISO-BMFF (MP4) file with a video stream
/// and a readable duration, plus the optional duration and resolution rules.
pub async fn validate(path: &Path, settings: &UploadSettings) -> Result<Probe, ApiError> {
    let owned = path.to_owned();
    let complete = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(owned)?;
        media::mp4_boxes_complete(&mut file)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::unavailable("No se pudo leer el archivo recibido.", e))?;
    if !complete {
        return Err(ApiError::bad_request(NOT_MP4));
    }
    let probe = match media::probe(path, settings.probe_timeout).await {
        Ok(probe) => probe,
        Err(MediaError::Failed { .. } | MediaError::Report(_)) => {
            return Err(ApiError::bad_request(NOT_MP4))
        }
        Err(
            e @ (MediaError::Spawn { .. } | MediaError::Timeout { .. } | MediaError::Killed { .. }),
        ) => {
            return Err(ApiError::unavailable(
                "No se pudo validar el video en este momento; intente de nuevo.",
                e,
            ))
        }
    };
    check_probe(&probe, settings)?;
    Ok(probe)
}

/// The rules on what ffprobe found, separate so they can be tested on plain data.
pub fn check_probe(probe: &Probe, settings: &UploadSettings) -> Result<(), ApiError> {
    if !probe.is_mp4_family() {
        return Err(ApiError::bad_request("El archivo no es un video MP4."));
    }
    let Some(video) = &probe.video else {
        return Err(ApiError::bad_request(
            "El archivo no contiene una pista de video.",
        ));
    };
    let Some(duration) = probe.duration else {
        return Err(ApiError::bad_request(
            "No se pudo leer la duración del video.",
        ));
    };
    if settings.check_duration
        && (duration < settings.min_duration || duration > settings.max_duration)
    {
        return Err(ApiError::bad_request(format!(
            "La duración del video debe estar entre {} y {} segundos.",
            settings.min_duration.as_secs(),
            settings.max_duration.as_secs()
        )));
    }
    // Bounds on what a worker will have to decode: a huge picture, a frame rate in the
    // hundreds or a pile of streams is an attack on the worker tier, not a skill video.
    if !settings.max_frame.admits(video.width, video.height) {
        return Err(ApiError::bad_request(format!(
            "La imagen del video ({}×{}) supera el máximo de {}×{}.",
            video.width, video.height, settings.max_frame.width, settings.max_frame.height
        )));
    }
    if video
        .frame_rate
        .is_some_and(|fps| fps > f64::from(settings.max_frame_rate))
    {
        return Err(ApiError::bad_request(format!(
            "La velocidad del video supera el máximo de {} cuadros por segundo.",
            settings.max_frame_rate
        )));
    }
    if probe.streams > settings.max_streams {
        return Err(ApiError::bad_request(format!(
            "El archivo tiene más de {} pistas.",
            settings.max_streams
        )));
    }
    // The shorter side, so a portrait 1080×1920 phone video counts as 1080p.
    if settings.check_resolution && video.width.min(video.height) < settings.min_height {
        return Err(ApiError::bad_request(format!(
            "La resolución mínima es {}p.",
            settings.min_height
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::media::VideoStream;
    use std::time::Duration;

    fn settings() -> UploadSettings {
        backends::settings::Settings::load_from(&[], Vec::new())
            .unwrap()
            .upload
    }

    fn probe(seconds: f64, width: u32, height: u32) -> Probe {
        Probe {
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration: Some(Duration::from_secs_f64(seconds)),
            video: Some(VideoStream {
                codec: "h264".into(),
                width,
                height,
                pixel_format: None,
                frame_rate: Some(30.0),
                color_matrix: None,
                color_range: None,
            }),
            has_audio: false,
            streams: 1,
        }
    }

    #[test]
    fn pictures_frame_rates_and_stream_counts_past_the_limits_are_refused() {
        let rules = settings();
        check_probe(&probe(10.0, 3840, 2160), &rules).unwrap();
        check_probe(&probe(10.0, 2160, 3840), &rules).unwrap();
        assert!(check_probe(&probe(10.0, 7680, 4320), &rules).is_err());
        let mut fast = probe(10.0, 1280, 720);
        fast.video.as_mut().unwrap().frame_rate = Some(1000.0);
        assert!(check_probe(&fast, &rules).is_err());
        fast.video.as_mut().unwrap().frame_rate = Some(120.0);
        check_probe(&fast, &rules).unwrap();
        let mut crowded = probe(10.0, 1280, 720);
        crowded.streams = 9;
        assert!(check_probe(&crowded, &rules).is_err());
    }

    #[test]
    fn optional_rules_apply_only_when_enabled() {
        let mut rules = settings();
        let short_small = probe(5.0, 640, 360);
        check_probe(&short_small, &rules).unwrap();
        rules.check_duration = true;
        assert!(check_probe(&short_small, &rules).is_err());
        check_probe(&probe(30.0, 640, 360), &rules).unwrap();
        assert!(check_probe(&probe(61.0, 640, 360), &rules).is_err());
        rules.check_resolution = true;
        assert!(check_probe(&probe(30.0, 1280, 720), &rules).is_err());
        check_probe(&probe(30.0, 1920, 1080), &rules).unwrap();
        check_probe(&probe(30.0, 1080, 1920), &rules).unwrap();
    }

    #[test]
    fn containers_other_than_mp4_and_videos_without_picture_are_refused() {
        let rules = settings();
        let mut mkv = probe(10.0, 640, 360);
        mkv.format_name = "matroska,webm".into();
        assert!(check_probe(&mkv, &rules).is_err());
        let mut audio_only = probe(10.0, 640, 360);
        audio_only.video = None;
        assert!(check_probe(&audio_only, &rules).is_err());
        let mut no_duration = probe(10.0, 640, 360);
        no_duration.duration = None;
        assert!(check_probe(&no_duration, &rules).is_err());
    }
}
