#!/usr/bin/env python3
"""PEFT parity fixtures for test/adapters/*.test.ts, and the check of finlora-saved
adapters in PEFT.

make: for each spec below, loads a committed random-weight base model
(test/fixtures/models/<base>, made by make_model_fixtures.py), wraps it with PEFT's
get_peft_model, gives the adapter NON-ZERO lora_B and PERTURBED magnitudes (so an
implementation that ignores B, the magnitude, the scaling or the weight norm fails),
and writes test/fixtures/adapters/<name>/:

  adapter/adapter_config.json        as PEFT's save_pretrained writes them (the model
  adapter/adapter_model.safetensors  card README.md is removed)
  reference.safetensors:
    input_ids        int32 [2, 8]
    logits           f32 [2, 8, V]   peft_model(input_ids).logits in eval mode
    loss             f32 [1]         peft_model(input_ids, labels=input_ids).loss, eval
    grad_mode        (metadata)      "train" (lora_dropout is 0) or "eval" (lora_dropout
                                     > 0: eval mode disables it, so the gradients are
                                     deterministic; PEFT then takes the same DoRA path)
    grad.<key>       f32             d loss / d (adapter tensor <key>), <key> as in
                                     adapter_model.safetensors
    merged.<name>    f32             every targeted base weight after merge_and_unload()
    merged_logits    f32 [2, 8, V]   the merged model's logits

check: loads a base model and an adapter that finlora saved into PEFT
(PeftModel.from_pretrained), computes the logits for the input_ids in a safetensors
file finlora wrote, and compares them with the "logits" in that file; optionally loads
a merged model directory that finlora wrote with transformers and compares its logits
with PEFT's. Prints one JSON line per check and exits non-zero on a mismatch.

Everything runs in float32 on the CPU. Run where torch, transformers (5.x) and PEFT
are installed:
  python3 scripts/make_adapter_fixtures.py make --out test/fixtures/adapters
  python3 scripts/make_adapter_fixtures.py check --base test/fixtures/models/llama3_gqa \
      --adapter OUT/adapter --logits OUT/logits.safetensors [--merged OUT/merged]
"""

import argparse
import json
import os
import shutil
import sys
import warnings

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

MODELS = "test/fixtures/models"

SPECS = [
    # FinLoRA's DoRA setting: r 8, alpha 16, dropout 0.05 on q/k/v (Llama 3 with GQA).
    dict(name="dora_qkv", base="llama3_gqa", seed=11, grad_mode="eval",
         config=dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj"],
                     use_dora=True)),
    # DoRA on every linear layer with rsLoRA, target_modules as a regex, and per-module
    # rank and alpha patterns.
    dict(name="dora_all_rslora", base="llama3_gqa", seed=12, grad_mode="train",
         config=dict(r=8, lora_alpha=16, lora_dropout=0.0,
                     target_modules=r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
                     use_dora=True, use_rslora=True, rank_pattern={"down_proj": 4},
                     alpha_pattern={"model.layers.1.self_attn.q_proj": 32})),
    # Plain LoRA.
    dict(name="lora_plain", base="llama3_gqa", seed=13, grad_mode="train",
         config=dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj"],
                     use_dora=False)),
    # DoRA on layers with a bias (Qwen2's q/k/v), tied embeddings.
    dict(name="dora_qkv_bias", base="qwen2_bias_tied", seed=14, grad_mode="train",
         config=dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"],
                     use_dora=True)),
]


def load_base(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def adapter_key(param_name):
    """A PEFT model parameter name as get_peft_model_state_dict saves it."""
    k = param_name.replace(".default.", ".").removesuffix(".default")
    if k.endswith("lora_magnitude_vector.weight"):
        k = k[: -len(".weight")]
    return k


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in model.named_modules():
            if not isinstance(mod, LoraLayer):
                continue
            for lin in mod.lora_B.values():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.1)
            for dora in mod.lora_magnitude_vector.values():
                m = dora.weight
                m.copy_(m * (1 + 0.1 * torch.randn(m.shape, generator=g)))


