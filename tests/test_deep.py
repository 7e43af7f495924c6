"""Deep mixture models: loss, gradients, Algorithm 3 (batched per-slice), weights files, mu_data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from napari_gmmseg.deep import compute_mu_data, fit_deep, load_model, mixture_loss  # noqa: E402
from napari_gmmseg.deep.mu_data import MuData, load_mu_data, mu_data_array  # noqa: E402
from napari_gmmseg.deep.networks import (  # noqa: E402
    PRESETS,
    NetworkConfig,
    StackedNetworks,
    build_network,
    seeded_network,
)
from napari_gmmseg.deep.optimize import (  # noqa: E402
    StackedAdamW,
    clip_per_network,
    gather_logits,
    optimize_slices,
    slice_seeds,
)
from napari_gmmseg.errors import ModelError, OutputExistsError  # noqa: E402
from napari_gmmseg.labels import CLASS_VALUES, LV_ROI_VALUES  # noqa: E402

TINY = NetworkConfig((4, 8, 16), 0)  # 3 levels, a few thousand parameters


# ----------------------------------------------------------------------------- fixtures
def _synthetic_volume(n_slices=3, size=32, seed=0):
    """Rings of four tissues with distinct means in 3 channels; returns images, roi, classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    cls = np.full((size, size), -1)
    cls[r < 11] = 1
    cls[r < 6] = 0
    cls[(r >= 6) & (r < 11) & (xx > size / 2 + 3)] = 3
    cls[(r >= 6) & (r < 11) & (xx < size / 2 - 3)] = 2
    mus = np.array([[1.0, 0.5, 1.0], [0.0, 0.0, 0.0], [0.2, 0.6, 1.6], [0.2, 1.6, 1.5]])
    img = np.zeros((n_slices, size, size, 3))
    img[:, cls >= 0] = mus[cls[cls >= 0]]
    img += rng.normal(0, 0.2, img.shape)
    roi = np.broadcast_to(cls >= 0, (n_slices, size, size)).copy()
    return img.astype(np.float32), roi, cls


@pytest.fixture(scope="module")
def batch():
    from napari_gmmseg.preprocess import SliceBatch

    img, roi, _ = _synthetic_volume()
    return SliceBatch.from_volume(
        img, roi, channels=("bSSFP", "LGE", "T2"), crop_margin=2, device="cpu"
    )


@pytest.fixture(scope="module")
def phantom_case():
    from napari_gmmseg.phantom import make_case

    return make_case(seed=3, n_slices=3, size=64, case_id="p3")


