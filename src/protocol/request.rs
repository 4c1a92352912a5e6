//! Client requests: a resumable, bounded scanner over the bytes a client sent.
//!
//! Accepts what Redis accepts from clients: arrays of bulk strings (`*2\r\n$3\r\nGET\r\n...`)
//! and inline commands (`PING\r\n`). Every length read from the wire is checked against
//! [`Limits`] before it is used, and nothing is reserved on the word of a header: a client
//! that announces a 1 GB bulk and sends three bytes costs three bytes.
//!
//! The scanner is resumable: when a request arrives in pieces it remembers how far it got,
//! so a large request costs time linear in its size. A complete request is split off the
//! read buffer without copying; its arguments are offsets into those bytes. Inline commands
//! are re-encoded as RESP arrays so that backends only ever see one form.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// Bounds on what a client may send. Defaults are Redis's.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most elements in one request array.
    pub max_args: usize,
    /// Longest bulk string (Redis `proto-max-bulk-len`, 512 MB).
    pub max_bulk_len: usize,
    /// Most bytes one request may occupy while it is being received
    /// (Redis `client-query-buffer-limit`, 1 GB).
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1024 * 1024,
            max_bulk_len: 512 * 1024 * 1024,
            max_request_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// Longest inline command or header line (Redis `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;

/// A protocol violation. Its text is what the client is told before the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

fn violation(what: impl Into<String>) -> ProtocolError {
    ProtocolError(what.into())
}

/// One complete client request: its RESP encoding and where each argument lies in it.
#[derive(Clone, Debug)]
pub struct Request {
    raw: Bytes,
    args: Args,
}

/// Where each argument lies in a request's bytes: offset and length.
type Args = SmallVec<[(u32, u32); 6]>;

impl Request {
    /// Builds a request from arguments (used for requests the proxy makes itself).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut offsets = Args::with_capacity(args.len());
        let raw = encode(args.iter().map(AsRef::as_ref), |at| offsets.push(at));
        Request { raw, args: offsets }
    }

    /// The wire bytes of a request made of `args`, for one that is only sent (no argument
    /// offsets are kept, and the arguments need not be gathered first).
    pub fn wire<'a, I>(args: I) -> Bytes
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        encode(args.into_iter(), |_| {})
    }

    /// The request as it goes on the wire to a backend.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The wire bytes, without the argument offsets.
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    /// True for an empty array (`*0\r\n`), which Redis ignores.
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> &[u8] {
        let (start, len) = self.args[i];
        &self.raw[start as usize..(start + len) as usize]
    }

    /// Argument `i` as shared bytes, without copying.
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        let (start, len) = self.args[i];
        self.raw.slice(start as usize..(start + len) as usize)
    }

    /// All arguments, in order.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.arg(i))
    }
}

/// A request's wire bytes, at their exact size (room to spare would cost `freeze` an
/// allocation of its own); `at` hears where each argument lies.
fn encode<'a>(
    args: impl Iterator<Item = &'a [u8]> + Clone,
    mut at: impl FnMut((u32, u32)),
) -> Bytes {
    let (count, size) = args.clone().fold((0, 0), |(n, size), a| {
        (n + 1, size + header_len(a.len()) + a.len() + 2)
    });
    let mut raw = BytesMut::with_capacity(header_len(count) + size);
    write_header(&mut raw, b'*', count);
    for arg in args {
        write_header(&mut raw, b'$', arg.len());
        at((raw.len() as u32, arg.len() as u32));
        raw.extend_from_slice(arg);
        raw.extend_from_slice(b"\r\n");
    }
    raw.freeze()
}

/// The length of `<kind><n>\r\n`.
fn header_len(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    1 + digits + 2
}

