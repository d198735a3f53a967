//! Talking to Redis instances: the `ROLE` probe and the commands of a switchover.
//!
//! A minimal RESP2 client over one stream per call: the probe runs every few seconds
//! per instance, so a connection pool would buy nothing, and a fresh stream never
//! carries state from a previous call. The stream is anything [`Dial`] opens: a TCP
//! connection ([`Tcp`], what the address-taking functions use), or for instance a
//! Kubernetes port-forward (the Kubernetes backend's own dialer). [`Connection`] speaks
//! RESP over any `AsyncRead + AsyncWrite` stream.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…`, or `*-1` (nil).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, for simple and bulk strings.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Opens a byte stream to an instance's Redis port, named by an instance string whose
/// meaning is the dialer's own (an address for [`Tcp`]).
pub trait Dial: Sync {
    /// The stream it opens.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// Opens a stream to `instance`.
    fn dial(&self, instance: &str) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Dials an instance string as a TCP address `host:port`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Dial for Tcp {
    type Stream = TcpStream;
    async fn dial(&self, instance: &str) -> std::io::Result<TcpStream> {
        TcpStream::connect(instance).await
    }
}

/// RESP over one stream: commands are answered in order.
#[derive(Debug)]
pub struct Connection<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// A connection over `stream`.
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream: BufReader::new(stream),
        }
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.stream.write_all(&encode(args)).await?;
        self.stream.flush().await?;
        read_reply(&mut self.stream).await
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    req
}

/// Sends one command to `addr` (TCP) and reads its reply, within `timeout`.
pub async fn command(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply> {
    command_via(&Tcp, addr, args, timeout).await
}

/// Opens a stream to `instance` with `dial`, sends one command and reads its reply; all
/// within `timeout`.
pub async fn command_via<D: Dial>(
    dial: &D,
    instance: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Reply> {
    let io = |source| Error::Io {
        addr: instance.to_string(),
        source,
    };
    let exchange = async {
        let stream = dial.dial(instance).await.map_err(io)?;
        Connection::new(stream).command(args).await.map_err(io)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Io {
            addr: instance.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        })?
}

/// The longest reply line (a type byte, a simple string, an error or a length).
const MAX_LINE: u64 = 64 * 1024;
/// The longest bulk string: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: u64 = 512 * 1024 * 1024;
/// The most elements in one array, and the deepest nesting of arrays.
const MAX_ELEMENTS: i64 = 1 << 20;
const MAX_DEPTH: u32 = 16;

/// One reply, read without trusting the wire: every length is bounded, and memory
/// grows only with bytes that arrived (a declared length allocates nothing).
fn read_reply<R: AsyncBufReadExt + Unpin + Send>(
    r: &mut R,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + '_>> {
    read_reply_at(r, 0)
}

fn read_reply_at<R: AsyncBufReadExt + Unpin + Send>(
    r: &mut R,
    depth: u32,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut raw = Vec::new();
        let read = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut raw).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if !raw.ends_with(b"\r\n") {
            return Err(bad("a reply line longer than 64 KiB, or cut short"));
        }
        let line = String::from_utf8_lossy(&raw[..raw.len() - 2]).into_owned();
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
        let number = || rest.parse::<i64>().map_err(|_| bad("bad length"));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(number()?),
            "$" => match number()? {
                n if n < 0 => Reply::Bulk(None),
                n if n as u64 > MAX_BULK => return Err(bad("a bulk string over 512 MiB")),
                n => {
                    let want = n as u64 + 2;
                    let mut buf = Vec::new();
                    (&mut *r).take(want).read_to_end(&mut buf).await?;
                    if buf.len() as u64 != want {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed inside a bulk string",
                        ));
                    }
                    if !buf.ends_with(b"\r\n") {
                        return Err(bad("a bulk string not ended by CRLF"));
                    }
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            },
            "*" => match number()? {
                n if n < 0 => Reply::Array(None),
                n if n > MAX_ELEMENTS => return Err(bad("an array of over 2^20 elements")),
                _ if depth >= MAX_DEPTH => return Err(bad("arrays nested over 16 deep")),
                n => {
                    let mut items = Vec::with_capacity(n.min(64) as usize);
                    for _ in 0..n {
                        items.push(read_reply_at(r, depth + 1).await?);
                    }
                    Reply::Array(Some(items))
                }
            },
            _ => return Err(bad("unknown reply type")),
        })
    })
}

