//! Builds the kernel programs (agent-ebpf) for the BPF target with the nightly
//! toolchain and bpf-linker, so `cargo build` is the whole build. The object is
//! embedded by `src/ebpf.rs` with `include_bytes_aligned!`.
//!
//! `cargo xtask setup` installs what this needs (nightly rust-src, bpf-linker).
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).map_err(|e| {
        anyhow::anyhow!(
            "building the kernel programs failed: {e:#}\n\
             hint: run `cargo xtask setup` to install the nightly rust-src component and bpf-linker"
        )
    })
}
