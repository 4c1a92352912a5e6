//! What a command is: its flags and where its keys are.
//!
//! Learned from the backend's `COMMAND` reply at start (Redis 7 key specifications), so a
//! command added to the server routes by its keys without a new proxy release. A built-in
//! table covers the common commands for when no node answers `COMMAND`.
//!
//! Keys are located as Redis's `getKeysUsingKeySpecs` does (db.c). A command whose keys
//! cannot be located is sent to any master; if the key lives elsewhere the server answers
//! `MOVED` and the proxy follows it, so the worst case is one extra hop.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::protocol::request::parse_i64;
use crate::protocol::{Request, Value};

/// Command flags the proxy acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub write: bool,
    pub readonly: bool,
    pub admin: bool,
    pub blocking: bool,
    pub pubsub: bool,
    pub movable_keys: bool,
    /// Not safe to run twice: a write (or script) that changes data again when repeated.
    /// See [`CommandSpec::runs_once`].
    pub once: bool,
    /// Refused between MULTI and EXEC (`no_multi`: SAVE, SHUTDOWN, ...).
    pub no_multi: bool,
}

/// Writes that leave the data as it was after one run when they run twice. Their reply to
/// a second run may differ (DEL counts 0), but nothing is applied twice.
const REPEATABLE: &[&str] = &[
    "SET",
    "SETEX",
    "PSETEX",
    "MSET",
    "DEL",
    "UNLINK",
    "HSET",
    "HMSET",
    "HDEL",
    "SADD",
    "SREM",
    "ZADD",
    "ZREM",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "SETBIT",
    "SETRANGE",
    "PFADD",
    "PFMERGE",
    "GEOADD",
    "LSET",
    "XACK",
    "XDEL",
    "FLUSHALL",
    "FLUSHDB",
    "SUNIONSTORE",
    "SINTERSTORE",
    "SDIFFSTORE",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
    "ZRANGESTORE",
    "GEOSEARCHSTORE",
    "TOUCH",
];

/// Blocking pops. One whose reply was lost took its element whether the proxy sends it
/// again or answers an error; sent again, the client keeps waiting, as it expects to.
const BLOCKING_POPS: &[&str] = &[
    "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP", "XREAD",
];

/// Whether a command with these flags (`may_replicate`: it may write although it is not
/// flagged a write, as scripts) is [`Flags::once`].
fn once(name: &str, flags: &Flags, may_replicate: bool) -> bool {
    (flags.write || may_replicate) && !REPEATABLE.contains(&name) && !BLOCKING_POPS.contains(&name)
}

/// Where a key search begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// At a fixed argument index.
    Index(usize),
    /// Just after a keyword, searched from `start_from` (negative: from the end, backwards).
    Keyword { keyword: Vec<u8>, start_from: i64 },
}

/// How the keys are laid out from where the search began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Find {
    /// From the first key to `last_key` (negative: from the end), every `step`-th argument;
    /// with `limit`, only the first 1/limit of the remaining arguments.
    Range {
        last_key: i64,
        step: usize,
        limit: usize,
    },
    /// The number of keys is at `key_num_index`; keys begin at `first_key`.
    KeyNum {
        key_num_index: usize,
        first_key: usize,
        step: usize,
    },
}

/// One Redis key specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
}

/// A command as the proxy knows it.
#[derive(Clone, Debug, Default)]
pub struct CommandSpec {
    /// Upper-case name.
    pub name: String,
    pub flags: Flags,
    /// Key specifications; empty for keyless commands.
    pub keys: Vec<KeySpec>,
    /// True when some key of the command could not be located by its specs.
    pub unknown_keys: bool,
    /// Subcommands (`OBJECT ENCODING`, `XINFO STREAM`), by upper-case name.
    pub subcommands: FxHashMap<Vec<u8>, Arc<CommandSpec>>,
    /// Redis's arity: `n` arguments exactly (the name counted), `-n` at least `n`; 0 when
    /// not known.
    pub arity: i64,
}

/// Argument positions of a request's keys.
pub type KeyPositions = SmallVec<[usize; 4]>;

impl CommandSpec {
    /// Whether `argc` arguments (the name counted) fit the command's arity.
    pub fn arity_fits(&self, argc: usize) -> bool {
        match self.arity {
            0 => true,
            n if n > 0 => argc as u64 == n.unsigned_abs(),
            n => argc as u64 >= n.unsigned_abs(),
        }
    }

