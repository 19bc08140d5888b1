"""Property tests (hypothesis) of the one-line contract: malformed JSON files of every kind msf reads,
and random command lines for the four CLIs. Bounded examples in the default run; `pytest -m slow`
runs the long profile (settings profile "slow", many more examples)."""
from __future__ import annotations

import copy
import json
import math

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _hardening import cli
from msf_train import schema
from msf_train.config import get_preset
from msf_train.errors import MsfError

settings.register_profile("default-run", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("slow", max_examples=1500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FAST = settings.get_profile("default-run")
SLOW = settings.get_profile("slow")

SHA = "0" * 64
SPEC = {"name": "x", "shape": ["batch", 4, 8, 8], "dtype": "float32"}
VALID = {
    "cascade": {"format": 1, "stages": ["scale0", "scale1"], "vae": "vae"},
    "stage": {"format": 1, "model": get_preset("tiny/scale1").to_dict(), "step": 3,
              "vae": {"sha256": SHA, "scaling_factor": 0.9, "shift_factor": 0.0, "class": "AutoencoderKL"}},
    "latest": {"step": 3, "dir": "step-00000003"},
    "cache": {"format": 1, "kind": "msf-latent-cache", "count": 2, "labels": [0, 1], "full_size": 8, "base_size": 4,
              "channels": 4, "shards": [{"file": "shard-00000.safetensors", "count": 2}],
              "vae": {"sha256": SHA, "scaling_factor": 0.9}},
    "manifest": {"format": 1, "kind": "msf-export", "engine": "onnx", "precision": "fp32",
                 "batch": {"min": 1, "opt": 8, "max": 64},
                 "stages": [{"name": "scale0", "kind": "denoiser", "config": get_preset("tiny/scale0").to_dict(),
                             "files": {"scale0.onnx": SHA}, "artifact": "scale0.onnx", "inputs": [SPEC],
                             "outputs": [SPEC], "parity": {"max_abs": 1e-6, "mean_abs": 1e-7}}],
                 "decoder": {"name": "decoder", "kind": "decoder", "files": {"decoder.onnx": SHA},
                             "artifact": "decoder.onnx", "inputs": [SPEC], "outputs": [SPEC],
                             "parity": {"max_abs": 1e-6, "mean_abs": 1e-7}}},
}
READERS = {"cascade": schema.cascade, "stage": schema.stage_config, "latest": schema.latest,
           "cache": schema.cache_index, "manifest": schema.manifest}

json_value = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
                          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                          max_leaves=6)


def _paths(obj, prefix=()):
    """Every (path to a value) inside a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def malformed(draw):
    kind = draw(st.sampled_from(sorted(VALID)))
    doc = copy.deepcopy(VALID[kind])
    paths = [p for p in _paths(doc) if p]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            op = draw(st.sampled_from(["delete", "replace", "extra", "number"]))
            if op == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif op == "extra" and isinstance(parent, dict):
                parent[draw(st.text(max_size=6))] = draw(json_value)
            elif op == "number":
                parent[path[-1]] = draw(st.sampled_from([0, -1, 2 ** 63, 1e308, -0.0, 0.5, True]))
            else:
                parent[path[-1]] = draw(json_value)
        except (KeyError, IndexError, TypeError):
            pass
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        doc = draw(json_value)  # not even an object
    return kind, doc


def _check_contract(kind, doc, tmp_path):
    """Parse the file as msf would: either it is accepted or one MsfError line names the file."""
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(doc))  # bare NaN/Infinity where the draw put them
    try:
        READERS[kind](schema.load(path, kind), path)
    except MsfError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg, msg
    # anything else (TypeError, KeyError, ZeroDivisionError, ...) fails the test with its traceback


@FAST
@given(case=malformed())
def test_malformed_json_is_accepted_or_one_line(case, tmp_path_factory):
    _check_contract(*case, tmp_path_factory.mktemp("j"))


@pytest.mark.slow
@SLOW
@given(case=malformed())
def test_malformed_json_long(case, tmp_path_factory):
    _check_contract(*case, tmp_path_factory.mktemp("j"))


def test_valid_documents_are_accepted(tmp_path):
    for kind, doc in VALID.items():
        _check_contract(kind, doc, tmp_path)
        path = tmp_path / f"{kind}.json"
        READERS[kind](schema.load(path), path)  # and really accepted


def test_every_model_config_field_round_trips(tmp_path):
    """No field is dropped on the way in (a dropped field would silently take its default)."""
    cfg = get_preset("tiny/scale1")
    other = cfg.replace(residual_scale=0.25, **({"parameterization": "eps-ddpm"}
                                                 if hasattr(cfg, "parameterization") else {}))
    path = tmp_path / "config.json"
    assert schema.model_config(other.to_dict(), path) == other


# ---- random command lines ----------------------------------------------------------------------
# Each command points at an input that does not exist, so whatever the options say nothing runs long;
# the property: parse and validate every option, and fail in one line without touching any file.
OPTIONS = {
    "train": ["--steps", "--batch", "--lr", "--ema", "--warmup", "--seed", "--save-every", "--log-every",
              "--max-minutes", "--residual-scale", "--device", "--preset", "--time-sampling", "--resume", "--force"],
    "run": ["--class", "--seed", "--batch", "--steps", "--cfg", "--solver", "--shift", "--device", "--dtype",
            "--backend", "--save-scales"],
    "eval": ["--classes", "--per-class", "--steps", "--cfg", "--seed", "--batch", "--device", "--solver",
             "--extractor"],
    "export": ["--engine", "--precision", "--min-batch", "--opt-batch", "--max-batch", "--device", "--force"],
}
token = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.floats().map(str), st.text(max_size=6),
                  st.sampled_from(["0", "-1", "1e309", "nan", "inf", "0-9:0", "1,2", "abc", "cuda", "cpu", ""]))


@st.composite
def command_line(draw):
    which = draw(st.sampled_from(sorted(OPTIONS)))
    args = []
    for _ in range(draw(st.integers(0, 4))):
        args.append(draw(st.sampled_from(OPTIONS[which])))
        if draw(st.integers(0, 4)):
            args.append(draw(token))
    return which, args


def _run_contract(which, args, tmp_path):
    missing = str(tmp_path / "missing")
    base = {"train": ["scale0", "--cache", missing, "--out", str(tmp_path / "o")],
            "run": ["--model", missing, "--out", str(tmp_path / "x.png")],
            "eval": ["run", "--model", missing],
            "export": ["--model", missing, "--out", str(tmp_path / "e")]}[which]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(cli(which), base + args, catch_exceptions=True)
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
    assert r.exit_code != 0, (args, r.stdout)
    err = r.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("Error: "), (args, err)
    assert "Traceback" not in err and "unexpected;" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, args


@FAST
@given(cmd=command_line())
def test_random_command_lines_fail_in_one_line(cmd, tmp_path_factory):
    _run_contract(*cmd, tmp_path_factory.mktemp("cli"))


@pytest.mark.slow
@SLOW
@given(cmd=command_line())
def test_random_command_lines_long(cmd, tmp_path_factory):
    _run_contract(*cmd, tmp_path_factory.mktemp("cli"))


def test_strict_dump_refuses_non_finite():
    with pytest.raises(MsfError):
        schema.dumps({"x": math.inf}, "f.json")
