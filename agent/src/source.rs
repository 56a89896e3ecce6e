//! Sources of Services and EndpointSlices. Each sends batches of list and
//! change events (`model::store`) to the agent, which keeps the one model
//! the dataplane (and later DNS) read.

pub mod apiserver;
pub mod manifests;

/// Where a source sends its batches of events.
pub type Events = tokio::sync::mpsc::UnboundedSender<Vec<crate::model::store::SourceEvent>>;

/// A task that ends when its handle goes.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
