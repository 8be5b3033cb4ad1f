//! Acknowledged state survives `kill -9`; SIGTERM shuts down cleanly.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use support::*;

#[tokio::test]
async fn acknowledged_functions_survive_kill_9() {
    let mut server = LaminaServer::start();
    let data = server.take_data_dir();
    let client = server.client();

    create_function(&client, "stable").await;
    // A real function, to prove code still runs after the crash: its extracted tree was
    // never flushed, so the restarted server unpacks it again from the durable zip.
    client
        .create_function()
        .function_name("runs-after-crash")
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(test_function_zip()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    client
        .update_function_configuration()
        .function_name("stable")
        .memory_size(512)
        .send()
        .await
        .unwrap();

    // Keep creating functions, each with its own zip, and kill the server mid-stream.
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let writer = {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        tokio::spawn(async move {
            for i in 0..10_000 {
                let name = format!("burst-{i}");
                let zip = zip_of(&[(
                    "bootstrap",
                    format!("#!/bin/sh\necho {i}\n").as_bytes(),
                    0o755,
                )]);
                let result = client
                    .create_function()
                    .function_name(&name)
                    .runtime(Runtime::Providedal2023)
                    .role(ROLE)
                    .handler("bootstrap")
                    .code(
                        FunctionCode::builder()
                            .zip_file(Blob::new(zip.clone()))
                            .build(),
                    )
                    .send()
                    .await;
                match result {
                    Ok(_) => acknowledged
                        .lock()
                        .unwrap()
                        .push((name, sha256_base64(&zip))),
                    Err(_) => break,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill_hard();
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 3,
        "the burst made progress before the kill"
    );

    let restarted = LaminaServer::start_in(data.path());
    let client = restarted.client();
    let stable = client
        .get_function_configuration()
        .function_name("stable")
        .send()
        .await
        .unwrap();
    assert_eq!(stable.memory_size(), Some(512));
    let ran = client
        .invoke()
        .function_name("runs-after-crash")
        .payload(Blob::new(br#"{"action":"echo","after":"crash"}"#.to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(ran.function_error(), None);
    assert_eq!(
        ran.payload().unwrap().as_ref(),
        br#"{"action":"echo","after":"crash"}"#
    );
    for (name, sha) in &acknowledged {
        let got = client
            .get_function()
            .function_name(name)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.configuration().unwrap().code_sha256(),
            Some(sha.as_str()),
            "{name}"
        );
    }
    // The zip of the last acknowledged function is whole and downloadable.
    let (last, _) = acknowledged.last().unwrap();
    let got = client
        .get_function()
        .function_name(last)
        .send()
        .await
        .unwrap();
    let location = got.code().unwrap().location().unwrap().to_owned();
    let status = std::process::Command::new("python3")
        .args(["-c", "import sys,urllib.request,zipfile,io; zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(sys.argv[1]).read())).testzip()", &location])
        .status();
    if let Ok(status) = status {
        assert!(status.success(), "downloaded zip is whole");
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_state_remains() {
    let mut server = LaminaServer::start();
    let data = server.take_data_dir();
    create_function(&server.client(), "kept").await;
    let status = server.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let restarted = LaminaServer::start_in(data.path());
    restarted
        .client()
        .get_function()
        .function_name("kept")
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_server_refuses_the_same_data_directory() {
    let server = LaminaServer::start();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lamina"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another lamina server is using"));
}
