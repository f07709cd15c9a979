//! What the worker checks before it takes a job: the database and storage answer, the
//! work directory has room, and storage is the one the database's files are in.

use super::*;

impl Worker {
    /// Whether the database and storage answer now and the work directory has room for a
    /// job; the error says which does not.
    pub async fn check_dependencies(&self) -> Result<(), String> {
        let database = tokio::time::timeout(DEPENDENCY_CHECK_TIMEOUT, db::ping(&self.pool)).await;
        match database {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                backends::password_rotation::note(&e);
                return Err(format!("database: {e}"));
            }
            Err(_) => return Err("database: no answer".to_owned()),
        }
        let storage = tokio::time::timeout(
            DEPENDENCY_CHECK_TIMEOUT,
            self.store.exists(STORAGE_PROBE_KEY),
        )
        .await;
        match storage {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("storage: {e:#}")),
            Err(_) => return Err("storage: no answer".to_owned()),
        }
        let megabytes = |bytes: u64| bytes / 1_000_000;
        match free_bytes(self.scratch.path()) {
            Ok(free) if free >= self.min_free_bytes => Ok(()),
            Ok(free) => Err(format!(
                "work directory {}: {} MB free, a job may need {} MB",
                self.scratch.path().display(),
                megabytes(free),
                megabytes(self.min_free_bytes)
            )),
            Err(e) => Err(format!(
                "work directory {}: {e}",
                self.scratch.path().display()
            )),
        }
    }

    /// Waits until [`Self::check_dependencies`] passes, checking less and less often (one
    /// log line when a dependency goes down, one when all are back). False if shutdown came
    /// first.
    pub(crate) async fn wait_for_dependencies(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut pause = Duration::from_secs(1);
        let mut down_since: Option<Instant> = None;
        loop {
            match self.check_dependencies().await {
                Ok(()) => {
                    if let Some(since) = down_since {
                        tracing::info!(
                            down_s = since.elapsed().as_secs(),
                            "database, storage and work directory are back: taking jobs again"
                        );
                    }
                    return true;
                }
                Err(what) => {
                    if down_since.is_none() {
                        tracing::warn!(
                            error = what,
                            "a dependency is down: taking no jobs until it is back"
                        );
                        down_since = Some(Instant::now());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return false,
                    }
                    pause = (pause * 2).min(MAX_OUTAGE_PAUSE);
                }
            }
        }
    }

    /// Review 3, N4: a database restored onto another bucket (the old one deleted) has rows
    /// whose files are gone, and a processed one would be public without its file. Storage
    /// keeps an identity ([`STORAGE_ID_KEY`]) and the database the one its files were last
    /// checked against; when they differ (or either is missing: the first start of this
    /// release), every video that needs a file is checked and those without are failed,
    /// then the identity is recorded. Two workers starting together may both check: the
    /// check changes nothing the second time.
    pub async fn check_storage_identity(&self) -> anyhow::Result<()> {
        let recorded = db::storage_mark(&self.pool).await?;
        let found = self.read_storage_identity().await?;
        if found.is_some() && found == recorded {
            return Ok(());
        }
        let identity = match found {
            Some(identity) => identity,
            None => {
                let identity = Uuid::new_v4();
                let file = tempfile::NamedTempFile::new_in(self.scratch.path())?;
                std::fs::write(file.path(), identity.to_string())?;
                self.store
                    .put_file(STORAGE_ID_KEY, &file.into_temp_path())
                    .await?;
                identity
            }
        };
        let videos = db::videos_needing_files(&self.pool).await?;
        let mut lost = 0;
        for (id, processed) in &videos {
            let key = if *processed {
                processed_key(*id)
            } else {
                original_key(*id)
            };
            if !self.store.exists(&key).await?
                && db::fail_video(&self.pool, *id, &Failure::FilesLost.reason()).await?
            {
                lost += 1;
                tracing::warn!(video.id = %id, key, "video failed: its file is not in this storage");
            }
        }
        db::set_storage_mark(&self.pool, identity).await?;
        tracing::info!(
            storage = %identity,
            checked = videos.len(),
            failed = lost,
            "checked that the database's videos have their files in this storage"
        );
        Ok(())
    }

    pub(crate) async fn read_storage_identity(&self) -> anyhow::Result<Option<Uuid>> {
        if !self.store.exists(STORAGE_ID_KEY).await? {
            return Ok(None);
        }
        let copy = tempfile::NamedTempFile::new_in(self.scratch.path())?.into_temp_path();
        self.store.get_to_file(STORAGE_ID_KEY, &copy).await?;
        let text = std::fs::read_to_string(&copy)?;
        Ok(Some(text.trim().parse().with_context(|| {
            format!("{STORAGE_ID_KEY} holds {text:?}, not a UUID")
        })?))
    }
}
