//! service.yml reading: what users write, what they get wrong, and what attackers send.

use std::time::Duration;

use ferry_api::servicefile::{
    Database, DnsBehaviour, EnvValue, Health, LoadBalancing, ParseError, Port, Severity, StopStep,
    parse,
};

const FULL: &str = r#"# the example stack
services:
  web:
    build_root: web
    command: node server.js
    ports: ["3000:80:443"]
    traffic_matches: ["app.example.com", "*.example.com"]
    health:
      type: inbound
      endpoint: /healthz
      protocol: http
      timeout: 45s
      accept: ["200", "300-399"]
    env_vars:
      NODE_ENV: production
      WORKERS: 4
      DATABASE_URL: _env(DATABASE_URL)
    requires: [api]
    stop_grace: 30s
    pre_stop_sequence: 1m:USR2:30s:USR1:50s
    restart_on_deploy: false
    load_balancing: sticky
    constraints:
      min_count: 2
      max_count: 4
      resources:
        memory: 512m
        cpu: 0.5
    tags:
      team: storefront
    git_url: https://example.com/app.git
  api:
    build_root: api
    dockerfile_path: Dockerfile.prod
    ports:
      - container: 4000
        http: 8080
      - container: 5000
        tcp: 5000
      - container: 5353
        udp: 5353
    dns_behaviour: non-versioned
    volumes: ["data:/var/lib/api", "/etc/ssl:/etc/ssl:ro"]
    health: none
    comand: oops
databases:
  - mysql
  - redis
"#;

fn errors(err: &ParseError) -> Vec<String> {
    err.errors().map(ToString::to_string).collect()
}

#[test]
fn a_full_file_reads_into_typed_services() {
    let parsed = parse("service.yml", FULL).expect("valid file");
    let web = &parsed.stack.services["web"];
    assert_eq!(web.build_root.as_deref(), Some("web"));
    assert_eq!(web.command.as_deref(), Some("node server.js"));
    assert_eq!(
        web.ports,
        vec![Port {
            container: 3000,
            http: Some(80),
            https: Some(443),
            tcp: None,
            udp: None
        }]
    );
    assert_eq!(
        web.traffic_matches,
        vec!["app.example.com", "*.example.com"]
    );
    let Health::Check(check) = &web.health else {
        panic!("expected a health check")
    };
    assert_eq!(check.endpoint, "/healthz");
    assert_eq!(check.timeout, Duration::from_secs(45));
    assert_eq!(check.accept, vec![(200, 200), (300, 399)]);
    assert_eq!(web.env_vars["WORKERS"], EnvValue::Plain("4".into()));
    assert_eq!(
        web.env_vars["DATABASE_URL"],
        EnvValue::Stack("DATABASE_URL".into())
    );
    assert_eq!(web.requires, vec!["api"]);
    assert_eq!(web.stop_grace, Some(Duration::from_secs(30)));
    assert_eq!(web.pre_stop_sequence.len(), 5);
    assert_eq!(web.pre_stop_sequence[1], StopStep::Signal("USR2".into()));
    assert!(!web.restart_on_deploy);
    assert_eq!(web.load_balancing, LoadBalancing::Sticky);
    assert_eq!(web.constraints.max_count, Some(4));
    assert_eq!(web.constraints.min_count, Some(2));
    assert_eq!(web.constraints.memory, Some(512 << 20));
    assert_eq!(web.constraints.cpu_millis, Some(500));
    assert_eq!(web.tags["team"], "storefront");

    let api = &parsed.stack.services["api"];
    assert_eq!(api.ports.len(), 3);
    assert_eq!(api.ports[1].tcp, Some(5000));
    assert_eq!(api.ports[2].udp, Some(5353));
    assert_eq!(api.dns_behaviour, DnsBehaviour::NonVersioned);
    assert!(api.volumes[1].read_only);
    assert_eq!(api.health, Health::None);
    assert!(api.restart_on_deploy, "Cloud 66's default is to restart");
    assert_eq!(
        parsed.stack.databases,
        vec![Database::Mysql, Database::Redis]
    );

    // Nothing is dropped silently: the ignored and the misspelt directives are reported
    // where they are.
    let warnings: Vec<String> = parsed.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("service.yml:31:14: warning: services.web.git_url:"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("services.api.comand")
            && warnings[1].contains("did you mean \"command\""),
        "{}",
        warnings[1]
    );
}

#[test]
fn every_error_is_reported_with_file_line_column_and_expectation() {
    let text = "services:\n  web:\n    ports: [\"3000:eighty\"]\n    stop_grace: soon\n    restart_on_deploy: maybe\n    load_balancing: random\n";
    let err = parse("stack/service.yml", text).unwrap_err();
    let errors = errors(&err);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].starts_with("stack/service.yml:3:13: error: services.web.ports[0]: expected \"CONTAINER[:HTTP[:HTTPS]]\""), "{}", errors[0]);
    assert!(
        errors[1].starts_with(
            "stack/service.yml:4:17: error: services.web.stop_grace: expected a duration"
        ),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains(":5:24:")
            && errors[2].contains("expected true or false, found \"maybe\""),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].contains("expected roundrobin, sticky or closest"),
        "{}",
        errors[3]
    );
    assert!(
        err.to_string()
            .starts_with("stack/service.yml has 4 errors; nothing was changed")
    );
}

