//! Deployment packages are untrusted input: hostile archives, sent through the real AWS
//! SDK, are refused with AWS's errors and never write outside the code store.

mod support;

use std::io::Write as _;
use std::path::Path;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use support::*;

async fn try_create(
    client: &aws_sdk_lambda::Client,
    name: &str,
    zip: Vec<u8>,
) -> Result<(), (String, u16, String)> {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .role(ROLE)
        .handler("bootstrap")
        .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
        .send()
        .await
        .map(|_| ())
        .map_err(aws_error)
}

const COULD_NOT_UNZIP: &str =
    "Could not unzip uploaded file. Please check your file, then try to upload again.";

/// Every file below `dir`, recursively, without following symlinks.
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

fn disk_usage(dir: &Path) -> u64 {
    files_below(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn corrupt_archives_are_refused() {
    let server = LaminaServer::start();
    let client = server.client();
    for garbage in [
        b"definitely not a zip".to_vec(),
        Vec::new(),
        vec![0x50, 0x4b, 0x03, 0x04, 0, 0],
    ] {
        let (code, status, message) = try_create(&client, "corrupt", garbage).await.unwrap_err();
        assert_eq!(
            (code.as_str(), status),
            ("InvalidParameterValueException", 400)
        );
        assert_eq!(message, COULD_NOT_UNZIP);
    }
}

#[tokio::test]
async fn entries_that_escape_never_land_outside_the_code_directory() {
    let server = LaminaServer::start();
    let client = server.client();
    let marker = format!("lamina-escape-{}", std::process::id());
    let outside = std::env::temp_dir().join(&marker);
    let _ = std::fs::remove_dir_all(&outside);
    let hostile: Vec<Vec<u8>> = vec![
        zip_of(&[("bootstrap", b"x", 0o755), ("../escaped-1", b"evil", 0o644)]),
        zip_of(&[
            ("bootstrap", b"x", 0o755),
            ("a/../../escaped-2", b"evil", 0o644),
        ]),
        zip_of(&[
            ("bootstrap", b"x", 0o755),
            (&format!("/tmp/{marker}/escaped-3"), b"evil", 0o644),
        ]),
        {
            // A symlink out of the tree followed by an entry written through it.
            let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default();
            writer
                .add_symlink("link", outside.to_str().unwrap(), options)
                .unwrap();
            writer.start_file("link/escaped-4", options).unwrap();
            writer.write_all(b"evil").unwrap();
            writer.finish().unwrap().into_inner()
        },
    ];
    for (index, zip) in hostile.into_iter().enumerate() {
        let result = try_create(&client, &format!("escape-{index}"), zip).await;
        if let Err((code, status, message)) = &result {
            assert_eq!(
                (code.as_str(), *status),
                ("InvalidParameterValueException", 400)
            );
            assert_eq!(message, COULD_NOT_UNZIP);
        }
    }
    assert!(!outside.exists(), "nothing was written through the symlink");
    let temp_root = server.data_dir.parent().unwrap();
    for file in files_below(temp_root) {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.starts_with("escaped-") {
            assert!(
                file.starts_with(server.data_dir.join("code").join("extracted")),
                "{} escaped the code directory",
                file.display()
            );
        }
    }
}

#[tokio::test]
async fn oversized_archives_are_refused_before_they_fill_the_disk() {
    let server = LaminaServer::start();
    let client = server.client();

    // Over 50 MB zipped (but still a request under 70167211 bytes once base64-encoded):
    // incompressible bytes, stored.
    let mut noise = vec![0u8; 52_500_000];
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for chunk in noise.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    writer
        .start_file(
            "noise",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored),
        )
        .unwrap();
    writer.write_all(&noise).unwrap();
    let big = writer.finish().unwrap().into_inner();
    drop(noise);
    let (code, status, message) = try_create(&client, "too-big", big.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (code.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    assert_eq!(message, "Zipped size must be smaller than 52428800 bytes");

    // Larger still, the request itself is over AWS's limit for the operation.
    let mut huge = big.clone();
    huge.extend(std::iter::repeat_n(0u8, 2_000_000));
    let (code, status, message) = try_create(&client, "too-big", huge).await.unwrap_err();
    assert_eq!(
        (code.as_str(), status),
        ("RequestEntityTooLargeException", 413)
    );
    assert_eq!(
        message,
        "Request must be smaller than 70167211 bytes for the CreateFunction operation"
    );

    // A zip bomb: 260 MB of zeros compress to well under a megabyte.
    let zeros = vec![0u8; 1024 * 1024];
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1));
    for i in 0..260 {
        writer.start_file(format!("zeros-{i}"), options).unwrap();
        writer.write_all(&zeros).unwrap();
    }
    let bomb = writer.finish().unwrap().into_inner();
    assert!(bomb.len() < 5 * 1024 * 1024);
    let (code, status, message) = try_create(&client, "bomb", bomb).await.unwrap_err();
    assert_eq!(
        (code.as_str(), status),
        ("InvalidParameterValueException", 400)
    );
    assert_eq!(
        message,
        "Unzipped size must be smaller than 262144000 bytes"
    );

    // The code store holds what uploads leave (the sandbox's sparse /tmp images are not theirs).
    let code_dir = server.data_dir.join("code");
    assert!(
        disk_usage(&code_dir) < 16 * 1024 * 1024,
        "refused archives left {} bytes behind",
        disk_usage(&code_dir)
    );
    assert!(
        client
            .list_functions()
            .send()
            .await
            .unwrap()
            .functions()
            .is_empty()
    );
}

#[tokio::test]
async fn archives_keep_their_executable_bits_and_symlinks() {
    let server = LaminaServer::start();
    let client = server.client();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    writer.start_file("bootstrap", exec).unwrap();
    writer.write_all(b"#!/bin/sh\n").unwrap();
    writer
        .start_file(
            "lib/data.txt",
            zip::write::SimpleFileOptions::default().unix_permissions(0o600),
        )
        .unwrap();
    writer.write_all(b"data").unwrap();
    writer
        .add_symlink("lib/libfoo.so", "/opt/lib/libfoo.so.1", exec)
        .unwrap();
    let zip = writer.finish().unwrap().into_inner();
    try_create(&client, "layout", zip.clone()).await.unwrap();

    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(&zip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tree = server.data_dir.join("code/extracted").join(hex);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &str| {
        std::fs::metadata(tree.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bootstrap"), 0o755);
    assert_eq!(mode("lib/data.txt"), 0o644);
    assert_eq!(
        std::fs::read_link(tree.join("lib/libfoo.so")).unwrap(),
        Path::new("/opt/lib/libfoo.so.1")
    );
}
