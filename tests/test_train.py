"""The training loop: exact resume, accumulation, evaluation checked by recomputing it, checkpoints and
the faults it must survive, settings and schedules, sampling. Tiny models, a few steps, fp32 on CPU."""

import errno
import json
import math
import os
import signal

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from gator.cli import main as gator_main
from gator.data import END_OF_TEXT, TokenData, WindowOrder, prepare
from gator.data.synthetic import write_corpus
from gator.generate import generate
from gator.model import Transformer
from gator.tokenizer import Tokenizer, train_bpe
from gator.train import TrainingError, make_config, parse_overrides, pretrain
from gator.train.checkpoint import load_training_state
from gator.train.config import parse_duration
from gator.train.optim import lr_at, param_groups

KW = dict(model="tiny-gatorgpt", model_config={"context_length": 32}, seq_len=32, micro_batch=4, batch_tokens=256,
          lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_every=10, eval_tokens=512, log_every=1, ckpt_every=10,
          dtype="fp32", progress=False, peak_flops=1e12)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    corpus = write_corpus(d / "stories.jsonl", 600, seed=0)
    tok = train_bpe(str(corpus), 320, special_tokens=[END_OF_TEXT], progress=False)
    tok.save(d / "tok")
    prepare(corpus, d / "tok", d / "data", val_fraction=0.1, workers=0, progress=False)
    return d


def records(run, key="loss"):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if key in r]


# --- the loop ----------------------------------------------------------------------------------------

def test_resume_continues_exactly(shards, tmp_path):
    """40 steps straight == 20 steps, SIGINT (checkpoint), resume, 20 more: identical losses and weights."""
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "a"), max_steps=40, **KW)

    def interrupt(step, record):
        if step == 20:
            os.kill(os.getpid(), signal.SIGINT)

    first = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "b"), max_steps=40, on_step=interrupt, **KW)
    assert first["stopped"] == "interrupted (SIGINT)" and first["steps"] == 20
    assert load_training_state(tmp_path / "b" / "checkpoint")["step"] == 20
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "b"), max_steps=40, resume=True, **KW)
    straight, resumed = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(straight) == 40 and resumed == straight  # bit for bit
    assert records(tmp_path / "b", "val_loss") == records(tmp_path / "a", "val_loss")
    wa = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert straight[-1][1] < straight[0][1] - 0.5  # and it learned something


def test_muon_resumes_exactly_through_the_loop(shards, tmp_path):
    """Muon's momentum buffers go into the checkpoint: 16 steps straight == 8, SIGINT, resume 8."""
    kw = {**KW, "optimizer": "muon", "max_steps": 16, "eval_every": 100, "ckpt_every": 100}
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "a"), **kw)

    def interrupt(step, record):
        if step == 8:
            os.kill(os.getpid(), signal.SIGINT)

    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "b"), on_step=interrupt, **kw)
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "b"), resume=True, **kw)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert len(a) == 16 and a == b
    assert a[-1][1] < a[0][1] - 0.5


def test_accumulation_equals_a_bigger_micro_batch(shards, tmp_path):
    """4 sequences in 2 micro-batches of 2 take the same steps as 1 micro-batch of 4."""
    kw = {**KW, "max_steps": 8, "eval_every": 100}
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "one"), **{**kw, "micro_batch": 4, "batch_tokens": 128})
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "two"), **{**kw, "micro_batch": 2, "batch_tokens": 128})
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(a) == 8 and np.allclose([x for _, x in a], [x for _, x in b], rtol=0, atol=1e-5)


