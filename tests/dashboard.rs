//! The Grafana dashboard (`contrib/grafana/hookgate.json`) and the alert
//! rules (`contrib/prometheus/hookgate-alerts.yml`) against the real thing:
//! a real Prometheus (Debian's package, as `.ci/run` unpacks it) scrapes a
//! real `hookgate run` over its admin listener every second, while the
//! gateway serves a known mix of requests over TLS (a replayed delivery
//! included, and spooled routes: one whose app is down, so its request is
//! kept and its redelivery fails, one queued and delivered, one queued and
//! answered 410, so a dead letter). Then every panel's
//! PromQL, every template variable's `label_values()` and every metric name
//! the rules and the dashboard mention is evaluated through Prometheus' HTTP
//! API: a parse error, an empty result or an all-zero panel fails the test,
//! and so does a rule Prometheus cannot evaluate, or a rule firing other
//! than the dead-letter alert the 410 must raise.
//!
//! Prometheus is an outside process that cannot take a pre-bound socket, so
//! it listens on 127.0.0.1:0 and its port is read from /proc (the socket
//! inodes it holds); readiness is polled with a deadline.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/hookgate.json");
const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/hookgate-alerts.yml"
);
const BODY: &[u8] = br#"{"event":"generation.completed","generation_id":"dash"}"#;
/// What the test substitutes for Grafana's variables: the scrape job, all
/// instances and routes (the variables' allValue), and a rate window that
/// covers the whole run.
const VARIABLES: [(&str, &str); 4] = [
    ("$__rate_interval", "1m"),
    ("$job", "hookgate"),
    ("$instance", ".*"),
    ("$route", ".*"),
];

/// A child process killed (and reaped) when the test ends, pass or fail.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query-string value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `target` from Prometheus' API; the parsed JSON body, whatever the
/// status (errors come back as `"status":"error"`).
async fn api(prom: SocketAddr, target: &str) -> Value {
    let req = format!("GET {target} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n");
    let (resp, _) = raw(prom, req.as_bytes()).await;
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{target}: {e}: {}", String::from_utf8_lossy(&resp.body)))
}

/// An instant query at the current time: the `data.result` vector.
async fn query(prom: SocketAddr, promql: &str) -> Result<Vec<Value>, String> {
    let v = api(prom, &format!("/api/v1/query?query={}", encode(promql))).await;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The numeric values of an instant vector.
fn values(result: &[Value]) -> Vec<f64> {
    result
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse().ok())
        .collect()
}

/// The TCP port a process listens on, from /proc (LISTEN sockets in
/// /proc/PID/net/tcp whose inode is one of its descriptors).
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is "0100007F:PORT", st 0A is LISTEN, inode is field 9.
        if f.get(3) == Some(&"0A") && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9)) {
            u16::from_str_radix(f.get(1)?.split(':').nth(1)?, 16).ok()
        } else {
            None
        }
    })
}

