//! HTTP handlers, one module per area of the contract.

pub mod health;
pub mod pages;
pub mod public;
pub mod users;
pub mod videos;

use actix_web::dev::ResourceDef;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{detail_response, ApiError, INVALID_QUERY};

/// Every path the API serves, with its methods: the OpenAPI document's, plus the few
/// routes it does not describe. Lets a request with the wrong method get 405 and `Allow`
/// instead of the 404 of an unknown path.
#[derive(Debug)]
pub struct KnownPaths(Vec<(ResourceDef, Vec<&'static str>)>);

impl KnownPaths {
    pub fn of(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut known: Vec<(ResourceDef, Vec<&'static str>)> = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                ]
                .into_iter()
                .filter_map(|(method, present)| present.then_some(method))
                .collect();
                (ResourceDef::new(path.as_str()), methods)
            })
            .collect();
        for undocumented in ["/health", "/api/videos/", "/api/docs"]
            .into_iter()
            .chain(pages::PATHS)
        {
            known.push((ResourceDef::new(undocumented), vec!["GET"]));
        }
        Self(known)
    }

    /// The methods `path` answers to; empty when no route has that path. A path spelled
    /// out in full (`/api/videos/upload`) is that route alone, not also a value of a
    /// pattern (`/api/videos/{video_id}`).
    pub fn allowed(&self, path: &str) -> Vec<&'static str> {
        let matching = || self.0.iter().filter(|(def, _)| def.is_match(path));
        let exact: Vec<_> = matching()
            .filter(|(def, _)| !def.is_prefix() && def.pattern() == Some(path))
            .collect();
        let chosen: Vec<_> = if exact.is_empty() {
            matching().collect()
        } else {
            exact
        };
        let mut allowed: Vec<&'static str> = chosen
            .into_iter()
            .flat_map(|(_, methods)| methods.iter().copied())
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        allowed
    }
}

/// What no route answered: 405 with `Allow` for a known path asked with another method,
/// else 404. Both with the usual `{"detail"}` body.
pub async fn no_route(req: HttpRequest, known: web::Data<KnownPaths>) -> HttpResponse {
    let allowed = known.allowed(req.path());
    if allowed.is_empty() {
        return detail_response(StatusCode::NOT_FOUND, "Recurso no encontrado.");
    }
    let mut response = detail_response(StatusCode::METHOD_NOT_ALLOWED, "Método no permitido.");
    response.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_str(&allowed.join(", ")).expect("method names are ASCII"),
    );
    response
}

/// JSON Schema pattern of a free-text field (names, city, country, title): some visible
/// character and no control characters. Declared in the OpenAPI document (utoipa takes only
/// literals there; a test checks they equal this) and enforced by [`text_field`].
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001f]*[^\s\u0000-\u001f][^\u0000-\u001f]*$";

/// Longest name, city or country accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A required free-text field, trimmed: refused with a 400 when missing, blank, longer than
/// `max_chars` characters, or holding control characters (PostgreSQL text cannot store NUL,
/// and no name or title needs the others). Same rule as [`TEXT_PATTERN`].
pub fn text_field(
    value: Option<String>,
    field: &str,
    max_chars: usize,
) -> Result<String, ApiError> {
    let missing = || ApiError::bad_request(format!("El campo {field} es obligatorio."));
    let value = value.ok_or_else(missing)?;
    if value.chars().any(|c| c <= '\u{1f}') {
        return Err(ApiError::bad_request(format!(
            "El campo {field} contiene caracteres de control."
        )));
    }
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(format!(
            "El campo {field} admite como máximo {max_chars} caracteres."
        )));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(missing());
    }
    Ok(trimmed.to_owned())
}

/// `?city=&limit=&offset=` as the list endpoints take them, extracted with `web::Query`:
/// a limit outside 1–100, a negative offset, or anything not a whole number fails
/// extraction, and the `QueryConfig` error handler in `startup` answers the contract's 400.
/// An empty `city` means no filter; unknown parameters are ignored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PageQuery {
    city: Option<String>,
    limit: Option<Limit>,
    #[serde(default)]
    offset: Offset,
}

impl PageQuery {
    pub fn city(&self) -> Option<&str> {
        self.city
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
    }

    /// The requested limit, if any.
    pub fn limit(&self) -> Option<i64> {
        self.limit.map(|Limit(limit)| limit)
    }

    pub fn offset(&self) -> i64 {
        self.offset.0
    }

    /// `(limit, offset)` for slicing in memory, with the endpoint's default limit.
    pub fn bounds(&self, default_limit: usize) -> (usize, usize) {
        let limit = self.limit().map_or(default_limit, |l| l as usize);
        (limit, usize::try_from(self.offset()).unwrap_or(usize::MAX))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "i64")]
struct Limit(i64);

impl TryFrom<i64> for Limit {
    type Error = &'static str;
    fn try_from(limit: i64) -> Result<Self, Self::Error> {
        (1..=100)
            .contains(&limit)
            .then_some(Limit(limit))
            .ok_or("limit must be 1-100")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "i64")]
struct Offset(i64);

impl TryFrom<i64> for Offset {
    type Error = &'static str;
    fn try_from(offset: i64) -> Result<Self, Self::Error> {
        (offset >= 0)
            .then_some(Offset(offset))
            .ok_or("offset must be >= 0")
    }
}

/// Answers a query string `PageQuery` (or any `web::Query`) cannot take with the
/// contract's 400.
pub fn invalid_query(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    actix_web::error::InternalError::from_response(
        err,
        detail_response(StatusCode::BAD_REQUEST, INVALID_QUERY),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(query: &str) -> Result<PageQuery, serde_urlencoded::de::Error> {
        serde_urlencoded::from_str(query)
    }

    #[test]
    fn page_query_accepts_the_documented_ranges() {
        let cali = page("city=Cali&limit=100&offset=0&other=1").unwrap();
        assert_eq!(
            (cali.city(), cali.limit(), cali.offset()),
            (Some("Cali"), Some(100), 0)
        );
        assert_eq!(page("").unwrap().bounds(20), (20, 0));
        assert_eq!(page("limit=1&offset=7").unwrap().bounds(20), (1, 7));
        assert_eq!(page("city=").unwrap().city(), None);
        assert_eq!(page("city=%20").unwrap().city(), None);
        assert_eq!(
            page("city=San%20Andr%C3%A9s").unwrap().city(),
            Some("San Andrés")
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
            assert!(page(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn text_fields_need_a_visible_character_and_no_control_characters() {
        let field = |v: &str| text_field(Some(v.to_owned()), "city", 8);
        assert_eq!(field("  Cali ").unwrap(), "Cali");
        assert_eq!(field("\u{a0}é\u{3000}").unwrap(), "é");
        for bad in ["", "   ", "\u{2003}", "a\0b", "a\tb", "Barranquilla"] {
            assert!(field(bad).is_err(), "{bad:?}");
        }
        assert!(text_field(None, "city", 8).is_err());
    }
}
