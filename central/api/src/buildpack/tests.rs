use super::*;

fn files(package_json: Option<&str>, names: &[&str]) -> AppFiles {
    AppFiles {
        package_json: package_json.map(str::to_string),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// The plan of an app with `package_json` and `names`, and an `a.js` for the tests' mains.
fn plan_of(package_json: &str, names: &[&str]) -> Result<Plan, PlanError> {
    let mut app = files(Some(package_json), names);
    app.names.insert("a.js".into());
    plan(&app, Directives::default())
}

#[test]
fn the_lockfile_names_the_package_manager() {
    let npm = plan_of(
        r#"{"scripts":{"start":"node app.js"}}"#,
        &["package-lock.json"],
    )
    .unwrap();
    assert_eq!(npm.manager, Some(Manager::Npm { locked: true }));
    assert!(npm.warnings.is_empty());
    let shrinkwrap = plan_of("{}", &["npm-shrinkwrap.json", "index.js"]).unwrap();
    assert_eq!(shrinkwrap.manager, Some(Manager::Npm { locked: true }));
    let pnpm = plan_of(
        r#"{"packageManager":"pnpm@9.15.0+sha512.abc","main":"a.js"}"#,
        &["pnpm-lock.yaml"],
    )
    .unwrap();
    assert_eq!(
        pnpm.manager,
        Some(Manager::Pnpm {
            version: Some("9.15.0".into()),
            locked: true
        })
    );
    let yarn = plan_of(r#"{"main":"a.js"}"#, &["yarn.lock"]).unwrap();
    assert_eq!(
        yarn.manager,
        Some(Manager::Yarn {
            version: None,
            locked: true
        })
    );
    assert!(!yarn.manager.as_ref().unwrap().is_berry());
    let berry = plan_of(
        r#"{"main":"a.js","packageManager":"yarn@4.5.0"}"#,
        &["yarn.lock"],
    )
    .unwrap();
    assert!(berry.manager.as_ref().unwrap().is_berry());
}

#[test]
fn no_lockfile_installs_with_a_warning() {
    let plan = plan_of(r#"{"main":"a.js"}"#, &[]).unwrap();
    assert_eq!(plan.manager, Some(Manager::Npm { locked: false }));
    assert!(
        plan.warnings[0].contains("not reproducible"),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn conflicting_lockfiles_and_managers_name_the_fix() {
    let two = plan_of("{}", &["package-lock.json", "yarn.lock", "index.js"]).unwrap_err();
    assert!(
        two.to_string().contains("package-lock.json, yarn.lock")
            && two.to_string().contains("delete"),
        "{two}"
    );
    let mismatch = plan_of(
        r#"{"packageManager":"pnpm@9.1.0"}"#,
        &["yarn.lock", "index.js"],
    )
    .unwrap_err()
    .to_string();
    assert!(
        mismatch.contains("pnpm@9.1.0")
            && mismatch.contains("yarn.lock")
            && mismatch.contains("yarn's"),
        "{mismatch}"
    );
    let bun = plan_of(r#"{"main":"index.js"}"#, &["bun.lockb", "index.js"]).unwrap_err();
    assert!(
        bun.to_string().contains("bun.lockb is bun's lockfile"),
        "{bun}"
    );
    let unknown = plan_of(r#"{"packageManager":"bun@1.1"}"#, &["index.js"]).unwrap_err();
    assert!(unknown.to_string().contains("bun@1.1"), "{unknown}");
    let broken = plan_of("{\"scripts\": ", &[]).unwrap_err();
    assert!(broken.to_string().contains("not valid JSON"), "{broken}");
    // Valid JSON of the wrong shape: the field and its shape are named.
    for (text, field) in [
        ("42", "top level"),
        (
            r#"{"scripts":"node server.js"}"#,
            "scripts must be an object",
        ),
        (
            r#"{"scripts":{"start":5}}"#,
            "scripts.start must be a command line",
        ),
        (
            r#"{"engines":{"node":20},"main":"a.js"}"#,
            "engines.node must be a version range",
        ),
        (
            r#"{"engines":"20","main":"a.js"}"#,
            "engines must be an object",
        ),
        (r#"{"main":5}"#, "main must be a path"),
        (
            r#"{"packageManager":9,"main":"a.js"}"#,
            "packageManager must be a string",
        ),
    ] {
        let e = plan_of(text, &["index.js"]).unwrap_err().to_string();
        assert!(e.contains(field) && !e.contains("Raw"), "{text}: {e}");
    }
    // What npm reads, ferry reads: a byte-order mark, a repeated key (the last wins).
    assert!(plan_of("\u{feff}{\"main\":\"a.js\"}", &[]).is_ok());
    let twice = plan_of(
        r#"{"scripts":{"start":"x"},"scripts":{"test":"y"},"main":"a.js"}"#,
        &[],
    )
    .unwrap();
    assert_eq!(twice.start, Start::Node("a.js".into()));
}

#[test]
fn the_start_command_comes_from_what_the_app_declares() {
    let with = |command: Option<&str>, package: Option<&str>, names: &[&str]| {
        plan(
            &files(package, names),
            Directives {
                command,
                build_command: None,
            },
        )
        .map(|p| p.start)
    };
    assert_eq!(
        with(
            Some("node worker.js"),
            Some(r#"{"scripts":{"start":"x"}}"#),
            &[]
        )
        .unwrap(),
        Start::Command("node worker.js".into())
    );
    assert_eq!(
        with(
            None,
            Some(r#"{"scripts":{"start":"node app.js"},"main":"m.js"}"#),
            &[]
        )
        .unwrap(),
        Start::Script
    );
    assert_eq!(
        with(
            None,
            Some(r#"{"main":"lib/main.js"}"#),
            &["server.js", "lib/"]
        )
        .unwrap(),
        Start::Node("lib/main.js".into())
    );
    // npm init's default main, with no index.js: refused, not a container that crashes.
    let missing = with(None, Some(r#"{"main":"index.js"}"#), &["server.js"]).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("\"index.js\", which is not in the app"),
        "{missing}"
    );
    for outside in ["/etc/passwd", "../../x.js", "lib/../../x.js"] {
        let e = with(None, Some(&format!(r#"{{"main":"{outside}"}}"#)), &["lib/"]).unwrap_err();
        assert!(e.to_string().contains("outside the app"), "{outside}: {e}");
    }
    assert_eq!(
        with(None, Some("{}"), &["index.js"]).unwrap(),
        Start::Node("index.js".into())
    );
    // No package.json at all: Node's standard library only, started from server.js.
    let bare = plan(
        &files(None, &["server.js", "index.js"]),
        Directives::default(),
    )
    .unwrap();
    assert_eq!(bare.start, Start::Node("server.js".into()));
    assert_eq!(bare.manager, None);
    let none = with(None, Some(r#"{"scripts":{"test":"x"}}"#), &["app.js"]).unwrap_err();
    assert!(
        none.to_string().contains("no `start` script") && none.to_string().contains("server.js"),
        "{none}"
    );
}

#[test]
fn the_build_step_is_build_command_else_the_build_script() {
    let package = r#"{"scripts":{"build":"tsc","start":"node dist/a.js"}}"#;
    let script = plan_of(package, &["package-lock.json"]).unwrap();
    assert_eq!(script.build, Some(Build::Script));
    let command = plan(
        &files(Some(package), &[]),
        Directives {
            command: None,
            build_command: Some("npm run compile"),
        },
    )
    .unwrap();
    assert_eq!(
        command.build,
        Some(Build::Command("npm run compile".into()))
    );
    let none = plan_of(r#"{"main":"a.js"}"#, &[]).unwrap();
    assert_eq!(none.build, None);
}

#[test]
fn engines_pick_the_newest_lts_major_they_allow() {
    assert_eq!(node_major(">=20 <21").unwrap(), 20);
    assert_eq!(node_major("18.x").unwrap(), 18);
    assert_eq!(node_major("^22.4").unwrap(), 22);
    assert_eq!(node_major(">=18").unwrap(), 26);
    assert_eq!(node_major("20 || 22").unwrap(), 22);
    // Only an odd line allowed: that one.
    assert_eq!(node_major("23.x").unwrap(), 23);
    assert_eq!(node_major(">=20.5.0 <20.6").unwrap(), 20);
    for empty in [
        ">=22 <20",
        "<20 >22",
        ">18 <18",
        ">=18.0.0 <18.0.0",
        ">20 <21",
    ] {
        assert!(
            matches!(
                node_major(empty),
                Err(engines::EnginesError::Unsatisfiable { .. })
            ),
            "{empty} allows nothing: {:?}",
            node_major(empty)
        );
    }
    let old = node_major("^16").unwrap_err().to_string();
    assert!(old.contains("^16") && old.contains("18 to 26"), "{old}");
    assert!(matches!(
        node_major("banana"),
        Err(engines::EnginesError::Unreadable { .. })
    ));
    let without = plan_of(r#"{"main":"a.js"}"#, &[]).unwrap();
    assert_eq!(without.node_major, DEFAULT_NODE_MAJOR);
    let with = plan_of(r#"{"main":"a.js","engines":{"node":"20.x"}}"#, &[]).unwrap();
    assert_eq!(with.node_major, 20);
    assert_eq!(base_image(20), "node:20-bookworm-slim");
}

#[test]
fn only_top_level_files_count() {
    let mut f = AppFiles::default();
    assert!(f.note("./package.json", || Some("{}".into())));
    assert!(!f.note("lib/server.js", || None));
    assert!(!f.note("./yarn.lock", || None));
    assert!(f.has("yarn.lock"));
    assert!(!f.has("server.js"));
}

#[test]
fn the_dockerfile_installs_before_the_code_and_ships_production_dependencies_only() {
    let app = files(
        Some(r#"{"scripts":{"build":"tsc","start":"node dist/app.js"}}"#),
        &["package-lock.json", ".npmrc", "src/", "tsconfig.json"],
    );
    let plan = plan(&app, Directives::default()).unwrap();
    let file = dockerfile(&plan, "node:24-bookworm-slim", &app.package_files());
    let deps = file
        .find("FROM node:24-bookworm-slim AS deps")
        .expect("a deps stage");
    let build = file
        .find("FROM node:24-bookworm-slim AS build")
        .expect("a build stage");
    let image = file
        .rfind("\nFROM node:24-bookworm-slim\n")
        .expect("the image stage");
    assert!(deps < build && build < image, "{file}");
    let deps_stage = &file[deps..build];
    assert!(
        deps_stage.contains("COPY package.json /app/"),
        "{deps_stage}"
    );
    assert!(
        deps_stage.contains("COPY package-lock.json /app/"),
        "{deps_stage}"
    );
    assert!(deps_stage.contains("COPY .npmrc /app/"), "{deps_stage}");
    assert!(
        deps_stage.contains("RUN npm ci --omit=dev &&"),
        "{deps_stage}"
    );
    assert!(
        !deps_stage.contains("COPY . "),
        "no code before the install: {deps_stage}"
    );
    let build_stage = &file[build..image];
    let install = build_stage
        .find("RUN npm ci\n")
        .expect("every dependency for the build");
    let code = build_stage.find("COPY . /app").expect("the code");
    let step = build_stage
        .find("RUN npm run build")
        .expect("the build script");
    assert!(install < code && code < step, "{build_stage}");
    let image_stage = &file[image..];
    assert!(
        image_stage.contains("ENV NODE_ENV=production"),
        "{image_stage}"
    );
    assert!(
        image_stage.contains("COPY --from=deps /app/node_modules /app/node_modules")
            && image_stage.contains("COPY --from=build /app /app"),
        "{image_stage}"
    );
    assert!(
        image_stage.ends_with("exec npm start\"]\n"),
        "{image_stage}"
    );
    assert!(
        !file[..image].contains("NODE_ENV=production"),
        "dev dependencies in the build"
    );
}

#[test]
fn pnpm_and_yarn_go_through_corepack_and_plain_apps_are_copied() {
    let app = files(
        Some(r#"{"packageManager":"pnpm@9.15.0","scripts":{"start":"node a.js"}}"#),
        &["pnpm-lock.yaml"],
    );
    let plan = plan(&app, Directives::default()).unwrap();
    let file = dockerfile(&plan, "node:24-bookworm-slim", &app.package_files());
    assert!(file.contains("RUN corepack enable"), "{file}");
    assert!(
        file.contains("RUN pnpm install --frozen-lockfile --prod"),
        "{file}"
    );
    assert!(
        !file.contains("AS build"),
        "no build step, no build stage: {file}"
    );
    let berry = files(
        Some(r#"{"packageManager":"yarn@4.5.0","main":"a.js"}"#),
        &["yarn.lock", "a.js"],
    );
    let file = dockerfile(
        &super::plan(&berry, Directives::default()).unwrap(),
        "b",
        &berry.package_files(),
    );
    assert!(
        file.contains("yarn workspaces focus --all --production"),
        "{file}"
    );
    assert!(file.contains("YARN_NODE_LINKER=node-modules"), "{file}");
    let bare = files(None, &["server.js"]);
    let file = dockerfile(
        &super::plan(
            &bare,
            Directives {
                command: Some("node server.js --name \"x\""),
                build_command: None,
            },
        )
        .unwrap(),
        "node:24-bookworm-slim",
        &bare.package_files(),
    );
    assert!(
        !file.contains("AS deps") && file.contains("COPY . /app"),
        "{file}"
    );
    assert!(
        file.contains(r#"exec /bin/sh -c \"$0\"","node server.js --name \"x\""]"#),
        "{file}"
    );
}
