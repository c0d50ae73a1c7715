//! The system's `protoc` (Debian's `protobuf-compiler`), where build scripts ask `protobuf-src`
//! for one. Those in the cluster build (`rmqtt-protobuf-build`) ask only when no `protoc` answers
//! on the PATH or in `$PROTOC`; then this one fails the build with "protoc: not found", which says
//! what to install.

use std::path::PathBuf;

/// The `protoc` on the PATH.
pub fn protoc() -> PathBuf {
    PathBuf::from("protoc")
}

/// Where the system's protobuf headers are.
pub fn include() -> PathBuf {
    PathBuf::from("/usr/include")
}
