"""The fused CPU E-step (napari_gmmseg.em.fused) against the torch E-step it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gmmseg.em import fused
from napari_gmmseg.em.estep import EStep, features
from napari_gmmseg.errors import ModelError

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")


def _problem(covariance_type: str, seed: int = 0):
    """Three rows of 5000 pixels (the last row padded from 4000), K = 4, M = 3."""
    gen = torch.Generator().manual_seed(seed)
    s, n, m, k = 3, 5000, 3, 4
    x = torch.randn(s, n, m, generator=gen) * 1.5
    valid = torch.ones(s, n)
    valid[2, 4000:] = 0
    x[2, 4000:] = 0
    wk = {"f": features(x, valid, covariance_type), "n": valid.sum(1).double()}
    w = torch.softmax(torch.randn(s, k, generator=gen, dtype=torch.float64), -1)
    mu = torch.randn(s, k, m, generator=gen, dtype=torch.float64)
    if covariance_type == "diag":
        cov = 0.3 + torch.rand(s, k, m, generator=gen, dtype=torch.float64)
    else:
        a = torch.randn(s, k, m, m, generator=gen, dtype=torch.float64) * 0.4
        cov = a @ a.transpose(-1, -2) + 0.3 * torch.eye(m, dtype=torch.float64)
    log_pi = torch.log_softmax(torch.randn(s, k, n, generator=gen), 1)
    return wk, w, mu, cov, log_pi, (s, n, m, k)


def _run(kernel: str, covariance_type: str, svgmm: bool, want_stats: bool = True):
    wk, w, mu, cov, log_pi0, (s, n, m, k) = _problem(covariance_type)
    est = EStep(k, m, covariance_type, torch.float32, torch.device("cpu"), 700, kernel)
    log_pi = log_pi0.clone() if svgmm else None
    resp = torch.full((s, k, n), -1.0)  # rows not updated keep this
    upd = torch.tensor([True, False, True])
    out = est.run(w, mu, cov, wk, log_pi=log_pi, upd=upd, resp_out=resp, want_stats=want_stats)
    return est, [*out, resp] + ([log_pi] if svgmm else [])


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
@pytest.mark.parametrize("svgmm", [False, True])
def test_fused_estep_matches_the_torch_estep(covariance_type, svgmm):
    """NLL, statistics, responsibilities and the SVGMM's log r: the same numbers to the
    float32 precision, padding and rows that are not updated included."""
    est, fused_out = _run("fused", covariance_type, svgmm)
    ref, torch_out = _run("torch", covariance_type, svgmm)
    assert est.fused and not ref.fused
    torch.testing.assert_close(fused_out[0], torch_out[0], rtol=1e-6, atol=0)
    for got, want in zip(fused_out[1:4], torch_out[1:4], strict=True):
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-4)  # sums of 5000 terms
    resp, resp_ref = fused_out[4], torch_out[4]
    torch.testing.assert_close(resp, resp_ref, rtol=0, atol=1e-6)
    assert torch.equal(resp[1], torch.full_like(resp[1], -1.0))  # row not updated: kept
    assert torch.equal(resp[2, :, 4000:], torch.zeros(4, 1000))  # padding: no resp
    torch.testing.assert_close(resp[0].sum(0), torch.ones(5000), rtol=0, atol=1e-6)
    if svgmm:
        log_r, log_r_ref = fused_out[5], torch_out[5]
        torch.testing.assert_close(log_r, log_r_ref, rtol=0, atol=2e-5)
        assert torch.equal(log_r[1], _problem(covariance_type)[4][1])  # not updated


def test_fused_estep_without_statistics_writes_the_responsibilities_only():
    _, with_stats = _run("fused", "diag", False)
    _, without = _run("fused", "diag", False, want_stats=False)
    torch.testing.assert_close(without[0], with_stats[0], rtol=0, atol=0)
    torch.testing.assert_close(without[4], with_stats[4], rtol=0, atol=0)


def test_fused_estep_survives_far_outliers():
    """Pixels far from every component (every log joint below exp's range relative to
    the row's bound): the per-pixel maximum keeps their NLL finite and exact."""
    wk, w, mu, cov, _, (_, _, m, k) = _problem("diag")
    wk["f"][0, :m, :10] = 1e3  # 1000 standard deviations away
    wk["f"][0, m : 2 * m, :10] = 1e6
    outs = []
    for kernel in ("fused", "torch"):
        est = EStep(k, m, "diag", torch.float32, torch.device("cpu"), 700, kernel)
        outs.append(est.run(w, mu, cov, wk))
    assert torch.isfinite(outs[0][0]).all()
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=0)


