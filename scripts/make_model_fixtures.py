#!/usr/bin/env python3
"""Makes the small random-weight model fixtures for test/models/llama.test.ts.

Each fixture is a Hugging Face model directory written by transformers'
save_pretrained (config.json, model.safetensors or a sharded index) plus
reference.safetensors with outputs computed by transformers in float32 on the CPU:

  input_ids        int32 [2, 8]   fixed ids
  logits           f32 [2, 8, V]  model(input_ids).logits
  loss             f32 [1]        model(input_ids, labels=input_ids).loss (shifted by transformers)
  padded_ids       int32 [2, 8]   row 0 left-padded with pad id 0
  padded_mask      int32 [2, 8]   its attention mask
  padded_positions int32 [2, 8]   cumsum(mask) - 1, 1 at padding (what generate uses)
  padded_logits    f32 [2, 8, V]  logits for the padded batch (only unpadded positions matter)
  prompt_ids       int32 [1, 5]
  greedy_ids       int32 [1, 13]  model.generate(prompt, greedy, 8 new tokens)
  batch_prompt_ids int32 [2, 6]   row 1 left-padded by 3
  batch_prompt_mask int32 [2, 6]
  batch_greedy_ids int32 [2, 14]  model.generate on the padded batch

The weights are drawn so that the logits spread widely (embeddings N(0, 1), linear
weights N(0, 1/in), norm weights U(0.5, 1.5), biases N(0, 0.1)), and a seed is kept
only when every greedy step's top two logits differ by at least 1e-3, so another
implementation's rounding cannot flip a greedy choice. The bf16 fixture rounds its
weights to bfloat16 first; its reference is computed in float32 from those weights.

Run where torch and transformers are installed (4.x or 5.x):
  python3 scripts/make_model_fixtures.py --out test/fixtures/models
"""

import argparse
import json
import math
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

MAJOR = int(transformers.__version__.split(".")[0])
MIN_GAP = 1e-3

SPECS = [
    # Llama 3.x: grouped-query attention and llama3 rope scaling. A small
    # original_max_position_embeddings makes all three frequency bands of the scaling
    # (kept, smoothed, divided by factor) occur at head_dim 16.
    dict(name="llama3_gqa", arch="llama", dtype=torch.float32, hidden=64, inter=96, layers=2, heads=4, kv=2,
         head_dim=None, vocab=256, tie=False, eps=1e-5, bos=1, eos=2, max_pos=512,
         rope=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)),
    # Mistral: one kv head, an explicit head_dim that is not hidden/heads, sharded weights.
    dict(name="mistral_sharded", arch="mistral", dtype=torch.float32, hidden=64, inter=96, layers=2, heads=4, kv=1,
         head_dim=24, vocab=256, tie=False, eps=1e-6, bos=1, eos=2, max_pos=1024, sliding_window=4096,
         rope=dict(rope_type="default", rope_theta=1000000.0), shard="120KB"),
    # Qwen2: q/k/v bias, tied embeddings.
    dict(name="qwen2_bias_tied", arch="qwen2", dtype=torch.float32, hidden=64, inter=96, layers=2, heads=4, kv=2,
         head_dim=None, vocab=256, tie=True, eps=1e-6, bos=None, eos=3, max_pos=1024,
         rope=dict(rope_type="default", rope_theta=1000000.0)),
    # Llama 2 / 3.2 style: full multi-head attention, tied embeddings, bf16 checkpoint.
    dict(name="llama_tied_bf16", arch="llama", dtype=torch.bfloat16, hidden=64, inter=96, layers=2, heads=4, kv=4,
         head_dim=None, vocab=256, tie=True, eps=1e-5, bos=1, eos=2, max_pos=512,
         rope=dict(rope_type="default", rope_theta=10000.0)),
]


def make_config(spec):
    common = dict(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["kv"],
        rms_norm_eps=spec["eps"], tie_word_embeddings=spec["tie"], bos_token_id=spec["bos"],
        eos_token_id=spec["eos"], max_position_embeddings=spec["max_pos"], hidden_act="silu",
    )
    if spec["head_dim"] is not None:
        common["head_dim"] = spec["head_dim"]
    rope = dict(spec["rope"])
    if MAJOR >= 5:
        common["rope_parameters"] = rope
    else:
        common["rope_theta"] = rope.pop("rope_theta")
        if rope["rope_type"] != "default":
            common["rope_scaling"] = rope
    if spec["arch"] == "llama":
        cfg = transformers.LlamaConfig(**common)
    elif spec["arch"] == "mistral":
        cfg = transformers.MistralConfig(sliding_window=spec["sliding_window"], **common)
    else:
        cfg = transformers.Qwen2Config(use_sliding_window=False, **common)
    return cfg


