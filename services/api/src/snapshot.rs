//! Read-mostly public data served from memory. Rankings and the public video list are read
//! far more often than they change, so each is loaded by one query at most once per refresh
//! interval and served from a snapshot in between: readers see data at most that old
//! (`public.rankings_refresh`, default 30 s, and `public.videos_refresh`, default 5 s;
//! never over 60 s).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Snapshot<T> {
    refresh_interval: Duration,
    latest: RwLock<Option<(Instant, Arc<T>)>>,
    /// Held while one request reloads, so a burst of readers runs one query, not many.
    reloading: tokio::sync::Mutex<()>,
}

impl<T> Snapshot<T> {
    pub fn new(refresh_interval: Duration) -> Self {
        Self {
            refresh_interval,
            latest: RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Arc<T>> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.refresh_interval)
            .map(|(_, value)| value.clone())
    }

    /// The snapshot, reloaded with `load` first when it is older than the refresh interval.
    pub async fn get<E, Fut>(&self, load: impl FnOnce() -> Fut) -> Result<Arc<T>, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        let _guard = self.reloading.lock().await;
        if let Some(value) = self.fresh() {
            return Ok(value); // another request reloaded while this one waited
        }
        let value = Arc::new(load().await?);
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), value.clone()));
        Ok(value)
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

    #[tokio::test]
    async fn a_snapshot_is_reused_until_it_is_older_than_the_interval() {
        let snapshot = Snapshot::new(Duration::from_secs(60));
        let first = snapshot.get(|| async { Ok::<_, ()>(1) }).await.unwrap();
        let second = snapshot.get(|| async { Ok::<_, ()>(2) }).await.unwrap();
        assert_eq!((*first, *second), (1, 1));
        let always = Snapshot::new(Duration::ZERO);
        always.get(|| async { Ok::<_, ()>(1) }).await.unwrap();
        assert_eq!(*always.get(|| async { Ok::<_, ()>(2) }).await.unwrap(), 2);
    }
}
