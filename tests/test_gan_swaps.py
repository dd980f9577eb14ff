"""Synthetic swap events: exact pool math, the bars they decode, continuous sequences, the
swap-level validation and its CLI / report surface."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chain_fixtures import real_rows
from gan_fixtures import synthetic_bars, tiny_cfg, write_cfg_yaml
from typer.testing import CliRunner

from apeagent.errors import UserError
from chain.amm import swap_exact_input
from chain.features import make_bars, process, swap_features
from gan_torch import fidelity as V
from gan_torch import generate as G
from gan_torch import swaps as S
from gan_torch.cli import app
from gan_torch.data import FEATURES, bar_features, read_windows

T0 = 1_738_816_800


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Simulated swaps through `chain process`: swaps.parquet + bars.parquet, and a tiny GAN."""
    from chain.simulate import simulate
    from gan_torch.data import read_bars
    from gan_torch.train import train

    d = tmp_path_factory.mktemp("sim")
    process(simulate(3000, seed=1), d)
    cfg = tiny_cfg(steps=4, checkpoint_every=4, eval_every=4)
    train(read_bars(d / "bars.parquet"), cfg, d / "gan", progress=False)
    return d


def _windows(n=3, t=8, seed=0, continuous=False):
    """Decoded windows from the synthetic GARCH bars (empty bars included)."""
    bars = synthetic_bars(n * t, seed=seed, empty_frac=0.1)
    raw = bar_features(bars).reshape(n, t, len(FEATURES))
    anchors = G.chained_anchors(raw, 3000.0) if continuous else np.array([3000.0, 2500.0, 3300.0])
    return G.to_windows(raw, anchors[:n])


def _assert_exact_chain(rows):
    """Every event of a sequence is the pool's exact-input swap from the previous event."""
    for prev, row in zip(rows, rows[1:], strict=False):
        assert (row["block_number"], row["log_index"]) > (prev["block_number"], prev["log_index"])
        if row["sequence"] != prev["sequence"]:
            continue
        zfo = row["amount0"] < 0  # the swapper paid ETH in: the price must fall
        assert (row["sqrt_price_x96"] < prev["sqrt_price_x96"]) == zfo
        again = swap_exact_input(
            prev["sqrt_price_x96"],
            row["liquidity"],
            -(row["amount0"] if zfo else row["amount1"]),
            zfo,
            row["fee"],
        )
        assert (again.amount0, again.amount1, again.sqrt_price_x96, again.tick) == (
            row["amount0"],
            row["amount1"],
            row["sqrt_price_x96"],
            row["tick"],
        )


