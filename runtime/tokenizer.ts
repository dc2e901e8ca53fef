// Text in, text out: a Hugging Face `tokenizer.json` (plus `tokenizer_config.json`, and in a
// checkpoint folder `generation_config.json` / `config.json` for the end-of-sequence ids) behind a
// small API, and a streamer that turns generated ids into text deltas.
//
// The tokenization itself is @huggingface/tokenizers (tokenizers.js): Hugging Face's own pure
// JS/TS port of the Rust `tokenizers` pipeline (normalizer → pre-tokenizer → model → post-processor,
// and the decoder chain), zero dependencies, the tokenizer inside transformers.js. This file adds
// only what transformers (v5) does around the Rust tokenizer, so ids and strings match
// `AutoTokenizer.from_pretrained(dir)`:
//
//  - tokenizer.json is the truth for special tokens at encode time: its post-processor adds BOS/EOS.
//    transformers v5 drops `add_bos_token` / `add_eos_token` from tokenizer_config.json whenever a
//    tokenizer.json exists (tokenization_utils_base.py, from_pretrained), and so do we.
//  - Named special tokens of tokenizer_config.json (bos/eos/unk/pad, additional/extra special
//    tokens) that tokenizer.json does not list as added tokens become special added tokens, as
//    TokenizersBackend.__init__ does (a vocabulary piece keeps its id; a new one gets the next id).
//  - `clean_up_tokenization_spaces` is off unless the config turns it on, and never applies to BPE
//    models (transformers v5 ignores it for BPE unless
//    `clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output` is set);
//    tokenizers.js would default it to on.
//  - decode drops ids that name no token (Rust's `Tokenizer::decode` filters them out: a model whose
//    embedding is padded past the tokenizer's vocabulary may emit them); tokenizers.js would map
//    them to the unknown token.
//  - the ByteFallback decoder turns a run of <0xXX> tokens that is not valid UTF-8 into one U+FFFD
//    a byte, as Rust's decoders/byte_fallback.rs does (tokenizers.js's TextDecoder gives one per
//    invalid sequence, and drops a leading byte-order mark).
//  - slow-tokenizer options that only the Python tokenizers apply (remove_space,
//    do_lowercase_and_remove_accent) are not passed on: with a tokenizer.json, transformers v5 runs
//    the Rust pipeline alone.
//
// Every failure to read or understand the files is a KilnError: E_IO (cannot read), E_CONFIG
// (not JSON, not a tokenizer.json, or a component tokenizers.js does not support).

import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import * as tokenizersJs from "@huggingface/tokenizers";
import { KilnError } from "../compiler/ir/errors.js";

// The part of tokenizers.js used here. Its .d.ts files import one another without file extensions,
// which NodeNext resolution cannot follow, so TypeScript would see `any`; this states what we rely on.
interface Decoder {
  decode_chain(tokens: string[]): string[];
}
interface HfTokenizer {
  decoder: Decoder | null;
  encode(text: string, options: { add_special_tokens: boolean }): { ids: number[] };
  decode(ids: number[], options: { skip_special_tokens: boolean }): string;
  token_to_id(token: string): number | undefined;
}
const hfjs = tokenizersJs as unknown as {
  Tokenizer: new (tokenizerJson: object, config: object) => HfTokenizer;
  ByteFallbackDecoder: abstract new (...args: never[]) => Decoder;
  SequenceDecoder: abstract new (...args: never[]) => Decoder & { decoders: Decoder[] };
};

export const TOKENIZER_FILE = "tokenizer.json";
export const TOKENIZER_CONFIG_FILE = "tokenizer_config.json";
export const CHAT_TEMPLATE_FILE = "chat_template.jinja";
export const GENERATION_CONFIG_FILE = "generation_config.json";
export const CONFIG_FILE = "config.json";

type Json = Record<string, unknown>;

/** What decoders write for bytes that are not (yet) a whole UTF-8 character. */
const REPLACEMENT = "\uFFFD";

export interface TokenizerOptions {
  /**
   * tokenizer_config.json: a path, its parsed contents, or null for none. Default: the
   * tokenizer_config.json beside tokenizer.json, when there is one.
   */
  tokenizerConfig?: string | Json | null;
  /** More end-of-sequence ids (generation_config.json's eos_token_id, say), merged into eosTokenIds. */
  eosTokenIds?: readonly number[];
  /** BOS id when tokenizer_config.json names none (config.json's bos_token_id, say). */
  bosTokenId?: number;
}

