//! Backend replies: find where each reply ends, decode one when it must be looked into,
//! and encode the replies the proxy writes itself.
//!
//! On the hot path a reply is never decoded: [`ReplyScanner`] finds its end so the bytes
//! can be passed to the client as they came. Only control-plane answers and the parts of
//! a split command are decoded into a [`Value`]. Both understand RESP2 and RESP3.

use bytes::{BufMut, Bytes, BytesMut};

use super::request::{memchr, parse_i64, ProtocolError};

/// Deepest nesting [`Value::parse`] decodes; it recurses. The scanner has no such bound:
/// it keeps one counter per open aggregate, 8 bytes for at least 4 bytes of reply, so a
/// reply nested as deep as Redis will make it (a script's, say) passes to the client.
const MAX_DEPTH: usize = 512;

/// Finds the end of the reply at the front of a buffer; resumable across reads, so a huge
/// reply arriving in pieces is scanned once.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Bytes of the current reply already scanned.
    pos: usize,
    /// For each open aggregate, how many elements it still needs.
    open: Vec<u64>,
    /// Length of a bulk whose header was read but whose data has not all arrived.
    bulk: Option<usize>,
}

impl ReplyScanner {
    /// The length of the complete reply at the front of `buf`, or `None` if it has not all
    /// arrived. After `Some(n)` the caller removes `n` bytes and the scanner starts afresh.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            if let Some(len) = self.bulk {
                if buf.len() < self.pos + len + 2 {
                    return Ok(None);
                }
                self.pos += len + 2;
                self.bulk = None;
                if self.element_done() {
                    return Ok(Some(std::mem::take(&mut self.pos)));
                }
                continue;
            }
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let Some(cr) = memchr(b'\n', &buf[self.pos..]) else {
                return Ok(None);
            };
            let line_end = self.pos + cr + 1;
            let body = line_body(&buf[self.pos + 1..line_end])?;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = line_end;
                    if self.element_done() {
                        return Ok(Some(std::mem::take(&mut self.pos)));
                    }
                }
                b'$' | b'!' | b'=' => {
                    let len = number(body)?;
                    self.pos = line_end;
                    if len < 0 {
                        if self.element_done() {
                            return Ok(Some(std::mem::take(&mut self.pos)));
                        }
                    } else {
                        self.bulk = Some(len as usize);
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = number(body)?;
                    self.pos = line_end;
                    let children = match kind {
                        b'%' => n.saturating_mul(2),
                        // An attribute map is followed by the value it describes.
                        b'|' => n.saturating_mul(2).saturating_add(1),
                        _ => n,
                    };
                    if children <= 0 {
                        if self.element_done() {
                            return Ok(Some(std::mem::take(&mut self.pos)));
                        }
                    } else {
                        self.open.push(children as u64);
                    }
                }
                other => {
                    return Err(ProtocolError(format!(
                        "unexpected reply type byte 0x{other:02x}"
                    )))
                }
            }
        }
    }

    /// One element ended: close every aggregate it completes. True when the whole reply
    /// is complete.
    fn element_done(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

fn line_body(line: &[u8]) -> Result<&[u8], ProtocolError> {
    line.strip_suffix(b"\r\n")
        .ok_or_else(|| ProtocolError("reply line not terminated by CRLF".into()))
}

fn number(body: &[u8]) -> Result<i64, ProtocolError> {
    parse_i64(body).ok_or_else(|| {
        ProtocolError(format!(
            "bad length in reply: {:?}",
            String::from_utf8_lossy(body)
        ))
    })
}

/// A decoded reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...` (also RESP3 blob errors)
    Error(Bytes),
    Int(i64),
    Bulk(Bytes),
    /// RESP2 nil bulk or array, RESP3 null.
    Nil,
    /// Arrays, and RESP3 sets and pushes.
    Array(Vec<Value>),
    /// RESP3 maps, as key-value pairs.
    Map(Vec<(Value, Value)>),
    /// RESP3 doubles, booleans and big numbers, kept as their text.
    Other(u8, Bytes),
}

impl Value {
    /// Decodes one complete reply (as delimited by [`ReplyScanner`]).
    pub fn parse(frame: &Bytes) -> Result<Value, ProtocolError> {
        let mut at = 0;
        let v = parse_at(frame, &mut at, 0)?;
        Ok(v)
    }