    /// Whether `req` must not run twice: [`Flags::once`], or a repeatable write given an
    /// option that makes it conditional or counting (`SET ... NX|XX|GET`, `ZADD ... INCR`).
    pub fn runs_once(&self, req: &Request) -> bool {
        let option = |from: usize, options: &[&[u8]]| {
            req.args()
                .skip(from)
                .any(|a| options.iter().any(|o| a.eq_ignore_ascii_case(o)))
        };
        self.flags.once
            || match self.name.as_str() {
                "SET" => option(3, &[b"NX", b"XX", b"GET"]),
                "ZADD" => option(2, &[b"INCR"]),
                _ => false,
            }
    }

    /// Positions of the keys in `req`. Arguments that do not fit the spec (a wrong
    /// argument count) yield no key; the server will report the error itself.
    pub fn key_positions(&self, req: &Request, out: &mut KeyPositions) {
        let argc = req.len();
        for spec in &self.keys {
            let first = match &spec.begin {
                Begin::Index(i) => *i,
                Begin::Keyword {
                    keyword,
                    start_from,
                } => match find_keyword(req, keyword, *start_from) {
                    Some(i) => i + 1,
                    None => continue,
                },
            };
            let (first, last, step) = match spec.find {
                Find::Range {
                    last_key,
                    step,
                    limit,
                } => {
                    let last = if last_key >= 0 {
                        first as i64 + last_key
                    } else {
                        match argc.saturating_sub(first).checked_div(limit) {
                            None => argc as i64 + last_key,
                            Some(part) => first as i64 + part as i64 + last_key,
                        }
                    };
                    (first, last, step.max(1))
                }
                Find::KeyNum {
                    key_num_index,
                    first_key,
                    step,
                } => {
                    let Some(n) = req
                        .len()
                        .checked_sub(first)
                        .filter(|&left| key_num_index < left)
                        .and_then(|_| parse_i64(req.arg(first + key_num_index)))
                        .filter(|&n| n >= 0)
                    else {
                        continue;
                    };
                    let step = step.max(1);
                    let first = first + first_key;
                    (first, first as i64 + (n - 1) * step as i64, step)
                }
            };
            let mut i = first;
            while (i as i64) <= last && i < argc {
                out.push(i);
                i += step;
            }
        }
    }
}

fn find_keyword(req: &Request, keyword: &[u8], start_from: i64) -> Option<usize> {
    let argc = req.len() as i64;
    let matches = |i: i64| req.arg(i as usize).eq_ignore_ascii_case(keyword);
    if start_from >= 0 {
        (start_from.max(1)..argc).find(|&i| matches(i))
    } else {
        (1..argc + start_from + 1).rev().find(|&i| matches(i))
    }
    .map(|i| i as usize)
}

/// The proxy's table of commands.
#[derive(Debug, Default)]
pub struct Commands {
    by_name: FxHashMap<Vec<u8>, Arc<CommandSpec>>,
    /// Read from a server's `COMMAND`: a command it does not list is unknown to it.
    from_server: bool,
}

