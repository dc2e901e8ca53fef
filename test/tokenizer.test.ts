import { afterAll, describe, expect, test } from "@jest/globals";
import fc from "fast-check";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { KilnError } from "../compiler/ir/errors.js";
import { TextStreamer, Tokenizer, streamDecode } from "../runtime/tokenizer.js";
import { expectKilnError } from "./helpers.js";

// Fixtures: scripts/hf-tokenizer-fixture.py trained three tiny tokenizers with HF `tokenizers` and
// recorded what transformers' AutoTokenizer gives for them (reference.json).
const FIXTURES = path.join("test", "fixtures", "tokenizer");
const STYLES = ["bytelevel", "sp-legacy", "sp-metaspace"] as const;

interface Reference {
  style: string;
  vocab_size: number;
  bos_token_id: number | null;
  eos_token_id: number | null;
  all_special_ids: number[];
  chat_template: string | null;
  encode: { text: string; ids: number[]; ids_no_special: number[]; tokens: string[] }[];
  decode: { kind: string; ids: number[]; text: string; text_skip_special: string }[];
}
const reference = (style: string): Reference => JSON.parse(fs.readFileSync(path.join(FIXTURES, style, "reference.json"), "utf8")) as Reference;

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "kiln-tokenizer-"));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let tmpCount = 0;
const tmpDir = (): string => fs.mkdtempSync(path.join(tmpRoot, `t${tmpCount++}-`));


function stream(tok: Tokenizer, ids: readonly number[], skipSpecialTokens = false): string[] {
  const s = new TextStreamer(tok, { skipSpecialTokens });
  const deltas = ids.map((id) => s.push(id));
  deltas.push(s.end());
  return deltas;
}

describe.each(STYLES)("%s: matches transformers", (style) => {
  const ref = reference(style);
  const dir = path.join(FIXTURES, style);
  let tok: Tokenizer;

  test("loads from the checkpoint folder", async () => {
    const t = await Tokenizer.fromCheckpoint(dir);
    expect(t).toBeInstanceOf(Tokenizer);
    tok = t!;
    expect(tok.vocabSize).toBe(ref.vocab_size);
    expect(tok.bosTokenId).toBe(ref.bos_token_id ?? undefined);
    expect(tok.eosTokenIds[0]).toBe(ref.eos_token_id);
    for (const id of ref.all_special_ids) expect(tok.specialTokenIds.has(id)).toBe(true);
    expect(tok.chatTemplate).toBe(ref.chat_template ?? undefined);
  });

  test("encode reproduces HF ids", () => {
    for (const e of ref.encode) {
      expect({ text: e.text, ids: tok.encode(e.text) }).toEqual({ text: e.text, ids: e.ids });
      expect({ text: e.text, ids: tok.encode(e.text, { addSpecialTokens: false }) }).toEqual({ text: e.text, ids: e.ids_no_special });
      expect(e.ids_no_special.map((id) => tok.idToToken(id))).toEqual(e.tokens);
    }
  });

  test("decode reproduces HF strings (texts, prefixes cut mid-character, random ids)", () => {
    expect(ref.decode.length).toBeGreaterThan(50);
    for (const d of ref.decode) {
      expect({ ids: d.ids, text: tok.decode(d.ids) }).toEqual({ ids: d.ids, text: d.text });
      expect({ ids: d.ids, text: tok.decode(d.ids, { skipSpecialTokens: true }) }).toEqual({ ids: d.ids, text: d.text_skip_special });
    }
  });

  test("round trip: decode(encode(text)) is the text", () => {
    for (const e of ref.encode) {
      if (e.text.includes("<")) continue; // special tokens written in the text, <unk>
      // the Metaspace decoder drops a leading space (HF does the same: " a" decodes to "a")
      if (style === "sp-metaspace" && e.text.startsWith(" ")) continue;
      expect(tok.decode(tok.encode(e.text, { addSpecialTokens: false }))).toBe(e.text);
    }
  });

  test("streamed deltas concatenate to decode(all), never ending mid-character", () => {
    const cases = [...ref.encode.map((e) => e.ids), ...ref.decode.map((d) => d.ids)];
    for (const ids of cases) {
      for (const skip of [false, true]) {
        const deltas = stream(tok, ids, skip);
        const full = tok.decode(ids, { skipSpecialTokens: skip });
        expect(deltas.join("")).toBe(full);
        // every delta but the last (end()) is whole text
        for (const d of deltas.slice(0, -1)) expect(d.endsWith("\uFFFD")).toBe(false);
      }
    }
  });

  test("streamed deltas concatenate to decode(all) for arbitrary id sequences", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: tok.vocabSize - 1 }), { maxLength: 40 }), fc.boolean(), (ids, skip) => {
        expect(stream(tok, ids, skip).join("")).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      }),
      { numRuns: 300, seed: 7 },
    );
  });

  test("streamed deltas concatenate to decode(all) for long sequences of real text and special tokens", () => {
    const texts = ref.encode.map((e) => e.ids_no_special);
    const specials = [...tok.specialTokenIds];
    const piece = fc.oneof(fc.constantFrom(...texts), fc.constantFrom(...specials).map((id) => [id]), fc.array(fc.integer({ min: 0, max: tok.vocabSize - 1 }), { maxLength: 5 }));
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 30 }), fc.boolean(), (pieces, skip) => {
        const ids = pieces.flat();
        expect(stream(tok, ids, skip).join("")).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      }),
      { numRuns: 100, seed: 11 },
    );
  });
});

