//! JSON over HTTP: every method of the shenguan services at `POST /v1/<Service>/<Method>`, and
//! the OpenAPI document of them at `GET /openapi.json`.
//!
//! A transcoding, not a second implementation: the JSON body is read into the method's request
//! message by its descriptor (proto3's canonical JSON mapping, through `prost-reflect`), framed
//! as gRPC and handed to the same gRPC routes a gRPC client reaches — the same interceptor
//! (bearer token, client certificate, rate limit), the same handlers, the same authorisation and
//! answers. The answer is turned back: a message as JSON (every field, defaults included, in
//! lowerCamelCase), or a refusal as `{"code", "status", "message", "details"}` with the HTTP
//! status the gRPC code maps to. A server-streaming method (`EventsService/Subscribe`) answers
//! Server-Sent Events: one `message` event per message, an `error` event if the stream ends
//! with a refusal.
//!
//! Headers pass as gRPC metadata (`authorization`, `x-request-id`, `x-shenguan-on-behalf-of`),
//! and the request keeps its connection's details (a TLS client certificate authenticates a JSON
//! call as it does a gRPC one). The body gate ([`super::body`]) has read the body whole, within
//! the same limits, time and server-wide budget as a gRPC message, before it gets here.

use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};
use tonic::Code;
use tower::ServiceExt as _;

/// The package whose services are served.
const PACKAGE: &str = "shenguan.v1";

/// The descriptors of every shenguan.v1 message and service, decoded once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes")
    })
}

/// The JSON path of `AdminService.ImportCatalogs`, the one call held to the larger limit.
pub(crate) const IMPORT_PATH: &str = "/v1/AdminService/ImportCatalogs";

/// What the JSON routes need: the gRPC routes they call.
#[derive(Clone)]
pub struct Gateway {
    grpc: axum::Router,
}

impl Gateway {
    /// Over `grpc` (the gRPC services' router).
    pub fn new(grpc: axum::Router) -> Gateway {
        Gateway { grpc }
    }

    /// The routes: `POST /v1/{service}/{method}` and `GET /openapi.json`.
    pub fn routes(self) -> axum::Router {
        axum::Router::new()
            .route("/v1/{service}/{method}", axum::routing::post(call))
            .route("/openapi.json", axum::routing::get(openapi))
            .with_state(Arc::new(self))
    }
}

/// The HTTP status a gRPC code answers with (the mapping of `google.rpc.Code`).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The name of a gRPC code as `google.rpc.Code` spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A refusal as JSON.
fn error_json(code: Code, message: &str) -> serde_json::Value {
    serde_json::json!({ "code": code as i32, "status": code_name(code), "message": message, "details": [] })
}

/// A refusal as an HTTP answer.
fn refuse(code: Code, message: impl AsRef<str>) -> Response {
    let body = error_json(code, message.as_ref()).to_string();
    (http_status(code), [(http::header::CONTENT_TYPE, HeaderValue::from_static(JSON))], body).into_response()
}

/// `status` as a JSON call's answer (for the body gate, which refuses before this module runs).
pub fn refusal(status: &tonic::Status) -> Response {
    refuse(status.code(), status.message())
}

const JSON: &str = "application/json; charset=utf-8";

/// Request headers that describe the HTTP exchange itself, not the call: never passed on.
const HOP: [&str; 12] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "host",
    "te",
    "accept",
    "accept-encoding",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// The method `service`/`method` of the package (`IntakeService`, `AcceptCase`), if it has one.
pub fn method(service: &str, method: &str) -> Option<MethodDescriptor> {
    pool().get_service_by_name(&format!("{PACKAGE}.{service}"))?.methods().find(|m| m.name() == method)
}

