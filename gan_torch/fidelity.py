"""Fidelity of synthetic windows against held-out real windows, with baselines and a floor.

All metrics are on returns and volume features, never on price levels (a straight-line price
path has a perfect price-level autocorrelation and is the worst possible market).

Sources compared against the held-out real windows (the last ``holdout_frac`` of the swaps):
``gan``, ``gbm`` (geometric Brownian motion, sigma from the MAD of real training returns;
volumes drawn independently from the real marginal), ``bootstrap`` (block bootstrap of real
training bars, all features together) and ``real_train`` (real windows of the training
period: the real-vs-real floor no generator can be expected to beat).

Grades (applied to each source; all conditions of a row must hold):

============  =====================  ===============  ===================
grade         discriminative score   mean KS stat     ACF(|r|) error
============  =====================  ===============  ===================
EXCELLENT     <= 0.10                <= 0.10          <= 0.05
GOOD          <= 0.20                <= 0.20          <= 0.10
FAIR          <= 0.35                <= 0.35          any
POOR          otherwise
============  =====================  ===============  ===================
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gan_torch.data import FEATURES

LAGS = 10
GRADES = (
    ("EXCELLENT", 0.10, 0.10, 0.05),
    ("GOOD", 0.20, 0.20, 0.10),
    ("FAIR", 0.35, 0.35, math.inf),
)


# ----------------------------------------------------------------- statistics


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(a) == 0 or len(b) == 0:
        return 1.0, 0.0
    grid = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, "right") / len(a)
                - np.searchsorted(b, grid, "right") / len(b)
            )
        )
    )
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, p)) if lam > 0 else 1.0)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical distributions: integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.sort(np.concatenate([a, b]))
    dx = np.diff(grid)
    fa = np.searchsorted(a, grid[:-1], "right") / len(a)
    fb = np.searchsorted(b, grid[:-1], "right") / len(b)
    return float(np.sum(np.abs(fa - fb) * dx))


def acf(series: np.ndarray, lags: int = LAGS) -> np.ndarray:
    """Autocorrelation within windows (n, T), pooled over windows, lags 1..lags."""
    s = series - series.mean(axis=1, keepdims=True)
    var = float(np.sum(s * s)) + 1e-30
    lags = min(lags, s.shape[1] - 1)
    return np.array([float(np.sum(s[:, k:] * s[:, :-k])) / var for k in range(1, lags + 1)])


def excess_kurtosis(x: np.ndarray) -> float:
    x = np.asarray(x, float).ravel()
    s = x.std()
    return float(np.mean((x - x.mean()) ** 4) / s**4 - 3.0) if s > 0 else 0.0


def summary(raw: np.ndarray) -> dict:
    """Basic statistics of a (n, T, 4) raw feature array."""
    r = raw[..., 0].ravel()
    out = {
        "ret_mean": float(r.mean()),
        "ret_std": float(r.std()),
        "ret_skew": float(np.mean((r - r.mean()) ** 3) / (r.std() ** 3 + 1e-30)),
        "ret_excess_kurtosis": excess_kurtosis(r),
        "zero_return_frac": float(np.mean(r == 0.0)),
        "acf_ret": acf(raw[..., 0]).tolist(),
        "acf_abs_ret": acf(np.abs(raw[..., 0])).tolist(),
        "vol_price_corr": _corr(np.abs(raw[..., 0]).ravel(), raw[..., 1].ravel()),
    }
    for i, name in enumerate(FEATURES[1:], 1):
        out[f"{name}_mean"] = float(raw[..., i].mean())
    return out


def _corr(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def fidelity(real: np.ndarray, fake: np.ndarray) -> float:
    """Cheap scalar for checkpoint selection (lower is better): mean KS over features +
    mean |ACF error| of returns and of |returns| + |volume-price correlation error|."""
    ks = np.mean(
        [ks_2samp(real[..., i].ravel(), fake[..., i].ravel())[0] for i in range(len(FEATURES))]
    )
    e_acf = np.mean(np.abs(acf(real[..., 0], 5) - acf(fake[..., 0], 5)))
    e_abs = np.mean(np.abs(acf(np.abs(real[..., 0]), 5) - acf(np.abs(fake[..., 0]), 5)))
    vp = abs(summary(real)["vol_price_corr"] - summary(fake)["vol_price_corr"])
    return float(ks + e_acf + e_abs + vp)


# ----------------------------------------------------------------- learned scores


def _classifier_input(raw: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref.reshape(-1, ref.shape[-1]), axis=0)
    iqr = np.subtract(*np.percentile(ref.reshape(-1, ref.shape[-1]), [75, 25], axis=0))
    s = np.where(iqr > 1e-12, iqr / 1.349, ref.reshape(-1, ref.shape[-1]).std(0) + 1e-12)
    return np.arcsinh((raw - med) / s).astype(np.float32)


def discriminative_score(
    real: np.ndarray, fake: np.ndarray, seed: int = 0, epochs: int = 30, folds: int = 3
) -> float:
    """|accuracy - 0.5| of a GRU classifier (TimeGAN's score), 0 is best.

    Cross-validated over ``folds`` contiguous blocks (windows are in time order and overlap,
    so a random split would put near-copies on both sides); every window is scored once
    by a classifier that never saw its block. Held-out periods are small, hence the folds.
    """
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    real = real[np.sort(rng.choice(len(real), n, replace=False))]
    fake = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    xr = torch.from_numpy(_classifier_input(real, real))
    xf = torch.from_numpy(_classifier_input(fake, real))
    folds = max(2, min(folds, n))
    edges = np.linspace(0, n, folds + 1).astype(int)
    correct = 0
    for k in range(folds):
        te = np.zeros(n, bool)
        te[edges[k] : edges[k + 1]] = True
        xtr = torch.cat([xr[~te], xf[~te]])
        ytr = torch.cat([torch.ones(int((~te).sum())), torch.zeros(int((~te).sum()))])
        torch.manual_seed(seed + k)
        gru = torch.nn.GRU(real.shape[-1], 16, batch_first=True)
        head = torch.nn.Linear(16, 1)
        opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(epochs):
            perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), 64):
                j = perm[i : i + 64]
                _, h = gru(xtr[j])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    head(h[-1]).squeeze(-1), ytr[j]
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            _, hr = gru(xr[te])
            _, hf = gru(xf[te])
            correct += int((head(hr[-1]) > 0).sum()) + int((head(hf[-1]) <= 0).sum())
    return abs(correct / (2 * n) - 0.5)


def predictive_score(train: np.ndarray, test: np.ndarray, ref: np.ndarray, k: int = 4) -> float:
    """Train on ``train`` windows, test on real: MAE of a ridge forecaster predicting the next
    step's |return| and log volume (scaled) from the previous k steps. Lower is better."""

    def xy(raw):
        x = _classifier_input(raw, ref).astype(np.float64)
        feats, targets = [], []
        for t in range(k, x.shape[1]):
            feats.append(
                np.concatenate(
                    [
                        x[:, t - k : t].reshape(len(x), -1),
                        np.abs(x[:, t - k : t, :1]).reshape(len(x), -1),
                        np.ones((len(x), 1)),
                    ],
                    1,
                )
            )
            targets.append(np.stack([np.abs(x[:, t, 0]), x[:, t, 1]], 1))
        return np.concatenate(feats), np.concatenate(targets)

    a, y = xy(train)
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ y)
    at, yt = xy(test)
    return float(np.mean(np.abs(at @ w - yt)))


