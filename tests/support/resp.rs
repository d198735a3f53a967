//! A small blocking RESP2 client for the tests: what redis-cli does, without a
//! process per command.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) | Reply::Bulk(Some(s)) => s.clone(),
            Reply::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// One connection.
pub struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: &str) -> std::io::Result<Conn> {
        let s =
            TcpStream::connect_timeout(&addr.parse().expect("host:port"), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            r: BufReader::new(s),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.r.get_mut().write_all(req.as_bytes())?;
        read(&mut self.r)
    }
}

fn read(r: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Integer(rest.parse().unwrap_or(0)),
        "$" => {
            let n: i64 = rest.parse().unwrap_or(-1);
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().unwrap_or(-1);
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read(r)?);
            }
            Reply::Array(items)
        }
        _ => return Err(std::io::ErrorKind::InvalidData.into()),
    })
}

/// One command on a fresh connection; `None` when the instance does not answer.
pub fn once(addr: &str, args: &[&str]) -> Option<Reply> {
    Conn::open(addr).ok()?.cmd(args).ok()
}

/// A field of `INFO` (`role`, `master_host`, …).
pub fn info_field(addr: &str, field: &str) -> Option<String> {
    let text = once(addr, &["INFO"])?.text();
    text.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(&format!("{field}:"))
            .map(str::to_string)
    })
}
