mod support;
use support::*;

#[tokio::test]
async fn manual_smoke() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let c = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let r = c
        .query_one("select 1::int4 + $1::int4", &[&41i32])
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    c.batch_execute("SET search_path TO public; select 1")
        .await
        .unwrap();
    let out = psql(
        &[
            "-d",
            &px.url(APP_USER, APP_PASSWORD, APP_DB),
            "-Atc",
            "select inet_server_port()",
        ],
        &[],
    );
    eprintln!("{:?}", out);
    let out = pgbench(
        &["-i", "-s", "1", &px.url(APP_USER, APP_PASSWORD, APP_DB)],
        &[],
    );
    eprintln!("{:?}", String::from_utf8_lossy(&out.stderr));
    for m in ["simple", "extended", "prepared"] {
        let out = pgbench(
            &[
                "-S",
                "-M",
                m,
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "3",
                &px.url(APP_USER, APP_PASSWORD, APP_DB),
            ],
            &[],
        );
        eprintln!("{m}: {}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{m}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
