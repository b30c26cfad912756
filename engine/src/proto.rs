//! Types generated from `proto/shenguan/v1/*.proto`, and the descriptor set the reflection
//! service serves. Nothing outside the gRPC surface should need these.

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("shenguan.v1");

/// The encoded descriptor set of every shenguan.v1 file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shenguan_descriptor");
