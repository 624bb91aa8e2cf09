//! Host tier: a real Docker Engine, started by the fixture, runs Node in a container made
//! from the locally imported base image.

use anyhow::Result;
use ferry_agent::containers::{Engine, EngineError};
use ferry_tests::{docker::DockerEngine, node_image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_node_and_its_output_comes_back() -> Result<()> {
    let engine = DockerEngine::start("ferry-host-tier", None).await?;
    let image = node_image::ensure(engine.engine()).await?;
    let done = engine
        .run_to_completion(
            &image,
            &[
                "node",
                "-e",
                "console.log('ferry', 6 * 7, typeof require('node:net').connect)",
            ],
        )
        .await?;
    assert_eq!(done.exit_code, 0, "{}", done.output);
    assert_eq!(done.output.trim(), "ferry 42 function");

    let failed = engine
        .run_to_completion(&image, &["node", "-e", "process.exit(3)"])
        .await?;
    assert_eq!(failed.exit_code, 3);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_docker_socket_is_named_with_the_fix() {
    let socket = std::path::Path::new("/run/ferry-test/no-such-engine.sock");
    let err = Engine::connect(socket)
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, EngineError::NoSocket { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("/run/ferry-test/no-such-engine.sock") && text.contains("dockerd"),
        "{text}"
    );
}
