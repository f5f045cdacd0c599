// `finlora merge`: folds a PEFT LoRA / DoRA adapter into its base model and writes a
// complete model directory (config, safetensors shards with an index, tokenizer files)
// that transformers loads without PEFT, then prints the largest logit difference
// between the merged model as written and the base model with the adapter, on a probe
// input. With a quantized base (--quant-bits, or a checkpoint saved by bitsandbytes) it
// merges into the dequantized weights and warns on stderr that they carry the
// quantization's rounding. The work is src/adapters/merge.ts; this file parses options
// and reports.
import { AdapterError } from '../../adapters/peft.js';
import { MergeError, type MergedDType, mergeAdapter } from '../../adapters/merge.js';
import { LoraConfigError } from '../../adapters/lora/config.js';
import { SafetensorsError } from '../../io/safetensors.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { ConfigError } from '../../models/llama/config.js';
import type { Command } from '../command.js';
import { deviceHelp, DEVICE_OPTION, resolveDevice } from '../device.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';
import { formatForBits } from '../../quant/weight.js';
import { parseInputIds } from './forward.js';
import * as fs from 'node:fs';

const HELP = `finlora merge — fold a LoRA / DoRA adapter into its base model

Usage:
  finlora merge --model DIR --adapter DIR --out DIR [--dtype auto|f32|bf16|f16]
                [--quant-bits 8|4]

Options:
  --model DIR           the base model: a Hugging Face model directory
  --adapter DIR         a PEFT adapter directory (adapter_config.json,
                        adapter_model.safetensors), e.g. one finlora finetune wrote
  --out DIR             the merged model directory to create (must not exist, or be
                        empty); written under a temporary name and renamed at the end
  --dtype D             dtype of the written weights: auto (default: the dtype in the
                        base's config.json), f32, bf16 or f16. The merge is computed
                        in f32 either way
  --max-shard-size S    largest safetensors shard, like 5GB, 500MB or a byte count
                        (default 5GB)
  --quant-bits 8|4      the adapter was trained over a quantized base (FinLoRA's
                        quant_bits; the 8bits_/4bits_ in its directory name): quantize
                        the base as training did (8: int8, 4: NF4 double quantized),
                        then merge into the dequantized weights. A base saved quantized
                        by bitsandbytes is merged that way without this option
  --probe-ids JSON      token ids to compare merged and unmerged logits on, like
                        '[[1, 306, 4658]]' (default: 16 fixed ids)
${deviceHelp(24)}
  -h, --help            this text

The merged weights are W + s·B·A (LoRA) or (m / ‖W + s·B·A‖) ⊙ (W + s·B·A) per output
row (DoRA), as PEFT's merge_and_unload computes them. The report's "largest logit
difference" compares the merged directory, reloaded, with the base model plus adapter:
rounding to bf16/f16 or a wrong base shows up there. With a quantized base the merged
weights are the dequantized base plus the adapter (the weights the adapter was trained
against), so they carry the quantization's rounding: a warning on stderr says so, and
the logit difference is measured against the quantized base with the adapter unmerged.

Exit codes: 0 success, 1 bad input or failure, 2 bad usage.
`;

const OPTIONS = {
  model: { type: 'string' },
  adapter: { type: 'string' },
  out: { type: 'string' },
  dtype: { type: 'string' },
  'max-shard-size': { type: 'string' },
  'probe-ids': { type: 'string' },
  'quant-bits': { type: 'string' },
  ...DEVICE_OPTION,
} as const;

function parseDtype(v: string | undefined): MergedDType | undefined {
  if (v === undefined || v === 'auto') return undefined;
  if (v === 'f32' || v === 'bf16' || v === 'f16') return v;
  throw new UsageError(`--dtype must be auto, f32, bf16 or f16, not '${v}'`);
}

/** "5GB", "500MB", "100KB" (decimal units, as transformers' max_shard_size) or a byte count. */
export function parseSize(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?$/i.exec(v.trim());
  if (m === null) throw new UsageError(`--max-shard-size must be a size like 5GB, 500MB or a byte count, not '${v}'`);
  const unit = (m[2] ?? 'B').toUpperCase();
  const mult: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3 };
  const bytes = Math.floor(Number(m[1]) * mult[unit]);
  if (!(bytes > 0)) throw new UsageError(`--max-shard-size must be positive, not '${v}'`);
  return bytes;
}

function megabytes(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(2)} MB`;
}

export const command: Command = {
  name: 'merge',
  help: HELP,
  run(argv, out) {
    const { values } = parseCommandArgs('merge', { args: [...argv], options: OPTIONS, allowPositionals: false });
    if (values.model === undefined) throw new UsageError('--model DIR is required');
    if (values.adapter === undefined) throw new UsageError('--adapter DIR is required');
    if (values.out === undefined) throw new UsageError('--out DIR is required');
    const dtype = parseDtype(values.dtype);
    const maxShardBytes = values['max-shard-size'] === undefined ? undefined : parseSize(values['max-shard-size']);
    const quantBits = values['quant-bits'];
    if (quantBits !== undefined && quantBits !== '8' && quantBits !== '4') throw new UsageError(`--quant-bits must be 8 or 4, not '${quantBits}'`);
    const quant = quantBits === undefined ? undefined : formatForBits(Number(quantBits));
    const device = resolveDevice(values.device);
    let probe: number[] | undefined;
    if (values['probe-ids'] !== undefined) {
      let rows: number[][];
      try {
        rows = parseInputIds(values['probe-ids']);
      } catch (e) {
        if (e instanceof UsageError) throw new UsageError(e.message.replace(/--input-ids/g, '--probe-ids'));
        throw e;
      }
      if (rows.length !== 1) throw new UsageError('--probe-ids takes one row of token ids, like [[1, 306, 4658]]');
      probe = rows[0];
    }
    for (const [flag, dir] of [['--model', values.model], ['--adapter', values.adapter]] as const) {
      if (!fs.existsSync(dir)) throw new UserError(`${dir}: no such directory (${flag})`);
      if (!fs.statSync(dir).isDirectory()) throw new UserError(`${dir}: not a directory (${flag} takes a directory)`);
    }
    try {
      const r = mergeAdapter({ modelDir: values.model, adapterDir: values.adapter, outDir: values.out, dtype, maxShardBytes, probe, quant, device });
      out(
        `merged ${r.useDora ? 'DoRA' : 'LoRA'} adapter (${r.layers} layers) into ${values.out}: ${r.shards.length} shard${r.shards.length === 1 ? '' : 's'}, ${megabytes(r.totalBytes)} of ${r.dtype} weights\n` +
          `largest logit difference, merged vs unmerged, on a ${r.probeLength}-token probe: ${r.maxLogitDiff.toExponential(3)} (the adapter itself moves logits by up to ${r.adapterEffect.toExponential(3)})\n`,
      );
      if (r.quantized !== null) {
        process.stderr.write(
          `warning: the base is quantized (${r.quantized.format}, ${r.quantized.layers} Linear layers): the merged weights are its dequantized values plus the adapter, ` +
            `so they carry the quantization's rounding and differ from the original float base plus the adapter; ` +
            `largest logit difference against the quantized base with the adapter unmerged: ${r.maxLogitDiff.toExponential(3)}\n`,
        );
      }
      return 0;
    } catch (e) {
      if (e instanceof AdapterError || e instanceof MergeError || e instanceof LoraConfigError || e instanceof ConfigError || e instanceof CheckpointError || e instanceof SafetensorsError) {
        throw new UserError(e.message);
      }
      throw e;
    }
  },
};
