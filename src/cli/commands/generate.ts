// `finlora generate`: continues prompts with a model and its tokenizer — greedy by
// default, sampled with --temperature / --top-p / --top-k / --seed — and streams the new
// text to stdout as it is decoded. Stdout carries the completions and nothing else, one
// after another, each ended by a newline (several --prompt flags make one left-padded
// batch; its rows are printed in order, a row streaming once the rows before it are
// done); timings and download progress go to stderr. Every flag is checked before the
// model is loaded. --chat follows transformers' apply_chat_template(...,
// add_generation_prompt=True) and encodes the rendered text without adding special
// tokens, as transformers does.
import { AdapterError, loadPeftAdapter } from '../../adapters/peft.js';
import type { Backend } from '../../backend/backend.js';
import { SafetensorsError } from '../../io/safetensors.js';
import { type ChatMessage, Tokenizer } from '../../io/tokenizer.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { generate, leftPad, type SamplingOptions } from '../../models/generate.js';
import { ConfigError } from '../../models/llama/config.js';
import { LlamaForCausalLM, type WeightDType } from '../../models/llama/model.js';
import type { Command } from '../command.js';
import { defaultWeightDtype, deviceHelp, DEVICE_OPTION, resolveDevice } from '../device.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';
import { modelDir } from '../model_arg.js';

const DEFAULT_MAX_NEW_TOKENS = 256;

const HELP = `finlora generate — continue a prompt with a model, streaming the text

Usage:
  finlora generate --model M --prompt "..." [--prompt "..." ...] [options]

Options:
  --model M              a Hugging Face model directory, or a hub id org/name[@revision]
                         (found in or downloaded to the Hugging Face cache: HF_HOME,
                         HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN)
  --prompt TEXT          the prompt; several make one left-padded batch, printed in order
  --chat                 wrap each prompt as a user message in the model's chat template
                         (with the assistant's turn opened)
  --system TEXT          a system message before the prompt (needs --chat)
  --max-new-tokens N     at most N new tokens per prompt (default ${DEFAULT_MAX_NEW_TOKENS})
  --temperature T        sample with this temperature (> 0); 0 is greedy
  --top-p P              sample from the smallest set of most probable tokens whose
                         probability reaches P, in (0, 1]
  --top-k K              sample from the K most probable tokens (0: all)
  --seed S               seed of the sampling, an integer in [0, 2^32); the same seed
                         gives the same text (default: a random one, printed on stderr)
  --stop STR             stop a row when its text contains STR (cut from the output);
                         may be repeated. Rows also stop at the tokenizer's EOS tokens
  --dtype f32|bf16       storage dtype of the weights in memory (default: bf16 on a
                         device that computes in bf16, such as cuda, so the model
                         computes in bf16; else f32)
${deviceHelp(25)}
  --adapter DIR          apply a PEFT LoRA / DoRA adapter directory (adapter_config.json,
                         adapter_model.safetensors) to the model
  -h, --help             this text

Without --temperature, --top-p, --top-k or --seed decoding is greedy (the largest
logit each step). Any of them turns sampling on (temperature 1 unless given).
Stdout holds only the generated text, each completion followed by a newline; timings
go to stderr.

Examples:
  finlora generate --model meta-llama/Llama-3.2-1B-Instruct --chat --prompt "What is EBITDA?"
  finlora generate --model ./my-model --prompt "Revenue rose" --temperature 0.7 --top-p 0.9 --seed 1

Exit codes: 0 success, 1 bad input or failure, 2 bad usage.
`;

const OPTIONS = {
  model: { type: 'string' },
  adapter: { type: 'string' },
  prompt: { type: 'string', multiple: true },
  chat: { type: 'boolean' },
  system: { type: 'string' },
  'max-new-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  dtype: { type: 'string' },
  ...DEVICE_OPTION,
} as const;

const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