def build(spec, seed):
    cfg = make_config(spec)
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_config(cfg)
    model = model.float().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        if spec["dtype"] == torch.bfloat16:
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    if spec["tie"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    return model


def greedy(model, ids, mask, steps, pad):
    """Greedy continuation and the smallest top-1/top-2 logit gap over its steps; the
    gap is -1 when the continuation is not the plain argmax of every step (generation
    stopped at EOS, or a logits processor changed a choice)."""
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, num_beams=1,
        pad_token_id=pad, return_dict_in_generate=True, output_logits=True,
    )
    seq = out.sequences
    if seq.shape[1] != ids.shape[1] + steps or len(out.logits) != steps:
        return seq, -1.0
    gap = math.inf
    for i, step_logits in enumerate(out.logits):
        step_logits = step_logits.float()
        if not torch.equal(step_logits.argmax(-1), seq[:, ids.shape[1] + i]):
            return seq, -1.0
        top = torch.topk(step_logits, 2, dim=-1).values
        gap = min(gap, float((top[:, 0] - top[:, 1]).min()))
    return seq, gap


def references(model, spec, seed):
    V = spec["vocab"]
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(4, V, (2, 8), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        loss = model(input_ids=ids, labels=ids).loss.float()

        padded = ids.clone()
        mask = torch.ones_like(ids)
        padded[0, :3] = 0
        mask[0, :3] = 0
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        padded_logits = model(input_ids=padded, attention_mask=mask, position_ids=positions).logits.float()

        prompt = torch.randint(4, V, (1, 5), generator=g)
        seq, gap1 = greedy(model, prompt, torch.ones_like(prompt), 8, 0)

        bprompt = torch.randint(4, V, (2, 6), generator=g)
        bmask = torch.ones_like(bprompt)
        bprompt[1, :3] = 0
        bmask[1, :3] = 0
        bseq, gap2 = greedy(model, bprompt, bmask, 8, 0)
        # Left padding must not change a row's continuation.
        alone, _ = greedy(model, bprompt[1:, 3:], bmask[1:, 3:], 8, 0)
        consistent = alone.shape[1] == bseq.shape[1] - 3 and bool(torch.equal(alone[0], bseq[1, 3:]))

    gap = min(gap1, gap2)
    i32 = lambda t: t.to(torch.int32).contiguous()
    tensors = {
        "input_ids": i32(ids), "logits": logits.contiguous(), "loss": loss.reshape(1).contiguous(),
        "padded_ids": i32(padded), "padded_mask": i32(mask), "padded_positions": i32(positions),
        "padded_logits": padded_logits.contiguous(),
        "prompt_ids": i32(prompt), "greedy_ids": i32(seq),
        "batch_prompt_ids": i32(bprompt), "batch_prompt_mask": i32(bmask), "batch_greedy_ids": i32(bseq),
    }
    return tensors, gap, consistent


def save(model, spec, seed, tensors, gap, consistent, out_dir):
    d = os.path.join(out_dir, spec["name"])
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if spec["dtype"] == torch.bfloat16:
        model = model.to(torch.bfloat16)
        if MAJOR >= 5:
            model.config.dtype = torch.bfloat16
        else:
            model.config.torch_dtype = torch.bfloat16
    kwargs = {"safe_serialization": True}
    if "shard" in spec:
        kwargs["max_shard_size"] = spec["shard"]
    try:
        model.save_pretrained(d, **kwargs)
    except TypeError:
        kwargs.pop("safe_serialization")
        model.save_pretrained(d, **kwargs)
    gen = os.path.join(d, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    meta = {
        "seed": str(seed), "min_greedy_gap": f"{gap:.6g}", "padding_consistent": str(consistent),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata=meta)
    files = sorted(os.listdir(d))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(f"{spec['name']}: seed {seed}, min greedy gap {gap:.4g}, padding consistent {consistent}, "
          f"{size} bytes: {', '.join(files)}")
    with open(os.path.join(d, "config.json")) as f:
        print(json.dumps(json.load(f), sort_keys=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for spec in SPECS:
        for seed in range(20):
            model = build(spec, seed)
            tensors, gap, consistent = references(model, spec, seed)
            if gap >= MIN_GAP:
                break
            print(f"{spec['name']}: seed {seed} rejected (greedy gap {gap:.3g})")
        else:
            raise SystemExit(f"{spec['name']}: no seed gave greedy gaps >= {MIN_GAP}")
        save(model, spec, seed, tensors, gap, consistent, args.out)


if __name__ == "__main__":
    main()
