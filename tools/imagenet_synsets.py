#!/usr/bin/env python3
"""Write synsets.txt (ILSVRC2012_ID order) from the ILSVRC2012 devkit's meta.mat.

    python3 tools/imagenet_synsets.py ILSVRC2012_devkit_t12/data/meta.mat <root>/synsets.txt

Needs SciPy (Debian: python3-scipy). Line k of the output is "<wnid> <words>" for the
synset whose ILSVRC2012_ID is k (k = 1..1000, the 1000 leaf classes), which is what
datasets/imagenet.ts needs to read ILSVRC2012_validation_ground_truth.txt. Note that this
order is not sorted wnid order; class indices in vitq are still sorted wnid order.
"""
import sys


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        sys.exit(2)
    src, dst = sys.argv[1], sys.argv[2]
    try:
        from scipy.io import loadmat
    except ImportError:
        print("error: needs SciPy (pip install scipy)", file=sys.stderr)
        sys.exit(2)
    try:
        synsets = loadmat(src, squeeze_me=True)["synsets"]
    except Exception as e:  # missing file, not a MAT file, no synsets variable
        print(f"error: {src}: cannot read the synsets table ({e})", file=sys.stderr)
        sys.exit(2)
    rows = []
    for s in synsets:
        if int(s["num_children"]) != 0:
            continue  # inner WordNet nodes, not classes
        rows.append((int(s["ILSVRC2012_ID"]), str(s["WNID"]), " ".join(str(s["words"]).split())))
    rows.sort()
    ids = [r[0] for r in rows]
    if ids != list(range(1, len(rows) + 1)):
        print(f"error: {src}: leaf ILSVRC2012_IDs are not 1..{len(rows)}", file=sys.stderr)
        sys.exit(2)
    with open(dst, "w") as f:
        for _, wnid, words in rows:
            f.write(f"{wnid} {words}\n")
    print(f"{dst}: {len(rows)} synsets in ILSVRC2012_ID order")


if __name__ == "__main__":
    main()
