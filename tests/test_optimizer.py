"""AdaMax argument checks: the exception type MindSpore 2.10 raises for each case.

The expected types were recorded by running ``mindspore.nn.AdaMax`` 2.10.0 on the same
arguments (MindSpore is not a test dependency). Where we differ on purpose, the case is listed
in DELIBERATE with the reason (also in the README).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adamax_onnx as ax

NAN, INF = math.nan, math.inf

# case -> (kwargs, type MindSpore raises or None for accepted)
MINDSPORE_RECORDED = {
    "lr_str": ({"learning_rate": "abc"}, ValueError),
    "lr_none": ({"learning_rate": None}, TypeError),
    "lr_neg": ({"learning_rate": -0.1}, ValueError),
    "lr_obj": ({"learning_rate": object()}, TypeError),
    "lr_nan": ({"learning_rate": NAN}, ValueError),
    "lr_inf": ({"learning_rate": INF}, ValueError),
    "lr_bool": ({"learning_rate": True}, None),
    "lr_int": ({"learning_rate": 1}, None),
    "lr_list": ({"learning_rate": [0.1, 0.2]}, None),
    "lr_tuple_neg_entry": ({"learning_rate": (-1.0, 0.1)}, None),
    "beta1_int": ({"beta1": 1}, TypeError),
    "beta1_zero": ({"beta1": 0.0}, ValueError),
    "beta1_one": ({"beta1": 1.0}, ValueError),
    "beta1_str": ({"beta1": "0.9"}, TypeError),
    "beta2_neg": ({"beta2": -0.5}, ValueError),
    "beta2_bool": ({"beta2": True}, TypeError),
    "eps_zero": ({"eps": 0.0}, ValueError),
    "eps_int": ({"eps": 1}, TypeError),
    "eps_neg": ({"eps": -1e-8}, ValueError),
    "eps_inf": ({"eps": INF}, ValueError),
    "eps_nan": ({"eps": NAN}, ValueError),
    "wd_neg": ({"weight_decay": -0.1}, ValueError),
    "wd_str": ({"weight_decay": "0.1"}, TypeError),
    "wd_bool": ({"weight_decay": True}, None),
    "wd_int": ({"weight_decay": 1}, None),
    "wd_inf": ({"weight_decay": INF}, ValueError),
    "wd_nan": ({"weight_decay": NAN}, ValueError),
    "ls_zero": ({"loss_scale": 0.0}, ValueError),
    "ls_neg": ({"loss_scale": -1.0}, ValueError),
    "ls_str": ({"loss_scale": "1"}, TypeError),
    "ls_int": ({"loss_scale": 2}, None),
    "ls_bool": ({"loss_scale": True}, None),
    "ls_inf": ({"loss_scale": INF}, ValueError),
    "ls_nan": ({"loss_scale": NAN}, ValueError),
}

GROUP_RECORDED = {
    "params_empty": ([], ValueError),
    "params_none": (None, ValueError),
    "params_int": (3, TypeError),
    "params_mixed": (["a", {"params": ["b"]}], TypeError),
    "group_bad_key": ([{"params": ["a"], "foo": 1}], KeyError),
    "group_no_params": ([{"lr": 0.1}], KeyError),
    "group_same_param_twice": ([{"params": ["a"]}, {"params": ["a"]}], RuntimeError),
    "group_gc_int": ([{"params": ["a"], "grad_centralization": 1}], TypeError),
    "group_order_extra_key": ([{"params": ["a"]}, {"order_params": ["a"], "lr": 0.1}], ValueError),
    "group_order_len": ([{"params": ["a", "b"]}, {"order_params": ["a"]}], ValueError),
    "group_order_unknown": ([{"params": ["a"]}, {"order_params": ["z"]}], ValueError),
    "group_order_int": ([{"params": ["a"]}, {"order_params": 5}], TypeError),
    "group_params_empty": ([{"params": []}], ValueError),
    "group_params_elem": ([{"params": [3]}], TypeError),
    "group_wd_neg": ([{"params": ["a"], "weight_decay": -1.0}], ValueError),
    "group_lr_str": ([{"params": ["a"], "lr": "x"}], ValueError),
}

# Where we differ from MindSpore on purpose (MindSpore accepts these and fails later or
# silently computes garbage): we reject at construction with a ValueError.
DELIBERATE = {
    "beta1_nan": ({"beta1": NAN}, ValueError),
    "beta2_nan": ({"beta2": NAN}, ValueError),
    "lr_2d_table": ({"learning_rate": np.ones((2, 2), np.float32)}, ValueError),
    "lr_empty_table": ({"learning_rate": []}, ValueError),
}


@pytest.mark.parametrize("case", sorted(MINDSPORE_RECORDED))
def test_scalar_arguments_match_mindspore(case):
    kwargs, expected = MINDSPORE_RECORDED[case]
    if expected is None:
        ax.AdaMax(["w"], **kwargs)
    else:
        with pytest.raises(expected) as info:
            ax.AdaMax(["w"], **kwargs)
        # The message names the argument at fault.
        arg = next(iter(kwargs))
        assert arg.split("_")[0] in str(info.value).replace("learning rate", "learning_rate")


@pytest.mark.parametrize("case", sorted(GROUP_RECORDED))
def test_params_and_groups_match_mindspore(case):
    params, expected = GROUP_RECORDED[case]
    with pytest.raises(expected):
        ax.AdaMax(params)


def test_group_lr_tables_must_have_one_length():
    with pytest.raises(ValueError, match="same size"):
        ax.AdaMax([{"params": ["a"], "lr": [0.1, 0.2, 0.3]}], learning_rate=[0.1, 0.2])


@pytest.mark.parametrize("case", sorted(DELIBERATE))
def test_deliberate_differences(case):
    kwargs, expected = DELIBERATE[case]
    with pytest.raises(expected):
        ax.AdaMax(["w"], **kwargs)


def test_int_and_bool_values_are_converted_to_float():
    opt = ax.AdaMax(["w"], learning_rate=2, weight_decay=True, loss_scale=4)
    cfg = opt.param_configs[0]
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 1.0 and opt.loss_scale == 4.0


def test_groups_resolve_lr_weight_decay_and_order():
    opt = ax.AdaMax(
        [
            {
                "params": ["conv.weight", "bn.gamma"],
                "weight_decay": 0.01,
                "grad_centralization": True,
            },
            {"params": ["fc.weight"], "lr": 0.5},
            {"order_params": ["fc.weight", "bn.gamma", "conv.weight"]},
        ],
        learning_rate=0.1,
    )
    assert opt.param_names == ["fc.weight", "bn.gamma", "conv.weight"]
    by = {c.name: c for c in opt.param_configs}
    assert by["fc.weight"].lr == 0.5 and by["conv.weight"].lr == 0.1
    # Grouped: no beta/gamma name filter; decayed because the group's decay is > 0.
    assert by["bn.gamma"].decay and by["conv.weight"].decay and not by["fc.weight"].decay
    assert by["conv.weight"].grad_centralization and not by["fc.weight"].grad_centralization


def test_lr_table_is_a_private_frozen_copy():
    table = np.array([0.1, 0.2], np.float32)
    opt = ax.AdaMax(["w"], learning_rate=table)
    table[0] = 9.0
    assert opt.param_configs[0].lr[0] == pytest.approx(0.1)
