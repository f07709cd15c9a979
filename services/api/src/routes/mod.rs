//! HTTP handlers, one module per area of the contract.

pub mod health;
pub mod public;
pub mod users;
pub mod videos;

use std::str::FromStr;

use uuid::Uuid;

use crate::error::{ApiError, INVALID_QUERY, VIDEO_NOT_FOUND};

/// Video ids are opaque to clients: one that does not parse is simply not found.
pub fn parse_video_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::from_str(raw).map_err(|_| ApiError::NotFound(VIDEO_NOT_FOUND))
}

/// `?city=&limit=&offset=` as the public endpoints take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub city: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

impl PageQuery {
    /// `(limit, offset)` for slicing in memory.
    pub fn bounds(&self) -> (usize, usize) {
        (
            usize::try_from(self.limit).unwrap_or(0),
            usize::try_from(self.offset).unwrap_or(usize::MAX),
        )
    }

    /// Parses the raw query string strictly: a limit outside 1–100, a negative offset, or
    /// anything not a whole number is a 400. An empty `city` means no filter.
    pub fn parse(query: &str, default_limit: i64) -> Result<Self, ApiError> {
        let invalid = || ApiError::bad_request(INVALID_QUERY);
        let mut page = PageQuery {
            city: None,
            limit: default_limit,
            offset: 0,
        };
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|_| invalid())?;
        for (key, value) in pairs {
            match key.as_str() {
                "city" => page.city = Some(value.trim().to_owned()).filter(|c| !c.is_empty()),
                "limit" => {
                    page.limit = value.trim().parse().map_err(|_| invalid())?;
                    if !(1..=100).contains(&page.limit) {
                        return Err(invalid());
                    }
                }
                "offset" => {
                    page.offset = value.trim().parse().map_err(|_| invalid())?;
                    if page.offset < 0 {
                        return Err(invalid());
                    }
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_query_accepts_the_documented_ranges() {
        let page = PageQuery::parse("city=Cali&limit=100&offset=0", 10).unwrap();
        assert_eq!(
            page,
            PageQuery {
                city: Some("Cali".into()),
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(PageQuery::parse("", 20).unwrap().limit, 20);
        assert_eq!(PageQuery::parse("city=", 20).unwrap().city, None);
        assert_eq!(
            PageQuery::parse("city=San%20Andr%C3%A9s", 20)
                .unwrap()
                .city
                .unwrap(),
            "San Andrés"
        );
    }

    #[test]
    fn page_query_rejects_every_invalid_value() {
        for bad in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=abc",
            "limit=",
            "offset=-1",
            "offset=x",
            "limit=1.5",
            "offset=99999999999999999999",
        ] {
            let err = PageQuery::parse(bad, 10).unwrap_err();
            assert_eq!(err.to_string(), INVALID_QUERY, "{bad}");
        }
    }

    #[test]
    fn unparseable_ids_are_not_found() {
        assert!(matches!(parse_video_id("abc"), Err(ApiError::NotFound(_))));
        assert!(parse_video_id("6f1c4a52-8f5e-4b8e-9d8e-2f3c1a0b9c7d").is_ok());
    }
}
