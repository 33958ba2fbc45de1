"""Generate a large member transaction CSV with the bundled sample's shape.

    .venv/bin/python bench/gen_members.py --members 100000 --out bench/out/members_100k.csv

Per member 1-31 transactions (mean ~4.9 like the sample), ~10% of members id-only, ~0.2% of rows
without a member id; types buy/gift/redeem evenly; points multiples of 100 (redeem negative);
revenue 0.05-99 for buy/gift, 0 for redeem; timestamps 2019-01-04..2024-01-04 UTC, unsorted.
"""

from __future__ import annotations

import argparse
import random
from datetime import datetime, timedelta
from pathlib import Path

HEADER = "memberId,lastTransactionUtcTs,lastTransactionType,lastTransactionPointsBought,lastTransactionRevenueUSD\n"
START = datetime(2019, 1, 4)
SPAN_S = int((datetime(2024, 1, 4) - START).total_seconds())


def generate(members: int, out: Path, seed: int = 7) -> int:
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(out, "w") as handle:
        handle.write(HEADER)
        buffer = []
        for m in range(members):
            member_id = f"{rng.getrandbits(32):08X}{m:x}"
            if rng.random() < 0.10:
                buffer.append(f"{member_id},,,,\n")
                rows += 1
                continue
            for _ in range(min(31, max(1, int(rng.expovariate(1 / 4.9)) + 1))):
                kind = rng.choice(("buy", "gift", "redeem"))
                points = rng.randint(1, 100) * 100
                ts = (START + timedelta(seconds=rng.randrange(SPAN_S))).strftime("%Y-%m-%d %H:%M:%S")
                if kind == "redeem":
                    points, revenue = -points, "0.0"
                else:
                    revenue = repr(round(rng.uniform(0.05, 99.0), 2))
                mid = "" if rng.random() < 0.002 else member_id
                buffer.append(f"{mid},{ts},{kind},{points},{revenue}\n")
                rows += 1
            if len(buffer) > 10000:
                handle.writelines(buffer)
                buffer.clear()
        handle.writelines(buffer)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/members.csv"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = generate(args.members, args.out, args.seed)
    print(f"wrote {args.out}: {args.members} members, {rows} rows")


if __name__ == "__main__":
    main()
