//! The unmodified AWS CLI against a real `lamina serve`: the commands our users type.
//! `./scripts/test` installs the CLI into `.venv`; `LAMINA_AWS_CLI` may name another one.

mod support;

use std::process::Command;

use support::*;

fn aws(server: &LaminaServer, args: &[&str]) -> (bool, serde_json::Value, String) {
    let program = std::env::var("LAMINA_AWS_CLI").unwrap_or_else(|_| "aws".to_owned());
    let output = Command::new(&program)
        .args(["--endpoint-url", &server.endpoint, "--output", "json"])
        .args(["--cli-read-timeout", "30"])
        .env("AWS_PAGER", "")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDLAMINA")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the AWS CLI ('{program}'): {e}. Run the suite with ./scripts/test, \
                 which installs it into .venv, or set LAMINA_AWS_CLI"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null)
    };
    (
        output.status.success(),
        json,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn create_get_list_delete_with_the_aws_cli() {
    let server = LaminaServer::start();
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("function.zip");
    let zip = bootstrap_zip();
    std::fs::write(&zip_path, &zip).unwrap();
    let zip_arg = format!("fileb://{}", zip_path.display());

    let (ok, created, stderr) = aws(
        &server,
        &[
            "lambda",
            "create-function",
            "--function-name",
            "cli-fn",
            "--runtime",
            "provided.al2023",
            "--handler",
            "bootstrap",
            "--role",
            ROLE,
            "--zip-file",
            &zip_arg,
            "--memory-size",
            "256",
            "--environment",
            "Variables={STAGE=test}",
            "--tags",
            "team=core",
        ],
    );
    assert!(ok, "create-function failed: {stderr}");
    assert_eq!(created["FunctionName"], "cli-fn");
    assert_eq!(created["MemorySize"], 256);
    assert_eq!(created["CodeSha256"], sha256_base64(&zip));
    assert_eq!(created["Environment"]["Variables"]["STAGE"], "test");

    let (ok, _, stderr) = aws(
        &server,
        &[
            "lambda",
            "wait",
            "function-active-v2",
            "--function-name",
            "cli-fn",
        ],
    );
    assert!(ok, "wait function-active-v2 failed: {stderr}");

    let (ok, got, stderr) = aws(
        &server,
        &["lambda", "get-function", "--function-name", "cli-fn"],
    );
    assert!(ok, "get-function failed: {stderr}");
    assert_eq!(got["Configuration"]["Runtime"], "provided.al2023");
    assert_eq!(got["Tags"]["team"], "core");
    assert!(
        got["Code"]["Location"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );

    let (ok, listed, stderr) = aws(&server, &["lambda", "list-functions"]);
    assert!(ok, "list-functions failed: {stderr}");
    let names: Vec<&str> = listed["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["FunctionName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-fn"]);

    let (ok, _, stderr) = aws(
        &server,
        &["lambda", "delete-function", "--function-name", "cli-fn"],
    );
    assert!(ok, "delete-function failed: {stderr}");

    let (ok, _, stderr) = aws(
        &server,
        &["lambda", "get-function", "--function-name", "cli-fn"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("(ResourceNotFoundException)")
            && stderr.contains(
                "Function not found: arn:aws:lambda:us-east-1:000000000000:function:cli-fn"
            ),
        "{stderr}"
    );

    let (ok, _, stderr) = aws(
        &server,
        &[
            "lambda",
            "create-function",
            "--function-name",
            "cli-bad",
            "--runtime",
            "provided.al2023",
            "--handler",
            "bootstrap",
            "--role",
            ROLE,
            "--zip-file",
            &zip_arg,
            "--memory-size",
            "20000",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("(ValidationException)")
            && stderr.contains("Value '20000' at 'memorySize' failed to satisfy constraint"),
        "{stderr}"
    );
}
