//! The pool's connections: what every session is bounded by.

use backends::settings::Settings;
use testkit::TestDatabase;

/// Review 3, N19: a statement stuck on a lock, and a transaction whose client vanished,
/// end on the server's side however the client hangs.
#[tokio::test]
async fn every_session_bounds_its_statements_and_idle_transactions() {
    let db = TestDatabase::create().await;
    let settings =
        Settings::load_from(&[], vec![("APP__DATABASE__URL".into(), db.url.clone())]).unwrap();
    let pool = backends::db::connect_lazy(&settings.database).unwrap();
    for (setting, expected) in [
        ("statement_timeout", backends::db::STATEMENT_TIMEOUT),
        (
            "idle_in_transaction_session_timeout",
            backends::db::IDLE_IN_TRANSACTION_TIMEOUT,
        ),
    ] {
        let shown: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(shown, expected, "{setting}");
    }
}
