//! The `hookgate` binary: `check` on good and broken configs, `sign`, and
//! `run` serving a webhook then stopping cleanly on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookgate");

fn check(dir: &Path, config: &str) -> (i32, String, String) {
    let path = dir.join("hookgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env_clear()
        .env("SECRET_A", SECRET_A)
        .env("EMPTY", "")
        .env("BAD_WHSEC", "whsec_canary*not*base64")
        .env("SHORT_WHPK", "whpk_AAAA")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:8080"

[[route]]
name = "a"
path = "/hooks/a"
upstream = "http://127.0.0.1:3000"
secret = { env = "SECRET_A" }
"#;

/// Each broken config is refused with exit 1 and a one-line message naming
/// file:line:col (and the route) and saying what to do. No message ever
/// contains a secret value.
#[test]
fn broken_configs_each_get_their_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing_file = dir.path().join("nope");
    let cases: Vec<(&str, String, &str)> = vec![
        ("unknown key", GOOD.replace("upstream =", "uptream ="), "hookgate.toml:7:1: unknown field `uptream`, expected one of"),
        ("unknown section", format!("{GOOD}\n[extra]\nx = 1\n"), "hookgate.toml:10:2: unknown field `extra`"),
        ("bad TOML", GOOD.replace("name = \"a\"", "name = \"a"), "hookgate.toml:5:"),
        ("missing env", GOOD.replace("SECRET_A", "NOT_SET_VAR"), "hookgate.toml:8:10: route \"a\": secret env var NOT_SET_VAR is not set; export it or use secret = { file = \"...\" }"),
        ("empty env", GOOD.replace("SECRET_A", "EMPTY"), "route \"a\": secret env var EMPTY is empty"),
        ("missing secret file", GOOD.replace("{ env = \"SECRET_A\" }", &format!("{{ file = \"{}\" }}", missing_file.display())), "route \"a\": secret file"),
        ("credential outside systemd", GOOD.replace("{ env = \"SECRET_A\" }", "{ credential = \"a\" }"), "CREDENTIALS_DIRECTORY is not set"),
        ("inline secret", GOOD.replace("{ env = \"SECRET_A\" }", "\"canary-inline-secret\""), "hookgate.toml:8:10: inline secrets are not allowed"),
        ("two secret sources", GOOD.replace("{ env = \"SECRET_A\" }", "{ env = \"SECRET_A\", file = \"/x\" }"), "secret names more than one source"),
        ("https upstream", GOOD.replace("http://127", "https://127"), "route \"a\": upstream \"https://127.0.0.1:3000\" uses https, which is not supported"),
        ("upstream not a URL", GOOD.replace("http://127.0.0.1:3000", "127.0.0.1 3000"), "route \"a\": upstream \"127.0.0.1 3000\" is not a URL"),
        ("upstream with query", GOOD.replace("http://127.0.0.1:3000", "http://127.0.0.1:3000/x?y=1"), "must not contain a query"),
        ("path without slash", GOOD.replace("\"/hooks/a\"", "\"hooks/a\""), "route \"a\": path \"hooks/a\" must start with '/'"),
        ("bad name", GOOD.replace("name = \"a\"", "name = \"a b\""), "hookgate.toml:5:8: route \"a b\": name must be 1-64 characters"),
        ("bad method", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nmethods = [\"post\"]"), "method \"post\" is not an upper-case HTTP method"),
        ("bad scheme", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = \"githib\""), "hookgate.toml:7:10: route \"a\": unknown scheme \"githib\"; use one of adsumo, github, stripe, shopify, slack, standard-webhooks, zendesk, paddle, linear, twilio, gitlab or a [route.scheme] table"),
        ("whsec not base64", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = \"standard-webhooks\"").replace("SECRET_A", "BAD_WHSEC"), "hookgate.toml:9:10: route \"a\": key \"default\": the whsec_ secret is not valid base64 after the prefix"),
        ("ed25519 key length", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = \"standard-webhooks\"").replace("SECRET_A", "SHORT_WHPK"), "route \"a\": key \"default\": the whpk_ key decodes to 3 bytes; an ed25519 public key is 32 bytes"),
        ("twilio without public_url", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = \"twilio\""), "hookgate.toml:5:8: route \"a\": scheme \"twilio\" signs the URL the sender calls; set public_url = \"https://hooks.example.com/hooks/a\""),
        ("zero tolerance", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = { preset = \"stripe\", tolerance = \"0s\" }"), "hookgate.toml:7:10: route \"a\": scheme.tolerance must be greater than zero"),
        ("custom scheme unknown key", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nscheme = { header = \"X-Sig\", encodng = \"hex\" }"), "route \"a\": scheme: unknown field `encodng`"),
        ("secret and secrets", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nsecrets = [{ env = \"SECRET_A\" }]"), "set either secret (one key) or secrets (rotation), not both"),
        ("bad not_after", GOOD.replace("secret = { env = \"SECRET_A\" }", "secrets = [{ env = \"SECRET_A\", not_after = \"soon\" }]"), "route \"a\": key \"SECRET_A\": not_after \"soon\" is not a time"),
        ("duplicate key id", GOOD.replace("secret = { env = \"SECRET_A\" }", "secrets = [{ env = \"SECRET_A\" }, { env = \"SECRET_A\" }]"), "key \"SECRET_A\": duplicate key id"),
        ("bad host", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nhost = \"https://x.test/\""), "must be a bare host name"),
        ("bad listen", GOOD.replace("127.0.0.1:8080", "localhost:8080"), "hookgate.toml:2:10: server.listen: \"localhost:8080\" is not an IP:port address"),
        ("bad duration", GOOD.replace("[server]", "[limits]\nrequest_timeout = \"10\"\n[server]"), "hookgate.toml:2:19: limits.request_timeout: \"10\" is not a duration"),
        ("zero duration", GOOD.replace("[server]", "[limits]\nupstream_timeout = \"0s\"\n[server]"), "limits.upstream_timeout must be greater than zero"),
        ("bad CIDR", GOOD.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/33\"]"), "server.trusted_proxies: \"10.0.0.0/33\" is not an IP address or CIDR"),
        ("duplicate name", format!("{GOOD}\n[[route]]\nname = \"a\"\npath = \"/hooks/b\"\nupstream = \"http://127.0.0.1:3000\"\nsecret = {{ env = \"SECRET_A\" }}\n"), "hookgate.toml:11:8: route \"a\": duplicate route name (first defined at line:column 5:8)"),
        ("duplicate path", format!("{GOOD}\n[[route]]\nname = \"b\"\npath = \"/hooks/a\"\nupstream = \"http://127.0.0.1:3000\"\nsecret = {{ env = \"SECRET_A\" }}\n"), "route \"b\": another route already serves path \"/hooks/a\" on any host"),
        ("zero replay_window", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nreplay_window = \"0s\""), "hookgate.toml:7:17: route \"a\": replay_window must be greater than zero"),
        ("bad replay_window", GOOD.replace("path = \"/hooks/a\"", "path = \"/hooks/a\"\nreplay_window = \"24\""), "hookgate.toml:7:17: route \"a\": replay_window: \"24\" is not a duration"),
        ("zero replay_max_entries", GOOD.replace("[server]", "[limits]\nreplay_max_entries = 0\n[server]"), "hookgate.toml:2:22: limits.replay_max_entries must be at least 1"),
        ("missing listen", GOOD.replace("listen = \"127.0.0.1:8080\"\n", ""), "missing field `listen`"),
    ];
    for (what, config, want) in cases {
        let (code, stdout, stderr) = check(dir.path(), &config);
        assert_eq!(code, 1, "{what}: exit code; stderr: {stderr}");
        assert!(stdout.is_empty(), "{what}: stdout {stdout}");
        assert!(stderr.contains(want), "{what}: want {want:?} in:\n{stderr}");
        assert!(
            !stderr.contains("canary") && !stderr.contains(SECRET_A),
            "{what}: leaked"
        );
        for line in stderr.lines() {
            assert!(
                line.starts_with(&dir.path().join("hookgate.toml").display().to_string()),
                "{what}: line without file: {line}"
            );
        }
    }
}

