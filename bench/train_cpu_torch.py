# The PyTorch twin of bench/train_cpu.ts: the same Llama training step in plain torch
# (written for Debian's python3-torch 1.13: no scaled_dot_product_attention, so
# attention is the eager softmax(q kᵀ / √d + causal mask) v of transformers' Llama),
# f32, two threads, DoRA r 8 on q/k/v as PEFT 0.21 computes it (DoraLinearVariant /
# DoraLinearLayer, transcribed below since PEFT is not installed there):
#
#   result    = W x                                       (base layer, no bias)
#   x̃         = dropout(x)                                 (training with dropout > 0)
#   lora_w    = lora_B(lora_A(I)).T                        (B·A, built through forward)
#   n         = ‖W + s·lora_w.detach()‖ per row, detached  (DoRA §4.3)
#   g         = m / n
#   result   += (g − 1) ⊙ W x̃ + g ⊙ s·lora_B(lora_A(x̃))   (PEFT recomputes W x̃)
#
# A step is zero_grad, forward, the shifted causal-LM cross-entropy, backward and
# torch.optim.AdamW's step (torch 1.13's default single-tensor loop).
#
# Protocol (one JSON object per line on stdout): a first line describing torch (or
# {"error": ...} when torch is missing); then it answers, one per input line,
#   setup <hidden> <layers> <heads> <intermediate> <vocab> <batch> <seq> <rank>
#       builds the model and runs one warm-up step: {"ok": true, "loss": ...}
#   step  one timed training step: {"seconds": ..., "loss": ...}
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"error": "torch is not installed for %s (apt-get install python3-torch)" % sys.executable}), flush=True)
    sys.exit(0)

torch.set_num_threads(2)


def blas_library():
    """The BLAS torch's products run on. Debian's torch links libblas.so.3, which the
    alternatives system points at the reference (netlib) BLAS unless OpenBLAS is installed
    (apt-get install libopenblas0, which libtorch recommends); the reference BLAS is about
    30 times slower and would make the comparison meaningless."""
    torch.ones(8, 8) @ torch.ones(8, 8)
    with open("/proc/self/maps") as maps:
        paths = sorted({l.split()[-1] for l in maps if "blas" in l.lower() and ".so" in l})
    if any("openblas" in p for p in paths):
        return "OpenBLAS (%s)" % ", ".join(p.rsplit("/", 1)[-1] for p in paths if "libopenblas" in p)
    if any("/blas/libblas" in p for p in paths):
        return "reference BLAS (netlib: apt-get install libopenblas0 for a fair comparison)"
    return "BLAS: %s" % (", ".join(paths) or "none found")


print(json.dumps({"torch": torch.__version__, "python": sys.executable, "threads": torch.get_num_threads(), "blas": blas_library()}), flush=True)


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class DoraLinear(nn.Module):
    """A frozen bias-free Linear with a DoRA adapter, PEFT's forward in training mode."""

    def __init__(self, base, r, alpha, dropout):
        super().__init__()
        self.base_layer = base
        out_f, in_f = base.weight.shape
        self.lora_A = nn.Linear(in_f, r, bias=False)
        self.lora_B = nn.Linear(r, out_f, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            self.magnitude = nn.Parameter(torch.linalg.norm(base.weight, dim=1))

    def forward(self, x):
        result = self.base_layer(x)
        if isinstance(self.dropout, nn.Identity) or not self.training or self.dropout.p == 0:
            base_result = result
        else:
            x = self.dropout(x)
            base_result = None
        x_eye = torch.eye(self.lora_A.weight.shape[1], dtype=x.dtype)
        lora_weight = self.lora_B(self.lora_A(x_eye)).T
        weight = self.base_layer.weight
        weight_norm = torch.linalg.norm(weight + self.scaling * lora_weight.detach(), dim=1).detach()
        mag_norm_scale = (self.magnitude / weight_norm).view(1, -1)
        lora_result = self.lora_B(self.lora_A(x))
        if base_result is None:
            base_result = F.linear(x, weight)
        return result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * self.scaling


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads, r, dropout):
        super().__init__()
        self.heads = heads
        self.head_dim = d // heads
        lin = lambda: nn.Linear(d, d, bias=False)
        self.q_proj = DoraLinear(lin(), r, 16, dropout)
        self.k_proj = DoraLinear(lin(), r, 16, dropout)
        self.v_proj = DoraLinear(lin(), r, 16, dropout)
        self.o_proj = lin()

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        split = lambda t: t.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim) + mask
        p = F.softmax(scores, dim=-1, dtype=torch.float32)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, d, inter):
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d, heads, inter, r, dropout):
        super().__init__()
        self.input_layernorm = RMSNorm(d)
        self.self_attn = Attention(d, heads, r, dropout)
        self.post_attention_layernorm = RMSNorm(d)
        self.mlp = MLP(d, inter)

    def forward(self, h, cos, sin, mask):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    def __init__(self, d, layers, heads, inter, vocab, r, dropout):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Layer(d, heads, inter, r, dropout) for _ in range(layers)])
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        self.inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))

    def forward(self, ids):
        B, T = ids.shape
        freqs = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.norm(h))


def causal_lm_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))


model = opt = ids = None


def setup(d, layers, heads, inter, vocab, batch, seq, r):
    global model, opt, ids
    torch.manual_seed(0)
    model = Llama(d, layers, heads, inter, vocab, r, 0.05)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "magnitude" in name:
                continue
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
                p.requires_grad_(False)
        for m in model.modules():
            if isinstance(m, DoraLinear):
                m.magnitude.copy_(torch.linalg.norm(m.base_layer.weight, dim=1))
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    return step()


def step():
    opt.zero_grad(set_to_none=True)
    loss = causal_lm_loss(model(ids), ids)
    loss.backward()
    opt.step()
    return loss.item()


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "setup":
        loss = setup(*(int(v) for v in words[1:]))
        print(json.dumps({"ok": True, "loss": loss, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}), flush=True)
    elif words[0] == "step":
        t = time.perf_counter()
        loss = step()
        t = time.perf_counter() - t
        print(json.dumps({"seconds": t, "loss": loss}), flush=True)
    elif words[0] == "free":
        model = opt = ids = None
        print(json.dumps({"ok": True}), flush=True)
