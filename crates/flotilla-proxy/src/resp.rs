//! RESP2 on the wire, bounded.
//!
//! - [`RequestReader`]: client requests (arrays of bulk strings, and inline commands)
//!   out of a growing buffer. It *checks* that a whole request is there before it
//!   builds anything, and never allocates from a length it read: a `$536870912`
//!   header costs nothing until those bytes have arrived (the buffer grows as data
//!   does, read by read).
//! - [`ReplyScanner`]: where each reply ends in the bytes a backend sends, without
//!   buffering them (replies are copied through as they come; the scanner only keeps
//!   a stack of open aggregates). RESP3 types are recognised so that `HELLO 3`
//!   passes through.
//! - [`Value`] and [`parse_value`]: small replies on the proxy's own control
//!   connections (`ROLE`, Sentinel).

use bytes::{Bytes, BytesMut};

/// The longest bulk string a request may carry (Redis's `proto-max-bulk-len`).
pub const MAX_BULK: u64 = 512 * 1024 * 1024;
/// The most arguments a request may carry.
pub const MAX_ARGS: u64 = 1024 * 1024;
/// The longest inline command or header line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;

/// Why bytes are not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A length that is not a number, or out of its bounds.
    #[error("invalid {what} length")]
    Length {
        /// `multibulk` or `bulk`.
        what: &'static str,
    },
    /// An array element that is not a bulk string.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A line longer than [`MAX_INLINE`] without its end.
    #[error("too big inline request")]
    TooBig,
    /// A bulk string not followed by CRLF, or an unbalanced quote in an inline command.
    #[error("{0}")]
    Malformed(&'static str),
}

/// How much a request may declare: an unauthenticated client gets Redis's small
/// limits, so that it cannot make the proxy buffer much before it has authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments.
    pub args: u64,
    /// Longest bulk string.
    pub bulk: u64,
}

impl Limits {
    /// An authenticated client (or a proxy without a password).
    pub const OPEN: Limits = Limits {
        args: MAX_ARGS,
        bulk: MAX_BULK,
    };
    /// Before `AUTH` (as Redis limits an unauthenticated connection).
    pub const UNAUTHENTICATED: Limits = Limits {
        args: 10,
        bulk: 16 * 1024,
    };
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The arguments; the first is the command's name.
    pub args: Vec<Bytes>,
    /// The bytes to send a backend: the request as the client sent it (an array), or
    /// an inline command encoded as an array, so that the backend parses exactly the
    /// arguments the proxy checked.
    pub wire: Bytes,
}

impl Request {
    /// The command's name, upper case (`""` for none).
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// A request from its arguments.
    pub fn from_args(args: Vec<Bytes>) -> Request {
        let wire = Bytes::from(encode(&args));
        Request { args, wire }
    }
}

/// `args` as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads requests out of the bytes a client sends.
#[derive(Debug, Default)]
pub struct RequestReader {
    /// The buffer must hold at least this many bytes before a request can be whole
    /// (learnt from a bulk header), so that a large value arriving in many reads is
    /// not re-checked from its start at every read.
    need: usize,
}

impl RequestReader {
    /// The next whole request in `buf` (consumed from it), `None` when more bytes are
    /// needed. Empty requests (`*0`, a blank line) are skipped, as Redis does.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        limits: Limits,
    ) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.is_empty() || buf.len() < self.need {
                return Ok(None);
            }
            let checked = if buf[0] == b'*' {
                check_array(buf, limits)?
            } else {
                check_inline(buf)?
            };
            let len = match checked {
                Check::Incomplete { need } => {
                    self.need = need;
                    return Ok(None);
                }
                Check::Complete(len) => len,
            };
            self.need = 0;
            let frame = buf.split_to(len).freeze();
            let request = if frame[0] == b'*' {
                parse_array(frame)
            } else {
                parse_inline(&frame)?
            };
            if let Some(r) = request {
                return Ok(Some(r));
            }
        }
    }
}

enum Check {
    /// The request's length in bytes.
    Complete(usize),
    /// Not all there; `need`: the fewest bytes that could hold it.
    Incomplete { need: usize },
}

/// The offset just past the CRLF of the line starting at `from`.
fn line_end(buf: &[u8], from: usize) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[from..buf.len().min(from + MAX_INLINE)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(from + i + 1)),
        None if window.len() >= MAX_INLINE => Err(ProtocolError::TooBig),
        None => Ok(None),
    }
}

/// The number of a header line `buf[from..end]` (type byte, digits, CRLF).
fn header_number(
    buf: &[u8],
    from: usize,
    end: usize,
    what: &'static str,
) -> Result<i64, ProtocolError> {
    let digits = buf[from + 1..end]
        .strip_suffix(b"\r\n")
        .ok_or(ProtocolError::Length { what })?;
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<i64>().ok())
        .ok_or(ProtocolError::Length { what })
}

