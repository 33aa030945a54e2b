import pytest

from evomerge.errors import ConfigError
from evomerge.evaluate import EvalSettings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tgi"}, r"evaluator.backend: must be one of \('hf', 'vllm'\), got 'tgi'"),
        ({"batch_size": 0}, "evaluator.batch_size: must be >= 1, got 0"),
        ({"limit": 0}, "evaluator.limit"),
        ({"timeout_s": -1}, "evaluator.timeout_s"),
        ({"dtype": "int8"}, "evaluator.dtype"),
    ],
)
def test_invalid_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EvalSettings(**kwargs)


def test_unknown_keys_are_listed():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\]"):
        EvalSettings.from_dict({"batchsize": 3})


def test_the_vllm_evaluator_config_overrides_hf_and_repeats_none_of_it():
    import yaml

    from evomerge.config import CONFIG_DIR, compose

    hf = yaml.safe_load((CONFIG_DIR / "evaluator" / "hf.yaml").read_text())
    vllm = yaml.safe_load((CONFIG_DIR / "evaluator" / "vllm.yaml").read_text())
    assert vllm["defaults"] == ["hf", "_self_"]
    assert not [k for k in vllm if k in hf and vllm[k] == hf[k]]  # only what differs
    composed = compose("search", ["evaluator=vllm"])["evaluator"]
    assert composed == {**hf, **{k: v for k, v in vllm.items() if k != "defaults"}}
    assert EvalSettings.from_dict(composed).backend == "vllm"