/// Writes `<kind><n>\r\n` (an array or bulk header) without going through `format!`.
fn write_header(out: &mut BytesMut, kind: u8, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Where the scanner stopped inside a request that has not fully arrived.
#[derive(Debug, Default)]
struct Partial {
    /// Elements the array header announced.
    expected: usize,
    /// Bytes of the buffer already scanned.
    pos: usize,
    /// Arguments found so far.
    args: Args,
    /// Length of a bulk whose header was read but whose data has not all arrived.
    bulk: Option<usize>,
}

/// The client-side request scanner. One per client connection.
#[derive(Debug, Default)]
pub struct Scanner {
    limits: Limits,
    partial: Option<Partial>,
}

impl Scanner {
    /// Limits that apply from the next request on (a reload).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn new(limits: Limits) -> Scanner {
        Scanner {
            limits,
            partial: None,
        }
    }

    /// How many more bytes the request being received needs at least, to size reads.
    pub fn wanted(&self) -> usize {
        match &self.partial {
            Some(Partial {
                bulk: Some(len), ..
            }) => *len + 2,
            _ => 0,
        }
    }

    /// Takes the next complete request off the front of `buf`, `Ok(None)` when more bytes
    /// are needed. Empty requests (`*0`, blank inline lines) are skipped, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if self.partial.is_none() {
            if let Some((len, args)) = whole(buf, &self.limits) {
                let raw = buf.split_to(len).freeze();
                return Ok(Some(Request { raw, args }));
            }
        }
        loop {
            if self.partial.is_none() {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => self.partial = Some(Partial::default()),
                    Some(_) => match self.inline(buf)? {
                        Some(Some(req)) => return Ok(Some(req)),
                        Some(None) => continue,
                        None => return Ok(None),
                    },
                }
            }
            let Some(done) = self.array(buf)? else {
                if buf.len() > self.limits.max_request_bytes {
                    return Err(violation("request exceeds the client query buffer limit"));
                }
                return Ok(None);
            };
            if let Some(req) = done {
                return Ok(Some(req));
            }
        }
    }

    /// Continues an array request. `Ok(None)`: needs more bytes; `Ok(Some(None))`: an empty
    /// array was skipped; `Ok(Some(Some(req)))`: a request.
    fn array(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Request>>, ProtocolError> {
        let limits = &self.limits;
        let p = self
            .partial
            .as_mut()
            .expect("array() runs on a partial request");
        if p.pos == 0 {
            let Some((n, next)) = header(buf, 0, "mbulk")? else {
                return Ok(None);
            };
            if n <= 0 {
                buf.advance_to(next);
                self.partial = None;
                return Ok(Some(None));
            }
            if n > limits.max_args as i64 || n > i32::MAX as i64 {
                return Err(violation("invalid multibulk length"));
            }
            p.expected = n as usize;
            p.pos = next;
        }
        while p.args.len() < p.expected {
            let len = match p.bulk {
                Some(len) => len,
                None => {
                    match buf.get(p.pos) {
                        None => return Ok(None),
                        Some(b'$') => {}
                        Some(&other) => {
                            return Err(violation(format!("expected '$', got '{}'", other as char)))
                        }
                    }
                    let Some((len, next)) = header(buf, p.pos, "bulk")? else {
                        return Ok(None);
                    };
                    if len < 0 || len > limits.max_bulk_len as i64 {
                        return Err(violation("invalid bulk length"));
                    }
                    p.pos = next;
                    p.bulk = Some(len as usize);
                    len as usize
                }
            };
            if buf.len() < p.pos + len + 2 {
                return Ok(None);
            }
            if &buf[p.pos + len..p.pos + len + 2] != b"\r\n" {
                return Err(violation("bulk string not terminated by CRLF"));
            }
            p.args.push((p.pos as u32, len as u32));
            p.pos += len + 2;
            p.bulk = None;
        }
        let p = self.partial.take().expect("checked above");
        let raw = buf.split_to(p.pos).freeze();
        Ok(Some(Some(Request { raw, args: p.args })))
    }

    /// An inline command: one line of space-separated words, with Redis's quoting.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Option<Request>>, ProtocolError> {
        let Some(nl) = memchr(b'\n', &buf[..buf.len().min(MAX_INLINE + 1)]) else {
            if buf.len() > MAX_INLINE {
                return Err(violation("too big inline request"));
            }
            return Ok(None);
        };
        let line = buf.split_to(nl + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let words = split_inline(line).ok_or_else(|| violation("unbalanced quotes in request"))?;
        if words.is_empty() {
            return Ok(Some(None));
        }
        if words.len() > self.limits.max_args {
            return Err(violation("invalid multibulk length"));
        }
        Ok(Some(Some(Request::from_args(&words))))
    }
}

