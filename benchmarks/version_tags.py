"""What a class modified many times costs its attribute lookups, per Python version (issue 5).

The watch puts its patch in and out of ``Categorical`` twice per skipped cycle: each time a
class attribute assignment, and each spends one of the class's attribute-cache version tags.
CPython 3.13 gives a class at most 1,000 of them (MAX_VERSIONS_PER_CLASS, Objects/typeobject.c)
and never caches its lookups again once they are spent. CleanRL's 976-cycle CartPole makes
~1,650 such assignments.

Pure Python, no torch, so it runs on any interpreter (``python3.13 benchmarks/version_tags.py``):
a two-level class like Categorical(Distribution), fresh or reassigned (an assignment that changes
nothing, then a lookup) 500 or 2,000 times; per iteration one method call that makes three more
calls and a property read. Prints ns per iteration, median of alternated repeats.

Usage: python benchmarks/version_tags.py [--repeats 7] [--iterations 300000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


class Base:
    def __init__(self, x: int) -> None:
        self._x = x
        self.batch = (4,)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.batch

    def validate(self) -> int:
        return self._x


class Derived(Base):
    def __init__(self, x: int) -> None:
        super().__init__(x)
        self.k = 2

    def log_prob(self, v: int) -> int:
        return self.validate() + v + self.k + len(self.shape)

    def sample(self) -> int:
        return self.log_prob(1)


def make(assignments: int) -> type:
    class Leaf(Derived):
        pass

    for _ in range(assignments):
        Leaf.sample = Derived.sample  # type: ignore[method-assign]
        Leaf(1).sample()  # a lookup in between: a new version tag each time
    return Leaf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=300_000)
    args = parser.parse_args()
    classes = {"fresh": make(0), "reassigned 500 times": make(500), "reassigned 2,000 times": make(2000)}
    times: dict[str, list[float]] = {name: [] for name in classes}
    for _ in range(args.repeats):
        for name, cls in classes.items():
            d = cls(1)
            start = time.perf_counter()
            for _ in range(args.iterations):
                d.sample()
                d.shape  # noqa: B018 - the property read is the point
            times[name].append((time.perf_counter() - start) / args.iterations * 1e9)
    print(f"Python {sys.version.split()[0]}: ns per iteration, median (min) of {args.repeats} repeats")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}) |")


if __name__ == "__main__":
    main()
