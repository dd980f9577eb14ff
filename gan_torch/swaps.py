"""Synthetic swap events from generated bars: the one owner of the synthetic-swaps CSV.

Two decoders turn each generated bar (its ``swap_count`` k, log return r, ETH volume v,
realized vol) into k swap events; both end in the same emitter, so every event is exactly
what the pool emits (``chain.amm.swap_exact_input`` from the previous event's sqrtPriceX96):

- ``bootstrap`` (default): a conditional bootstrap of real swap sequences. The bank is every
  bar of the GAN's *training* period of the real swaps (``swaps.parquet``); a generated bar is
  matched to one of the ``MATCH_NEAREST`` real bars with the same swap count (else the nearest
  count) closest in (r, ln realized vol, ln1p volume), and its k consecutive real swaps are
  replayed: their per-swap price moves, sizes, time offsets inside the bar (so same-block
  bursts), directions. The moves are then rescaled (up-moves by one factor, down-moves by
  another, keeping every direction and the total variation) so they sum to the generated r,
  and the sizes by one factor so they sum to v. Each swap's liquidity is the one that makes
  its real size produce its real price impact (size = L * |delta 1/sqrtP|), clipped to
  ``LIQ_CLIP`` x the bank's median liquidity: the direction/size/impact link of the real swap.
- ``uniform`` (the decoder before issue 18, kept as the measured "before" and for runs with
  no real swaps): random moves with the bar's total variation, one constant liquidity, swaps
  evenly spaced in time.

The CSV is the collector schema + ``log_index`` + ``sequence``: rows with the same
``sequence`` form one continuous price path (each event starts from the previous one's
sqrtPriceX96); a new sequence starts at an unrelated anchor price, so a consumer must never
read the step between two sequences as a price move. ``chain.csvio.read_swaps_csv`` ignores
the extra column.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import numpy as np

from apeagent.errors import UserError
from chain.csvio import EXPORT_COLUMNS
from chain.pool import ETH_USDC_POOL_ID, SIMULATED

SWAP_COLUMNS = (*EXPORT_COLUMNS, "sequence")
DECODERS = ("bootstrap", "uniform")
MATCH_NEAREST = 4  # pick uniformly among this many nearest real bars (bootstrap diversity)
LIQ_CLIP = (0.1, 10.0)  # per-swap liquidity within these multiples of the bank's median
# the columns of chain's swaps.parquet the decoder and the validation read
SWAPS_NEEDED = ("timestamp", "block_number", "log_return", "abs_eth", "liquidity", "price")


# ----------------------------------------------------------------- real swaps


def read_swaps(path: str | Path) -> dict[str, np.ndarray]:
    """chain's ``swaps.parquet`` (chain order), checked: columns, finite values, time order."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"real swaps file not found: {path} (written by `ape-chain process`)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    missing = [c for c in SWAPS_NEEDED if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)} (see docs/chain.md)")
    sw = {c: table.column(c).to_numpy() for c in SWAPS_NEEDED}
    if len(sw["timestamp"]) < 2:
        raise UserError(f"{path}: fewer than 2 swaps")
    for c in ("log_return", "abs_eth", "liquidity", "price"):
        sw[c] = sw[c].astype(np.float64)
        if not np.all(np.isfinite(sw[c])):
            raise UserError(f"{path}: column {c} has non-finite values")
    if np.any(sw["price"] <= 0) or np.any(sw["liquidity"] <= 0) or np.any(sw["abs_eth"] < 0):
        raise UserError(f"{path}: non-positive price or liquidity, or a negative size")
    sw["timestamp"] = sw["timestamp"].astype(np.int64)
    if np.any(np.diff(sw["timestamp"]) < 0):
        raise UserError(f"{path}: timestamps decrease along chain order")
    return sw


def bar_of(sw: dict[str, np.ndarray], bar_seconds: int) -> np.ndarray:
    """Index of each swap's bar in the bars.parquet made from the same swaps (chain.features:
    the first bar is the first swap's)."""
    ts = sw["timestamp"]
    return ts // bar_seconds - ts[0] // bar_seconds


