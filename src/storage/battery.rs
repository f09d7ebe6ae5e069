//! A reusable test battery for [`Storage`] implementations, like
//! object_store's `integration.rs`: every backend (the core crate's stores
//! and those in `backends/`) runs the same checks of the contract the
//! format layers rely on.
//!
//! Each function panics with a message naming the failed expectation.

use bytes::Bytes;

use super::{object_writer, PutMode, Storage, StorageError};
use std::sync::Arc;

/// Runs every check below `prefix` (which should be empty and unique to the run).
pub async fn run_all(store: &Arc<dyn Storage>, prefix: &str) {
    put_get_head_delete(store.as_ref(), prefix).await;
    ranged_reads(store.as_ref(), prefix).await;
    listing(store.as_ref(), prefix, 1100).await;
    conditional_create(store.as_ref(), prefix).await;
    streaming_writes(store, prefix).await;
    invalid_keys(store.as_ref()).await;
}

fn key(prefix: &str, name: &str) -> String {
    super::join_key(prefix, name)
}

/// Whole-object put, get, head, overwrite and delete (deleting twice is fine).
pub async fn put_get_head_delete(store: &dyn Storage, prefix: &str) {
    let k = key(prefix, "a/b/object");
    assert!(matches!(store.get(&k).await, Err(StorageError::NotFound { .. })), "get of a missing key is NotFound");
    store.put(&k, Bytes::from_static(b"hello"), PutMode::Overwrite).await.expect("put");
    assert_eq!(store.get(&k).await.expect("get"), Bytes::from_static(b"hello"));
    assert_eq!(store.head(&k).await.expect("head").size, 5);
    store.put(&k, Bytes::from_static(b"bye"), PutMode::Overwrite).await.expect("overwrite");
    assert_eq!(store.get(&k).await.expect("get after overwrite"), Bytes::from_static(b"bye"));
    store.delete(&k).await.expect("delete");
    store.delete(&k).await.expect("deleting a missing object succeeds");
    assert!(matches!(store.head(&k).await, Err(StorageError::NotFound { .. })), "head after delete");
}

/// Single and multiple ranges, including past the end (an error, never short).
pub async fn ranged_reads(store: &dyn Storage, prefix: &str) {
    let k = key(prefix, "ranges");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put(&k, Bytes::from(data.clone()), PutMode::Overwrite).await.expect("put");
    assert_eq!(store.get_range(&k, 10..20).await.expect("range"), &data[10..20]);
    assert_eq!(store.get_range(&k, 0..0).await.expect("empty range").len(), 0);
    let ranges = [9000..9100, 0..4, 4..8, 5000..5001];
    let got = store.get_ranges(&k, &ranges).await.expect("ranges");
    for (r, b) in ranges.iter().zip(&got) {
        assert_eq!(&b[..], &data[r.start as usize..r.end as usize], "range {r:?}");
    }
    assert!(
        matches!(store.get_range(&k, 9990..10_010).await, Err(StorageError::OutOfRange { .. })),
        "a range past the end is OutOfRange"
    );
    store.delete(&k).await.expect("delete");
}

/// Recursive and one-level listings of `n` keys.
pub async fn listing(store: &dyn Storage, prefix: &str, n: usize) {
    let dir = key(prefix, "list");
    for i in 0..n {
        store
            .put(&key(&dir, &format!("{:02}/k{i:05}", i % 7)), Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .expect("put");
    }
    store.put(&key(&dir, "top"), Bytes::from_static(b"y"), PutMode::Overwrite).await.expect("put");
    let all = store.list(&dir).await.expect("list");
    assert_eq!(all.len(), n + 1, "recursive listing sees every key");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key), "listing is sorted");
    let level = store.list_with_delimiter(&dir).await.expect("list_with_delimiter");
    assert_eq!(level.objects.len(), 1, "one object directly below");
    assert_eq!(level.prefixes.len(), 7.min(n), "one prefix per sub-directory");
    assert!(store.list(&key(prefix, "no-such-prefix")).await.expect("list of nothing").is_empty());
    store.delete_prefix(&dir).await.expect("delete_prefix");
    assert!(store.list(&dir).await.expect("list after delete").is_empty(), "delete_prefix removes everything");
}

/// Put-if-absent: the second create of a key fails with AlreadyExists.
pub async fn conditional_create(store: &dyn Storage, prefix: &str) {
    if !store.capabilities().conditional_create {
        return;
    }
    let k = key(prefix, "create-once");
    store.put(&k, Bytes::from_static(b"first"), PutMode::Create).await.expect("first create");
    let second = store.put(&k, Bytes::from_static(b"second"), PutMode::Create).await;
    assert!(matches!(second, Err(StorageError::AlreadyExists { .. })), "second create must fail, got {second:?}");
    assert_eq!(store.get(&k).await.expect("get"), Bytes::from_static(b"first"), "the first value survives");
    store.delete(&k).await.expect("delete");
}

/// A streamed object appears only once finished, whole.
pub async fn streaming_writes(store: &Arc<dyn Storage>, prefix: &str) {
    let k = key(prefix, "streamed");
    let mut writer = object_writer(store, &k).await.expect("writer");
    for part in 0..5u8 {
        writer.write(Bytes::from(vec![part; 1000])).await.expect("write");
    }
    assert_eq!(writer.written(), 5000);
    assert!(matches!(store.head(&k).await, Err(StorageError::NotFound { .. })), "invisible before finish");
    writer.finish().await.expect("finish");
    let data = store.get(&k).await.expect("get");
    assert_eq!(data.len(), 5000);
    assert_eq!(data[4500], 4);
    let abandoned = key(prefix, "abandoned");
    let mut writer = object_writer(store, &abandoned).await.expect("writer");
    writer.write(Bytes::from_static(b"partial")).await.expect("write");
    drop(writer);
    assert!(
        matches!(store.head(&abandoned).await, Err(StorageError::NotFound { .. })),
        "dropped writer leaves nothing"
    );
    store.delete(&k).await.expect("delete");
}

/// Keys that would escape the root are rejected before any I/O.
pub async fn invalid_keys(store: &dyn Storage) {
    for bad in ["../x", "a/../../x", "/etc/passwd", "a/./b"] {
        assert!(matches!(store.get(bad).await, Err(StorageError::InvalidKey { .. })), "{bad:?} must be rejected");
        assert!(
            matches!(store.put(bad, Bytes::new(), PutMode::Overwrite).await, Err(StorageError::InvalidKey { .. })),
            "{bad:?} must be rejected for writes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{InMemory, LocalFileSystem};

    #[tokio::test]
    async fn in_memory_passes_the_battery() {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        run_all(&store, "battery").await;
    }

    #[tokio::test]
    async fn local_filesystem_passes_the_battery() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> = Arc::new(LocalFileSystem::new(dir.path()));
        run_all(&store, "battery").await;
    }
}
