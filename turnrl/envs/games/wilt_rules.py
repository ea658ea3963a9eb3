"""WILT's rules: the benchmark's own as the eval split, generated ones for training.

Eval: the 50 rules and the 10 "lite" rules of the WILT benchmark (arXiv 2410.10998),
written out from the authors' ``harness/test_cases.py`` (github.com/ambisinister/wilt),
as Python expressions over x, y, z. Train: rules built from the same categories
(orders, equalities, signs, parity, arithmetic, squares, bitwise, coprimality, sums and
products, max / min, fractions, means), kept only when no eval rule and no other kept
rule agrees with them on every check point (``wilt.rule_signature``: the env's own
equivalence check). ``python -m turnrl.envs.games.wilt_rules`` regenerates
``data/wilt_train_rules.txt`` from ``candidates()``.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from importlib.resources import files

OFFICIAL = [
    # easy: orders
    "x > y > z", "x < y < z", "x >= y >= z", "x <= y <= z", "x < z < y", "x <= z <= y", "z < x < y", "x <= x <= y",
    # equality and inequality
    "x == y and y == z", "x != y and y != z and x != z",
    # signs
    "x < 0 and y < 0 and z < 0", "x > 0 and y > 0 and z > 0",
    # even vs odd
    "(x % 2 == 0) and (y % 2 == 0) and (z % 2 == 0)", "(x % 2 == 1) and (y % 2 == 1) and (z % 2 == 1)",
    # arithmetic (no division)
    "x + y == z", "x * y == z", "x - y == z", "x + z == y", "x * z == y", "x - z == y", "y + z == x", "y * z == x",
    "y - z == x", "y - x == z", "z - x == y", "z - y == x",
    # harder: Pythagorean triples
    "x**2 + y**2 == z**2", "x**2 + z**2 == y**2", "y**2 + z**2 == x**2",
    # bitwise
    "(int(x) & int(y)) == int(z)", "(int(x) | int(y)) == int(z)", "(int(x) ^ int(y)) == int(z)",
    # coprimality
    "all([m % 1 == 0 for m in [x, y, z]]) and all(math.gcd(int(a), int(b)) == 1 for a, b in [(x, y), (y, z), (z, x)])",
    # perfect squares
    "all(int(abs(n)**0.5)**2 == n for n in (x, y, z))",
    # sums / products
    "(x + y + z) == 0", "(x * y * z) == 0", "(x + y + z) % 2 == 0", "(x + y + z) % 2 == 1", "(x * y * z) % 2 == 0",
    "(x * y * z) % 2 == 1",
    # max / min
    "max(x, y, z) == x", "max(x, y, z) == y", "max(x, y, z) == z", "min(x, y, z) == x", "min(x, y, z) == y",
    "min(x, y, z) == z",
    # "evil" float cases
    "(0 < x % 1) and (0 < y % 1) and (0 < z % 1)", "0 < x % 1 < y % 1 < z % 1 < 1", "(x < y < z) and (0 < z - x <= 1)",
    # arithmetic mean
    "(x + y) / 2 == z",
]
OFFICIAL_LITE = [
    "x > y > z", "x < y < z", "x >= y >= z", "x <= y <= z", "x == y and y == z", "x != y and y != z and x != z",
    "x < 0 and y < 0 and z < 0", "x + y == z", "x * y == z", "x < y and y > z",
]


def candidates() -> list[str]:
    """Rules from the benchmark's categories, before removing equivalents."""
    out: list[str] = []
    perms = list(itertools.permutations("xyz"))
    pairs = list(itertools.permutations("xyz", 2))
    ops = ["<", "<=", ">", ">="]
    out += [f"{a} {o1} {b} {o2} {c}" for a, b, c in perms for o1 in ops for o2 in ops]
    out += [f"{a} {o} {b}" for a, b in pairs for o in ops + ["==", "!="]]
    out += [f"{a} {o1} {b} and {b} {o2} {c}" for a, b, c in perms for o1, o2 in (("<", ">"), (">", "<"))]
    out += [f"{a} == {b} or {b} == {c}" for a, b, c in perms] + ["x == y or y == z or x == z"]
    for signs in itertools.product([">", "<", ">=", None], repeat=3):
        terms = [f"{v} {s} 0" for v, s in zip("xyz", signs) if s]
        if terms:
            out += [" and ".join(terms), " or ".join(terms)]
    for mod, rest in ((2, 0), (2, 1), (3, 0), (3, 1), (5, 0)):
        out += [f"{v} % {mod} == {rest}" for v in "xyz"]
        out += [f"({a} % {mod} == {rest}) and ({b} % {mod} == {rest})" for a, b in itertools.combinations("xyz", 2)]
        out += [f"({a} % {mod} == {rest}) or ({b} % {mod} == {rest}) or ({c} % {mod} == {rest})" for a, b, c in [("x", "y", "z")]]
    out += [f"{a} % 2 == {b} % 2" for a, b in itertools.combinations("xyz", 2)]
    for a, b, c in perms:
        out += [f"{a} + {b} == {c} + 1", f"{a} + {b} > {c}", f"{a} + {b} < {c}", f"{a} * {b} > {c}", f"{a} * {b} < {c}",
                f"{a} == 2 * {b}", f"{a} == {b} + 1", f"{a} - {b} > {c}", f"{a} + {b} + {c} > 100", f"{a} * {b} == {c} * {c}",
                f"({a} + {b}) / 2 == {c} + 1", f"{a} + 2 * {b} == {c}", f"{a}**2 + {b}**2 > {c}**2", f"{a}**2 + {b}**2 < {c}**2",
                f"{a}**2 == {b}", f"(int({a}) & int({b})) == 0", f"(int({a}) & int({b})) == int({c})",
                f"(int({a}) | int({b})) == int({c})", f"(int({a}) ^ int({b})) == int({c})",
                f"max({a}, {b}, {c}) - min({a}, {b}, {c}) < 10", f"max({a}, {b}) == {c}", f"min({a}, {b}) == {c}",
                f"{a} % 1 == 0 and {b} % 1 == 0", f"0 < {a} % 1 < {b} % 1", f"abs({a} - {b}) < 5", f"abs({a} - {b}) <= 1"]
    out += [f"{a} % 1 == 0 and {b} % 1 == 0 and math.gcd(int({a}), int({b})) == 1" for a, b in itertools.combinations("xyz", 2)]
    out += [f"int(abs({v})**0.5)**2 == {v}" for v in "xyz"]
    out += [f"0 < {v} % 1" for v in "xyz"] + [f"{v} % 1 == 0" for v in "xyz"]
    out += ["x + y + z > 0", "x + y + z < 0", "x + y + z < 30", "(x + y + z) % 3 == 0", "x * y * z > 0", "x * y * z < 0",
            "x * y * z > 1000", "(x * y) % 2 == 0", "(x * y + z) % 2 == 0", "x + y == 0", "x * y == 0",
            "(x + y + z) / 3 == y", "(x + y + z) / 3 == x", "(x + z) / 2 == y", "(y + z) / 2 == x", "x + y == 2 * z + 2",
            "abs(x) + abs(y) + abs(z) < 20", "sorted([x, y, z])[1] > 10", "x * x > y * z"]
    return list(dict.fromkeys(out))


def generate() -> list[str]:
    """``candidates()`` less every rule equivalent to an eval rule, to an earlier kept
    rule, or to a constant (True / False everywhere)."""
    from turnrl.envs.games.wilt import constant_signatures, rule_signature

    taken = {rule_signature(r) for r in OFFICIAL + OFFICIAL_LITE} | constant_signatures()
    kept = []
    for rule in candidates():
        sig = rule_signature(rule)
        if sig not in taken:
            taken.add(sig)
            kept.append(rule)
    return kept


@lru_cache(maxsize=1)
def train_rules() -> tuple[str, ...]:
    text = files("turnrl.envs.games").joinpath("data/wilt_train_rules.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


if __name__ == "__main__":
    from pathlib import Path

    rules = generate()
    path = Path(__file__).with_name("data") / "wilt_train_rules.txt"
    path.write_text("# WILT training rules: python -m turnrl.envs.games.wilt_rules (none is equivalent to a benchmark rule)\n"
                    + "\n".join(rules) + "\n")
    print(f"{len(rules)} training rules -> {path}")
