//! The rankings cache. Rankings are read far more often than votes change, so the player
//! totals are computed by one query at most once per refresh interval and served from
//! memory in between; readers see data at most that old (default 30 s, never over 60 s).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use backends::db::{self, PlayerScore};
use sqlx::PgPool;
use tokio::time::Instant;

#[derive(Debug)]
pub struct RankingsCache {
    refresh_interval: Duration,
    latest: RwLock<Option<(Instant, Arc<Vec<PlayerScore>>)>>,
    /// Held while one request recomputes, so a burst of readers runs one query, not many.
    refreshing: tokio::sync::Mutex<()>,
}

impl RankingsCache {
    pub fn new(refresh_interval: Duration) -> Self {
        Self {
            refresh_interval,
            latest: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Arc<Vec<PlayerScore>>> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.refresh_interval)
            .map(|(_, scores)| scores.clone())
    }

    /// All players, best first, no older than the refresh interval.
    pub async fn scores(&self, pool: &PgPool) -> Result<Arc<Vec<PlayerScore>>, sqlx::Error> {
        if let Some(scores) = self.fresh() {
            return Ok(scores);
        }
        let _guard = self.refreshing.lock().await;
        if let Some(scores) = self.fresh() {
            return Ok(scores); // another request refreshed while this one waited
        }
        let scores = Arc::new(db::player_scores(pool).await?);
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), scores.clone()));
        Ok(scores)
    }
}

/// One page of rankings, positions counted within the filtered list.
pub fn page<'a>(
    scores: &'a [PlayerScore],
    city: Option<&str>,
    limit: usize,
    offset: usize,
) -> impl Iterator<Item = (usize, &'a PlayerScore)> + 'a {
    let city_key = city.map(str::to_lowercase);
    scores
        .iter()
        .filter(move |s| city_key.as_deref().is_none_or(|c| s.city_key == c))
        .enumerate()
        .skip(offset)
        .take(limit)
        .map(|(i, s)| (i + 1, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(name: &str, city: &str, votes: i64) -> PlayerScore {
        PlayerScore {
            username: name.into(),
            city: city.into(),
            city_key: city.to_lowercase(),
            votes,
        }
    }

    #[test]
    fn positions_are_counted_within_the_city_filter() {
        let scores = [
            score("Ana Ruiz", "Bogotá", 9),
            score("Luis Paz", "Cali", 7),
            score("Eva Sol", "bogotá", 3),
        ];
        let bogota: Vec<_> = page(&scores, Some("BOGOTÁ"), 10, 0)
            .map(|(p, s)| (p, s.username.as_str()))
            .collect();
        assert_eq!(bogota, [(1, "Ana Ruiz"), (2, "Eva Sol")]);
        let second: Vec<_> = page(&scores, None, 1, 1)
            .map(|(p, s)| (p, s.votes))
            .collect();
        assert_eq!(second, [(2, 7)]);
        assert_eq!(page(&scores, Some("Lima"), 10, 0).count(), 0);
    }
}