impl Commands {
    /// Looks up a command by the name a client sent, in any case, and descends into a
    /// subcommand when the command has them.
    pub fn lookup(&self, req: &Request) -> Option<&Arc<CommandSpec>> {
        let mut upper = [0u8; 32];
        let spec = self.by_name.get(uppercase(req.arg(0), &mut upper)?)?;
        if spec.subcommands.is_empty() || req.len() < 2 {
            return Some(spec);
        }
        let sub = uppercase(req.arg(1), &mut upper)
            .and_then(|name| spec.subcommands.get(name))
            .unwrap_or(spec);
        Some(sub)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Builds the table from a `COMMAND` reply. Entries that cannot be read are skipped.
    pub fn from_command_reply(reply: &Value) -> Option<Commands> {
        let entries = reply.as_array()?;
        let by_name: FxHashMap<_, _> = entries
            .iter()
            .filter_map(parse_entry)
            .map(|spec| (spec.name.as_bytes().to_vec(), Arc::new(spec)))
            .collect();
        (!by_name.is_empty()).then_some(Commands {
            by_name,
            from_server: true,
        })
    }

    /// The built-in table: common commands with their key positions.
    pub fn builtin() -> Commands {
        let mut by_name = FxHashMap::default();
        for line in BUILTIN.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut words = line.split_whitespace();
            let kind = words.next().unwrap_or_default();
            let mut flags = Flags::default();
            // `b...`: the command may block, so it must never share a connection.
            let kind = match kind.strip_prefix('b') {
                Some(rest) => {
                    flags.blocking = true;
                    rest
                }
                None => kind,
            };
            let keys = match kind {
                "r" | "w" => {
                    flags.readonly = kind == "r";
                    flags.write = kind == "w";
                    let first: usize = next_num(&mut words);
                    let last: i64 = next_num(&mut words);
                    let step: usize = next_num(&mut words);
                    vec![KeySpec {
                        begin: Begin::Index(first),
                        find: Find::Range {
                            last_key: if last < 0 { last } else { last - first as i64 },
                            step,
                            limit: 0,
                        },
                    }]
                }
                "n" => vec![],
                "admin" => {
                    flags.admin = true;
                    vec![]
                }
                "rstreams" | "wstreams" => {
                    flags.readonly = kind == "rstreams";
                    flags.write = kind == "wstreams";
                    vec![KeySpec {
                        begin: Begin::Keyword {
                            keyword: b"STREAMS".to_vec(),
                            start_from: 1,
                        },
                        find: Find::Range {
                            last_key: -1,
                            step: 1,
                            limit: 2,
                        },
                    }]
                }
                "numkeys" | "wnumkeys" => {
                    flags.write = kind == "wnumkeys";
                    let at: usize = next_num(&mut words);
                    vec![KeySpec {
                        begin: Begin::Index(at),
                        find: Find::KeyNum {
                            key_num_index: 0,
                            first_key: 1,
                            step: 1,
                        },
                    }]
                }
                _ => continue,
            };
            for name in words {
                let name = name.to_ascii_uppercase();
                let scripted = matches!(name.as_str(), "EVAL" | "EVALSHA" | "FCALL");
                let flags = Flags {
                    once: once(&name, &flags, scripted),
                    ..flags
                };
                let spec = CommandSpec {
                    name,
                    flags,
                    keys: keys.clone(),
                    ..CommandSpec::default()
                };
                by_name.insert(spec.name.as_bytes().to_vec(), Arc::new(spec));
            }
        }
        Commands {
            by_name,
            from_server: false,
        }
    }

    /// Whether a command this table does not list is unknown to the server.
    pub fn is_complete(&self) -> bool {
        self.from_server
    }
}

fn next_num<T: std::str::FromStr + Default>(words: &mut std::str::SplitWhitespace) -> T {
    words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_default()
}

/// Upper-cases a command name into `buf`; `None` if it is too long to be one.
fn uppercase<'a>(name: &[u8], buf: &'a mut [u8; 32]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_uppercase();
    }
    Some(out)
}

