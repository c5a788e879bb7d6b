use super::*;
use tokio::io::AsyncWriteExt;

#[test]
fn caps_in_total_and_per_source() {
    let a = Arc::new(Admission::new(3, 2));
    let one: IpAddr = "10.0.0.1".parse().expect("ip");
    let two: IpAddr = "10.0.0.2".parse().expect("ip");
    let p1 = a.admit(one).expect("first");
    let p2 = a.admit(one).expect("second");
    assert_eq!(a.admit(one).err(), Some(Refused::PerSource));
    let p3 = a.admit(two).expect("another source");
    assert_eq!(a.admit(two).err(), Some(Refused::Total));
    assert_eq!(a.open(), 3);
    drop(p1);
    let _p4 = a.admit(one).expect("a place came back");
    drop((p2, p3));
    assert_eq!(a.open(), 1);
}

#[test]
fn ipv6_sources_count_by_their_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
    let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
    assert_eq!(source_key(a), source_key(b));
    assert_ne!(source_key(a), source_key(c));
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
    assert_eq!(
        source_key(mapped),
        "10.0.0.1".parse::<IpAddr>().expect("ip")
    );
    let adm = Arc::new(Admission::new(0, 1));
    let _p = adm.admit(a).expect("first");
    assert_eq!(adm.admit(b).err(), Some(Refused::PerSource));
    assert!(adm.admit(c).is_ok());
}

#[tokio::test]
async fn detection_tells_the_protocols_apart_and_times_out() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    let (p, seen) = detect(&mut server, Duration::from_secs(5))
        .await
        .expect("h1");
    assert_eq!(p, Protocol::Http1);
    assert!(seen.starts_with(b"G"));

    let (mut client, mut server) = tokio::io::duplex(1024);
    // The preface in two writes, as a slow client may send it.
    client.write_all(&H2_PREFACE[..10]).await.expect("write");
    let task = tokio::spawn(async move {
        let r = detect(&mut server, Duration::from_secs(5)).await;
        r.map(|(p, b)| (p, b.len()))
    });
    tokio::task::yield_now().await;
    client.write_all(&H2_PREFACE[10..]).await.expect("write");
    let (p, n) = task.await.expect("join").expect("h2");
    assert_eq!((p, n), (Protocol::Http2, H2_PREFACE.len()));

    // A partial preface that stops: the timeout ends it.
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(&H2_PREFACE[..5]).await.expect("write");
    let err = detect(&mut server, Duration::from_millis(50))
        .await
        .expect_err("silent");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    drop(client);
}

#[tokio::test]
async fn replayed_bytes_come_first_and_stalled_writes_fail() {
    let (client, server) = tokio::io::duplex(16);
    let mut g = Guarded::new(
        server,
        Bytes::from_static(b"abc"),
        Duration::from_millis(50),
    );
    let mut buf = [0u8; 8];
    let n = g.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"abc");
    // The client never reads: the duplex buffer (16 bytes) fills and the write stalls.
    let err = g.write_all(&[0u8; 1024]).await.expect_err("stalled");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    drop(client);
}

#[tokio::test]
async fn activity_is_idle_only_with_nothing_in_flight() {
    let a = Arc::new(Activity::default());
    let held = a.begin();
    let idle = tokio::time::timeout(
        Duration::from_millis(100),
        a.idle_for(Duration::from_millis(10)),
    );
    assert!(idle.await.is_err(), "a request is in flight");
    drop(held);
    tokio::time::timeout(
        Duration::from_secs(5),
        a.idle_for(Duration::from_millis(10)),
    )
    .await
    .expect("idle once the request is done");
}
