//! Store tests on real SQLite files in temporary directories.

use super::*;

#[tokio::test]
async fn open_creates_private_directory_and_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state").join("state.db");
    let store = Store::open(&path).await.expect("open");
    let dir_mode = fs::metadata(path.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    let file_mode = fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(file_mode & 0o777, 0o600);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .expect("pragma");
    assert_eq!(journal, "wal");
    store.close().await;
}

#[tokio::test]
async fn existing_file_with_loose_mode_is_tightened() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    fs::write(&path, b"").expect("touch");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let store = Store::open(&path).await.expect("open");
    assert_eq!(
        fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    store.close().await;
}

#[tokio::test]
async fn second_open_of_the_same_directory_names_the_owner_pid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let first = Store::open(&path).await.expect("first");
    let err = Store::open(&tmp.path().join("other.db"))
        .await
        .expect_err("second must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&std::process::id().to_string()),
        "names the pid: {msg}"
    );
    assert!(msg.contains("another skein is running"), "{msg}");
    first.close().await;
    drop(first);
    Store::open(&path)
        .await
        .expect("reopen after the first is gone")
        .close()
        .await;
}

#[tokio::test]
async fn migrations_apply_once_and_reopen_keeps_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let store = Store::open(&path).await.expect("open");
    let id = store.record_start("test").await.expect("start");
    store.record_clean_stop(id).await.expect("stop");
    store.record_start("test").await.expect("crashed start");
    store.close().await;
    drop(store);

    let store = Store::open(&path).await.expect("reopen");
    store.record_start("test").await.expect("start");
    let summary = store.summary().await.expect("summary");
    assert_eq!(summary.schema_version, known_schema_version());
    assert_eq!(summary.starts, 3);
    assert_eq!(
        summary.unclean_stops, 1,
        "the second start never stopped cleanly"
    );
    store.check().await.expect("quick_check");
    store.checkpoint().await.expect("checkpoint");
    store.close().await;
}

#[tokio::test]
async fn newer_schema_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let store = Store::open(&path).await.expect("open");
    let future = known_schema_version() + 1000;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (?, 'from the future', 1, x'00', 0)",
    )
    .bind(future)
    .execute(&store.pool)
    .await
    .expect("insert");
    store.close().await;
    drop(store);

    let err = Store::open(&path).await.expect_err("newer schema");
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == future),
        "{msg}"
    );
    assert!(msg.contains("newer skein"), "{msg}");
    // Still refused the second time: nothing was rewritten.
    assert!(matches!(
        Store::open(&path).await,
        Err(StoreError::NewerSchema { .. })
    ));
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_gives_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    fs::write(&path, vec![0x42u8; 8192]).expect("garbage");
    let err = Store::open(&path)
        .await
        .expect_err("garbage is not a database");
    assert!(err.to_string().contains("state.db"), "{err}");
}
