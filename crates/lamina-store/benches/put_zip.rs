//! How long storing a deployment package takes near Lambda's limits.
//! `cargo bench -p lamina-store --bench put_zip` prints the median and worst of 5 runs.

use std::io::{Cursor, Write as _};
use std::time::{Duration, Instant};

use lamina_store::{CodeLimits, CodeStore};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// About 48 MB in 2,000 incompressible files: a large `node_modules`.
fn many_files_near_the_zipped_limit() -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = vec![0u8; 24_000];
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..2000 {
        for byte in noise.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *byte = seed as u8;
        }
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        writer
            .start_file(format!("node_modules/p{}/f{i}.js", i % 50), options)
            .unwrap();
        writer.write_all(&noise).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// About 255 MB of text compressed into a couple of megabytes: the unzipped limit.
fn unpacks_to_the_unzipped_limit() -> Vec<u8> {
    let text = b"exports.handler = async (event) => ({ statusCode: 200 });\n".repeat(44_000);
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..100 {
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        writer.start_file(format!("f{i}.js"), options).unwrap();
        writer.write_all(&text).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn measure(label: &str, zip: &[u8]) {
    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..5 {
        // A fresh store each run: the same zip stored twice skips the write.
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::open(dir.path()).unwrap();
        let started = Instant::now();
        store.put_zip(zip, &CodeLimits::LAMBDA).unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{label}: {} bytes zipped, median {:.1} ms, worst {:.1} ms",
        zip.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    measure(
        "2000 files, ~48 MB zipped",
        &many_files_near_the_zipped_limit(),
    );
    measure("~255 MB unzipped", &unpacks_to_the_unzipped_limit());
}
