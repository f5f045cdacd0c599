// Sampled decoding: the warpers on hand-made logits (top-p keeps exactly the smallest
// most-probable set reaching top_p, as transformers' TopPLogitsWarper; top-k keeps ties;
// top-k acts before top-p), checked also against a direct port of transformers' top-p
// rule on random logits; then generation on a transformers fixture model: temperature
// 0 / tiny temperature / tiny top_p equal greedy, seeds reproduce, EOS and stop strings
// end rows of a batch individually, and streamed text joins to the returned text.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { defaultBackend } from '../../src/backend/registry.js';
import { LlamaForCausalLM } from '../../src/models/llama/model.js';
import { drawToken, generate, greedyGenerate, leftPad, samplingCandidates, type FinishReason, type GenerateOptions } from '../../src/models/generate.js';
import { Rng } from '../../src/tensor/rng.js';

const FIXTURE = new URL('../../../test/fixtures/models/llama3_gqa', import.meta.url).pathname;

const ids = (c: { ids: Int32Array }) => Array.from(c.ids);
// The logits are f32, so probabilities built from them hold to about 1e-7.

/** Logits whose softmax is `probs`, placed at the given ids of a vocabulary of `V`. */
function logitsFor(V: number, entries: [number, number][]): Float32Array {
  const l = new Float32Array(V).fill(-Infinity);
  for (const [id, p] of entries) l[id] = Math.log(p);
  return l;
}

/**
 * transformers' TopPLogitsWarper in plain code: sort ascending, cumulative softmax,
 * drop tokens whose cumulative sum is <= 1 - top_p, keep the most probable always.
 * Returns the kept ids (ascending) and the smallest distance of a cumulative sum from
 * the boundary, so that cases decided by rounding can be skipped.
 */
function transformersTopP(logits: Float32Array, topP: number): { kept: number[]; margin: number } {
  const max = logits.reduce((m, x) => Math.max(m, x), -Infinity);
  const w = Array.from(logits, (x) => Math.exp(x - max));
  const total = w.reduce((a, b) => a + b, 0);
  const asc = w.map((x, i) => i).sort((a, b) => w[a] - w[b] || b - a);
  let cum = 0;
  let margin = Infinity;
  const kept: number[] = [];
  asc.forEach((i, k) => {
    cum += w[i] / total;
    margin = Math.min(margin, Math.abs(cum - (1 - topP)));
    if (cum > 1 - topP || k === asc.length - 1) kept.push(i);
  });
  return { kept: kept.sort((a, b) => a - b), margin };
}

