//! The kube-controller-manager parts that matter here: EndpointSlices for
//! Services with selectors, ServiceAccount tokens, and the CSR approver and
//! signer. Each reacts to store events, after a full pass at start.

mod csr;
mod endpointslices;
mod serviceaccounts;

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{
    sync::{broadcast::error::RecvError, watch},
    task::JoinHandle,
};

use crate::{
    App,
    api::crud,
    controller_user,
    error::{ApiError, ApiResult},
    request::ResourceRequest,
    resources,
    store::Event,
};

/// A controller: a full pass, and a reaction to each change.
trait Controller: Send + 'static {
    fn name(&self) -> &'static str;
    fn resync(&mut self, app: &Arc<App>);
    fn on_event(&mut self, app: &Arc<App>, event: &Event);
}

pub fn spawn(app: &Arc<App>, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let controllers: Vec<Box<dyn Controller>> = vec![
        Box::new(endpointslices::EndpointSlices),
        Box::new(serviceaccounts::ServiceAccounts),
        Box::new(csr::Csr),
    ];
    controllers
        .into_iter()
        .map(|c| tokio::spawn(run(app.clone(), c, stop.clone())))
        .collect()
}

async fn run(app: Arc<App>, mut controller: Box<dyn Controller>, mut stop: watch::Receiver<bool>) {
    let mut events = app.store.subscribe();
    controller.resync(&app);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(e) => controller.on_event(&app, &e),
                Err(RecvError::Lagged(_)) => {
                    tracing::debug!(controller = controller.name(), "fell behind; resyncing");
                    controller.resync(&app);
                }
                Err(RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

fn request(
    group: &str,
    plural: &str,
    namespace: &str,
    name: Option<&str>,
    sub: Option<&str>,
    verb: &'static str,
) -> ApiResult<ResourceRequest> {
    let resource = resources::find(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no resource {plural}")))?;
    Ok(ResourceRequest {
        resource,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
        verb,
    })
}

/// Creates an object as the controller manager.
fn create(
    app: &Arc<App>,
    group: &str,
    plural: &str,
    namespace: &str,
    obj: Value,
) -> ApiResult<Arc<Value>> {
    let rr = request(group, plural, namespace, None, None, "create")?;
    crud::create_object(app, &rr, &HashMap::new(), obj, &controller_user())
}

/// Updates an object (or a subresource) with `change` applied to the
/// latest version, retrying on conflicts.
fn update(
    app: &Arc<App>,
    (group, plural, namespace, name, sub): (&str, &str, &str, &str, Option<&str>),
    change: impl Fn(&mut Value) -> bool,
) -> ApiResult<Option<Arc<Value>>> {
    let rr = request(group, plural, namespace, Some(name), sub, "update")?;
    for _ in 0..5 {
        let key = crate::store::object_key(&rr.resource.key_prefix(), namespace, name);
        let Some(current) = app.store.get(&key) else {
            return Ok(None);
        };
        let mut obj = (*current).clone();
        if !change(&mut obj) {
            return Ok(None);
        }
        match crud::update_object(app, &rr, &HashMap::new(), obj) {
            Ok(stored) => return Ok(Some(stored)),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(format!(
        "too many conflicts updating {plural}/{name}"
    )))
}

fn delete(app: &Arc<App>, group: &str, plural: &str, namespace: &str, name: &str) {
    if let Ok(rr) = request(group, plural, namespace, Some(name), None, "delete") {
        let _ = crud::delete_object(app, &rr, name, Some(0));
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Finishes a graceful Pod deletion after its grace period (the kubelet's
/// part, which nobody else plays here).
pub fn schedule_pod_removal(app: Arc<App>, key: String, grace_seconds: i64) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(
            u64::try_from(grace_seconds).unwrap_or(0),
        ))
        .await;
        let _ = app.store.mutate(&key, |cur| match cur {
            Some(obj)
                if obj
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|d| !d.is_null()) =>
            {
                Ok(None)
            }
            // Not terminating (any more), or gone: nothing to do.
            _ => Err(ApiError::not_found("pods", &key)),
        });
    });
}
