//! Object storage for videos: one trait, a local-directory backend and an S3 backend.

use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;

use crate::settings::{AwsSettings, StorageBackend, StorageSettings};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("invalid object key {key:?}")]
    InvalidKey { key: String },
    #[error("storage failed on {key}")]
    Backend {
        key: String,
        #[source]
        source: anyhow::Error,
    },
}

impl StorageError {
    fn backend(key: &str, source: impl Into<anyhow::Error>) -> Self {
        Self::Backend {
            key: key.to_owned(),
            source: source.into(),
        }
    }
}

/// Where a client can fetch an object from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// A file on this machine, served by the API itself.
    LocalFile(PathBuf),
    /// A time-limited URL the client is redirected to.
    Presigned(String),
}

#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// Stores the file at `path` under `key`, replacing any object there. The file may be
    /// moved rather than copied: the caller must not use `path` afterwards.
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError>;
    /// Writes the object to `path`.
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StorageError>;
    /// Removes the object; removing a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    async fn exists(&self, key: &str) -> Result<bool, StorageError>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// How a client downloads the object as a file named `file_name`; `ttl` bounds
    /// presigned URLs.
    async fn download(
        &self,
        key: &str,
        ttl: Duration,
        file_name: &str,
    ) -> Result<Download, StorageError>;
    /// A URL that fetches the object without going through the API, when the backend has
    /// one (S3: presigned, computed locally without a request); `None` for local storage.
    /// With `download_as`, a browser saves what it fetches as that file instead of
    /// showing it (S3's `response-content-disposition`).
    async fn presigned_url(
        &self,
        key: &str,
        ttl: Duration,
        download_as: Option<&str>,
    ) -> Result<Option<String>, StorageError>;
}

/// Builds the configured backend.
pub async fn from_settings(
    storage: &StorageSettings,
    aws: &AwsSettings,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    Ok(match storage.backend {
        StorageBackend::Local => Arc::new(LocalStore::new(&storage.local_dir)),
        StorageBackend::S3 => {
            let bucket = storage.bucket.clone().unwrap_or_default();
            Arc::new(
                S3Store::new(s3_client(aws).await, bucket)
                    .expecting_owner(storage.expected_bucket_owner.clone()),
            )
        }
    })
}

/// An S3 client for the settings' region and endpoint (path-style when an endpoint is set,
/// as emulators need).
pub async fn s3_client(aws: &AwsSettings) -> aws_sdk_s3::Client {
    let shared = crate::aws_sdk_config(aws).await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(aws.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

// ---------------------------------------------------------------------------------- local

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let relative = Path::new(key);
        let plain = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
            });
        }
        Ok(self.root.join(relative))
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let target = self.path_of(key)?;
        let dir = target.parent().expect("a key path has a parent: the root");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| StorageError::backend(key, e))?;
        // A rename is atomic and free when the upload was staged on the same filesystem;
        // otherwise copy next to the target and rename, so readers never see half a file.
        if tokio::fs::rename(path, &target).await.is_ok() {
            return Ok(());
        }
        let partial = dir.join(format!(".{}.partial", uuid::Uuid::new_v4()));
        let copied = async {
            tokio::fs::copy(path, &partial).await?;
            tokio::fs::rename(&partial, &target).await
        }
        .await;
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(StorageError::backend(key, e));
        }
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let source = self.path_of(key)?;
        match tokio::fs::copy(&source, path).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
                key: key.to_owned(),
            }),
            Err(e) => Err(StorageError::backend(key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path_of(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::backend(key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        tokio::fs::try_exists(self.path_of(key)?)
            .await
            .map_err(|e| StorageError::backend(key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix_owned = prefix.to_owned();
        let keys = tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with('.') {
                        continue; // staging and partial files are not objects
                    }
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&root) {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if key.starts_with(&prefix_owned) {
                            keys.push(key);
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| StorageError::backend(prefix, e))?
        .map_err(|e| StorageError::backend(prefix, e))?;
        Ok(keys)
    }

    async fn download(
        &self,
        key: &str,
        _ttl: Duration,
        _file_name: &str,
    ) -> Result<Download, StorageError> {
        let path = self.path_of(key)?;
        if !self.exists(key).await? {
            return Err(StorageError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(Download::LocalFile(path))
    }

    async fn presigned_url(
        &self,
        _key: &str,
        _ttl: Duration,
        _download_as: Option<&str>,
    ) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

// ------------------------------------------------------------------------------------- s3

/// A Content-Disposition that makes a browser save the response as `file_name` (quotes
/// and backslashes dropped, as the quoted form cannot hold them plainly).
pub fn attachment(file_name: &str) -> String {
    let name: String = file_name
        .chars()
        .filter(|c| !matches!(c, '"' | '\\'))
        .collect();
    format!("attachment; filename=\"{name}\"")
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The account that must own the bucket; S3 refuses a call when another one does.
    /// Not sent with presigned downloads: the header would have to come from the
    /// player's browser.
    expected_owner: Option<String>,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self {
            client,
            bucket,
            expected_owner: None,
        }
    }

    /// Every call (but presigning) names `owner` as the bucket's expected owner.
    pub fn expecting_owner(self, owner: Option<String>) -> Self {
        Self {
            expected_owner: owner,
            ..self
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        // Streams from disk: the object is never held in memory.
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::backend(key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .key(key)
            .content_type("video/mp4")
            .body(body)
            .send()
            .await
            .map_err(|e| StorageError::backend(key, e))?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .key(key)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(StorageError::NotFound {
                    key: key.to_owned(),
                })
            }
            Err(e) => return Err(StorageError::backend(key, e)),
        };
        let mut body = response.body;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| StorageError::backend(key, e))?;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::backend(key, e))?
        {
            file.write_all(&chunk)
                .await
                .map_err(|e| StorageError::backend(key, e))?;
        }
        file.flush()
            .await
            .map_err(|e| StorageError::backend(key, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .key(key)
            .send()
            .await
            .map(drop)
            .map_err(|e| StorageError::backend(key, e))
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(StorageError::backend(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .set_expected_bucket_owner(self.expected_owner.clone())
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StorageError::backend(prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    async fn download(
        &self,
        key: &str,
        ttl: Duration,
        file_name: &str,
    ) -> Result<Download, StorageError> {
        if !self.exists(key).await? {
            return Err(StorageError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(Download::Presigned(
            self.presign(key, ttl, Some(file_name)).await?,
        ))
    }

    async fn presigned_url(
        &self,
        key: &str,
        ttl: Duration,
        download_as: Option<&str>,
    ) -> Result<Option<String>, StorageError> {
        self.presign(key, ttl, download_as).await.map(Some)
    }
}

impl S3Store {
    async fn presign(
        &self,
        key: &str,
        ttl: Duration,
        download_as: Option<&str>,
    ) -> Result<String, StorageError> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StorageError::backend(key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_response_content_disposition(download_as.map(attachment))
            .presigned(config)
            .await
            .map_err(|e| StorageError::backend(key, e))?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_keys_cannot_escape_the_root() {
        let store = LocalStore::new("/srv/videos");
        assert_eq!(
            store.path_of("original/a.mp4").unwrap(),
            PathBuf::from("/srv/videos/original/a.mp4")
        );
        for bad in [
            "",
            "../etc/passwd",
            "/etc/passwd",
            "original/../../x",
            "./x",
        ] {
            assert!(store.path_of(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