describe('sampling warpers on hand-made logits', () => {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at ids 7, 2, 5, 0 of a vocabulary of 9.
  const logits = logitsFor(9, [[7, 0.5], [2, 0.3], [5, 0.15], [0, 0.05]]);

  test('top-p keeps the smallest most-probable set whose probability reaches top_p, at least one token', () => {
    const cases: [number, number[]][] = [
      [1e-9, [7]],
      [0.4, [7]],
      [0.7, [2, 7]],
      [0.79, [2, 7]],
      [0.81, [2, 5, 7]],
      [0.9, [2, 5, 7]],
      [0.96, [0, 2, 5, 7]],
      [1, [0, 2, 5, 7]],
    ];
    for (const [topP, want] of cases) assert.deepEqual(ids(samplingCandidates(logits, { topP })), want, `top_p ${topP}`);
    const c = samplingCandidates(logits, { topP: 0.7 });
    assert.ok(Math.abs(c.probs[0] - 0.375) < 1e-7 && Math.abs(c.probs[1] - 0.625) < 1e-7, `renormalised ${Array.from(c.probs)}`);
  });

  test('temperature scales the logits before the softmax; 0 is the argmax', () => {
    const c = samplingCandidates(logits, { temperature: 0.5 });
    const sq = [0.05, 0.3, 0.15, 0.5].map((p) => p * p);
    const z = sq.reduce((a, b) => a + b, 0);
    assert.deepEqual(ids(c), [0, 2, 5, 7]);
    sq.forEach((s, i) => assert.ok(Math.abs(c.probs[i] - s / z) < 1e-7, `p[${i}] ${c.probs[i]} vs ${s / z}`));
    assert.deepEqual(ids(samplingCandidates(logits, { temperature: 0 })), [7]);
    // Ties: the first index, as torch.argmax.
    assert.deepEqual(ids(samplingCandidates(Float32Array.of(1, 3, 3, 2), { temperature: 0 })), [1]);
  });

  test('top-k keeps the k largest and ties with the k-th; it acts before top-p', () => {
    const l = Float32Array.of(1, 3, 3, 2, 0);
    assert.deepEqual(ids(samplingCandidates(l, { topK: 1 })), [1, 2]);
    assert.deepEqual(ids(samplingCandidates(l, { topK: 2 })), [1, 2]);
    assert.deepEqual(ids(samplingCandidates(l, { topK: 3 })), [1, 2, 3]);
    assert.deepEqual(ids(samplingCandidates(l, { topK: 9 })), [0, 1, 2, 3, 4]);
    // 0.4, 0.3, 0.2, 0.1: top-k 2 leaves 4/7 and 3/7, and 4/7 alone reaches top_p 0.5
    // (top-p first would keep two tokens).
    const four = logitsFor(4, [[0, 0.4], [1, 0.3], [2, 0.2], [3, 0.1]]);
    assert.deepEqual(ids(samplingCandidates(four, { topK: 2, topP: 0.5 })), [0]);
    assert.deepEqual(ids(samplingCandidates(four, { topP: 0.5 })), [0, 1]);
  });

  test('top-p agrees with a port of transformers on random logits, small and large vocabularies', () => {
    const rng = new Rng(11);
    let compared = 0;
    for (let trial = 0; trial < 60; trial++) {
      const V = trial % 3 === 0 ? 5000 : 2 + rng.int(40);
      const spread = [0.5, 2, 6][trial % 3];
      const l = Float32Array.from({ length: V }, () => rng.normal() * spread);
      for (const topP of [0.05, 0.3, 0.6, 0.9, 0.99]) {
        const ref = transformersTopP(l, topP);
        if (ref.margin < 1e-9) continue;
        assert.deepEqual(ids(samplingCandidates(l, { topP })), ref.kept, `trial ${trial}, V ${V}, top_p ${topP}`);
        compared++;
      }
    }
    assert.ok(compared > 250, `only ${compared} cases compared`);
  });

  test('top-p beyond the tokens near the top: one dominant token and a long flat tail', () => {
    // Each tail token has e^-10 of the top's weight; top_p 0.5 needs many of them, so
    // the walk must go past the tokens near the maximum.
    const V = 100_001;
    const l = new Float32Array(V);
    l[0] = 10;
    const got = ids(samplingCandidates(l, { topP: 0.5 }));
    const ref = transformersTopP(l, 0.5);
    assert.equal(got.length, ref.kept.length);
    assert.ok(got.length > 1000);
    // Among equal tail tokens the lower ids are kept.
    assert.deepEqual(got, Array.from({ length: got.length }, (_, i) => i));
  });

  test('bad settings are refused', () => {
    for (const opts of [{ topP: 0 }, { topP: 1.5 }, { topP: Number.NaN }, { temperature: -1 }, { temperature: Infinity }, { topK: 1.5 }, { topK: -1 }, { seed: -1 }, { seed: 2 ** 32 }]) {
      assert.throws(() => samplingCandidates(logits, opts), RangeError, JSON.stringify(opts));
    }
  });

  test('draws follow the probabilities and repeat with the generator state', () => {
    const c = { ids: Int32Array.of(3, 4, 9), probs: Float64Array.of(0.5, 0.3, 0.2) };
    const draw = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 20_000 }, () => drawToken(c, rng));
    };
    const a = draw(1);
    assert.deepEqual(draw(1), a);
    assert.notDeepEqual(draw(2), a);
    for (const [id, p] of [[3, 0.5], [4, 0.3], [9, 0.2]]) {
      const f = a.filter((t) => t === id).length / a.length;
      assert.ok(Math.abs(f - p) < 0.015, `token ${id}: frequency ${f}, probability ${p}`);
    }
  });
});