/// A request that has fully arrived and breaks no rule, read in one pass without the
/// resumable state: its length and its arguments. `None` sends everything else (a
/// request still arriving, an empty or inline one, any error) the general way, which
/// starts it again from its first byte.
fn whole(buf: &[u8], limits: &Limits) -> Option<(usize, Args)> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (n, mut pos) = number(buf, 1)?;
    if n == 0 || n > limits.max_args || n > i32::MAX as usize {
        return None;
    }
    let mut args = Args::with_capacity(n);
    for _ in 0..n {
        if buf.get(pos) != Some(&b'$') {
            return None;
        }
        let (len, at) = number(buf, pos + 1)?;
        let end = at.checked_add(len)?;
        if len > limits.max_bulk_len || buf.get(end..end + 2) != Some(b"\r\n") {
            return None;
        }
        args.push((u32::try_from(at).ok()?, u32::try_from(len).ok()?));
        pos = end + 2;
    }
    Some((pos, args))
}

/// Up to 18 digits and CRLF at `at`, all arrived: the number and the offset past CRLF.
#[inline]
fn number(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = buf.get(at..)?;
    let (mut n, mut i) = (0usize, 0);
    while let Some(d) = rest
        .get(i)
        .map(|b| b.wrapping_sub(b'0'))
        .filter(|&d| d < 10 && i < 18)
    {
        n = n * 10 + usize::from(d);
        i += 1;
    }
    (i > 0 && rest.get(i) == Some(&b'\r') && rest.get(i + 1) == Some(&b'\n'))
        .then_some((n, at + i + 2))
}

trait AdvanceTo {
    fn advance_to(&mut self, n: usize);
}

impl AdvanceTo for BytesMut {
    fn advance_to(&mut self, n: usize) {
        let _ = self.split_to(n);
    }
}

/// Reads a `*<n>\r\n` or `$<n>\r\n` header starting at `at`. Returns the number and the
/// offset just past the CRLF, or `None` when the line has not fully arrived.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtocolError> {
    // Nearly every header is a few digits and CRLF, all arrived: read in one pass. Up to
    // 18 digits cannot overflow; anything else takes the general way below.
    if let Some((n, next)) = number(buf, at + 1) {
        return Ok(Some((n as i64, next)));
    }
    let search_end = buf.len().min(at + MAX_INLINE + 1);
    let Some(cr) = memchr(b'\r', &buf[at..search_end]) else {
        if buf.len() - at > MAX_INLINE {
            return Err(violation(format!("too big {what} count string")));
        }
        return Ok(None);
    };
    let cr = at + cr;
    if cr + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(violation(format!("invalid {what} length")));
    }
    let digits = &buf[at + 1..cr];
    let n = parse_i64(digits).ok_or_else(|| {
        violation(if what == "mbulk" {
            "invalid multibulk length".to_string()
        } else {
            "invalid bulk length".to_string()
        })
    })?;
    Ok(Some((n, cr + 2)))
}

