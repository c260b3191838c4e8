"""Every registered backbone's stages cover every trainable layer: ``--model.freeze all_but_N`` and
``--model.llrd`` act on stages, so a layer outside every stage is frozen by ``all_but_N`` (even with
N = all stages) and trained at the lowest stage's lr by ``llrd`` whatever its depth (X3D's head block,
a third of X3D-XS's parameters, did both)."""
from __future__ import annotations

import pytest

from vidlit.backbones import BACKBONES, build_backbone


@pytest.mark.parametrize("name", BACKBONES.names())
def test_stages_partition_the_parameters_in_order(name):
    """The invariant: the stages, taken in ``stage_names`` order, hold every parameter of the backbone
    exactly once, and in the order the network registers them (input to output for these networks: a
    layer near the output is never put in an earlier stage than a layer before it)."""
    bb = build_backbone(name)  # random weights: nothing is downloaded
    stages = bb.stages()
    assert len(stages) == len(bb.stage_names) >= 3
    owner: dict[int, list[int]] = {}
    for i, stage in enumerate(stages):
        for p in stage.parameters():
            owner.setdefault(id(p), []).append(i)
    params = list(bb.named_parameters())
    outside = [n for n, p in params if id(p) not in owner]
    assert not outside, f"{name}: {len(outside)} parameter(s) in no stage, e.g. {outside[:4]}"
    twice = [n for n, p in params if len(owner[id(p)]) > 1]
    assert not twice, f"{name}: parameter(s) in more than one stage: {twice[:4]}"
    order = [owner[id(p)][0] for _, p in params]
    assert order == sorted(order), f"{name}: stages out of order: {[(n, owner[id(p)][0]) for n, p in params][:8]}"
    assert any(True for _ in stages[-1].parameters())  # all_but_1 trains something (SlowFast's last was its pooling)


def test_x3d_head_block_trains_with_the_last_stage():
    """How the stages are used: ``all_but_1`` trains X3D's last stage and its head block (pre_conv, its
    BatchNorm, post_conv), and ``llrd`` gives them the top stage's lr, not the lowest."""
    from strategies.erm import ERM

    model = ERM(num_classes=3, num_domains=2, backbone="x3d_xs", freeze="all_but_1")
    head_block = {n for n, _ in model.backbone.net.blocks[5].named_parameters()}
    assert {"pool.pre_conv.weight", "pool.pre_norm.weight", "pool.post_conv.weight"} <= head_block
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    last = {f"net.blocks.4.{n}" for n, _ in model.backbone.net.blocks[4].named_parameters()}
    assert trainable == last | {f"net.blocks.5.{n}" for n in head_block}

    model = ERM(num_classes=3, num_domains=2, backbone="x3d_xs", lr=0.01, backbone_lr_mult=1.0, llrd=0.5)
    lr_of = {id(p): g["lr"] for g in model.param_groups() for p in g["params"]}
    names = model.backbone.stage_names
    assert {lr_of[id(p)] for p in model.backbone.net.blocks[5].parameters()} == {0.01}  # the top stage's
    assert {lr_of[id(p)] for p in model.backbone.net.blocks[0].parameters()} == {0.01 * 0.5 ** (len(names) - 1)}