describe('generation on a fixture model', () => {
  // On the default device (FINLORA_DEVICE); every check compares runs on that one device.
  const model = LlamaForCausalLM.fromPretrained(FIXTURE, { device: defaultBackend() });
  after(() => model.dispose());
  const long = [1, 17, 200, 33, 41, 5, 99, 120];
  const short = [1, 64, 3, 250];
  const batch = leftPad([long, short], 0);
  const N = 12;
  const noEos = { eosTokenIds: [] as number[] };

  test('temperature 0, a tiny temperature and a tiny top_p give the greedy tokens', () => {
    const greedy = greedyGenerate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, ...noEos });
    for (const sampling of [{ temperature: 0 }, { temperature: 1e-6 }, { topP: 1e-9 }, { temperature: 1.5, topP: 1e-9, seed: 3 }, { topK: 1 }]) {
      const r = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, sampling, ...noEos });
      assert.deepEqual(r.sequences, greedy, JSON.stringify(sampling));
    }
  });

  test('the same seed gives the same tokens, another seed others; a padded row samples as it does alone', () => {
    const run = (seed: number, prompts = batch.ids, attentionMask = batch.attentionMask) =>
      generate(model, prompts, { maxNewTokens: N, attentionMask, sampling: { temperature: 1, seed }, ...noEos });
    const a = run(1234);
    assert.equal(a.seed, 1234);
    assert.deepEqual(run(1234).sequences, a.sequences);
    const b = run(1235);
    assert.notDeepEqual(b.tokens[0], a.tokens[0]);
    assert.notDeepEqual(b.tokens[1], a.tokens[1]);
    // Sampled, not greedy: the random model's distributions are broad.
    const greedy = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, ...noEos });
    assert.notDeepEqual(a.tokens, greedy.tokens);
    assert.equal(greedy.seed, null);
    // Row 0 draws from the seed's first stream whether or not other rows are there.
    const shortFirst = leftPad([short, long], 0);
    assert.deepEqual(run(77, shortFirst.ids, shortFirst.attentionMask).tokens[0], run(77, [short], [[1, 1, 1, 1]]).tokens[0]);
    // Without a seed one is chosen and reported, and reproduces the run.
    const free = generate(model, [long], { maxNewTokens: N, sampling: {}, ...noEos });
    assert.ok(free.seed !== null && Number.isInteger(free.seed));
    assert.deepEqual(generate(model, [long], { maxNewTokens: N, sampling: { seed: free.seed }, ...noEos }).tokens, free.tokens);
  });

  test('an EOS ends its own row: later tokens are padding, the other row goes on', () => {
    const free = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, ...noEos });
    // An id that row 1 produces at step 2 and row 0 never does.
    const stopAt = 2;
    const eosId = free.tokens[1][stopAt];
    assert.ok(!free.tokens[1].slice(0, stopAt).includes(eosId) && !free.tokens[0].includes(eosId), 'pick another prompt: the EOS candidate is ambiguous');
    // Several EOS ids, as Llama-3 Instruct has: one never produced, one that is.
    const unused = [...Array(256).keys()].find((id) => !free.tokens.flat().includes(id))!;
    const r = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, eosTokenIds: [unused, eosId], padTokenId: 9 });
    assert.deepEqual(r.finishReasons, ['length', 'eos']);
    assert.deepEqual(r.tokens[1], free.tokens[1].slice(0, stopAt + 1));
    assert.deepEqual(r.tokens[0], free.tokens[0]);
    assert.deepEqual(r.sequences[1], [...batch.ids[1], ...free.tokens[1].slice(0, stopAt + 1), ...new Array<number>(N - stopAt - 1).fill(9)]);
    // When every row has finished, decoding stops.
    const ends = [free.tokens[0][1], free.tokens[1][3]];
    const both = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, eosTokenIds: ends });
    const lengths = free.tokens.map((t) => t.findIndex((id) => ends.includes(id)) + 1);
    assert.deepEqual(both.finishReasons, ['eos', 'eos']);
    assert.deepEqual(both.tokens.map((t) => t.length), lengths);
    assert.equal(both.sequences[0].length, batch.ids[0].length + Math.max(...lengths));
  });

  test('a stop string ends its own row, is cut from the text, and streaming never shows it', () => {
    // A toy decoding: token id -> one letter, so that stop strings can be picked from the text.
    const decode = (t: readonly number[]) => t.map((id) => String.fromCharCode(97 + (id % 26))).join('');
    const free = generate(model, batch.ids, { maxNewTokens: N, attentionMask: batch.attentionMask, decode, ...noEos });
    const text0 = free.texts![0];
    const text1 = free.texts![1];
    assert.equal(text0, decode(free.tokens[0]));
    // The first two-letter string of row 0, starting at 3 or later, seen nowhere before in row 0 nor in row 1.
    let start = 3;
    while (start < N - 2 && (text0.indexOf(text0.slice(start, start + 2)) < start || text1.includes(text0.slice(start, start + 2)))) start++;
    assert.ok(start < N - 2, 'no usable stop string in this continuation');
    const stop = text0.slice(start, start + 2);
    const pieces: string[][] = [[], []];
    const finished: [number, FinishReason][] = [];
    const opts: GenerateOptions = {
      maxNewTokens: N,
      attentionMask: batch.attentionMask,
      decode,
      stopStrings: [stop, 'this never appears'],
      onText: (row, text) => pieces[row].push(text),
      onFinish: (row, reason) => finished.push([row, reason]),
      ...noEos,
    };
    const r = generate(model, batch.ids, opts);
    assert.deepEqual(r.finishReasons, ['stop', 'length']);
    assert.deepEqual(r.tokens[0], free.tokens[0].slice(0, start + 2));
    assert.equal(r.texts![0], text0.slice(0, start));
    assert.deepEqual(r.tokens[1], free.tokens[1]);
    assert.equal(r.texts![1], text1);
    assert.deepEqual(finished, [[0, 'stop'], [1, 'length']]);
    assert.equal(pieces[0].join(''), r.texts![0]);
    assert.equal(pieces[1].join(''), r.texts![1]);
    // Streaming came token by token (not all at the end) and held the stop's first letter back.
    assert.ok(pieces[1].length > 3);
    assert.ok(!pieces[0].join('').includes(stop));
  });

  test('streaming holds back an incomplete character and trailing space until it settles', () => {
    // Odd ids decode to a replacement character unless followed by an even one, as an
    // incomplete UTF-8 sequence does; id % 7 == 0 is a space.
    const decode = (t: readonly number[]) =>
      t.map((id, i) => (id % 7 === 0 ? ' ' : id % 2 === 1 ? (i + 1 < t.length && t[i + 1] % 2 === 0 ? 'X' : '\uFFFD') : 'y')).join('');
    const pieces: string[] = [];
    const r = generate(model, [long], { maxNewTokens: 24, decode, onText: (_, text) => pieces.push(text), sampling: { seed: 5 }, ...noEos });
    assert.equal(pieces.join(''), r.texts![0]);
    pieces.slice(0, -1).forEach((p) => assert.ok(!/[\s\uFFFD]$/.test(p), `piece ${JSON.stringify(p)} ends unsettled`));

    // A stop string whose last letter is still a replacement character when its first
    // letter arrives: that first letter must not be streamed.
    const t = r.texts![0];
    let i = 1;
    while (i < t.length && !(t[i] === 'X' && t[i - 1] === 'y' && t.indexOf(t.slice(i - 1, i + 1)) === i - 1)) i++;
    assert.ok(i < t.length, `no usable stop string in ${t}`);
    const stopped: string[] = [];
    const s = generate(model, [long], { maxNewTokens: 24, decode, stopStrings: [t.slice(i - 1, i + 1)], onText: (_, text) => stopped.push(text), sampling: { seed: 5 }, ...noEos });
    assert.equal(s.texts![0], t.slice(0, i - 1));
    assert.equal(stopped.join(''), s.texts![0]);
  });

  test('zero new tokens; bad options', () => {
    const r = generate(model, [long], { maxNewTokens: 0, decode: () => '' });
    assert.deepEqual(r.sequences, [long]);
    assert.deepEqual(r.finishReasons, ['length']);
    assert.deepEqual(r.texts, ['']);
    assert.throws(() => generate(model, [long], { maxNewTokens: 2, stopStrings: ['x'] }), /need a decode function/);
    assert.throws(() => generate(model, [long, short], { maxNewTokens: 2 }), /left-pad/);
    assert.throws(() => generate(model, [long], { maxNewTokens: 2, sampling: { topP: 0 } }), /topP must be in \(0, 1\]/);
  });
});