fn check_array(buf: &[u8], limits: Limits) -> Result<Check, ProtocolError> {
    let Some(mut at) = line_end(buf, 0)? else {
        return Ok(Check::Incomplete {
            need: buf.len() + 1,
        });
    };
    let count = header_number(buf, 0, at, "multibulk")?;
    if count > limits.args as i64 {
        return Err(ProtocolError::Length { what: "multibulk" });
    }
    for _ in 0..count.max(0) {
        if at >= buf.len() {
            return Ok(Check::Incomplete { need: at + 1 });
        }
        if buf[at] != b'$' {
            return Err(ProtocolError::ExpectedBulk(buf[at] as char));
        }
        let Some(end) = line_end(buf, at)? else {
            return Ok(Check::Incomplete {
                need: buf.len() + 1,
            });
        };
        let n = header_number(buf, at, end, "bulk")?;
        if n < 0 || n as u64 > limits.bulk {
            return Err(ProtocolError::Length { what: "bulk" });
        }
        // Checked against what has arrived: nothing is allocated for `n`.
        let next = end + n as usize + 2;
        if buf.len() < next {
            return Ok(Check::Incomplete { need: next });
        }
        if &buf[next - 2..next] != b"\r\n" {
            return Err(ProtocolError::Malformed("bulk string not followed by CRLF"));
        }
        at = next;
    }
    Ok(Check::Complete(at))
}

fn check_inline(buf: &[u8]) -> Result<Check, ProtocolError> {
    match line_end(buf, 0)? {
        Some(end) => Ok(Check::Complete(end)),
        None => Ok(Check::Incomplete {
            need: buf.len() + 1,
        }),
    }
}

/// A checked array (every length within bounds, every byte there).
fn parse_array(frame: Bytes) -> Option<Request> {
    let header = frame.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
    let count = std::str::from_utf8(&frame[1..header - 2])
        .ok()
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or(0);
    if count <= 0 {
        return None;
    }
    // Capacity from what arrived (each element takes at least 4 bytes), not from the
    // header alone.
    let mut args = Vec::with_capacity((count as usize).min(frame.len() / 4));
    let mut at = header;
    for _ in 0..count {
        let end = at + frame[at..].iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
        let n: usize = std::str::from_utf8(&frame[at + 1..end - 2])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        args.push(frame.slice(end..end + n));
        at = end + n + 2;
    }
    Some(Request { args, wire: frame })
}

/// An inline command split as Redis's `sdssplitargs` does (spaces, "double quotes"
/// with escapes, 'single quotes'), then encoded as an array.
fn parse_inline(line: &[u8]) -> Result<Option<Request>, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_args(line)?;
    if args.is_empty() {
        return Ok(None);
    }
    Ok(Some(Request::from_args(
        args.into_iter().map(Bytes::from).collect(),
    )))
}

fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = ProtocolError::Malformed("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if dq {
                match c {
                    None => return Err(unbalanced),
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(i + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        let hex = std::str::from_utf8(&line[i + 2..i + 4]).unwrap_or("0");
                        arg.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        arg.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                            return Err(unbalanced);
                        }
                        dq = false;
                        i += 1;
                        break;
                    }
                    Some(other) => arg.push(other),
                }
            } else if sq {
                match c {
                    None => return Err(unbalanced),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        arg.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                            return Err(unbalanced);
                        }
                        sq = false;
                        i += 1;
                        break;
                    }
                    Some(other) => arg.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(other) => arg.push(other),
                }
            }
            i += 1;
        }
        debug_assert!(!dq && !sq);
        args.push(arg);
    }
}

/// Where replies end in a backend's byte stream.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Children still expected by each open aggregate, innermost last.
    open: Vec<u64>,
    /// The header line read so far (type byte first).
    line: Vec<u8>,
    /// Bytes of a bulk body (and its CRLF) still to come.
    body: u64,
    /// Whether the top-level reply in progress is a RESP3 push (`>`), which answers
    /// no request.
    push: bool,
    /// Whether the top-level value in progress is a RESP3 attribute (`|`), which
    /// precedes the reply it annotates.
    attribute: bool,
}

/// The end of one top-level reply in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyEnd {
    /// The offset in the chunk just past the reply.
    pub end: usize,
    /// A push (out-of-band) rather than a reply to a request.
    pub push: bool,
}

