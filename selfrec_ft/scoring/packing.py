"""Planning for the scoring engine: which requests share a prefix, and how they fill packed rows.

* :func:`plan_units` groups requests: a *group* (requests with the same ``group`` key whose prompts
  share a common prefix, leaving each at least one token of its own) or a single request.
* :func:`pack_rows` lays units into packed rows of at most ``budget`` tokens and ``max_requests``
  requests, without padding: a group's prefix once, followed by each request's remainder (see
  :mod:`selfrec_ft.scoring.packed_attention`); single requests are families without children. A
  group too large for one row starts a row with its prefix (whose keys and values are kept) and
  continues in the next rows with its remaining requests attending to the kept prefix.
* :func:`plain_batches` makes the length-sorted, left-padded batches of the plain path.

A :class:`RowPlan` knows, for every token of its row, the request(s) it belongs to and its position
(:class:`Span`): the place where per-request token positions are known (steering hooks read them
from the layout passed with the forward call).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from selfrec_ft.scoring.packed_attention import Family
from selfrec_ft.scoring.requests import ScoreRequest


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        for s in seqs[1:]:
            if s[i] != t:
                return i
    return n


def full_ids(r: ScoreRequest) -> list[int]:
    return r.prompt_ids + (r.span_ids or [])


@dataclass
class Unit:
    """Requests scored together: a group sharing a prefix of ``prefix_len`` tokens, or one or more
    requests scored on their own (``prefix_len == 0``)."""

    indices: list[int]
    prefix_len: int = 0

    def cost(self, reqs: Sequence[ScoreRequest]) -> int:
        return sum(len(reqs[i].prompt_ids) + len(reqs[i].span_ids or ()) for i in self.indices)

    def tokens(self, reqs: Sequence[ScoreRequest]) -> int:
        """Tokens the unit runs: its prefix once plus every request's remainder."""
        return self.prefix_len + self.cost(reqs) - self.prefix_len * len(self.indices)


def plan_units(reqs: Sequence[ScoreRequest], prefix_reuse: bool = True, min_prefix: int = 1,
               share_limits: Sequence[int | None] | None = None) -> list[Unit]:
    """Cached groups (≥ 2 requests with a common prefix of at least ``min_prefix`` tokens that leaves
    every prompt at least one token) and one unit per other request. ``share_limits[i]`` (None: no
    limit) caps the prefix request ``i`` may share: its tokens from there on are its own (a layer
    hook acts on them)."""
    by_group: dict[Hashable, list[int]] = {}
    units: list[Unit] = []
    for i, r in enumerate(reqs):
        if r.group is None or not prefix_reuse:
            units.append(Unit([i]))
        else:
            by_group.setdefault(r.group, []).append(i)
    for idx in by_group.values():
        prompts = [reqs[i].prompt_ids for i in idx]
        p = min(common_prefix_len(prompts), min(len(s) for s in prompts) - 1)
        caps = [share_limits[i] for i in idx if share_limits[i] is not None] if share_limits else []
        p = min([p, *caps])
        if len(idx) >= 2 and p >= min_prefix:
            units.append(Unit(idx, p))
        else:
            units.extend(Unit([i]) for i in idx)
    return units


@dataclass(frozen=True)
class Span:
    """Row tokens ``[start, end)`` belonging to ``requests`` (a group's prefix: all its members; a
    remainder or a single request: one), at positions ``position``, ``position + 1``, ..."""

    start: int
    end: int
    requests: tuple[int, ...]
    position: int


@dataclass(frozen=True)
class Read:
    """Logits to read for request ``index``: rows ``first .. first + count - 1`` of the row's kept
    logits (the answer position, then one per span token but the last)."""

    index: int
    first: int
    count: int