def test_fits_with_either_kernel_give_the_same_labels():
    from napari_gmmseg.mixture import fit_gmm, fit_svgmm
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.preprocess import SliceBatch

    case = make_case(1, n_slices=3, size=64)
    roi = np.isin(case.labels, (200, 500, 1220, 2221))
    batch = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
    for fit, covariance_type in ((fit_gmm, "diag"), (fit_gmm, "full"), (fit_svgmm, "diag")):
        res = [
            fit(batch, n_components=4, seed=2, covariance_type=covariance_type, estep_kernel=e)
            for e in ("fused", "torch")
        ]
        valid = batch.valid.numpy()
        agree = (res[0].labels.numpy() == res[1].labels.numpy())[valid].mean()
        assert agree >= 0.999, (fit.__name__, covariance_type, agree)
        # NLL per pixel: float32 rounding of two summation orders over the iterations
        np.testing.assert_allclose(res[0].final_nll, res[1].final_nll, rtol=1e-5, atol=1e-5)


def test_estep_kernel_option_is_checked():
    from napari_gmmseg.mixture import fit_gmm
    from napari_gmmseg.preprocess import SliceBatch

    rng = np.random.default_rng(0)
    batch = SliceBatch.from_volume(rng.normal(size=(1, 16, 16, 2)), np.ones((1, 16, 16), bool))
    with pytest.raises(ModelError, match="estep_kernel"):
        fit_gmm(batch, n_components=2, estep_kernel="fast")
    with pytest.raises(ModelError, match="float32"):
        fit_gmm(batch, n_components=2, estep_kernel="fused", dtype="float64")
    # auto: the torch kernel where the fused one does not apply
    assert not EStep(2, 2, "diag", torch.float64, torch.device("cpu")).fused
    assert EStep(2, 2, "diag", torch.float32, torch.device("cpu")).fused


def test_kernels_are_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(fused.KERNEL_DIR_ENV, str(tmp_path / "kernels"))
    source = fused.kernel_source(4, 3, "diag", False)
    path = fused._write_module(source, "estep_test")
    assert path.parent == tmp_path / "kernels" and path.read_text(encoding="utf-8") == source
    mtime = path.stat().st_mtime_ns
    assert fused._write_module(source, "estep_test") == path
    assert path.stat().st_mtime_ns == mtime  # same source: not rewritten
    assert not list(path.parent.glob("*.tmp"))  # atomic write left no temporary file


def test_unwritable_kernel_dir_falls_back_to_the_temporary_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(fused.KERNEL_DIR_ENV, str(blocker / "kernels"))
    path = fused._write_module("x = 1\n", "estep_fallback_test")
    assert path.read_text(encoding="utf-8") == "x = 1\n"
    assert blocker.read_text(encoding="utf-8") == "not a folder"
    path.unlink()


def test_polynomial_exp_and_log_are_float32_accurate():
    """The kernel's exp on [-87, 0] and log on [1, 16] against float64 (the same source
    lines as the kernel, compiled as a plain loop)."""
    exp_log = fused.exp_log_loop()
    a = np.linspace(-87.0, 0.0, 200_001, dtype=np.float32)
    sv = np.linspace(1.0, 16.0, 200_001, dtype=np.float32)
    out, lout = np.empty_like(a), np.empty_like(sv)
    exp_log(a, out, sv, lout)
    assert np.max(np.abs(out / np.exp(a.astype(np.float64)) - 1)) < 5e-7
    assert np.max(np.abs(lout - np.log(sv.astype(np.float64)))) < 3e-7
    exp_log(np.array([-200.0], np.float32), out[:1], sv[:1], lout[:1])
    assert out[0] == pytest.approx(np.exp(-87.0), rel=5e-7)  # clamped, not garbage bits


def test_prefetch_loads_the_kernel_the_fit_then_uses(monkeypatch):
    """segment() starts loading the kernel while it packs: the fit's E-step gets the same
    compiled function (one load, under the lock), and a fit that will use the torch E-step
    starts nothing."""
    from types import SimpleNamespace

    from napari_gmmseg.em import estep

    thread = fused.prefetch(4, 3, "diag", False)
    fn = fused.kernel(4, 3, "diag", False)  # waits for the prefetch if still loading
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert fused.kernel(4, 3, "diag", False) is fn
    est = EStep(4, 3, "diag", torch.float32, torch.device("cpu"))
    wk, w, mu, cov, _, _ = _problem("diag")
    run_tile = est._fused_tiles(*est.terms(w, mu, cov, True), wk["f"], None, None, None, True)
    captured = dict(
        zip(
            run_tile.__code__.co_freevars,
            (c.cell_contents for c in run_tile.__closure__),
            strict=True,
        )
    )
    assert captured["fn"] is fn
    started = []
    monkeypatch.setattr(fused, "prefetch", lambda *a: started.append(a))
    cpu = torch.device("cpu")
    opts = SimpleNamespace(dtype="float32", spatial="none", estep_kernel="auto")
    estep.prefetch_fused(4, 3, "diag", opts, cpu, True)
    for change in ({"spatial": "mrf"}, {"estep_kernel": "torch"}, {"dtype": "float64"}):
        other = SimpleNamespace(**{**vars(opts), **change})
        estep.prefetch_fused(4, 3, "diag", other, cpu, False)
    assert started == [(4, 3, "diag", True)]