export interface EncodeOptions {
  /** run tokenizer.json's post-processor (adds BOS/EOS as it says); default true, as in HF */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** leave out special tokens (added tokens marked special); default false, as in HF */
  skipSpecialTokens?: boolean;
}

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
}

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);
const isId = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "not found" : code === "EISDIR" ? "is a directory" : (e as Error).message;
    throw new KilnError("E_IO", `cannot read ${what}: ${why}`, { where: file, cause: e });
  }
}

async function readJsonObject(file: string, what: string): Promise<Json> {
  const text = await readText(file, what);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new KilnError("E_CONFIG", `${what} is not valid JSON: ${(e as Error).message}`, { where: file, cause: e });
  }
  if (!isObject(v)) throw new KilnError("E_CONFIG", `${what} must hold a JSON object`, { where: file });
  return v;
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

/** The content of a special-token entry of tokenizer_config.json: "x" or {"content": "x", ...}. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (isObject(v) && typeof v.content === "string") return v.content;
  return undefined;
}

/** eos_token_id / bos_token_id of config.json or generation_config.json: a number, a list, or null. */
function idList(v: unknown, file: string, key: string): number[] {
  if (v === undefined || v === null) return [];
  if (isId(v)) return [v];
  if (Array.isArray(v) && v.every(isId)) return v;
  throw new KilnError("E_CONFIG", `${key} must be a token id or a list of them, got ${JSON.stringify(v)}`, { where: file });
}

const SUPPORTED_MODELS = ["BPE", "WordPiece", "Unigram"];

// Rust's ByteFallback::decode_chain: consecutive <0xXX> tokens become their UTF-8 text, or one
// U+FFFD a byte when they are not valid UTF-8. Rust parses the two characters with
// u8::from_str_radix(_, 16), which also takes "+h".
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2}|\+[0-9A-Fa-f])>$/;
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
function byteFallbackChain(tokens: string[]): string[] {
  const out: string[] = [];
  let bytes: number[] = [];
  const flush = (): void => {
    if (bytes.length === 0) return;
    try {
      out.push(STRICT_UTF8.decode(Uint8Array.from(bytes)));
    } catch {
      for (let i = 0; i < bytes.length; i++) out.push(REPLACEMENT);
    }
    bytes = [];
  };
  for (const token of tokens) {
    const m = BYTE_TOKEN.exec(token);
    if (m) bytes.push(parseInt(m[1], 16));
    else {
      flush();
      out.push(token);
    }
  }
  flush();
  return out;
}

/** Puts byteFallbackChain in place of tokenizers.js's; says whether the decoder has ByteFallback. */
function patchDecoders(d: Decoder | null): boolean {
  let found = false;
  if (d instanceof hfjs.ByteFallbackDecoder) {
    d.decode_chain = byteFallbackChain;
    found = true;
  }
  if (d instanceof hfjs.SequenceDecoder) for (const inner of d.decoders) found = patchDecoders(inner) || found;
  return found;
}

/** Whether a tokenizer.json decoder has no first-token rules (see Tokenizer.decodesTokensAlike). */
function decodesTokensAlike(d: unknown): boolean {
  if (!isObject(d)) return false; // no decoder: tokens joined by spaces, none before the first
  if (d.type === "Sequence") return Array.isArray(d.decoders) && d.decoders.every(decodesTokensAlike);
  return d.type === "ByteLevel" || d.type === "ByteFallback" || d.type === "Fuse" || d.type === "Replace";
}

/** The largest number of some lists (-1 for none); no spread: vocabularies run past 200k ids. */
function maxOf(lists: Iterable<number>[]): number {
  let m = -1;
  for (const list of lists) for (const v of list) if (v > m) m = v;
  return m;
}