# ----------------------------------------------------------------- baselines


def gbm_baseline(
    train_raw: np.ndarray, n: int, t: int, seed: int = 0, robust: bool = True
) -> np.ndarray:
    """GBM log returns N(mu, sigma): sigma = 1.4826 * MAD (robust) or the raw std."""
    rng = np.random.default_rng(seed)
    rows = train_raw.reshape(-1, train_raw.shape[-1])
    r = rows[:, 0][rows[:, 2] > 0] if np.any(rows[:, 2] > 0) else rows[:, 0]
    mu = float(np.median(r))
    sigma = 1.4826 * float(np.median(np.abs(r - mu))) if robust else float(r.std())
    out = rows[rng.integers(0, len(rows), (n, t))].copy()
    out[..., 0] = np.where(out[..., 2] > 0, rng.normal(mu, sigma, (n, t)), 0.0)
    return out


def gbm_sigmas(train_raw: np.ndarray) -> dict:
    rows = train_raw.reshape(-1, train_raw.shape[-1])
    r = rows[:, 0][rows[:, 2] > 0]
    return {
        "mad_sigma": float(1.4826 * np.median(np.abs(r - np.median(r)))),
        "raw_sigma": float(r.std()),
    }


def block_bootstrap(
    train_raw: np.ndarray, n: int, t: int, block: int = 8, seed: int = 0
) -> np.ndarray:
    """Concatenate random blocks of consecutive real training bars (all features together)."""
    rng = np.random.default_rng(seed)
    block = max(1, min(block, train_raw.shape[1]))
    out = np.empty((n, t, train_raw.shape[-1]))
    for i in range(n):
        pos = 0
        while pos < t:
            w = rng.integers(len(train_raw))
            s = rng.integers(0, train_raw.shape[1] - block + 1)
            m = min(block, t - pos)
            out[i, pos : pos + m] = train_raw[w, s : s + m]
            pos += m
    return out