/// Starts Prometheus scraping `target` every second, with the alert rules
/// loaded, on a throwaway data dir; returns once `/-/ready` answers 200.
async fn start_prometheus(bin: &Path, dir: &Path, target: SocketAddr) -> (Reaped, SocketAddr) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {RULES}\nscrape_configs:\n  - job_name: hookgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--log.level=warn")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", log());
        }
        if let Some(port) = listening_port(pid) {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let ready = b"GET /-/ready HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n";
            if let Ok(mut s) = TcpStream::connect(addr).await {
                if s.write_all(ready).await.is_ok() {
                    if let Ok(r) = try_read_response(&mut s, Duration::from_secs(5)).await {
                        if r.status == 200 {
                            return (child, addr);
                        }
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready in 30 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `promql` until its first value equals `want` (Prometheus has
/// scraped that state), within 30 s.
async fn wait_for(prom: SocketAddr, promql: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(prom, promql).await.map(|r| values(&r));
        if got.as_deref().ok().and_then(|v| v.first()) == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: want {want}, Prometheus has {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request over a fresh TLS connection; the response status.
async fn tls_status(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    request: &[u8],
) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    try_read_response(&mut tls, Duration::from_secs(10))
        .await
        .unwrap()
        .status
}

/// `(panel title, PromQL with the variables substituted)` for every target
/// of every panel, rows included.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap().to_string();
            let expr = substitute(target["expr"].as_str().unwrap());
            out.push((title, expr));
        }
    }
    out
}

fn substitute(expr: &str) -> String {
    let mut expr = expr.to_string();
    for (name, value) in VARIABLES {
        expr = expr.replace(name, value);
    }
    assert!(!expr.contains('$'), "unknown Grafana variable in {expr}");
    expr
}

/// Every `hookgate_…` metric name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hookgate_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
                .count();
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

#[tokio::test]
async fn dashboard_panels_and_alert_rules_evaluate_against_real_prometheus() {
    let Some(prometheus) = require_prometheus_tool("PROMETHEUS", "prometheus", "dashboard") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "gw", (2040, 1, 1));
    let good = Upstream::start(Behaviour::Respond).await;
    let hang = Upstream::start(Behaviour::Hang).await;
    let gone = Upstream::start(Behaviour::Status(410, None)).await;
    let closed = closed_port().await;
    let config = dir.path().join("hookgate.toml");
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_body_bytes = 1024\nupstream_timeout = \"2s\"\n[spool]\npath = \"{}\"\nretry = [\"1s\", \"1h\", \"1h\"]\n",
        cert.cert.display(),
        cert.key.display(),
        dir.path().join("spool.db").display()
    );
    for (name, upstream, extra) in [
        (
            "a",
            good.addr,
            "replay_window = \"1h\"\ndelivery = \"sync\"\n",
        ),
        ("b", closed, "delivery = \"sync\"\n"),
        (
            "c",
            hang.addr,
            "upstream_timeout = \"60s\"\ndelivery = \"sync\"\n",
        ),
        // Spooled: the app is down (kept, the 1 s probe fails, pending),
        // the app takes it (queued, delivered), the app answers 410 (dead).
        ("d", closed, "delivery = \"on_failure\"\n"),
        ("e", good.addr, "delivery = \"always\"\n"),
        ("f", gone.addr, "delivery = \"always\"\n"),
    ] {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"http://{upstream}\"\nsecret = {{ env = \"SECRET_A\" }}\n{extra}"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let Running {
        child,
        addr,
        admin,
        lines,
        ..
    } = spawn_run(&config, &[("SECRET_A", SECRET_A)]);
    let hookgate_pid = child.id();
    let _hookgate = Reaped(child);
    // Keep reading stderr so the access log never fills the pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));

    let (_prometheus, prom) = start_prometheus(&prometheus, dir.path(), admin).await;
    // One scrape before the traffic, so rates have a zero to start from.
    wait_for(prom, "up{job=\"hookgate\"}", 1.0).await;

    // The known mix, over TLS.
    let tls = tls_connector(cert.der.clone(), &[b"http/1.1"]);
    let sig = sign(SECRET_A, BODY);
    let close = "Connection: close\r\n";
    // Four distinct deliveries to "a" (replay_window on), then a repeat.
    let distinct: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("{{\"event\":\"generation.completed\",\"n\":{i}}}").into_bytes())
        .collect();
    let mut mix: Vec<(Vec<u8>, u16)> = distinct
        .iter()
        .map(|b| (post("/a", Some(&sign(SECRET_A, b)), b, close), 201))
        .collect();
    mix.push((
        post(
            "/a",
            Some(&sign(SECRET_A, &distinct[0])),
            &distinct[0],
            close,
        ),
        200,
    ));
    mix.extend([
        (post("/a", Some(&sign(SECRET_B, BODY)), BODY, close), 401),
        (post("/a", None, BODY, close), 401),
        (post("/a", Some(&sig), &[b'x'; 2000], close), 413),
        (
            b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_vec(),
            405,
        ),
        (post("/nowhere", Some(&sig), BODY, close), 404),
        (post("/b", Some(&sig), BODY, close), 502),
        (post("/d", Some(&sig), BODY, close), 202),
        (post("/e", Some(&sig), BODY, close), 202),
        (post("/f", Some(&sig), BODY, close), 202),
    ]);
    for (request, status) in &mix {
        assert_eq!(tls_status(addr, &tls, request).await, *status);
    }
    // Plain HTTP to the TLS port: a handshake error.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(&post("/a", Some(&sig), BODY, ""))
        .await
        .unwrap();
    assert!(closed_by_server(&mut plain).await);
    // A request held by the hanging upstream: in flight while scraped.
    let held = tokio::spawn({
        let tls = tls.clone();
        let request = post("/c", Some(&sig), BODY, close);
        async move { tls_status(addr, &tls, &request).await }
    });
    // A successful reload.
    assert!(Command::new("kill")
        .args(["-HUP", &hookgate_pid.to_string()])
        .status()
        .unwrap()
        .success());

    for (promql, want) in [
        ("sum(hookgate_requests_total{outcome=\"forwarded\"})", 4.0),
        ("sum(hookgate_requests_total{outcome=\"duplicate\"})", 1.0),
        (
            "sum(hookgate_requests_total{outcome=~\"signature_.*\"})",
            2.0,
        ),
        ("hookgate_requests_in_flight", 1.0),
        ("hookgate_tls_handshake_errors_total", 1.0),
        ("hookgate_config_reloads_total{result=\"success\"}", 2.0),
        ("sum(hookgate_requests_total{outcome=\"spooled\"})", 1.0),
        ("sum(hookgate_requests_total{outcome=\"queued\"})", 2.0),
        (
            "hookgate_redeliveries_total{route=\"d\", result=\"retry\"}",
            1.0,
        ),
        (
            "hookgate_redeliveries_total{route=\"e\", result=\"delivered\"}",
            1.0,
        ),
        (
            "hookgate_redeliveries_total{route=\"f\", result=\"dead\"}",
            1.0,
        ),
        (
            "hookgate_spool_messages{route=\"d\", state=\"pending\"}",
            1.0,
        ),
        ("hookgate_spool_messages{route=\"f\", state=\"dead\"}", 1.0),
        (
            "count(hookgate_spool_oldest_pending_age_seconds{route=\"d\"} > 0)",
            1.0,
        ),
    ] {
        wait_for(prom, promql, want).await;
    }

    // Every panel's queries parse, return data, and show traffic.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 22, "{queries:?}");
    let mut panels_with_traffic = std::collections::BTreeMap::<String, bool>::new();
    for (title, promql) in &queries {
        let result = query(prom, promql)
            .await
            .unwrap_or_else(|e| panic!("panel {title:?}: {promql}: {e}"));
        assert!(
            !result.is_empty(),
            "panel {title:?}: empty result for {promql}"
        );
        let positive = values(&result).iter().any(|v| *v > 0.0);
        *panels_with_traffic.entry(title.clone()).or_default() |= positive;
    }
    for (title, positive) in &panels_with_traffic {
        assert!(
            positive,
            "panel {title:?}: every value is 0 after the traffic"
        );
    }
    let expiry = values(
        &query(
            prom,
            &substitute(
                &queries
                    .iter()
                    .find(|(t, _)| t == "TLS certificate expires in")
                    .unwrap()
                    .1,
            ),
        )
        .await
        .unwrap(),
    );
    // 2040-01-01T00:00:00Z minus now, within the time the test takes.
    let left = 2_208_988_800.0
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    assert!((expiry[0] - left).abs() < 120.0, "{expiry:?} vs {left}");

    // Template variables: label_values(selector, label) has values.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let target = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            encode(&substitute(selector.trim()))
        );
        let v = api(prom, &target).await;
        assert_eq!(v["status"], "success", "{q}: {v}");
        assert!(
            !v["data"].as_array().unwrap().is_empty(),
            "variable {}: no values for {q}",
            var["name"]
        );
    }

    // Every metric name the rules and the dashboard use is exposed (a
    // histogram's bare name, as the descriptions write it, through its
    // series).
    let rules_text = std::fs::read_to_string(RULES).unwrap();
    let dashboard_text = std::fs::read_to_string(DASHBOARD).unwrap();
    let names = metric_names(&format!("{rules_text}\n{dashboard_text}"));
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let result = query(
            prom,
            &format!("count({{__name__=~\"{name}(_bucket|_count|_sum)?\"}})"),
        )
        .await
        .unwrap();
        assert!(
            !result.is_empty(),
            "{name}: used by the rules or dashboard, not exposed by hookgate"
        );
    }

    // The rules are loaded and Prometheus evaluates each without error.
    let loaded = rules_text.matches("- alert: ").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = api(prom, "/api/v1/rules").await;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), loaded, "{v}");
        for rule in &rules {
            assert_ne!(rule["health"], "err", "{rule}");
        }
        // On a healthy gateway with a valid certificate only route f's
        // dead letter may fire, and it must (the rule has no `for`).
        let firing: Vec<&&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
        for rule in &firing {
            assert_eq!(rule["name"], "HookgateDeadLetters", "{rule}");
            for alert in rule["alerts"].as_array().unwrap() {
                assert_eq!(alert["labels"]["route"], "f", "{rule}");
            }
        }
        if rules.iter().all(|r| r["health"] == "ok") && !firing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules never evaluated, or HookgateDeadLetters never fired: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.abort();
}