async fn call(
    State(gw): State<Arc<Gateway>>,
    Path((service, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Some(method) = method(&service, &name) else {
        let shown: String = format!("{service}/{name}").chars().take(128).collect();
        return refuse(Code::NotFound, format!("no method {shown:?}: see /openapi.json for the paths"));
    };
    if method.is_client_streaming() {
        return refuse(Code::Unimplemented, "client-streaming methods are served over gRPC only");
    }
    let (parts, body) = request.into_parts();
    if let Some(ct) = parts.headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.is_empty() && !ct.starts_with("application/json") {
            return refuse(Code::InvalidArgument, "send the request as application/json");
        }
    }
    // Already whole in memory: the body gate read it.
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return refuse(Code::Cancelled, format!("the request body failed: {e}")),
    };
    let message = match decode_json(&method.input(), &bytes) {
        Ok(m) => m,
        Err(e) => return refuse(Code::InvalidArgument, e),
    };
    let mut framed = BytesMut::with_capacity(5 + message.encoded_len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.encoded_len()).unwrap_or(u32::MAX));
    message.encode(&mut framed).expect("a BytesMut grows");

    let mut grpc = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(framed.freeze())));
    *grpc.method_mut() = http::Method::POST;
    *grpc.version_mut() = http::Version::HTTP_2;
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    *grpc.uri_mut() = match http::Uri::try_from(path) {
        Ok(uri) => uri,
        Err(e) => return refuse(Code::Internal, format!("no path for the method: {e}")),
    };
    for (name, value) in &parts.headers {
        if !HOP.contains(&name.as_str()) {
            grpc.headers_mut().append(name.clone(), value.clone());
        }
    }
    grpc.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    grpc.headers_mut().insert(http::header::TE, HeaderValue::from_static("trailers"));
    // The connection's details (peer address, TLS client certificate) authenticate it as they
    // would a gRPC call.
    *grpc.extensions_mut() = parts.extensions;

    let answer = match gw.grpc.clone().oneshot(grpc).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (head, body): (_, axum::body::Body) = answer.into_parts();
    // A refusal before any message comes in the headers alone.
    if let Some(status) = tonic::Status::from_header_map(&head.headers).filter(|s| s.code() != Code::Ok) {
        return refuse(status.code(), status.message());
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &head.headers {
        let n = name.as_str();
        if !n.starts_with("grpc-") && n != "content-type" && n != "content-length" {
            headers.append(name.clone(), value.clone());
        }
    }
    if method.is_server_streaming() {
        return events(method.output(), body, headers);
    }
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return refuse(Code::Unavailable, format!("the call failed: {e}")),
    };
    if let Some(status) = collected.trailers().and_then(tonic::Status::from_header_map) {
        if status.code() != Code::Ok {
            return refuse(status.code(), status.message());
        }
    }
    let mut data = collected.to_bytes();
    let reply = match next_frame(&mut data) {
        Some(frame) => frame,
        None => return refuse(Code::Internal, "the call answered no message"),
    };
    match encode_json(&method.output(), reply) {
        Ok(text) => {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            (StatusCode::OK, headers, text).into_response()
        }
        Err(e) => refuse(Code::Internal, e),
    }
}

/// The JSON `bytes` as a `desc` message: unknown fields are refused, an empty body is `{}`.
pub fn decode_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, String> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let mut de = serde_json::Deserializer::from_slice(text);
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
    let message = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
        .map_err(|e| format!("the request body is not a {} in JSON: {e}", desc.name()))?;
    de.end().map_err(|e| format!("the request body is not a {} in JSON: {e}", desc.name()))?;
    Ok(message)
}

/// The protobuf `bytes` of a `desc` message as JSON: every field, defaults too, lowerCamelCase.
pub fn encode_json(desc: &MessageDescriptor, bytes: Bytes) -> Result<String, String> {
    let message =
        DynamicMessage::decode(desc.clone(), bytes).map_err(|e| format!("the answer does not decode: {e}"))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    message.serialize_with_options(&mut ser, &options).map_err(|e| format!("the answer is not JSON: {e}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// Takes one gRPC frame off the front of `data`: its message, if a whole uncompressed one is
/// there.
fn next_frame(data: &mut Bytes) -> Option<Bytes> {
    if data.len() < 5 || data[0] != 0 {
        return None;
    }
    let len = usize::try_from(u32::from_be_bytes([data[1], data[2], data[3], data[4]])).ok()?;
    if data.len() < 5 + len {
        return None;
    }
    data.advance(5);
    Some(data.split_to(len))
}

/// A server stream as Server-Sent Events.
fn events(output: MessageDescriptor, mut body: axum::body::Body, mut headers: HeaderMap) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut pending = BytesMut::new();
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                () = tx.closed() => return,
            };
            let Some(frame) = frame else { return };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let text = error_json(Code::Unavailable, &format!("the stream failed: {e}")).to_string();
                    let _ = tx.send(sse("error", &text)).await;
                    return;
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    pending.extend_from_slice(&data);
                    let mut whole = pending.split().freeze();
                    while let Some(message) = next_frame(&mut whole) {
                        let text = encode_json(&output, message)
                            .unwrap_or_else(|e| error_json(Code::Internal, &e).to_string());
                        if tx.send(sse("message", &text)).await.is_err() {
                            return;
                        }
                    }
                    pending.extend_from_slice(&whole);
                    continue;
                }
                Err(frame) => frame,
            };
            if let Some(status) = frame.trailers_ref().and_then(tonic::Status::from_header_map) {
                if status.code() != Code::Ok {
                    let text = error_json(status.code(), status.message()).to_string();
                    let _ = tx.send(sse("error", &text)).await;
                }
                return;
            }
        }
    });
    use tokio_stream::StreamExt as _;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)));
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (StatusCode::OK, headers, axum::body::Body::new(http_body_util::StreamBody::new(stream))).into_response()
}