/** Checks tokenizer.json's shape, as far as we rely on it, and fills what tokenizers.js requires. */
function checkTokenizerJson(tj: Json, file: string): { vocab: Map<string, number>; added: AddedTokenJson[] } {
  const model = tj.model;
  if (!isObject(model)) throw new KilnError("E_CONFIG", `tokenizer.json has no "model" object: is this a Hugging Face tokenizer.json?`, { where: file });
  // tokenizers.js would run any other type (WordLevel too) as a plain vocabulary lookup
  if (model.type !== undefined && !SUPPORTED_MODELS.includes(String(model.type)))
    throw new KilnError("E_CONFIG", `unsupported tokenizer model type ${JSON.stringify(model.type)} (supported: ${SUPPORTED_MODELS.join(", ")})`, { where: file });
  // tokenizers.js's Unigram has no byte fallback (huggingface/tokenizers.js#26): characters outside
  // the vocabulary would become <unk> where HF gives <0xXX> bytes. Refuse rather than differ.
  if (model.type === "Unigram" && model.byte_fallback === true)
    throw new KilnError("E_CONFIG", "a Unigram model with byte_fallback is not supported (tokenizers.js would give <unk> where HF gives byte tokens)", { where: file });
  const vocab = new Map<string, number>();
  if (Array.isArray(model.vocab)) {
    // Unigram: [[piece, score], ...]; the id is the position
    model.vocab.forEach((entry, i) => {
      if (!Array.isArray(entry) || typeof entry[0] !== "string") throw new KilnError("E_CONFIG", `tokenizer.json model.vocab[${i}] is not a [piece, score] pair`, { where: file });
      vocab.set(entry[0], i);
    });
  } else if (isObject(model.vocab)) {
    for (const [piece, id] of Object.entries(model.vocab)) {
      if (!isId(id)) throw new KilnError("E_CONFIG", `tokenizer.json model.vocab["${piece}"] is not a token id`, { where: file });
      vocab.set(piece, id);
    }
  } else {
    throw new KilnError("E_CONFIG", `tokenizer.json model (${String(model.type)}) has no vocab`, { where: file });
  }
  if (tj.added_tokens === undefined || tj.added_tokens === null) tj.added_tokens = [];
  if (!Array.isArray(tj.added_tokens)) throw new KilnError("E_CONFIG", `tokenizer.json "added_tokens" must be a list`, { where: file });
  const added = tj.added_tokens as unknown[];
  added.forEach((t, i) => {
    if (!isObject(t) || !isId(t.id) || typeof t.content !== "string") throw new KilnError("E_CONFIG", `tokenizer.json added_tokens[${i}] needs an integer "id" and a string "content"`, { where: file });
  });
  for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) if (!(key in tj)) tj[key] = null;
  return { vocab, added: added as AddedTokenJson[] };
}

/**
 * A Hugging Face tokenizer (tokenizer.json), with the ids generation needs.
 *
 * `vocabSize` is the largest token id + 1 (model vocabulary and added tokens); HF's `len(tokenizer)`
 * is the same number when the ids have no gaps, as in the usual checkpoints.
 */
export class Tokenizer {
  readonly bosTokenId?: number;
  readonly eosTokenIds: number[];
  readonly vocabSize: number;
  /** the chat template (Jinja source) of chat_template.jinja or tokenizer_config.json, unrendered */
  readonly chatTemplate?: string;
  /** ids of the special tokens (added tokens marked special), which decode can skip */
  readonly specialTokenIds: ReadonlySet<number>;
  /** whether decode cleans up tokenization spaces (" ." → "."), as transformers v5 would */
  readonly cleansUpSpaces: boolean;
  /** ids of the <0xXX> byte tokens when the decoder has ByteFallback (sentencepiece style), else empty */
  readonly byteFallbackTokenIds: ReadonlySet<number>;
  /**
   * Whether the decoder treats every token alike wherever it stands (ByteLevel, ByteFallback, Fuse,
   * Replace), so that a sequence's tail decodes alone as it does within the sequence; Strip,
   * Metaspace, WordPiece and the rest have rules for the first token.
   */
  readonly decodesTokensAlike: boolean;

  private constructor(
    private readonly hf: HfTokenizer,
    /** where it came from, for error messages */
    readonly source: string,
    private readonly idToPiece: Map<number, string>,
    fields: {
      bosTokenId?: number;
      eosTokenIds: number[];
      vocabSize: number;
      chatTemplate?: string;
      specialTokenIds: Set<number>;
      cleansUpSpaces: boolean;
      byteFallbackTokenIds: Set<number>;
      decodesTokensAlike: boolean;
    },
  ) {
    this.decodesTokensAlike = fields.decodesTokensAlike;
    this.cleansUpSpaces = fields.cleansUpSpaces;
    this.byteFallbackTokenIds = fields.byteFallbackTokenIds;
    this.bosTokenId = fields.bosTokenId;
    this.eosTokenIds = fields.eosTokenIds;
    this.vocabSize = fields.vocabSize;
    this.chatTemplate = fields.chatTemplate;
    this.specialTokenIds = fields.specialTokenIds;
  }

