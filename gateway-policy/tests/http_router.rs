//! The agent-facing router over real HTTP on a loopback socket: 200 with ETag, 304 on
//! If-None-Match, 404 and 400 with the error body, and switches seen at once.

use gateway_policy::{
    AcceptAll, ApplierConfig, MemoryAppliedStore, Policy, PolicyApplier, policy_router,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
async fn get(addr: std::net::SocketAddr, path: &str, if_none_match: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    if let Some(tag) = if_none_match {
        request.push_str(&format!("If-None-Match: {tag}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn agents_get_the_running_policy_with_etag_and_304() {
    let (mut applier, _) = PolicyApplier::open(
        ApplierConfig::default(),
        MemoryAppliedStore::new(),
        AcceptAll,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, policy_router(applier.reader())).into_future());

    // Nothing runs yet.
    let a = get(addr, "/v1/policy", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "not_found");

    let v1 = Policy::new("fw", 1, json!({"mode": "audit"}), 0, "ann", "v1").unwrap();
    applier.apply(&v1.full_update(None), 1);

    let a = get(addr, "/v1/policy", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"mode": "audit"}));
    let etag = a.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", v1.checksum));
    assert_eq!(a.header("x-policy-version"), Some("1"));
    assert_eq!(a.header("x-policy-name"), Some("fw"));

    let a = get(addr, "/v1/policy/fw", Some(&etag)).await;
    assert_eq!(a.status, 304);
    assert_eq!(a.header("etag"), Some(etag.as_str()));
    assert!(a.body.is_empty());

    // A switch is visible at once; the old ETag no longer matches.
    let v2 = Policy::new("fw", 2, json!({"mode": "enforce"}), 0, "ann", "v2").unwrap();
    applier.apply(&v2.full_update(None), 2);
    let a = get(addr, "/v1/policy?name=fw", Some(&etag)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({"mode": "enforce"}));
    assert_eq!(a.header("x-policy-version"), Some("2"));

    // Several policies: the name is required; unknown names are 404.
    let dns = Policy::new("dns", 1, json!({"servers": []}), 0, "ann", "dns").unwrap();
    applier.apply(&dns.full_update(None), 3);
    let a = get(addr, "/v1/policy", None).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["code"], "invalid_request");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dns, fw")
    );
    assert_eq!(get(addr, "/v1/policy/nope", None).await.status, 404);
    assert_eq!(
        get(addr, "/v1/policy/dns", None).await.json(),
        json!({"servers": []})
    );

    server.abort();
}
