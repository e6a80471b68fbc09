//! The access log: one line per request with the fields operators need, and
//! never a secret, a signature or body content.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const CANARY: &str = "body-canary-7f3a9c";

/// Starts the real binary (`spawn`: the JSON or text format) on the
/// two-route config (route `a` gets `route_a_extra`) with an admin
/// listener, `HOOKGATE_LOG=filter`, and the secrets; the config's
/// directory must outlive the process.
fn start(
    spawn: fn(&Path, &[(&str, &str)]) -> Running,
    upstream: &Upstream,
    route_a_extra: &str,
    filter: &str,
) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            two_routes(upstream.addr, route_a_extra)
        ),
    )
    .unwrap();
    let running = spawn(
        &path,
        &[
            ("SECRET_A", SECRET_A),
            ("SECRET_B", SECRET_B),
            ("HOOKGATE_LOG", filter),
        ],
    );
    (dir, running)
}

/// Runs the real binary with JSON logs, sends a forwarded request, a
/// rejected one and an unmatched one, and reads stderr after SIGTERM.
#[tokio::test]
async fn one_line_per_request_without_secrets() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let (_dir, running) = start(spawn_run, &upstream, "", "debug");
    let Running {
        mut child,
        addr,
        lines,
        seen: mut all,
        ..
    } = running;

    let body = format!("{{\"event\":\"generation.completed\",\"note\":\"{CANARY}\"}}");
    let good = sign(SECRET_A, body.as_bytes());
    let wrong = sign(SECRET_B, body.as_bytes());
    let (r, _) = raw(addr, &post("/webhooks/a", Some(&good), body.as_bytes(), "")).await;
    assert_eq!(r.status, 201);
    let (r, _) = raw(
        addr,
        &post("/webhooks/a", Some(&wrong), body.as_bytes(), ""),
    )
    .await;
    assert_eq!(r.status, 401);
    let (r, _) = raw(addr, &post("/elsewhere", Some(&good), body.as_bytes(), "")).await;
    assert_eq!(r.status, 404);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    all.extend(lines.map_while(Result::ok));

    let access: Vec<serde_json::Value> = all
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "hookgate::access")
        .collect();
    assert_eq!(access.len(), 3, "{all:#?}");
    let expect = [
        ("a", 201, "forwarded", body.len() as u64),
        ("a", 401, "signature_invalid", body.len() as u64),
        ("-", 404, "unmatched", 0),
    ];
    for (line, (route, status, outcome, bytes)) in access.iter().zip(expect) {
        assert_eq!(line["route"], route, "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["status"], status, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        assert_eq!(line["body_bytes"], bytes, "{line}");
        assert!(line["duration_us"].as_u64().is_some(), "{line}");
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    }
    assert!(access[0]["upstream_us"].as_u64().is_some());
    assert!(access[1].get("upstream_us").is_none_or(|v| v.is_null()));
    // The debug line says which check failed.
    assert!(all
        .iter()
        .any(|l| l.contains("signature does not match the body")));

    let everything = all.join("\n");
    for forbidden in [SECRET_A, SECRET_B, good.as_str(), wrong.as_str(), CANARY] {
        assert!(!everything.contains(forbidden), "log leaks {forbidden}");
    }
}