impl ReplyScanner {
    /// Feeds the next chunk; every reply that ends in it, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<ReplyEnd>, ProtocolError> {
        let mut ends = Vec::new();
        let mut i = 0;
        while i < chunk.len() {
            if self.body > 0 {
                let take = (chunk.len() - i).min(self.body as usize);
                self.body -= take as u64;
                i += take;
                if self.body == 0 {
                    self.value_done(i, &mut ends);
                }
                continue;
            }
            let rest = &chunk[i..];
            let (piece, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(p) => (&rest[..=p], true),
                None => (rest, false),
            };
            if self.line.len() + piece.len() > MAX_INLINE * 16 {
                return Err(ProtocolError::TooBig);
            }
            self.line.extend_from_slice(piece);
            i += piece.len();
            if done {
                self.header(i, &mut ends)?;
            }
        }
        Ok(ends)
    }

    fn header(&mut self, at: usize, ends: &mut Vec<ReplyEnd>) -> Result<(), ProtocolError> {
        let line = std::mem::take(&mut self.line);
        let kind = line.first().copied().unwrap_or(b'?');
        if self.open.is_empty() {
            self.push = kind == b'>';
            self.attribute = kind == b'|';
        }
        let number = || -> Result<i64, ProtocolError> {
            let digits = line[1..].strip_suffix(b"\r\n").unwrap_or(&line[1..]);
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.trim().parse::<i64>().ok())
                .ok_or(ProtocolError::Length { what: "reply" })
        };
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => self.value_done(at, ends),
            b'$' | b'!' | b'=' => match number()? {
                n if n < 0 => self.value_done(at, ends),
                n => self.body = n as u64 + 2,
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number()?;
                let children = if matches!(kind, b'%' | b'|') {
                    n.saturating_mul(2)
                } else {
                    n
                };
                if children <= 0 {
                    self.value_done(at, ends);
                } else {
                    self.open.push(children as u64);
                }
            }
            other => return Err(ProtocolError::ExpectedBulk(other as char)),
        }
        Ok(())
    }

    fn value_done(&mut self, at: usize, ends: &mut Vec<ReplyEnd>) {
        while let Some(top) = self.open.last_mut() {
            *top -= 1;
            if *top > 0 {
                return;
            }
            self.open.pop();
        }
        if std::mem::take(&mut self.attribute) {
            // The annotated reply follows.
            return;
        }
        ends.push(ReplyEnd {
            end: at,
            push: self.push,
        });
    }
}

/// A small reply, parsed (control connections only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo` (`None`: `$-1`).
    Bulk(Option<Bytes>),
    /// `*2 ...` (`None`: `*-1`).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The text of a simple string, error or bulk string.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Simple(s) | Value::Error(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// The first reply in `buf` and its length, `None` if it is not all there. For the
/// proxy's own small replies: bulk strings are bounded by [`MAX_BULK`], arrays by
/// [`MAX_ARGS`], and nothing is allocated before its bytes are there.
pub fn parse_value(buf: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    parse_value_at(buf, 0, 0)
}