# ----------------------------------------------------------------------------- loss
def _numpy_loss(logits, x, valid, sv, mu_data=None, lam=1.0, reg=1e-3):
    """Independent float64 NLL / NLL_V after the closed-form M-step (explicit loops)."""
    out = []
    for s in range(x.shape[0]):
        xs = x[s][valid[s]].astype(np.float64)
        lg = logits[s][valid[s]].astype(np.float64)
        w = np.exp(lg - lg.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        nk = w.sum(0)
        pi = nk / len(xs)
        mu = (w.T @ xs) / nk[:, None]
        var = np.stack(
            [(w[:, k : k + 1] * (xs - mu[k]) ** 2).sum(0) / nk[k] for k in range(len(nk))]
        )
        var = var + reg
        logg = -0.5 * (
            np.log(2 * np.pi * var)[None].sum(-1)
            + (((xs[:, None, :] - mu[None]) ** 2) / var[None]).sum(-1)
        )
        prior = w if sv else np.broadcast_to(pi, w.shape)
        val = -np.mean(np.log((prior * np.exp(logg)).sum(1)))
        if mu_data is not None:
            val += lam * ((mu - mu_data) ** 2).sum()
        out.append(val)
    return np.array(out)


@pytest.mark.parametrize("method", ["deepg", "deepsvg", "deepsvg-mu"])
def test_loss_equals_independent_numpy(method):
    rng = np.random.default_rng(1)
    s, n, k, m = 2, 9, 3, 2
    x = rng.normal(size=(s, n, m)).astype(np.float32)
    logits = rng.normal(size=(s, n, k)).astype(np.float32) * 2
    valid = np.ones((s, n), bool)
    valid[1, 6:] = False  # padding
    x[1, 6:] = 0
    mu_data = rng.normal(size=(k, m)) if method == "deepsvg-mu" else None
    terms = mixture_loss(
        torch.from_numpy(logits),
        torch.from_numpy(x),
        torch.from_numpy(valid),
        method=method,
        mu_data=None if mu_data is None else torch.from_numpy(mu_data).float(),
        lam=0.7,
        reg_covar=1e-3,
    )
    ref = _numpy_loss(logits, x, valid, method != "deepg", mu_data, lam=0.7)
    np.testing.assert_allclose(terms.loss.numpy(), ref, rtol=1e-5, atol=1e-5)
    if mu_data is not None:  # the penalty really is there
        assert np.all(terms.loss.numpy() > terms.nll.numpy())
    np.testing.assert_allclose(terms.resp.sum(-1).numpy(), 1.0, atol=1e-6)


def test_loss_rejects_bad_method_and_mu_shape():
    z = torch.zeros(1, 4, 2)
    with pytest.raises(ModelError):
        mixture_loss(torch.zeros(1, 4, 3), z, torch.ones(1, 4, dtype=torch.bool), method="gmm")
    with pytest.raises(ModelError):
        mixture_loss(
            torch.zeros(1, 4, 3), z, torch.ones(1, 4, dtype=torch.bool), mu_data=torch.zeros(4, 2)
        )


# ----------------------------------------------------------------------------- networks
def test_gradients_reach_every_layer(batch):
    nets = StackedNetworks(3, 4, TINY, [1, 2, 3])
    logits = nets(batch.crops)
    assert logits.shape == (3, 4, *batch.crop_shape)
    terms = mixture_loss(gather_logits(logits, batch.flat_index), batch.x, batch.valid)
    grads = torch.autograd.grad(terms.loss.sum(), list(nets.params.values()))
    for name, g in zip(nets.params, grads, strict=True):
        assert torch.isfinite(g).all(), name
        per_net = g.reshape(3, -1).abs().sum(1)
        assert torch.all(per_net > 0), f"no gradient reaches {name}"


def test_stacked_networks_equal_individual_networks(batch):
    seeds = [5, 6, 7]
    nets = StackedNetworks(3, 4, TINY, seeds)
    out = nets(batch.crops)
    for s, seed in enumerate(seeds):
        single = seeded_network(3, 4, TINY, seed)(batch.crops[s : s + 1])[0]
        torch.testing.assert_close(out[s], single, atol=1e-5, rtol=1e-4)


def test_presets_and_config_roundtrip():
    for cfg in PRESETS.values():
        assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    net = build_network(3, 4, PRESETS["small"])
    assert 100_000 < sum(p.numel() for p in net.parameters()) < 300_000
    with pytest.raises(ModelError):
        NetworkConfig((8,))
    with pytest.raises(ModelError):
        StackedNetworks(3, 4, NetworkConfig((4, 8), norm="batch"), [0])


def test_stacked_adamw_and_clipping_match_torch():
    torch.manual_seed(0)
    p = torch.randn(2, 5, 3)
    g = torch.randn(2, 5, 3) * 10
    ref = [p[i].clone().requires_grad_(True) for i in range(2)]
    opts = [torch.optim.AdamW([r], lr=1e-2, weight_decay=1e-3) for r in ref]
    params = {"w": p.clone().requires_grad_(True)}
    opt = StackedAdamW(params, lr=1e-2, weight_decay=1e-3)
    for _ in range(3):
        grads = {"w": g.clone()}
        clip_per_network(grads, 12.0)
        opt.step(grads)
        for i in range(2):
            ref[i].grad = g[i].clone()
            torch.nn.utils.clip_grad_norm_([ref[i]], 12.0)
            opts[i].step()
    for i in range(2):
        torch.testing.assert_close(params["w"][i].detach(), ref[i].detach(), atol=1e-6, rtol=1e-5)
    frozen = params["w"].detach().clone()
    opt.step({"w": g.clone()}, active=torch.tensor([False, True]))
    assert torch.equal(params["w"][0].detach(), frozen[0])
    assert not torch.equal(params["w"][1].detach(), frozen[1])


# ----------------------------------------------------------------------------- Algorithm 3
def _opt(batch, rows=slice(None), seeds=None, **kw):
    seeds = seeds if seeds is not None else slice_seeds(0, batch.slice_index[rows])
    kw = {"network": TINY, "max_epochs": 6, "min_epochs": 6, "tol": 0.0, **kw}
    return optimize_slices(
        batch.x[rows],
        batch.valid[rows],
        batch.crops[rows],
        batch.flat_index[rows],
        seeds=seeds,
        **kw,
    )


def test_few_epochs_lower_the_nll_on_a_phantom_slice(phantom_case):
    from napari_gmmseg.preprocess import SliceBatch

    roi = phantom_case.roi()
    b = SliceBatch.from_volume(
        phantom_case.images, roi, channels=phantom_case.channels, crop_margin=2, device="cpu"
    )
    for method in ("deepg", "deepsvg"):
        st = _opt(b, slice(1, 2), method=method, max_epochs=12, min_epochs=12, lr=3e-3)
        hist = st.nll_history[0].numpy()
        assert np.all(np.isfinite(hist))
        assert hist[-1] < hist[0] - 0.05, (method, hist)


def test_batched_equals_one_slice_at_a_time(batch):
    seeds = slice_seeds(4, batch.slice_index)
    full = _opt(batch, seeds=seeds, method="deepsvg")
    for s in range(batch.n_slices):
        one = _opt(batch, slice(s, s + 1), seeds=seeds[s : s + 1], method="deepsvg")
        torch.testing.assert_close(full.resp[s : s + 1], one.resp, atol=2e-3, rtol=0)
        torch.testing.assert_close(full.nll_history[s : s + 1], one.nll_history, atol=1e-3, rtol=0)


def test_flat_adamw_clips_per_network_in_step():
    torch.manual_seed(1)
    shapes = {"a": (3, 4, 2), "b": (3, 5)}
    init = {k: torch.randn(*sh) for k, sh in shapes.items()}
    grads = {k: torch.randn(*sh) * 20 for k, sh in shapes.items()}
    p1 = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    p2 = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    o1, o2 = StackedAdamW(p1, 1e-2, 1e-3), StackedAdamW(p2, 1e-2, 1e-3)
    g1 = {k: v.clone() for k, v in grads.items()}
    norms = clip_per_network(g1, 12.0)
    o1.step(g1)
    norms2 = o2.step([grads[k].clone() for k in o2.keys], max_norm=12.0)
    torch.testing.assert_close(norms2, norms)
    for k in shapes:
        torch.testing.assert_close(p1[k], p2[k])
        assert p2[k].is_leaf and p2[k].requires_grad
    kept = o2.keep(torch.tensor([2, 0]))
    torch.testing.assert_close(kept["a"].detach(), p1["a"].detach()[[2, 0]])


def test_thread_setting_is_restored_and_leaves_the_result(batch):
    before = torch.get_num_threads()
    one = _opt(batch, method="deepsvg", num_threads=1)
    assert torch.get_num_threads() == before
    two = _opt(batch, method="deepsvg", num_threads=2)
    torch.testing.assert_close(one.resp, two.resp, atol=1e-4, rtol=0)
    with pytest.raises(ModelError):
        _opt(batch, num_threads=0)


def test_stopping_rule_freezes_slices(batch):
    st = _opt(batch, method="deepg", max_epochs=8, min_epochs=3, tol=1e9)
    assert st.n_iter.tolist() == [3, 3, 3]
    assert st.converged.all() and st.finished.all()
    assert torch.isnan(st.nll_history[:, 3:]).all()
    st = _opt(batch, method="deepg", max_epochs=4, min_epochs=2, tol=0.0)
    assert st.n_iter.tolist() == [4, 4, 4]
    assert not st.converged.any() and st.finished.all()


def test_should_stop_keeps_unfinished_slices_marked(batch):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) >= 2

    reports = []
    st = _opt(batch, max_epochs=50, min_epochs=50, should_stop=stop, progress=reports.append)
    assert not st.finished.any()
    assert st.n_iter.tolist() == [2, 2, 2]
    assert reports and reports[0].slices_total == 3
    np.testing.assert_allclose(st.resp.sum(-1)[batch.valid].numpy(), 1.0, atol=1e-5)