/// The binary on a config with route `a` in shadow mode and `b`
/// enforcing, started by `spawn` (the JSON or text format) with
/// `HOOKGATE_LOG=filter`. Sends a forwarded request (a), a shadow failure
/// (a, wrong key: a warn line), a refused one (b, 401) and an unmatched one
/// (404), stops it (SIGTERM, exit 0) and returns every stderr line, read to
/// the end, with the body's length.
async fn four_requests(
    spawn: fn(&Path, &[(&str, &str)]) -> Running,
    filter: &str,
) -> (Vec<String>, usize) {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let (_dir, running) = start(spawn, &upstream, "enforce = false", filter);
    let Running {
        mut child,
        addr,
        lines,
        seen: mut all,
        ..
    } = running;
    let body = b"{\"event\":\"generation.completed\"}";
    let good = sign(SECRET_A, body);
    let wrong = sign(SECRET_B, body);
    for (path, sig, status) in [
        ("/webhooks/a", &good, 201),
        ("/webhooks/a", &wrong, 201),
        ("/webhooks/b", &good, 401),
        ("/elsewhere", &good, 404),
    ] {
        let (r, _) = raw(addr, &post(path, Some(sig), body, "")).await;
        assert_eq!(r.status, status, "{path}");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    all.extend(lines.map_while(Result::ok));
    (all, body.len())
}

/// The access lines [`four_requests`] leads to: route, status, outcome,
/// whether the body was read, whether the upstream was asked.
const FOUR_LINES: [(&str, u16, &str, bool, bool); 4] = [
    ("a", 201, "forwarded", true, true),
    ("a", 201, "shadow_invalid", true, true),
    ("b", 401, "signature_invalid", true, false),
    ("-", 404, "unmatched", false, false),
];

/// `token` is ` name=value` in `line`: the value.
fn field<'l>(line: &'l str, name: &str) -> &'l str {
    let start = format!(" {name}=");
    let at = line
        .find(&start)
        .unwrap_or_else(|| panic!("{name} in {line}"));
    let value = &line[at + start.len()..];
    value.split(' ').next().unwrap()
}

/// The text format's access lines, as the binary writes them: timestamp,
/// level, target and every field in order, byte for byte (only the
/// timestamp, durations and peer vary; they are read back and checked for
/// their form). The same layout the tracing formatter produced.
#[tokio::test]
async fn text_access_lines_from_the_binary() {
    let (all, len) = four_requests(spawn_run_text, "info").await;
    let access: Vec<&String> = all
        .iter()
        .filter(|l| l.contains(" hookgate::access: "))
        .collect();
    assert_eq!(access.len(), 4, "{all:#?}");
    for (line, (route, status, outcome, read, upstream_asked)) in access.iter().zip(FOUR_LINES) {
        let (stamp, _) = line.split_once(' ').unwrap();
        assert!(stamp.len() == 27, "{line}");
        humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{e}: {line}"));
        let bytes = if read { len } else { 0 };
        let duration: u64 = field(line, "duration_us").parse().unwrap();
        let peer = field(line, "peer");
        let client: std::net::SocketAddr = peer.parse().unwrap();
        assert!(client.ip().is_loopback(), "{line}");
        let upstream_us = if upstream_asked {
            let us: u64 = field(line, "upstream_us").parse().unwrap();
            format!(" upstream_us={us}")
        } else {
            assert!(!line.contains("upstream_us"), "{line}");
            String::new()
        };
        assert_eq!(
            line.as_str(),
            format!(
                "{stamp}  INFO hookgate::access: route={route} method=POST status={status} \
                 outcome={outcome} body_bytes={bytes} duration_us={duration}{upstream_us} \
                 peer={peer} protocol=HTTP/1.1"
            )
        );
    }
}

/// `HOOKGATE_LOG` still decides about the text access line: at `warn`
/// (the serving line kept so the test can find the port) no access line,
/// while the shadow route's warn line is there; `hookgate::access=off`
/// turns off just the access lines.
#[tokio::test]
async fn log_filter_decides_about_text_access_lines() {
    for filter in ["warn,hookgate::cli=info", "info,hookgate::access=off"] {
        let (all, _) = four_requests(spawn_run_text, filter).await;
        assert!(
            !all.iter().any(|l| l.contains("hookgate::access")),
            "{filter}: {all:#?}"
        );
        assert!(
            all.iter()
                .any(|l| l.contains(" WARN hookgate::proxy: shadow mode")),
            "{filter}: {all:#?}"
        );
        // Info lines of other targets: there with `info`, gone with `warn`.
        let drained = all
            .iter()
            .any(|l| l.contains(" INFO hookgate::server: drained"));
        assert_eq!(drained, filter.starts_with("info"), "{filter}: {all:#?}");
    }
}