#[test]
fn rules_across_services_are_enforced() {
    let text = r#"
services:
  web:
    image: node:20
    build_root: web
    ports: ["3000:80"]
    requires: [cache]
  admin:
    ports: ["3001:80"]
  mqtt:
    ports: [{container: 1883, tcp: 1883}]
  broker:
    ports: [{container: 1884, tcp: 1883}]
"#;
    let errors = errors(&parse("service.yml", text).unwrap_err());
    let all = errors.join("\n");
    assert!(all.contains("both image and build_root"), "{all}");
    assert!(
        all.contains("requires \"cache\", which is not a service"),
        "{all}"
    );
    assert!(
        all.contains("host port 80 already has \"admin\" as its default service"),
        "{all}"
    );
    assert!(
        all.contains("tcp host port 1883 is already published by \"broker\""),
        "{all}"
    );
}

#[test]
fn bad_names_paths_and_values_are_refused() {
    let text = r#"
services:
  Web_App:
    build_root: ../../etc
    traffic_matches: ["not a host"]
    env_vars:
      1BAD: x
      REF: _env(MISSING
    volumes: ["data"]
    health: sometimes
    constraints:
      min_count: 5
      max_count: 2
      resources:
        memory: lots
databases: [oracle]
"#;
    let all = errors(&parse("service.yml", text).unwrap_err()).join("\n");
    for expected in [
        "\"Web_App\" cannot be a service name",
        "path inside the stack's source",
        "expected a host name",
        "\"1BAD\" is not a valid variable name",
        "closing parenthesis",
        "expected \"SOURCE:/container/path[:ro]\"",
        "expected default, none, or a mapping",
        "expected a memory size",
        "min_count 5 is above max_count 2; lower min_count or raise max_count",
        "unknown database \"oracle\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in\n{all}");
    }
}

#[test]
fn hostile_input_is_bounded_and_refused_cleanly() {
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "the file is empty"),
        ("services:\n  web: {}\n---\nservices: {}\n".into(), "expected one YAML document"),
        ("a: &x [1]\nb: *x\n".into(), "anchors are not supported"),
        // The classic expansion bomb: refused before anything is expanded.
        (
            "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n".into(),
            "anchors are not supported",
        ),
        // Flow nesting is stopped by the YAML scanner itself, block nesting by ferry.
        (format!("services: {}{}", "[".repeat(10_000), "]".repeat(10_000)), "recursion limit exceeded"),
        (
            (0..40).map(|d| format!("{}k{d}:\n", "  ".repeat(d))).collect::<String>() + &"  ".repeat(40) + "v: 1\n",
            "nesting deeper than 32 levels",
        ),
        (format!("services:\n  web:\n    command: \"{}\"\n", "x".repeat(300 * 1024)), "may be at most"),
        ("services: [unclosed\n".into(), "not valid YAML"),
        ("\u{0}\u{1}\u{2}garbage: [".into(), "not valid YAML"),
        ("- just\n- a list\n".into(), "expected a mapping"),
        ("databases: [mysql]\n".into(), "no `services:` mapping"),
        ("services:\n  web:\n    ports: [\"3000\"]\n  web:\n    image: x\n".into(), "duplicated key in mapping"),
    ];
    for (text, expected) in cases {
        let err = parse("service.yml", &text).expect_err(expected);
        let shown = err.to_string();
        assert!(
            shown.contains(expected),
            "expected {expected:?}, got {shown}"
        );
        assert!(shown.contains("service.yml:"), "no location in {shown}");
    }
}

#[test]
fn random_mutations_never_panic() {
    // A deterministic stand-in for the fuzz target (central/fuzz), so the unit tier keeps
    // the property: any bytes in, a value or a located error out.
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base = FULL.as_bytes();
    for _ in 0..3000 {
        let mut bytes = base.to_vec();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = (next() % 128) as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, b"[{:-&*\"'\n #"[(next() % 11) as usize]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(err) = parse("service.yml", &text) {
            assert!(
                err.errors().count() > 0,
                "an error without a problem for {text:?}"
            );
        }
    }
}

#[test]
fn error_severity_is_kept_apart_from_warnings() {
    let err = parse(
        "service.yml",
        "services:\n  web:\n    frob: 1\n    ports: 3\n",
    )
    .unwrap_err();
    let kinds: Vec<Severity> = err.diagnostics.iter().map(|d| d.severity).collect();
    assert_eq!(kinds, vec![Severity::Warning, Severity::Error]);
}

#[test]
fn commands_are_read_and_empty_ones_refused() {
    let parsed = parse(
        "service.yml",
        "services:\n  web:\n    build_command: npm run compile\n    deploy_command: npm run migrate\n",
    )
    .expect("valid");
    let web = &parsed.stack.services["web"];
    assert_eq!(web.build_command.as_deref(), Some("npm run compile"));
    assert_eq!(web.deploy_command.as_deref(), Some("npm run migrate"));
    let text = "services:\n  web:\n    build_command: \"\"\n    deploy_command: \"  \"\n    command: \"\"\n";
    let all = errors(&parse("service.yml", text).unwrap_err()).join("\n");
    for key in ["build_command", "deploy_command", "command"] {
        assert!(all.contains(&format!("{key} is empty")), "{all}");
    }
}
