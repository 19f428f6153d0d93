"""Prefix trees of response groups (P2T, "Prefix-to-Tree"), built exactly and without Python loops over
tokens, responses or groups.

Every group of responses to one prompt forms a trie rooted at the prompt: node `s_{i,t}` is the token prefix
`o_{i,<t}`, and token `o_{i,t}` is the edge `s_{i,t} → s_{i,t+1}`. `L(s)` is the set of responses of the
group that pass through `s`. Given a per-response score `R̃_j`, the non-parametric node value is

    V(s) = (1/|L(s)|) · Σ_{j ∈ L(s)} R̃_j        (V(root) = group mean of R̃)

Source: "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs" (Tran, Yao, Yu,
arXiv 2509.18314): TEMPO/P2T; the same per-prefix mean of correctness is the TVM token label of
"Token-Supervised Value Models for Enhancing Mathematical Reasoning Capabilities of LLMs" (Lee et al.,
arXiv 2407.12863).

Conventions (see `docs/tree.md`):

* A response is the token row up to and including its last masked position, `L_i = 1 + max{t: mask[i,t]}`
  (0 for an empty/fully masked row). Tokens inside a mask hole before `L_i` are part of the prefix (they are
  context, e.g. tool output) but get no credit (every output is 0 outside `mask`).
* End of response is its own child: each response is implicitly terminated by an END symbol, so a
  response that is a strict prefix of another makes `s_{L_i}` a branch node (children END and the longer
  response's next token). A response ends in its own leaf `(o_i, END)`, shared only by identical responses.
* The END edge `s_{L_i} → leaf_i` has no token of its own; its TD term is folded into the response's last
  token (`delta` below). With this choice `Σ_t delta_{i,t} = V(leaf_i) − V(root)` exactly.

Algorithm (exact): responses are sorted lexicographically within their group (END before any token), so
that responses sharing a prefix are contiguous and the longest common prefix (LCP) of any two is the
minimum of the LCPs of the adjacent responses in between. The sort key of a pair is its LCP found by a binary
search over prefix hashes of 32-token blocks (random odd coefficients, wrapping int32/int64 arithmetic),
then an exact comparison inside the first differing block. The hash is only a sort key: the resulting
order is verified exactly (adjacent responses compared token by token); on a failed check (a collision)
the sort is redone with new coefficients and finally with an exact pairwise comparison. Every output is
derived from exact LCPs. Cost: O(B·T) elementwise work plus O(Σ_g G_g² · log T) for the pairs within
groups (quadratic in the group size: fine for G up to a few hundred).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokencredit.groups import group_index
from tokencredit.masked import last_index
from tokencredit.rollouts import Rollouts

_INT32 = torch.iinfo(torch.int32)
_HASH_ATTEMPTS = 2  # hash-keyed sorts before the exact pairwise fallback
_BLOCK = 32  # tokens per block of the prefix hash
_CHUNK = 2**22  # elements per row chunk of the [B,T] passes


@dataclass(frozen=True)
class PrefixTree:
    """Per-token view of the prefix tree of each group. Every `[B,T]` field is 0 outside mask.

    Token t of response i is the edge from `s_{i,t} = o_{i,<t}` (the node before it) to
    `s_{i,t+1} = o_{i,≤t}` (the node after it).

    * `count [B,T]` int32: `|L(s_{i,t+1})|`, the responses of the group sharing the prefix up to and
      including t.
    * `count_before [B,T]` int32: `|L(s_{i,t})|` (t = 0: the group size).
    * `value_after [B,T]` float32: `V(s_{i,t+1})`, the mean score over those responses (the TVM label).
    * `value_before [B,T]` float32: `V(s_{i,t})` (t = 0: the root, i.e. the group mean).
    * `branch [B,T]` bool: `s_{i,t}` has ≥ 2 distinct continuations in the group (next tokens or END).
    * `delta [B,T]` float32: the TD credit of token t, `V(s_{i,t+1}) − V(s_{i,t})`, plus on the last token
      the END edge `V(leaf_i) − V(s_{i,L_i})`. It is exactly 0 unless `branch`, or on the last token
      `end_branch`, and `Σ_t delta_{i,t} = leaf_value_i − V(root)` (up to float rounding).
    * `end_branch [B]` bool: `s_{i,L_i}` (after the last token) has ≥ 2 continuations: END and the next
      token of a longer response that has o_i as a strict prefix.
    * `leaf_count [B]` int64, `leaf_value [B]` float32: the number of responses identical to i (itself
      included) and their mean score, `V(leaf_i)`.
    * `length [B]` int64: `L_i`.
    """

    count: Tensor
    count_before: Tensor
    value_after: Tensor
    value_before: Tensor
    branch: Tensor
    delta: Tensor
    end_branch: Tensor
    leaf_count: Tensor
    leaf_value: Tensor
    length: Tensor


# ------------------------------------------------------------------------------------------- public API


def prefix_tree(tokens: Tensor, mask: Tensor, group: Tensor, score: Tensor) -> PrefixTree:
    """The prefix tree of every group of `tokens [B,T]` with per-response `score [B]` (see `PrefixTree`).

    `V(s) = mean_{j ∈ L(s)} score_j` over the responses of the group passing through node `s`. Groups are
    arbitrary integer ids (ragged, non-contiguous); identical responses share every node and their leaf.
    """
    _validate(tokens, mask, group, score)
    b, t = mask.shape
    if b == 0 or t == 0:
        return _tokenless_tree(mask, group, score)
    dev = mask.device
    s = _structure(tokens, mask, group)
    lv = _levels(s, score)
    delta = _delta(s, lv, mask, 1.0, torch.zeros(b, t, device=dev))

    n = _fork_counts(s)
    count = n.cumsum(1, dtype=torch.int32).neg_().add_(s.size.int()[:, None])  # |{j: lcp_ij ≥ t+1}|
    # the row's pairs are sorted deepest first: the first `count` of them are the node's responses
    at = count + (s.seg_start.int() - 1)[:, None]
    mean = lv.mean.float()
    value_after = mean.index_select(0, at.view(-1)).view(b, t)
    value_before = mean.index_select(0, at.add_(n).view(-1)).view(b, t)
    count_before = count + n
    end_branch = torch.zeros(b, dtype=torch.bool, device=dev)
    end_branch[s.row[s.lcp == _at(s.length, s.row)]] = True
    outside = ~mask
    return PrefixTree(
        count=count.masked_fill_(outside, 0),
        count_before=count_before.masked_fill_(outside, 0),
        value_after=value_after.masked_fill_(outside, 0.0),
        value_before=value_before.masked_fill_(outside, 0.0),
        branch=(n > 0).logical_and_(mask),
        delta=delta,
        end_branch=end_branch,
        leaf_count=lv.leaf_count,
        leaf_value=lv.leaf_value.float(),
        length=s.length,
    )


def prefix_delta(tokens: Tensor, mask: Tensor, group: Tensor, score: Tensor, scale: float = 1.0,
                 base: Tensor | None = None) -> Tensor:
    """`base + scale · delta` `[B,T]` float32, 0 outside mask: the fast path of `prefix_tree(...).delta`.

    `base [B,T]` (optional, float32, 0 outside mask) is updated in place and returned; TEMPO adds its TD
    term onto the GRPO advantage this way, without another `[B,T]` pass.
    """
    _validate(tokens, mask, group, score)
    b, t = mask.shape
    out = torch.zeros(b, t, device=mask.device) if base is None else base
    if b == 0 or t == 0:
        return out
    s = _structure(tokens, mask, group)
    return _delta(s, _levels(s, score), mask, scale, out)


def prefix_node_ids(tokens: Tensor, mask: Tensor, group: Tensor) -> Tensor:
    """Canonical id `[B,T]` int64 of the node after each token, `s_{i,t+1} = o_{i,≤t}` (−1 outside mask).

    Two tokens get the same id iff their responses are in the same group and share the prefix up to and
    including t. The ids are opaque (lexicographic position of the node's first response × T + t).
    """
    _validate(tokens, mask, group)
    b, t = mask.shape
    if b == 0 or t == 0:
        return torch.full((b, t), -1, dtype=torch.int64, device=mask.device)
    s = _structure(tokens, mask, group)
    # smallest lexicographic position among the row's pairs so far (deepest first); restarts at each row
    offset = (b - s.row_pos) * b
    first_pos = torch.cummin(s.partner_pos + offset, 0).values - offset
    at = _fork_counts(s).cumsum(1, dtype=torch.int32).neg_().add_((s.size + s.seg_start - 1).int()[:, None])
    node = first_pos.index_select(0, at.view(-1)).view(b, t) * t + torch.arange(t, device=mask.device)
    return node.masked_fill_(~mask, -1)


def tvm_labels(rollouts: Rollouts, correct: Tensor | None = None) -> Tensor:
    """TVM token value labels `v_{n,t}` `[B,T]` float32 (0 outside mask).

    `v_{n,t} = Σ_m 1[y_m^{≤t} = y_n^{≤t}]·c_m / Σ_m 1[y_m^{≤t} = y_n^{≤t}]`: the success rate of the
    responses of the group that share the prefix up to and including token t (`PrefixTree.value_after`).
    Source: "Token-Supervised Value Models for Enhancing Mathematical Reasoning Capabilities of LLMs"
    (Lee et al., arXiv 2407.12863, eq. of the token label), a value target for a critic (e.g. `gae`).

    `c_m` is `correct [B]` (bool or float in [0,1]) if given, else the sequence reward
    `rollouts.sequence_reward()` (for binary verifiable rewards the two coincide). Requires
    `rollouts.tokens`. Responses that are strict prefixes of others share their last node with the longer
    responses (the label is the success rate given the prefix, END not yet chosen); once a response's path
    is unique the label is its own outcome.
    """
    tokens = require_tokens(rollouts, "tvm_labels")
    if correct is None:
        score = rollouts.sequence_reward()
    else:
        if not isinstance(correct, Tensor) or tuple(correct.shape) != (rollouts.batch_size,):
            got = list(correct.shape) if isinstance(correct, Tensor) else type(correct).__name__
            raise ValueError(f"correct: expected a bool or float tensor of shape [B] = [{rollouts.batch_size}], "
                             f"got {got}")
        score = correct.float()
    return prefix_tree(tokens, rollouts.mask, rollouts.group, score).value_after


# ------------------------------------------------------------------------------------------- validation


def require_tokens(rollouts: Rollouts, who: str) -> Tensor:
    """`rollouts.tokens`, or a `ValueError` naming `Rollouts.tokens` for a function (`who`) that needs them."""
    if rollouts.tokens is None:
        raise ValueError(f"{who}: needs Rollouts.tokens ([B,T] int token ids) to build the prefix tree; got None")
    return rollouts.tokens


def _validate(tokens: Tensor, mask: Tensor, group: Tensor, score: Tensor | None = None) -> None:
    if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor of shape [B,T], got {_describe(mask)}")
    b, t = mask.shape
    if not isinstance(tokens, Tensor) or tuple(tokens.shape) != (b, t) or tokens.is_floating_point() \
            or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens: expected an integer tensor of shape [B,T] = [{b}, {t}], got {_describe(tokens)}")
    if not isinstance(group, Tensor) or tuple(group.shape) != (b,) or group.is_floating_point() \
            or group.is_complex() or group.dtype == torch.bool:
        raise ValueError(f"group: expected an integer tensor of shape [B] = [{b}], got {_describe(group)}")
    if score is None:
        return
    if not isinstance(score, Tensor) or tuple(score.shape) != (b,) or not (score.is_floating_point()
                                                                           or score.dtype == torch.bool):
        raise ValueError(f"score: expected a float tensor of shape [B] = [{b}], got {_describe(score)}")


def _describe(x: object) -> str:
    return f"shape {list(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__


def _tokenless_tree(mask: Tensor, group: Tensor, score: Tensor) -> PrefixTree:
    """B = 0 or T = 0: every response is empty, so all responses of a group share one leaf (the root)."""
    b, t = mask.shape
    gi, g = group_index(group)
    x = score.double()
    total = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, gi, x)
    count = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, gi, torch.ones_like(x))
    zi = torch.zeros(b, t, dtype=torch.int64, device=mask.device)
    zf = torch.zeros(b, t, device=mask.device)
    zi = zi.int()
    return PrefixTree(count=zi, count_before=zi.clone(), value_after=zf, value_before=zf.clone(),
                      branch=zi.bool(), delta=zf.clone(), end_branch=torch.zeros_like(gi, dtype=torch.bool),
                      leaf_count=count[gi].long(), leaf_value=(total / count)[gi].float(),
                      length=torch.zeros_like(gi))


# ------------------------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class _Structure:
    """Score-independent part: pairs (row, partner) within groups, with their exact LCP.

    Pairs are listed row by row (rows in lexicographic position order), each row's partners sorted by LCP,
    deepest first; the row itself (LCP = T+1) and identical responses come first.
    """

    width: int  # T
    row: Tensor  # [P] the row of each pair
    row_pos: Tensor  # [P] lexicographic position of the row (non-decreasing)
    partner: Tensor  # [P] the partner row
    partner_pos: Tensor  # [P] lexicographic position of the partner
    lcp: Tensor  # [P] exact LCP in tokens, in [0, T−1]; T+1 for identical responses (END included)
    seg_start: Tensor  # [B] (by row) offset of the row's pairs
    size: Tensor  # [B] (by row) group size
    length: Tensor  # [B] L_i


def _keys(tokens: Tensor) -> Tensor:
    """`[B, W]` token ids, W = T rounded up to a multiple of `_BLOCK` (zero columns appended if needed), as
    int32 whenever the ids fit (int64 arithmetic is not vectorised on most CPUs, and half the bytes).

    Positions at or after `L_i` are never masked out: every comparison below caps LCPs at
    `min(L_i, L_j)`, so whatever padding ids a batch holds cannot matter."""
    b, t = tokens.shape
    dtype = torch.int32
    if tokens.dtype == torch.int64 and tokens.numel():
        lo, hi = (int(v) for v in torch.aminmax(tokens))
        if lo < _INT32.min or hi > _INT32.max:
            dtype = torch.int64
    width = -(-t // _BLOCK) * _BLOCK
    if width == t:
        return tokens.to(dtype).contiguous()
    keys = torch.zeros(b, width, dtype=dtype, device=tokens.device)
    keys[:, :t] = tokens
    return keys


def _row_chunks(rows: int, width: int) -> range:
    """Starts of row chunks of about `_CHUNK` elements: `[B,T]` temporaries stay small and cache-resident."""
    return range(0, rows, max(1, _CHUNK // width))


def _hash_coefficients(width: int, dtype: torch.dtype, device: torch.device, attempt: int) -> Tensor:
    """Random odd per-position multipliers of the prefix hash `Σ_{s<ℓ} key[i,s]·c_s` (wrapping arithmetic)."""
    gen = torch.Generator().manual_seed(0x7E3_90 + 7919 * attempt)
    half = 2**30 if dtype == torch.int32 else 2**62
    c = torch.randint(-half, half, (width,), generator=gen, dtype=torch.int64) * 2 + 1
    return c.to(dtype).to(device)


def _first_difference(x: Tensor, y: Tensor, width: int) -> Tensor:
    """First column where rows of x and y differ, `width` where they are equal."""
    ne = x != y
    first = ne.view(torch.uint8).argmax(1, keepdim=True)
    return torch.where(ne.gather(1, first).squeeze(1), first.squeeze(1), width)


def _hash_pair_lcp(keys: Tensor, a: Tensor, b: Tensor, attempt: int) -> Tensor:
    """Raw LCP of token rows a, b (W if equal), before capping at the lengths: a binary search on block
    prefix hashes finds the first block that differs, then that block is compared token by token. A sort
    key only: a hash collision can make it wrong, which the exact verification of the order detects."""
    rows, width = keys.shape
    nb = width // _BLOCK
    coef = _hash_coefficients(width, keys.dtype, keys.device, attempt)[None, :]
    prefix = torch.empty(rows, nb, dtype=keys.dtype, device=keys.device)
    chunks = _row_chunks(rows, width)
    buf = torch.empty(min(rows, chunks.step), width, dtype=keys.dtype, device=keys.device)
    for r0 in chunks:  # a loop over chunks of rows (memory locality), not over tokens
        part = keys[r0 : r0 + chunks.step]
        prod = torch.mul(part, coef, out=buf[: part.shape[0]])
        torch.sum(prod.view(-1, nb, _BLOCK), -1, dtype=keys.dtype, out=prefix[r0 : r0 + chunks.step])
    prefix = prefix.cumsum_(1).view(-1)  # [B·nb]: hash of the blocks up to and including k (wrapping)
    lo = torch.zeros_like(a)  # the first `lo` blocks are (believed) equal
    hi = torch.full_like(a, nb)
    base_a, base_b = a * nb, b * nb
    for _ in range(nb.bit_length()):  # ⌈log2(nb+1)⌉ halvings: a loop over log(T), not over tokens
        mid = (lo + hi + 1) // 2
        at = (mid - 1).clamp(min=0)
        eq = (prefix.index_select(0, base_a + at) == prefix.index_select(0, base_b + at)) | (mid == 0)
        lo = torch.where(eq, mid, lo)
        hi = torch.where(eq, hi, mid - 1)
    blk = lo.clamp(max=nb - 1)
    blocks = keys.view(rows * nb, _BLOCK)
    inside = _first_difference(blocks.index_select(0, base_a + blk), blocks.index_select(0, base_b + blk), _BLOCK)
    return torch.where(lo == nb, width, blk * _BLOCK + inside)


def _exact_pair_lcp(keys: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Raw LCP of token rows a, b (T if equal) by comparing every token: the fallback."""
    t = keys.shape[1]
    out = torch.empty_like(a)
    step = max(1, 2**22 // t)
    for i in range(0, a.numel(), step):  # a loop over chunks of pairs, to bound memory
        out[i : i + step] = _first_difference(keys[a[i : i + step]], keys[b[i : i + step]], t)
    return out


def _compare(keys: Tensor, length: Tensor, a: Tensor, b: Tensor, raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From the raw token LCP of rows a, b: the LCP of the responses (capped at the shorter length), whether
    they are identical, and whether b sorts strictly before a (a shorter response, i.e. END, sorts first)."""
    width = keys.shape[1]
    la, lb = _at(length, a), _at(length, b)
    shorter = torch.minimum(la, lb)
    lcp = torch.minimum(raw, shorter)
    identical = (lcp == shorter) & (la == lb)
    flat = keys.view(-1)
    at = lcp.clamp(max=width - 1)
    b_first = torch.where(lcp < shorter, _at(flat, b * width + at) < _at(flat, a * width + at), lb < la)
    return lcp, identical, b_first


def _adjacent_lcp(keys: Tensor, length: Tensor, order: Tensor, gi: Tensor, t: int) -> Tensor | None:
    """Exact LCP of each response with the previous one in `order` (−1 at group starts, T+1 if identical),
    or None if `order` is not lexicographic within groups (END first)."""
    rows, width = keys.shape
    raw = order.new_empty(max(rows - 1, 0))
    for r0 in _row_chunks(rows - 1, width):  # row chunks: the gathered rows stay small and cache-resident
        ks = keys.index_select(0, order[r0 : r0 + _row_chunks(rows - 1, width).step + 1])
        raw[r0 : r0 + ks.shape[0] - 1] = _first_difference(ks[1:], ks[:-1], width)
    lcp, identical, cur_first = _compare(keys, length, order[:-1], order[1:], raw)
    same = gi[order[1:]] == gi[order[:-1]]
    if bool((same & cur_first).any()):
        return None
    adj = torch.where(identical, t + 1, lcp)
    return torch.cat([adj.new_full((1,), -1), torch.where(same, adj, -1)])


def _range_min(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """`min(x[lo..hi])` (inclusive, lo ≤ hi) for many ranges at once: a sparse table, O(B log G)."""
    span = hi - lo + 1
    levels = [x]
    while (1 << len(levels)) <= int(span.max()):
        prev, step = levels[-1], 1 << (len(levels) - 1)
        nxt = prev.clone()
        nxt[:-step] = torch.minimum(prev[:-step], prev[step:])
        levels.append(nxt)
    table = torch.stack(levels)
    powers = 2 ** torch.arange(len(levels), device=x.device)
    k = torch.searchsorted(powers, span, right=True) - 1
    flat, n = table.view(-1), x.numel()
    return torch.minimum(_at(flat, k * n + lo), _at(flat, k * n + hi - _at(powers, k) + 1))


def _at(x: Tensor, index: Tensor) -> Tensor:
    """`x[index]` for a 1-D x and integer index (`index_select`: no parallel region for small inputs)."""
    return x.index_select(0, index)


def _segments(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For segments of the given lengths laid end to end: the segment of each element and its offset in it."""
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    start = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(owner.numel(), device=counts.device) - _at(start, owner)


def _structure(tokens: Tensor, mask: Tensor, group: Tensor) -> _Structure:
    b, t = mask.shape
    dev = mask.device
    length = last_index(mask) + 1  # L_i: last masked position + 1, 0 for an empty row
    keys = _keys(tokens)
    gi, g = group_index(group)
    size_g = torch.bincount(gi, minlength=g)
    size = _at(size_g, gi)
    end_g = torch.cumsum(size_g, 0)  # each group owns the positions [end_g − size_g, end_g)

    # unordered pairs p < q of positions inside each group's block
    by_group = torch.argsort(gi, stable=True)
    p, k = _segments(_at(end_g, _at(gi, by_group)) - torch.arange(b, device=dev) - 1)
    q = p + 1 + k

    # a lexicographic order inside groups, keyed by a hash LCP and verified exactly (then exact fallback)
    a_row, b_row = _at(by_group, p), _at(by_group, q)
    adj = None
    for attempt in range(_HASH_ATTEMPTS + 1):
        if attempt < _HASH_ATTEMPTS:
            lcp = _hash_pair_lcp(keys, a_row, b_row, attempt)
        else:
            lcp = _exact_pair_lcp(keys, a_row, b_row)
        _, identical, b_first = _compare(keys, length, a_row, b_row, lcp)
        b_first |= identical & (b_row < a_row)  # identical responses: by row index
        rank = torch.zeros(b, dtype=torch.int64, device=dev)
        rank.index_add_(0, a_row, b_first.long()).index_add_(0, b_row, (~b_first).long())
        order = torch.argsort(gi * b + rank, stable=True)
        adj = _adjacent_lcp(keys, length, order, gi, t)
        if adj is not None:
            break
    if adj is None:  # pragma: no cover - the exact comparison always yields a lexicographic order
        raise RuntimeError("prefix_tree: internal error, the exact lexicographic sort failed verification")

    # every ordered pair (p, q) of the same group, p-major; exact LCP = min of the adjacent LCPs in between
    size_lex = _at(size, order)
    seg_pos = torch.cumsum(size_lex, 0) - size_lex
    block = _at(end_g - size_g, _at(gi, order))  # first position of each position's group
    p, k = _segments(size_lex)
    q = _at(block, p) + k
    self_pair = p == q
    lo = torch.where(self_pair, p, torch.minimum(p, q) + 1)
    hi = torch.where(self_pair, p, torch.maximum(p, q))
    lcp = torch.where(self_pair, t + 1, _range_min(adj, lo, hi))
    # each row's partners, deepest LCP first
    depth_key = t + 1 - lcp
    if bool((size_lex == size_lex[0]).all()):  # equal-sized groups: one small sort per row
        g0 = int(size_lex[0])
        perm = (torch.argsort(depth_key.view(b, g0), dim=1) + (torch.arange(b, device=dev) * g0)[:, None]).view(-1)
    else:
        perm = torch.argsort(p * (t + 2) + depth_key)
    q = _at(q, perm)
    seg_start = torch.empty_like(size).index_copy_(0, order, seg_pos)
    return _Structure(width=t, row=_at(order, p), row_pos=p, partner=_at(order, q), partner_pos=q, lcp=_at(lcp, perm),
                      seg_start=seg_start, size=size, length=length)


# ------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Levels:
    mean: Tensor  # [P] float64: mean score over the row's pairs up to this one (the deepest-first prefix)
    jump: Tensor  # [P] float64: V(deeper node) − V(this level's node) at the last pair of each LCP level
    is_level_end: Tensor  # [P] bool
    leaf_count: Tensor  # [B]
    leaf_value: Tensor  # [B] float64


def _levels(s: _Structure, score: Tensor) -> _Levels:
    """Per pair: the running mean score of the row's partners, deepest first, and the value jump at each
    distinct LCP level `ℓ` of the row: `V(S_{ℓ+1}) − V(S_ℓ)` with `S_ℓ = {j: lcp_ij ≥ ℓ}`."""
    n = s.lcp.numel()
    dev = s.lcp.device
    idx = torch.arange(n, device=dev)
    seg = _at(s.seg_start, s.row)
    score = score.double()
    own = _at(score, s.row)
    x = _at(score, s.partner) - own  # centred on the row's own score: exact 0s for equal-score groups
    csum = torch.cumsum(x, 0)
    mean = (csum - _at(csum - x, seg)) / (idx - seg + 1) + own
    b = s.length.numel()

    new_level = torch.ones(n, dtype=torch.bool, device=dev)
    new_level[1:] = s.lcp[1:] != s.lcp[:-1]
    new_level |= idx == seg
    is_level_end = torch.roll(new_level, -1)
    is_level_end[-1] = True
    level_start = torch.cummax(torch.where(new_level, idx, 0), 0).values
    deeper = _at(mean, (level_start - 1).clamp(min=0))
    identical = s.lcp > s.width
    jump = torch.where(is_level_end & ~identical, deeper - mean, 0.0)

    leaf_count = torch.zeros(b, dtype=torch.int64, device=dev).index_add_(0, s.row, identical.long())
    leaf_value = _at(mean, s.seg_start + leaf_count - 1)
    return _Levels(mean=mean, jump=jump, is_level_end=is_level_end,
                   leaf_count=leaf_count, leaf_value=leaf_value)


def _fork_counts(s: _Structure) -> Tensor:
    """`n [B,T]` int32: partners whose LCP with row i is exactly t, i.e. that leave i's path at `s_{i,t}`
    (a different token at t, or END there). Fork levels `L_i` (END vs longer) land after the last token."""
    b, t = s.length.numel(), s.width
    n = torch.zeros(b, t, dtype=torch.int32, device=s.lcp.device)
    fork = s.lcp < t
    return n.index_put_((s.row[fork], s.lcp[fork]), torch.ones_like(s.lcp[fork], dtype=torch.int32),
                        accumulate=True)


def _delta(s: _Structure, lv: _Levels, mask: Tensor, scale: float, out: Tensor) -> Tensor:
    """Scatter `scale · jump` of every branching level `ℓ` of row i onto token `min(ℓ, L_i − 1)` of `out`.

    Level ℓ < L_i − 1 is a fork at `s_{i,ℓ}` credited to token ℓ; levels `L_i − 1` (fork at the last token's
    node) and `L_i` (END vs a longer response at `s_{i,L_i}`) both land on the last token.
    """
    last = _at(s.length, s.row) - 1
    pos = torch.minimum(s.lcp, last)
    take = lv.is_level_end & (s.lcp <= s.width) & (last >= 0)
    flat = (s.row * s.width + pos)[take]
    keep = mask.reshape(-1).index_select(0, flat)  # no credit inside mask holes
    val = (lv.jump[take] * scale).to(out.dtype)[keep]
    target = out if out.is_contiguous() else out.contiguous()
    target.view(-1).index_add_(0, flat[keep], val)
    return out if target is out else out.copy_(target)
