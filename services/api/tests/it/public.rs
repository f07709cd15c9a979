//! Public videos, votes and rankings.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{detail, spawn_app, spawn_app_with, Options, TestApp};

async fn vote(app: &TestApp, token: &str, video: &str) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/public/videos/{video}/vote")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn public_list_shows_processed_videos_with_player_and_votes() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Bogotá").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let public_ana = app.upload_sample(&ana.token, "triple").await;
    let _pending = app.upload_sample(&ana.token, "pendiente").await;
    let public_luis = app.upload_sample(&luis.token, "clavada").await;
    app.publish(&public_ana).await;
    app.publish(&public_luis).await;
    assert_eq!(
        vote(&app, &luis.token, &public_ana).await.status(),
        StatusCode::OK
    );

    let response = app.get("/api/public/videos", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let list: Vec<Value> = response.json().await.unwrap();
    assert_eq!(list.len(), 2, "only processed videos are public: {list:?}");
    assert_eq!(
        list[0]["video_id"],
        public_luis.as_str(),
        "most recently processed first"
    );
    let ana_video = &list[1];
    let mut keys: Vec<&str> = ana_video
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "city",
            "processed_at",
            "processed_url",
            "title",
            "username",
            "video_id",
            "votes"
        ]
    );
    assert_eq!(ana_video["username"], "Ana Ruiz");
    assert_eq!(ana_video["city"], "Bogotá");
    assert_eq!(ana_video["votes"], 1);
    assert!(ana_video["processed_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/videos/{public_ana}/processed")));

    let cali: Vec<Value> = app
        .get("/api/public/videos?city=cali", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cali.len(), 1);
    assert_eq!(cali[0]["username"], "Luis Paz");
    let paged: Vec<Value> = app
        .get("/api/public/videos?limit=1&offset=1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paged.len(), 1);
    assert_eq!(paged[0]["video_id"], public_ana.as_str());
    // A token is optional here.
    assert_eq!(
        app.get("/api/public/videos", Some(&ana.token))
            .await
            .status(),
        StatusCode::OK
    );

    for bad in ["limit=0", "limit=101", "limit=x", "offset=-1", "offset=y"] {
        let response = app.get(&format!("/api/public/videos?{bad}"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(detail(response).await, "Parámetro inválido en la consulta.");
    }
}

#[tokio::test]
async fn a_user_votes_once_per_public_video() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let fan = app.signup("Fan", "Uno", "Cali").await;
    let video = app.upload_sample(&ana.token, "jugada").await;

    let not_public = vote(&app, &fan.token, &video).await;
    assert_eq!(
        not_public.status(),
        StatusCode::NOT_FOUND,
        "unprocessed videos are not votable"
    );
    app.publish(&video).await;

    let first = vote(&app, &fan.token, &video).await;
    assert_eq!(first.status(), StatusCode::OK);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["message"], "Voto registrado exitosamente.");
    let second = vote(&app, &fan.token, &video).await;
    assert_eq!(second.status(), StatusCode::BAD_REQUEST);
    assert_eq!(detail(second).await, "Ya has votado por este video.");
    assert_eq!(
        vote(&app, &ana.token, &video).await.status(),
        StatusCode::OK
    );

    let detail: Value = app
        .get(&format!("/api/videos/{video}"), Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["votes"], 2);
    let unauthenticated = app
        .client
        .post(app.url(&format!("/api/public/videos/{video}/vote")))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn twenty_concurrent_identical_votes_count_once() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let fan = app.signup("Fan", "Uno", "Cali").await;
    let video = app.upload_sample(&ana.token, "jugada").await;
    app.publish(&video).await;

    let url = app.url(&format!("/api/public/videos/{video}/vote"));
    let votes = (0..20).map(|_| app.client.post(&url).bearer_auth(&fan.token).send());
    let statuses: Vec<StatusCode> = futures_util::future::join_all(votes)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_REQUEST)
            .count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.count_rows("votes").await, 1);
    let count: i64 = sqlx::query_scalar("SELECT vote_count FROM videos")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn rankings_sum_each_players_votes_best_first() {
    let app = spawn_app().await;
    let ana = app.signup("Ana", "Ruiz", "Bogotá").await;
    let luis = app.signup("Luis", "Paz", "Cali").await;
    let eva = app.signup("Eva", "Sol", "bogotá").await;
    let fans = [
        app.signup("Fan", "Uno", "Lima").await,
        app.signup("Fan", "Dos", "Lima").await,
        app.signup("Fan", "Tres", "Lima").await,
    ];
    let ana_1 = app.upload_sample(&ana.token, "a1").await;
    let ana_2 = app.upload_sample(&ana.token, "a2").await;
    let luis_1 = app.upload_sample(&luis.token, "l1").await;
    let eva_1 = app.upload_sample(&eva.token, "e1").await;
    for id in [&ana_1, &ana_2, &luis_1, &eva_1] {
        app.publish(id).await;
    }
    // Ana: 2 + 1 = 3 over two videos; Luis: 2; Eva: 0.
    for (fan, video) in [
        (0, &ana_1),
        (1, &ana_1),
        (2, &ana_2),
        (0, &luis_1),
        (1, &luis_1),
    ] {
        assert_eq!(
            vote(&app, &fans[fan].token, video).await.status(),
            StatusCode::OK
        );
    }

    let response = app.get("/api/public/rankings", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let rankings: Vec<Value> = response.json().await.unwrap();
    let expected = serde_json::json!([
        {"position": 1, "username": "Ana Ruiz", "city": "Bogotá", "votes": 3},
        {"position": 2, "username": "Luis Paz", "city": "Cali", "votes": 2},
        {"position": 3, "username": "Eva Sol", "city": "bogotá", "votes": 0},
    ]);
    assert_eq!(Value::Array(rankings), expected);

    let bogota: Vec<Value> = app
        .get("/api/public/rankings?city=BOGOTÁ", None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<(&Value, &Value)> = bogota
        .iter()
        .map(|r| (&r["position"], &r["username"]))
        .collect();
    assert_eq!(
        names,
        [
            (&serde_json::json!(1), &serde_json::json!("Ana Ruiz")),
            (&serde_json::json!(2), &serde_json::json!("Eva Sol"))
        ]
    );
    let page: Vec<Value> = app
        .get("/api/public/rankings?limit=1&offset=1", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["username"], "Luis Paz");
    assert_eq!(page[0]["position"], 2);
    let empty: Vec<Value> = app
        .get("/api/public/rankings?offset=50", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn rankings_refuse_every_invalid_parameter() {
    let app = spawn_app().await;
    for bad in [
        "limit=0",
        "limit=-1",
        "limit=101",
        "limit=abc",
        "limit=",
        "limit=2.5",
        "offset=-1",
        "offset=abc",
        "offset=",
        "limit=%ZZ",
    ] {
        let response = app.get(&format!("/api/public/rankings?{bad}"), None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            detail(response).await,
            "Parámetro inválido en la consulta.",
            "{bad}"
        );
    }
    for good in [
        "limit=1",
        "limit=100",
        "offset=0",
        "city=Cali&limit=5&offset=3",
    ] {
        assert_eq!(
            app.get(&format!("/api/public/rankings?{good}"), None)
                .await
                .status(),
            StatusCode::OK,
            "{good}"
        );
    }
}

#[tokio::test]
async fn rankings_and_public_list_are_served_from_snapshots_between_refreshes() {
    let app = spawn_app_with(Options {
        extra_env: vec![
            ("APP__PUBLIC__RANKINGS_REFRESH", "60s".into()),
            ("APP__PUBLIC__VIDEOS_REFRESH", "60s".into()),
        ],
        ..Options::default()
    })
    .await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let video = app.upload_sample(&ana.token, "jugada").await;
    app.publish(&video).await;
    let rankings: Vec<Value> = app
        .get("/api/public/rankings", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rankings[0]["votes"], 0);
    let list: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["votes"], 0);
    assert_eq!(
        vote(&app, &ana.token, &video).await.status(),
        StatusCode::OK
    );
    let cached: Vec<Value> = app
        .get("/api/public/rankings", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        cached, rankings,
        "a fresh vote showed in the rankings before the refresh"
    );
    let cached: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        cached, list,
        "a fresh vote showed in the public list before the refresh"
    );
    // The vote itself counted at once: the owner's detail reads the database.
    let detail: Value = app
        .get(&format!("/api/videos/{video}"), Some(&ana.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["votes"], 1);
}

#[tokio::test]
async fn the_public_list_holds_only_the_newest_videos_and_older_ones_stay_votable() {
    let app = spawn_app_with(Options {
        extra_env: vec![("APP__PUBLIC__MAX_PUBLIC_VIDEOS", "2".into())],
        ..Options::default()
    })
    .await;
    let ana = app.signup("Ana", "Ruiz", "Cali").await;
    let mut ids = Vec::new();
    for title in ["primera", "segunda", "tercera"] {
        let id = app.upload_sample(&ana.token, title).await;
        app.publish(&id).await;
        ids.push(id);
    }
    let list: Vec<Value> = app
        .get("/api/public/videos", None)
        .await
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = list
        .iter()
        .map(|v| v["video_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(
        vote(&app, &ana.token, &ids[0]).await.status(),
        StatusCode::OK
    );
}