  /** Loads a tokenizer.json (and the tokenizer_config.json beside it, unless opts say otherwise). */
  static async fromFile(tokenizerJsonPath: string, opts: TokenizerOptions = {}): Promise<Tokenizer> {
    const file = tokenizerJsonPath;
    const tj = await readJsonObject(file, "tokenizer.json");
    const dir = path.dirname(file);

    // tokenizer_config.json
    let cfg: Json = {};
    let cfgFile: string | undefined;
    if (opts.tokenizerConfig === undefined) {
      const beside = path.join(dir, TOKENIZER_CONFIG_FILE);
      if (await exists(beside)) cfgFile = beside;
    } else if (typeof opts.tokenizerConfig === "string") {
      cfgFile = opts.tokenizerConfig;
    } else if (opts.tokenizerConfig !== null) {
      cfg = opts.tokenizerConfig;
    }
    if (cfgFile !== undefined) cfg = await readJsonObject(cfgFile, "tokenizer_config.json");

    const { vocab, added } = checkTokenizerJson(tj, file);

    // Named special tokens that tokenizer.json does not list become special added tokens.
    let nextId = maxOf([vocab.values(), added.map((t) => t.id)]) + 1;
    const named: string[] = [];
    for (const key of ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"]) {
      const c = tokenContent(cfg[key]);
      if (c !== undefined) named.push(c);
    }
    for (const key of ["additional_special_tokens", "extra_special_tokens"]) {
      const v = cfg[key];
      const list = Array.isArray(v) ? v : isObject(v) ? Object.values(v) : [];
      for (const t of list) {
        const c = tokenContent(t);
        if (c !== undefined) named.push(c);
      }
    }
    const addedByContent = new Map(added.map((t) => [t.content, t]));
    for (const content of named) {
      if (addedByContent.has(content)) continue;
      const t: AddedTokenJson = { id: vocab.get(content) ?? nextId++, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
      added.push(t);
      addedByContent.set(content, t);
    }

    // transformers v5 decode semantics for the clean-up of tokenization spaces
    const model = tj.model as Json;
    const cleanUp = cfg.clean_up_tokenization_spaces === true && (model.type !== "BPE" || cfg.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output === true);
    const hfConfig: Json = { clean_up_tokenization_spaces: cleanUp };
    for (const key of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
      const c = tokenContent(cfg[key]);
      if (c !== undefined) hfConfig[key] = c;
    }

    let hf: HfTokenizer;
    let byteFallback: boolean;
    try {
      hf = new hfjs.Tokenizer(tj, hfConfig);
      byteFallback = patchDecoders(hf.decoder);
    } catch (e) {
      throw new KilnError("E_CONFIG", `unsupported or malformed tokenizer.json: ${(e as Error).message}`, { where: file, cause: e });
    }

    const idToPiece = new Map<number, string>();
    for (const [piece, id] of vocab) idToPiece.set(id, piece);
    for (const t of added) idToPiece.set(t.id, t.content);
    const vocabSize = maxOf([idToPiece.keys()]) + 1;
    const specialTokenIds = new Set(added.filter((t) => t.special === true).map((t) => t.id));
    const byteFallbackTokenIds = new Set<number>();
    if (byteFallback) for (const [id, piece] of idToPiece) if (BYTE_TOKEN.test(piece)) byteFallbackTokenIds.add(id);

    // every named special token is an added token by now
    const idOf = (key: string): number | undefined => {
      const c = tokenContent(cfg[key]);
      return c === undefined ? undefined : addedByContent.get(c)?.id;
    };
    const bosTokenId = idOf("bos_token") ?? opts.bosTokenId;
    const eos = idOf("eos_token");
    const eosTokenIds: number[] = [];
    for (const id of [...(eos === undefined ? [] : [eos]), ...(opts.eosTokenIds ?? [])]) if (!eosTokenIds.includes(id)) eosTokenIds.push(id);

    let chatTemplate: string | undefined;
    const templateFile = path.join(dir, CHAT_TEMPLATE_FILE);
    if (opts.tokenizerConfig === undefined && (await exists(templateFile))) chatTemplate = await readText(templateFile, CHAT_TEMPLATE_FILE);
    else if (typeof cfg.chat_template === "string") chatTemplate = cfg.chat_template;
    else if (Array.isArray(cfg.chat_template)) {
      const named = cfg.chat_template.find((t) => isObject(t) && t.name === "default");
      if (isObject(named) && typeof named.template === "string") chatTemplate = named.template;
    }

    return new Tokenizer(hf, file, idToPiece, {
      bosTokenId,
      eosTokenIds,
      vocabSize,
      chatTemplate,
      specialTokenIds,
      cleansUpSpaces: cleanUp,
      byteFallbackTokenIds,
      decodesTokensAlike: decodesTokensAlike(tj.decoder) && model.end_of_word_suffix == null,
    });
  }

  /**
   * The tokenizer of a Hugging Face checkpoint folder, or undefined when it has no tokenizer.json.
   * End-of-sequence ids merge tokenizer_config.json's eos_token with generation_config.json's and
   * config.json's eos_token_id (Llama-3 instruct stops on two).
   */
  static async fromCheckpoint(dir: string): Promise<Tokenizer | undefined> {
    let st;
    try {
      st = await stat(dir);
    } catch (e) {
      throw new KilnError("E_IO", "checkpoint folder not found", { where: dir, cause: e });
    }
    if (!st.isDirectory()) throw new KilnError("E_IO", "checkpoint is not a folder", { where: dir });
    const file = path.join(dir, TOKENIZER_FILE);
    if (!(await exists(file))) return undefined;
    const eosTokenIds: number[] = [];
    let bosTokenId: number | undefined;
    for (const name of [GENERATION_CONFIG_FILE, CONFIG_FILE]) {
      const f = path.join(dir, name);
      if (!(await exists(f))) continue;
      const j = await readJsonObject(f, name);
      eosTokenIds.push(...idList(j.eos_token_id, f, "eos_token_id"));
      bosTokenId ??= idList(j.bos_token_id, f, "bos_token_id")[0];
    }
    return Tokenizer.fromFile(file, { eosTokenIds, bosTokenId });
  }

  /** Text → ids. With addSpecialTokens (the default) tokenizer.json's post-processor adds BOS/EOS. */
  encode(text: string, { addSpecialTokens = true }: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw new KilnError("E_USAGE", `encode needs a string, got ${typeof text}`);
    try {
      return this.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    } catch (e) {
      throw new KilnError("E_CONFIG", `tokenizer failed to encode: ${(e as Error).message}`, { where: this.source, cause: e });
    }
  }

  /** Ids → text. Ids that name no token are left out, as HF does; negative or non-integer ids are an error. */
  decode(ids: readonly number[], { skipSpecialTokens = false }: DecodeOptions = {}): string {
    const known: number[] = [];
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0) throw new KilnError("E_USAGE", `decode: ${String(id)} is not a token id`);
      if (this.idToPiece.has(id)) known.push(id);
    }
    if (known.length === 0) return "";
    try {
      return this.hf.decode(known, { skip_special_tokens: skipSpecialTokens });
    } catch (e) {
      throw new KilnError("E_CONFIG", `tokenizer failed to decode: ${(e as Error).message}`, { where: this.source, cause: e });
    }
  }

  /** The token (vocabulary piece or added token) of an id. */
  idToToken(id: number): string | undefined {
    return this.idToPiece.get(id);
  }

  /** The id of a token (vocabulary piece or added token). */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }
}

