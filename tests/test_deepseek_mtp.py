"""Multi-token prediction: one MTP module against transformers' MtpModel, the MTP loss against its
definition, and speculative decoding with MTP drafts against plain greedy decoding."""

import pytest
import torch
import torch.nn.functional as F

from gator.config import get_preset
from gator.generate import generate
from gator.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mtp_module_matches_transformers_mtp_model():
    from transformers.modeling_layers import MtpModel

    from gator.interop.hf import to_hf

    torch.manual_seed(0)
    model = Transformer(get_preset("deepseek-tiny", init_std=0.1)).eval()
    hf = to_hf(model)
    mtp = MtpModel(hf, 1).eval()
    s = model.state_dict()
    theirs = {"layers.0.enorm.weight": s["mtp.0.enorm.weight"], "layers.0.hnorm.weight": s["mtp.0.hnorm.weight"],
              "layers.0.eh_proj.weight": s["mtp.0.proj.weight"], "layers.0.post_norm.weight": s["mtp.0.norm.weight"]}
    names = {"attn.wq_a": "self_attn.q_a_proj", "attn.q_norm": "self_attn.q_a_layernorm",
             "attn.wq_b": "self_attn.q_b_proj", "attn.wkv_a": "self_attn.kv_a_proj_with_mqa",
             "attn.kv_norm": "self_attn.kv_a_layernorm", "attn.wkv_b": "self_attn.kv_b_proj",
             "attn.wo": "self_attn.o_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             "mlp.router": "mlp.gate", "mlp.shared.down": "mlp.shared_experts.down_proj"}
    b, h = "mtp.0.block.", "layers.0.mtp_block."
    for ours, hf_name in names.items():
        theirs[f"{h}{hf_name}.weight"] = s[f"{b}{ours}.weight"]
    theirs[h + "mlp.gate.e_score_correction_bias"] = torch.randn(8) * 0.1
    model.mtp[0].block.mlp.router.expert_bias.copy_(theirs[h + "mlp.gate.e_score_correction_bias"])
    gate, up = s[b + "mlp.shared.gate_up.weight"].chunk(2)
    theirs[h + "mlp.shared_experts.gate_proj.weight"], theirs[h + "mlp.shared_experts.up_proj.weight"] = gate, up
    theirs[h + "mlp.experts.gate_up_proj"] = s[b + "mlp.experts.gate_up"]
    theirs[h + "mlp.experts.down_proj"] = s[b + "mlp.experts.down"]
    missing, unexpected = mtp.load_state_dict(theirs, strict=False)
    assert not unexpected and set(missing) == {"embed_tokens.weight", "shared_head.weight"}  # tied to the main model

    ids = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        h0 = hf.model(ids).last_hidden_state  # the main model's normed hidden states
        positions = torch.arange(1, 20)
        ref = hf.lm_head(mtp.forward_layer(0, h0[:, :-1], positions[None].expand(2, -1), None, input_ids=ids[:, 1:]))
        ours = model.lm_head(model.mtp[0](h0[:, :-1], model.tok_emb(ids[:, 1:]), model.rope_at(positions)))
    assert (ours - ref).abs().max() < 1e-4


def test_mtp_loss_is_the_mean_depth_cross_entropy_times_lambda():
    torch.manual_seed(1)
    model = Transformer(get_preset("deepseek-tiny", mtp_depth=2, mtp_loss_weight=0.25, moe_balance_loss=0.0))
    ids = torch.randint(0, 512, (2, 13))
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100
    targets[0, 3] = -100
    _, loss = model(ids, targets)
    # by hand: depth k embeds token i+k and predicts target i+k
    with torch.no_grad():
        h = model.norm(_trunk(model, ids))
        lm = F.cross_entropy(model.lm_head(h).flatten(0, 1), targets.flatten(), ignore_index=-100)
        depth_losses = []
        for k in (1, 2):
            h = model.mtp[k - 1](h[:, :13 - k], model.tok_emb(ids[:, k:]), model.rope_at(torch.arange(k, 13)))
            depth_losses.append(F.cross_entropy(model.lm_head(h).flatten(0, 1), targets[:, k:].flatten(),
                                                ignore_index=-100))
    expected = lm + 0.25 * (depth_losses[0] + depth_losses[1]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert float(model.last_losses["mtp"]) == pytest.approx(float(sum(depth_losses) / 2), rel=1e-5)
    loss.backward()
    for p in model.mtp.parameters():
        assert p.grad is not None
    # the shared embedding gets gradient from the MTP inputs too
    assert model.tok_emb.weight.grad[ids[:, 2:].flatten()].abs().sum() > 0


def test_mtp_loss_leaves_out_a_depth_with_no_targets():
    """A depth whose targets are all -100 has no mean cross-entropy: it is left out of the mean over depths
    (not a NaN, not a 0 that shrinks the loss); with no target at any depth the MTP loss is 0."""
    torch.manual_seed(4)
    model = Transformer(get_preset("deepseek-tiny", mtp_depth=2, mtp_loss_weight=0.25, moe_balance_loss=0.0))
    ids = torch.randint(0, 512, (2, 13))
    targets = ids.roll(-1, dims=1)
    targets[:, 2:] = -100  # depth 2 reads targets[:, 2:]: nothing to score; depth 1 scores column 1 only
    _, loss = model(ids, targets)
    with torch.no_grad():
        h0 = model.norm(_trunk(model, ids))
        lm = F.cross_entropy(model.lm_head(h0)[:, :2].flatten(0, 1), targets[:, :2].flatten())
        h1 = model.mtp[0](h0[:, :12], model.tok_emb(ids[:, 1:]), model.rope_at(torch.arange(1, 13)))
        depth1 = F.cross_entropy(model.lm_head(h1)[:, 0], targets[:, 1])  # entry 0 of depth 1 -> target 1
    assert torch.isfinite(loss)
    assert float(model.last_losses["mtp"]) == pytest.approx(float(depth1), rel=1e-5)
    assert loss.item() == pytest.approx((lm + 0.25 * depth1).item(), rel=1e-5)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() == 0 for p in model.mtp[1].parameters())  # the empty depth teaches nothing

    model.zero_grad()
    targets[:, 1:] = -100  # no MTP depth has a target; the main loss still has column 0
    _, loss = model(ids, targets)
    assert float(model.last_losses["mtp"]) == 0.0
    assert loss.item() == pytest.approx(float(model.last_losses["lm"]), rel=1e-6)


def _trunk(model, ids):
    x = model.tok_emb(ids)
    rope = model.rope_at(torch.arange(ids.shape[1]))
    for block in model.blocks:
        x = block(x, rope, None, None)
    return x


@pytest.mark.parametrize("depth", [1, 2])
def test_speculative_decoding_gives_exactly_the_greedy_output(depth):
    torch.manual_seed(2)
    model = Transformer(get_preset("deepseek-tiny", mtp_depth=depth, init_std=0.1)).eval()
    prompts = [[1, 2, 3, 4, 5], [9] * 12, [100, 200]]
    plain = generate(model, prompts, max_new_tokens=25, temperature=0)
    drafted = generate(model, prompts, max_new_tokens=25, temperature=0, draft="mtp")
    for a, b in zip(plain, drafted):
        assert b.tokens == a.tokens and b.finish_reason == a.finish_reason
        assert 0.0 <= b.stats["acceptance_rate"] <= 1.0
        assert b.stats["draft_tokens"] > 0 and b.stats["forwards"] <= 25
    # a stop token cuts the output where plain decoding does: stop at the first token that is new after index 2
    (row, cut), = [(r, i) for r, c in enumerate(plain) for i, t in enumerate(c.tokens)
                   if i >= 2 and t not in c.tokens[:i]][:1]
    stop = plain[row].tokens[cut]
    a = generate(model, prompts[row], max_new_tokens=25, temperature=0, stop_tokens=[stop])
    b = generate(model, prompts[row], max_new_tokens=25, temperature=0, stop_tokens=[stop], draft="mtp")
    assert (b.tokens, b.finish_reason) == (a.tokens, a.finish_reason) == (plain[row].tokens[:cut], "stop")
    # near the end of the context: the same tokens, drafts limited by the room left
    long_prompt = list(range(100, 220))
    a = generate(model, long_prompt, max_new_tokens=25, temperature=0)
    b = generate(model, long_prompt, max_new_tokens=25, temperature=0, draft="mtp")
    assert b.tokens == a.tokens and len(b.tokens) == 128 - 120


def test_trained_mtp_drafts_are_accepted():
    """On a periodic sequence both the model and its MTP module learn the continuation: drafts pass."""
    torch.manual_seed(3)
    model = Transformer(get_preset("deepseek-tiny", mtp_depth=2, vocab_size=64, context_length=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    period = torch.randperm(64)[:11]
    for _ in range(25):
        data = period[(torch.randint(0, 11, (8,))[:, None] + torch.arange(33)) % 11]
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.after_optimizer_step()
    model.eval()
    prompt = period[:5].tolist()
    plain = generate(model, prompt, max_new_tokens=30, temperature=0)
    drafted = generate(model, prompt, max_new_tokens=30, temperature=0, draft="mtp")
    assert drafted.tokens == plain.tokens
    assert drafted.stats["acceptance_rate"] > 0.8
    assert drafted.stats["tokens_per_forward"] > 2.0  # up to 3 with two drafts per forward


def test_draft_errors_are_clear():
    model = Transformer(get_preset("deepseek-tiny")).eval()
    with pytest.raises(ValueError, match="temperature=0"):
        generate(model, [1, 2], max_new_tokens=3, temperature=0.7, draft="mtp")
    with pytest.raises(ValueError, match="mtp_depth"):
        generate(Transformer(get_preset("deepseek-tiny", mtp_depth=0)), [1, 2], max_new_tokens=3, temperature=0,
                 draft="mtp")
    with pytest.raises(ValueError, match="unknown draft"):
        generate(model, [1, 2], max_new_tokens=3, temperature=0, draft="ngram")
