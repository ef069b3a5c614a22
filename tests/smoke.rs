mod common;
use common::TestServer;

#[tokio::test]
async fn publish_then_pop() {
    let server = TestServer::start().await;
    assert_eq!(server.publish("q", "hello").await, "q:1");
    assert_eq!(server.pop("q").await, Some(("q:1".into(), "hello".into())));
    assert_eq!(server.pop("q").await, None);
    let server = server.restart().await;
    assert_eq!(server.publish("q", "again").await, "q:2");
    server.stop().await;
}