/// A decimal integer with an optional minus sign, as Redis's `string2ll` accepts it.
pub fn parse_i64(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

pub(crate) fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Splits an inline command line as Redis's `sdssplitargs` does: words separated by
/// blanks, "double quotes" with backslash escapes, 'single quotes' with only \' escaped.
/// `None` for unbalanced quotes, or a closing quote not followed by a blank.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(words);
        }
        let mut word = Vec::new();
        let quote = match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                Some(q)
            }
            _ => None,
        };
        loop {
            match quote {
                None => {
                    if i == line.len() || line[i].is_ascii_whitespace() {
                        break;
                    }
                    word.push(line[i]);
                    i += 1;
                }
                Some(q) => {
                    let c = *line.get(i)?;
                    if c == q {
                        i += 1;
                        if i < line.len() && !line[i].is_ascii_whitespace() {
                            return None;
                        }
                        break;
                    }
                    if c == b'\\' && i + 1 < line.len() {
                        let next = line[i + 1];
                        if q == b'"' {
                            if next == b'x'
                                && i + 3 < line.len()
                                && line[i + 2].is_ascii_hexdigit()
                                && line[i + 3].is_ascii_hexdigit()
                            {
                                let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                                word.push(u8::from_str_radix(hex, 16).ok()?);
                                i += 4;
                                continue;
                            }
                            word.push(match next {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                            continue;
                        }
                        if next == b'\'' {
                            word.push(b'\'');
                            i += 2;
                            continue;
                        }
                    }
                    word.push(c);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut scanner = Scanner::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = scanner.next(&mut buf)? {
            out.push(req.args().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    fn words(ws: &[&str]) -> Vec<Vec<u8>> {
        ws.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn scans_arrays_and_inline_commands() {
        let got = scan_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*0\r\n\r\n*1\r\n$4\r\nPING\r\n")
            .unwrap();
        assert_eq!(
            got,
            vec![words(&["GET", "k"]), words(&["PING"]), words(&["PING"])]
        );
    }

    #[test]
    fn keeps_raw_bytes_of_array_requests() {
        let mut scanner = Scanner::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nextra"[..]);
        let req = scanner.next(&mut buf).unwrap().unwrap();
        assert_eq!(&req.raw()[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(&buf[..], b"extra");
    }

    #[test]
    fn resumes_a_request_fed_one_byte_at_a_time() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
        let mut scanner = Scanner::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in input.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = scanner.next(&mut buf).unwrap();
            if i + 1 < input.len() {
                assert!(r.is_none(), "complete too early at byte {i}");
            } else {
                got = r;
            }
        }
        let req = got.unwrap();
        assert_eq!(req.arg(2), b"va\r\nl");
        assert_eq!(&req.raw()[..], &input[..]);
    }

    #[test]
    fn inline_quoting_follows_redis() {
        assert_eq!(
            split_inline(br#"SET "a b" 'c\'d' "\x41\n""#).unwrap(),
            vec![
                b"SET".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert_eq!(split_inline(b"  "), Some(vec![]));
        assert_eq!(split_inline(b"GET \"unterminated"), None);
        assert_eq!(split_inline(b"GET \"a\"b"), None);
    }

    #[test]
    fn violations_answer_as_redis_does() {
        let cases: &[(&[u8], &str)] = &[
            (b"*-1\r\n*abc\r\n", "invalid multibulk length"),
            (b"*2\r\n+GET\r\n", "expected '$', got '+'"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$1073741824\r\n", "invalid bulk length"),
            (b"*1\r\n$3\r\nGETxx", "bulk string not terminated by CRLF"),
            (b"*99999999999\r\n", "invalid multibulk length"),
            (b"*1\r\n$99999999999999999999999\r\n", "invalid bulk length"),
            (b"GET 'a\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            assert_eq!(
                scan_all(input),
                Err(ProtocolError(want.to_string())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn wire_bytes_are_those_of_the_same_request_built_whole() {
        let long = [b'v'; 1234];
        let args: [&[u8]; 4] = [b"MSET", b"k", b"", &long];
        let wire = Request::wire(args);
        assert_eq!(wire, *Request::from_args(&args).raw());
        assert_eq!(header_len(0), 4);
        assert_eq!(header_len(10), 5);
    }

    #[test]
    fn headers_read_in_one_pass_agree_with_the_general_reading() {
        // The general reading: find CR, then parse what is before it.
        let general = |line: &[u8]| -> Result<Option<(i64, usize)>, ProtocolError> {
            let Some(cr) = line.iter().position(|&b| b == b'\r') else {
                return Ok(None);
            };
            match line.get(cr + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(parse_i64(&line[1..cr]).map(|n| (n, cr + 2))),
                Some(_) => Err(ProtocolError("invalid bulk length".into())),
            }
        };
        let lines: &[&[u8]] = &[
            b"$0\r\n",
            b"$7\r\n",
            b"$007\r\n",
            b"$123456789012345678\r\n",
            b"$1234567890123456789\r\n",
            b"$-1\r\n",
            b"$12",
            b"$12\r",
            b"$",
        ];
        for line in lines {
            assert_eq!(header(line, 0, "bulk"), general(line), "{line:?}");
        }
        assert!(header(b"$1x\r\n", 0, "bulk").is_err());
        assert!(header(b"$12\rx", 0, "bulk").is_err());
        assert_eq!(header(b"ab$12\r\n", 2, "bulk"), Ok(Some((12, 7))));
    }

    #[test]
    fn requests_read_whole_agree_with_requests_read_in_pieces() {
        // All at once, a complete request takes the one-pass way (`whole`); a byte at a
        // time, the resumable one. Both must give the same requests and the same errors.
        let inputs: &[&[u8]] = &[
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n",
            b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n",
            b"*1\r\n$3\r\nGETxx",
            b"*2\r\n$3\r\nGET\r\n+k\r\n",
            b"*1\r\n$-1\r\n",
            b"*0\r\n*1\r\n$4\r\nPING\r\n",
            b"*01\r\n$004\r\nPING\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*3000\r\n",
            b"*1\r\n$2000\r\n",
            b"PING\r\n*1\r\n$4\r\nPING\r\n",
        ];
        let limits = Limits {
            max_args: 1000,
            max_bulk_len: 1000,
            ..Limits::default()
        };
        // Feeds `input` in pieces of `step` bytes; every request, then the error if any.
        let scan = |input: &[u8], step: usize| {
            let mut scanner = Scanner::new(limits.clone());
            let mut buf = BytesMut::new();
            let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
            for piece in input.chunks(step) {
                buf.extend_from_slice(piece);
                loop {
                    match scanner.next(&mut buf) {
                        Ok(Some(req)) => out.push(req.args().map(|a| a.to_vec()).collect()),
                        Ok(None) => break,
                        Err(e) => return (out, Some(e)),
                    }
                }
            }
            (out, None)
        };
        for input in inputs {
            assert_eq!(scan(input, input.len()), scan(input, 1), "{input:?}");
        }
    }

    #[test]
    fn an_endless_inline_line_is_refused() {
        let line = vec![b'a'; MAX_INLINE + 10];
        assert_eq!(
            scan_all(&line),
            Err(ProtocolError("too big inline request".into()))
        );
    }

    #[test]
    fn an_endless_header_is_refused() {
        let mut input = b"*1\r\n$".to_vec();
        input.extend(vec![b'1'; MAX_INLINE + 10]);
        assert_eq!(
            scan_all(&input),
            Err(ProtocolError("too big bulk count string".into()))
        );
    }

    #[test]
    fn a_request_over_the_buffer_limit_is_refused() {
        let mut scanner = Scanner::new(Limits {
            max_request_bytes: 100,
            ..Limits::default()
        });
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$1000\r\n"[..]);
        buf.extend_from_slice(&[b'x'; 200]);
        assert!(scanner.next(&mut buf).is_err());
    }
}
