"""gator.runtime: the OpenMP wait policy is chosen from the load, only when the user has not chosen; the
dtype policy (is bf16 fast here?) is asked by autocast, Muon and attention, forced both ways in the tests."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gator import runtime
from gator.errors import GatorError
from gator.model.attention import attend
from gator.train.optim import Muon, orthogonalize


def test_policy_follows_the_load(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # pretend torch is not imported yet
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "busy_cores", lambda seconds=0.1: 0.2)
    assert runtime.choose_omp_wait_policy() == "ACTIVE" == os.environ["OMP_WAIT_POLICY"]
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(runtime, "busy_cores", lambda seconds=0.1: 1.0)
    assert runtime.choose_omp_wait_policy() == "PASSIVE" == os.environ["OMP_WAIT_POLICY"]


def test_a_users_choice_and_a_late_call_change_nothing(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert runtime.choose_omp_wait_policy() == "passive"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "torch" in sys.modules  # the test session imported it: too late to set the variable
    assert runtime.choose_omp_wait_policy().startswith("default")
    assert "OMP_WAIT_POLICY" not in os.environ


def test_busy_cores_is_a_fraction_of_the_machine():
    busy = runtime.busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9


def test_the_gator_command_sets_it_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys; from gator.cli import main; main(['info', 'tiny-gatorgpt']); "
            "print('policy', os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] in ("policy ACTIVE", "policy PASSIVE")


# --- the dtype policy: one place decides, every component asks ----------------------------------------

@pytest.fixture(params=[False, True], ids=["bf16-emulated", "bf16-native"])
def native_bf16(request, monkeypatch):
    """Force gator.runtime's answer to "does this CPU run bf16 natively?" one way, then the other, the way a
    user does (GATOR_FAST_BF16=0/1), so every module that asks the policy sees the forced answer."""
    monkeypatch.setenv(runtime.FAST_BF16_ENV, "1" if request.param else "0")
    return request.param


def test_the_policy_can_be_forced_and_says_so(monkeypatch):
    monkeypatch.delenv(runtime.FAST_BF16_ENV, raising=False)
    assert runtime.cpu_has_fast_bf16() == runtime.onednn_has_bf16()
    assert "FORCED" not in runtime.describe_dtype_policy()
    for value, fast in (("0", False), ("1", True)):
        monkeypatch.setenv(runtime.FAST_BF16_ENV, value)
        assert runtime.cpu_has_fast_bf16() == fast
        assert runtime.describe_dtype_policy().startswith(f"CPU fast matmul dtype {'bf16' if fast else 'fp32'}")
        assert f"FORCED by {runtime.FAST_BF16_ENV}={value}" in runtime.describe_dtype_policy()
    monkeypatch.setenv(runtime.FAST_BF16_ENV, "yes")
    with pytest.raises(GatorError, match="GATOR_FAST_BF16='yes': expected 0"):
        runtime.cpu_has_fast_bf16()


def test_the_fast_dtype_and_autocast_follow_the_policy(native_bf16):
    cpu = torch.device("cpu")
    want = torch.bfloat16 if native_bf16 else torch.float32
    assert runtime.fast_dtype(cpu) == want and runtime.resolve_dtype("auto", cpu) == want
    assert runtime.resolve_dtype("fp32", cpu) == torch.float32  # an explicit choice is taken as asked
    assert runtime.resolve_dtype("bf16", cpu) == torch.bfloat16


def test_muon_orthogonalizes_in_the_fast_dtype(native_bf16):
    """Muon's Newton-Schulz iteration gives exactly the result of the policy's dtype, not of the other one."""
    torch.manual_seed(0)
    g = torch.randn(32, 64)
    want, other = (torch.bfloat16, torch.float32) if native_bf16 else (torch.float32, torch.bfloat16)
    assert torch.equal(orthogonalize(g), orthogonalize(g, dtype=want))
    assert not torch.equal(orthogonalize(g), orthogonalize(g, dtype=other))
    # and so does a Muon step: W <- W - lr * 0.2 * sqrt(max(rows, cols)) * orthogonalize(g) on the first step
    w = torch.nn.Parameter(torch.randn(32, 64))
    w0 = w.detach().clone()
    w.grad = g.clone()
    Muon([{"params": [w], "use_muon": True}], lr=0.01, momentum=0.0).step()
    torch.testing.assert_close(w.detach(), w0 - 0.01 * 0.2 * 64 ** 0.5 * orthogonalize(g, dtype=want),
                               rtol=0, atol=1e-6)


def test_cpu_attention_precision_follows_the_policy(native_bf16):
    """bf16 attention over many keys runs in bf16 only where bf16 is native; short keys always in fp32."""
    assert runtime.cpu_attention_in_fp32(64, 64) and not runtime.cpu_attention_in_fp32(1, 64)
    assert runtime.cpu_attention_in_fp32(64, 2 * runtime.CPU_FP32_ATTENTION_MAX_KEYS) == (not native_bf16)
    torch.manual_seed(0)
    T = runtime.CPU_FP32_ATTENTION_MAX_KEYS + 8
    q, k, v = (torch.randn(1, 2, T, 16).bfloat16() for _ in range(3))
    in_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).bfloat16()
    in_bf16 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(in_fp32, in_bf16)  # the two kernels are distinguishable
    assert torch.equal(attend(q, k, v, None, causal=True), in_bf16 if native_bf16 else in_fp32)


def test_no_cpu_training_path_uses_bf16_unless_it_is_native(native_bf16, tmp_path):
    """A real training run (dtype auto, Muon, evaluation, checkpoint) records the dtype of every tensor every
    op produces: no bf16 at all where bf16 is emulated, and bf16 where it is native (so the check can see it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gator.data import write_tokens
    from gator.train import pretrain

    class DtypesSeen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: set[torch.dtype] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.seen.add(t.dtype)
            return out

    rng = np.random.default_rng(0)
    write_tokens(tmp_path / "data", {"train": rng.integers(0, 64, 4000), "val": rng.integers(0, 64, 600)},
                 {"vocab_size": 64, "eot_id": None, "fingerprint": "random"})
    with DtypesSeen() as mode:
        s = pretrain(data=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), model="tiny-gatorgpt",
                     model_config={"context_length": 32}, seq_len=32, micro_batch=2, batch_tokens=64, max_steps=2,
                     optimizer="muon", dtype="auto", eval_tokens=64, progress=False, peak_flops=1e12)
    assert s["dtype"] == ("bfloat16" if native_bf16 else "float32")
    assert (torch.bfloat16 in mode.seen) == native_bf16


