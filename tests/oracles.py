"""Naive loop oracles for sinklens.ops, written from SPEC sections 1-5, not from the library.

Each oracle turns its tensors into Python lists and loops over batch, head, query
and key in float64, so it shares neither the vectorisation nor the fp32 rounding
of the code under test. Results come back as float64 tensors (scores for
`mask_keys` keep their dtype, since that op is compared bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

RMS_EPS = 1e-6  # SPEC 1: RMS(x) = sqrt(mean(x^2) + eps)
RELEASED_EPS_PER_IMAGE_TOKEN = 1e-6  # SPEC 5.1 and 5.4


def _f64(values: list) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- SPEC 1: sink dimensions ---------------------------------------------------------------


def rms(x: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in x) / len(x) + RMS_EPS)


def dimension_magnitudes(resid: Tensor) -> Tensor:
    """|x_d| / RMS(x) for every batch row, position and dimension."""
    return _f64([[[abs(v) / rms(x) for v in x] for x in positions] for positions in resid.tolist()])


def sink_dimension_value(resid: Tensor, dims: Sequence[int]) -> Tensor:
    """phi(x) = max over the sink dimensions of |x_d| / RMS(x)."""
    return _f64([[max(abs(x[d]) for d in dims) / rms(x) for x in positions] for positions in resid.tolist()])


# --- SPEC 2 and 5: image attention, visual non-sink ratio, visual-sink share, image-centric heads


def image_attention_and_ratio(rows: Tensor, image: Tensor, sink: Tensor) -> tuple[Tensor, Tensor]:
    """(r, s) per (batch, head, query), the paper's: s = sum over I_vis, r = sum over I_vis minus S / s (0 if s = 0)."""
    rows_l, image_l, sink_l = rows.tolist(), image.tolist(), sink.tolist()
    s_out, r_out = [], []
    for b, heads in enumerate(rows_l):
        s_heads, r_heads = [], []
        for queries in heads:
            s_queries, r_queries = [], []
            for row in queries:
                s = sum(a for j, a in enumerate(row) if image_l[b][j])
                nonsink = sum(a for j, a in enumerate(row) if image_l[b][j] and not sink_l[b][j])
                s_queries.append(s)
                r_queries.append(nonsink / s if s > 0 else 0.0)
            s_heads.append(s_queries)
            r_heads.append(r_queries)
        s_out.append(s_heads)
        r_out.append(r_heads)
    return _f64(r_out), _f64(s_out)


def released_sink_share(row: list[float], image: list[bool], sink: list[bool]) -> float:
    """The authors' `HeadFork` share of one row: visual-sink mass over the image attention, 1e-6 added per image key.

    Written as their code writes it, `sum(attn[vis_sinks]) / sum(attn[image] + 1e-6)`
    (SPEC 5.1): the numerator is the mass on the visual sinks themselves, never
    1 minus the non-sink ratio.
    """
    visual_sinks = sum(a for a, i, k in zip(row, image, sink, strict=True) if i and k)
    denominator = sum(a + RELEASED_EPS_PER_IMAGE_TOKEN for a, i in zip(row, image, strict=True) if i)
    return visual_sinks / denominator if denominator > 0 else 0.0


def image_attention_and_sink_share(rows: Tensor, image: Tensor, sink: Tensor) -> tuple[Tensor, Tensor]:
    """(q, s) per (batch, head, query), the released code's: q = `released_sink_share`, s = sum over I_vis."""
    image_l, sink_l = image.tolist(), sink.tolist()
    q_out = [[[released_sink_share(row, image_l[b], sink_l[b]) for row in queries] for queries in heads]
             for b, heads in enumerate(rows.tolist())]  # fmt: skip
    s_out = [[[sum(a for a, i in zip(row, image_l[b], strict=True) if i) for row in queries] for queries in heads]
             for b, heads in enumerate(rows.tolist())]  # fmt: skip
    return _f64(q_out), _f64(s_out)


def selection_share(rows: Tensor, image: Tensor, sink: Tensor, *, convention: str) -> tuple[Tensor, Tensor]:
    """(the share rho is compared with, s): r for the paper, q for the released code."""
    if convention == "released":
        return image_attention_and_sink_share(rows, image, sink)
    return image_attention_and_ratio(rows, image, sink)