/// All problems are reported in one run, one line each.
#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = GOOD
        .replace("127.0.0.1:8080", "nowhere")
        .replace("SECRET_A", "UNSET")
        .replace("http://127.0.0.1:3000", "ftp://x");
    let (code, _, stderr) = check(dir.path(), &config);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
}

/// A missing config file is one clear line.
#[test]
fn missing_config_file() {
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/hookgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("/nonexistent/hookgate.toml: cannot read config"),
        "{stderr}"
    );
}

/// The shipped example config passes `check` once its env var is set.
#[test]
fn example_config_passes_check() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
        .env("ADSUMO_PROD_WEBHOOK_SECRET", "example-secret-0123456789")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("configuration OK (1 route)"));
}

/// The config the Debian package installs as /etc/hookgate/hookgate.toml.
const PACKAGED_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/deb/hookgate.toml");

/// A config without any route is valid (the packaged default is one):
/// `check` exits 0 and says plainly that nothing will be forwarded.
#[test]
fn zero_routes_pass_check_with_a_notice() {
    let out = Command::new(BIN)
        .args(["check", "--config", PACKAGED_CONFIG])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!("{PACKAGED_CONFIG}: configuration OK; no routes configured: every request will be answered 404 until a [[route]] is added\n")
    );
}

/// `run` serves the packaged zero-route config: a warning says nothing is
/// routed, every request gets 404, the admin listener answers.
#[tokio::test]
async fn run_serves_zero_routes_with_404() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgate.toml");
    let text = std::fs::read_to_string(PACKAGED_CONFIG).unwrap();
    assert_eq!(text.matches("127.0.0.1:8080").count(), 1);
    assert_eq!(text.matches("127.0.0.1:9464").count(), 1);
    let spool = dir.path().join("spool.db");
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9464", "127.0.0.1:0")
        .replace("/var/lib/hookgate/spool.db", spool.to_str().unwrap());
    std::fs::write(&path, text).unwrap();
    let Running {
        mut child,
        addr,
        admin,
        mut lines,
        seen,
    } = spawn_run(&path, &[]);
    let warning = lines.next().unwrap().unwrap();
    assert!(
        warning.contains("\"level\":\"WARN\"") && warning.contains("no routes configured"),
        "{seen:?} then {warning}"
    );
    let body = b"{}";
    let (resp, _) = raw(
        addr,
        &post(
            "/webhooks/adsumo/prod",
            Some(&sign(SECRET_A, body)),
            body,
            "",
        ),
    )
    .await;
    assert_eq!(resp.status, 404);
    let (resp, _) = raw(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `sign` prints the RFC 4231 test case 2 HMAC-SHA256, from a file and from
/// stdin.
#[test]
fn sign_matches_known_answer() {
    const WANT: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, "what do ya want for nothing?").unwrap();
    let out = Command::new(BIN)
        .args(["sign", "--secret-env", "K"])
        .arg(&body)
        .env("K", "Jefe")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), WANT);

    let mut child = Command::new(BIN)
        .args(["sign", "--secret-env", "K", "-"])
        .env("K", "Jefe")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"what do ya want for nothing?")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), WANT);

    let out = Command::new(BIN)
        .args(["sign", "--secret-env", "UNSET_VAR"])
        .arg(&body)
        .env_remove("UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("UNSET_VAR is not set"));
}