describe("streaming", () => {
  test("a character split over byte tokens waits until it is whole (byte-level BPE)", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "bytelevel")))!;
    const ids = tok.encode("a語b", { addSpecialTokens: false });
    expect(ids.map((id) => tok.idToToken(id))).toEqual(["a", "è", "ª", "ŀ", "b"]); // 語 is E8 AA 9E, a token a byte
    expect(tok.decode(ids.slice(0, 3))).toBe("a\uFFFD");
    expect(stream(tok, ids)).toEqual(["a", "", "", "語", "b", ""]);
  });

  test("sentencepiece '▁' becomes a space except at the start, byte fallback waits for whole characters", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "sp-legacy")))!;
    const id = (piece: string): number => tok.tokenToId(piece)!;
    const hello = tok.encode("Hello world"); // <s> ▁Hell o ▁worl d (or so)
    const bytes = ["<0xE5>", "<0x92>", "<0x8C>", "<0x21>"].map(id); // 和!
    const ids = [...hello, id("▁"), ...bytes];
    const deltas = stream(tok, ids, true);
    expect(deltas[0]).toBe(""); // <s>, skipped
    expect(deltas.slice(0, hello.length).join("")).toBe("Hello world");
    expect(deltas.slice(hello.length)).toEqual([" ", "", "", "", "", "和!"]); // the byte run closes only at the end
    // with special tokens kept the text starts with "<s> " (the Strip decoder acts on "<s>")
    const kept = stream(tok, [...ids, tok.eosTokenIds[0], id("▁worl")]);
    expect(kept[0]).toBe("<s>");
    expect(kept.join("")).toBe("<s> Hello world 和!</s> worl");
    expect(kept.slice(hello.length + 1, -1)).toEqual(["", "", "", "", "和!</s>", " worl"]); // </s> closes the run
    // a run that goes bad turns into one U+FFFD a byte, the good bytes before included, as in HF
    const bad = [...hello, id("▁"), id("<0xE5>"), id("<0x21>"), id("▁worl")];
    expect(tok.decode(bad, { skipSpecialTokens: true })).toBe("Hello world \uFFFD\uFFFD worl");
    expect(stream(tok, bad, true).join("")).toBe("Hello world \uFFFD\uFFFD worl");
  });

  test("a stream that stops mid-character ends with U+FFFD, as decode gives it", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "bytelevel")))!;
    const ids = tok.encode("a日", { addSpecialTokens: false }).slice(0, -1);
    const s = new TextStreamer(tok);
    expect(ids.map((id) => s.push(id)).join("")).toBe("a");
    expect(s.end()).toBe("\uFFFD");
    expect(s.text).toBe(tok.decode(ids));
    expect(s.tokenIds).toEqual(ids);
  });

  test("streamDecode takes sync and async iterables", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "bytelevel")))!;
    const text = "emoji 😀🎉 and 日本語\n";
    const ids = tok.encode(text, { addSpecialTokens: false });
    const sync: string[] = [];
    for await (const d of streamDecode(tok, ids)) sync.push(d);
    expect(sync.join("")).toBe(text);
    expect(sync.every((d) => d.length > 0)).toBe(true);
    async function* gen(): AsyncGenerator<number> {
      for (const id of ids) yield id;
    }
    const viaAsync: string[] = [];
    for await (const d of streamDecode(tok, gen())) viaAsync.push(d);
    expect(viaAsync).toEqual(sync);
  });
});