fn parse_value_at(
    buf: &[u8],
    at: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, ProtocolError> {
    if at >= buf.len() {
        return Ok(None);
    }
    if depth > 32 {
        return Err(ProtocolError::Malformed("replies nested too deeply"));
    }
    let Some(end) = line_end(buf, at)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&buf[at + 1..end - 2]).into_owned();
    Ok(Some(match buf[at] {
        b'+' => (Value::Simple(text()), end),
        b'-' => (Value::Error(text()), end),
        b':' => (Value::Integer(header_number(buf, at, end, "integer")?), end),
        b'$' => {
            let n = header_number(buf, at, end, "bulk")?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), end)));
            }
            if n as u64 > MAX_BULK {
                return Err(ProtocolError::Length { what: "bulk" });
            }
            let next = end + n as usize + 2;
            if buf.len() < next {
                return Ok(None);
            }
            (
                Value::Bulk(Some(Bytes::copy_from_slice(&buf[end..end + n as usize]))),
                next,
            )
        }
        b'*' | b'>' => {
            let n = header_number(buf, at, end, "multibulk")?;
            if n < 0 {
                return Ok(Some((Value::Array(None), end)));
            }
            if n as u64 > MAX_ARGS {
                return Err(ProtocolError::Length { what: "multibulk" });
            }
            let mut items = Vec::new();
            let mut next = end;
            for _ in 0..n {
                match parse_value_at(buf, next, depth + 1)? {
                    Some((v, e)) => {
                        items.push(v);
                        next = e;
                    }
                    None => return Ok(None),
                }
            }
            (Value::Array(Some(items)), next)
        }
        other => return Err(ProtocolError::ExpectedBulk(other as char)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], limits: Limits) -> Result<Vec<Vec<String>>, ProtocolError> {
        let mut reader = RequestReader::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = reader.next(&mut buf, limits)? {
            out.push(
                r.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            );
        }
        Ok(out)
    }

    fn strings(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn arrays_and_inline_commands() {
        let got = read_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n", Limits::OPEN).unwrap();
        assert_eq!(got, strings(&[&["GET", "k"], &["PING"]]));
        let got = read_all(b"set \"a b\" 'c\\'d' \"\\x41\\n\"\r\n", Limits::OPEN).unwrap();
        assert_eq!(got, strings(&[&["set", "a b", "c'd", "A\n"]]));
        // Empty requests are skipped.
        let got = read_all(b"*0\r\n\r\n  \r\nPING\n", Limits::OPEN).unwrap();
        assert_eq!(got, strings(&[&["PING"]]));
    }

    #[test]
    fn inline_commands_reach_the_backend_as_the_arguments_checked() {
        let mut buf = BytesMut::from(&b"\"flushall\"\r\n"[..]);
        let r = RequestReader::default()
            .next(&mut buf, Limits::OPEN)
            .unwrap()
            .unwrap();
        assert_eq!(r.name(), "FLUSHALL");
        assert_eq!(&r.wire[..], b"*1\r\n$8\r\nflushall\r\n");
    }

    #[test]
    fn pipelined_requests_come_out_one_by_one() {
        let one = encode(&["SET", "k", "v"]);
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        assert_eq!(read_all(&input, Limits::OPEN).unwrap().len(), 100);
    }

    #[test]
    fn a_request_split_anywhere_is_read_once_whole() {
        let input = [encode(&["SET", "key", "a value"]), encode(&["GET", "key"])].concat();
        for split in 0..input.len() {
            let mut reader = RequestReader::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&input[..split], &input[split..]] {
                buf.extend_from_slice(part);
                while let Some(r) = reader.next(&mut buf, Limits::OPEN).unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(&got[0].wire[..], &encode(&["SET", "key", "a value"])[..]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_input_is_a_protocol_error() {
        for (bad, why) in [
            (&b"*x\r\n"[..], "invalid multibulk length"),
            (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
            (b"*1\r\n$-3\r\n", "invalid bulk length"),
            (b"*1\r\n$2\r\nabcd\r\n", "bulk string not followed by CRLF"),
            (b"*2000000\r\n", "invalid multibulk length"),
            (b"*1\r\n$536870913\r\n", "invalid bulk length"),
            (b"get \"a\r\n", "unbalanced quotes in request"),
        ] {
            let e = read_all(bad, Limits::OPEN).unwrap_err();
            assert_eq!(e.to_string(), why, "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'a'; MAX_INLINE + 1];
        assert_eq!(
            read_all(&long, Limits::OPEN).unwrap_err(),
            ProtocolError::TooBig
        );
    }

    #[test]
    fn huge_declared_lengths_allocate_nothing_before_the_bytes() {
        // 512 MiB declared, 5 bytes sent: incomplete, and the buffer stays small.
        let mut reader = RequestReader::default();
        let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nhello"[..]);
        assert_eq!(reader.next(&mut buf, Limits::OPEN).unwrap(), None);
        assert!(buf.capacity() < 4096, "capacity {}", buf.capacity());
        // A million arguments declared, one sent.
        let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\na\r\n"[..]);
        assert_eq!(reader.next(&mut buf, Limits::OPEN).unwrap(), None);
        assert!(buf.capacity() < 4096);
    }

    #[test]
    fn unauthenticated_clients_get_small_limits() {
        let e = read_all(b"*11\r\n", Limits::UNAUTHENTICATED).unwrap_err();
        assert_eq!(e.to_string(), "invalid multibulk length");
        let e = read_all(b"*1\r\n$16385\r\n", Limits::UNAUTHENTICATED).unwrap_err();
        assert_eq!(e.to_string(), "invalid bulk length");
    }

    #[test]
    fn the_scanner_finds_reply_ends_across_chunks() {
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%1\r\n+k\r\n+v\r\n",
            b"|1\r\n+a\r\n+b\r\n+annotated\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
        ];
        let all = replies.concat();
        let mut want = Vec::new();
        let mut at = 0;
        for r in replies {
            at += r.len();
            want.push(at);
        }
        for chunk in [1, 2, 3, 7, all.len()] {
            let mut s = ReplyScanner::default();
            let mut got = Vec::new();
            let mut pushes = 0;
            for (i, piece) in all.chunks(chunk).enumerate() {
                for e in s.feed(piece).unwrap() {
                    got.push(i * chunk + e.end);
                    pushes += usize::from(e.push);
                }
            }
            assert_eq!(got, want, "chunks of {chunk}");
            assert_eq!(pushes, 1);
        }
    }

    #[test]
    fn small_replies_parse_when_whole() {
        let role = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";
        let (v, n) = parse_value(role).unwrap().unwrap();
        assert_eq!(n, role.len());
        let Value::Array(Some(items)) = v else {
            panic!()
        };
        assert_eq!(items[0].text().as_deref(), Some("master"));
        assert_eq!(parse_value(&role[..role.len() - 1]).unwrap(), None);
        assert_eq!(parse_value(b"$536870912\r\nab").unwrap(), None);
    }
}
