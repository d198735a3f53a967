//! Talking to Redis instances: the `ROLE` probe and the commands of a switchover.
//!
//! A minimal RESP2 client over one TCP connection per call: the probe runs every few
//! seconds per instance, so a connection pool would buy nothing, and a fresh
//! connection never carries state from a previous call.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

/// Sends one command to `addr` and reads its reply, within `timeout`.
pub async fn command(addr: &str, args: &[&str], timeout: Duration) -> Result<Reply> {
    let io = |source| Error::Io {
        addr: addr.to_string(),
        source,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        stream.write_all(&req).await.map_err(io)?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader).await.map_err(io)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Io {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        })?
}

fn read_reply<'a, R: AsyncBufReadExt + Unpin + Send>(
    r: &'a mut R,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
        let number = || rest.parse::<i64>().map_err(|_| bad("bad length"));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(number()?),
            "$" => match number()? {
                n if n < 0 => Reply::Bulk(None),
                n => {
                    let mut buf = vec![0; n as usize + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            },
            "*" => match number()? {
                n if n < 0 => Reply::Array(None),
                n => {
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(read_reply(r).await?);
                    }
                    Reply::Array(Some(items))
                }
            },
            _ => return Err(bad("unknown reply type")),
        })
    })
}

/// Redis's own name for its role (`master`, `slave`, `sentinel`), from `ROLE`.
pub async fn role(addr: &str, timeout: Duration) -> Result<String> {
    match command(addr, &["ROLE"], timeout).await? {
        Reply::Array(Some(items)) => {
            items
                .first()
                .and_then(Reply::as_text)
                .ok_or_else(|| Error::Probe {
                    instance: addr.to_string(),
                    reason: "ROLE answered an empty array".into(),
                })
        }
        Reply::Error(e) => Err(Error::Probe {
            instance: addr.to_string(),
            reason: e,
        }),
        other => Err(Error::Probe {
            instance: addr.to_string(),
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
/// `replicas` at it. Each step is idempotent; an error answer stops the switchover.
pub async fn switchover(new_primary: &str, replicas: &[&str], timeout: Duration) -> Result<()> {
    expect_ok(
        new_primary,
        command(new_primary, &["REPLICAOF", "NO", "ONE"], timeout).await?,
    )?;
    let (host, port) = new_primary
        .rsplit_once(':')
        .ok_or_else(|| Error::Switchover(format!("bad address {new_primary}")))?;
    for r in replicas {
        expect_ok(r, command(r, &["REPLICAOF", host, port], timeout).await?)?;
    }
    Ok(())
}

fn expect_ok(addr: &str, reply: Reply) -> Result<()> {
    match reply {
        Reply::Simple(s) if s.starts_with("OK") => Ok(()),
        other => Err(Error::Switchover(format!("{addr} answered {other:?}"))),
    }
}
