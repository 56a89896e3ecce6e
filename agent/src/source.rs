//! Sources of Services and EndpointSlices; each produces a whole `Model`.

pub mod manifests;