/// `hookgate --version` prints the crate version.
#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("hookgate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// GOOD on free ports in front of `upstream`, written to `dir`.
fn write_runnable(dir: &Path, upstream: &Upstream) -> std::path::PathBuf {
    let path = dir.join("hookgate.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            GOOD.replace("127.0.0.1:8080", "127.0.0.1:0")
                .replace("127.0.0.1:3000", &upstream.addr.to_string())
        ),
    )
    .unwrap();
    path
}

/// `run` serves a signed webhook, then SIGTERM stops it with exit 0.
#[tokio::test]
async fn run_serves_then_stops_on_sigterm() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_runnable(dir.path(), &upstream);
    let Running {
        mut child,
        addr,
        lines,
        ..
    } = spawn_run(&path, &[("SECRET_A", SECRET_A)]);
    let body = b"{\"event\":\"generation.completed\"}";
    let (resp, _) = raw(
        addr,
        &post("/hooks/a", Some(&sign(SECRET_A, body)), body, ""),
    )
    .await;
    assert_eq!(resp.status, 201);
    assert_eq!(upstream.count(), 1);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("hookgate stopped")),
        "{rest:?}"
    );
}

/// An upstream URL with credentials is refused by `check` and by `run`,
/// and neither prints the password: the URL is shown with its userinfo
/// masked (also when the URL does not even parse).
#[test]
fn upstream_credentials_are_masked_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "http://hookuser:canary-pass@127.0.0.1:3000",
            "upstream \"http://***@127.0.0.1:3000\" must not contain credentials",
        ),
        (
            "http://hookuser:canary pass@127.0.0.1:3000/in",
            "upstream \"http://***@127.0.0.1:3000/in\" is not a URL",
        ),
    ];
    for (url, want) in cases {
        let config = GOOD.replace("http://127.0.0.1:3000", url);
        let (code, _, stderr) = check(dir.path(), &config);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
        assert!(!stderr.contains("canary"), "password leaked: {stderr}");

        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(dir.path().join("hookgate.toml"))
            .env_clear()
            .env("SECRET_A", SECRET_A)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(want), "run: want {want:?} in {stderr}");
        assert!(!stderr.contains("canary"), "run: password leaked: {stderr}");
    }
}

