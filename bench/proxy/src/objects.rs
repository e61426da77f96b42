//! The benchmark's API objects: N ClusterIP Services without a selector (one TCP port each),
//! each with one hand-made EndpointSlice of 5 endpoints, created many at a time; one endpoint
//! of one slice changed (with the `endpoints.kubernetes.io/last-change-trigger-time` annotation
//! kube-proxy measures its programming latency from); and a paced stream of such changes.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, PostParams};

pub const NAMESPACE: &str = "bench";
pub const ENDPOINTS: usize = 5;
pub const PORT: i32 = 80;
pub const TARGET_PORT: i32 = 8080;
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub fn slice_name(i: usize) -> String {
    format!("svc-{i:05}-a")
}

/// Endpoint `j` of Service `i`: 10.42.10.1 onwards, 250 per /24 (10.42.10.0–10.42.209.255 for
/// 10,000 Services), away from the lab node's pod CIDR.
pub fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    let idx = i * ENDPOINTS + j;
    Ipv4Addr::new(10, 42, 10 + (idx / 250) as u8, 1 + (idx % 250) as u8)
}

/// The address a change number `generation` gives an endpoint: 10.42.210.1 onwards, so it
/// never equals an original one.
pub fn changed_ip(generation: usize) -> Ipv4Addr {
    let g = generation % (30 * 250);
    Ipv4Addr::new(10, 42, 210 + (g / 250) as u8, 1 + (g % 250) as u8)
}

pub fn service(name: &str, cluster_ip: Option<&str>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: cluster_ip.map(Into::into),
            ports: Some(vec![ServicePort {
                port: PORT,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(TARGET_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn slice(
    service: &str,
    name: &str,
    addresses: &[Ipv4Addr],
    trigger: Option<String>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(
                [
                    (SERVICE_NAME.to_string(), service.to_string()),
                    (MANAGED_BY.to_string(), "skein-bench".to_string()),
                ]
                .into(),
            ),
            annotations: trigger.map(|t| [(TRIGGER_TIME.to_string(), t)].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            port: Some(TARGET_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The addresses of Service `i`'s slice, with endpoint 0 changed to `generation`'s if given.
pub fn addresses(i: usize, generation: Option<usize>) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS)
        .map(|j| match generation {
            Some(g) if j == 0 => changed_ip(g),
            _ => endpoint_ip(i, j),
        })
        .collect()
}

pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(kube::Client::try_from(config)?)
}

/// Creates what is missing of Services `from..to` and their slices, `parallel` at a time.
pub async fn create(
    client: &kube::Client,
    from: usize,
    to: usize,
    parallel: usize,
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NAMESPACE).await?.is_none() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    futures::stream::iter(from..to)
        .map(|i| {
            let (services, slices, done) = (services.clone(), slices.clone(), done.clone());
            async move {
                let name = service_name(i);
                let svc = service(&name, None);
                retry(|| async {
                    ignore_exists(services.create(&PostParams::default(), &svc).await)
                })
                .await
                .with_context(|| format!("creating Service {name}"))?;
                let s = slice(&name, &slice_name(i), &addresses(i, None), None);
                retry(|| async { ignore_exists(slices.create(&PostParams::default(), &s).await) })
                    .await
                    .with_context(|| format!("creating EndpointSlice {}", slice_name(i)))?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1000 == 0 {
                    eprintln!("  {n} Services in {:.1} s", started.elapsed().as_secs_f64());
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await?;
    println!(
        "created Services {from}..{to} with their slices in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Service and slice the connection-rate test goes through: a fixed ClusterIP, one
/// endpoint.
pub async fn target(
    client: &kube::Client,
    cluster_ip: &str,
    endpoint: Ipv4Addr,
) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    ignore_exists(
        services
            .create(
                &PostParams::default(),
                &service("conn-target", Some(cluster_ip)),
            )
            .await,
    )?;
    ignore_exists(
        slices
            .create(
                &PostParams::default(),
                &slice("conn-target", "conn-target-a", &[endpoint], None),
            )
            .await,
    )?;
    Ok(())
}

/// A request tried again after a dropped connection or a server error (a loaded API server
/// on SQLite sheds some of thousands of creations), up to 5 times.
async fn retry<F, Fut>(mut request: F) -> Result<(), kube::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut attempt = 0;
    loop {
        match request().await {
            Err(kube::Error::Api(e)) if e.code < 500 => return Err(kube::Error::Api(e)),
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("  retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            other => return other,
        }
    }
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Endpoint 0 of Service `i`'s slice becomes `generation`'s address; the trigger time is now,
/// returned as Unix seconds.
pub async fn change(client: &kube::Client, i: usize, generation: usize) -> anyhow::Result<f64> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let now = jiff::Timestamp::now();
    let s = slice(
        &service_name(i),
        &slice_name(i),
        &addresses(i, Some(generation)),
        Some(now.to_string()),
    );
    // A merge patch replaces the endpoints list whole and needs no resourceVersion.
    let patch = serde_json::json!({
        "metadata": { "annotations": s.metadata.annotations },
        "endpoints": s.endpoints,
    });
    slices
        .patch(
            &slice_name(i),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("changing {}", slice_name(i)))?;
    Ok(now.as_nanosecond() as f64 / 1e9)
}

/// One change every `every` for `duration`, each to a different slice (spread over `count`
/// Services), sent on schedule whether or not the previous one was answered yet.
pub async fn churn(
    client: &kube::Client,
    count: usize,
    every: Duration,
    duration: Duration,
    first_generation: usize,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let total = (duration.as_secs_f64() / every.as_secs_f64()).round() as usize;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut answers: Vec<Duration> = Vec::with_capacity(total);
    let mut errors = 0usize;
    for k in 0..total {
        tick.tick().await;
        // 7919 is prime: consecutive changes land on slices far apart.
        let i = (k * 7919) % count;
        let client = client.clone();
        inflight.push(async move {
            let sent = Instant::now();
            let r = change(&client, i, first_generation + k).await;
            (sent.elapsed(), r)
        });
        while let Some(Some((took, r))) = futures::FutureExt::now_or_never(inflight.next()) {
            answers.push(took);
            errors += usize::from(r.is_err());
        }
    }
    while let Some((took, r)) = inflight.next().await {
        answers.push(took);
        if let Err(e) = r {
            errors += 1;
            eprintln!("{e:#}");
        }
    }
    let sent_for = started.elapsed();
    answers.sort();
    let q = |p: f64| answers[((answers.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    println!(
        "{{\"changes\":{total},\"errors\":{errors},\"seconds\":{:.2},\"api_ms_p50\":{:.2},\"api_ms_p99\":{:.2}}}",
        sent_for.as_secs_f64(),
        q(0.5),
        q(0.99)
    );
    Ok(())
}