def test_fit_deep_result_is_seeded_and_well_formed(batch):
    from napari_gmmseg.mixture import MixtureResult

    kw = {"method": "deepsvg", "network": TINY, "max_epochs": 4, "min_epochs": 2, "device": "cpu"}
    a = fit_deep(batch, seed=1, **kw)
    b = fit_deep(batch, seed=1, **kw)
    c = fit_deep(batch, seed=2, **kw)
    assert isinstance(a, MixtureResult)
    assert a.method == "deepsvg"
    assert a.responsibilities.shape == (*batch.x.shape[:2], 4)
    assert torch.equal(a.responsibilities, b.responsibilities)
    assert torch.equal(a.means, b.means)
    assert not torch.equal(a.responsibilities, c.responsibilities)
    assert torch.all(a.responsibilities[~batch.valid] == 0)
    np.testing.assert_allclose(a.weights.sum(-1).numpy(), 1.0, atol=1e-5)
    assert a.nll_history.dtype == torch.float64


def test_deepsvg_mu_penalty_pulls_means(batch):
    target = np.array([[1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5], [-1.5, -1.5, -1.5]])
    kw = {"network": TINY, "max_epochs": 10, "min_epochs": 10, "device": "cpu", "lr": 3e-3}
    free = fit_deep(batch, method="deepsvg", **kw)
    pulled = fit_deep(batch, method="deepsvg-mu", mu_data=target, lam=5.0, **kw)
    dist = lambda r: float(((r.means.numpy() - target) ** 2).sum())  # noqa: E731
    assert dist(pulled) < dist(free)
    with pytest.raises(ModelError):
        fit_deep(batch, method="deepsvg-mu", mu_data=np.zeros((3, 3)), **kw)


