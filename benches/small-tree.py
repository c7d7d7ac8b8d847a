#!/usr/bin/env python3
"""A tree of N small files for the benches: 100 directories, file i holding
(i % 400) repetitions of "i " (0..3000 bytes). Usage: small-tree.py ROOT N"""
import os
import sys

root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%07d" % i), "wb") as f:
        f.write((b"%d " % i) * (i % 400))