class OpsSeen(TorchDispatchMode):
    """Records every op that runs, with the dtypes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
        self.seen.append((str(func), {t.dtype for t in leaves if isinstance(t, torch.Tensor)}))
        return out

    def dtypes(self) -> set[torch.dtype]:
        return set().union(*(d for _, d in self.seen))


def test_no_decode_path_uses_bf16_unless_it_is_native(native_bf16, monkeypatch):
    """Decoding an fp32 model never makes a bf16 tensor under either policy: `generate` (greedy and sampled,
    with its small-batch product search), the batching engine, and MTP speculative decoding. A bf16 model's
    weights are packed for oneDNN's bf16 kernel only where bf16 is native (elsewhere that kernel is emulated)."""
    from gator.config import get_preset
    from gator.generate import cpu_linear, generate
    from gator.generate.engine import generate_batched
    from gator.model import Transformer

    monkeypatch.setattr(cpu_linear, "_choice", {})  # run the product search under this policy, not a memo
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny-gatorgpt")).eval()
    mtp_model = Transformer(get_preset("deepseek-tiny", mtp_depth=1)).eval()
    prompts = [[1, 2, 3, 4], [5, 6]]
    with OpsSeen() as ops:
        generate(model, prompts[0], max_new_tokens=6, temperature=0)
        generate(model, prompts, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=0)
        generate_batched(model, prompts, max_new_tokens=6, temperature=0)
        generate(mtp_model, prompts, max_new_tokens=6, temperature=0, draft="mtp")
    assert len(ops.seen) > 100 and any(name.startswith("aten.mm") or "linear" in name for name, _ in ops.seen)
    assert torch.bfloat16 not in ops.dtypes()

    # the policy-dependent part of decoding: oneDNN's packed bf16 product for a bf16 model
    w16 = torch.zeros(8, 8, dtype=torch.bfloat16)
    assert cpu_linear.can_pack(w16) == (native_bf16 and torch.backends.mkldnn.is_available())
    if native_bf16 and not runtime.onednn_has_bf16():
        return  # forced "native" on a CPU without bf16: oneDNN's bf16 kernel would refuse to run at all
    model16 = Transformer(get_preset("tiny-gatorgpt")).eval().to(torch.bfloat16)
    with OpsSeen() as ops:
        generate(model16, prompts, max_new_tokens=4, temperature=0)
    packs = [d for name, d in ops.seen if name.startswith("mkldnn.") and torch.bfloat16 in d]
    assert bool(packs) == cpu_linear.can_pack(w16)


def test_a_recipe_picks_its_per_dtype_settings_by_the_policy(native_bf16, tmp_path):
    """A recipe's `per_dtype:` section is merged for the dtype the run computes in: `dtype: auto` follows the
    policy, an explicit dtype picks its own section, and command-line overrides still win."""
    from pathlib import Path

    import yaml

    from gator.train import TrainConfig, make_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "shakespeare-char.yaml"
    sections = yaml.safe_load(recipe.read_text())["per_dtype"]
    assert sections["bf16"] != sections["fp32"]  # the bench's optimizer differs by machine kind
    want = sections["bf16" if native_bf16 else "fp32"]
    cfg = make_config(recipe)
    assert {k: getattr(cfg, k) for k in want} == want
    assert make_config(recipe, {"dtype": "fp32"}).optimizer == sections["fp32"]["optimizer"]
    assert make_config(recipe, {"optimizer": "muon"}).optimizer == "muon"

    own = tmp_path / "own.yaml"
    own.write_text("model: tiny-gatorgpt\nmodel_config: {n_layers: 2, d_model: 64}\nlr: 1.0e-3\n"
                   "per_dtype:\n  bf16: {lr: 3.0e-3, model_config: {d_model: 96}}\n  fp32: {micro_batch: 2}\n")
    cfg = make_config(own, {"model_config": {"n_layers": 3}})
    assert cfg.model_config == {"n_layers": 3, "d_model": 96 if native_bf16 else 64}
    assert (cfg.lr, cfg.micro_batch) == ((3e-3, TrainConfig.micro_batch) if native_bf16 else (1e-3, 2))
    own.write_text("model: tiny-gatorgpt\nper_dtype:\n  avx2: {lr: 1.0e-3}\n")
    with pytest.raises(ValueError, match="per_dtype must map bf16, fp16 or fp32 to settings"):
        make_config(own)
    own.write_text("model: tiny-gatorgpt\nper_dtype:\n  fp32: {optimiser: adamw}\n")
    with pytest.raises(ValueError, match="per_dtype.fp32: unknown key 'optimiser'; did you mean 'optimizer'"):
        make_config(own)