# ----------------------------------------------------------------- report


def compare(real_test: np.ndarray, fake: np.ndarray, real_train: np.ndarray, seed: int = 0) -> dict:
    """All metrics of one source against the held-out real windows."""
    per_feature = {}
    for i, name in enumerate(FEATURES):
        d, p = ks_2samp(real_test[..., i].ravel(), fake[..., i].ravel())
        per_feature[name] = {
            "ks": d,
            "ks_p": p,
            "wasserstein": wasserstein_1d(real_test[..., i].ravel(), fake[..., i].ravel()),
        }
    s_real, s_fake = summary(real_test), summary(fake)
    out = {
        "per_feature": per_feature,
        "mean_ks": float(np.mean([v["ks"] for v in per_feature.values()])),
        "stats": s_fake,
        "acf_ret_error": float(np.mean(np.abs(np.subtract(s_real["acf_ret"], s_fake["acf_ret"])))),
        "acf_abs_ret_error": float(
            np.mean(np.abs(np.subtract(s_real["acf_abs_ret"], s_fake["acf_abs_ret"])))
        ),
        "kurtosis_error": abs(s_real["ret_excess_kurtosis"] - s_fake["ret_excess_kurtosis"]),
        "vol_price_corr_error": abs(s_real["vol_price_corr"] - s_fake["vol_price_corr"]),
        "discriminative_score": discriminative_score(real_test, fake, seed=seed),
        "predictive_score": predictive_score(fake, real_test, real_train),
        "fidelity": fidelity(real_test, fake),
    }
    out["grade"] = grade(out)
    return out


def grade(m: dict) -> str:
    for name, d_max, ks_max, acf_max in GRADES:
        if (
            m["discriminative_score"] <= d_max
            and m["mean_ks"] <= ks_max
            and m["acf_abs_ret_error"] <= acf_max
        ):
            return name
    return "POOR"


def report(
    real_test: np.ndarray, real_train: np.ndarray, sources: dict[str, np.ndarray], seed: int = 0
) -> dict:
    """Metrics for every source plus GAN-vs-baseline verdicts."""
    res = {name: compare(real_test, x, real_train, seed=seed) for name, x in sources.items()}
    out = {"real_test_stats": summary(real_test), "sources": res}
    if "gan" in res:
        g = res["gan"]
        out["verdicts"] = {
            f"gan_vs_{b}": {
                "discriminative": "better"
                if g["discriminative_score"] < res[b]["discriminative_score"]
                else "worse",
                "acf_abs_ret": "better"
                if g["acf_abs_ret_error"] < res[b]["acf_abs_ret_error"]
                else "worse",
                "mean_ks": "better" if g["mean_ks"] < res[b]["mean_ks"] else "worse",
            }
            for b in res
            if b != "gan"
        }
    return out