describe("streaming with the clean-up of tokenization spaces (a hand-made WordPiece tokenizer.json)", () => {
  // transformers applies clean_up_tokenization_spaces to non-BPE models whose config asks for it;
  // it removes a space before punctuation, so the streamer holds the last 3 characters back.
  const vocab = ["[UNK]", "[CLS]", "[SEP]", "hello", ",", "world", "!", "do", "n", "'", "t", "##s", "s", ".", "i", "m", "re", "you", "##n"];
  const tokenizerJson = {
    version: "1.0",
    added_tokens: [
      { id: 1, content: "[CLS]", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 2, content: "[SEP]", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: null,
    decoder: { type: "WordPiece", prefix: "##", cleanup: false },
    model: { type: "WordPiece", unk_token: "[UNK]", continuing_subword_prefix: "##", max_input_chars_per_word: 100, vocab: Object.fromEntries(vocab.map((p, i) => [p, i])) },
  };

  test("deltas concatenate to decode(all)", async () => {
    const d = tmpDir();
    fs.writeFileSync(path.join(d, "tokenizer.json"), JSON.stringify(tokenizerJson));
    fs.writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify({ clean_up_tokenization_spaces: true, unk_token: "[UNK]" }));
    const tok = (await Tokenizer.fromCheckpoint(d))!;
    expect(tok.cleansUpSpaces).toBe(true);
    const ids = tok.encode("hello, world! don't you're i'm.");
    expect(tok.decode(ids)).toBe("hello, world! don't you're i'm.");
    expect(stream(tok, ids).join("")).toBe(tok.decode(ids));
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: tok.vocabSize - 1 }), { maxLength: 40 }), fc.boolean(), (r, skip) => {
        expect(stream(tok, r, skip).join("")).toBe(tok.decode(r, { skipSpecialTokens: skip }));
      }),
      { numRuns: 300, seed: 5 },
    );
  });
});