/// Reads one `COMMAND` entry:
/// `[name, arity, flags, first, last, step, acl, tips, key_specs, subcommands]`.
fn parse_entry(entry: &Value) -> Option<CommandSpec> {
    let fields = entry.as_array()?;
    let name = fields.first()?.as_str()?.to_ascii_uppercase();
    let mut flags = Flags::default();
    let mut may_replicate = false;
    for flag in fields.get(2)?.as_array()? {
        match flag.as_str()? {
            "write" => flags.write = true,
            "readonly" => flags.readonly = true,
            "admin" => flags.admin = true,
            "blocking" => flags.blocking = true,
            "pubsub" => flags.pubsub = true,
            "movablekeys" => flags.movable_keys = true,
            "may_replicate" => may_replicate = true,
            "no_multi" => flags.no_multi = true,
            _ => {}
        }
    }
    // Redis 7.0 flags scripts neither `write` nor `may_replicate`: named here.
    let scripted = matches!(name.as_str(), "EVAL" | "EVALSHA" | "FCALL");
    flags.once = once(&name, &flags, may_replicate || scripted);
    let arity = fields.get(1)?.as_int()?;
    let first = fields.get(3)?.as_int()?;
    let last = fields.get(4)?.as_int()?;
    let step = fields.get(5)?.as_int()?;
    let mut keys = Vec::new();
    let mut unknown_keys = false;
    match fields.get(8).and_then(Value::as_array) {
        Some(specs) => {
            for spec in specs {
                match parse_key_spec(spec) {
                    Some(spec) => keys.push(spec),
                    None => unknown_keys = true,
                }
            }
        }
        // Before Redis 7: first, last and step.
        None if first > 0 => keys.push(KeySpec {
            begin: Begin::Index(first as usize),
            find: Find::Range {
                last_key: if last < 0 { last } else { last - first },
                step: step.max(1) as usize,
                limit: 0,
            },
        }),
        None => unknown_keys = flags.movable_keys,
    }
    // The container's name includes the subcommand as `container|sub`.
    let subcommands = fields
        .get(9)
        .and_then(Value::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(parse_entry)
        .map(|sub| {
            let short = sub.name.rsplit('|').next().unwrap_or(&sub.name).to_string();
            (short.into_bytes(), Arc::new(sub))
        })
        .collect();
    Some(CommandSpec {
        name,
        flags,
        keys,
        unknown_keys,
        subcommands,
        arity,
    })
}

fn parse_key_spec(spec: &Value) -> Option<KeySpec> {
    let begin = spec.field("begin_search")?;
    let begin_spec = begin.field("spec")?;
    let begin = match begin.field("type")?.as_str()? {
        "index" => Begin::Index(begin_spec.field("index")?.as_int()?.try_into().ok()?),
        "keyword" => Begin::Keyword {
            keyword: begin_spec
                .field("keyword")?
                .as_bytes()?
                .to_ascii_uppercase(),
            start_from: begin_spec.field("startfrom")?.as_int()?,
        },
        _ => return None,
    };
    let find = spec.field("find_keys")?;
    let find_spec = find.field("spec")?;
    let num = |key: &str| -> Option<usize> { find_spec.field(key)?.as_int()?.try_into().ok() };
    let find = match find.field("type")?.as_str()? {
        "range" => Find::Range {
            last_key: find_spec.field("lastkey")?.as_int()?,
            step: num("keystep")?,
            limit: num("limit")?,
        },
        "keynum" => Find::KeyNum {
            key_num_index: num("keynumidx")?,
            first_key: num("firstkey")?,
            step: num("keystep")?,
        },
        _ => return None,
    };
    Some(KeySpec { begin, find })
}

/// The fallback table. `r|w first last step names...`: read or write commands with keys at
/// first..=last (negative last counts from the end); `numkeys at names...`: the number of
/// keys is at `at`, keys follow it; `n names...`: keyless; `admin names...`: never
/// forwarded. A `b` in front marks commands that may block; `rstreams|wstreams`: keys after
/// STREAMS, half of what follows.
const BUILTIN: &str = "
    r 1 1 1 get getrange strlen ttl pttl type exists hget hgetall hkeys hvals hlen hexists
    r 1 1 1 hmget hstrlen hrandfield hscan lindex llen lrange lpos scard sismember smembers
    r 1 1 1 smismember srandmember sscan zcard zcount zrange zrangebyscore zrank zrevrank
    r 1 1 1 zrevrange zrevrangebyscore zrangebylex zrevrangebylex zlexcount zscore zmscore
    r 1 1 1 zrandmember zscan xlen xrange xrevrange xpending getbit bitcount bitpos dump
    r 1 1 1 expiretime pexpiretime object pfcount geopos geodist geohash geosearch substr
    r 1 -1 1 mget exists touch sunion sinter sdiff
    w 1 1 1 set setex psetex setnx getset getdel getex append incr decr incrby decrby
    w 1 1 1 incrbyfloat setrange hset hsetnx hmset hdel hincrby hincrbyfloat lpush rpush
    w 1 1 1 lpushx rpushx lpop rpop lset lrem ltrim linsert sadd srem spop zadd zincrby
    w 1 1 1 zrem zremrangebyscore zremrangebyrank zremrangebylex zpopmin zpopmax xadd xdel
    w 1 1 1 xtrim xack xclaim xautoclaim xgroup xsetid expire pexpire expireat pexpireat
    w 1 1 1 persist setbit bitfield pfadd geoadd restore geosearchstore
    w 1 -1 1 del unlink pfmerge sunionstore sinterstore sdiffstore
    w 1 -1 2 mset msetnx
    w 1 2 1 rename renamenx rpoplpush smove lmove copy
    numkeys 2 eval evalsha eval_ro evalsha_ro fcall fcall_ro
    numkeys 1 zunion zinter zdiff zintercard sintercard lmpop zmpop
    n ping echo time lastsave dbsize randomkey keys scan info publish
    bw 1 -2 1 blpop brpop bzpopmin bzpopmax
    bw 1 2 1 blmove brpoplpush
    bwnumkeys 2 blmpop bzmpop
    brstreams xread
    bwstreams xreadgroup
    admin shutdown debug config failover replicaof slaveof save bgsave bgrewriteaof acl
    admin module monitor sync psync replconf latency slowlog swapdb migrate restore-asking
";

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(commands: &Commands, args: &[&str]) -> Vec<String> {
        let req = Request::from_args(args);
        let mut out = KeyPositions::new();
        commands.lookup(&req).unwrap().key_positions(&req, &mut out);
        out.iter().map(|&i| args[i].to_string()).collect()
    }

    #[test]
    fn writes_that_change_data_again_when_repeated_run_once() {
        let c = Commands::builtin();
        let once = |args: &[&str]| {
            let req = Request::from_args(args);
            c.lookup(&req).unwrap().runs_once(&req)
        };
        for args in [
            &["INCR", "n"][..],
            &["LPUSH", "l", "a"],
            &["APPEND", "s", "x"],
            &["XADD", "s", "*", "f", "v"],
            &["EVAL", "return 1", "0"],
            &["SET", "lock", "me", "NX", "PX", "100"],
            &["set", "k", "v", "get"],
            &["ZADD", "z", "INCR", "1", "m"],
            &["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"],
        ] {
            assert!(once(args), "{args:?}");
        }
        for args in [
            &["GET", "k"][..],
            &["SET", "k", "v"],
            &["SET", "k", "NX"], // the value happens to read NX
            &["DEL", "a", "b"],
            &["ZADD", "z", "1", "m"],
            &["BLPOP", "l", "0"],
        ] {
            assert!(!once(args), "{args:?}");
        }
    }

    /// Redis 7.0's COMMAND flags EVAL neither `write` nor `may_replicate`: a script still
    /// runs once.
    #[test]
    fn a_script_from_a_7_0_command_table_runs_once() {
        use bytes::Bytes;
        let text = |t: &str| Value::Simple(Bytes::copy_from_slice(t.as_bytes()));
        let flags = [
            "noscript",
            "stale",
            "skip_monitor",
            "no_mandatory_keys",
            "movablekeys",
        ];
        let entry = Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"eval")),
            Value::Int(-3),
            Value::Array(flags.iter().map(|f| text(f)).collect()),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ]);
        let c = Commands::from_command_reply(&Value::Array(vec![entry])).unwrap();
        let req = Request::from_args(&["EVAL", "return 1", "0"]);
        assert!(c.lookup(&req).unwrap().runs_once(&req));
    }

    #[test]
    fn builtin_table_finds_keys() {
        let c = Commands::builtin();
        assert_eq!(keys_of(&c, &["get", "a"]), ["a"]);
        assert_eq!(keys_of(&c, &["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(keys_of(&c, &["del", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(
            keys_of(&c, &["EVAL", "s", "2", "x", "y", "arg"]),
            ["x", "y"]
        );
        assert_eq!(
            keys_of(&c, &["eval", "s", "0", "arg"]),
            Vec::<String>::new()
        );
        assert_eq!(keys_of(&c, &["rename", "a", "b"]), ["a", "b"]);
        // A short request yields what is there; the server reports the arity error.
        assert_eq!(keys_of(&c, &["get"]), Vec::<String>::new());
        assert_eq!(keys_of(&c, &["eval", "s", "5", "x"]), ["x"]);
        assert_eq!(keys_of(&c, &["eval", "s", "-1", "x"]), Vec::<String>::new());
        // Blocking commands are known before the server's table is: they must never
        // block a shared connection.
        assert_eq!(keys_of(&c, &["BLPOP", "a", "b", "0"]), ["a", "b"]);
        assert_eq!(
            keys_of(&c, &["blmpop", "0", "2", "a", "b", "LEFT"]),
            ["a", "b"]
        );
        assert_eq!(
            keys_of(
                &c,
                &["XREAD", "BLOCK", "0", "STREAMS", "s1", "s2", "$", "$"]
            ),
            ["s1", "s2"]
        );
        for name in [
            "blpop",
            "brpop",
            "blmove",
            "brpoplpush",
            "bzpopmin",
            "bzpopmax",
        ] {
            let req = Request::from_args(&[name, "k", "0"]);
            assert!(c.lookup(&req).unwrap().flags.blocking, "{name}");
        }
        // So are the commands that must never be forwarded.
        for name in ["SHUTDOWN", "debug", "FAILOVER", "replicaof", "config"] {
            let req = Request::from_args(&[name, "x"]);
            assert!(c.lookup(&req).unwrap().flags.admin, "{name}");
        }
    }

    #[test]
    fn keyword_and_limit_specs() {
        // XREAD ... STREAMS k1 k2 id1 id2: keyword search, then half of what remains.
        let xread = CommandSpec {
            name: "XREAD".into(),
            keys: vec![KeySpec {
                begin: Begin::Keyword {
                    keyword: b"STREAMS".to_vec(),
                    start_from: 1,
                },
                find: Find::Range {
                    last_key: -1,
                    step: 1,
                    limit: 2,
                },
            }],
            ..CommandSpec::default()
        };
        let req = Request::from_args(&["XREAD", "COUNT", "2", "streams", "k1", "k2", "0", "0"]);
        let mut out = KeyPositions::new();
        xread.key_positions(&req, &mut out);
        assert_eq!(&out[..], &[4, 5]);
    }
}
