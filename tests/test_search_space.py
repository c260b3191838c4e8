"""Per-strategy hyperparameter search spaces (declared beside each method) and how ``vidlit sweep``
uses them: draws from each strategy's own space, ``--hparam`` only for the strategies that accept
the name, unknown names and abbreviations refused with every problem named at once."""
from __future__ import annotations

import shlex

import numpy as np
import pytest

from vidlit.commands import sweep
from vidlit.models.strategy import STRATEGIES, Strategy


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_search_space_entry_is_a_real_argument_with_a_valid_space(name):
    cls = STRATEGIES.get(name)
    space = cls.search_space()
    accepted = cls.hparam_names()
    assert {"model.lr", "model.weight_decay", "model.dropout"} <= set(space)  # the shared base entries
    for key, spec in space.items():
        assert key.startswith("model.") and key.removeprefix("model.") in accepted, (name, key)
        p = sweep.Param.parse(f"{key}={spec}")
        for k in range(1, 20):  # every draw lies inside the declared space
            v = p.draw(np.random.default_rng(k))
            if p.kind == "choice":
                assert v in p.args
            else:
                assert p.args[0] * 0.999 <= v <= p.args[1] * 1.001, (key, v)
    if name != "erm":
        assert cls.__dict__.get("SEARCH_SPACE"), f"{name} declares no search space of its own"


def test_the_method_spaces_hold_domainbeds_hyperparameters():
    assert "model.lambda_value" in STRATEGIES.get("dann").search_space()
    assert "model.disc_weight_decay" in STRATEGIES.get("dann").search_space()
    assert "model.alpha" in STRATEGIES.get("mixup").search_space()
    assert "model.coral_weight" in STRATEGIES.get("coral").search_space()
    assert "model.eta" in STRATEGIES.get("groupdro").search_space()
    assert "model.beta" in STRATEGIES.get("mldg").search_space()
    assert set(STRATEGIES.get("erm").search_space()) == {f"model.{k}" for k in Strategy.SEARCH_SPACE}


def _plan(capsys, *argv: str) -> list[list[str]]:
    assert sweep.main(["--dry_run", "--targets", "texture", "--seeds", "0", "--out", "/tmp/unused-sweep", *argv]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("        ")]


def _flags(cmd: list[str]) -> dict[str, str]:
    return {a.removeprefix("--"): cmd[i + 1] for i, a in enumerate(cmd) if a.startswith("--model.")}


def test_each_strategy_draws_from_its_own_space(capsys):
    commands = _plan(capsys, "--strategies", "dann", "coral", "--n_hparams", "4")
    by_strategy: dict[str, list[dict]] = {}
    for cmd in commands:
        by_strategy.setdefault(cmd[cmd.index("--strategy") + 1], []).append(_flags(cmd))
    assert by_strategy["dann"][0] == {} and by_strategy["coral"][0] == {}  # draw 0: the defaults
    for flags in by_strategy["dann"][1:]:
        assert set(flags) == set(STRATEGIES.get("dann").search_space())
    for flags in by_strategy["coral"][1:]:
        assert set(flags) == set(STRATEGIES.get("coral").search_space())
        assert "model.lambda_value" not in flags


def test_hparam_applies_only_to_the_strategies_that_accept_it(capsys):
    commands = _plan(capsys, "--strategies", "dann", "coral", "--n_hparams", "3", "--hparam", "model.coral_weight=choice:7")
    for cmd in commands[1:]:
        strategy, flags = cmd[cmd.index("--strategy") + 1], _flags(cmd)
        if strategy == "coral" and flags:
            assert flags["model.coral_weight"] == "7"
        assert strategy == "coral" or "model.coral_weight" not in flags  # the dann runs are left alone


def test_unknown_names_and_abbreviations_are_refused_all_at_once(capsys):
    code = sweep.main(["--dry_run", "--strategies", "dann", "--targets", "x", "--n_hparams", "2",
                       "--hparam", "model.lambda_max=uniform:0:1", "--hparam", "model.nope=choice:1", "--hparam", "data.sizes=choice:32"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.lambda_max" in err and "did you mean" in err and "model.lambda_max_iters" in err  # named, not taken
    assert "model.nope" in err and "data.sizes" in err and "data.size" in err
    assert len(err.strip().splitlines()) == 1


def test_show_space_prints_each_strategys_space(capsys):
    assert sweep.main(["--show_space", "--strategies", "erm", "mixup", "--hparam", "model.alpha=choice:0.3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("erm: ") and "model.alpha" not in out[0]
    assert out[1].startswith("mixup: ") and "model.alpha=choice:0.3" in out[1]