def test_eval_loss_and_bits_per_byte_match_a_recomputation(shards, tmp_path):
    s = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "r"), max_steps=12, **KW)
    model = Transformer.from_pretrained(tmp_path / "r" / "checkpoint").eval()
    val = TokenData(shards / "data", "val")
    x, y = val.windows(range(512 // 32), 32)  # the first eval_tokens / seq_len windows, as documented
    with torch.no_grad():
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    m = json.loads((shards / "data" / "manifest.json").read_text())["splits"]["val"]
    assert s["val_loss"] == pytest.approx(loss, abs=1e-5)
    assert s["val_ppl"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert s["val_bpb"] == pytest.approx(loss / math.log(2) * m["tokens"] / m["bytes"], rel=1e-5)
    # the run folder: checkpoint + tokenizer, best weights, metrics, plot, settings
    for name in ("checkpoint/config.json", "checkpoint/tokenizer.gator.json", "best/model.safetensors",
                 "loss.png", "metrics.jsonl", "train_config.yaml"):
        assert (tmp_path / "r" / name).is_file(), name
    assert s["best_val_loss"] <= s["val_loss"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_trains_with_fp32_master_weights(shards, tmp_path, dtype):
    s = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / dtype), **{**KW, "dtype": dtype, "max_steps": 15})
    losses = [x for _, x in records(tmp_path / dtype)]
    assert s["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.3
    weights = load_file(tmp_path / dtype / "checkpoint" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())


def test_time_budget_and_optimizer_hook(shards, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Transformer, "after_optimizer_step", lambda self: calls.append(1), raising=False)
    s = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "t"), **{**KW, "max_time": "1.5s"})
    assert s["stopped"] == "max_time" and s["seconds"] >= 1.5
    assert len(calls) == s["steps"] > 0  # e.g. the MoE bias update runs once per optimizer step


# --- one loop for any objective: starting from a model, training some parameters, logging metrics -----

def test_init_from_starts_at_the_models_weights(shards, tmp_path):
    """Step 1's loss of a run started from a checkpoint is that checkpoint's loss on the first global batch,
    recomputed here from the shards and the documented sample order."""
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "base"), max_steps=12, **KW)
    pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "ft"), max_steps=1,
             init_from=str(tmp_path / "base" / "checkpoint"), **KW)
    got = records(tmp_path / "ft")
    model = Transformer.from_pretrained(tmp_path / "base" / "checkpoint")
    train = TokenData(shards / "data", "train")
    order = WindowOrder(train.num_windows(32), seed=0)
    losses = []
    for first in (0, 4):  # 256 tokens per step = 2 micro-batches of 4 windows of 32
        x, y = train.windows(order.indices(first, 4), 32)
        logits, _ = model(x)
        losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))
    assert got[0] == (1, pytest.approx(torch.stack(losses).mean().item(), abs=1e-5))
    assert got[0][1] < records(tmp_path / "base")[0][1] - 0.5  # not a fresh model's loss
    with pytest.raises(TrainingError, match="model_config.n_layers=3, but the model in .* has n_layers=2"):
        pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "x"), max_steps=1,
                 init_from=str(tmp_path / "base"), **{**KW, "model_config": {"n_layers": 3}})