function parseNumber(flag: string, text: string, check: (x: number) => boolean, what: string): number {
  const x = NUMBER_RE.test(text.trim()) ? Number(text) : Number.NaN;
  if (!check(x)) throw new UsageError(`${flag} must be ${what}, not '${text}'`);
  return x;
}

const isCount = (x: number) => Number.isSafeInteger(x) && x >= 0;

/** The sampling settings the flags ask for, or null for greedy decoding. */
function parseSampling(values: { temperature?: string; 'top-p'?: string; 'top-k'?: string; seed?: string }): SamplingOptions | null {
  const temperature = values.temperature === undefined ? undefined : parseNumber('--temperature', values.temperature, (x) => Number.isFinite(x) && x >= 0, 'a number >= 0');
  const topP = values['top-p'] === undefined ? undefined : parseNumber('--top-p', values['top-p'], (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  const topK = values['top-k'] === undefined ? undefined : parseNumber('--top-k', values['top-k'], isCount, 'a non-negative integer');
  const seed = values.seed === undefined ? undefined : parseNumber('--seed', values.seed, (x) => isCount(x) && x < 2 ** 32, 'an integer in [0, 2^32)');
  if (temperature === 0 || [temperature, topP, topK, seed].every((v) => v === undefined)) return null;
  return { temperature, topP, topK, seed };
}

function parseDtype(value: string | undefined, device: Backend): WeightDType {
  if (value === undefined) return defaultWeightDtype(device);
  if (value === 'f32') return 'f32';
  if (value === 'bf16') return 'bf16';
  throw new UsageError(`--dtype must be f32 or bf16, not '${value}'`);
}

/** Runs a tokenizer step, turning its errors (which name the file) into user errors. */
function tokenizerStep<T>(step: () => T): T {
  try {
    return step();
  } catch (e) {
    if (e instanceof Error) throw new UserError(e.message);
    throw e;
  }
}

function loadModel(dir: string, dtype: WeightDType, device: Backend): LlamaForCausalLM {
  try {
    return LlamaForCausalLM.fromPretrained(dir, { dtype, device });
  } catch (e) {
    if (e instanceof ConfigError || e instanceof CheckpointError || e instanceof SafetensorsError) throw new UserError(e.message);
    throw e;
  }
}

/** Puts a PEFT adapter on the model, unmerged (PEFT's PeftModel.from_pretrained), turning adapter problems into user errors. */
function applyAdapter(model: LlamaForCausalLM, dir: string): void {
  try {
    loadPeftAdapter(dir, model);
  } catch (e) {
    if (e instanceof AdapterError || e instanceof SafetensorsError) throw new UserError(e.message);
    throw e;
  }
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

export const command: Command = {
  name: 'generate',
  help: HELP,
  async run(argv, out) {
    const { values } = parseCommandArgs('generate', { args: [...argv], options: OPTIONS, allowPositionals: false });
    if (values.model === undefined) throw new UsageError('--model DIR|ORG/NAME is required');
    const prompts = values.prompt ?? [];
    if (prompts.length === 0) throw new UsageError('--prompt TEXT is required');
    if (values.system !== undefined && values.chat !== true) throw new UsageError('--system needs --chat (it is a message of the chat template)');
    const maxNewTokens =
      values['max-new-tokens'] === undefined ? DEFAULT_MAX_NEW_TOKENS : parseNumber('--max-new-tokens', values['max-new-tokens'], (x) => isCount(x) && x > 0, 'a positive integer');
    const sampling = parseSampling(values);
    const device = resolveDevice(values.device);
    const dtype = parseDtype(values.dtype, device);
    const stops = values.stop ?? [];
    if (stops.includes('')) throw new UsageError('--stop needs a non-empty string');

    const started = performance.now();
    const dir = await modelDir(values.model);
    let tokenizer: Tokenizer;
    try {
      // Its only notes are about a missing pad token; padding is masked out, so the
      // fallback to EOS changes nothing here.
      tokenizer = await Tokenizer.fromDir(dir, { warn: () => {} });
    } catch (e) {
      if (e instanceof Error) throw new UserError(e.message);
      throw e;
    }
    const encoded = prompts.map((prompt, i) => {
      const ids = tokenizerStep(() => {
        if (values.chat !== true) return tokenizer.encode(prompt);
        const messages: ChatMessage[] = [...(values.system === undefined ? [] : [{ role: 'system', content: values.system }]), { role: 'user', content: prompt }];
        return tokenizer.encode(tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
      });
      if (ids.length === 0) throw new UserError(`prompt ${i + 1} is empty after tokenization (the tokenizer of ${dir} adds no BOS token)`);
      return ids;
    });

    const model = loadModel(dir, dtype, device);
    try {
      if (values.adapter !== undefined) applyAdapter(model, values.adapter);
      const V = model.config.vocabSize;
      encoded.forEach((ids, i) => {
        const bad = ids.find((id) => id >= V);
        if (bad !== undefined) throw new UserError(`prompt ${i + 1} has token id ${bad}, outside the model's vocabulary of ${V} (${dir}: tokenizer.json and config.json disagree)`);
      });
      const eos = [...new Set([...tokenizer.eosIds, ...model.config.eosTokenIds])];
      const padId = tokenizer.padId ?? model.config.padTokenId ?? eos[0] ?? null;
      const unequal = encoded.some((ids) => ids.length !== encoded[0].length);
      if (unequal && padId === null) throw new UserError(`${dir}: prompts of different lengths need padding, and neither the tokenizer nor config.json names a pad or EOS token`);
      const batch = leftPad(encoded, padId ?? 0);
      const window = model.config.slidingWindow;
      const T0 = batch.ids[0].length;
      if (window !== null && T0 + maxNewTokens > window) {
        throw new UserError(`${T0} prompt tokens + --max-new-tokens ${maxNewTokens} exceed the sliding_window of ${window} in ${dir}/config.json (sliding-window attention is not implemented)`);
      }
      const loadedAt = performance.now();

      // Row `current` streams; later rows are held until the rows before them are done.
      const B = encoded.length;
      const held = new Array<string>(B).fill('');
      const done = new Array<boolean>(B).fill(false);
      let current = 0;
      const result = generate(model, batch.ids, {
        maxNewTokens,
        attentionMask: batch.attentionMask,
        eosTokenIds: eos,
        padTokenId: padId ?? undefined,
        ...(sampling === null ? {} : { sampling }),
        stopStrings: stops,
        // A model vocabulary padded past the tokenizer's (Qwen2 has 271 spare rows):
        // those ids have no text.
        decode: (ids) => tokenizer.decode(ids.filter((id) => id < tokenizer.vocabSize), { skipSpecialTokens: true }),
        onText: (row, text) => {
          if (row === current) out(text);
          else held[row] += text;
        },
        onFinish: (row) => {
          done[row] = true;
          while (current < B && done[current]) {
            out('\n');
            current++;
            if (current < B) {
              out(held[current]);
              held[current] = '';
            }
          }
        },
      });

      const newTokens = result.tokens.reduce((n, t) => n + t.length, 0);
      const genMs = result.timings.promptMs + result.timings.decodeMs;
      const rate = genMs > 0 ? ` (${((newTokens / genMs) * 1000).toFixed(1)} tokens/s)` : '';
      process.stderr.write(
        `finlora generate: loaded in ${seconds(loadedAt - started)}; prompt ${B > 1 ? `${B} × ` : ''}${T0} tokens in ${seconds(result.timings.promptMs)}; ` +
          `${newTokens} new tokens in ${seconds(genMs)}${rate}${result.seed === null ? '; greedy' : `; seed ${result.seed}`}\n`,
      );
      return 0;
    } finally {
      model.dispose();
    }
  },
};