def plots(
    out_dir, real_test: np.ndarray, sources: dict[str, np.ndarray], start_price: float
) -> list[str]:
    """Sample paths, return/volume distributions, ACFs, volume vs |return| (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    allsrc = {"real_test": real_test, **sources}
    written = []

    fig, axes = plt.subplots(1, len(allsrc), figsize=(4 * len(allsrc), 3), sharey=True)
    for ax, (name, x) in zip(np.atleast_1d(axes), allsrc.items(), strict=True):
        for w in x[:8]:
            ax.plot(start_price * np.exp(np.cumsum(w[:, 0])), lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("bar")
    np.atleast_1d(axes)[0].set_ylabel("USDC per ETH")
    written.append(_save(fig, out_dir / "sample_paths.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    lim = np.percentile(np.abs(real_test[..., 0]), 99.5) * 2 + 1e-9
    for name, x in allsrc.items():
        axes[0].hist(
            np.clip(x[..., 0].ravel(), -lim, lim),
            bins=60,
            histtype="step",
            density=True,
            label=name,
            log=True,
        )
        axes[1].hist(x[..., 1].ravel(), bins=40, histtype="step", density=True, label=name)
    axes[0].set_title("log return per bar")
    axes[1].set_title("log1p(volume ETH) per bar")
    axes[0].legend(fontsize=7)
    written.append(_save(fig, out_dir / "distributions.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, x in allsrc.items():
        a, b = acf(x[..., 0]), acf(np.abs(x[..., 0]))
        axes[0].plot(range(1, len(a) + 1), a, marker="o", label=name)
        axes[1].plot(range(1, len(b) + 1), b, marker="o", label=name)
    axes[0].set_title("ACF of returns")
    axes[1].set_title("ACF of |returns| (volatility clustering)")
    axes[0].legend(fontsize=7)
    written.append(_save(fig, out_dir / "acf.png"))

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, x in allsrc.items():
        ax.scatter(
            np.abs(x[..., 0]).ravel()[:2000], x[..., 1].ravel()[:2000], s=3, alpha=0.4, label=name
        )
    ax.set_xlabel("|log return|")
    ax.set_ylabel("log1p(volume ETH)")
    ax.legend(fontsize=7)
    written.append(_save(fig, out_dir / "volume_vs_return.png"))
    return written


def _save(fig, path) -> str:
    import matplotlib.pyplot as plt

    from apeagent.files import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return str(path)


# ----------------------------------------------------------------- swap level
# A per-swap series is a dict of equal-length arrays: ``log_return`` (from the previous swap
# of the same sequence), ``size`` (ETH), ``dt`` (seconds since that swap), ``sequence``.

SWAP_WINDOW = 24  # consecutive swaps per classifier window (never across sequences)
SWAP_FOLDS = 5
RETURN_STATS = 8  # the first RETURN_STATS window statistics are about returns only


def swap_windows(s: dict, size: int = SWAP_WINDOW) -> np.ndarray:
    """(n, size, 3) non-overlapping windows of (return, ln size, ln1p dt) inside sequences."""
    x = np.stack([s["log_return"], np.log(s["size"] + 1e-12), np.log1p(s["dt"])], 1)
    out = []
    seq = s["sequence"]
    cuts = np.flatnonzero(np.diff(seq) != 0) + 1
    for part in np.split(np.arange(len(seq)), cuts):
        for i in range(0, len(part) - size + 1, size):
            out.append(x[part[i : i + size]])
    return np.array(out).reshape(-1, size, 3)


def _lag1(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    den = np.sum(a * a, 1)
    return np.where(den > 0, np.sum(a[:, 1:] * a[:, :-1], 1) / np.maximum(den, 1e-300), 0.0)


def swap_window_stats(w: np.ndarray) -> np.ndarray:
    """Per-window statistics: 8 of the returns (ln std, ln mean |r|, ln max |r|, kurtosis,
    zero-move fraction, lag-1 ACF of r and of |r|, same-direction fraction), then 4 of the
    sizes (mean, std, max of ln size; corr with ln |r|) and 3 of the gaps (mean, std of
    ln1p dt; same-block fraction)."""
    r, ls, ldt = w[..., 0], w[..., 1], w[..., 2]
    a = np.abs(r)
    sd = r.std(1)
    kurt = np.where(sd > 0, np.mean((r - r.mean(1, keepdims=True)) ** 4, 1) / np.maximum(sd, 1e-300) ** 4 - 3, 0.0)
    sign = np.sign(r)
    la = np.log(a + 1e-9)
    lc = ls - ls.mean(1, keepdims=True)
    ac = la - la.mean(1, keepdims=True)
    den = np.sqrt(np.sum(lc * lc, 1) * np.sum(ac * ac, 1))
    corr = np.where(den > 0, np.sum(lc * ac, 1) / np.maximum(den, 1e-300), 0.0)
    return np.stack(
        [
            np.log(sd + 1e-9),
            np.log(a.mean(1) + 1e-9),
            np.log(a.max(1) + 1e-9),
            np.arcsinh(kurt),
            np.mean(a < 1e-12, 1),
            _lag1(r),
            _lag1(a),
            np.mean(sign[:, 1:] == sign[:, :-1], 1),
            ls.mean(1),
            ls.std(1),
            ls.max(1),
            corr,
            ldt.mean(1),
            ldt.std(1),
            np.mean(ldt == 0, 1),
        ],
        1,
    )


def _logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (weights with the bias last)."""
    xb = np.concatenate([x, np.ones((len(x), 1))], 1)
    w = np.zeros(xb.shape[1])
    reg = l2 * len(x) * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        g = xb.T @ (p - y) + reg @ w
        h = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        w -= np.linalg.solve(h, g)
    return w