// ---------------------------------------------------------------- streaming

export interface StreamOptions extends DecodeOptions {}

/**
 * Turns ids arriving one by one into text deltas whose concatenation is `decode(all ids)`.
 *
 * Each push decodes the ids and hands out the new end of the text, unless the text ends in U+FFFD:
 * then the last token(s) hold part of a UTF-8 character (byte-level BPE), and the text waits for
 * the rest (HF TextStreamer's rule). With sentencepiece byte fallback the text also waits while the
 * last token is a <0xXX> byte token: Rust's ByteFallback decoder replaces a whole run of them when
 * one byte is bad, so a run is final only once a normal token closes it. A stream that stops
 * mid-character gets its U+FFFD from end().
 *
 * What is decoded is a window: the tokens since the last emission plus, as context, the tokens
 * emitted last time, so a push costs two decodes of a few tokens, not of the whole sequence. HF
 * decoders treat a token alike wherever it stands, except at the start of the text (Strip and
 * Metaspace drop the first space: "▁world" alone is "world"; WordPiece puts no space before the
 * first word); so for those decoders a context is taken only when it decodes to text that starts
 * with something other than whitespace, and then the first-token rules act on the context alone,
 * as they do within the whole sequence. The clean-up of tokenization spaces (" ." → ".", only for
 * WordPiece/Unigram tokenizers whose config asks for it) can remove a space up to 3 characters
 * before the end: with it the last 3 characters wait too, and the whole sequence is decoded.
 */
