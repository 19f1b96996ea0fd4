"""Holds N idle, logged-in Postgres client connections, for measuring a proxy's RSS
per idle client (benches/load.sh).

    python idle_clients.py --port 6432 --user bench --password S --database bench -n 10000

Protocol on stdout/stdin, one line each, so the caller can read the proxy's RSS at
each stage:
    prints  "LOGGED_IN <ok> <failed> <seconds>"   once every login has finished
    reads   a line                                 then runs `select 1` on each client
    prints  "QUERIED <ok> <failed> <seconds>"     once every query has finished
    reads   a line                                 then closes every client and exits
Errors (the first few) go to stderr.
"""

import argparse
import asyncio
import resource
import sys
import time

import asyncpg


async def read_line():
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--database", required=True)
    ap.add_argument("-n", type=int, required=True, help="clients to hold")
    ap.add_argument("--concurrency", type=int, default=32, help="logins in flight at once")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.n + 1024) if hard != resource.RLIM_INFINITY else a.n + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    sem = asyncio.Semaphore(a.concurrency)
    conns = []
    errors = []

    async def login():
        async with sem:
            last = None
            for _ in range(3):
                try:
                    conns.append(
                        await asyncpg.connect(
                            host=a.host,
                            port=a.port,
                            user=a.user,
                            password=a.password,
                            database=a.database,
                            ssl=False,
                            statement_cache_size=0,
                            timeout=60,
                        )
                    )
                    return
                except Exception as e:  # noqa: BLE001 - report whatever went wrong
                    last = e
                    await asyncio.sleep(0.2)
            errors.append(repr(last))

    t = time.monotonic()
    await asyncio.gather(*(login() for _ in range(a.n)))
    print(f"LOGGED_IN {len(conns)} {len(errors)} {time.monotonic() - t:.1f}", flush=True)
    for e in errors[:3]:
        print(f"login failed: {e}", file=sys.stderr, flush=True)

    await read_line()
    qerrors = []

    async def query(c):
        async with sem:
            try:
                await c.execute("select 1")
            except Exception as e:  # noqa: BLE001
                qerrors.append(repr(e))

    t = time.monotonic()
    await asyncio.gather(*(query(c) for c in conns))
    print(
        f"QUERIED {len(conns) - len(qerrors)} {len(qerrors)} {time.monotonic() - t:.1f}",
        flush=True,
    )
    for e in qerrors[:3]:
        print(f"query failed: {e}", file=sys.stderr, flush=True)

    await read_line()
    for c in conns:
        c.terminate()


if __name__ == "__main__":
    asyncio.run(main())