def swap_discriminative_score(
    real: np.ndarray, fake: np.ndarray, seed: int = 0, n_stats: int | None = None
) -> float:
    """|accuracy - 0.5| of a logistic classifier on per-window statistics (0 is best), over
    ``SWAP_FOLDS`` contiguous folds (real windows are in time order); ``n_stats``: use only
    the first statistics (``RETURN_STATS``: returns only)."""
    n = min(len(real), len(fake))
    if n < SWAP_FOLDS:
        return 0.5
    rng = np.random.default_rng(seed)
    xr = swap_window_stats(real[np.sort(rng.choice(len(real), n, replace=False))])[:, :n_stats]
    xf = swap_window_stats(fake[np.sort(rng.choice(len(fake), n, replace=False))])[:, :n_stats]
    med = np.median(xr, 0)
    sc = np.subtract(*np.percentile(xr, [75, 25], 0)) / 1.349
    sc = np.where(sc > 1e-9, sc, xr.std(0) + 1e-9)
    xr, xf = np.arcsinh((xr - med) / sc), np.arcsinh((xf - med) / sc)
    edges = np.linspace(0, n, SWAP_FOLDS + 1).astype(int)
    correct = 0
    for k in range(SWAP_FOLDS):
        te = np.zeros(n, bool)
        te[edges[k] : edges[k + 1]] = True
        w = _logistic_fit(
            np.concatenate([xr[~te], xf[~te]]),
            np.concatenate([np.ones((~te).sum()), np.zeros((~te).sum())]),
        )
        correct += int(np.sum(xr[te] @ w[:-1] + w[-1] > 0) + np.sum(xf[te] @ w[:-1] + w[-1] <= 0))
    return abs(correct / (2 * n) - 0.5)


def swap_summary(s: dict) -> dict:
    r, size, dt = s["log_return"], s["size"], s["dt"]
    sign = np.sign(r)
    same = sign[1:] == sign[:-1]
    same = same[s["sequence"][1:] == s["sequence"][:-1]]
    return {
        "swaps": int(len(r)),
        "ret_std": float(r.std()),
        "ret_excess_kurtosis": excess_kurtosis(r),
        "max_abs_ret": float(np.abs(r).max()) if len(r) else 0.0,
        "same_direction_frac": float(same.mean()) if len(same) else 0.0,
        "size_median": float(np.median(size)),
        "size_q99": float(np.quantile(size, 0.99)),
        "size_impact_corr": _corr(np.log(size + 1e-12), np.log(np.abs(r) + 1e-9)),
        "dt_mean": float(dt.mean()),
        "same_block_frac": float(np.mean(dt == 0)),
    }


SWAP_KS = {"log_return": "log_return", "size": "size", "dt": "dt"}


