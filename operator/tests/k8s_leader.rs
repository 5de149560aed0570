//! Leader election under a network partition, against a real kube-apiserver: replica A reaches the API
//! server through a TCP proxy that the test turns into a black hole (open connections stall, new ones are
//! accepted and never answered: the worst case, no error comes back). A must stop leading within its renew
//! deadline, and replica B may take over only after that: never two leaders at once. When the partition
//! heals, A comes back as a standby and B keeps leading.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kiln_crds::InferenceService;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operator's defaults (kiln-operator run --help): renew deadline 10 s, retry period 2 s.
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// A TCP proxy to the API server that can be turned into a black hole and back.
struct Proxy {
    port: u16,
    black_hole: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().unwrap().port();
        let black_hole = Arc::new(AtomicBool::new(false));
        let hole = black_hole.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let hole = hole.clone();
                std::thread::spawn(move || {
                    if hole.load(Ordering::SeqCst) {
                        hold_forever(&[&inbound]);
                    }
                    let Ok(outbound) = TcpStream::connect(upstream) else {
                        return;
                    };
                    let (Ok(in2), Ok(out2)) = (inbound.try_clone(), outbound.try_clone()) else {
                        return;
                    };
                    let back = hole.clone();
                    std::thread::spawn(move || pump(out2, in2, &back));
                    pump(inbound, outbound, &hole);
                });
            }
        });
        Proxy { port, black_hole }
    }

    /// From now on nothing gets through, on open connections or new ones; no error is returned either.
    fn cut(&self) {
        self.black_hole.store(true, Ordering::SeqCst);
    }

    /// New connections are carried again (the stalled ones stay stalled, as after a real partition).
    fn heal(&self) {
        self.black_hole.store(false, Ordering::SeqCst);
    }
}

/// Copies bytes until the connection ends; once the proxy is a black hole, keeps the sockets open and
/// carries nothing.
fn pump(mut from: TcpStream, mut to: TcpStream, black_hole: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if black_hole.load(Ordering::SeqCst) {
            hold_forever(&[&from, &to]);
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn hold_forever(_sockets: &[&TcpStream]) -> ! {
    loop {
        std::thread::park();
    }
}

/// The operator kubeconfig with its server replaced by the proxy.
fn kubeconfig_through(op_kc: &Path, proxy_port: u16) -> PathBuf {
    let text = std::fs::read_to_string(op_kc).unwrap();
    let out = text
        .lines()
        .map(|l| match l.trim().strip_prefix("server: ") {
            Some(_) => format!("    server: https://127.0.0.1:{proxy_port}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = std::env::temp_dir().join(format!(
        "kiln-operator-proxied-{}-{proxy_port}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, out + "\n").unwrap();
    path
}

fn api_server_address(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("an https server in the kubeconfig");
    server
        .trim_end_matches('/')
        .parse()
        .expect("the test API server listens on an IP address")
}

async fn is_leader(op: &Operator) -> Option<bool> {
    Some(op.metric("kiln_operator_leader").await? == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_before_the_standby_takes_over() {
    let Some(admin) = kubeconfig_or_skip("a_partitioned_leader_steps_down") else {
        return;
    };
    let client = client_for(&admin).await;
    install_crd(&client).await;
    let ns = namespace(&client, "partition").await;
    let op_kc = operator_kubeconfig(&admin);
    let proxy = Proxy::start(api_server_address(&op_kc));
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // A leads, through the proxy, and really reconciles through it.
    let a = Operator::start(&kubeconfig_through(&op_kc, proxy.port), &ns, &[]);
    wait_for("A to lead", Duration::from_secs(30), || async {
        is_leader(&a).await?.then_some(())
    })
    .await;
    let b = Operator::start(&op_kc, &ns, &[]);
    isvcs
        .create(
            &PostParams::default(),
            &service(
                r#"
apiVersion: kiln.dev/v1alpha1
kind: InferenceService
metadata: {name: tiny}
spec:
  preset: smollm2-135m-cpu
  model: {uri: "file:///models/SmolLM2-135M-Instruct.Q4_1.gguf"}
"#,
            ),
        )
        .await
        .unwrap();
    wait_for(
        "A to apply the Deployment",
        Duration::from_secs(30),
        || async { deployments.get_opt("tiny").await.ok().flatten() },
    )
    .await;
    wait_for("B to run as a standby", Duration::from_secs(30), || async {
        (!is_leader(&b).await?).then_some(())
    })
    .await;
    assert_eq!(is_leader(&a).await, Some(true), "A must still lead");

    // The partition: watch both replicas closely until B leads.
    proxy.cut();
    let cut = Instant::now();
    let mut a_stopped = None;
    let b_took_over = loop {
        let (a_leads, b_leads) = (is_leader(&a).await, is_leader(&b).await);
        assert!(
            !(a_leads == Some(true) && b_leads == Some(true)),
            "two leaders at once, {:.1} s after the partition\nA:\n{}\nB:\n{}",
            cut.elapsed().as_secs_f64(),
            a.log_tail(),
            b.log_tail()
        );
        if a_leads == Some(false) && a_stopped.is_none() {
            a_stopped = Some(cut.elapsed());
        }
        if b_leads == Some(true) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(45),
            "B did not take over within 45 s\nA:\n{}\nB:\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a_stopped = a_stopped.expect("A stopped leading before B took over");
    eprintln!(
        "partition: A stopped leading after {:.1} s, B took over after {:.1} s",
        a_stopped.as_secs_f64(),
        b_took_over.as_secs_f64()
    );
    // A's last renewal was at most one retry period before the cut.
    assert!(
        a_stopped <= RENEW_DEADLINE + Duration::from_secs(1),
        "A kept leading {a_stopped:?} without reaching the API server (renew deadline {RENEW_DEADLINE:?})"
    );
    assert!(
        b_took_over >= RENEW_DEADLINE,
        "B took over after {b_took_over:?}: before A's renew deadline could have passed"
    );
    assert!(
        std::fs::read_to_string(&a.log)
            .unwrap()
            .contains("within the renew deadline; stepping down"),
        "A's log says why it stopped:\n{}",
        a.log_tail()
    );

    // B reconciles now: a spec edit reaches the Deployment.
    isvcs
        .patch(
            "tiny",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"context": {"size": 4096}}})),
        )
        .await
        .unwrap();
    wait_for("B to apply the edit", Duration::from_secs(30), || async {
        let d = deployments.get("tiny").await.ok()?;
        let args = d.spec?.template.spec?.containers[0].args.clone()?.join(" ");
        args.contains("--ctx 4096").then_some(())
    })
    .await;

    // Healed: A reaches the API server again and stays a standby; B keeps the lease.
    proxy.heal();
    wait_for(
        "A to read the lease again",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(&a.log)
                .ok()?
                .contains("the leader lease is held by another replica")
                .then_some(())
        },
    )
    .await;
    let healed = Instant::now();
    while healed.elapsed() < 2 * RETRY_PERIOD {
        assert_eq!(
            (is_leader(&a).await, is_leader(&b).await),
            (Some(false), Some(true)),
            "after the partition healed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(a);
    drop(b);
    delete_namespace(&client, &ns).await;
}
