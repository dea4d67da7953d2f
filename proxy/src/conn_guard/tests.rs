//! The connection guards, in isolation.
use super::*;
use tokio::io::AsyncWriteExt;

#[test]
fn an_address_gets_its_share_and_its_places_back() {
    let per = PerAddress::new(2);
    let a: IpAddr = [10, 0, 0, 1].into();
    let b: IpAddr = [10, 0, 0, 2].into();
    let first = per.admit(a).unwrap();
    let _second = per.admit(a).unwrap();
    assert!(per.admit(a).is_none(), "a third from the same address");
    assert!(per.admit(b).is_some(), "another address is not affected");
    drop(first);
    assert!(per.admit(a).is_some(), "a place given back is taken again");
    assert!(PerAddress::new(0).admit(a).is_some());
}

#[test]
fn the_table_forgets_addresses_with_nothing_open() {
    let per = PerAddress::new(1);
    for i in 0..100u8 {
        drop(per.admit([10, 0, 0, i].into()).unwrap());
    }
    assert!(per.open.lock().unwrap().is_empty());
}

#[test]
fn an_ipv4_client_counts_the_same_on_a_dual_stack_listener() {
    let per = PerAddress::new(1);
    let _v4 = per.admit([10, 0, 0, 1].into()).unwrap();
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert!(per.admit(mapped).is_none());
}

#[test]
fn an_ipv6_host_counts_as_its_64_bit_prefix() {
    let per = PerAddress::new(1);
    let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let same_subnet: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
    let next_subnet: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    let held = per.admit(one).unwrap();
    assert!(
        per.admit(same_subnet).is_none(),
        "the same /64 is one client"
    );
    assert!(per.admit(next_subnet).is_some(), "another /64 is another");
    drop(held);
    assert!(per.admit(same_subnet).is_some());
}

#[test]
fn the_first_bytes_tell_http2_from_http1() {
    assert_eq!(protocol_of(b""), None);
    assert_eq!(protocol_of(b"P"), None, "a start of the preface");
    assert_eq!(protocol_of(&PREFACE[..23]), None);
    assert_eq!(protocol_of(PREFACE), Some(Protocol::Http2));
    assert_eq!(protocol_of(b"PO"), Some(Protocol::Http1));
    assert_eq!(protocol_of(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
    assert_eq!(protocol_of(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
}

/// A client and the server's end of its connection, over loopback.
async fn connected() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

#[tokio::test(start_paused = true)]
async fn a_client_that_starts_the_http2_preface_and_stops_times_out() {
    for sent in [&b""[..], &b"P"[..], &PREFACE[..23]] {
        let (mut client, server) = connected().await;
        client.write_all(sent).await.unwrap();
        let start = Instant::now();
        let err = sniff(&server, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{sent:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}

#[tokio::test]
async fn the_sniff_takes_no_bytes() {
    use tokio::io::AsyncReadExt;
    let (mut client, mut server) = connected().await;
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let limit = Duration::from_secs(30);
    assert_eq!(sniff(&server, limit).await.unwrap(), Protocol::Http1);
    let mut first = [0u8; 3];
    server.read_exact(&mut first).await.unwrap();
    assert_eq!(
        &first, b"GET",
        "hyper reads the request from its first byte"
    );
}

#[tokio::test(start_paused = true)]
async fn a_preface_sent_in_pieces_is_waited_for_then_told() {
    let (mut client, server) = connected().await;
    client.write_all(&PREFACE[..10]).await.unwrap();
    let sniffing = tokio::spawn(async move {
        sniff(&server, Duration::from_secs(30))
            .await
            .map(|p| (p, server))
    });
    // A second of the clock: the first ten bytes were there all along.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !sniffing.is_finished(),
        "a start of the preface decides nothing"
    );
    client.write_all(&PREFACE[10..]).await.unwrap();
    let (protocol, server) = sniffing.await.unwrap().unwrap();
    assert_eq!(protocol, Protocol::Http2);
    let mut buf = [0u8; 24];
    let n = server.peek(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &PREFACE[..n], "the preface is left for hyper");
}

#[tokio::test]
async fn a_client_that_closes_before_a_byte_is_not_waited_for() {
    let (client, server) = connected().await;
    drop(client);
    let err = sniff(&server, Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_stops_is_cut_off_after_the_limit_and_not_before() {
    // A pipe of 64 bytes whose reader reads nothing.
    let (writer, _reader) = tokio::io::duplex(64);
    let mut guarded = WriteStall::new(writer, Duration::from_secs(10));
    guarded.write_all(&[0; 64]).await.unwrap();
    let start = Instant::now();
    let err = guarded.write_all(&[0; 1]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    use tokio::io::AsyncReadExt;
    let (writer, mut reader) = tokio::io::duplex(64);
    let mut guarded = WriteStall::new(writer, Duration::from_secs(10));
    let drain = tokio::spawn(async move {
        let mut buf = [0; 64];
        let mut total = 0;
        // Reads a little every 9 s: each write waits less than the
        // limit, though the whole takes far longer.
        loop {
            tokio::time::sleep(Duration::from_secs(9)).await;
            match reader.read(&mut buf).await.unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    guarded.write_all(&[1; 640]).await.unwrap();
    guarded.shutdown().await.unwrap();
    drop(guarded);
    assert_eq!(drain.await.unwrap(), 640);
}
