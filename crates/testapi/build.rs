//! The descriptor set of the vendored Kubernetes .proto files (proto/README.md), made
//! with protox (no `protoc`): the test API server decodes and encodes the built-in
//! types' protobuf with it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "k8s.io/api/core/v1/generated.proto",
        "k8s.io/api/resource/v1/generated.proto",
        "k8s.io/api/rbac/v1/generated.proto",
        "k8s.io/api/authorization/v1/generated.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.fds");
    std::fs::write(out, prost::Message::encode_to_vec(&fds))?;
    Ok(())
}