def make_one(spec, out_root):
    base_path = os.path.join(MODELS, spec["base"])
    model = load_base(base_path)
    torch.manual_seed(spec["seed"])
    cfg = LoraConfig(task_type="CAUSAL_LM", bias="none", **spec["config"])
    pm = get_peft_model(model, cfg)
    perturb(pm, spec["seed"])
    pm.print_trainable_parameters()

    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1000 + spec["seed"])
    ids = torch.randint(4, V, (2, 8), generator=g)

    pm.eval()
    with torch.no_grad():
        logits = pm(input_ids=ids).logits.float()
        loss = pm(input_ids=ids, labels=ids).loss.float()

    pm.train(spec["grad_mode"] == "train")
    pm.zero_grad()
    train_loss = pm(input_ids=ids, labels=ids).loss
    train_loss.backward()
    grads = {}
    for name, p in pm.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            grads["grad." + adapter_key(name).removeprefix("base_model.model.")] = p.grad.detach().float().contiguous()
    pm.eval()

    d = os.path.join(out_root, spec["name"])
    shutil.rmtree(d, ignore_errors=True)
    adapter_dir = os.path.join(d, "adapter")
    pm.save_pretrained(adapter_dir)
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    for k in grads:
        assert "base_model.model." + k.removeprefix("grad.") in saved, (k, sorted(saved))

    targeted = sorted(n for n, m in pm.named_modules() if isinstance(m, LoraLayer))
    merged_model = pm.merge_and_unload()
    merged = {}
    sd = merged_model.state_dict()
    for n in targeted:
        name = n.removeprefix("base_model.model.") + ".weight"
        merged["merged." + name] = sd[name].detach().float().contiguous()
    with torch.no_grad():
        merged_logits = merged_model(input_ids=ids).logits.float()

    tensors = {
        "input_ids": ids.to(torch.int32).contiguous(), "logits": logits.contiguous(),
        "loss": loss.reshape(1).contiguous(), "merged_logits": merged_logits.contiguous(), **grads, **merged,
    }
    meta = {"grad_mode": spec["grad_mode"], "base": spec["base"], "seed": str(spec["seed"]),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "train_loss": f"{float(train_loss):.9g}"}
    save_file(tensors, os.path.join(d, "reference.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    diff = float((merged_logits - logits).abs().max())
    print(f"{spec['name']}: {len(grads)} grads, {len(merged)} merged weights, merged-vs-unmerged max |dlogit| {diff:.3g}, "
          f"{size} bytes")
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        print(f.read())


def check(args):
    ok = True
    ref = load_file(args.logits)
    ids = ref["input_ids"].to(torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_base(args.base)
        pm = PeftModel.from_pretrained(model, args.adapter).eval()
    relevant = [str(w.message) for w in caught if "peft" in str(w.filename).lower() or "adapter" in str(w.message).lower()]
    with torch.no_grad():
        logits = pm(input_ids=ids).logits.float()
    diff = float((logits - ref["logits"]).abs().max())
    scale = float(ref["logits"].abs().max())
    good = diff <= 1e-5 * scale + 1e-5
    ok &= good
    print(json.dumps({"check": "peft loads finlora's adapter", "adapter": args.adapter, "max_abs_diff": diff,
                      "max_abs_logit": scale, "ok": good, "warnings": relevant}))
    if args.merged:
        merged = load_base(args.merged)
        with torch.no_grad():
            mlogits = merged(input_ids=ids).logits.float()
        mdiff = float((mlogits - logits).abs().max())
        good = mdiff <= 1e-4 * scale + 1e-4
        ok &= good
        print(json.dumps({"check": "transformers loads finlora's merged model", "merged": args.merged,
                          "max_abs_diff_vs_peft": mdiff, "ok": good}))
    return ok


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--out", required=True)
    mk.add_argument("--only", nargs="*")
    ck = sub.add_parser("check")
    ck.add_argument("--base", required=True)
    ck.add_argument("--adapter", required=True)
    ck.add_argument("--logits", required=True)
    ck.add_argument("--merged")
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    if args.mode == "make":
        for spec in SPECS:
            if args.only and spec["name"] not in args.only:
                continue
            make_one(spec, args.out)
    else:
        sys.exit(0 if check(args) else 1)


if __name__ == "__main__":
    main()