# ----------------------------------------------------------------------------- mu_data
def test_mu_data_equals_class_means_of_normalised_slices(phantom_case, tmp_path):
    table = compute_mu_data([phantom_case], n_images=2, seed=0)
    assert table.means.shape == (4, 3)
    assert table.channels == phantom_case.channels
    # Independent computation on the chosen slices.
    # Statistics of the values clipped to the 0.5-99.5 percentiles of the case's LV ROI.
    lab = phantom_case.labels
    lv = phantom_case.images[np.isin(lab, LV_ROI_VALUES)].astype(np.float64)
    lo, hi = np.percentile(lv, [0.5, 99.5], axis=0)
    ref = []
    for _, z in table.source["slices"]:
        roi = np.isin(lab[z], LV_ROI_VALUES)
        px = phantom_case.images[z][roi].astype(np.float64)
        clipped = np.clip(px, lo, hi)
        px = (px - clipped.mean(0)) / clipped.std(0)
        ref.append([px[lab[z][roi] == v].mean(0) for v in CLASS_VALUES])
    np.testing.assert_allclose(table.means, np.mean(ref, axis=0), atol=1e-5)
    path = table.save(tmp_path / "mu.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["classes"] == ["LV blood pool", "myocardium", "edema", "scar"]
    back = load_mu_data(path)
    np.testing.assert_allclose(back.means, table.means, atol=1e-6)
    with pytest.raises(OutputExistsError):
        table.save(path)
    # Reordered channels follow the names.
    rev = mu_data_array(back, tuple(reversed(back.channels)), 4)
    np.testing.assert_allclose(rev, back.means[:, ::-1], atol=1e-12)


def test_mu_data_with_too_few_slices_warns(phantom_case):
    with pytest.warns(UserWarning, match="using all of them"):
        table = compute_mu_data([phantom_case], n_images=50, seed=0)
    assert table.source["n_images"] == table.source["n_candidates"] >= 1


def test_bad_mu_data_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"channels": ["a"], "means": [[1, 2]]}')
    with pytest.raises(ModelError):
        load_mu_data(bad)
    with pytest.raises(ModelError):
        MuData(np.zeros((4, 2)), ("a", "b")).reorder(("a", "c"))