def test_an_objective_trains_only_what_it_leaves_trainable_and_logs_its_metrics(shards, tmp_path):
    """A LoRA-like objective: prepare_model freezes all but the norms. The optimizer holds only those, the
    frozen weights are bit-identical after training, and the objective's extra metric is logged."""
    from gator.train import LanguageModeling, LossOutput, make_config, train

    class NormsOnly(LanguageModeling):
        name = "norms-only"

        def prepare_model(self, model, env):
            self.initial = {k: v.clone() for k, v in model.state_dict().items()}
            for name, p in model.named_parameters():
                p.requires_grad = "norm" in name
            return model

        def loss(self, model, batch):
            out = super().loss(model, batch)
            return LossOutput(out.loss, out.tokens, {"twice_the_loss": 2 * out.loss.detach()})

    cfg = make_config(None, {**KW, "data": str(shards / "data"), "out_dir": str(tmp_path / "n"), "max_steps": 6,
                             "optimizer": "muon"})
    objective = NormsOnly(cfg)
    train(cfg, objective)
    final = load_file(tmp_path / "n" / "checkpoint" / "model.safetensors")
    assert final.keys() <= objective.initial.keys()
    for name, tensor in final.items():
        assert torch.equal(tensor, objective.initial[name]) == ("norm" not in name), name
    groups = load_training_state(tmp_path / "n" / "checkpoint")["optimizer"]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == sum("norm" in k for k in objective.initial)
    for r in map(json.loads, (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()):
        if "loss" in r:  # averaged over the 2 micro-batches like the loss
            assert r["twice_the_loss"] == pytest.approx(2 * r["loss"], rel=1e-6)


# --- faults and bad input ----------------------------------------------------------------------------

def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(shards, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain(data=str(shards / "data"), out_dir=str(run), max_steps=10, **KW)
    before = {n: (run / d / n).read_bytes() for d in ("checkpoint", "best") for n in ("model.safetensors",)}

    def full_disk(tensors, filename, metadata=None):  # write part of the file, then the disk is full
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)  # what Transformer.save_pretrained calls
    with pytest.raises(TrainingError, match="No space left on device.*previous checkpoint there is unchanged"):
        pretrain(data=str(shards / "data"), out_dir=str(run), max_steps=20, resume=True, **KW)
    assert {n: (run / d / n).read_bytes() for d in ("checkpoint", "best") for n in ("model.safetensors",)} == before
    assert load_training_state(run / "checkpoint")["step"] == 10
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())
    Transformer.from_pretrained(run / "checkpoint")  # still loads


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    import gator.model.transformer as transformer

    broken = []
    original = transformer.linear_cross_entropy  # the training step's loss (the head and cross-entropy)
    monkeypatch.setattr(transformer, "linear_cross_entropy",
                        lambda *a, **k: original(*a, **k) * (math.nan if broken else 1.0))
    with pytest.raises(TrainingError, match=r"loss became nan at step 15.*last good one, step 10"):
        pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "n"), max_steps=30,
                 on_step=lambda step, r: broken.append(1) if step == 15 else None, **KW)
    assert load_training_state(tmp_path / "n" / "checkpoint")["step"] == 10
    weights = load_file(tmp_path / "n" / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_bad_inputs_say_what_is_wrong(shards, tmp_path):
    data = str(shards / "data")
    # a corpus smaller than one batch
    tok = Tokenizer.load(shards / "tok")
    (tmp_path / "small.jsonl").write_text('{"text": "Once upon a time."}\n{"text": "The end."}\n')
    prepare(tmp_path / "small.jsonl", shards / "tok", tmp_path / "small", workers=0, progress=False)
    with pytest.raises(TrainingError, match="fewer than one batch"):
        pretrain(data=str(tmp_path / "small"), out_dir=str(tmp_path / "x"), max_steps=2, **KW)
    # a tokenizer that is not the one the shards were made with
    other = train_bpe(str(shards / "stories.jsonl"), 300, special_tokens=[END_OF_TEXT], progress=False)
    other.save(tmp_path / "other_tok")
    with pytest.raises(TrainingError, match="is not the one the shards"):
        pretrain(data=data, tokenizer=str(tmp_path / "other_tok"), out_dir=str(tmp_path / "x"), max_steps=2, **KW)
    # a checkpoint from a model of another shape
    pretrain(data=data, out_dir=str(tmp_path / "shape"), max_steps=2, **KW)
    with pytest.raises(ValueError, match="another shape.*n_layers: checkpoint 2 vs now 3"):
        pretrain(data=data, out_dir=str(tmp_path / "shape"), max_steps=4, resume=True,
                 **{**KW, "model_config": {"context_length": 32, "n_layers": 3}})
    # a recipe with an unknown key, named with the closest known one
    (tmp_path / "r.yaml").write_text("lr: 1e-3\nwarmup_step: 10\n")
    with pytest.raises(ValueError, match=r"r.yaml: unknown key 'warmup_step'; did you mean 'warmup_steps'"):
        make_config(tmp_path / "r.yaml")
    with pytest.raises(ValueError, match="unknown model_config key 'n_layer'; did you mean 'n_layers'"):
        make_config(None, {"model_config": {"n_layer": 2}})
    with pytest.raises(TrainingError, match="no checkpoint"):
        pretrain(data=data, out_dir=str(tmp_path / "fresh"), resume=True, max_steps=2, **KW)
    assert tok.vocab  # the shards' tokenizer itself was fine all along


# --- settings, schedule, optimizer ---------------------------------------------------------------------

def test_recipes_overrides_and_durations():
    cfg = make_config("demo", parse_overrides(["lr=2e-3", "model_config.n_layers=3", "max_time=90s"]))
    assert cfg.lr == 0.002 and isinstance(cfg.lr, float) and cfg.model_config["n_layers"] == 3
    assert cfg.model_config["d_model"] == make_config("demo").model_config["d_model"]  # merged, not replaced
    assert cfg.max_seconds == 90
    for name in ("gatorgpt-tinystories", "gpt2-124m", "tiny"):
        make_config(name)
    assert [parse_duration(v) for v in ("60s", "3m", "1.5h", 42, "7")] == [60, 180, 5400, 42, 7]
    with pytest.raises(ValueError, match="60 sec"):
        parse_duration("60 sec")


def test_lr_schedules_against_their_formulas():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, 0, schedule="cosine", **kw) == pytest.approx(0.1)  # warmup: (step + 1) / warmup
    assert lr_at(9, 0, schedule="cosine", **kw) == pytest.approx(1.0)
    for p in (0.0, 0.25, 0.5, 1.0):
        assert lr_at(50, p, schedule="cosine", **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * p)))
    assert lr_at(50, 0.7, schedule="wsd", decay_fraction=0.2, **kw) == 1.0  # stable phase
    assert lr_at(50, 0.9, schedule="wsd", decay_fraction=0.2, **kw) == pytest.approx(0.55)  # halfway down
    assert lr_at(50, 1.0, schedule="wsd", decay_fraction=0.2, **kw) == pytest.approx(0.1)
    assert lr_at(50, 0.5, schedule="constant", **kw) == 1.0


