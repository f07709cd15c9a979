//! The OpenAPI 3 document, generated from the handlers' annotations so it cannot drift
//! from them. Served at `/api/openapi.json`, browsable at `/api/docs/`.

use utoipa::openapi::security::{
    Flow, HttpAuthScheme, HttpBuilder, OAuth2, Password, Scopes, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use crate::routes::{health, public, users, videos};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ANB Rising Stars API",
        description = "Players upload skill videos, the platform processes them, fans vote, \
                       rankings are published. Errors are `{\"detail\": \"...\"}`. Rankings \
                       and the public video list are served from snapshots up to \
                       `public.rankings_refresh` (default 30 s) and `public.videos_refresh` \
                       (default 5 s) old, never over 60 s."
    ),
    paths(
        health::api_health,
        health::live,
        users::signup,
        users::login,
        videos::upload_video,
        videos::list_my_videos,
        videos::video_detail,
        videos::delete_video,
        videos::download_original,
        videos::download_processed,
        videos::download_original_alias,
        videos::download_processed_alias,
        public::public_videos,
        public::vote,
        public::rankings,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "videos", description = "A player's own videos"),
        (name = "public", description = "Public videos, votes and rankings"),
        (name = "health", description = "Liveness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        // The same tokens, as OAuth2 password-flow clients (and the docs page) obtain them.
        components.add_security_scheme(
            "password",
            SecurityScheme::OAuth2(OAuth2::new([Flow::Password(Password::new(
                "/api/auth/login",
                Scopes::new(),
            ))])),
        );
    }
}