    /// The bytes of a simple string, bulk string or error.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(b) | Value::Error(b) => Some(b),
            _ => None,
        }
    }

    /// The value as text, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Simple(b) | Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Looks up `key` in a map, or in a flat RESP2 array of alternating keys and values.
    pub fn field(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            Value::Array(items) => items
                .chunks(2)
                .find(|kv| kv.len() == 2 && kv[0].as_str() == Some(key))
                .map(|kv| &kv[1]),
            _ => None,
        }
    }

    /// Encodes the value as RESP2.
    /// Encodes the value in RESP2: a null is `$-1`, a map a flat array, a boolean `:1` or
    /// `:0`, a double or big number a bulk string.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_for(out, false);
    }

    /// Encodes the value in the protocol a client speaks: in RESP3 a null is `_`, a map
    /// `%`, and booleans, doubles and big numbers keep their own types. (Sets and pushes
    /// were decoded as arrays and stay arrays.)
    pub fn encode_for(&self, out: &mut BytesMut, resp3: bool) {
        match self {
            Value::Simple(s) => one_line(out, b'+', s),
            Value::Error(s) => one_line(out, b'-', s),
            Value::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Value::Bulk(b) => bulk(out, b),
            Value::Nil if resp3 => out.put_slice(b"_\r\n"),
            Value::Nil => out.put_slice(b"$-1\r\n"),
            Value::Array(items) => {
                array_header(out, items.len());
                items.iter().for_each(|v| v.encode_for(out, resp3));
            }
            Value::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    array_header(out, pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode_for(out, resp3);
                    v.encode_for(out, resp3);
                }
            }
            Value::Other(kind, text) if resp3 => line(out, *kind, text),
            Value::Other(b'#', text) => {
                line(out, b':', if &text[..] == b"t" { b"1" } else { b"0" })
            }
            Value::Other(_, text) => bulk(out, text),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn parse_at(frame: &Bytes, at: &mut usize, depth: usize) -> Result<Value, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("reply nested too deeply".into()));
    }
    let bad = || ProtocolError("truncated reply".into());
    let kind = *frame.get(*at).ok_or_else(bad)?;
    let nl = memchr(b'\n', &frame[*at..]).ok_or_else(bad)? + *at;
    let body = line_body(&frame[*at + 1..=nl])?;
    let body_bytes = frame.slice(*at + 1..*at + 1 + body.len());
    *at = nl + 1;
    Ok(match kind {
        b'+' => Value::Simple(body_bytes),
        b'-' => Value::Error(body_bytes),
        b':' => Value::Int(number(body)?),
        b'_' => Value::Nil,
        b',' | b'#' | b'(' => Value::Other(kind, body_bytes),
        b'$' | b'!' | b'=' => {
            let len = number(body)?;
            if len < 0 {
                return Ok(Value::Nil);
            }
            let len = len as usize;
            if frame.len() < *at + len + 2 {
                return Err(bad());
            }
            let data = frame.slice(*at..*at + len);
            *at += len + 2;
            match kind {
                b'!' => Value::Error(data),
                // A verbatim string is `fmt:text`; the text is what matters.
                b'=' => Value::Bulk(data.slice(data.len().min(4)..)),
                _ => Value::Bulk(data),
            }
        }
        b'*' | b'~' | b'>' => {
            let n = number(body)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(parse_at(frame, at, depth + 1)?);
            }
            Value::Array(items)
        }
        b'%' | b'|' => {
            let n = number(body)?.max(0);
            let mut pairs = Vec::new();
            for _ in 0..n {
                let k = parse_at(frame, at, depth + 1)?;
                let v = parse_at(frame, at, depth + 1)?;
                pairs.push((k, v));
            }
            if kind == b'|' {
                // Attributes describe the next value; the value is what the caller wants.
                return parse_at(frame, at, depth + 1);
            }
            Value::Map(pairs)
        }
        other => {
            return Err(ProtocolError(format!(
                "unexpected reply type byte 0x{other:02x}"
            )))
        }
    })
}

/// A status or an error: one line, so a line break in its text (a RESP3 blob error from a
/// node) becomes a space, as Redis does for error texts. Found by the `reply` fuzz target.
fn one_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    if !text.iter().any(|&b| b == b'\r' || b == b'\n') {
        return line(out, kind, text);
    }
    let flat: Vec<u8> = text
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    line(out, kind, &flat);
}

fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    out.put_slice(text);
    out.put_slice(b"\r\n");
}

