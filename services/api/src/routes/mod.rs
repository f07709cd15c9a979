//! HTTP handlers, one module per area of the contract.

pub mod health;
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
        for undocumented in ["/health", "/api/videos/", "/api/docs"] {
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
