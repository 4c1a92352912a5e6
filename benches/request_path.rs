//! The proxy's own work per request, without I/O: scan a pipelined buffer, look the command
//! up, find its keys, hash them to a slot. Run: `cargo bench --bench request_path`.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use slotguard::protocol::{key_slot, Request, Scanner};
use slotguard::routing::command::{Commands, KeyPositions};

fn pipeline(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{:012}", i * 7919);
        let req = if i % 2 == 0 {
            Request::from_args(&["SET", &key, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"])
        } else {
            Request::from_args(&["GET", &key])
        };
        out.extend_from_slice(req.raw());
    }
    out
}

fn scan_and_route(c: &mut Criterion) {
    let commands = Commands::builtin();
    let input = pipeline(16);
    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(16));
    group.bench_function("scan+lookup+slot, 16 pipelined SET/GET", |b| {
        b.iter(|| {
            let mut scanner = Scanner::default();
            let mut buf = BytesMut::from(&input[..]);
            let mut keys = KeyPositions::new();
            let mut acc = 0u32;
            while let Some(req) = scanner.next(&mut buf).unwrap() {
                let spec = commands.lookup(&req).unwrap();
                keys.clear();
                spec.key_positions(&req, &mut keys);
                acc += key_slot(req.arg(keys[0])) as u32;
            }
            black_box(acc)
        })
    });
    let big = {
        let mut args = vec!["MSET".to_string()];
        for i in 0..100 {
            args.push(format!("k{i}"));
            args.push("v".repeat(100));
        }
        Request::from_args(&args).raw().to_vec()
    };
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("scan MSET of 100 keys", |b| {
        b.iter(|| {
            let mut scanner = Scanner::default();
            let mut buf = BytesMut::from(&big[..]);
            black_box(scanner.next(&mut buf).unwrap().unwrap().len())
        })
    });
    group.finish();
}

criterion_group!(benches, scan_and_route);
criterion_main!(benches);
