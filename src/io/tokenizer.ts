// A model directory's tokenizer, as transformers 4.x loads it: tokenizer.json runs in
// @huggingface/tokenizers (a JavaScript port of the Rust `tokenizers` pipeline:
// normalizer, pre-tokenizer, BPE model, post-processor, decoder), tokenizer_config.json
// and special_tokens_map.json name the special tokens, generation_config.json adds the
// end-of-sequence ids that generation stops on, and chat templates render with
// @huggingface/jinja, the Jinja subset that Hugging Face chat templates are written in.
//
// Where transformers departs from tokenizer.json, this follows transformers:
// - LlamaTokenizer(Fast) rebuilds its post-processor from add_bos_token (default true)
//   and add_eos_token (default false), so those keys win over tokenizer.json's template.
// - decode() cleans up tokenization spaces (" ." → ".") when tokenizer_config.json says
//   clean_up_tokenization_spaces, as Llama-3's does; pass false for exact round trips.
// - special_tokens_map.json is read only for configs without added_tokens_decoder
//   (written before transformers 4.34); there its values override tokenizer_config.json.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface EncodeOptions {
  /** Add the tokens the model expects around a sequence (BOS for Llama); default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
  /** Default: tokenizer_config.json's clean_up_tokenization_spaces (false when absent). */
  cleanUpTokenizationSpaces?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the header that opens the assistant's turn. Default false, as transformers. */
  addGenerationPrompt?: boolean;
  /** Further template variables (tools, documents, date_string, ...). */
  variables?: Record<string, unknown>;
}

export interface TokenizerLoadOptions {
  /** Where notes about fallbacks go (the pad token, for one); default console.warn. */
  warn?: (message: string) => void;
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const LLAMA_CLASSES = new Set(['LlamaTokenizer', 'LlamaTokenizerFast', 'CodeLlamaTokenizer', 'CodeLlamaTokenizerFast']);
const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'pad_token'] as const;
type SpecialKey = (typeof SPECIAL_KEYS)[number];

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function readJson(file: string, required: true): JsonObject;
function readJson(file: string, required: false): JsonObject | null;
function readJson(file: string, required: boolean): JsonObject | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  let parsed: Json;
  try {
    parsed = JSON.parse(text) as Json;
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(parsed)) throw new Error(`${file} must hold a JSON object`);
  return parsed;
}

// Special tokens are written either as plain strings or as serialized AddedToken
// objects ({"content": "<s>", "lstrip": false, ...}).
function tokenContent(value: Json | undefined): string | null {
  if (typeof value === 'string') return value;
  if (isObject(value) && typeof value.content === 'string') return value.content;
  return null;
}

function idList(value: Json | undefined): number[] {
  if (typeof value === 'number' && Number.isInteger(value)) return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === 'number' && Number.isInteger(v));
  return [];
}

export class Tokenizer {
  /** The directory the files came from. */
  readonly dir: string;
  /** Number of ids: the model vocabulary plus added tokens (max id + 1). */
  readonly vocabSize: number;
  readonly bosToken: string | null;
  readonly bosId: number | null;
  readonly eosToken: string | null;
  /** Ids that end a sequence: generation_config.json's eos_token_id list, then the tokenizer's eos. */
  readonly eosIds: readonly number[];
  readonly padToken: string | null;
  readonly padId: number | null;
  /** True when no pad token was configured and padId fell back to the eos token. */
  readonly padIsFallback: boolean;
  /** Ids of special tokens (skipped by decode with skipSpecialTokens). */
  readonly specialIds: ReadonlySet<number>;

  private readonly inner: HfTokenizer;
  private readonly cleanUpSpaces: boolean;
  // Set for Llama tokenizer classes, whose special tokens come from the config flags.
  private readonly llamaSpecials: { bos: boolean; eos: boolean } | null;
  private readonly special: Partial<Record<SpecialKey, string>>;
  private readonly chatTemplateSource: { text: string; file: string } | null;
  private chatTemplate: Template | null = null;