def test_weight_decay_only_on_matrices():
    from gator.config import get_preset

    model = Transformer(get_preset("tiny-gatorgpt"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if "norm" in n}
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


# --- the command line and sampling --------------------------------------------------------------------

def test_cli_pretrain_then_sample_matches_generate(shards, tmp_path, capsys):
    run = tmp_path / "cli"
    code = gator_main(["pretrain", "--recipe", "tiny", "--data", str(shards / "data"), "--out", str(run),
                       "max_steps=6", "progress=false", "peak_flops=1e12", "seq_len=32",
                       "model_config.context_length=32"])
    assert code == 0 and (run / "checkpoint" / "training_state.pt").is_file()
    capsys.readouterr()
    assert gator_main(["sample", "--checkpoint", str(run), "--prompt", "Once upon a time", "--max-new-tokens", "12",
                       "--temperature", "0.8", "--top-p", "0.95", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    model = Transformer.from_pretrained(run / "best").eval()
    tok = Tokenizer.load(run / "best")
    c = generate(model, tok.encode("Once upon a time"), tokenizer=tok, max_new_tokens=12, temperature=0.8,
                 top_p=0.95, seed=3, stop_tokens=[tok.special_ids[END_OF_TEXT]])
    assert printed.startswith("Once upon a time" + c.text + "\n")
    assert gator_main(["pretrain", "--recipe", "tiny", "learning_rate=1"]) == 1
    assert "unknown key 'learning_rate'" in capsys.readouterr().err


def test_trains_a_deepseek_model_with_its_hook_and_aux_losses(shards, tmp_path):
    """MLA + DeepSeekMoE + MTP: it must train, the balancing biases must move, the extras get logged."""
    from gator.model.moe import MoE

    s = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "ds"), **{**KW, "model": "deepseek-tiny",
                                                                              "max_steps": 15})
    losses = [x for _, x in records(tmp_path / "ds")]
    assert losses[-1] < losses[0] - 0.3 and math.isfinite(s["val_loss"])
    model = Transformer.from_pretrained(tmp_path / "ds" / "checkpoint")
    biases = [m for m in model.modules() if isinstance(m, MoE)]
    assert biases and all(any(t.abs().sum() > 0 for n, t in m.named_buffers() if "bias" in n) for m in biases)
    last = [r for r in map(json.loads, (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()) if "loss" in r][-1]
    assert "moe_max_over_mean" in last and any(k.startswith("loss_") for k in last)


def test_sigterm_checkpoints_and_stops(shards, tmp_path):
    s = pretrain(data=str(shards / "data"), out_dir=str(tmp_path / "t"), max_steps=50,
                 on_step=lambda step, r: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None, **KW)
    assert s["stopped"] == "interrupted (SIGTERM)" and s["steps"] == 3
    assert load_training_state(tmp_path / "t" / "checkpoint")["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone after training
