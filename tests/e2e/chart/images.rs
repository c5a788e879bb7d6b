//! `make images`: `deploy/images/build.sh` writes OCI image layouts whose every blob is what
//! its descriptor says, twice the same from the same inputs, and whose entrypoints run on the
//! image's own files (its dynamic loader and libraries, nothing of this machine's).

use portico_tests::{TempDir, binaries};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the blob a descriptor names, checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob");
    assert_eq!(sha256(&bytes), hex, "blob {digest} has another digest");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "blob {digest}: size"
    );
    bytes
}

fn build(out: &Path, bin_dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(Command::new(root.join("deploy/images/build.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(out)
        .args(["--tag", "test"])
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

#[test]
fn the_images_are_reproducible_and_their_entrypoints_run_on_their_own_files() {
    let bin_dir: PathBuf = binaries()
        .portico
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let first = TempDir::new("images-a");
    let second = TempDir::new("images-b");
    build(first.path(), &bin_dir);
    build(second.path(), &bin_dir);

    for (name, entrypoint, version) in [
        (
            "controller",
            "/usr/local/bin/portico-controller",
            "portico-controller ",
        ),
        ("dataplane", "/usr/local/bin/portico", "portico "),
    ] {
        let a = std::fs::read(first.path().join(format!("{name}.tar"))).expect("archive");
        let b = std::fs::read(second.path().join(format!("{name}.tar"))).expect("archive");
        assert!(a == b, "{name}: two builds from the same inputs differ");

        let layout = first.path().join(name);
        let oci: Value =
            serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).expect("oci-layout"))
                .expect("oci-layout is JSON");
        assert_eq!(oci["imageLayoutVersion"], "1.0.0");
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                .expect("index is JSON");
        let descriptor = &index["manifests"][0];
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            "test"
        );
        let manifest: Value =
            serde_json::from_slice(&blob(&layout, descriptor)).expect("manifest is JSON");
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let config: Value =
            serde_json::from_slice(&blob(&layout, &manifest["config"])).expect("config is JSON");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["User"], "65532:65532", "{name}: non-root");
        assert_eq!(config["config"]["Entrypoint"][0], entrypoint);
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");

        // Unpack the layers in order; each one's uncompressed digest is its diff_id.
        let rootfs = TempDir::new("image-root");
        let layers = manifest["layers"].as_array().expect("layers");
        let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
        assert_eq!(layers.len(), diff_ids.len());
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let gz = layout.join("blobs/sha256").join(
                layer["digest"]
                    .as_str()
                    .and_then(|d| d.strip_prefix("sha256:"))
                    .expect("layer digest"),
            );
            blob(&layout, layer);
            let tar = rootfs.path().join("layer.tar");
            let unpacked = Command::new("gzip")
                .arg("-dc")
                .arg(&gz)
                .output()
                .expect("gzip");
            assert!(unpacked.status.success());
            assert_eq!(
                format!("sha256:{}", sha256(&unpacked.stdout)),
                diff_id.as_str().expect("diff_id"),
                "{name}: a layer's diff_id"
            );
            std::fs::write(&tar, &unpacked.stdout).expect("write layer");
            run(Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(rootfs.path()));
            std::fs::remove_file(&tar).expect("remove layer");
        }
        let root = rootfs.path();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("etc/passwd");
        assert!(passwd.contains(":65532:65532:"), "{name}: {passwd}");
        let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))
            .expect("CA bundle");
        assert!(
            bundle.matches("BEGIN CERTIFICATE").count() > 50,
            "{name}: the CA bundle has the system roots"
        );

        // The entrypoint through the image's own loader, finding libraries only in the image.
        let loader = root.join("lib64/ld-linux-x86-64.so.2");
        let library_path = format!(
            "{}:{}",
            root.join("lib/x86_64-linux-gnu").display(),
            root.join("usr/lib/x86_64-linux-gnu").display()
        );
        let binary = root.join(entrypoint.trim_start_matches('/'));
        let list = run(Command::new(&loader)
            .args(["--inhibit-cache", "--library-path", &library_path, "--list"])
            .arg(&binary));
        for line in list.lines() {
            if let Some((_, path)) = line.split_once("=> ") {
                let path = path.split(" (").next().unwrap_or(path).trim();
                assert!(
                    path.starts_with(&*root.to_string_lossy()),
                    "{name}: {line} is not the image's"
                );
            }
        }
        let out = run(Command::new(&loader)
            .args(["--inhibit-cache", "--library-path", &library_path])
            .arg(&binary)
            .arg("--version"));
        assert!(out.starts_with(version), "{name} --version: {out}");
    }
}