/// The JSON format's access line, byte for byte: the same keys in the same
/// order as before the text format stopped going through tracing
/// (`upstream_us` left out when the upstream was not asked).
#[tokio::test]
async fn json_access_lines_keep_their_layout() {
    let (all, len) = four_requests(spawn_run, "info").await;
    let access: Vec<&String> = all
        .iter()
        .filter(|l| l.contains("\"target\":\"hookgate::access\""))
        .collect();
    assert_eq!(access.len(), 4, "{all:#?}");
    for (line, (route, status, outcome, read, upstream_asked)) in access.iter().zip(FOUR_LINES) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let stamp = v["timestamp"].as_str().unwrap();
        humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{e}: {line}"));
        let bytes = if read { len } else { 0 };
        let duration = v["duration_us"].as_u64().unwrap();
        let peer = v["peer"].as_str().unwrap();
        let upstream_us = if upstream_asked {
            format!(",\"upstream_us\":{}", v["upstream_us"].as_u64().unwrap())
        } else {
            String::new()
        };
        assert_eq!(
            line.as_str(),
            format!(
                "{{\"timestamp\":\"{stamp}\",\"level\":\"INFO\",\"route\":\"{route}\",\
                 \"method\":\"POST\",\"status\":{status},\"outcome\":\"{outcome}\",\
                 \"body_bytes\":{bytes},\"duration_us\":{duration}{upstream_us},\
                 \"peer\":\"{peer}\",\"protocol\":\"HTTP/1.1\",\"target\":\"hookgate::access\"}}"
            )
        );
    }
}

/// The text format's access lines share writes while the server runs
/// (`logging::access::coalesce`): with many requests ending together, every
/// line still arrives once and whole, while the server keeps running (not
/// only at exit), and a warn line made after them comes after them.
#[tokio::test]
async fn concurrent_text_access_lines_arrive_whole_while_serving() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let (_dir, mut running) = start(spawn_run_text, &upstream, "enforce = false", "info");
    let log = drain_log(&mut running);
    let addr = running.addr;
    const N: usize = 64;
    let body = b"{\"event\":\"generation.completed\"}";
    let good = sign(SECRET_A, body);
    let sends = (0..N).map(|_| {
        let good = good.clone();
        tokio::spawn(async move { raw(addr, &post("/webhooks/a", Some(&good), body, "")).await })
    });
    for send in sends.collect::<Vec<_>>() {
        assert_eq!(send.await.unwrap().0.status, 201);
    }
    // The shadow route's warn line, made after all N requests ended.
    let wrong = sign(SECRET_B, body);
    let (r, _) = raw(addr, &post("/webhooks/a", Some(&wrong), body, "")).await;
    assert_eq!(r.status, 201);

    let access = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains(" hookgate::access: "))
            .count()
    };
    let mut waited = 0;
    while access(&log.lock().unwrap()) < N + 1 {
        waited += 1;
        assert!(waited < 500, "{:#?}", log.lock().unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let lines = log.lock().unwrap().clone();
    let forwarded: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" outcome=forwarded "))
        .collect();
    assert_eq!(forwarded.len(), N, "{lines:#?}");
    for line in &forwarded {
        let (stamp, rest) = line.split_once(' ').unwrap();
        humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            rest.starts_with(" INFO hookgate::access: route=a method=POST status=201 "),
            "{line}"
        );
        assert!(line.ends_with(" protocol=HTTP/1.1"), "{line}");
        assert_eq!(line.matches("hookgate::access").count(), 1, "{line}");
    }
    let at = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l)).unwrap();
    let warn = at(&|l: &str| l.contains(" WARN hookgate::proxy: shadow mode"));
    let last_forwarded = lines
        .iter()
        .rposition(|l| l.contains(" outcome=forwarded "))
        .unwrap();
    assert!(last_forwarded < warn, "{lines:#?}");
    // Still serving: the lines came without the exit's flush.
    assert!(running.child.try_wait().unwrap().is_none());
    let kill = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(running.child.wait().unwrap().code(), Some(0));
}