@dataclass
class RowPlan:
    """One packed row: token ids and position ids, the attention families, which requests own each
    span of tokens, the positions whose logits are computed and the reads among them, and the kept
    prefixes to release once the row has run."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    families: list[Family] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    keep: list[int] = field(default_factory=list)  # row positions whose logits are computed
    reads: list[Read] = field(default_factory=list)
    drops: list[Hashable] = field(default_factory=list)  # stored prefixes no later row needs

    @property
    def n_requests(self) -> int:
        return len(self.reads)

    def _add_tokens(self, tokens: Sequence[int], position: int, requests: tuple[int, ...]) -> tuple[int, int]:
        start = len(self.ids)
        self.ids.extend(tokens)
        self.positions.extend(range(position, position + len(tokens)))
        self.spans.append(Span(start, len(self.ids), requests, position))
        return start, len(self.ids)

    def _add_read(self, i: int, r: ScoreRequest, answer_row_pos: int) -> None:
        n = max(1, len(r.span_ids or ()))
        self.reads.append(Read(i, len(self.keep), n))
        self.keep.extend(range(answer_row_pos, answer_row_pos + n))

    def add_family(self, reqs: Sequence[ScoreRequest], members: Sequence[int], prefix: int,
                   root_owners: tuple[int, ...] | None = None, external: Hashable | None = None,
                   capture: Hashable | None = None) -> None:
        """Append a family: the ``prefix`` root tokens (belonging to ``root_owners``; left out when
        None: the root is ``external``) then the remainder of every member; ``prefix == 0``: one
        member, its whole sequence as a root."""
        if prefix == 0:
            (i,) = members
            start, end = self._add_tokens(full_ids(reqs[i]), 0, (i,))
            self.families.append(Family(start, end))
            self._add_read(i, reqs[i], start + len(reqs[i].prompt_ids) - 1)
            return
        start = len(self.ids)
        if root_owners is not None:
            self._add_tokens(reqs[members[0]].prompt_ids[:prefix], 0, root_owners)
        root_end = len(self.ids)
        bounds = []
        for i in members:
            c0, c1 = self._add_tokens(full_ids(reqs[i])[prefix:], prefix, (i,))
            bounds.append(c1)
            self._add_read(i, reqs[i], c0 + len(reqs[i].prompt_ids) - prefix - 1)
        self.families.append(Family(start, root_end, tuple(bounds), external, capture))


def _split(reqs: Sequence[ScoreRequest], u: Unit, budget: int, max_requests: int) -> list[list[int]]:
    """A group's requests in chunks: the first fills a row after the prefix, the others whole rows."""
    chunks, chunk, used = [], [], u.prefix_len
    for i in u.indices:
        n = len(full_ids(reqs[i])) - u.prefix_len
        if chunk and (used + n > budget or len(chunk) >= max_requests):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(i)
        used += n
    chunks.append(chunk)
    return chunks


def pack_rows(reqs: Sequence[ScoreRequest], units: Sequence[Unit], budget: int, max_requests: int) -> list[RowPlan]:
    """Packed rows for ``units`` (in order): whole units while they fit ``budget`` tokens and
    ``max_requests`` requests; a group larger than a row is split, its prefix kept between rows (a
    single request longer than ``budget`` gets a row of its own)."""
    rows: list[RowPlan] = []
    cur = RowPlan()

    def room(tokens: int, n: int) -> bool:
        return not cur.ids or (len(cur.ids) + tokens <= budget and cur.n_requests + n <= max_requests)

    for u_id, u in enumerate(units):
        if u.prefix_len == 0:
            for i in u.indices:
                if not room(len(full_ids(reqs[i])), 1):
                    rows.append(cur)
                    cur = RowPlan()
                cur.add_family(reqs, [i], 0)
            continue
        if not room(u.tokens(reqs), len(u.indices)):
            rows.append(cur)
            cur = RowPlan()
        owners = tuple(u.indices)
        chunks = _split(reqs, u, budget, max_requests)
        if len(chunks) == 1:
            cur.add_family(reqs, u.indices, u.prefix_len, owners)
            continue
        key = ("prefix", u_id)  # kept from the first row of the group to its last
        cur.add_family(reqs, chunks[0], u.prefix_len, owners, capture=key)
        for chunk in chunks[1:]:
            rows.append(cur)
            cur = RowPlan()
            cur.add_family(reqs, chunk, u.prefix_len, external=key)
        cur.drops.append(key)
    if cur.ids:
        rows.append(cur)
    return rows


MAX_PAD_FRACTION = 0.25
"""A plain batch (sorted longest first) is closed early when adding a row would make more than this
fraction of its token slots padding: padding costs as much as real tokens."""


def plain_batches(order: list[int], length_of, batch_size: int, max_batch_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of ``order`` (sorted longest first) with at most ``batch_size`` rows, at
    most ``max_batch_tokens`` padded tokens (rows × longest; a single over-long row is its own
    batch) and at most :data:`MAX_PAD_FRACTION` padding."""
    out, cur, longest, total = [], [], 0, 0
    for i in order:
        n = length_of(i)
        new_longest = max(longest, n)
        slots = new_longest * (len(cur) + 1)
        if cur and (len(cur) >= batch_size or (max_batch_tokens and slots > max_batch_tokens)
                    or slots - (total + n) > MAX_PAD_FRACTION * slots):
            out.append(cur)
            cur, new_longest, total = [], n, 0
        cur.append(i)
        longest, total = new_longest, total + n
    if cur:
        out.append(cur)
    return out