def is_image_centric(share: float, s: float, *, rho: float, summ: float, convention: str) -> bool:
    """Paper (SPEC 2): s >= summ and r >= rho. Released (SPEC 5.1, `HeadFork`): s >= summ and q <= rho."""
    if s < summ:  # the head is skipped for this query
        return False
    return share <= rho if convention == "released" else share >= rho


def threshold_distance(share: float, s: float, *, rho: float, summ: float) -> float:
    """How close s and the share (r or q) come to summ and rho; fp32 may decide otherwise below ~1e-6.

    A distance of exactly 0 does not count: it only happens where both the oracle
    and the library compute the quantity exactly (s = 0, a share of 0 or 1).
    """
    distances = [d for d in (abs(s - summ), abs(share - rho)) if d > 0.0]
    return min(distances, default=math.inf)


def image_centric(share: Tensor, image_attention: Tensor, *, rho: float, summ: float, convention: str) -> Tensor:
    flat = [
        is_image_centric(q, s, rho=rho, summ=summ, convention=convention)
        for q, s in zip(share.flatten().tolist(), image_attention.flatten().tolist(), strict=True)
    ]
    return torch.tensor(flat, dtype=torch.bool).reshape(share.shape)


# --- SPEC 3: redistribution ---------------------------------------------------------------


def redistribute_row(row: list[float], sink: list[bool], target: list[bool], keep: float) -> list[float]:
    """Sinks keep `keep` of their attention; the rest goes to the targets in proportion to theirs."""
    target_mass = sum(a for a, t in zip(row, target, strict=True) if t)
    if target_mass == 0.0:  # nowhere to put the budget in proportion
        return list(row)
    budget = (1.0 - keep) * sum(a for a, s in zip(row, sink, strict=True) if s)
    new_row = []
    for a, is_sink, is_target in zip(row, sink, target, strict=True):
        if is_sink:
            new_row.append(keep * a)
        elif is_target:
            new_row.append(a + budget * a / target_mass)
        else:
            new_row.append(a)
    return new_row


def redistribute(rows: Tensor, sink: Tensor, target: Tensor, selected: Tensor, *, keep: float) -> Tensor:
    rows_l, sink_l, target_l, selected_l = rows.tolist(), sink.tolist(), target.tolist(), selected.tolist()
    out = []
    for b, heads in enumerate(rows_l):
        out.append(
            [
                [
                    redistribute_row(row, sink_l[b], target_l[b], keep) if selected_l[b][h][i] else list(row)
                    for i, row in enumerate(queries)
                ]
                for h, queries in enumerate(heads)
            ]
        )
    return _f64(out)


# --- SPEC 2 + 3 + 5: the whole VAR edit of attention rows ----------------------------------


def _var_decisions(
    rows: Tensor, image: Tensor, sink: Tensor, queries: Tensor, *, rho: float, summ: float, convention: str
) -> tuple[list, float]:
    """Per (batch, head, query): is the row edited; and the closest approach to a threshold."""
    released = convention == "released"
    share, image_attention = selection_share(rows, image, sink, convention=convention)
    share_l, s_l = share.tolist(), image_attention.tolist()
    image_l, sink_l, queries_l = image.tolist(), sink.tolist(), queries.tolist()
    closest = math.inf
    decisions = []
    for b in range(rows.shape[0]):
        has_visual_sink = any(i and s for i, s in zip(image_l[b], sink_l[b], strict=True))
        per_head = []
        for h in range(rows.shape[1]):
            per_query = []
            for i in range(rows.shape[2]):
                edited = False
                # SPEC 5.3: the released code selects nothing in a row without a visual sink
                if queries_l[b][i] and (has_visual_sink or not released):
                    q, s = share_l[b][h][i], s_l[b][h][i]
                    closest = min(closest, threshold_distance(q, s, rho=rho, summ=summ))
                    edited = is_image_centric(q, s, rho=rho, summ=summ, convention=convention)
                per_query.append(edited)
            per_head.append(per_query)
        decisions.append(per_head)
    return decisions, closest


def var_selection(
    rows: Tensor, image: Tensor, sink: Tensor, queries: Tensor, *, rho: float, summ: float, convention: str
) -> tuple[Tensor, float]:
    """(which rows VAR selects, the closest approach to a threshold: below ~1e-6 fp32 may decide otherwise)."""
    decisions, closest = _var_decisions(rows, image, sink, queries, rho=rho, summ=summ, convention=convention)
    return torch.tensor(decisions, dtype=torch.bool).reshape(rows.shape[:3]), closest


