// A tiny, valid tokenizer for the 256-id fixture models of test/fixtures/models, which
// ship without one: tokenizer.json in the layout Llama-2 / Mistral use (a BPE model with
// byte_fallback, decoded by ByteFallback + Fuse) but with no merges and no pieces, so
// every character falls back to its UTF-8 bytes: ids 0-2 are <unk>, <s>, </s> and id
// 3 + b is the byte <0xbb> for b < 253 (0xFD-0xFF never occur in UTF-8). Any text
// encodes within the fixtures' vocabulary and every id they can produce decodes.
// tokenizer_config.json names the special tokens and a small chat template.
//
//   node dist/test/cli/byte_tokenizer.js DIR    writes both files into DIR
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const SPECIALS = ['<unk>', '<s>', '</s>'];

export const CHAT_TEMPLATE =
  "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/** Writes tokenizer.json and tokenizer_config.json into `dir`. */
export function writeByteTokenizer(dir: string, options: { chatTemplate?: boolean } = {}): void {
  const vocab: Record<string, number> = {};
  SPECIALS.forEach((t, id) => (vocab[t] = id));
  for (let b = 0; b < 253; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  const added = SPECIALS.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Fuse' }] },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: [] },
  };
  const config = {
    tokenizer_class: 'LlamaTokenizer',
    bos_token: '<s>',
    eos_token: '</s>',
    unk_token: '<unk>',
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    added_tokens_decoder: Object.fromEntries(added.map((a) => [String(a.id), a])),
    ...(options.chatTemplate === false ? {} : { chat_template: CHAT_TEMPLATE }),
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 2));
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (dir === undefined || !fs.existsSync(dir)) {
    process.stderr.write('usage: node dist/test/cli/byte_tokenizer.js DIR (an existing directory)\n');
    process.exitCode = 2;
  } else {
    writeByteTokenizer(dir);
  }
}
