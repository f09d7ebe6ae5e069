//! Streamed uploads: an object is sent as multipart once it outgrows one
//! part, with at most `concurrency` parts in flight, so a writer holds at
//! most `(concurrency + 1) × part_size` bytes however large the object.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use orbax_storage::{ObjectWriter, Result};

use crate::map_error;

/// An [`ObjectWriter`] over `put_multipart`; small objects are one `put`.
pub(crate) struct MultipartWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    key: String,
    part_size: usize,
    concurrency: usize,
    /// Bytes not yet handed to an upload (less than one part once started).
    pending: Vec<Bytes>,
    pending_len: usize,
    upload: Option<WriteMultipart>,
    written: u64,
}

impl MultipartWriter {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        key: String,
        part_size: usize,
        concurrency: usize,
    ) -> Self {
        MultipartWriter {
            store,
            path,
            key,
            part_size,
            concurrency,
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            written: 0,
        }
    }
}

#[async_trait]
impl ObjectWriter for MultipartWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len < self.part_size {
            return Ok(());
        }
        if self.upload.is_none() {
            let upload = self.store.put_multipart(&self.path).await.map_err(|e| map_error(&self.key, e))?;
            self.upload = Some(WriteMultipart::new_with_chunk_size(upload, self.part_size));
        }
        let upload = self.upload.as_mut().expect("started above");
        upload.wait_for_capacity(self.concurrency).await.map_err(|e| map_error(&self.key, e))?;
        for part in self.pending.drain(..) {
            upload.put(part);
        }
        self.pending_len = 0;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        match self.upload.take() {
            None => {
                let data = match pending.len() {
                    1 => pending.into_iter().next().expect("one part"),
                    _ => Bytes::from(pending.concat()),
                };
                self.store.put(&self.path, data.into()).await.map_err(|e| map_error(&self.key, e))?;
            }
            Some(mut upload) => {
                for part in pending {
                    upload.put(part);
                }
                upload.finish().await.map_err(|e| map_error(&self.key, e))?;
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }
}

impl Drop for MultipartWriter {
    /// An abandoned upload is aborted in the background so the service
    /// drops its parts (nothing was ever visible under the key).
    fn drop(&mut self) {
        if let (Some(upload), Ok(runtime)) = (self.upload.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}
