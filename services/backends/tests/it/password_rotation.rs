//! A rotated database password (as RDS rotates its managed secret) is followed without a
//! restart: PostgreSQL and a Secrets Manager secret on moto, both changed, every open
//! connection ended so the pool must open new ones.

use std::cell::Cell;
use std::time::Duration;

use backends::password_rotation;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use testkit::{admin_database_url, eventually, moto, TestDatabase};

async fn admin(statement: &str) {
    let mut admin = PgConnection::connect(&admin_database_url()).await.unwrap();
    sqlx::query(statement)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e} (the test role needs CREATEROLE)"));
}

fn login(user: &str, password: &str) -> String {
    serde_json::json!({"username": user, "password": password}).to_string()
}

#[tokio::test]
async fn a_rotated_password_is_read_again_and_new_connections_use_it() {
    let db = TestDatabase::create().await;
    let user = format!("anb_rotated_{}", uuid::Uuid::new_v4().simple());
    admin(&format!(
        "CREATE ROLE {user} LOGIN PASSWORD 'first-password'"
    ))
    .await;
    // Membership lets the test role end the new role's connections.
    admin(&format!("GRANT {user} TO CURRENT_USER")).await;

    let moto = moto();
    let secrets =
        aws_sdk_secretsmanager::Client::new(&backends::aws_sdk_config(&moto.aws_settings()).await);
    let secret = secrets
        .create_secret()
        .name(format!("rds!db-{user}"))
        .secret_string(login(&user, "first-password"))
        .send()
        .await
        .unwrap();
    let secret_arn = secret.arn().unwrap().to_owned();

    let options: PgConnectOptions = db.url.parse().unwrap();
    let options = options.username(&user).password("first-password");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    password_rotation::follow(vec![pool.clone()], secret_arn.clone(), &moto.aws_settings()).await;
    backends::db::ping(&pool).await.unwrap();

    // The rotation: the secret and the role change; the open connections are ended.
    secrets
        .put_secret_value()
        .secret_id(&secret_arn)
        .secret_string(login(&user, "second-password"))
        .send()
        .await
        .unwrap();
    admin(&format!("ALTER ROLE {user} PASSWORD 'second-password'")).await;
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'"
    ))
    .await;

    let refused = Cell::new(0);
    eventually(
        "a connection with the rotated password",
        Duration::from_secs(20),
        || {
            let pool = pool.clone();
            let refused = &refused;
            async move {
                match backends::db::ping(&pool).await {
                    Ok(()) => Some(()),
                    Err(e) => {
                        // What the services' error paths do with a database error.
                        password_rotation::note(&e);
                        if password_rotation::is_refused_password(&e) {
                            refused.set(refused.get() + 1);
                        }
                        None
                    }
                }
            }
        },
    )
    .await;
    assert!(
        refused.get() > 0,
        "the old password was never refused: the test did not make the pool reconnect"
    );

    pool.close().await;
    drop(db);
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'"
    ))
    .await;
    admin(&format!("DROP ROLE {user}")).await;
}
