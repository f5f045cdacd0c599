#!/usr/bin/env python3
"""One row of the GPU training benchmark on the PEFT side (bench/gpu/train.ts runs it).

The same model and step as finlora's side: a Llama-3.2-1B or Llama-3.1-8B shaped
LlamaForCausalLM built from a config with random weights (transformers' own init:
N(0, 0.02), norms 1; no download), bf16 on cuda, a PEFT LoRA / DoRA adapter (r 8,
lora_alpha 16, PEFT's defaults otherwise, so the adapter stays f32 as
get_peft_model's autocast_adapter_dtype leaves it), gradient checkpointing when asked,
and a training step as transformers' Trainer takes it: forward with labels (the loss
is computed inside the model), backward, clip_grad_norm_ to 1.0, torch.optim.AdamW,
zero_grad. Random token ids; labels = ids.

Warm-up steps first, then the timed steps between two torch.cuda.synchronize() calls.
Prints one JSON line on stdout: tokens/s, seconds per step, the first loss and
torch.cuda.max_memory_allocated() since the model was built (weights included, as on
finlora's side). A failure prints {"error": ...} and exits 1.

    python3 bench/gpu/train_peft.py --model 8b --targets qkv --dora --dropout 0.05
"""
import argparse
import inspect
import json
import math
import sys
import time

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_factor=32.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_factor=8.0),
}
VOCAB = 128256
TARGETS = {
    "qkv": ["q_proj", "k_proj", "v_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def llama_config(LlamaConfig, name):
    s = dict(SHAPES[name])
    factor = s.pop("rope_factor")
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    kw = dict(s, vocab_size=VOCAB, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
              bos_token_id=128000, eos_token_id=128001, use_cache=False)
    # transformers 5 takes the rotary settings as one rope_parameters dict; 4.x as
    # rope_theta + rope_scaling.
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        kw["rope_parameters"] = dict(rope, rope_theta=500000.0)
    else:
        kw["rope_theta"] = 500000.0
        kw["rope_scaling"] = rope
    return LlamaConfig(**kw)


def run(args):
    import torch
    import transformers
    import peft
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    torch.manual_seed(args.seed)
    config = llama_config(LlamaConfig, args.model)
    t_build = time.perf_counter()
    # Built on the GPU in bf16 directly: initialising 8e9 parameters on the host would
    # take minutes.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.use_cache = False
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=args.dropout, target_modules=TARGETS[args.targets],
                      use_dora=args.dora, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if args.checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad (the embeddings
        # are frozen); it is what current transformers recommends.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    adapter_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 11)
    ids = torch.randint(0, VOCAB, (args.batch, args.seq), device="cuda", generator=gen)
    torch.cuda.synchronize()
    build_seconds = time.perf_counter() - t_build
    torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    loss0 = None
    for i in range(args.warmup):
        loss = step()
        if i == 0:
            loss0 = loss.detach().item()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    last = loss.detach().item()
    if loss0 is None:
        loss0 = last
    tokens = args.batch * args.seq
    return {
        "side": "peft",
        "tokensPerSecond": tokens / seconds,
        "stepSeconds": seconds,
        "steps": args.steps,
        "warmup": args.warmup,
        "peakBytes": torch.cuda.max_memory_allocated(),
        "reservedBytes": torch.cuda.max_memory_reserved(),
        "loss0": loss0,
        "lossLast": last,
        "lnVocab": math.log(VOCAB),
        "buildSeconds": build_seconds,
        "trainable": sum(p.numel() for p in params),
        "adapterDtypes": adapter_dtypes,
        "attention": getattr(model.config, "_attn_implementation", None),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "device": torch.cuda.get_device_name(),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(SHAPES), required=True)
    p.add_argument("--targets", choices=sorted(TARGETS), required=True)
    p.add_argument("--dora", action="store_true")
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    try:
        result = run(args)
    except Exception as e:  # one JSON line either way, so the runner can tabulate the failure
        print(json.dumps({"side": "peft", "error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
