//! `skein-lab apply -f` and `skein-lab get`: any kind the API server serves, found through
//! discovery, applied server-side (like `kubectl apply --server-side`); a document's `status`
//! is applied to the status subresource as well.

use anyhow::Context;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize;

const FIELD_MANAGER: &str = "skein-lab";

/// Applies every document of a multi-document YAML text; returns `kind/name` per object.
pub async fn apply_yaml(
    client: &kube::Client,
    text: &str,
    origin: &str,
) -> anyhow::Result<Vec<String>> {
    let mut applied = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("{origin}: document {}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_yaml::from_value(value)
            .with_context(|| format!("{origin}: document {}", i + 1))?;
        let types = object
            .types
            .clone()
            .with_context(|| format!("{origin}: document {} has no apiVersion and kind", i + 1))?;
        let name = object.metadata.name.clone().with_context(|| {
            format!(
                "{origin}: document {} ({}) has no metadata.name",
                i + 1,
                types.kind
            )
        })?;
        let gvk = GroupVersionKind::try_from(&types)
            .with_context(|| format!("{origin}: apiVersion {}", types.api_version))?;
        let (resource, caps) = discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| {
                format!(
                    "{origin}: the API server does not serve {} {}",
                    types.api_version, types.kind
                )
            })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                let ns = object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
        };
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("{origin}: applying {}/{name}", types.kind))?;
        // The lab has no cloud controller nor kubelet for every field: a document that carries
        // a `status` (a Service's load-balancer ingress, say) sets it as their owner would.
        if object.data.get("status").is_some_and(|s| !s.is_null()) {
            api.patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("{origin}: applying the status of {}/{name}", types.kind))?;
        }
        applied.push(format!("{}/{name}", types.kind.to_lowercase()));
    }
    Ok(applied)
}

/// Lists objects of a kind named as a person would (`nodes`, `node`, `Pod`, `svc`, `netpol`).
pub async fn get(client: &kube::Client, kind: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let (resource, _) = resolve(client, kind).await?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    Ok(api.list(&ListParams::default()).await?.items)
}

/// Deletes one object, with `grace_seconds` when given; `namespace` is ignored for
/// cluster-scoped kinds.
pub async fn delete(
    client: &kube::Client,
    kind: &str,
    namespace: &str,
    name: &str,
    grace_seconds: Option<u32>,
) -> anyhow::Result<()> {
    let (resource, caps) = resolve(client, kind).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
    };
    let params = DeleteParams {
        grace_period_seconds: grace_seconds,
        ..Default::default()
    };
    api.delete(name, &params)
        .await
        .with_context(|| format!("deleting {kind} {name}"))?;
    Ok(())
}

async fn resolve(
    client: &kube::Client,
    kind: &str,
) -> anyhow::Result<(
    kube::discovery::ApiResource,
    kube::discovery::ApiCapabilities,
)> {
    let wanted = kind.to_lowercase();
    let discovery = discovery::Discovery::new(client.clone()).run().await?;
    let mut found = None;
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let short = match resource.plural.as_str() {
                "services" => Some("svc"),
                "networkpolicies" => Some("netpol"),
                "namespaces" => Some("ns"),
                "endpointslices" => Some("eps"),
                _ => None,
            };
            if resource.plural == wanted
                || resource.kind.to_lowercase() == wanted
                || short == Some(wanted.as_str())
            {
                found = Some((resource, caps));
            }
        }
    }
    found.with_context(|| format!("the API server serves no kind named {kind:?}"))
}

/// Watches a kind and prints one JSON line per event as it arrives, forever:
/// `{"at_ms": <unix ms when it arrived>, "event": "init"|"apply"|"delete", "object": {...}}`
/// (`init` for the objects of a (re)list, then `synced` once it is whole). A test times a
/// change by it, to the millisecond.
pub async fn watch(client: &kube::Client, kind: &str) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::io::Write;
    let (resource, _) = resolve(client, kind).await?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    while let Some(event) = events.next().await {
        let line = match event {
            Ok(watcher::Event::Init) => continue,
            Ok(watcher::Event::InitApply(o)) => {
                serde_json::json!({"at_ms": now(), "event": "init", "object": o})
            }
            Ok(watcher::Event::InitDone) => serde_json::json!({"at_ms": now(), "event": "synced"}),
            Ok(watcher::Event::Apply(o)) => {
                serde_json::json!({"at_ms": now(), "event": "apply", "object": o})
            }
            Ok(watcher::Event::Delete(o)) => {
                serde_json::json!({"at_ms": now(), "event": "delete", "object": o})
            }
            Err(e) => {
                eprintln!("skein-lab: watch: {e}");
                continue;
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