describe("special tokens and ids", () => {
  test("bytelevel (Llama-3 style): BOS from the post-processor; EOS ids from tokenizer_config + generation_config", async () => {
    const dir = path.join(FIXTURES, "bytelevel");
    const tok = (await Tokenizer.fromCheckpoint(dir))!;
    const bos = tok.tokenToId("<|begin_of_text|>")!;
    const eot = tok.tokenToId("<|eot_id|>")!;
    const eos = tok.tokenToId("<|end_of_text|>")!;
    expect(tok.bosTokenId).toBe(bos);
    expect(tok.eosTokenIds).toEqual([eos, eot]);
    expect(tok.encode("Hi")[0]).toBe(bos);
    expect(tok.encode("Hi", { addSpecialTokens: false })).not.toContain(bos);
    // special tokens written in the text are one token each
    expect(tok.encode("<|eot_id|>", { addSpecialTokens: false })).toEqual([eot]);
    expect(tok.decode([bos, ...tok.encode("Hi", { addSpecialTokens: false }), eot])).toBe("<|begin_of_text|>Hi<|eot_id|>");
    expect(tok.decode([bos, ...tok.encode("Hi", { addSpecialTokens: false }), eot], { skipSpecialTokens: true })).toBe("Hi");
    // <tool> is an added token that is not special: skipSpecialTokens keeps it
    const toolId = tok.tokenToId("<tool>")!;
    expect(tok.specialTokenIds.has(toolId)).toBe(false);
    expect(tok.decode([toolId], { skipSpecialTokens: true })).toBe("<tool>");
    // fromFile alone knows only tokenizer_config.json's eos_token
    const alone = await Tokenizer.fromFile(path.join(dir, "tokenizer.json"));
    expect(alone.eosTokenIds).toEqual([eos]);
    expect(alone.chatTemplate).toContain("<|start_header_id|>");
    const noConfig = await Tokenizer.fromFile(path.join(dir, "tokenizer.json"), { tokenizerConfig: null, eosTokenIds: [eot] });
    expect(noConfig.bosTokenId).toBeUndefined();
    expect(noConfig.eosTokenIds).toEqual([eot]);
    expect(noConfig.chatTemplate).toBeUndefined();
    expect(noConfig.encode("Hi")).toEqual(tok.encode("Hi")); // the post-processor is in tokenizer.json
  });

  test("sp-legacy (Llama-2 style): <s> from the post-processor, byte fallback for unknown characters", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "sp-legacy")))!;
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.encode("hi")[0]).toBe(1);
    const ids = tok.encode("和", { addSpecialTokens: false });
    expect(ids.map((id) => tok.idToToken(id))).toEqual(["▁", "<0xE5>", "<0x92>", "<0x8C>"]);
    expect(tok.decode(ids)).toBe("和"); // the Strip decoder drops the first space, as Llama-2's does
    expect(tok.decode(ids.slice(0, 3))).toBe("\uFFFD\uFFFD"); // one U+FFFD a byte of an unfinished run, as Rust's ByteFallback
    // the literal text "<0x41>" is not the byte token
    expect(tok.encode("<0x41>", { addSpecialTokens: false })).not.toContain(tok.tokenToId("<0x41>"));
  });

  test("sp-metaspace: tokenizer_config's add_bos_token is ignored, as transformers v5 ignores it", async () => {
    const dir = path.join(FIXTURES, "sp-metaspace");
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    expect(cfg.add_bos_token).toBe(true);
    const tok = (await Tokenizer.fromCheckpoint(dir))!;
    expect(tok.bosTokenId).toBe(1);
    expect(tok.encode("hi")).toEqual(tok.encode("hi", { addSpecialTokens: false }));
  });

  test("a named special token missing from tokenizer.json becomes a special added token", async () => {
    const file = path.join(FIXTURES, "bytelevel", "tokenizer.json");
    const base = await Tokenizer.fromFile(file, { tokenizerConfig: null });
    const tok = await Tokenizer.fromFile(file, { tokenizerConfig: { eos_token: { content: "<|stop|>" }, pad_token: "<|eot_id|>" } });
    const stop = base.vocabSize;
    expect(tok.vocabSize).toBe(base.vocabSize + 1);
    expect(tok.eosTokenIds).toEqual([stop]);
    expect(tok.specialTokenIds.has(stop)).toBe(true);
    expect(tok.encode("Hi<|stop|>", { addSpecialTokens: false }).at(-1)).toBe(stop);
    expect(tok.decode([stop])).toBe("<|stop|>");
    expect(tok.decode([stop], { skipSpecialTokens: true })).toBe("");
  });

  test("decode: empty input, ids with no token are left out (as HF does), negative ids are an error", async () => {
    const tok = (await Tokenizer.fromCheckpoint(path.join(FIXTURES, "bytelevel")))!;
    const hi = tok.encode("Hi", { addSpecialTokens: false });
    expect(tok.decode([])).toBe("");
    expect(tok.decode([...hi, tok.vocabSize, tok.vocabSize + 100])).toBe("Hi");
    expect(() => tok.decode([-1])).toThrow(KilnError);
    expect(() => tok.decode([1.5])).toThrow(expect.objectContaining({ code: "E_USAGE" }));
  });
});