def series(sw: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-swap series of real swaps (one sequence), for the swap-level validation."""
    m = np.ones(len(sw["timestamp"]), bool) if mask is None else np.asarray(mask, bool)
    idx = np.flatnonzero(m)
    idx = idx[idx > 0]  # the very first swap has no previous price
    dt = np.diff(sw["timestamp"]).astype(np.float64)
    return {
        "log_return": sw["log_return"][idx],
        "size": sw["abs_eth"][idx],
        "dt": dt[idx - 1],
        "sequence": np.zeros(len(idx), np.int64),
    }


def rows_series(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per-swap series of decoded events: a swap's return and gap are from the previous event
    of its own sequence (the first event of a sequence has neither and is left out)."""
    from chain.amm import price_from_sqrt_price_x96

    seq = np.array([r["sequence"] for r in rows], np.int64)
    price = np.array([price_from_sqrt_price_x96(r["sqrt_price_x96"]) for r in rows])
    ts = np.array([r["timestamp"] for r in rows], np.float64)
    size = np.array([abs(r["amount0"]) / 1e18 for r in rows])
    keep = np.zeros(len(rows), bool)
    keep[1:] = seq[1:] == seq[:-1]
    r = np.zeros(len(rows))
    r[1:] = np.log(price[1:] / price[:-1])
    dt = np.zeros(len(rows))
    dt[1:] = np.diff(ts)
    return {"log_return": r[keep], "size": size[keep], "dt": dt[keep], "sequence": seq[keep]}


def swap_bank(
    sw: dict[str, np.ndarray],
    bar_seconds: int,
    n_train_bars: int,
    window: dict | None = None,
) -> dict:
    """Real swap sequences of the bars before ``n_train_bars`` (the GAN's training period),
    grouped by bar, with each bar's matching key. ``window`` (``window_bars``, ``stride``,
    ``min_active_frac``): keep only the bars of the training windows, the bars the GAN learnt
    (``data.window_starts``: on the shared CSV this drops the launch week's 23% moves)."""
    from gan_torch.data import window_starts

    b = bar_of(sw, bar_seconds)
    in_bank = b < n_train_bars
    if window is not None:
        w = int(window["window_bars"])
        active = np.bincount(b, minlength=n_train_bars)[:n_train_bars] > 0
        starts = window_starts(
            active, 0, n_train_bars, w, int(window["stride"]), window["min_active_frac"], w
        )
        keep = np.zeros(n_train_bars, bool)
        for st in starts:
            keep[st : st + w] = True
        in_bank &= keep[np.minimum(b, n_train_bars - 1)]
    idx = np.flatnonzero(in_bank)
    idx = idx[idx > 0]
    if len(idx) < 2:
        raise UserError(
            f"the real swaps hold {len(idx)} swaps in the training period: nothing to bootstrap"
        )
    bars, first = np.unique(b[idx], return_index=True)
    count = np.diff(np.append(first, len(idx)))
    r = sw["log_return"][idx]
    size = sw["abs_eth"][idx]
    bar_r = np.add.reduceat(r, first)
    rv = np.sqrt(np.add.reduceat(r * r, first))
    vol = np.add.reduceat(size, first)
    t0 = sw["timestamp"][0] // bar_seconds * bar_seconds
    return {
        "r": r,
        "size": size,
        "liquidity": sw["liquidity"][idx],
        "timestamp": sw["timestamp"][idx],
        "bar_start": t0 + bars * bar_seconds,
        "first": first,
        "count": count,
        "key": np.stack([bar_r, np.log(rv + 1e-9), np.log1p(vol)], 1),
        "key_scale": np.maximum(
            np.subtract(*np.percentile(np.stack([bar_r, np.log(rv + 1e-9), np.log1p(vol)], 1),
                                       [75, 25], axis=0)) / 1.349,
            1e-9,
        ),
        "median_liquidity": float(np.median(sw["liquidity"][idx])),
        "bar_seconds": int(bar_seconds),
    }


def bank_from_swaps(path: str | Path, ckpt: dict) -> dict:
    """The bootstrap bank for a checkpoint: the bars of its training windows, from the swaps
    it was trained on."""
    ckpt_data, window = ckpt["data"], ckpt["config"]
    bounds = ckpt_data.get("bounds") or {}
    if "train" not in bounds:
        raise UserError("the checkpoint has no training bounds: cannot cut its training swaps")
    return swap_bank(
        read_swaps(path), int(ckpt_data["bar_seconds"]), int(bounds["train"][1]), window
    )


# ----------------------------------------------------------------- per-bar plans


def _match(bank: dict, k: int, key: np.ndarray, rng: np.random.Generator) -> int:
    counts = bank["count"]
    cand = np.flatnonzero(counts == k)
    if len(cand) == 0:
        gap = np.abs(counts - k)
        cand = np.flatnonzero(gap == gap.min())
    d = np.sum(((bank["key"][cand] - key) / bank["key_scale"]) ** 2, axis=1)
    best = cand[np.argsort(d, kind="stable")[:MATCH_NEAREST]]
    return int(best[rng.integers(len(best))])


def _rescale_moves(r: np.ndarray, target: float) -> np.ndarray:
    """Per-swap log returns summing to ``target``: up- and down-moves scaled by one factor
    each, so every direction and the total variation (at least |target|) are kept."""
    up, dn = r[r > 0].sum(), -r[r < 0].sum()
    tv = max(up + dn, abs(target))
    if up > 0 and dn > 0 and tv > 0:
        a, b = (tv + target) / (2 * up), (tv - target) / (2 * dn)
        return np.where(r > 0, r * a, r * b)
    w = np.abs(r) / np.abs(r).sum() if np.abs(r).sum() > 0 else np.full(len(r), 1 / len(r))
    return w * target


def _bootstrap_plan(bank, k, r_bar, vol_bar, rv_bar, rng, sp0, fee_pips):
    """(log sqrtP targets, liquidities, time offsets) of k swaps for one generated bar."""
    key = np.array([r_bar, math.log(rv_bar + 1e-9), math.log1p(vol_bar)])
    m = _match(bank, k, key, rng)
    start = min(int(bank["first"][m]), len(bank["r"]) - k)
    sl = slice(max(start, 0), max(start, 0) + k)
    r = bank["r"][sl]
    if len(r) < k:  # a bank smaller than one bar: repeat it
        reps = np.arange(k) % len(bank["r"])
        r, size, liq, ts = (bank[c][reps] for c in ("r", "size", "liquidity", "timestamp"))
        ts = np.sort(ts)
    else:
        size, liq, ts = bank["size"][sl], bank["liquidity"][sl], bank["timestamp"][sl]
    off = (ts - bank["bar_start"][m]).astype(np.float64)  # from the matched bar's start
    off -= min(off.min(), 0.0)  # a run that starts before it (the end of the bank)
    bs = bank["bar_seconds"]
    if off.max() >= bs:  # a run that spills into the next bars: squeeze it into this one
        off = off * (bs - 1) / off.max()
    off = np.floor(np.sort(off)).astype(np.int64)
    moves = _rescale_moves(r, r_bar)
    ls = math.log(sp0) + np.cumsum(moves) / 2  # ln sqrtP after each swap
    total = size.sum()
    sizes = size * (vol_bar / total) if total > 0 else np.full(k, vol_bar / k)
    # liquidity whose price impact for this move is the (scaled) real size: ETH = L*|d(1/sqrtP)|
    prev = np.concatenate([[math.log(sp0)], ls[:-1]])
    dinv = np.abs(np.exp(-ls) - np.exp(-prev)) * 2**96  # |delta 1/sqrtP| in raw units per Q96
    eth_wei = sizes * 1e18 * np.where(moves < 0, 1 - fee_pips / 1e6, 1.0)
    med = bank["median_liquidity"]
    lo, hi = LIQ_CLIP[0] * med, LIQ_CLIP[1] * med
    with np.errstate(divide="ignore", invalid="ignore"):
        liq = np.where(dinv > 0, eth_wei / dinv, liq)
    liq = np.clip(np.nan_to_num(liq, nan=med, posinf=hi), lo, hi)
    # one factor for the bar, so its ETH volume is the generated one despite the clip
    got = float(np.sum(liq * dinv / np.where(moves < 0, 1 - fee_pips / 1e6, 1.0)))
    if got > 0 and vol_bar > 0:
        liq = liq * (vol_bar * 1e18 / got)
    return ls, liq, off


def _step_targets(rng: random.Random, d_total: float, variation: float, k: int) -> list[float]:
    """k moves (in 1/sqrtP units) summing to d_total with total variation ~= variation."""
    if k == 1:
        return [d_total]
    variation = max(variation, abs(d_total))
    up, down = (variation + d_total) / 2, (variation - d_total) / 2
    k_up = max(1, min(k - 1, round(k * up / variation))) if variation > 0 else k // 2
    w_up = [rng.random() + 1e-3 for _ in range(k_up)]
    w_dn = [rng.random() + 1e-3 for _ in range(k - k_up)]
    moves = [up * w / sum(w_up) for w in w_up] + [-down * w / sum(w_dn) for w in w_dn]
    rng.shuffle(moves)
    return moves


def _uniform_plan(k, vol_bar, sp0, target_sp, liquidity, rng: random.Random, bar_seconds):
    """The pre-issue-18 decoder: random moves in 1/sqrtP with turnover ~ the bar's volume
    (capped at a 10% excursion), one liquidity, evenly spaced swaps."""
    q96 = float(2**96)
    inv0, inv1 = q96 / sp0, q96 / target_sp
    turnover = min(vol_bar * 1e18 / liquidity, abs(inv1 - inv0) + 0.1 * inv0)
    cum = inv0 + np.cumsum(_step_targets(rng, inv1 - inv0, turnover, k))
    ls = np.log(q96 / np.maximum(cum, 1e-30))
    off = (bar_seconds * (np.arange(k) + 0.5) / k).astype(np.int64)
    return ls, np.full(k, float(liquidity)), off


# ----------------------------------------------------------------- events


def bars_to_swaps(
    cols: dict[str, np.ndarray],
    decoder: str = "bootstrap",
    bank: dict | None = None,
    liquidity: int = 10**16,
    sequence_of: dict[int, int] | None = None,
    start_time: int = 1_738_816_800,
    bar_seconds: int = 300,
    start_block: int = 26_013_675,
    fee_pips: int = 500,
    seed: int = 0,
    block_seconds: int = 2,
) -> list[dict]:
    """Swap events (``SWAP_COLUMNS``) whose bars are the windows' bars: per bar exactly
    ``swap_count`` swaps, the last one landing on the bar's close; ETH volume = the bar's
    (bootstrap: up to the liquidity clip and integer rounding).

    ``sequence_of`` maps window_id -> sequence (default: one sequence per window). Inside a
    sequence the pool price carries over from window to window (the windows must then be
    chained: each window starts at the previous one's close, see ``generate --continuous``);
    bars follow each other in time, over all windows. Block numbers are
    ``start_block + (timestamp - start_time) // block_seconds``; ``log_index`` counts within
    a block.
    """
    from chain.amm import sqrt_price_x96_from_price

    if decoder not in DECODERS:
        raise UserError(f"swap decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "bootstrap" and bank is None:
        raise UserError("the bootstrap swap decoder needs the real swaps (swaps.parquet)")
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    ids = cols["window_id"]
    order = np.lexsort((cols["step"], ids))
    rows: list[dict] = []
    bar_no = 0
    prev_seq, sp = None, 0
    last_block, log_index = -1, 0
    for w in np.unique(ids):
        sel = order[ids[order] == w]
        seq = int(sequence_of[int(w)]) if sequence_of is not None else int(w)
        close, r = cols["close"][sel], cols["log_return"][sel]
        if seq != prev_seq:
            sp = sqrt_price_x96_from_price(float(close[0] * math.exp(-r[0])))
            prev_seq = seq
        for j, i in enumerate(sel):
            t_bar = start_time + bar_no * bar_seconds
            bar_no += 1
            k = int(cols["swap_count"][i])
            if k <= 0:
                continue
            target = sqrt_price_x96_from_price(float(close[j]))
            vol = float(cols["volume_eth"][i])
            if decoder == "bootstrap":
                rv = float(cols["realized_vol"][i])
                ls, liqs, off = _bootstrap_plan(bank, k, float(r[j]), vol, rv, rng, sp, fee_pips)
            else:
                ls, liqs, off = _uniform_plan(k, vol, sp, target, liquidity, prng, bar_seconds)
            for m in range(k):
                tgt = target if m == k - 1 else int(math.exp(ls[m]))
                res, liq = _emit(sp, tgt, int(liqs[m]), fee_pips, prng)
                sp = res.sqrt_price_x96
                ts = t_bar + int(off[m])
                blk = start_block + (ts - start_time) // block_seconds
                log_index = log_index + 1 if blk == last_block else 0
                last_block = blk
                h = hashlib.sha256(f"ape-gan:{seed}:{w}:{j}:{m}".encode()).hexdigest()
                rows.append(
                    {
                        "block_number": blk,
                        "transaction_hash": h,
                        "pool_id": ETH_USDC_POOL_ID[2:],
                        "router_address": SIMULATED,
                        "original_sender": SIMULATED,
                        "is_contract_sender": False,
                        "amount0": res.amount0,
                        "amount1": res.amount1,
                        "sqrt_price_x96": res.sqrt_price_x96,
                        "liquidity": liq,
                        "tick": res.tick,
                        "fee": fee_pips,
                        "timestamp": ts,
                        "log_index": log_index,
                        "sequence": seq,
                    }
                )
    return rows


def _emit(sp: int, tgt: int, liquidity: int, fee_pips: int, rng: random.Random):
    """The exact-input swap that moves the pool from ``sp`` to ``tgt`` (to the wei)."""
    from chain.amm import get_amount0_delta, get_amount1_delta, swap_exact_input

    liquidity = max(int(liquidity), 1)
    if tgt == sp:  # no price move: a minimal swap in a random direction
        tgt = sp + (1 if rng.random() < 0.5 else -1)
    zfo = tgt < sp  # token0 (ETH) in pushes the price down
    need = (
        get_amount0_delta(tgt, sp, liquidity, True)
        if zfo
        else get_amount1_delta(sp, tgt, liquidity, True)
    )
    amount_in = (need * 1_000_000) // (1_000_000 - fee_pips) + 2
    res = swap_exact_input(sp, liquidity, amount_in, zfo, fee_pips, sqrt_price_limit_x96=tgt)
    # replay the consumed input as a plain exact-input swap: the event is then exactly what
    # the pool emits for that input (no hidden price limit)
    return swap_exact_input(sp, liquidity, res.amount_in, zfo, fee_pips), liquidity


def write_swaps_csv(path, rows: list[dict]) -> None:
    import csv

    from apeagent.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SWAP_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: str(v) for k, v in row.items()})