@pytest.mark.parametrize("decoder", S.DECODERS)
def test_continuous_swaps_replay_exactly_and_rebuild_the_generated_bars(sim, decoder):
    sw = S.read_swaps(sim / "swaps.parquet")
    bank = S.swap_bank(sw, 300, 400)
    cols = _windows(continuous=True)
    rows = S.bars_to_swaps(
        cols, decoder, bank=bank, liquidity=5 * 10**16, sequence_of={0: 0, 1: 0, 2: 0}, seed=3
    )
    assert len(rows) == int(cols["swap_count"].sum()) and {r["sequence"] for r in rows} == {0}
    _assert_exact_chain(rows)  # across bars and window joins: no jump anywhere
    bars = make_bars(swap_features(rows), 300)
    # make_bars spans first..last swap's bar: align, the bars outside are empty ones
    i0 = int(bars["bar_start"][0] - T0) // 300
    sl = slice(i0, i0 + len(bars["bar_start"]))
    assert cols["swap_count"][: sl.start].sum() == cols["swap_count"][sl.stop :].sum() == 0
    np.testing.assert_array_equal(bars["swap_count"], cols["swap_count"][sl])
    active = cols["swap_count"][sl] > 0
    np.testing.assert_allclose(bars["close"], cols["close"][sl], rtol=1e-9)
    np.testing.assert_allclose(bars["log_return"][1:], cols["log_return"][sl][1:], atol=1e-9)
    if decoder == "bootstrap":  # the bootstrap keeps each bar's ETH volume (to integer rounding)
        np.testing.assert_allclose(
            bars["volume_eth"][active], cols["volume_eth"][sl][active], rtol=1e-6
        )


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The shared CSV's swaps (chain process): their bootstrap bank over every bar, and the
    real bars themselves as 162 windows of 24 (the generated bars of a perfect GAN)."""
    from gan_torch.data import read_bars

    d = tmp_path_factory.mktemp("real")
    process(real_rows(), d)
    sw, bars = S.read_swaps(d / "swaps.parquet"), read_bars(d / "bars.parquet")
    n, t = len(bars["bar_start"]) // 24, 24
    bank = S.swap_bank(sw, 300, n * t)
    raw = bar_features({k: v[: n * t] for k, v in bars.items()}).reshape(n, t, len(FEATURES))
    opens = bars["close"][: n * t : t] * np.exp(-bars["log_return"][: n * t : t])
    return bank, G.to_windows(raw, opens)


def _in_bar_structure(ts, up, bar):
    """Gaps between consecutive swaps of the same bar, and the lengths of the runs of one
    direction inside a bar."""
    same = bar[1:] == bar[:-1]
    gaps = np.diff(ts)[same]
    change = np.flatnonzero((bar[1:] != bar[:-1]) | (up[1:] != up[:-1]))
    runs = np.diff(np.concatenate([[-1], change, [len(up) - 1]]))
    return gaps, runs


def test_bootstrap_replays_real_structure(real):
    """Decoded from the real bars, the swaps keep the real bank's same-block bursts (gaps
    inside a bar) and direction runs: random offsets or shuffled moves would destroy both."""
    bank, cols = real
    bar_of_bank = np.repeat(np.arange(len(bank["count"])), bank["count"])
    nz = bank["r"] != 0  # a swap that did not move the price has no direction
    real_gaps, _ = _in_bar_structure(bank["timestamp"], bank["r"] > 0, bar_of_bank)
    _, real_runs = _in_bar_structure(bank["timestamp"][nz], bank["r"][nz] > 0, bar_of_bank[nz])
    rows = S.bars_to_swaps(cols, "bootstrap", bank=bank, seed=0)
    assert len(rows) == int(cols["swap_count"].sum())
    ts = np.array([r["timestamp"] for r in rows])
    up = np.array([r["amount0"] > 0 for r in rows])  # ETH out of the pool: the price rose
    gaps, runs = _in_bar_structure(ts, up, (ts - T0) // 300)
    assert len(gaps) == len(real_gaps)  # the same bars, the same swap counts
    # the real swaps come in bursts: 17% of the gaps inside a bar are 0 s (the same block)
    assert np.mean(real_gaps == 0) > 0.1
    assert abs(np.mean(gaps == 0) - np.mean(real_gaps == 0)) < 0.03
    assert V.ks_2samp(gaps, real_gaps)[0] < 0.05
    # the real directions run on (mean run 2.6 swaps inside a bar; shuffled about 1.9)
    assert real_runs.mean() > 2.2
    assert abs(runs.mean() - real_runs.mean()) < 0.15
    assert V.ks_2samp(runs, real_runs)[0] < 0.05
    # and the uniform decoder, which spreads swaps evenly, has neither
    u = S.bars_to_swaps(cols, "uniform", liquidity=5 * 10**16)
    u_ts = np.array([r["timestamp"] for r in u])
    u_gaps, _ = _in_bar_structure(u_ts, np.zeros(len(u), bool), (u_ts - T0) // 300)
    assert np.mean(u_gaps == 0) < 0.5 * np.mean(real_gaps == 0)


def test_bootstrap_swaps_stay_in_their_bar_one_sequence_per_window(sim):
    sw = S.read_swaps(sim / "swaps.parquet")
    bank = S.swap_bank(sw, 300, 1000)
    cols = _windows()
    rows = S.bars_to_swaps(cols, "bootstrap", bank=bank, seed=0)
    s = S.rows_series(rows)
    assert set(np.unique(s["sequence"])) == {0, 1, 2}  # one sequence per window
    # every swap in its own bar: bar i of the decoded run holds exactly its swap_count swaps
    bar = np.array([(r["timestamp"] - T0) // 300 for r in rows])
    np.testing.assert_array_equal(np.bincount(bar, minlength=24), cols["swap_count"])


def test_rescaled_moves_keep_directions_and_hit_the_bar_return():
    r = np.array([0.002, -0.001, 0.0005, -0.003])
    for target in (0.004, -0.004, 0.0, 0.02):
        m = S._rescale_moves(r, target)
        assert abs(m.sum() - target) < 1e-15
        assert np.all(np.sign(m[m != 0]) == np.sign(r[m != 0]))
    assert abs(S._rescale_moves(np.array([0.001, 0.002]), -0.003).sum() + 0.003) < 1e-15


def test_swaps_csv_has_sequences_and_chain_reads_it(sim, tmp_path):
    from chain.csvio import read_swaps_csv

    rows = S.bars_to_swaps(_windows(), "uniform", liquidity=5 * 10**16)
    S.write_swaps_csv(tmp_path / "s.csv", rows)
    header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert header == list(S.SWAP_COLUMNS) and header[-2:] == ["log_index", "sequence"]
    back = read_swaps_csv(tmp_path / "s.csv")  # the extra column is ignored, the rest checked
    assert [r["sqrt_price_x96"] for r in back] == [r["sqrt_price_x96"] for r in rows]
    with pytest.raises(UserError, match="needs the real swaps"):
        S.bars_to_swaps(_windows(), "bootstrap")
    with pytest.raises(UserError, match="decoder must be one of"):
        S.bars_to_swaps(_windows(), "nope")


def test_swap_discriminative_score_separates_only_different_series():
    rng = np.random.default_rng(0)

    def series(n, scale, gap):
        return {
            "log_return": rng.standard_t(3, n) * scale,
            "size": rng.lognormal(-2, 1, n),
            "dt": rng.exponential(gap, n).round(),
            "sequence": np.zeros(n, np.int64),
        }

    real = V.swap_windows(series(24 * 120, 1e-4, 20))
    same = V.swap_windows(series(24 * 120, 1e-4, 20))
    other = V.swap_windows(series(24 * 120, 3e-4, 20))
    assert V.swap_discriminative_score(real, same, n_stats=V.RETURN_STATS) < 0.1
    assert V.swap_discriminative_score(real, other, n_stats=V.RETURN_STATS) > 0.4
    slow = V.swap_windows(series(24 * 120, 1e-4, 60))  # returns alike, gaps not
    assert V.swap_discriminative_score(real, slow, n_stats=V.RETURN_STATS) < 0.1
    assert V.swap_discriminative_score(real, slow) > 0.4
    # windows never run across a sequence boundary
    s = series(50, 1e-4, 20)
    s["sequence"][30:] = 1
    assert len(V.swap_windows(s)) == 1


def test_generate_continuous_swaps_cli(sim, tmp_path):
    runner = CliRunner()
    cfg = write_cfg_yaml(tmp_path / "c.yaml")
    base = ["generate", "--checkpoint", str(sim / "gan" / "best.pt"), "-c", str(cfg), "--n", "4"]
    out, csv = tmp_path / "w.parquet", tmp_path / "swaps.csv"
    res = runner.invoke(
        app,
        [*base, "--out", str(out), "--swaps-out", str(csv), "--continuous",
         "--real-swaps", str(sim / "swaps.parquet")],
    )
    assert res.exit_code == 0, res.output
    w = read_windows(out)
    closes = w["close"].reshape(4, -1)
    rets = w["log_return"].reshape(4, -1)
    # each window opens at the previous close: no jump at a join
    np.testing.assert_allclose(closes[:-1, -1] * np.exp(rets[1:, 0]), closes[1:, 0], rtol=1e-12)
    from chain.csvio import read_swaps_csv

    rows = read_swaps_csv(csv)
    assert len(rows) == int(w["swap_count"].sum())
    assert set(csv.read_text().splitlines()[1].split(",")[-1:]) == {"0"}
    bars = make_bars(swap_features(rows), 300)
    i0 = int(bars["bar_start"][0] - T0) // 300
    np.testing.assert_allclose(bars["close"], w["close"][i0 : i0 + len(bars["close"])], rtol=1e-9)
    # bad input: exit 2, one line naming the problem, nothing written
    for extra, msg in (
        (["--swaps-out", str(tmp_path / "x.csv"), "--real-swaps", str(tmp_path / "no.parquet")],
         "real swaps file not found"),
        (["--continuous", "--backend", "mlx"], "--continuous"),
        (["--swaps-out", str(tmp_path / "x.csv"), "--swap-decoder", "nope"], "--swap-decoder"),
    ):
        res = runner.invoke(app, [*base, "--out", str(tmp_path / "bad.parquet"), *extra])
        assert isinstance(res.exception, UserError) and msg in str(res.exception), res.output
        assert not (tmp_path / "bad.parquet").exists() and not (tmp_path / "x.csv").exists()


def test_validate_swap_section_and_report(sim, tmp_path):
    from apeagent.layout import RunLayout
    from apeagent.report import write_report

    cfg = write_cfg_yaml(tmp_path / "c.yaml")
    run = RunLayout(tmp_path / "run")
    res = CliRunner().invoke(
        app,
        ["validate", "--bars", str(sim / "bars.parquet"), "--checkpoint",
         str(sim / "gan" / "best.pt"), "--swaps", str(sim / "swaps.parquet"),
         "--out-dir", str(run.validation), "-c", str(cfg)],
    )
    assert res.exit_code == 0, res.output
    assert "swap level" in res.output
    val = json.loads(run.validation_json.read_text())
    sec = val["swaps"]
    assert set(sec["sources"]) == {"gan", "gbm", "bootstrap", "real_train"}
    for m in sec["sources"].values():
        assert set(m["ks"]) == {"log_return", "size", "dt"}
    assert {"gan_vs_gbm", "gan_vs_bootstrap"} <= set(sec["verdicts"])
    gan = sec["sources"]["gan"]
    for other in ("gbm", "bootstrap"):  # each verdict says what the two numbers say
        for m, verdict in sec["verdicts"][f"gan_vs_{other}"].items():
            assert verdict == ("better" if gan[m] < sec["sources"][other][m] else "worse"), m
    assert all(p.endswith(".png") and (run.validation / p.split("/")[-1]).is_file()
               for p in sec["plots"])
    write_report(run.root, {"stages": {}})
    md = run.report_md.read_text()
    assert "Swap-level fidelity" in md and "swap_distributions.png" in md
    # swaps that are not the bars' source are refused by name
    other = tmp_path / "other"
    from chain.simulate import simulate

    process(simulate(300, seed=2), other)
    res = CliRunner().invoke(
        app,
        ["validate", "--bars", str(sim / "bars.parquet"), "--checkpoint",
         str(sim / "gan" / "best.pt"), "--swaps", str(other / "swaps.parquet"),
         "--out-dir", str(tmp_path / "v2"), "-c", str(cfg)],
    )
    assert isinstance(res.exception, UserError) and "not the swaps" in str(res.exception)
    assert not (tmp_path / "v2" / "validation.json").exists()