# ----------------------------------------------------------------------------- Algorithm 4
def test_train_save_load_apply_roundtrip(phantom_case, tmp_path):
    from napari_gmmseg.deep.training import train
    from napari_gmmseg.preprocess import SliceBatch

    out = tmp_path / "model.pt"
    model = train(
        [phantom_case],
        method="deepsvg-mu",
        network=TINY,
        epochs=2,
        batch_size=2,
        mu_images=2,
        out=out,
        device="cpu",
        seed=3,
    )
    assert out.is_file()
    raw = torch.load(out, weights_only=True)
    assert raw["channels"] == list(phantom_case.channels)
    loaded = load_model(out)
    assert loaded.state_dict.keys() == model.state_dict.keys()
    for k, v in model.state_dict.items():
        assert torch.equal(loaded.state_dict[k], v), k  # bit-exact
    assert torch.equal(loaded.mu_data, model.mu_data)
    assert loaded.network == TINY and loaded.method == "deepsvg-mu"
    assert len(loaded.training["loss_history"]) == 2
    with pytest.raises(OutputExistsError):
        train([phantom_case], network=TINY, epochs=1, out=out, device="cpu")

    # Inference on the case: one forward pass, equal to the network applied by hand.
    b = SliceBatch.from_volume(
        phantom_case.images, phantom_case.roi(), channels=phantom_case.channels, device="cpu"
    )
    res = fit_deep(b, method="deepsvg-mu", weights=out, device="cpu")
    net = loaded.build("cpu")
    with torch.no_grad():
        ref = torch.softmax(gather_logits(net(b.crops), b.flat_index), -1) * b.valid[..., None]
    torch.testing.assert_close(res.responsibilities, ref, atol=1e-5, rtol=1e-5)
    assert res.n_iter.tolist() == [1] * b.n_slices
    # Same channels in another order are reordered by name: same answer.
    perm = [2, 0, 1]
    b2 = SliceBatch.from_volume(
        phantom_case.images[..., perm],
        phantom_case.roi(),
        channels=tuple(phantom_case.channels[i] for i in perm),
        device="cpu",
    )
    res2 = fit_deep(b2, method="deepsvg-mu", weights=out, device="cpu")
    torch.testing.assert_close(res2.responsibilities, res.responsibilities, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res2.means, res.means[..., perm], atol=1e-5, rtol=1e-5)


def test_load_model_rejects_foreign_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"hello": 1}, p)
    with pytest.raises(ModelError, match="not a napari-gmmseg"):
        load_model(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ModelError):
        load_model(p)
    with pytest.raises(ModelError):
        load_model(tmp_path / "missing.pt")


def test_slice_seeds_depend_on_seed_and_z_only():
    a = slice_seeds(0, [3, 4, 5])
    assert a[1:] == slice_seeds(0, [4, 5])
    assert a != slice_seeds(1, [3, 4, 5])
    assert len(set(a)) == 3 and all(0 <= v < 2**32 for v in a)
    assert not math.isnan(a[0])


def test_full_covariance_and_segment_front_door(batch):
    res = fit_deep(
        batch, method="deepg", covariance_type="full", network=TINY, max_epochs=2, device="cpu"
    )
    assert res.covariances.shape == (3, 4, 3, 3)
    assert res.covariance_type == "full"
    with pytest.raises(ModelError):
        fit_deep(batch, method="deepg", covariance_type="spherical", network=TINY)

    from napari_gmmseg.segment import segment

    img, roi, _ = _synthetic_volume(n_slices=2)
    fit = segment(
        img,
        roi,
        channels=("bSSFP", "LGE", "T2"),
        method="deepsvg",
        device="cpu",
        network=TINY,
        max_epochs=3,
        min_epochs=2,
    )
    assert fit.method == "deepsvg"
    assert set(np.unique(fit.labels[roi])) <= set(CLASS_VALUES)
    assert np.all(fit.labels[~roi] == 0)


@pytest.mark.gpu
def test_cuda_mixed_precision_run(batch):
    cuda = batch.x.to("cuda")
    assert cuda.is_cuda
    res = fit_deep(batch, method="deepsvg", device="cuda", max_epochs=12, min_epochs=12, lr=3e-3)
    assert res.responsibilities.is_cuda
    hist = res.nll_history[0].cpu().numpy()
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