/// Config foot-guns are warned about, each naming its route: two routes
/// sharing a secret, a secret shorter than 16 bytes, a secret file readable
/// by group or others, an upstream host that does not resolve. `check`
/// still passes (exit 0) unless `--strict`, which fails on any warning;
/// `run` logs the same warnings at warn level and serves. A clean config
/// passes `--strict`.
#[tokio::test]
async fn config_warnings_and_strict() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose-secret");
    std::fs::write(&loose, "a-long-enough-file-secret-0123456789\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
    let route = |name: &str, secret: &str, up: &str| {
        format!("\n[[route]]\nname = \"{name}\"\npath = \"/hooks/{name}\"\nupstream = \"{up}\"\nsecret = {secret}\n")
    };
    let up = format!("http://{}", upstream.addr);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}{}{}{}{}",
        route("a", "{ env = \"SECRET_A\" }", &up),
        route("shared", "{ env = \"SECRET_A_AGAIN\" }", &up),
        route("short", "{ env = \"SHORT\" }", &up),
        route(
            "loose",
            &format!("{{ file = \"{}\" }}", loose.display()),
            &up
        ),
        route(
            "nowhere",
            "{ env = \"SECRET_B\" }",
            "http://no-such-host.invalid:3000"
        ),
    );
    let path = dir.path().join("hookgate.toml");
    std::fs::write(&path, &config).unwrap();
    let wants = [
        "route \"shared\": uses the same secret as route \"a\"",
        "route \"short\": secret is shorter than 16 bytes",
        &format!(
            "route \"loose\": secret file {} is readable by group or others (mode 0640)",
            loose.display()
        ),
        "route \"nowhere\": upstream host no-such-host.invalid does not resolve",
    ];
    let check = |strict: bool| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check");
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd
            .arg("--config")
            .arg(&path)
            .env_clear()
            .env("SECRET_A", SECRET_A)
            .env("SECRET_A_AGAIN", SECRET_A)
            .env("SECRET_B", SECRET_B)
            .env("SHORT", "tiny-canary")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    for strict in [false, true] {
        let (code, stdout, stderr) = check(strict);
        assert_eq!(
            code,
            if strict { 1 } else { 0 },
            "strict={strict}: {stderr}"
        );
        for want in wants {
            assert!(
                stderr.contains(want),
                "strict={strict}: want {want:?} in:\n{stderr}"
            );
        }
        assert_eq!(stderr.lines().count(), 4, "{stderr}");
        for line in stderr.lines() {
            assert!(line.starts_with(&format!("{}:", path.display())), "{line}");
            assert!(line.contains(": warning: "), "{line}");
        }
        assert!(
            !stderr.contains(SECRET_A) && !stderr.contains("canary"),
            "{stderr}"
        );
        if strict {
            assert!(stdout.is_empty(), "{stdout}");
        } else {
            assert!(
                stdout.contains("configuration OK (5 routes, 4 warnings)"),
                "{stdout}"
            );
        }
    }

    let Running {
        mut child,
        addr,
        seen,
        lines,
        ..
    } = spawn_run(
        &path,
        &[
            ("SECRET_A", SECRET_A),
            ("SECRET_A_AGAIN", SECRET_A),
            ("SECRET_B", SECRET_B),
            ("SHORT", "tiny-canary"),
        ],
    );
    for want in wants {
        let line = seen
            .iter()
            .find(|l| l.contains(&want.replace('"', "\\\"")))
            .unwrap_or_else(|| panic!("run: no {want:?} in {seen:#?}"));
        assert!(line.contains("\"level\":\"WARN\""), "{line}");
    }
    let body = b"{}";
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(&post("/hooks/a", Some(&sign(SECRET_A, body)), body, ""))
        .await
        .unwrap();
    let resp = try_read_response(&mut stream, std::time::Duration::from_secs(5)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(resp.map(|r| r.status), Ok(201), "{rest:#?}");

    // The clean config passes --strict.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, GOOD).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--strict", "--config"])
        .arg(&good)
        .env_clear()
        .env("SECRET_A", SECRET_A)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
}

/// A log pipe that goes away (the reader of stderr exits) must not break
/// serving: writes to it fail, and tracing-subscriber reports such
/// failures with `eprintln!`, which panics on the same closed pipe; that
/// panic used to kill each connection right after its response head.
#[tokio::test]
async fn closed_log_pipe_does_not_break_serving() {
    let upstream = Upstream::start(Behaviour::Respond).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_runnable(dir.path(), &upstream);
    let Running {
        mut child,
        addr,
        lines,
        ..
    } = spawn_run(&path, &[("SECRET_A", SECRET_A)]);
    drop(lines); // closes our end of the stderr pipe
    let body = b"{\"event\":\"generation.completed\"}";
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::AsyncWriteExt;
        stream
            .write_all(&post("/hooks/a", Some(&sign(SECRET_A, body)), body, ""))
            .await
            .unwrap();
        let resp = try_read_response(&mut stream, std::time::Duration::from_secs(5)).await;
        if resp.as_ref().map(|r| r.status) != Ok(201) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{resp:?}");
        }
        assert_eq!(resp.unwrap().body, UPSTREAM_BODY);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
