"""Compare the tables of two figures folders (CSV and markdown), timing columns aside."""
import sys
from pathlib import Path
import pandas as pd

a, b = Path(sys.argv[1]), Path(sys.argv[2])
TIMING = {"seconds", "_seconds", "time", "wall_s"}
names = sorted({p.name for p in a.glob("*.csv")} | {p.name for p in b.glob("*.csv")})
bad = 0
for n in names:
    pa, pb = a / n, b / n
    if not pa.exists() or not pb.exists():
        print(f"ONLY IN {'new' if not pa.exists() else 'old'}: {n}"); bad += 1; continue
    if pa.read_bytes() == pb.read_bytes():
        continue
    try:
        da, db = pd.read_csv(pa), pd.read_csv(pb)
    except pd.errors.EmptyDataError:
        print(f"DIFF (empty) {n}"); bad += 1; continue
    cols = [c for c in da.columns if not any(t in c for t in TIMING)]
    if list(da.columns) != list(db.columns) or not da[cols].equals(db[cols]):
        print(f"DIFF {n}"); bad += 1
    else:
        print(f"same apart from timing: {n}")
mds = sorted({p.name for p in a.glob("*.md")} | {p.name for p in b.glob("*.md")})
for n in mds:
    pa, pb = a / n, b / n
    if not pa.exists() or not pb.exists():
        print(f"ONLY IN {'new' if not pa.exists() else 'old'}: {n}"); bad += 1; continue
    if pa.read_bytes() != pb.read_bytes():
        print(f"MD DIFF {n}"); bad += 1
print(f"{len(names)} csv, {len(mds)} md compared; {bad} differ")