def var_rows(
    rows: Tensor,
    image: Tensor,
    sink: Tensor,
    queries: Tensor,
    *,
    p: float,
    rho: float,
    summ: float,
    convention: str,
) -> Tensor:
    """VAR on attention rows `[batch, head, query, key]`; `sink` is S^l (visual and text sinks).

    Paper: move p of the sink attention. Released (SPEC 5.2): move 1 - p.
    """
    decisions, _ = _var_decisions(rows, image, sink, queries, rho=rho, summ=summ, convention=convention)
    moved = 1.0 - p if convention == "released" else p
    rows_l, image_l, sink_l = rows.tolist(), image.tolist(), sink.tolist()
    out = []
    for b, heads in enumerate(rows_l):
        visual_nonsink = [i and not s for i, s in zip(image_l[b], sink_l[b], strict=True)]
        out_heads = []
        for h, queries_rows in enumerate(heads):
            out_queries = []
            for i, row in enumerate(queries_rows):
                if not decisions[b][h][i]:
                    out_queries.append(list(row))
                    continue
                sink_total = sum(a for a, s in zip(row, sink_l[b], strict=True) if s)
                omega = moved * sink_total
                nonsink_total = sum(a for a, t in zip(row, visual_nonsink, strict=True) if t)
                if nonsink_total == 0.0:
                    out_queries.append(list(row))
                    continue
                new_row = []
                for j, a in enumerate(row):
                    if sink_l[b][j]:
                        new_row.append((1.0 - moved) * a)
                    elif visual_nonsink[j]:
                        new_row.append(a + omega * a / nonsink_total)
                    else:
                        new_row.append(a)
                out_queries.append(new_row)
            out_heads.append(out_queries)
        out.append(out_heads)
    return _f64(out)


# --- SPEC 4: key masking and attention contribution ----------------------------------------


def mask_keys(scores: Tensor, keys: Tensor, queries: Tensor) -> Tensor:
    """-inf on the chosen keys for the chosen queries, unless the query would see no key at all."""
    floor = torch.finfo(scores.dtype).min / 2  # below this a key is hidden (causal / padding)
    out = scores.tolist()
    keys_l, queries_l = keys.tolist(), queries.tolist()
    for b, heads in enumerate(out):
        for queries_rows in heads:
            for i, row in enumerate(queries_rows):
                if not queries_l[b][i]:
                    continue
                still_visible = any(score > floor and not keys_l[b][j] for j, score in enumerate(row))
                if not still_visible:
                    continue  # exempt
                for j in range(len(row)):
                    if keys_l[b][j]:
                        row[j] = -math.inf
    return torch.tensor(out, dtype=scores.dtype)


def head_output(value: Tensor, w_o: Tensor, b: int, h: int, j: int, n_heads: int) -> list[float]:
    """W_O^h v_j^h: query head h reads key/value head h // (n_heads / n_kv), as HF repeat_kv does."""
    n_kv, d_head = value.shape[1], value.shape[-1]
    kv = h // (n_heads // n_kv)
    v = value[b, kv, j].tolist()
    w = w_o.tolist()
    return [sum(w[m][h * d_head + e] * v[e] for e in range(d_head)) for m in range(len(w))]


def head_value_outputs(value: Tensor, w_o: Tensor, n_heads: int) -> Tensor:
    batch, _, n_keys, _ = value.shape
    return _f64(
        [
            [[head_output(value, w_o, b, h, j, n_heads) for j in range(n_keys)] for h in range(n_heads)]
            for b in range(batch)
        ]
    )


def attention_contribution(pattern: Tensor, value: Tensor, w_o: Tensor) -> Tensor:
    """c_ij = || a_ij W_O^h v_j^h ||, one (batch, head, query, key) at a time."""
    batch, n_heads, n_queries, n_keys = pattern.shape
    out = torch.zeros(pattern.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(n_heads):
            for i in range(n_queries):
                for j in range(n_keys):
                    a = pattern[b, h, i, j].item()
                    vector = [a * o for o in head_output(value, w_o, b, h, j, n_heads)]
                    out[b, h, i, j] = math.sqrt(sum(c * c for c in vector))
    return out
