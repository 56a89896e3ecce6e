//! Sources of Services and EndpointSlices; each publishes whole `Model`s
//! on a watch channel, which the dataplane (and later DNS) read.

pub mod apiserver;
pub mod manifests;

/// A task that ends when its handle goes.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
