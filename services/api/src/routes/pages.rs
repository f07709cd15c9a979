//! The page players and fans use: a few HTML pages rendered here (maud escapes every value
//! it is given) and one script of our own, `web/app.js`, that calls the same REST API as
//! any client. Both files are compiled into the binary, so a deploy ships nothing else.
//!
//! Security: a strict Content-Security-Policy (no inline script or style, nothing from
//! another origin but presigned media); the token lives in `sessionStorage`, which other
//! origins cannot read, and the API sends no CORS headers; the script only ever writes
//! text (`textContent`), never markup.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{get, web, HttpResponse};
use maud::{html, Markup, DOCTYPE};

use crate::state::AppState;
use crate::upload::{megabytes, MAX_TITLE_CHARS};

const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/app.css");

/// The paths this module serves (GET only), for `KnownPaths`.
pub const PATHS: [&str; 7] = [
    "/",
    "/rankings",
    "/registro",
    "/ingresar",
    "/mis-videos",
    "/static/app.js",
    "/static/app.css",
];

/// Media may come from the storage's presigned URLs (another origin on S3); nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' https: blob:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Changes whenever the script or style does, so they can be cached for a year.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (SCRIPT, STYLE).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
});

fn secured(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    response
}

fn page(page: &str, title: &str, main: Markup) -> HttpResponse {
    let version = ASSET_VERSION.as_str();
    let body = html! {
        (DOCTYPE)
        html lang="es" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ANB Rising Stars" }
                link rel="stylesheet" href={ "/static/app.css?v=" (version) };
                script src={ "/static/app.js?v=" (version) } defer {}
            }
            body data-page=(page) {
                a class="skip" href="#contenido" { "Saltar al contenido" }
                header {
                    a class="brand" href="/" { span aria-hidden="true" { "★" } " ANB Rising Stars" }
                    nav aria-label="Principal" {
                        a href="/" { "Videos" }
                        a href="/rankings" { "Rankings" }
                        a href="/mis-videos" data-when="in" { "Mis videos" }
                        a href="/ingresar" data-when="out" { "Ingresar" }
                        a href="/registro" data-when="out" { "Registrarse" }
                        button type="button" id="salir" data-when="in" { "Salir" }
                    }
                }
                main id="contenido" tabindex="-1" {
                    h1 { (title) }
                    p id="aviso" role="status" aria-live="polite" {}
                    (main)
                }
                footer { p { "Asociación Nacional de Baloncesto · Rising Stars" } }
            }
        }
    };
    secured(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body.into_string())
}

/// A labelled, required input whose name is its id.
fn field(id: &str, label: &str, kind: &str, autocomplete: &str) -> Markup {
    html! {
        label for=(id) { (label) }
        input id=(id) name=(id) type=(kind) required autocomplete=(autocomplete);
    }
}

/// An empty table the script fills: its caption and column headings.
fn table(id: &str, caption: &str, columns: &[&str]) -> Markup {
    html! {
        table id=(id) {
            caption { (caption) }
            thead { tr { @for column in columns { th scope="col" { (column) } } } }
            tbody {}
        }
    }
}

/// The city filter the videos and rankings pages share (the script reloads on submit).
fn city_filter() -> Markup {
    html! {
        form id="filtro" class="inline" {
            label for="ciudad" { "Ciudad" }
            input id="ciudad" name="city" type="text" autocomplete="address-level2";
            button type="submit" { "Filtrar" }
        }
    }
}

#[get("/")]
pub async fn videos_page() -> HttpResponse {
    page(
        "videos",
        "Videos de los jugadores",
        html! {
            (city_filter())
            ul id="videos" class="cards" aria-label="Videos públicos" {}
        },
    )
}

#[get("/rankings")]
pub async fn rankings_page() -> HttpResponse {
    page(
        "rankings",
        "Rankings",
        html! {
            (city_filter())
            (table("ranking", "Jugadores por votos", &["Posición", "Jugador", "Ciudad", "Votos"]))
        },
    )
}

#[get("/registro")]
pub async fn signup_page() -> HttpResponse {
    page(
        "registro",
        "Crea tu cuenta",
        html! {
            form id="registro" class="stack" method="post" {
                (field("first_name", "Nombre", "text", "given-name"))
                (field("last_name", "Apellido", "text", "family-name"))
                (field("email", "Correo", "email", "email"))
                (field("password1", "Contraseña", "password", "new-password"))
                (field("password2", "Repite la contraseña", "password", "new-password"))
                (field("city", "Ciudad", "text", "address-level2"))
                (field("country", "País", "text", "country-name"))
                button type="submit" { "Registrarme" }
            }
        },
    )
}

#[get("/ingresar")]
pub async fn login_page() -> HttpResponse {
    page(
        "ingresar",
        "Ingresa",
        html! {
            form id="ingresar" class="stack" method="post" {
                (field("email", "Correo", "email", "email"))
                (field("password", "Contraseña", "password", "current-password"))
                button type="submit" { "Ingresar" }
            }
            p { "¿Sin cuenta? " a href="/registro" { "Regístrate" } }
        },
    )
}

/// The upload form states the server's own limits (`upload.max_bytes` and the title's
/// length): the script refuses a larger file before sending it, with the same figure.
#[get("/mis-videos")]
pub async fn my_videos_page(state: web::Data<AppState>) -> HttpResponse {
    let max_bytes = state.upload.max_bytes;
    let max_megabytes = megabytes(max_bytes);
    page(
        "mis-videos",
        "Mis videos",
        html! {
            form id="subir" class="stack" method="post" {
                h2 { "Subir un video" }
                label for="titulo" { "Título" }
                input id="titulo" name="title" type="text" required maxlength=(MAX_TITLE_CHARS);
                label for="archivo" { "Video MP4 (hasta " (max_megabytes) " MB)" }
                input id="archivo" name="video_file" type="file" accept="video/mp4" required
                    data-max-bytes=(max_bytes) data-max-megabytes=(max_megabytes);
                progress id="progreso" max="100" value="0" hidden aria-label="Progreso de la subida" {}
                button type="submit" { "Subir" }
            }
            (table("mios", "Tus videos (se actualizan solos)", &["Título", "Estado", "Archivos", "Acciones"]))
        },
    )
}

#[get("/static/app.js")]
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[get("/static/app.css")]
pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// Pages ask for `?v=<version>`: a new binary is a new URL, so a year of caching is safe.
fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    secured(HttpResponse::Ok())
        .content_type(content_type.to_owned())
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use crate::upload::megabytes;

    #[test]
    fn limits_are_stated_in_decimal_megabytes() {
        assert_eq!(megabytes(100_000_000), "100");
        assert_eq!(megabytes(50_000_000), "50");
        assert_eq!(megabytes(2_500_000), "2.5");
    }
}
