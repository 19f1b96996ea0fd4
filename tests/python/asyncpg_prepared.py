"""asyncpg through pgmux in transaction mode: named prepared statements from
asyncpg's statement cache, reused across transactions by many connections that
share a small server pool.

    python asyncpg_prepared.py URL CLIENTS

Every connection runs statements whose text holds a client-specific constant, so a
statement run on behalf of the wrong client gives a wrong answer. asyncpg names
its statements per connection (__asyncpg_stmt_1__, ...), so connections also use
the same names for different texts. Each client inserts 10 rows into
asyncpg_prepared(client, i). Prints "asyncpg ok" and exits 0 when every answer
was right.
"""

import asyncio
import sys

import asyncpg

ROUNDS = 30


def check(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


async def client(url, n):
    conn = await asyncpg.connect(url)
    try:
        base = n * 1000
        for i in range(ROUNDS):
            check(await conn.fetchval(f"select $1::int + {base}", i), i + base, f"client {n} add")
            check(
                await conn.fetchval(f"select $1::text || '-client-{n}'", str(i)),
                f"{i}-client-{n}",
                f"client {n} text",
            )
            check(await conn.fetchval("select $1::int * 2", i), 2 * i, f"client {n} shared")
            row = await conn.fetchrow(f"select $1::int as a, $2::int + {base} as b", i, n)
            check((row["a"], row["b"]), (i, n + base), f"client {n} row")
            if i % 3 == 0:
                async with conn.transaction():
                    check(
                        await conn.fetchval(f"select $1::int + {base}", i),
                        i + base,
                        f"client {n} add in a transaction",
                    )
                    await conn.execute(
                        "insert into asyncpg_prepared (client, i) values ($1, $2)", n, i
                    )
                    check(
                        await conn.fetchval("select $1::int * 2", i),
                        2 * i,
                        f"client {n} shared in a transaction",
                    )
            if i % 10 == 5:
                # An error inside a transaction, then the same statements again.
                try:
                    async with conn.transaction():
                        await conn.fetchval("select 1 / $1::int", 0)
                    raise AssertionError("division by zero did not fail")
                except asyncpg.DivisionByZeroError:
                    pass
                # Many Bind/Execute in one round trip.
                await conn.executemany(
                    f"select $1::int + $2::int + {base}", [(k, k) for k in range(5)]
                )

        stmt = await conn.prepare(f"select $1::int * {n + 1}")
        for i in range(10):
            check(await stmt.fetchval(i), i * (n + 1), f"client {n} explicit statement")
    finally:
        await conn.close()


async def main(url, clients):
    await asyncio.gather(*(client(url, n) for n in range(clients)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    print("asyncpg ok")
