//! Library target so the agent can name this crate as a build dependency (aya-build
//! builds the `portcullis-ebpf` binary for the BPF target). Intentionally empty.
#![no_std]
