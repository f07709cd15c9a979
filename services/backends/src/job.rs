//! The job message: the only contract between the API and the worker. It is a wire format;
//! change it compatibly (add optional fields, never rename or remove one).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// "Process this uploaded video." Unknown fields are ignored so older workers can read
/// messages from newer APIs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoJob {
    pub video_id: Uuid,
    /// Object-storage key of the original upload.
    pub original_key: String,
    pub enqueued_at: DateTime<Utc>,
}

impl VideoJob {
    pub fn new(video_id: Uuid) -> Self {
        Self {
            video_id,
            original_key: original_key(video_id),
            enqueued_at: Utc::now(),
        }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a VideoJob always serialises")
    }

    pub fn from_body(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// Where an upload is stored.
pub fn original_key(video_id: Uuid) -> String {
    format!("original/{video_id}.mp4")
}

/// Where the worker stores the processed video.
pub fn processed_key(video_id: Uuid) -> String {
    format!("processed/{video_id}.mp4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_wire_and_tolerates_new_fields() {
        let job = VideoJob::new(Uuid::new_v4());
        assert_eq!(VideoJob::from_body(&job.to_body()).unwrap(), job);
        let with_extra = job.to_body().replacen('{', r#"{"priority":3,"#, 1);
        assert_eq!(VideoJob::from_body(&with_extra).unwrap(), job);
        assert!(VideoJob::from_body(r#"{"video_id":"nope"}"#).is_err());
    }

    #[test]
    fn keys_follow_the_storage_layout() {
        let id = Uuid::nil();
        assert_eq!(
            original_key(id),
            "original/00000000-0000-0000-0000-000000000000.mp4"
        );
        assert_eq!(
            processed_key(id),
            "processed/00000000-0000-0000-0000-000000000000.mp4"
        );
    }
}
