//! `INFO` through the proxy, in Redis's own format.
//!
//! Every master is asked the same `INFO` the client sent. The sections that describe a
//! process (`server`, `clients`, `cpu`, `replication`) are the proxy's own: its clients
//! are not the nodes' clients. The others (`memory`, `persistence`, `stats`,
//! `commandstats`, `errorstats`, `latencystats`, `keyspace`, `cluster`, ...) are merged
//! over the masters by what each field means ([`rule`]): counts and sizes are summed,
//! `calls=..,usec=..` style fields field by field (`usec_per_call` recomputed), `*_human`
//! sizes follow their summed field; flags, modes and times (`cluster_enabled`,
//! `aof_enabled`, `rdb_last_save_time`) are shown as one node shows them, statuses are
//! `err` if any master's is, and other values are the first master's. A `# Proxy` section
//! follows in the default set. Monitoring tools (redis_exporter, Datadog's Redis check) read these fields.

use std::fmt::Write;

use crate::protocol::Request;

/// Sections the proxy writes itself, by their lower-case name.
const OWN: [&str; 4] = ["server", "clients", "cpu", "replication"];

/// Sections in `INFO` with no argument (or `default`), as Redis 7.0 has them, and ours.
const DEFAULT: [&str; 12] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "cluster",
    "keyspace",
    "proxy",
];

/// What a client asked for.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Lower-case section names; `all` and `everything` add every section.
    names: Vec<String>,
}

impl Wanted {
    pub fn from_request(req: &Request) -> Wanted {
        let mut names: Vec<String> = req
            .args()
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .collect();
        if names.is_empty() {
            names.push("default".into());
        }
        Wanted { names }
    }

    /// True when the section `name` (lower case) is to be shown.
    pub fn wants(&self, name: &str) -> bool {
        self.names.iter().any(|n| {
            n == name
                || n == "all"
                || n == "everything"
                || (n == "default" && DEFAULT.contains(&name))
        })
    }
}

/// One section: its title as written (`# Server`) and its fields in order.
#[derive(Debug, Default)]
struct Section {
    title: String,
    fields: Vec<(String, String)>,
}

/// Reads an `INFO` reply into its sections.
fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(title) = line.strip_prefix("# ") {
            out.push(Section {
                title: title.to_string(),
                fields: Vec::new(),
            });
        } else if let (Some(section), Some((k, v))) = (out.last_mut(), line.split_once(':')) {
            section.fields.push((k.to_string(), v.to_string()));
        }
    }
    out
}