describe("errors", () => {
  const good = JSON.parse(fs.readFileSync(path.join(FIXTURES, "bytelevel", "tokenizer.json"), "utf8")) as Record<string, unknown>;
  const write = (name: string, content: string): string => {
    const d = tmpDir();
    const f = path.join(d, name);
    fs.writeFileSync(f, content);
    return f;
  };

  test("missing tokenizer.json → E_IO", async () => {
    const f = path.join(tmpDir(), "tokenizer.json");
    const e = await expectKilnError(Tokenizer.fromFile(f), "E_IO", "not found");
    expect(e.where).toBe(f);
  });

  test("a folder where tokenizer.json should be → E_IO", async () => {
    await expectKilnError(Tokenizer.fromFile(tmpDir()), "E_IO", "directory");
  });

  test("not JSON → E_CONFIG", async () => {
    const f = write("tokenizer.json", '{"model": {');
    const e = await expectKilnError(Tokenizer.fromFile(f), "E_CONFIG", "not valid JSON");
    expect(e.where).toBe(f);
  });

  test("JSON that is no tokenizer.json → E_CONFIG", async () => {
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", "[1, 2]")), "E_CONFIG", "JSON object");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", '{"version": "1.0"}')), "E_CONFIG", '"model"');
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", '{"model": {"type": "BPE"}}')), "E_CONFIG", "vocab");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, added_tokens: [{ id: "x" }] }))), "E_CONFIG", "added_tokens[0]");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, model: { ...(good.model as object), vocab: { a: -1 } } }))), "E_CONFIG", "vocab");
  });

  test("components the library does not know → E_CONFIG, not a raw library error", async () => {
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, model: { ...(good.model as object), type: "Nonesuch", vocab: { a: 0 } } }))), "E_CONFIG", "tokenizer.json");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, pre_tokenizer: { type: "Nonesuch" } }))), "E_CONFIG", "Nonesuch");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, decoder: { type: "Nonesuch" } }))), "E_CONFIG", "Nonesuch");
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, model: { type: "WordLevel", vocab: { a: 0 }, unk_token: "a" } }))), "E_CONFIG", "WordLevel");
    const unigram = { type: "Unigram", unk_id: 0, vocab: [["<unk>", 0], ["a", -1]], byte_fallback: true };
    await expectKilnError(Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, added_tokens: [], post_processor: null, model: unigram }))), "E_CONFIG", "byte_fallback");
    const ok = await Tokenizer.fromFile(write("tokenizer.json", JSON.stringify({ ...good, added_tokens: [], post_processor: null, pre_tokenizer: null, decoder: null, model: { ...unigram, byte_fallback: false } })));
    expect(ok.encode("aa")).toEqual([1, 1]);
  });

  test("tokenizer_config.json: missing when named → E_IO; malformed → E_CONFIG", async () => {
    const file = path.join(FIXTURES, "bytelevel", "tokenizer.json");
    await expectKilnError(Tokenizer.fromFile(file, { tokenizerConfig: path.join(tmpDir(), "tokenizer_config.json") }), "E_IO", "tokenizer_config.json");
    await expectKilnError(Tokenizer.fromFile(file, { tokenizerConfig: write("tokenizer_config.json", "{,}") }), "E_CONFIG", "tokenizer_config.json");
  });

  test("fromCheckpoint: no tokenizer.json → undefined; no folder → E_IO; bad generation_config.json → E_CONFIG", async () => {
    expect(await Tokenizer.fromCheckpoint(tmpDir())).toBeUndefined();
    await expectKilnError(Tokenizer.fromCheckpoint(path.join(tmpRoot, "nonesuch")), "E_IO", "not found");
    const d = tmpDir();
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(FIXTURES, "bytelevel", f), path.join(d, f));
    fs.writeFileSync(path.join(d, "generation_config.json"), '{"eos_token_id": "two"}');
    await expectKilnError(Tokenizer.fromCheckpoint(d), "E_CONFIG", "eos_token_id");
    fs.writeFileSync(path.join(d, "generation_config.json"), "not json");
    await expectKilnError(Tokenizer.fromCheckpoint(d), "E_CONFIG", "generation_config.json");
    fs.writeFileSync(path.join(d, "generation_config.json"), '{"eos_token_id": [304, 301]}');
    fs.writeFileSync(path.join(d, "config.json"), '{"eos_token_id": 361, "bos_token_id": 360}');
    const tok = (await Tokenizer.fromCheckpoint(d))!;
    expect(tok.eosTokenIds).toEqual([tok.tokenToId("<|end_of_text|>"), 304, 301]);
  });
});
