"""Linear probe and kNN on features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arlkit.errors import ConfigError
from arlkit.eval.knn import knn_classify
from arlkit.eval.linear import DEFAULT_L2, fit_logistic_many, linear_probe, train_linear


def _separable(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian features, labels by a random hyperplane with a margin."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, d, generator=g) * 3 + 1.0  # not standardised: the probe must cope
    margin = (x - 1.0) @ w
    x = x + 0.5 * torch.sign(margin)[:, None] * w / w.norm()  # push apart: a clear margin
    return x, (margin > 0).long()


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_linear_probe_separates_separable_features(solver: str) -> None:
    x, y = _separable(900, 16, seed=0)
    res = linear_probe(x[:400], y[:400], x[400:500], y[400:500], x[500:], 2, seed=0, solver=solver)
    acc = (res.test_probs.argmax(1) == y[500:].numpy()).mean()
    assert acc >= 0.98
    chosen = res.lr if solver == "sgd" else res.weight_decay
    assert res.selected_on == "val" and chosen in res.val_scores and res.solver == solver
    assert np.allclose(res.test_probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_linear_probe_is_at_chance_on_shuffled_labels(solver: str) -> None:
    x, y = _separable(2400, 16, seed=1)
    y_train = y[:400][torch.randperm(400, generator=torch.Generator().manual_seed(5))]
    res = linear_probe(x[:400], y_train, x[400:600], y[400:600], x[600:], 2, seed=0, solver=solver)
    acc = (res.test_probs.argmax(1) == y[600:].numpy()).mean()
    # 1800 test examples: chance is 0.5 with a standard deviation of ~0.012
    assert abs(acc - 0.5) < 0.06


def test_linear_probe_is_deterministic() -> None:
    x, y = _separable(300, 8, seed=2)
    a = linear_probe(x[:100], y[:100], x[100:150], y[100:150], x[150:], 2, lrs=(0.1, 1.0), seed=4)
    b = linear_probe(x[:100], y[:100], x[100:150], y[100:150], x[150:], 2, lrs=(0.1, 1.0), seed=4)
    assert a.lr == b.lr and np.array_equal(a.test_probs, b.test_probs)


def test_linear_probe_without_validation_selects_on_train() -> None:
    x, y = _separable(60, 4, seed=3)
    res = linear_probe(x[:40], y[:40], x[:0], y[:0], x[40:], 2, lrs=(0.1,), epochs=10)
    assert res.selected_on == "train"
    with pytest.raises(ConfigError, match="empty"):
        train_linear(x[:0], y[:0], 2, 0.1)


def test_knn_by_hand() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    probs = knn_classify(train, labels, test, 2, k=2, temperature=0.1)
    # first query: both nearest neighbours are class 0
    assert probs[0].tolist() == pytest.approx([1.0, 0.0])
    # second query: neighbours are train[2] (class 1) and train[1] (class 0), weighted exp(cos / T)
    q = torch.nn.functional.normalize(test[1:], dim=1)
    sims = (q @ torch.nn.functional.normalize(train, dim=1).T)[0]
    w1, w0 = torch.exp(sims[2] / 0.1), torch.exp(sims[1] / 0.1)
    assert probs[1].tolist() == pytest.approx([float(w0 / (w0 + w1)), float(w1 / (w0 + w1))], rel=1e-5)


@pytest.mark.parametrize("temperature", [0.07, 0.01, 0.005])
def test_knn_equals_dino_votes_at_low_temperatures(temperature: float) -> None:
    """DINO's weights exp(cos / T), normalised, in float64; queries include exact copies of
    training rows (cos = 1), where exp(1 / T) overflows float32 below T = 0.0113."""
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randn(30, 6, generator=g), torch.arange(30) % 3
    test = torch.cat([train[:4], torch.randn(4, 6, generator=g)])
    probs = knn_classify(train, labels, test, 3, k=5, temperature=temperature)
    q = torch.nn.functional.normalize(test.double(), dim=1)
    sim, idx = (q @ torch.nn.functional.normalize(train.double(), dim=1).T).topk(5, dim=1)
    votes = ((sim / temperature).exp()[..., None]
             * torch.nn.functional.one_hot(labels[idx], 3).double()).sum(1)
    ref = votes / votes.sum(1, keepdim=True)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.double(), ref, atol=1e-5)


def test_knn_caps_k_and_checks_arguments() -> None:
    train = torch.randn(3, 4)
    probs = knn_classify(train, torch.tensor([0, 1, 1]), torch.randn(5, 4), 2, k=20)
    assert probs.shape == (5, 2)
    assert torch.allclose(probs.sum(1), torch.ones(5))
    with pytest.raises(ConfigError):
        knn_classify(train, torch.tensor([0, 1, 1]), train, 2, k=0)


def test_sweep_classifiers_equal_single_runs() -> None:
    from arlkit.eval.linear import train_linear_many

    x, y = _separable(120, 6, seed=4)
    many = train_linear_many(x, y, 2, (0.03, 0.3), epochs=5, weight_decay=1e-3, batch_size=32, seed=2)
    for lr, clf in zip((0.03, 0.3), many):
        alone = train_linear(x, y, 2, lr, epochs=5, weight_decay=1e-3, batch_size=32, seed=2)
        assert torch.allclose(clf.linear.weight, alone.linear.weight, atol=1e-6)


def test_sweep_matches_torch_sgd() -> None:
    """The hand-written update is SGD with momentum, L2 decay and a cosine schedule."""
    import math

    x, y = _separable(64, 5, seed=6)
    ours = train_linear(x, y, 2, 0.1, epochs=3, weight_decay=1e-2, batch_size=16, seed=1)
    xs = (x - x.mean(0)) / x.std(0, unbiased=False)
    lin = torch.nn.Linear(5, 2)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD([{"params": [lin.weight], "weight_decay": 1e-2},
                           {"params": [lin.bias], "weight_decay": 0.0}], lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    total, step = 3 * 4, 0
    for _ in range(3):
        order = torch.randperm(64, generator=gen)
        for s in range(0, 64, 16):
            idx = order[s : s + 16]
            for g in opt.param_groups:
                g["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = torch.nn.functional.cross_entropy(lin(xs[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    assert torch.allclose(ours.linear.weight, lin.weight, atol=1e-5)
    assert torch.allclose(ours.linear.bias, lin.bias, atol=1e-5)


def _reference_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, wd: float) -> torch.Tensor:
    """The same objective minimised independently (torch L-BFGS, float64): mean cross-entropy
    plus ``wd / 2 · ‖W‖²`` on standardised features, ``W`` the classifier's own
    ``(num_classes, D)`` weight (the objective the docs state). Returns the logit function's
    weights and bias as one ``(D + 1, num_classes)`` matrix."""
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    z = torch.cat([z, torch.ones(len(z), 1)], 1).double()
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=2000, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w, y) + wd / 2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


@pytest.mark.parametrize("num_classes", [2, 3])
def test_lbfgs_solver_minimises_the_stated_objective(num_classes: int) -> None:
    """The penalty means what the docs say: the fitted probabilities equal those of an
    independent minimisation of the same objective over the classifier's ``(C, D)`` weight,
    two classes included (scikit-learn's one binary logit would otherwise be penalised twice
    as hard)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(150, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
    y = (x[:, :2].sum(1) + torch.randn(150, generator=g) > 4.0).long()
    if num_classes == 3:
        y = y + (x[:, 2] > 2.3).long() * (y == 1).long()  # a third class
    wd = 0.05
    (clf,), (converged,) = fit_logistic_many(x, y, num_classes, (wd,))
    assert converged
    ref = _reference_logistic(x, y, num_classes, wd)
    zs = (x - x.mean(0)) / x.std(0, unbiased=False)
    expected = (torch.cat([zs, torch.ones(len(zs), 1)], 1).double() @ ref).softmax(-1)
    with torch.no_grad():
        got = clf(x).softmax(-1).double()
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
    assert got.argmax(1).float().std() > 0  # a fit that predicts something, not a constant


def test_a_penalty_means_the_same_for_both_solvers_on_two_classes() -> None:
    """SGD run to convergence (full batch, weight decay ``wd``) and L-BFGS at the same ``wd``
    minimise one objective, so they give the same probabilities (the module docstring)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(150, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
    y = (x[:, :2].sum(1) + torch.randn(150, generator=g) > 4.0).long()
    wd = 0.05
    sgd = train_linear(x, y, 2, 0.1, epochs=3000, weight_decay=wd, batch_size=150)
    (lbfgs,), (converged,) = fit_logistic_many(x, y, 2, (wd,))
    assert converged
    with torch.no_grad():
        torch.testing.assert_close(lbfgs(x).softmax(-1), sgd(x).softmax(-1), atol=1e-4, rtol=0)
        torch.testing.assert_close(lbfgs.linear.weight, sgd.linear.weight, atol=1e-3, rtol=0)


def test_lbfgs_solver_handles_absent_and_single_classes() -> None:
    x, y = _separable(200, 6, seed=4)
    y = y * 2  # classes 0 and 2 of 3: class 1 never seen
    (clf,), _ = fit_logistic_many(x, y, 3, (1e-3,))
    with torch.no_grad():
        probs = clf(x).softmax(-1)
    assert probs[:, 1].max() < 1e-6 and (probs.argmax(1) == y).float().mean() > 0.95
    (one,), (converged,) = fit_logistic_many(x, torch.ones(200, dtype=torch.long), 3, (1e-3,))
    with torch.no_grad():
        assert (one(x).argmax(1) == 1).all() and converged
    with pytest.raises(ConfigError, match="> 0"):
        fit_logistic_many(x, y, 3, (0.0,))
    with pytest.raises(ConfigError, match="empty"):
        fit_logistic_many(x[:0], y[:0], 3)


def test_lbfgs_sweep_selects_on_validation_and_prefers_the_stronger_penalty_on_ties() -> None:
    x, y = _separable(600, 8, seed=5)
    res = linear_probe(x[:200], y[:200], x[200:300], y[200:300], x[300:], 2, solver="lbfgs")
    assert set(res.val_scores) == set(DEFAULT_L2) and res.lr is None
    best = max(res.val_scores.values())
    assert res.weight_decay == max(v for v, s in res.val_scores.items() if s == best)
    models, _ = fit_logistic_many(x[:200], y[:200], 2, (res.weight_decay,))
    with torch.no_grad():
        expected = models[0](x[300:]).softmax(-1).numpy()
    assert np.allclose(res.test_probs, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="solver"):
        linear_probe(x[:10], y[:10], x[:0], y[:0], x[:5], 2, solver="adam")  # type: ignore[arg-type]