/// The masters' `INFO` replies merged, with the proxy's own sections (`own`, already in
/// Redis's format) in place of theirs.
pub fn merge(wanted: &Wanted, own: &str, parts: &[&str]) -> String {
    let own = sections(own);
    let parts: Vec<Vec<Section>> = parts.iter().map(|p| sections(p)).collect();
    let mut merged: Vec<Section> = Vec::new();
    for part in &parts {
        for section in part {
            let name = section.title.to_ascii_lowercase();
            if OWN.contains(&name.as_str()) {
                continue;
            }
            match merged.iter_mut().find(|s| s.title == section.title) {
                Some(into) => add(into, section),
                None => merged.push(Section {
                    title: section.title.clone(),
                    fields: section.fields.clone(),
                }),
            }
        }
    }
    for section in &mut merged {
        finish(section);
    }
    // Redis's order (the default set's, `server` to `cpu`): the proxy's sections where
    // Redis puts them; the other merged ones after, in the first master's order.
    let order = &DEFAULT[..7];
    let mut out = String::new();
    let mut write = |s: &Section| {
        let _ = write!(out, "# {}\r\n", s.title);
        for (k, v) in &s.fields {
            let _ = write!(out, "{k}:{v}\r\n");
        }
        out.push_str("\r\n");
    };
    let title = |s: &Section| s.title.to_ascii_lowercase();
    for &name in order {
        if !wanted.wants(name) {
            continue;
        }
        if let Some(s) = own.iter().chain(&merged).find(|s| title(s) == name) {
            write(s);
        }
    }
    for s in merged
        .iter()
        .filter(|s| !order.contains(&title(s).as_str()))
    {
        if wanted.wants(&title(s)) {
            write(s);
        }
    }
    for s in own.iter().filter(|s| !order.contains(&title(s).as_str())) {
        if wanted.wants(&title(s)) {
            write(s);
        }
    }
    // `INFO` of sections none of which exist answers an empty string, as Redis does.
    if out.ends_with("\r\n\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

/// Adds another master's section into `into`, each field by [`rule`].
fn add(into: &mut Section, other: &Section) {
    for (k, v) in &other.fields {
        match into.fields.iter_mut().find(|(key, _)| key == k) {
            Some((key, mine)) => match rule(key) {
                Rule::Sum => *mine = sum(mine, v),
                Rule::Largest => {
                    if let (Ok(a), Ok(b)) = (mine.parse::<i64>(), v.parse::<i64>()) {
                        *mine = a.max(b).to_string();
                    }
                }
                Rule::Worst => {
                    if mine == "ok" {
                        *mine = v.clone();
                    }
                }
            },
            None => into.fields.push((k.clone(), v.clone())),
        }
    }
}

/// How one field of the masters' `INFO` becomes the proxy's.
#[derive(Debug, PartialEq, Eq)]
enum Rule {
    /// A count or a size that each master holds a share of: summed (an integer; other
    /// values, ratios among them, are the first master's).
    Sum,
    /// The same on every master, or a flag, a mode, a time: the largest, shown as one
    /// node shows it (`cluster_enabled:1`, `aof_enabled:1` if any master appends,
    /// `rdb_last_save_time` the latest).
    Largest,
    /// A status (`ok` or `err`): `err` if any master says so.
    Worst,
}

/// The rule for field `key` (docs/COMPATIBILITY.md has the list).
fn rule(key: &str) -> Rule {
    /// The same on every master when set through the proxy, not a share of a total
    /// (SCRIPT LOAD goes to every master, and so does a tracking client's BCAST prefix),
    /// or a property of the machine.
    const LARGEST: &[&str] = &[
        "number_of_cached_scripts",
        "tracking_total_prefixes",
        "cluster_enabled",
        "loading",
        "async_loading",
        "active_defrag_running",
        "io_threads_active",
        "total_system_memory",
        "current_fork_perc",
    ];
    const FLAG_OR_TIME: &[&str] = &[
        "_enabled",
        "_in_progress",
        "_scheduled",
        "_time",
        "_time_sec",
        "_cow_size",
    ];
    if key.ends_with("_status") {
        Rule::Worst
    } else if LARGEST.contains(&key) || FLAG_OR_TIME.iter().any(|end| key.ends_with(end)) {
        Rule::Largest
    } else {
        Rule::Sum
    }
}

/// Two values of one field, summed where a sum means something.
fn sum(a: &str, b: &str) -> String {
    if let (Ok(x), Ok(y)) = (a.parse::<i64>(), b.parse::<i64>()) {
        return x.saturating_add(y).to_string();
    }
    if a.contains('=') {
        // `calls=3,usec=10,...` or `keys=1,expires=0,avg_ttl=0`: field by field.
        let theirs: Vec<(&str, &str)> = b.split(',').filter_map(|kv| kv.split_once('=')).collect();
        return a
            .split(',')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => match theirs.iter().find(|(tk, _)| *tk == k) {
                    Some((_, tv)) if k != "avg_ttl" => format!("{k}={}", sum(v, tv)),
                    _ => kv.to_string(),
                },
                None => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    a.to_string()
}

/// Fixes up what summing cannot: per-call averages and human-readable sizes.
fn finish(section: &mut Section) {
    let bytes: Vec<(String, i64)> = section
        .fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.parse::<i64>().ok()?)))
        .collect();
    for (k, v) in &mut section.fields {
        if let Some(base) = k.strip_suffix("_human") {
            if let Some((_, n)) = bytes.iter().find(|(b, _)| b == base) {
                *v = human(*n);
            }
        } else if v.contains("usec_per_call=") {
            let field = |name: &str| -> Option<f64> {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
                let per = if calls > 0.0 { usec / calls } else { 0.0 };
                *v = v
                    .split(',')
                    .map(|kv| match kv.strip_prefix("usec_per_call=") {
                        Some(_) => format!("usec_per_call={per:.2}"),
                        None => kv.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(",");
            }
        }
    }
}

/// A size the way Redis writes it for people (`1.50M`).
fn human(n: i64) -> String {
    let n = n as f64;
    let units = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in units {
        if n >= size as f64 {
            return format!("{:.2}{unit}", n / size as f64);
        }
    }
    format!("{}B", n as i64)
}

/// The proxy's CPU time in seconds (user, system), from /proc.
pub fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(args: &[&str]) -> Wanted {
        let mut all = vec!["INFO"];
        all.extend_from_slice(args);
        Wanted::from_request(&Request::from_args(&all))
    }

    const NODE_A: &str = "# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmem_fragmentation_ratio:1.5\r\n\r\n# Stats\r\ntotal_commands_processed:10\r\n\r\n# Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=100\r\n";
    const NODE_B: &str = "# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:2097152\r\nused_memory_human:2.00M\r\nmem_fragmentation_ratio:1.1\r\n\r\n# Stats\r\ntotal_commands_processed:5\r\n\r\n# Commandstats\r\ncmdstat_get:calls=2,usec=2,usec_per_call=1.00,rejected_calls=1,failed_calls=0\r\ncmdstat_set:calls=1,usec=3,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\r\n# Keyspace\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n";
    const OWN_SECTIONS: &str =
        "# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n\r\n# Clients\r\nconnected_clients:1\r\n\r\n# CPU\r\nused_cpu_user:0.5\r\n\r\n# Proxy\r\nslotguard_version:0.1.0\r\n";

    #[test]
    fn sums_what_sums_and_keeps_the_proxys_own_sections() {
        let out = merge(&wanted(&["all"]), OWN_SECTIONS, &[NODE_A, NODE_B]);
        assert!(
            out.starts_with("# Server\r\nredis_version:7.0.15\r\nprocess_id:42\r\n"),
            "{out}"
        );
        assert!(
            out.contains("used_memory:3145728\r\nused_memory_human:3.00M\r\n"),
            "{out}"
        );
        assert!(out.contains("mem_fragmentation_ratio:1.5\r\n"), "{out}");
        assert!(out.contains("total_commands_processed:15\r\n"), "{out}");
        assert!(
            out.contains("cmdstat_get:calls=4,usec=12,usec_per_call=3.00,rejected_calls=1,failed_calls=0\r\n"),
            "{out}"
        );
        assert!(out.contains("cmdstat_set:calls=1,"), "{out}");
        assert!(
            out.contains("db0:keys=7,expires=1,avg_ttl=100\r\n"),
            "{out}"
        );
        assert!(out.contains("# CPU\r\nused_cpu_user:0.5\r\n"), "{out}");
        assert!(out.contains("# Proxy\r\n"), "{out}");
        assert_eq!(out.matches("# Server").count(), 1);
    }

    #[test]
    fn flags_modes_times_and_statuses_are_not_summed() {
        let node = |aof: u8, saved: u64, status: &str| {
            format!(
                "# Persistence\r\nloading:0\r\naof_enabled:{aof}\r\nrdb_bgsave_in_progress:0\r\nrdb_changes_since_last_save:5\r\nrdb_last_save_time:{saved}\r\nrdb_last_bgsave_status:{status}\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n"
            )
        };
        let (a, b, c) = (
            node(0, 1_700_000_000, "ok"),
            node(1, 1_700_000_100, "err"),
            node(0, 1_700_000_050, "ok"),
        );
        let out = merge(&wanted(&["everything"]), OWN_SECTIONS, &[&a, &b, &c]);
        assert!(out.contains("cluster_enabled:1\r\n"), "{out}");
        assert!(out.contains("aof_enabled:1\r\n"), "{out}");
        assert!(out.contains("loading:0\r\n"), "{out}");
        assert!(out.contains("rdb_changes_since_last_save:15\r\n"), "{out}");
        assert!(out.contains("rdb_last_save_time:1700000100\r\n"), "{out}");
        assert!(out.contains("rdb_last_bgsave_status:err\r\n"), "{out}");
    }

    #[test]
    fn sections_are_chosen_as_redis_chooses_them() {
        let default = merge(&wanted(&[]), OWN_SECTIONS, &[NODE_A]);
        assert!(default.contains("# Memory") && default.contains("# Keyspace"));
        assert!(
            !default.contains("# Commandstats"),
            "not in the default set"
        );
        let cpu = merge(&wanted(&["CPU"]), OWN_SECTIONS, &[NODE_A]);
        assert_eq!(cpu, "# CPU\r\nused_cpu_user:0.5\r\n");
        let none = merge(&wanted(&["sentinel"]), OWN_SECTIONS, &[NODE_A]);
        assert_eq!(none, "");
        let two = merge(&wanted(&["cpu", "keyspace"]), OWN_SECTIONS, &[NODE_A]);
        assert!(
            two.starts_with("# CPU") && two.contains("# Keyspace"),
            "{two}"
        );
    }

    #[test]
    fn sizes_read_as_redis_writes_them() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(3 << 20), "3.00M");
    }
}
