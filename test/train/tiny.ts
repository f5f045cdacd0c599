// Test fixtures made on the fly: a tiny random Llama (in memory, or written as a
// Hugging Face model directory), and a small but real tokenizer.json — GPT-2's
// byte-level BPE alphabet (every byte one token, no merges) plus <s> and </s> — so
// any text tokenizes and the CLI can load the directory like a downloaded model.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultBackend } from '../../src/backend/registry.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { parseLlamaConfig } from '../../src/models/llama/config.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { randn, tensor } from '../../src/ops/creation.js';
import { assign } from '../../src/ops/inplace.js';
import { Rng } from '../../src/tensor/rng.js';
import { scope } from '../../src/tensor/tensor.js';

export const BOS = 256;
export const EOS = 257;
export const VOCAB = 258;

export function tinyConfigJson(): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
    num_attention_heads: 4, num_key_value_heads: 2, vocab_size: VOCAB, max_position_embeddings: 2048, rms_norm_eps: 1e-5,
    rope_theta: 10000, tie_word_embeddings: false, bos_token_id: BOS, eos_token_id: EOS, torch_dtype: 'float32',
  };
}

/** A tiny random f32 Llama on the default device, FINLORA_DEVICE (norm weights 1, the rest N(0, 0.1²)). */
export function tinyLlama(seed = 7): LlamaForCausalLM {
  const model = new LlamaForCausalLM(parseLlamaConfig(tinyConfigJson()), defaultBackend());
  const rng = new Rng(seed);
  for (const [name, p] of model.namedParameters()) {
    scope(() => {
      if (name.endsWith('norm.weight')) assign(p, tensor(new Float32Array(p.size).fill(1), p.shape));
      else assign(p, randn(p.shape, rng, { std: 0.1 }));
    });
    p.name = name;
  }
  return model;
}

/** GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest above U+0100. */
function byteAlphabet(): string[] {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCharCode(printable(b) ? b : 256 + extra++));
  return out;
}

export function tinyTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  byteAlphabet().forEach((c, i) => {
    vocab[c] = i;
  });
  vocab['<s>'] = BOS;
  vocab['</s>'] = EOS;
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(BOS, '<s>'), special(EOS, '</s>')],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [BOS], tokens: ['<s>'] } },
    },
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  };
}

export function tinyTokenizerConfig(): Record<string, unknown> {
  return { bos_token: '<s>', eos_token: '</s>', tokenizer_class: 'PreTrainedTokenizerFast', clean_up_tokenization_spaces: false, model_max_length: 2048 };
}

/** Writes a tiny random Llama as a model directory (config.json, model.safetensors, tokenizer files). */
export function writeTinyModelDir(dir: string, seed = 7): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(tinyConfigJson(), null, 2));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson()));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(tinyTokenizerConfig(), null, 2));
  const model = tinyLlama(seed);
  try {
    writeSafetensors(path.join(dir, 'model.safetensors'), Object.fromEntries(model.namedParameters()), { format: 'pt' });
  } finally {
    model.dispose();
  }
}

const WORDS = ['profit', 'loss', 'rose', 'fell', 'sales', 'steady', 'growth', 'decline', 'shares', 'flat'];
const LABELS: Record<string, string> = { rose: 'positive', growth: 'positive', fell: 'negative', decline: 'negative', steady: 'neutral', flat: 'neutral' };

/** Sentiment-style JSONL lines in FinLoRA's format, seeded. */
export function sentimentLines(n: number, seed = 1): string[] {
  const rng = new Rng(seed);
  const keys = Object.keys(LABELS);
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const key = keys[rng.int(keys.length)];
    const words = [WORDS[rng.int(WORDS.length)], key, WORDS[rng.int(WORDS.length)]];
    const context = `Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\nInput: ${words.join(' ')}\nAnswer: `;
    lines.push(JSON.stringify({ context, target: LABELS[key] }));
  }
  return lines;
}