/// Redis's own name for its role (`master`, `slave`, `sentinel`), from `ROLE` over TCP.
pub async fn role(addr: &str, timeout: Duration) -> Result<String> {
    role_via(&Tcp, addr, timeout).await
}

/// [`role`] of the instance `dial` reaches as `instance`.
pub async fn role_via<D: Dial>(dial: &D, instance: &str, timeout: Duration) -> Result<String> {
    role_of(
        instance,
        command_via(dial, instance, &["ROLE"], timeout).await?,
    )
}

/// The role in `instance`'s answer to `ROLE`.
pub fn role_of(instance: &str, reply: Reply) -> Result<String> {
    match reply {
        Reply::Array(Some(items)) => {
            items
                .first()
                .and_then(Reply::as_text)
                .ok_or_else(|| Error::Probe {
                    instance: instance.to_string(),
                    reason: "ROLE answered an empty array".into(),
                })
        }
        Reply::Error(e) => Err(Error::Probe {
            instance: instance.to_string(),
            reason: e,
        }),
        other => Err(Error::Probe {
            instance: instance.to_string(),
            reason: format!("unexpected ROLE reply {other:?}"),
        }),
    }
}

/// Maps Redis's answer to the set's role name through `roleMap` (an answer it does not
/// list maps to itself).
pub fn map_role(answer: &str, role_map: &BTreeMap<String, String>) -> String {
    role_map
        .get(answer)
        .cloned()
        .unwrap_or_else(|| answer.to_string())
}

/// Makes the instance at `new_primary` the primary and points every address in
/// `replicas` at it (TCP). Each step is idempotent; an error answer stops the
/// switchover.
pub async fn switchover(new_primary: &str, replicas: &[&str], timeout: Duration) -> Result<()> {
    switchover_via(&Tcp, new_primary, new_primary, replicas, timeout).await
}

