//! The access log: one line per request with the fields operators need, and
//! never a secret, a signature or body content.

mod common;

use std::process::Command;

use common::*;

const CANARY: &str = "body-canary-7f3a9c";

/// Runs the real binary with JSON logs, sends a forwarded request, a
/// rejected one and an unmatched one, and reads stderr after SIGTERM.
#[tokio::test]
async fn one_line_per_request_without_secrets() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            two_routes(upstream.addr, "")
        ),
    )
    .unwrap();
    let Running {
        mut child,
        addr,
        lines,
        seen: mut all,
        ..
    } = spawn_run(
        &path,
        &[
            ("SECRET_A", SECRET_A),
            ("SECRET_B", SECRET_B),
            ("HOOKGATE_LOG", "debug"),
        ],
    );

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
