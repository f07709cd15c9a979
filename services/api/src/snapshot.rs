//! Read-mostly public data served from memory. Rankings and the public video list are read
//! far more often than they change, so each is loaded by one query at most once per refresh
//! interval and served from a snapshot in between: readers see data at most that old
//! (`public.rankings_refresh`, default 30 s, and `public.videos_refresh`, default 5 s;
//! never over 60 s).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ApiError;

/// After a reload fails, the last good copy is served for this long before the next try,
/// so an outage costs one slow query per interval, not one per request.
const AFTER_A_FAILED_RELOAD: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Snapshot<T> {
    refresh_interval: Duration,
    latest: RwLock<Option<(Instant, Arc<T>)>>,
    /// Held while one request reloads, so a burst of readers runs one query, not many.
    reloading: tokio::sync::Mutex<()>,
    /// When the last reload failed, if it did.
    failed_at: RwLock<Option<Instant>>,
}

impl<T> Snapshot<T> {
    pub fn new(refresh_interval: Duration) -> Self {
        Self {
            refresh_interval,
            latest: RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
            failed_at: RwLock::new(None),
        }
    }

    fn current(&self) -> Option<(Instant, Arc<T>)> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        latest.as_ref().map(|(at, value)| (*at, value.clone()))
    }

    fn fresh(&self) -> Option<Arc<T>> {
        self.current()
            .filter(|(at, _)| at.elapsed() < self.refresh_interval)
            .map(|(_, value)| value)
    }

    fn failed_recently(&self) -> bool {
        let failed_at = self.failed_at.read().unwrap_or_else(|e| e.into_inner());
        failed_at.is_some_and(|at| at.elapsed() < AFTER_A_FAILED_RELOAD)
    }

    /// The snapshot, reloaded with `load` first when it is older than the refresh interval.
    /// When the reload fails (the database is down), the last good copy is served, stale,
    /// and readers that queued behind that reload get it at once; only with no copy at
    /// all is the failure the answer.
    pub async fn get<E, Fut>(&self, load: impl FnOnce() -> Fut) -> Result<Arc<T>, ApiError>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<ApiError>,
    {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _guard = self.reloading.lock().await;
        if let Some(value) = self.fresh() {
            return Ok(value); // another request reloaded while this one waited
        }
        let stale = self.current().map(|(_, value)| value);
        if let Some(stale) = &stale {
            if self.failed_recently() {
                return Ok(stale.clone());
            }
        }
        match load().await {
            Ok(value) => {
                let value = Arc::new(value);
                *self.latest.write().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), value.clone()));
                *self.failed_at.write().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(value)
            }
            Err(e) => {
                *self.failed_at.write().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                let error: ApiError = e.into();
                match stale {
                    Some(stale) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "cannot reload public data; serving the last good copy"
                        );
                        Ok(stale)
                    }
                    None => Err(error),
                }
            }
        }
    }
}

/// One page of `items`, keeping those whose lower-cased city is `city` (case-insensitive),
/// each with its 1-based position within the filtered list.
pub fn page<'a, T>(
    items: &'a [T],
    city_key: impl Fn(&T) -> &str + 'a,
    city: Option<&str>,
    limit: usize,
    offset: usize,
) -> impl Iterator<Item = (usize, &'a T)> + 'a {
    let wanted = city.map(str::to_lowercase);
    items
        .iter()
        .filter(move |item| wanted.as_deref().is_none_or(|c| city_key(item) == c))
        .enumerate()
        .skip(offset)
        .take(limit)
        .map(|(i, item)| (i + 1, item))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_counted_within_the_city_filter() {
        let items = [
            ("Ana Ruiz", "bogotá"),
            ("Luis Paz", "cali"),
            ("Eva Sol", "bogotá"),
        ];
        fn key<'a>(item: &'a (&str, &str)) -> &'a str {
            item.1
        }
        let bogota: Vec<_> = page(&items, key, Some("BOGOTÁ"), 10, 0)
            .map(|(p, i)| (p, i.0))
            .collect();
        assert_eq!(bogota, [(1, "Ana Ruiz"), (2, "Eva Sol")]);
        let second: Vec<_> = page(&items, key, None, 1, 1)
            .map(|(p, i)| (p, i.0))
            .collect();
        assert_eq!(second, [(2, "Luis Paz")]);
        assert_eq!(page(&items, key, Some("Lima"), 10, 0).count(), 0);
    }

    fn down() -> ApiError {
        ApiError::unavailable("Base de datos no disponible.", anyhow::anyhow!("down"))
    }

    #[tokio::test]
    async fn a_snapshot_is_reused_until_it_is_older_than_the_interval() {
        let snapshot = Snapshot::new(Duration::from_secs(60));
        let first = snapshot
            .get(|| async { Ok::<_, ApiError>(1) })
            .await
            .unwrap();
        let second = snapshot
            .get(|| async { Ok::<_, ApiError>(2) })
            .await
            .unwrap();
        assert_eq!((*first, *second), (1, 1));
        let always = Snapshot::new(Duration::ZERO);
        always.get(|| async { Ok::<_, ApiError>(1) }).await.unwrap();
        assert_eq!(
            *always.get(|| async { Ok::<_, ApiError>(2) }).await.unwrap(),
            2
        );
    }

    #[tokio::test]
    async fn a_failed_reload_serves_the_last_good_copy_and_readers_share_it() {
        let snapshot = Arc::new(Snapshot::new(Duration::from_millis(100)));
        snapshot
            .get(|| async { Ok::<_, ApiError>(1) })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The database is down: a reload takes a while and fails. Twenty readers at once.
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let readers: Vec<_> = (0..20)
            .map(|_| {
                let (snapshot, loads) = (snapshot.clone(), loads.clone());
                tokio::spawn(async move {
                    snapshot
                        .get(|| async move {
                            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Err::<i32, _>(down())
                        })
                        .await
                })
            })
            .collect();
        for reader in readers {
            assert_eq!(*reader.await.unwrap().unwrap(), 1);
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Back up: the next reload after the pause replaces the copy.
        tokio::time::sleep(AFTER_A_FAILED_RELOAD).await;
        assert_eq!(
            *snapshot
                .get(|| async { Ok::<_, ApiError>(2) })
                .await
                .unwrap(),
            2
        );
        // With no copy at all, the failure is the answer.
        let empty: Snapshot<i32> = Snapshot::new(Duration::from_secs(5));
        assert!(empty.get(|| async { Err::<i32, _>(down()) }).await.is_err());
    }
}