/// [`switchover`] through `dial`: `new_primary` and `replicas` are instance strings of
/// `dial`'s, and `replicate_from` is the address `host:port` (a bracketed IPv6 host is
/// unbracketed) the replicas are told to replicate from, which they, not this process,
/// must reach.
pub async fn switchover_via<D: Dial>(
    dial: &D,
    new_primary: &str,
    replicate_from: &str,
    replicas: &[&str],
    timeout: Duration,
) -> Result<()> {
    let (host, port) = replicate_from
        .rsplit_once(':')
        .ok_or_else(|| Error::Switchover(format!("bad address {replicate_from}")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    expect_ok(
        new_primary,
        command_via(dial, new_primary, &["REPLICAOF", "NO", "ONE"], timeout).await?,
    )?;
    for r in replicas {
        expect_ok(
            r,
            command_via(dial, r, &["REPLICAOF", host, port], timeout).await?,
        )?;
    }
    Ok(())
}

fn expect_ok(addr: &str, reply: Reply) -> Result<()> {
    match reply {
        Reply::Simple(s) if s.starts_with("OK") => Ok(()),
        other => Err(Error::Switchover(format!("{addr} answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::DuplexStream;

    /// A scripted server on the far end of an in-memory stream: reads each command,
    /// records it, and writes the next canned answer (raw RESP bytes).
    fn scripted(
        answers: &[&'static [u8]],
    ) -> (DuplexStream, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let (client, server) = tokio::io::duplex(64);
        let answers: Vec<&'static [u8]> = answers.to_vec();
        let task = tokio::spawn(async move {
            let mut server = BufReader::new(server);
            let mut seen = Vec::new();
            for answer in answers {
                seen.push(read_command(&mut server).await);
                server.write_all(answer).await.unwrap();
                server.flush().await.unwrap();
            }
            seen
        });
        (client, task)
    }

    /// One command as the server reads it: the raw bytes of its RESP array.
    async fn read_command(r: &mut BufReader<DuplexStream>) -> Vec<u8> {
        let mut raw = Vec::new();
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        raw.extend_from_slice(line.as_bytes());
        let n: usize = line.trim_start_matches('*').trim_end().parse().unwrap();
        for _ in 0..n {
            let mut len = String::new();
            r.read_line(&mut len).await.unwrap();
            raw.extend_from_slice(len.as_bytes());
            let n: usize = len.trim_start_matches('$').trim_end().parse().unwrap();
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf);
        }
        raw
    }

    #[tokio::test]
    async fn a_connection_sends_resp_arrays_and_reads_every_reply_type_in_order() {
        let (stream, server) = scripted(&[
            b"*3\r\n$6\r\nmaster\r\n:42\r\n*0\r\n",
            b"+OK\r\n",
            b"-ERR no\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$5\r\nhe\r\no\r\n",
        ]);
        let mut c = Connection::new(stream);
        assert_eq!(
            c.command(&["ROLE"]).await.unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"master".to_vec())),
                Reply::Integer(42),
                Reply::Array(Some(vec![])),
            ]))
        );
        assert_eq!(
            c.command(&["REPLICAOF", "10.0.0.2", "6379"]).await.unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(
            c.command(&["X"]).await.unwrap(),
            Reply::Error("ERR no".into())
        );
        assert_eq!(c.command(&["X"]).await.unwrap(), Reply::Bulk(None));
        assert_eq!(c.command(&["X"]).await.unwrap(), Reply::Array(None));
        assert_eq!(
            c.command(&["X"]).await.unwrap(),
            Reply::Bulk(Some(b"he\r\no".to_vec())),
            "a bulk string is read by its length, not up to a line end"
        );
        let seen = server.await.unwrap();
        assert_eq!(seen[0], b"*1\r\n$4\r\nROLE\r\n");
        assert_eq!(
            seen[1],
            b"*3\r\n$9\r\nREPLICAOF\r\n$8\r\n10.0.0.2\r\n$4\r\n6379\r\n"
        );
    }

    #[tokio::test]
    async fn a_closed_or_garbled_stream_is_an_error_not_a_reply() {
        let (stream, server) = tokio::io::duplex(64);
        drop(server);
        let e = Connection::new(stream)
            .command(&["ROLE"])
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
        let (stream, _server) = scripted(&[b"?what\r\n"]);
        let e = Connection::new(stream)
            .command(&["ROLE"])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    /// What each instance was sent, as `(instance, raw command)`.
    type Sent = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// Dials instance names to scripted in-memory servers, recording what each was sent.
    #[derive(Default)]
    struct Scripted {
        answers: BTreeMap<&'static str, &'static [u8]>,
        seen: Sent,
    }

    impl Dial for Scripted {
        type Stream = DuplexStream;
        async fn dial(&self, instance: &str) -> std::io::Result<DuplexStream> {
            let answer = *self.answers.get(instance).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no such instance")
            })?;
            let (stream, server) = scripted(&[answer]);
            let seen = Arc::clone(&self.seen);
            let instance = instance.to_string();
            tokio::spawn(async move {
                for command in server.await.unwrap() {
                    seen.lock().unwrap().push((instance.clone(), command));
                }
            });
            Ok(stream)
        }
    }

    #[tokio::test]
    async fn a_switchover_through_a_dialer_tells_the_replicas_the_primary_address() {
        let dial = Scripted {
            answers: BTreeMap::from([
                ("redis-1", b"+OK\r\n" as &[u8]),
                ("redis-0", b"+OK\r\n"),
                ("redis-5", b"+OK\r\n"),
            ]),
            ..Scripted::default()
        };
        let t = Duration::from_secs(1);
        switchover_via(
            &dial,
            "redis-1",
            "[fd00::1]:6379",
            &["redis-0", "redis-5"],
            t,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut seen = dial.seen.lock().unwrap().clone();
        seen.sort();
        let repoint = b"*3\r\n$9\r\nREPLICAOF\r\n$7\r\nfd00::1\r\n$4\r\n6379\r\n".to_vec();
        assert_eq!(
            seen,
            [
                ("redis-0".to_string(), repoint.clone()),
                (
                    "redis-1".to_string(),
                    b"*3\r\n$9\r\nREPLICAOF\r\n$2\r\nNO\r\n$3\r\nONE\r\n".to_vec()
                ),
                ("redis-5".to_string(), repoint),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_answer_stops_a_switchover_and_a_silent_instance_times_out() {
        let dial = Scripted {
            answers: BTreeMap::from([("redis-1", b"-READONLY no\r\n" as &[u8])]),
            ..Scripted::default()
        };
        let e = switchover_via(
            &dial,
            "redis-1",
            "10.0.0.2:6379",
            &["redis-0"],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("redis-1"), "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            dial.seen.lock().unwrap().len(),
            1,
            "no replica was repointed"
        );

        struct Silent;
        impl Dial for Silent {
            type Stream = DuplexStream;
            async fn dial(&self, _: &str) -> std::io::Result<DuplexStream> {
                let (stream, server) = tokio::io::duplex(64);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(server);
                });
                Ok(stream)
            }
        }
        let e = role_via(&Silent, "redis-0", Duration::from_millis(50))
            .await
            .unwrap_err();
        match e {
            Error::Io { addr, source } => {
                assert_eq!(addr, "redis-0");
                assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn role_reads_the_first_element_of_the_role_array() {
        let dial = Scripted {
            answers: BTreeMap::from([
                (
                    "a",
                    b"*3\r\n$5\r\nslave\r\n$8\r\n10.0.0.1\r\n:6379\r\n" as &[u8],
                ),
                ("b", b"*0\r\n"),
                ("c", b"-NOPERM\r\n"),
            ]),
            ..Scripted::default()
        };
        let t = Duration::from_secs(1);
        assert_eq!(role_via(&dial, "a", t).await.unwrap(), "slave");
        for bad in ["b", "c"] {
            assert!(
                matches!(role_via(&dial, bad, t).await, Err(Error::Probe { .. })),
                "{bad}"
            );
        }
    }

    /// `read_reply` over exactly `bytes` (then EOF).
    async fn parse(bytes: &[u8]) -> std::io::Result<Reply> {
        let mut r = BufReader::new(bytes);
        read_reply(&mut r).await
    }

    #[tokio::test]
    async fn hostile_lengths_are_refused_and_allocate_nothing() {
        // Declared lengths far beyond what arrives: refused, or cut short, at once.
        let e = parse(b"$4000000000\r\n").await.unwrap_err();
        assert!(e.to_string().contains("512 MiB"), "{e}");
        let e = parse(b"$100000000\r\nabc").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let e = parse(b"*99999999999\r\n").await.unwrap_err();
        assert!(e.to_string().contains("2^20"), "{e}");
        let e = parse(b"*1000000\r\n:1\r\n").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        let deep = b"*1\r\n".repeat(40);
        let e = parse(&deep).await.unwrap_err();
        assert!(e.to_string().contains("16 deep"), "{e}");
        let long = vec![b'+'; 70 * 1024];
        let e = parse(&long).await.unwrap_err();
        assert!(e.to_string().contains("64 KiB"), "{e}");
        let e = parse(b"$3\r\nabcd\r\n").await.unwrap_err();
        assert!(e.to_string().contains("CRLF"), "{e}");
        // And what is well formed still parses.
        assert_eq!(
            parse(b"*2\r\n$3\r\nabc\r\n*1\r\n:7\r\n").await.unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Array(Some(vec![Reply::Integer(7)])),
            ]))
        );
    }

    /// 10,000 inputs made by mutating valid replies (bytes flipped, dropped, repeated,
    /// cut) and by random bytes: each one parses or is an error; none panics or hangs.
    #[tokio::test]
    async fn mutated_and_random_replies_never_panic() {
        let seeds: [&[u8]; 5] = [
            b"*3\r\n$6\r\nmaster\r\n:42\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n$2\r\n42\r\n",
            b"$11\r\nrole:master\r\n",
            b"-ERR unknown command\r\n",
            b"*2\r\n$9\r\nmaxmemory\r\n$8\r\n67108864\r\n",
            b"+OK\r\n",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..10_000u32 {
            let mut input: Vec<u8> = if i % 10 == 9 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[i as usize % seeds.len()].to_vec()
            };
            for _ in 0..1 + next() % 4 {
                if input.is_empty() {
                    break;
                }
                let at = (next() % input.len() as u64) as usize;
                match next() % 4 {
                    0 => input[at] = next() as u8,
                    1 => {
                        input.remove(at);
                    }
                    2 => {
                        let b = input[at];
                        input.insert(at, b);
                    }
                    _ => input.truncate(at),
                }
            }
            let parsed = tokio::time::timeout(Duration::from_secs(5), parse(&input)).await;
            assert!(parsed.is_ok(), "input {input:?} hung");
        }
    }
}