  private constructor(
    dir: string,
    inner: HfTokenizer,
    config: JsonObject,
    special: Partial<Record<SpecialKey, string>>,
    generation: JsonObject | null,
    chatTemplate: { text: string; file: string } | null,
    warn: (message: string) => void,
  ) {
    this.dir = dir;
    this.inner = inner;
    this.special = special;
    this.chatTemplateSource = chatTemplate;
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;

    let maxId = -1;
    for (const id of inner.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const idOf = (token: string | undefined, key: string): number | null => {
      if (token === undefined) return null;
      const id = inner.token_to_id(token);
      if (id === undefined) throw new Error(`${key} ${JSON.stringify(token)} of ${dir} is not in the vocabulary of tokenizer.json`);
      return id;
    };
    this.bosToken = special.bos_token ?? null;
    this.bosId = idOf(special.bos_token, 'bos_token');
    this.eosToken = special.eos_token ?? null;
    const eosId = idOf(special.eos_token, 'eos_token');
    const eos = idList(generation?.eos_token_id);
    if (eosId !== null && !eos.includes(eosId)) eos.push(eosId);
    for (const id of eos) {
      if (id < 0 || id >= this.vocabSize) throw new Error(`eos_token_id ${id} in ${path.join(dir, 'generation_config.json')} is outside the vocabulary (${this.vocabSize} ids)`);
    }
    this.eosIds = eos;

    const genPad = idList(generation?.pad_token_id)[0];
    if (special.pad_token !== undefined) {
      this.padToken = special.pad_token;
      this.padId = idOf(special.pad_token, 'pad_token');
      this.padIsFallback = false;
    } else if (genPad !== undefined && genPad >= 0 && genPad < this.vocabSize) {
      this.padToken = inner.id_to_token(genPad) ?? null;
      this.padId = genPad;
      this.padIsFallback = false;
    } else if (eosId !== null || eos.length > 0) {
      // What FinLoRA's scripts and transformers' generate() do: pad with eos. Padded
      // positions are masked, so which id fills them does not change results.
      this.padId = eosId ?? eos[0]!;
      this.padToken = inner.id_to_token(this.padId) ?? null;
      this.padIsFallback = true;
      warn(`${dir}: no pad token configured; padding with the eos token ${JSON.stringify(this.padToken)} (id ${this.padId})`);
    } else {
      this.padToken = null;
      this.padId = null;
      this.padIsFallback = false;
      warn(`${dir}: no pad or eos token configured; batches of unequal length cannot be padded`);
    }

    const specialIds = new Set<number>();
    for (const [id, added] of inner.get_added_tokens_decoder()) if (added.special) specialIds.add(id);
    for (const id of [this.bosId, eosId, this.padId, ...eos]) if (id !== null) specialIds.add(id);
    this.specialIds = specialIds;

    const cls = typeof config.tokenizer_class === 'string' ? config.tokenizer_class : '';
    this.llamaSpecials = LLAMA_CLASSES.has(cls)
      ? { bos: config.add_bos_token !== false, eos: config.add_eos_token === true }
      : null;
  }

  /**
   * Loads tokenizer.json and tokenizer_config.json (both required) and, when present,
   * special_tokens_map.json, generation_config.json and chat_template.jinja.
   */
  static async fromDir(dir: string, options: TokenizerLoadOptions = {}): Promise<Tokenizer> {
    const warn = options.warn ?? ((message: string) => console.warn(message));
    const tokenizerFile = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(tokenizerFile)) throw new Error(`no tokenizer.json in ${dir} (expected ${tokenizerFile})`);
    const configFile = path.join(dir, 'tokenizer_config.json');
    if (!fs.existsSync(configFile)) throw new Error(`no tokenizer_config.json in ${dir} (expected ${configFile})`);
    const tokenizerJson = readJson(tokenizerFile, true);
    const config = readJson(configFile, true);
    const legacy = !isObject(config.added_tokens_decoder);
    const specialMap = legacy ? readJson(path.join(dir, 'special_tokens_map.json'), false) : null;
    const generation = readJson(path.join(dir, 'generation_config.json'), false);

    const special: Partial<Record<SpecialKey, string>> = {};
    for (const key of SPECIAL_KEYS) {
      const token = tokenContent(specialMap?.[key]) ?? tokenContent(config[key]);
      if (token !== null) special[key] = token;
    }

    let inner: HfTokenizer;
    try {
      inner = new HfTokenizer(tokenizerJson, config);
    } catch (err) {
      throw new Error(`${tokenizerFile} could not be loaded as a tokenizer: ${(err as Error).message}`);
    }
    return new Tokenizer(dir, inner, config, special, generation, findChatTemplate(dir, config, configFile), warn);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    if (this.llamaSpecials === null) return this.inner.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    const ids = this.inner.encode(text, { add_special_tokens: false }).ids;
    if (!addSpecialTokens) return ids;
    if (this.llamaSpecials.bos && this.bosId !== null) ids.unshift(this.bosId);
    const eosId = this.eosToken === null ? undefined : this.inner.token_to_id(this.eosToken);
    if (this.llamaSpecials.eos && eosId !== undefined) ids.push(eosId);
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`token id ${id} is outside the vocabulary of ${this.dir} (${this.vocabSize} ids)`);
      }
    }
    const skip = options.skipSpecialTokens ?? false;
    // The library decodes [] as an error and filters special tokens by content, which
    // misses a bos/eos that tokenizer.json does not flag special; filter by id here.
    const kept = skip ? ids.filter((id) => !this.specialIds.has(id)) : [...ids];
    if (kept.length === 0) return '';
    return this.inner.decode(kept, {
      skip_special_tokens: skip,
      clean_up_tokenization_spaces: options.cleanUpTokenizationSpaces ?? this.cleanUpSpaces,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.inner.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.inner.id_to_token(id);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplateSource !== null;
  }

  /**
   * Renders the model's chat template. The result already holds the BOS token when the
   * template writes bos_token (Llama-3's does): encode it with addSpecialTokens false.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const source = this.chatTemplateSource;
    if (source === null) throw new Error(`${this.dir} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja)`);
    if (this.chatTemplate === null) {
      try {
        this.chatTemplate = new Template(source.text);
      } catch (err) {
        throw new Error(`the chat template in ${source.file} does not parse: ${(err as Error).message}`);
      }
    }
    // transformers passes the special tokens as strings, plus the messages and flags.
    const variables: Record<string, unknown> = {
      ...options.variables,
      messages: messages.map((m) => ({ ...m })),
      add_generation_prompt: options.addGenerationPrompt ?? false,
    };
    for (const key of SPECIAL_KEYS) {
      const token = this.special[key];
      if (token !== undefined) variables[key] = token;
    }
    try {
      return this.chatTemplate.render(variables);
    } catch (err) {
      throw new Error(`chat template of ${source.file}: ${(err as Error).message}`);
    }
  }
}

// transformers saves templates to chat_template.jinja since 4.50 and reads it before
// tokenizer_config.json's chat_template, which may also be a list of named templates.
function findChatTemplate(dir: string, config: JsonObject, configFile: string): { text: string; file: string } | null {
  const jinjaFile = path.join(dir, 'chat_template.jinja');
  if (fs.existsSync(jinjaFile)) return { text: fs.readFileSync(jinjaFile, 'utf8'), file: jinjaFile };
  const value = config.chat_template;
  if (typeof value === 'string') return { text: value, file: configFile };
  if (Array.isArray(value)) {
    for (const entry of value) {
      if (isObject(entry) && entry.name === 'default' && typeof entry.template === 'string') {
        return { text: entry.template, file: configFile };
      }
    }
  }
  return null;
}