/// Writes a bulk string.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    out.put_u8(b'$');
    out.put_slice(data.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Writes an array header.
pub fn array_header(out: &mut BytesMut, len: usize) {
    line(out, b'*', len.to_string().as_bytes());
}

/// An error reply; `text` starts with its code (`ERR ...`, `CROSSSLOT ...`).
pub fn error(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    line(&mut out, b'-', text.replace(['\r', '\n'], " ").as_bytes());
    out.freeze()
}

/// Redis's error for a command given the wrong number of arguments; `name` in lower case.
pub fn arity(name: &str) -> Bytes {
    error(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis's error for a command it does not know: its name and the start of its
/// arguments, as Redis quotes them (up to 128 bytes of each).
pub fn unknown_command(req: &crate::protocol::Request) -> Bytes {
    let clip = |bytes: &[u8], room: usize| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(room)]).into_owned()
    };
    let mut args = String::new();
    for arg in req.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        args.push_str(&format!("'{}' ", clip(arg, 128 - args.len())));
    }
    error(&format!(
        "ERR unknown command '{}', with args beginning with: {args}",
        clip(req.arg(0), 128)
    ))
}

/// A status reply such as `+OK`.
pub fn simple(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 3);
    line(&mut out, b'+', text.as_bytes());
    out.freeze()
}

pub fn int(n: i64) -> Bytes {
    Value::Int(n).to_bytes()
}

pub fn bulk_reply(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    bulk(&mut out, data);
    out.freeze()
}

pub const OK: &[u8] = b"+OK\r\n";
pub const NIL: &[u8] = b"$-1\r\n";

/// A null in the client's protocol.
pub fn nil(resp3: bool) -> Bytes {
    Bytes::from_static(if resp3 { b"_\r\n" } else { NIL })
}

/// A text reply the way Redis sends `INFO` and `CLIENT LIST`: a verbatim string (`=`,
/// format `txt`) in RESP3, a bulk string in RESP2.
pub fn text(out: &mut BytesMut, text: &[u8], resp3: bool) {
    if resp3 {
        line(out, b'=', (text.len() + 4).to_string().as_bytes());
        out.put_slice(b"txt:");
        out.put_slice(text);
        out.put_slice(b"\r\n");
    } else {
        bulk(out, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<usize> {
        let mut s = ReplyScanner::default();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(n) = s.scan(&input[at..]).unwrap() {
            out.push(n);
            at += n;
        }
        out
    }

    #[test]
    fn finds_reply_boundaries() {
        let input = b"+OK\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:5\r\n-ERR x\r\n%1\r\n+k\r\n_\r\n*0\r\n";
        assert_eq!(frames(input), vec![5, 5, 19, 8, 11, 4]);
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n:2\r\n$-1\r\n";
        let mut s = ReplyScanner::default();
        for end in 1..input.len() {
            assert_eq!(s.scan(&input[..end]).unwrap(), None, "at {end}");
        }
        assert_eq!(s.scan(input).unwrap(), Some(input.len()));
    }

    #[test]
    fn a_blob_error_with_line_breaks_is_sent_on_one_line() {
        let frame = Bytes::from_static(b"!10\r\nERR a\r\nb c\r\n");
        let v = Value::parse(&frame).unwrap();
        let mut out = BytesMut::new();
        v.encode_for(&mut out, true);
        assert_eq!(&out[..], b"-ERR a  b c\r\n");
        assert_eq!(frames(&out), vec![out.len()]);
    }

    #[test]
    fn decodes_and_reencodes() {
        let frame = Bytes::from_static(b"*3\r\n$5\r\nhello\r\n:42\r\n*1\r\n+OK\r\n");
        let v = Value::parse(&frame).unwrap();
        assert_eq!(v.as_array().unwrap()[1], Value::Int(42));
        assert_eq!(v.to_bytes(), frame);
    }

    #[test]
    fn scans_replies_nested_deeper_than_decode_goes() {
        let depth = 10_000;
        let mut input = b"*1\r\n".repeat(depth);
        input.extend_from_slice(b":1\r\n");
        assert_eq!(frames(&input), vec![input.len()]);
        assert!(Value::parse(&Bytes::from(input)).is_err());
    }

    #[test]
    fn rejects_garbage() {
        let mut s = ReplyScanner::default();
        assert!(s.scan(b"?what\r\n").is_err());
        assert!(Value::parse(&Bytes::from_static(b"*2\r\n:1\r\n")).is_err());
    }
}
