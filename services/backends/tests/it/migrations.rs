//! Migrations across releases: a rollback's older binary starts on a newer schema.

use testkit::TestDatabase;

/// A newer release applied a migration this binary does not know (it is recorded in
/// `_sqlx_migrations`); migrating again, as an older release does at start, succeeds and
/// leaves that record alone instead of refusing the schema.
#[tokio::test]
async fn an_older_release_starts_on_a_schema_one_migration_ahead() {
    let db = TestDatabase::create().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99991231000001, 'a newer release''s column', true, '\\x00'::bytea, 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    backends::db::migrate(&db.pool)
        .await
        .expect("an older binary must start on a schema a newer one migrated");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let known = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(recorded, known + 1, "the newer release's record must stay");
}
