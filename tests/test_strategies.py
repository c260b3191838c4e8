"""Correctness of the DG strategies and their building blocks (fast, in-process, tiny tensors).

End-to-end CLI runs (DDP with identical weights on both ranks, bf16 through the CLI) are in
tests/test_strategy_cli.py.
"""
from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidlit.models import mixstyle as mixstyle_mod
from vidlit.models.backbones import Backbone, _frames_forward, build_backbone
from vidlit.models.losses import coral_penalty, cross_domain_partners, grad_reverse, grl_lambda, inject_grad, sample_beta
from vidlit.models.mixstyle import MixStyleHooks, mix_statistics
from vidlit.models.strategy import STRATEGIES
from strategies.mldg import meta_objective

K, C = 3, 3  # source domains, classes


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is ~10x faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# every strategy configuration the overfit and bf16 tests run
CONFIGS = [
    ("erm", {}),
    # constant lambda: without a Trainer global_step stays 0, where the default ramp (ganin) is 0
    ("dann", {"lambda_schedule": "constant"}),
    ("dann", {"lambda_schedule": "constant", "conditional": True, "class_balance": True, "target_domain_class": True}),
    ("mixup", {}),
    ("mixup", {"mode": "mixstyle", "mixstyle_p": 1.0, "mix": "crossdomain"}),
    ("mldg", {"order": "first"}),
    ("mldg", {"order": "second"}),
    ("coral", {}),
    ("groupdro", {}),
    ("fish", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" if kw else n for n, kw in CONFIGS]


def make(name: str, seed: int = 0, **kw) -> pl.LightningModule:
    torch.manual_seed(seed)
    return STRATEGIES.get(name)(num_classes=C, num_domains=K, **kw).train()


def tiny_batch(per_domain: int = 2, t: int = 4, size: int = 16, seed: int = 0, target: int = 0) -> dict:
    """Normalised float clips (B, 3, T, S, S), B = K * per_domain, every domain and class present."""
    g = torch.Generator().manual_seed(seed)
    b = K * per_domain
    batch = {
        "video": torch.randn(b, 3, t, size, size, generator=g),
        "label": torch.arange(b) % C,
        "domain": torch.arange(b) // per_domain,
    }
    if target:
        batch["target_video"] = torch.randn(target, 3, t, size, size, generator=g)
    return batch


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


# --------------------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, 2.5])
def test_grl_is_identity_forward_and_exactly_minus_lambda_backward(lambd):
    x = torch.randn(5, 7, requires_grad=True)
    g = torch.randn(5, 7)
    y = grad_reverse(x, lambd)
    assert torch.equal(y, x)
    y.backward(g)
    assert torch.equal(x.grad, g * -lambd)


def test_lambda_schedules_match_their_formulas():
    assert grl_lambda("constant", 0, 100, value=0.7) == grl_lambda("constant", 99, 100, value=0.7) == 0.7
    for step, total in [(0, 100), (10, 100), (50, 100), (100, 100), (250, 100)]:
        p = min(1.0, step / total)
        expected = 0.5 * (2 / (1 + math.exp(-10 * p)) - 1)
        assert grl_lambda("ganin", step, total, value=0.5) == pytest.approx(expected, abs=1e-12)
    assert grl_lambda("ganin", 0, 100) == 0.0
    assert grl_lambda("ganin", 50, 100) == pytest.approx(0.9866142981514305)
    for i in [0, 100, 1000, 5000]:
        lo, hi, alpha, n = 0.2, 1.0, 10.0, 1000
        expected = 2 * (hi - lo) / (1 + math.exp(-alpha * i / n)) - (hi - lo) + lo
        assert grl_lambda("warmstart", i, 1, value=hi, lo=lo, alpha=alpha, max_iters=n) == pytest.approx(expected, abs=1e-12)
    assert grl_lambda("warmstart", 0, 1, value=1.0, lo=0.2) == pytest.approx(0.2)
    assert grl_lambda("warmstart", 1000, 1, value=1.0, alpha=1.0, max_iters=1000) == pytest.approx(0.46211715726000974)
    with pytest.raises(ValueError, match="lambda_schedule"):
        grl_lambda("linear", 0, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- CORAL
def test_coral_penalty_matches_the_pairwise_definition():
    torch.manual_seed(0)
    feats = torch.randn(12, 5) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    domain = torch.tensor([0] * 4 + [1] * 5 + [2] * 3)
    feats[domain == 1] += 1.5
    expected, pairs = 0.0, 0
    for a in range(3):
        for b in range(a + 1, 3):
            xa, xb = feats[domain == a], feats[domain == b]
            expected += (xa.mean(0) - xb.mean(0)).pow(2).mean() + (torch.cov(xa.T) - torch.cov(xb.T)).pow(2).mean()
            pairs += 1
    assert coral_penalty(feats, domain).item() == pytest.approx((expected / pairs).item(), rel=1e-5)
    same = torch.randn(4, 5)
    assert coral_penalty(torch.cat([same, same, same]), domain.new_tensor([0] * 4 + [1] * 4 + [2] * 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_coral_strategy_adds_the_weighted_penalty():
    batch = tiny_batch()
    m = make("coral", coral_weight=3.0)
    loss, extra = m.compute_loss(batch)
    assert loss.item() == pytest.approx(extra["cls_loss"].item() + 3.0 * extra["coral_penalty"].item(), rel=1e-6)
    assert extra["coral_penalty"].item() > 0


# --------------------------------------------------------------------------- DANN
def test_dann_discriminator_learns_domain_separable_features():
    m = make("dann")
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(K, m.backbone.out_dim, generator=g)
    domain = torch.arange(90) % K
    feats = centres[domain] + 0.8 * torch.randn(90, m.backbone.out_dim, generator=g)
    opt = torch.optim.Adam(m.discriminator.parameters(), lr=1e-3)
    for _ in range(60):
        loss, acc = m.domain_loss(feats, domain, None, None, lambd=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, acc = m.domain_loss(feats, domain, None, None, lambd=1.0)
    assert acc.item() > 0.95


def test_dann_backbone_receives_the_reversed_domain_gradient():
    batch = tiny_batch()
    lambd = 0.7
    m = make("dann", lambda_schedule="constant", lambda_value=lambd)
    loss, extra = m.compute_loss(batch)
    assert extra["lambda"].item() == pytest.approx(lambd)
    loss.backward()
    total = grads(m)

    m.zero_grad()
    feats = m.features(batch["video"])
    F.cross_entropy(m.head(feats), batch["label"]).backward()
    cls = grads(m)
    m.zero_grad()
    F.cross_entropy(m.discriminator(m.features(batch["video"])), batch["domain"]).backward()
    dom = grads(m)

    bb = [n for n in total if n.startswith("backbone.")]
    assert bb
    for n in bb:
        torch.testing.assert_close(total[n], cls[n] - lambd * dom[n], rtol=1e-4, atol=1e-6)
    for n in (n for n in total if n.startswith("discriminator.")):  # D itself descends its own loss
        torch.testing.assert_close(total[n], dom[n], rtol=1e-4, atol=1e-6)


def test_dann_feeds_unlabeled_target_clips_to_the_discriminator_only(monkeypatch):
    batch = tiny_batch(target=4)
    m = make("dann", conditional=True, target_domain_class=True)
    assert m.disc_classes == K + 1
    seen = {}
    original = m.domain_loss

    def spy(feats, domain, probs, weight, lambd):
        seen.update(n=feats.shape[0], domain=domain.clone(), probs=probs)
        return original(feats, domain, probs, weight, lambd)

    monkeypatch.setattr(m, "domain_loss", spy)
    loss, extra = m.compute_loss(batch)
    b = batch["label"].shape[0]
    assert seen["n"] == b + 4
    assert torch.equal(seen["domain"], torch.cat([batch["domain"], torch.full((4,), K)]))
    assert torch.equal(seen["probs"][:b], F.one_hot(batch["label"], C).float())
    assert not seen["probs"].requires_grad and torch.allclose(seen["probs"][b:].sum(1), torch.ones(4))
    feats = m.features(torch.cat([batch["video"], batch["target_video"]]))
    assert extra["cls_loss"].item() == pytest.approx(F.cross_entropy(m.head(feats)[:b], batch["label"]).item(), rel=1e-5)
    loss.backward()
    assert m.class_embed.weight.grad is not None and m.class_embed.weight.grad.abs().sum() > 0

    k_way = make("dann")
    with pytest.raises(ValueError, match="target_video"):
        k_way.compute_loss(batch)


def test_dann_checkpoint_with_a_target_class_loads_into_a_k_way_model():
    trained = make("dann", target_domain_class=True)
    checkpoint = {"state_dict": trained.state_dict()}
    fresh = make("dann", seed=1)
    assert fresh.disc_classes == K
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert fresh.disc_classes == K + 1 and fresh.hparams.target_domain_class is True


# --------------------------------------------------------------------------- Mixup
def test_mixup_with_lambda_one_equals_erm(monkeypatch):
    batch = tiny_batch()
    erm, mix = make("erm"), make("mixup")
    ones = torch.ones(batch["label"].shape[0])
    monkeypatch.setattr(mix, "draw_mix", lambda domain, g: (ones, cross_domain_partners(domain, g)))
    loss_e, _ = erm.compute_loss(batch)
    loss_m, _ = mix.compute_loss(batch)
    torch.testing.assert_close(loss_m, loss_e, rtol=1e-6, atol=1e-7)
    loss_e.backward()
    loss_m.backward()
    assert_grads_close(grads(mix), grads(erm), rtol=1e-5, atol=1e-7)


def test_mixup_mixes_clips_and_labels_with_a_partner_from_another_domain():
    batch = tiny_batch()
    m = make("mixup")
    lam, partner = m.draw_mix(batch["domain"], m.step_generator())
    assert lam.shape == batch["label"].shape and ((lam > 0) & (lam < 1)).all()
    assert (batch["domain"][partner] != batch["domain"]).all()
    again = m.draw_mix(batch["domain"], m.step_generator())  # same step: same draws (resumable)
    assert torch.equal(again[0], lam) and torch.equal(again[1], partner)
    loss, _ = m.compute_loss(batch)
    w = lam.view(-1, 1, 1, 1, 1)
    logits = m(w * batch["video"] + (1 - w) * batch["video"][partner])
    y = batch["label"]
    expected = (lam * F.cross_entropy(logits, y, reduction="none") + (1 - lam) * F.cross_entropy(logits, y[partner], reduction="none")).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sample_beta_and_partners_are_reproducible_from_the_generator():
    a = sample_beta(0.2, 64, torch.Generator().manual_seed(3))
    b = sample_beta(0.2, 64, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, sample_beta(0.2, 64, torch.Generator().manual_seed(4)))
    assert ((a >= 0) & (a <= 1)).all()
    single = cross_domain_partners(torch.zeros(5, dtype=torch.long), torch.Generator().manual_seed(0))
    assert (single != torch.arange(5)).all()  # one domain only: any other clip


# --------------------------------------------------------------------------- MixStyle
def test_mix_statistics_transfers_the_partner_statistics():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 3, 5, 5) * torch.arange(1, 5).view(4, 1, 1, 1, 1) + torch.arange(4).view(4, 1, 1, 1, 1)
    partner = torch.tensor([1, 2, 3, 0])
    dims = (2, 3, 4)
    torch.testing.assert_close(mix_statistics(x, torch.ones(4), partner, dims), x, rtol=1e-4, atol=1e-4)
    out = mix_statistics(x, torch.zeros(4), partner, dims)
    torch.testing.assert_close(out.mean(dims), x[partner].mean(dims), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.std(dims), x[partner].std(dims), rtol=1e-3, atol=1e-4)
    last = mix_statistics(x.permute(0, 2, 3, 4, 1), torch.full((4,), 0.3), partner, (1, 2, 3))  # channels-last layout
    torch.testing.assert_close(last, mix_statistics(x, torch.full((4,), 0.3), partner, dims).permute(0, 2, 3, 4, 1))


@pytest.mark.parametrize("name, shape", [("tiny3d", (4, 3, 4, 16, 16)), ("tsm_resnet18", (4, 3, 2, 32, 32))])
def test_mixstyle_hooks_keep_shapes_and_change_nothing_with_p0_or_in_eval(name, shape):
    torch.manual_seed(0)
    bb = build_backbone(name).train()
    x = torch.randn(shape)
    domain = torch.tensor([0, 0, 1, 1])
    with torch.no_grad():
        ref = bb(x)
        off = MixStyleHooks(bb, p=0.0)
        with off.context(torch.Generator().manual_seed(0), domain):
            assert torch.equal(bb(x), ref)
        off.remove()
        on = MixStyleHooks(bb, p=1.0, pairing="crossdomain")
        with on.context(torch.Generator().manual_seed(0), domain):
            mixed = bb(x)
        assert mixed.shape == ref.shape and not torch.allclose(mixed, ref)
        assert torch.equal(bb(x), ref)  # outside a training step's context: inactive
        bb.eval()
        ref_eval = bb(x)
        with on.context(torch.Generator().manual_seed(0), domain):
            assert torch.equal(bb(x), ref_eval)


def test_mixstyle_per_frame_features_pair_whole_clips_with_per_frame_statistics(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Identity())
    bb = Backbone(net, 4, ["0", "1"], _frames_forward).train()
    seen = {}
    net[1].register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    hooks = MixStyleHooks(bb, stages=["0"], p=1.0)
    monkeypatch.setattr(mixstyle_mod, "sample_beta", lambda alpha, n, g: torch.zeros(n))
    monkeypatch.setattr(mixstyle_mod, "random_partners", lambda b, g, device=None: torch.tensor([1, 0]))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 8, 8)  # B = 2 clips, T = 3 frames -> stage output (6, 4, 8, 8)
    x[1] = x[1] * 3 + 2
    with hooks.context(torch.Generator().manual_seed(0)):
        bb(x)
    out = seen["x"].view(2, 3, 4, 8, 8)
    plain = net[0](x.transpose(1, 2).reshape(6, 3, 8, 8)).view(2, 3, 4, 8, 8)
    # lam = 0: clip 0's frame t takes clip 1's frame-t statistics over (H, W), and vice versa
    torch.testing.assert_close(out[0].mean((2, 3)), plain[1].mean((2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1].std((2, 3)), plain[0].std((2, 3)), rtol=1e-3, atol=1e-4)


class _TwoPathways(nn.Module):
    """A stage with a list output, like SlowFast's: [slow (B, C, T/2, H, W), fast (B, C, T, H, W)]."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, :, ::2] * 2 + 1, x]


def test_mixstyle_mixes_every_pathway_of_a_list_output_with_the_same_pairs(monkeypatch):
    net = nn.Sequential()
    net.add_module("paths", _TwoPathways())
    seen = {}
    bb = Backbone(net, 3, ["paths"], lambda n, x: seen.setdefault("out", n(x))[1].mean((2, 3, 4))).train()
    monkeypatch.setattr(mixstyle_mod, "sample_beta", lambda alpha, n, g: torch.zeros(n))
    hooks = MixStyleHooks(bb, stages=["paths"], p=1.0)
    x = torch.randn(3, 3, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1, 1)
    with hooks.context(torch.Generator().manual_seed(0)):
        bb(x)
    slow, fast = seen["out"]
    assert slow.shape == (3, 3, 2, 5, 5) and fast.shape == x.shape
    plain = _TwoPathways()(x)
    # lam = 0: each clip carries its partner's statistics in both pathways, with one partner per clip
    std_fast = fast.std((2, 3, 4))
    partner = [int((std_fast[i, 0] - plain[1].std((2, 3, 4))[:, 0]).abs().argmin()) for i in range(3)]
    assert sorted(partner) == [0, 1, 2] and partner != [0, 1, 2]
    torch.testing.assert_close(slow.std((2, 3, 4)), plain[0].std((2, 3, 4))[partner], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(std_fast, plain[1].std((2, 3, 4))[partner], rtol=1e-3, atol=1e-4)


def test_mixstyle_rejects_unknown_stages():
    with pytest.raises(ValueError, match="layer9"):
        make("mixup", mode="mixstyle", mixstyle_stages=["layer9"])


# --------------------------------------------------------------------------- MLDG
def _linear_problem():
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    xv, yv = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    return xs, ys, xv, yv, w


@pytest.mark.parametrize("order", ["first", "second"])
def test_mldg_gradient_matches_the_hand_derived_one_on_a_linear_model(order):
    xs, ys, xv, yv, w = _linear_problem()
    alpha, beta = 0.3, 0.7
    loss = lambda x, y, v: 0.5 * (x @ v - y).pow(2).mean()  # noqa: E731
    total, _ = meta_objective(loss(xs, ys, w), {"w": w}, lambda p: loss(xv, yv, p["w"]), alpha, beta, order)
    total.backward()

    with torch.no_grad():
        g_s = xs.T @ (xs @ w - ys) / len(ys)
        h_s = xs.T @ xs / len(ys)
        w_adapted = w - alpha * g_s
        g_v = xv.T @ (xv @ w_adapted - yv) / len(yv)
        expected = g_s + beta * (g_v if order == "first" else (torch.eye(4, dtype=w.dtype) - alpha * h_s) @ g_v)
    torch.testing.assert_close(w.grad, expected, rtol=1e-10, atol=1e-12)
    first_vs_second = (torch.eye(4, dtype=w.dtype) - alpha * h_s) @ g_v - g_v
    assert first_vs_second.abs().max() > 1e-3  # the two orders really differ on this problem


def test_mldg_second_order_matches_autograd_through_the_inner_step_on_a_tiny_mlp():
    g = torch.Generator().manual_seed(0)
    xs, xv = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ys, yv = torch.randint(0, 2, (6,), generator=g), torch.randint(0, 2, (4,), generator=g)
    params = {"w1": torch.randn(3, 5, generator=g, dtype=torch.float64), "w2": torch.randn(5, 2, generator=g, dtype=torch.float64)}
    loss = lambda p, x, y: F.cross_entropy(torch.tanh(x @ p["w1"]) @ p["w2"], y)  # noqa: E731
    alpha, beta = 0.5, 2.0

    def objective(p):  # written out with torch.func: L_S(p) + beta L_V(p - alpha grad L_S(p))
        inner = torch.func.grad(loss)(p, xs, ys)
        return loss(p, xs, ys) + beta * loss({k: p[k] - alpha * inner[k] for k in p}, xv, yv)

    expected = torch.func.grad(objective)(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    total, _ = meta_objective(loss(leaves, xs, ys), leaves, lambda p: loss(p, xv, yv), alpha, beta, "second")
    total.backward()
    for k in params:
        torch.testing.assert_close(leaves[k].grad, expected[k], rtol=1e-10, atol=1e-12)


def test_mldg_strategy_first_order_equals_a_deep_copy_reference():
    batch = tiny_batch()
    alpha, beta = 0.05, 0.5
    m = make("mldg", inner_lr=alpha, beta=beta)
    ref = copy.deepcopy(m)
    meta_test = batch["domain"] == 2
    total, extra = m.meta_loss(batch, meta_test)
    total.backward()
    assert all(p.is_leaf for p in m.parameters())  # functional parameters never stay in the module

    s, v = ~meta_test, meta_test
    params = [p for p in ref.parameters() if p.requires_grad]
    loss_s = F.cross_entropy(ref(batch["video"][s]), batch["label"][s])
    g_s = torch.autograd.grad(loss_s, params)
    adapted = copy.deepcopy(ref)  # DomainBed's way: a copy, one SGD step on meta-train
    with torch.no_grad():
        for p, g in zip((p for p in adapted.parameters() if p.requires_grad), g_s):
            p -= alpha * g
    loss_v = F.cross_entropy(adapted(batch["video"][v]), batch["label"][v])
    g_v = torch.autograd.grad(loss_v, [p for p in adapted.parameters() if p.requires_grad])
    assert extra["meta_test_loss"].item() == pytest.approx(loss_v.item(), rel=1e-5)
    assert total.item() == pytest.approx(loss_s.item() + beta * loss_v.item(), rel=1e-5)
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    expected = {n: a + beta * b for n, a, b in zip(names, g_s, g_v)}
    assert_grads_close(grads(m), expected, rtol=1e-4, atol=1e-6)


def test_mldg_strategy_second_order_equals_autograd_of_the_full_objective():
    """The strategy's second-order gradient equals plain autograd of
    L_S(theta) + beta * L_V(theta - alpha * grad L_S(theta)) on the same network (float64), built
    without meta_objective's injected-gradient shortcut; and it differs from first order."""
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batch().items()}
    alpha, beta = 0.05, 0.7
    second = make("mldg", order="second", inner_lr=alpha, beta=beta).double()
    first = copy.deepcopy(second)
    first.hparams.order = "first"
    ref = copy.deepcopy(second)
    meta_test = batch["domain"] == 0
    for m in (second, first):
        total, _ = m.meta_loss(batch, meta_test)
        total.backward()
        assert all(p.is_leaf for p in m.parameters())

    s, v = ~meta_test, meta_test
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    params = [p for p in ref.parameters() if p.requires_grad]
    loss_s = F.cross_entropy(ref(batch["video"][s]), batch["label"][s])
    g_s = torch.autograd.grad(loss_s, params, create_graph=True)
    adapted = {n: p - alpha * g for n, p, g in zip(names, params, g_s)}
    loss_v = F.cross_entropy(torch.func.functional_call(ref, adapted, (batch["video"][v],)), batch["label"][v])
    expected = dict(zip(names, torch.autograd.grad(loss_s + beta * loss_v, params)))
    assert_grads_close(grads(second), expected, rtol=1e-7, atol=1e-10)
    g1 = grads(first)
    assert max((g1[n] - expected[n]).abs().max().item() for n in names) > 1e-6  # the orders really differ here


def test_mldg_splits_domains_into_meta_train_and_meta_test():
    m = make("mldg", n_meta_test=2)
    domain = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = m.split_domains(domain, torch.Generator().manual_seed(0))
    assert len(domain[mask].unique()) == 2 and len(domain[~mask].unique()) == 1
    assert torch.equal(mask, m.split_domains(domain, torch.Generator().manual_seed(0)))
    two = m.split_domains(torch.tensor([0, 1, 1]), torch.Generator().manual_seed(0))
    assert two.any() and (~two).any()  # never every domain in meta-test
    with pytest.raises(ValueError, match="2 source domains"):
        STRATEGIES.get("mldg")(num_classes=C, num_domains=1)


# --------------------------------------------------------------------------- GroupDRO and Fish
def test_groupdro_updates_q_and_weights_the_domain_losses():
    batch = tiny_batch()
    m = make("groupdro", eta=0.5)
    loss, _ = m.compute_loss(batch)
    with torch.no_grad():
        ce = F.cross_entropy(m(batch["video"]), batch["label"], reduction="none")
        per_domain = torch.stack([ce[batch["domain"] == d].mean() for d in range(K)])
        q = torch.full((K,), 1 / K) * (0.5 * per_domain).exp()
        q /= q.sum()
    torch.testing.assert_close(m.q, q, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx((q * per_domain).sum().item(), rel=1e-5)


def test_fish_gradient_is_the_mean_of_sequential_inner_gradients():
    batch = tiny_batch()
    alpha = 0.05
    m = make("fish", inner_lr=alpha)
    ref = copy.deepcopy(m)
    loss, _ = m.compute_loss(batch)
    loss.backward()
    assert all(p.is_leaf for p in m.parameters())
    order = batch["domain"].unique()[torch.randperm(K, generator=m.step_generator())]
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in ref.named_parameters() if p.requires_grad}
    for d in order:  # inner SGD steps on a copy, one domain at a time
        mask = batch["domain"] == d
        params = [p for p in ref.parameters() if p.requires_grad]
        g = torch.autograd.grad(F.cross_entropy(ref(batch["video"][mask]), batch["label"][mask]), params)
        with torch.no_grad():
            for n, p, gi in zip(names, params, g):
                p -= alpha * gi
                total[n] += gi / K
    assert_grads_close(grads(m), total, rtol=1e-4, atol=1e-6)


def test_inject_grad_is_zero_valued_with_the_given_gradient():
    p = {"a": torch.randn(3, requires_grad=True), "b": torch.randn(2, 2, requires_grad=True)}
    g = {"a": torch.randn(3), "b": torch.randn(2, 2)}
    out = inject_grad(p, g)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(p["a"].grad, g["a"]) and torch.equal(p["b"].grad, g["b"])


# --------------------------------------------------------------------------- every strategy
@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_every_strategy_overfits_a_tiny_batch(name, kw):
    batch = tiny_batch(target=2 if kw.get("target_domain_class") else 0, seed=1)
    m = make(name, **kw)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(30):
        m.step_generator = lambda step=step: torch.Generator().manual_seed(step)  # fresh draws each step, as global_step gives
        loss, _ = m.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # train-mode BN (batch statistics); mixing is off outside compute_loss
        ce = F.cross_entropy(m(batch["video"]), batch["label"]).item()
        acc = (m(batch["video"]).argmax(1) == batch["label"]).float().mean().item()
    assert acc == 1.0 and ce < 0.3, (acc, ce)


class _Batches(torch.utils.data.Dataset):
    """Pre-made uint8 batches, as the DataModule delivers them (normalised on the device)."""

    def __init__(self, n: int, target: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(n):
            # 8 clips per domain: with 2, per-domain BatchNorm (Fish's, MLDG's sub-batches) is so ill-conditioned
            # that bf16 rounding alone turns their gradients (cosine 0.14 to fp32's for Fish; 0.997 with 8)
            b = tiny_batch(per_domain=8, seed=int(torch.randint(0, 1000, (1,), generator=g)), target=2 if target else 0)
            for key in ("video", "target_video"):
                if key in b:
                    b[key] = torch.randint(0, 256, b[key].shape, generator=g, dtype=torch.uint8)
            self.items.append(b)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class _FirstGrads(pl.Callback):
    """The (unscaled) gradients of the first optimizer step."""

    grads: dict[str, torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.grads is None:
            self.grads = {n: p.grad.detach().float().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _first_step_grads(name: str, kw: dict, precision: str) -> tuple[dict, pl.Trainer, nn.Module]:
    m = make(name, **kw)  # same seed: same initial weights and the same draws inside the step
    grabbed = _FirstGrads()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1, callbacks=[grabbed],
    )
    loader = torch.utils.data.DataLoader(_Batches(3, bool(kw.get("target_domain_class"))), batch_size=None)
    trainer.fit(m, train_dataloaders=loader)
    return grabbed.grads, trainer, m


@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_every_strategy_trains_with_bf16_mixed(name, kw):
    """bf16 autocast gives every trainable parameter a finite gradient that points where fp32's
    does on the same batch (a step that lost the gradient, or a sign, would not); AdamW's weight
    decay moves parameters without any gradient, so parameters that changed prove nothing."""
    bf16, trainer, m = _first_step_grads(name, kw, "bf16-mixed")
    fp32, _, _ = _first_step_grads(name, kw, "32-true")
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(p).all() for p in m.parameters())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(bf16) == set(fp32) == trainable
    assert all(torch.isfinite(g).all() for g in bf16.values())
    a = torch.cat([bf16[n].flatten() for n in sorted(trainable)])
    b = torch.cat([fp32[n].flatten() for n in sorted(trainable)])
    assert b.norm() > 0
    assert F.cosine_similarity(a, b, dim=0) > 0.98, F.cosine_similarity(a, b, dim=0)  # measured: >= 0.99
    assert (a - b).norm() / b.norm() < 0.2


def test_dann_optimises_the_adversary_in_its_own_group():
    """DomainBed's adversarial optimisation in one optimizer (plain DDP): Adam betas (0.5, 0.9) for
    every group, no weight decay and its own lr multiplier on the discriminator and class embedding."""
    m = make("dann", conditional=True, disc_lr_mult=2.0, lr=1e-3)
    groups = {g["name"]: g for g in m.param_groups()}
    adversary = {id(p) for mod in (m.discriminator, m.class_embed) for p in mod.parameters()}
    assert {id(p) for p in groups["discriminator"]["params"]} == adversary
    assert groups["discriminator"]["weight_decay"] == 0.0 and groups["discriminator"]["lr"] == pytest.approx(2e-3)
    assert not adversary & {id(p) for g in ("backbone", "head") for p in groups[g]["params"]}
    every = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in m.parameters() if p.requires_grad)  # each parameter once
    assert tuple(m.hparams.betas) == (0.5, 0.9) and m.hparams.lambda_schedule == "ganin"
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_progress_bar=False)
    m.trainer = trainer
    opt = m.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and all(g["betas"] == (0.5, 0.9) for g in opt.param_groups)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["discriminator"] == 0.0