export class TextStreamer {
  private readonly ids: number[] = [];
  private emitted = "";
  /** the window is ids[start:]; what of it is out decodes to windowText */
  private start = 0;
  /** ids[0:read] are out */
  private read = 0;
  private windowText = "";
  private readonly holdBack: number;

  constructor(
    readonly tokenizer: Tokenizer,
    private readonly options: StreamOptions = {},
  ) {
    this.holdBack = tokenizer.cleansUpSpaces ? 3 : 0;
  }

  /** Adds ids; returns the text that is now final ("" while it waits). */
  push(ids: number | readonly number[]): string {
    if (typeof ids === "number") this.ids.push(ids);
    else this.ids.push(...ids);
    if (this.inByteRun()) return "";
    const text = this.decodeFrom(this.start);
    if (text.endsWith(REPLACEMENT) || !text.startsWith(this.windowText)) return "";
    let end = text.length - this.holdBack;
    if (end <= this.windowText.length) return "";
    const c = text.charCodeAt(end - 1);
    if (c >= 0xd800 && c <= 0xdbff) end--; // do not split a surrogate pair
    const delta = text.slice(this.windowText.length, end);
    this.emitted += delta;
    this.windowText = text.slice(0, end);
    if (this.holdBack === 0) this.slide();
    return delta;
  }

  /** Ends the stream: the text still waiting (a partial character comes out as U+FFFD, as decode gives it). */
  end(): string {
    const text = this.decodeFrom(this.start);
    const delta = text.startsWith(this.windowText) ? text.slice(this.windowText.length) : "";
    this.emitted += delta;
    this.windowText = text;
    return delta;
  }

  /** The text handed out so far. */
  get text(): string {
    return this.emitted;
  }

  /** The ids pushed so far. */
  get tokenIds(): readonly number[] {
    return this.ids;
  }

  private decodeFrom(i: number): string {
    return this.tokenizer.decode(i === 0 ? this.ids : this.ids.slice(i), this.options);
  }

  /** All ids are out: those since the last emission become the next window's context, if fit. */
  private slide(): void {
    const from = this.read;
    this.read = this.ids.length;
    const context = this.decodeFrom(from);
    if (!this.tokenizer.decodesTokensAlike && (context === "" || /^\s/u.test(context))) return;
    this.start = from;
    this.windowText = context;
  }

  /**
   * Whether the last token decode sees is a <0xXX> byte token: Rust's ByteFallback decodes a run of
   * them as a whole, and a run that is not valid UTF-8 becomes one U+FFFD a byte, the valid bytes
   * before the bad one included, so nothing of an open run is final.
   */
  private inByteRun(): boolean {
    const t = this.tokenizer;
    if (t.byteFallbackTokenIds.size === 0) return false;
    for (let i = this.ids.length - 1; i >= 0; i--) {
      const id = this.ids[i];
      if (t.idToToken(id) === undefined) continue; // decode drops it
      if (this.options.skipSpecialTokens && t.specialTokenIds.has(id)) continue;
      return t.byteFallbackTokenIds.has(id);
    }
    return false;
  }
}

/**
 * Text deltas for a stream of ids (sync or async), non-empty, ending with whatever a final partial
 * character leaves: their concatenation is `tokenizer.decode(all ids, options)`.
 */
export async function* streamDecode(tokenizer: Tokenizer, ids: Iterable<number> | AsyncIterable<number>, options: StreamOptions = {}): AsyncGenerator<string, void, undefined> {
  const streamer = new TextStreamer(tokenizer, options);
  for await (const id of ids) {
    const delta = streamer.push(id);
    if (delta) yield delta;
  }
  const rest = streamer.end();
  if (rest) yield rest;
}