fn sse(event: &str, data: &str) -> Bytes {
    // JSON text holds no raw newline: one `data:` line.
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

async fn openapi() -> Response {
    ([(http::header::CONTENT_TYPE, HeaderValue::from_static(JSON))], document_text()).into_response()
}

/// [`document`] as pretty JSON text, made once.
pub fn document_text() -> String {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_string_pretty(&document()).unwrap_or_default()).clone()
}

/// The OpenAPI 3.1 document of every JSON path, made from the proto descriptors.
pub fn document() -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut wanted: Vec<MessageDescriptor> = Vec::new();
    let mut services: Vec<_> = pool().services().filter(|s| s.package_name() == PACKAGE).collect();
    services.sort_by(|a, b| a.name().cmp(b.name()));
    for service in services {
        for m in service.methods().filter(|m| !m.is_client_streaming()) {
            wanted.push(m.input());
            wanted.push(m.output());
            let output = json!({ "$ref": format!("#/components/schemas/{}", m.output().name()) });
            let ok = if m.is_server_streaming() {
                json!({
                    "description": format!("Server-Sent Events: one `message` event per {} (JSON), an `error` event if the stream ends refused", m.output().name()),
                    "content": { "text/event-stream": { "schema": { "type": "string" } } }
                })
            } else {
                json!({ "description": m.output().name(), "content": { "application/json": { "schema": output } } })
            };
            paths.insert(
                format!("/v1/{}/{}", service.name(), m.name()),
                json!({ "post": {
                    "operationId": format!("{}_{}", service.name(), m.name()),
                    "summary": format!("{}.{}", service.name(), m.name()),
                    "description": comment(&m.parent_file(), m.path()),
                    "tags": [service.name()],
                    "requestBody": { "required": false, "content": { "application/json": {
                        "schema": { "$ref": format!("#/components/schemas/{}", m.input().name()) } } } },
                    "responses": {
                        "200": ok,
                        "default": { "description": "refused: the gRPC code, its name and the message",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
                    }
                } }),
            );
        }
    }
    while let Some(m) = wanted.pop() {
        if schemas.contains_key(m.name()) {
            continue;
        }
        let mut properties = Map::new();
        for f in m.fields() {
            let (one, more) = field_schema(&f.kind());
            wanted.extend(more);
            let schema = if f.is_map() {
                let Kind::Message(entry) = f.kind() else { continue };
                let value = entry.map_entry_value_field();
                let (v, more) = field_schema(&value.kind());
                wanted.extend(more);
                json!({ "type": "object", "additionalProperties": v })
            } else if f.is_list() {
                json!({ "type": "array", "items": one })
            } else {
                one
            };
            properties.insert(f.json_name().to_owned(), described(schema, comment(&f.parent_file(), f.path())));
        }
        let schema = json!({ "type": "object", "properties": properties });
        schemas.insert(m.name().to_owned(), described(schema, comment(&m.parent_file(), m.path())));
    }
    schemas.insert(
        "Error".to_owned(),
        json!({ "type": "object", "required": ["code", "status", "message"], "properties": {
            "code": { "type": "integer", "description": "the gRPC code (google.rpc.Code)" },
            "status": { "type": "string", "description": "its name, e.g. INVALID_ARGUMENT" },
            "message": { "type": "string" },
            "details": { "type": "array", "items": {} }
        } }),
    );
    let mut info = Map::new();
    info.insert("title".into(), Value::from("shenguan JSON API"));
    info.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
    info.insert(
        "description".into(),
        Value::from(
            "Every gRPC method of shenguan.v1 as POST /v1/<Service>/<Method> with its request message as JSON \
             (proto3 JSON mapping; lowerCamelCase or the proto field names), answered with the reply message as \
             JSON. The same bearer token (Authorization: Bearer …), x-request-id and x-shenguan-on-behalf-of headers \
             as over gRPC. Generated from the proto descriptors.",
        ),
    );
    json!({
        "openapi": "3.1.0",
        "info": info,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}

/// The comment written above the element at `path` of `file` in the proto, as one paragraph per
/// blank-line-separated block ("" when there is none): the document says what the proto says.
fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let Some(info) = file.file_descriptor_proto().source_code_info.as_ref() else { return String::new() };
    let Some(text) = info.location.iter().find(|l| l.path == path).and_then(|l| l.leading_comments.as_deref()) else {
        return String::new();
    };
    text.split("\n\n")
        .map(|block| block.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `schema` with `description` set when the comment is not empty.
fn described(mut schema: serde_json::Value, description: String) -> serde_json::Value {
    if !description.is_empty() {
        if let Some(object) = schema.as_object_mut() {
            object.insert("description".into(), description.into());
        }
    }
    schema
}

/// The JSON Schema of one value of `kind`, and the message it names (to describe too).
fn field_schema(kind: &Kind) -> (serde_json::Value, Option<MessageDescriptor>) {
    use serde_json::json;
    match kind {
        Kind::Double | Kind::Float => (json!({ "type": "number" }), None),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => (json!({ "type": "integer", "format": "int32" }), None),
        Kind::Uint32 | Kind::Fixed32 => (json!({ "type": "integer", "format": "uint32", "minimum": 0 }), None),
        // proto3 JSON writes 64-bit integers as strings and reads either.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            (json!({ "type": ["string", "integer"], "format": "int64" }), None)
        }
        Kind::Uint64 | Kind::Fixed64 => (json!({ "type": ["string", "integer"], "format": "uint64" }), None),
        Kind::Bool => (json!({ "type": "boolean" }), None),
        Kind::String => (json!({ "type": "string" }), None),
        Kind::Bytes => (json!({ "type": "string", "contentEncoding": "base64" }), None),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            (json!({ "type": "string", "enum": names }), None)
        }
        Kind::Message(m) => (json!({ "$ref": format!("#/components/schemas/{}", m.name()) }), Some(m.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_the_protos_comments() {
        let doc = document();
        let accept = doc["paths"]["/v1/AdminService/GetWorkflow"]["post"]["description"].as_str().unwrap_or("");
        assert!(accept.contains("Any authenticated caller"), "{accept}");
        let case_id = doc["components"]["schemas"]["Case"]["properties"]["caseId"]["description"].as_str();
        assert!(case_id.is_some_and(|d| d.contains("<region_code>/<case_no>")), "{case_id:?}");
        let listing =
            doc["components"]["schemas"]["ListDeadLettersRequest"]["properties"]["limit"]["description"].as_str();
        assert!(listing.is_some_and(|d| d.contains("default 100")), "{listing:?}");
    }

    #[test]
    fn every_method_has_a_path_and_every_schema_it_names_is_described() {
        let doc = document();
        let text = doc.to_string();
        let paths = doc["paths"].as_object().expect("paths");
        let methods: usize = pool()
            .services()
            .filter(|s| s.package_name() == PACKAGE)
            .map(|s| s.methods().filter(|m| !m.is_client_streaming()).count())
            .sum();
        assert_eq!(paths.len(), methods);
        assert!(paths.contains_key("/v1/IntakeService/AcceptCase"));
        assert!(paths.contains_key("/v1/EventsService/Subscribe"));
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for reference in text.split("#/components/schemas/").skip(1) {
            let name: String = reference.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            assert!(schemas.contains_key(&name), "{name} is named but not described");
        }
    }

    #[test]
    fn the_repositorys_copy_of_the_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept.trim_end() == document_text(),
            "docs/openapi.json is not what the proto says: run `cargo run -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn json_in_canonical_form_or_with_proto_names_and_nothing_else() {
        let desc = method("IntakeService", "AcceptCase").expect("method").input();
        let a = decode_json(&desc, br#"{"caseNo":"SP-1","regionCode":"320700"}"#).expect("camel");
        let b = decode_json(&desc, br#"{"case_no":"SP-1","region_code":"320700"}"#).expect("proto names");
        assert_eq!(a.encode_to_vec(), b.encode_to_vec());
        assert!(decode_json(&desc, b"").is_ok(), "no body is {{}}");
        for bad in [&b"{"[..], b"[]", br#"{"nope":1}"#, br#"{"caseNo":5}"#, br#"{"caseNo":"a"} trailing"#, b"\xff"] {
            let e = decode_json(&desc, bad).expect_err("refused");
            assert!(e.contains("AcceptCaseRequest"), "{e}");
        }
    }

    #[test]
    fn frames_are_taken_whole_or_not_at_all() {
        let mut data = Bytes::from_static(&[0, 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 9, b'x']);
        assert_eq!(next_frame(&mut data).as_deref(), Some(&b"hi"[..]));
        assert_eq!(next_frame(&mut data), None, "a cut frame waits");
        let mut compressed = Bytes::from_static(&[1, 0, 0, 0, 0]);
        assert_eq!(next_frame(&mut compressed), None);
    }

    #[test]
    fn codes_map_to_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_json(Code::NotFound, "x")["status"], "NOT_FOUND");
    }
}