def swap_compare(real: dict, fake: dict, seed: int = 0) -> dict:
    """Swap-level metrics of one source against the held-out real swaps."""
    wr, wf = swap_windows(real), swap_windows(fake)
    ks = {k: ks_2samp(real[k], fake[k])[0] for k in SWAP_KS}
    sr, sf = swap_summary(real), swap_summary(fake)
    return {
        "discriminative_returns": swap_discriminative_score(wr, wf, seed, RETURN_STATS),
        "discriminative_all": swap_discriminative_score(wr, wf, seed),
        "ks": ks,
        "mean_ks": float(np.mean(list(ks.values()))),
        "stats": sf,
        "kurtosis_ratio": sf["ret_excess_kurtosis"] / sr["ret_excess_kurtosis"]
        if sr["ret_excess_kurtosis"]
        else None,
        "windows": int(len(wf)),
    }


def gbm_swaps(train: dict, n: int, seq_len: int = 240, seed: int = 0) -> dict:
    """Per-swap GBM: returns N(median, 1.4826 MAD) of the real training swaps; sizes and gaps
    drawn i.i.d. from their real marginals (no dependence on each other or on volatility)."""
    rng = np.random.default_rng(seed)
    r = train["log_return"]
    mu = float(np.median(r))
    sigma = 1.4826 * float(np.median(np.abs(r - mu)))
    return {
        "log_return": rng.normal(mu, sigma, n),
        "size": train["size"][rng.integers(0, len(r), n)],
        "dt": train["dt"][rng.integers(0, len(r), n)],
        "sequence": np.arange(n) // seq_len,
    }


def bootstrap_swaps(train: dict, n: int, block: int = 8, seed: int = 0) -> dict:
    """Blocks of ``block`` consecutive real training swaps (return, size, gap together)."""
    rng = np.random.default_rng(seed)
    m = len(train["log_return"])
    starts = rng.integers(0, max(1, m - block + 1), -(-n // block))
    idx = (starts[:, None] + np.arange(block)).ravel()[:n] % m
    return {k: train[k][idx] for k in ("log_return", "size", "dt")} | {
        "sequence": np.zeros(n, np.int64)
    }


def swap_report(real: dict, sources: dict[str, dict], seed: int = 0) -> dict:
    res = {name: swap_compare(real, s, seed) for name, s in sources.items()}
    out = {"real_test_stats": swap_summary(real), "real_windows": int(len(swap_windows(real))),
           "sources": res}
    if "gan" in res:
        g = res["gan"]
        out["verdicts"] = {
            f"gan_vs_{b}": {
                m: "better" if g[m] < res[b][m] else "worse"
                for m in ("discriminative_returns", "discriminative_all", "mean_ks")
            }
            for b in res
            if b != "gan"
        }
    return out


def swap_plots(out_dir, real: dict, sources: dict[str, dict]) -> list[str]:
    """Per-swap return / size / gap distributions and sample swap price paths (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    allsrc = {"real_test": real, **sources}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    lim = np.percentile(np.abs(real["log_return"]), 99.5) * 3 + 1e-9
    for name, s in allsrc.items():
        kw = {"histtype": "step", "density": True, "label": name}
        axes[0].hist(np.clip(s["log_return"], -lim, lim), bins=80, log=True, **kw)
        axes[1].hist(np.log10(s["size"] + 1e-9), bins=60, **kw)
        axes[2].hist(np.log1p(s["dt"]), bins=40, **kw)
    axes[0].set_title("per-swap log return")
    axes[1].set_title("log10 swap size (ETH)")
    axes[2].set_title("ln(1 + seconds since previous swap)")
    axes[0].legend(fontsize=7)
    written = [_save(fig, out_dir / "swap_distributions.png")]
    fig, axes = plt.subplots(1, len(allsrc), figsize=(3.5 * len(allsrc), 3), sharey=True)
    for ax, (name, s) in zip(np.atleast_1d(axes), allsrc.items(), strict=True):
        first = s["sequence"] == s["sequence"][0]
        ax.plot(np.cumsum(s["log_return"][first][:600]), lw=0.7)
        ax.set_title(name)
        ax.set_xlabel("swap")
    np.atleast_1d(axes)[0].set_ylabel("cumulative log return")
    written.append(_save(fig, out_dir / "swap_paths.png"))
    return written
