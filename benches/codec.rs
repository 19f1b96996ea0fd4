use criterion::{criterion_group, criterion_main, Criterion};

fn framing(c: &mut Criterion) {
    let msg = b"Q\0\0\0\x0eselect 1;\0";
    c.bench_function("peek_header", |b| {
        b.iter(|| pgmux::protocol::complete_frame(std::hint::black_box(msg), 1 << 20))
    });
}

criterion_group!(benches, framing);
criterion_main!(benches);
