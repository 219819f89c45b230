"""Find the same scan stored more than once among many cases (see :mod:`nnunet_liver.data.fingerprint`).

1. fingerprint every image once (parallel; cached by the caller across runs);
2. score every pair from the fingerprints (milliseconds a pair);
3. verify the pairs scoring at least :data:`~nnunet_liver.data.fingerprint.CANDIDATE_SCORE` voxel by voxel,
   labels included (cached by the caller too);
4. duplicates are the verified pairs; their connected components are the duplicate groups.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunet_liver.data import fingerprint as fp
from nnunet_liver.data.splits import union_groups

#: the columns :meth:`Pair.evidence_row` gives, in duplicates.csv order
EVIDENCE_COLUMNS = (
    "score", "detail_ncc", "voxel_ncc", "header", "array_flips", "z_shift_mm", "z_shift_slices", "overlap_slices", "hu_offset",
    "label_dice_liver", "label_dice_tumour", "liver_ml_kept", "liver_ml_duplicate", "tumour_ml_kept",
    "tumour_ml_duplicate",
)


@dataclass(frozen=True)
class Item:
    """One image to search. ``key``: unique name; ``version``: changes whenever its files change."""

    key: str
    image: Path
    label: Path | None = None
    version: str = ""


@dataclass
class Pair:
    """A candidate pair (``a`` before ``b`` in the search order) with its evidence."""

    a: str
    b: str
    match: fp.Match
    evidence: fp.Evidence

    @property
    def duplicate(self) -> bool:
        return fp.is_duplicate(self.match, self.evidence)

    def evidence_row(self) -> dict:
        """Flat, CSV-ready evidence: how ``b`` maps onto ``a`` (the kept copy) and how their labels agree."""
        e, m = self.evidence, self.match

        def opt(v):
            return "" if v is None else v

        return {"score": round(m.score, 4), "detail_ncc": round(e.detail_ncc, 4), "voxel_ncc": round(e.voxel_ncc, 4),
                "header": e.header,
                "array_flips": m.alignment.array_flips, "z_shift_mm": m.alignment.shift_mm,
                "z_shift_slices": e.z_shift_slices, "overlap_slices": e.overlap_slices, "hu_offset": e.hu_offset,
                "label_dice_liver": opt(e.label_dice_liver), "label_dice_tumour": opt(e.label_dice_tumour),
                "liver_ml_kept": opt(e.liver_ml_a), "liver_ml_duplicate": opt(e.liver_ml_b),
                "tumour_ml_kept": opt(e.tumour_ml_a), "tumour_ml_duplicate": opt(e.tumour_ml_b)}

    def to_json(self, versions: dict[str, str]) -> dict:
        return {"a": self.a, "b": self.b, "versions": [versions[self.a], versions[self.b]],
                "match": {**asdict(self.match), "alignment": asdict(self.match.alignment)},
                "evidence": self.evidence.as_dict()}

    @classmethod
    def from_json(cls, d: dict) -> "Pair":
        m = dict(d["match"])
        m["alignment"] = fp.Alignment(**m["alignment"])
        return cls(d["a"], d["b"], fp.Match(**m), fp.Evidence(**d["evidence"]))


@dataclass
class SearchResult:
    """Outcome of :func:`find_duplicates`.

    Attributes:
        pairs: every verified candidate, duplicate or not, in search order.
        groups: duplicate groups (keys, in search order within each; singletons left out).
        compared: pairs scored; ``skipped``: pairs with no possible alignment (fields of view differ, too
            little z overlap).
        highest_other: (score, a, b) of the highest-scoring pair that is not a duplicate, or None.
    """

    pairs: list[Pair]
    groups: list[list[str]]
    compared: int
    skipped: int
    highest_other: tuple[float, str, str] | None

    def pair(self, a: str, b: str) -> Pair | None:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        return None


def _fingerprint(path: str) -> fp.Fingerprint:
    return fp.fingerprint_image(path)


def fingerprint_all(items: list[Item], cache: dict[str, tuple[str, fp.Fingerprint]] | None = None, *,
                    num_processes: int = 1, progress: bool = True) -> dict[str, fp.Fingerprint]:
    """Fingerprints of ``items`` (key -> Fingerprint); ``cache``: key -> (version, Fingerprint) of an
    earlier run, used where the version is unchanged."""
    from tqdm import tqdm

    cache = cache or {}
    out = {it.key: cache[it.key][1] for it in items if it.key in cache and cache[it.key][0] == it.version}
    todo = [it for it in items if it.key not in out]
    bar = tqdm(total=len(todo), desc="fingerprints", unit="case", disable=not progress or not todo)
    try:
        if num_processes > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(num_processes, len(todo))) as pool:
                for it, result in zip(todo, pool.map(_fingerprint, [str(it.image) for it in todo])):
                    out[it.key] = result
                    bar.update()
        else:
            for it in todo:
                out[it.key] = _fingerprint(str(it.image))
                bar.update()
    finally:
        bar.close()
    return {it.key: out[it.key] for it in items}


def find_duplicates(items: list[Item], fingerprints: dict[str, fp.Fingerprint], *,
                    verified: dict[tuple[str, str], Pair] | None = None, progress: bool = True) -> SearchResult:
    """Score every pair, verify the candidates, group the duplicates.

    Args:
        verified: (a key, b key) -> Pair from an earlier run, reused when its alignment is the one found now
            (the caller drops entries whose files changed).
    """
    from tqdm import tqdm

    verified = verified or {}
    by_key = {it.key: it for it in items}
    pairs, compared, skipped, highest = [], 0, 0, None
    total = len(items) * (len(items) - 1) // 2
    candidates = []
    for ia, ib in tqdm(itertools.combinations(range(len(items)), 2), total=total, desc="pairs", unit="pair",
                       disable=not progress or total < 1000, mininterval=1.0):
        a, b = items[ia].key, items[ib].key
        match = fp.compare(fingerprints[a], fingerprints[b])
        if match is None:
            skipped += 1
            continue
        compared += 1
        if match.score >= fp.CANDIDATE_SCORE:
            candidates.append((a, b, match))
        elif highest is None or match.score > highest[0]:
            highest = (match.score, a, b)
    for a, b, match in tqdm(candidates, desc="verify", unit="pair", disable=not progress or not candidates):
        old = verified.get((a, b))
        if old is not None and old.match == match:
            pair = old
        else:
            evidence = fp.verify(by_key[a].image, by_key[b].image, match.alignment, label_a=by_key[a].label,
                                 label_b=by_key[b].label)
            pair = Pair(a, b, match, evidence)
        pairs.append(pair)
        if not pair.duplicate and (highest is None or match.score > highest[0]):
            highest = (match.score, a, b)
    groups = [g for g in union_groups([it.key for it in items], [(p.a, p.b) for p in pairs if p.duplicate])
              if len(g) > 1]
    order = {it.key: i for i, it in enumerate(items)}
    groups = [sorted(g, key=order.__getitem__) for g in groups]
    return SearchResult(pairs, groups, compared, skipped, highest)


def evidence_against(result: SearchResult, first: str, member: str, items: dict[str, Item],
                     fingerprints: dict[str, fp.Fingerprint]) -> Pair:
    """The evidence that ``member`` duplicates ``first`` (the kept copy of its group): their verified pair,
    or, when they were joined only through other copies, a verification of the two made now."""
    pair = result.pair(first, member)
    if pair is not None and pair.a == first:
        return pair
    match = fp.compare(fingerprints[first], fingerprints[member], check_fov=False)
    if match is None:  # cannot happen for copies of one scan; keep the evidence of any link
        return next(p for p in result.pairs if member in (p.a, p.b) and p.duplicate)
    evidence = fp.verify(items[first].image, items[member].image, match.alignment, label_a=items[first].label,
                         label_b=items[member].label)
    return Pair(first, member, match, evidence)
