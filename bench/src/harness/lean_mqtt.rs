//! A lean MQTT 3.1.1 client over tokio TCP: CONNECT, SUBSCRIBE, PUBLISH (QoS 1), PUBACK, PINGREQ.
//!
//! The fan-out load is thousands of subscribers in one process; a full client library per
//! connection (rumqttc: an event loop, request channels, its own buffers and a state machine per
//! client) costs CPU the broker under test needs on a 2-core machine. This client reads whatever
//! arrived, parses every complete packet in the buffer, answers all PUBACKs with one write, and
//! stamps receipt once per read. `fanout --client rumqttc` runs the same load with rumqttc, to
//! measure the difference.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const CONNECT: u8 = 0x10;
pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const SUBSCRIBE: u8 = 0x82;
pub const SUBACK: u8 = 0x90;
pub const PINGREQ: u8 = 0xC0;

fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    push_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session.
pub fn connect_packet(
    client_id: &str,
    credentials: Option<(&str, &str)>,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    push_str(&mut body, b"MQTT");
    body.push(4); // protocol level 4 = MQTT 3.1.1
    let mut flags = 0x02; // clean session
    if credentials.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    push_str(&mut body, client_id.as_bytes());
    if let Some((user, password)) = credentials {
        push_str(&mut body, user.as_bytes());
        push_str(&mut body, password.as_bytes());
    }
    packet(CONNECT, &body)
}

pub fn subscribe_packet(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(filter.len() + 5);
    body.extend_from_slice(&packet_id.to_be_bytes());
    push_str(&mut body, filter.as_bytes());
    body.push(qos);
    packet(SUBSCRIBE, &body)
}

/// PUBLISH at QoS 1.
pub fn publish_packet(topic: &str, packet_id: u16, payload: &[u8], retain: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    push_str(&mut body, topic.as_bytes());
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(payload);
    packet(PUBLISH | 0x02 | u8::from(retain), &body)
}

pub fn puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[PUBACK, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

/// One complete packet at the start of `buf`: (first byte, body range, total length).
pub fn next_packet(buf: &[u8]) -> io::Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad remaining length",
            ));
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((buf[0], i..i + len, i + len)))
}

/// A PUBLISH body split into topic, packet id (QoS > 0) and payload.
pub struct Publish<'a> {
    pub topic: &'a [u8],
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
    pub retain: bool,
}

pub fn parse_publish(first: u8, body: &[u8]) -> io::Result<Publish<'_>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed PUBLISH");
    let tlen = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]));
    let topic = body.get(2..2 + tlen).ok_or_else(bad)?;
    let mut at = 2 + tlen;
    let qos = (first >> 1) & 0x03;
    let packet_id = if qos > 0 {
        let id = u16::from_be_bytes([
            *body.get(at).ok_or_else(bad)?,
            *body.get(at + 1).ok_or_else(bad)?,
        ]);
        at += 2;
        Some(id)
    } else {
        None
    };
    Ok(Publish {
        topic,
        packet_id,
        payload: &body[at..],
        retain: first & 0x01 == 1,
    })
}

/// Reads until one whole packet is buffered; returns (first byte, body) and keeps the rest.
pub async fn read_packet(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(u8, Vec<u8>)> {
    loop {
        if let Some((first, body, total)) = next_packet(buf)? {
            let out = (first, buf[body].to_vec());
            buf.drain(..total);
            return Ok(out);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Connects and waits for a successful CONNACK.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    credentials: Option<(&str, &str)>,
    keep_alive: u16,
    within: Duration,
) -> io::Result<(TcpStream, Vec<u8>)> {
    tokio::time::timeout(within, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(&connect_packet(client_id, credentials, keep_alive))
            .await?;
        let mut buf = Vec::with_capacity(4096);
        let (first, body) = read_packet(&mut stream, &mut buf).await?;
        if first & 0xF0 != CONNACK || body.len() != 2 || body[1] != 0 {
            return Err(io::Error::other(format!(
                "CONNECT refused: packet {first:#x}, body {body:?}"
            )));
        }
        Ok((stream, buf))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNACK in time"))?
}

/// Subscribes to `filter` at QoS 1 and waits for the SUBACK. Packets that arrive around it (the
/// retained messages) stay in `buf`, in order, for the caller to read.
pub async fn subscribe(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    filter: &str,
    within: Duration,
) -> io::Result<()> {
    stream.write_all(&subscribe_packet(1, filter, 1)).await?;
    tokio::time::timeout(within, async {
        // Retained messages may be sent before or after the SUBACK; keep them in order in `keep`.
        let mut keep = Vec::new();
        loop {
            while let Some((first, body, total)) = next_packet(buf)? {
                if first == SUBACK {
                    if buf[body].last() == Some(&0x80) {
                        return Err(io::Error::other("SUBSCRIBE refused"));
                    }
                    buf.drain(..total);
                    keep.extend_from_slice(buf);
                    *buf = keep;
                    return Ok(());
                }
                keep.extend_from_slice(&buf[..total]);
                buf.drain(..total);
            }
            if stream.read_buf(buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no SUBACK in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_through_the_parser() {
        let p = publish_packet(
            "btc/USD",
            7,
            br#"{"timedate":"2001-01-01T00:00:01Z","price":1}"#,
            true,
        );
        let (first, body, total) = next_packet(&p).unwrap().unwrap();
        assert_eq!(total, p.len());
        let publish = parse_publish(first, &p[body]).unwrap();
        assert_eq!(publish.topic, b"btc/USD");
        assert_eq!(publish.packet_id, Some(7));
        assert!(publish.retain);
        assert!(publish.payload.starts_with(b"{\"timedate\""));
        assert!(next_packet(&p[..p.len() - 1]).unwrap().is_none());
        let long = publish_packet("t", 1, &vec![b'x'; 300], false);
        assert_eq!(long[1] & 0x80, 0x80, "two-byte remaining length");
        let (_, body, total) = next_packet(&long).unwrap().unwrap();
        assert_eq!(total, long.len());
        assert_eq!(body.len(), 300 + 3 + 2);
        let c = connect_packet("id", Some(("u", "p")), 60);
        assert_eq!(c[0], CONNECT);
        assert_eq!(&c[2..8], b"\x00\x04MQTT");
    }
}
