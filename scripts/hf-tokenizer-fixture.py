#!/usr/bin/env python3
"""Generate tiny Hugging Face tokenizer fixtures for Kiln's tokenizer tests.

Trains three tiny tokenizers with the Rust-backed ``tokenizers`` library on a small
built-in text (no downloads) and writes, for each, into ``<out>/<style>/``:

  tokenizer.json          as ``PreTrainedTokenizerFast.save_pretrained`` writes it
  tokenizer_config.json   likewise (bos/eos/unk, add_bos_token, clean-up flag)
  chat_template.jinja     where the style has a chat template (transformers v5 writes it apart)
  generation_config.json  (bytelevel only) an eos_token_id list, as Llama-3 instruct has
  reference.json          what transformers (``AutoTokenizer.from_pretrained`` on the saved
                          folder) gives: texts -> ids (with and without special tokens),
                          ids -> decoded strings (with and without skip_special_tokens),
                          for the texts' own ids, every prefix of some of them (partial
                          UTF-8 characters) and seeded random id sequences.

Styles:
  bytelevel     Llama-3 / GPT-2 style: Split(Llama-3 regex) + ByteLevel pre-tokenizer,
                BPE (ignore_merges), ByteLevel decoder, TemplateProcessing adding
                <|begin_of_text|>; vocab = 256 bytes + merges + special tokens.
  sp-legacy     Llama-2 style as on the Hub: normalizer Prepend("▁") + Replace(" ", "▁"),
                no pre-tokenizer, BPE with byte_fallback (<0x00>..<0xFF> in the vocab),
                decoder Replace + ByteFallback + Fuse + Strip, TemplateProcessing "<s> $A".
  sp-metaspace  newer sentencepiece conversion: Metaspace pre-tokenizer (prepend_scheme
                "first", split false), BPE with byte_fallback, decoder ByteFallback +
                Metaspace, and *no* post-processor although tokenizer_config.json says
                add_bos_token: true. transformers v5 drops add_bos_token/add_eos_token from
                the config whenever tokenizer.json exists (tokenizer.json's post-processor
                is the truth), so no BOS is added; Kiln's wrapper must agree.

Run it where ``tokenizers`` and ``transformers`` are installed (the GPU machine has them;
no GPU is needed). The fixtures are committed; CI never runs this script. The committed ones came
from tokenizers 0.23.2 / transformers 5.17.0 on the GPU machine (manifest.json). The BPE trainer
breaks ties in merge counts differently from machine to machine, so a rerun elsewhere can learn
other merges for the sentencepiece styles: each folder's files belong together, replace them as one.

Usage: python3 scripts/hf-tokenizer-fixture.py [--out test/fixtures/tokenizer]
"""

import argparse
import datetime
import json
import os
import random
import shutil

import tokenizers
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

CORPUS = """
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.
Hello world! Hello, world. How's it going? It's going well, thanks. We'll see, they'd said.
A tokenizer turns text into tokens, and a decoder turns the tokens back into text.
Transformers read tokens, predict the next token, and generate text one token at a time.
Numbers: 1 2 3 12 123 1234 2024 3.14159 42, and 100% of the time.
Café, naïve, résumé, façade, jalapeño, Ångström, über, déjà vu, Straße.
Unicode text: 日本語のテキスト。中文文本。한국어 텍스트. Emoji: 😀 🎉 👍.
    indented line with spaces
\ttabbed line
line one
line two

paragraph after a blank line.
def main():
    print("hello")
    return 0
"""

TEXTS = [
    "Hello world",
    "Hello, world! How's it going?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two  spaces  between  ",
    "line one\nline two\n\nend\n",
    "\ttab and\r\nCRLF",
    "café naïve résumé Ångström Straße",
    "日本語のテキスト",
    "中文文本和한국어",
    "emoji 😀🎉 skin 👍🏽 family 👨‍👩‍👧 flag 🇯🇵",
    "mixed: ünïcödé 中 😀 end",
    "numbers 1234567 and 3.14159",
    "literal <0x41> is not a byte token",
    "don't can't I'm you're we'll",
    "Ω≈ç√∫ ℃ ½ — “quotes” …",
    "",
    " ",
    "\n",
    "a",
]

# Texts whose every id prefix is decoded too (prefixes cut multi-byte characters).
PREFIX_TEXTS = [
    "日本語のテキスト",
    "emoji 😀🎉 skin 👍🏽 family 👨‍👩‍👧",
    "café naïve résumé",
    " leading space",
]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE_LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def corpus_lines():
    lines = [l for l in CORPUS.split("\n")]
    return lines * 4


def build_bytelevel():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens(specials)
    tok.add_tokens([tokenizers.AddedToken("<tool>", special=False, normalized=False)])
    bos_id = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        clean_up_tokenization_spaces=True,  # as Llama-3's config says; transformers v5 ignores it for BPE
        model_max_length=131072,
    )
    hf.chat_template = CHAT_TEMPLATE_LLAMA3
    generation_config = {
        "bos_token_id": bos_id,
        "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")],
    }
    return hf, generation_config


def train_sp_bpe():
    """A sentencepiece-style BPE (word-internal merges, '▁' for spaces) with the 256
    <0xXX> byte tokens in the model vocab at ids 3..258, as Llama-2 has them."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=70,  # leave rare characters (most CJK, emoji) to byte fallback
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    data = json.loads(tok.to_str())
    old_vocab = data["model"]["vocab"]
    ordered = sorted(old_vocab.items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in ordered:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    data["model"]["vocab"] = vocab
    for at in data["added_tokens"]:
        at["id"] = vocab[at["content"]]
    return data


def build_sp_legacy():
    data = train_sp_bpe()
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", 1)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        legacy=True,
    )
    return hf, None


def build_sp_metaspace():
    data = train_sp_bpe()
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    data["post_processor"] = None
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "ByteFallback"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(data))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
    )
    return hf, None


def reference(dir_path, style, seed):
    hf = AutoTokenizer.from_pretrained(dir_path)
    raw = Tokenizer.from_file(os.path.join(dir_path, "tokenizer.json"))
    vocab_total = len(hf)
    enc = []

    def add_encode(text):
        ids = hf(text, add_special_tokens=True)["input_ids"]
        ids_plain = hf(text, add_special_tokens=False)["input_ids"]
        # transformers v5 and the bare Rust tokenizer must agree (tokenizer.json is the truth)
        assert ids == raw.encode(text, add_special_tokens=True).ids, text
        assert ids_plain == raw.encode(text, add_special_tokens=False).ids, text
        enc.append({"text": text, "ids": ids, "ids_no_special": ids_plain, "tokens": hf.convert_ids_to_tokens(ids_plain)})

    for text in TEXTS:
        add_encode(text)
    # special tokens written in the text
    specials = [str(t) for t in hf.all_special_tokens]
    if style == "bytelevel":
        special_texts = [
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
            "call <tool> now<|end_of_text|>",
        ]
    else:
        special_texts = ["<s>Hi there</s>", "a </s> b <unk> c"]
    for text in special_texts:
        add_encode(text)

    dec = []

    def add_decode(ids, kind):
        text = hf.decode(ids, skip_special_tokens=False)
        text_skip = hf.decode(ids, skip_special_tokens=True)
        assert text == raw.decode(ids, skip_special_tokens=False), ids
        dec.append({"kind": kind, "ids": ids, "text": text, "text_skip_special": text_skip})

    for e in enc:
        if e["ids"]:
            add_decode(e["ids"], "text")
    for text in PREFIX_TEXTS:
        ids = hf(text, add_special_tokens=True)["input_ids"]
        for n in range(1, len(ids)):
            add_decode(ids[:n], "prefix")
    rng = random.Random(seed)
    for _ in range(30):
        n = rng.randint(1, 16)
        add_decode([rng.randrange(vocab_total) for _ in range(n)], "random")

    return {
        "style": style,
        "vocab_size": vocab_total,
        "bos_token_id": hf.bos_token_id,
        "eos_token_id": hf.eos_token_id,
        "all_special_ids": hf.all_special_ids,
        "all_special_tokens": specials,
        "chat_template": hf.chat_template,
        "encode": enc,
        "decode": dec,
    }


def dump_compact(ref):
    """JSON with one encode/decode case a line (small, and diffs stay readable)."""
    head = {k: v for k, v in ref.items() if k not in ("encode", "decode")}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    for key in ("encode", "decode"):
        items = [json.dumps(x, ensure_ascii=False) for x in ref[key]]
        lines.append(f'  "{key}": [')
        lines.append(",\n".join("    " + x for x in items))
        lines.append("  ]" + ("," if key == "encode" else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="test/fixtures/tokenizer")
    args = ap.parse_args()
    builders = {"bytelevel": build_bytelevel, "sp-legacy": build_sp_legacy, "sp-metaspace": build_sp_metaspace}
    manifest = {
        "generated_by": "scripts/hf-tokenizer-fixture.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "styles": list(builders),
    }
    for i, (style, build) in enumerate(builders.items()):
        d = os.path.join(args.out, style)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        hf, generation_config = build()
        hf.save_pretrained(d)
        if style == "sp-metaspace":
            # transformers v5 saves the post-processor it built; drop it again and say
            # add_bos_token in tokenizer_config.json instead, so a loader must build it.
            tj = os.path.join(d, "tokenizer.json")
            with open(tj, encoding="utf-8") as f:
                data = json.load(f)
            data["post_processor"] = None
            with open(tj, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
        if style in ("sp-legacy", "sp-metaspace"):
            # Llama-2 checkpoints say these explicitly (transformers v5 does not save them).
            tc = os.path.join(d, "tokenizer_config.json")
            with open(tc, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["add_bos_token"] = True
            cfg["add_eos_token"] = False
            with open(tc, "w", encoding="utf-8") as f:
                json.dump(cfg, f, ensure_ascii=False, indent=2)
                f.write("\n")
        if generation_config is not None:
            with open(os.path.join(d, "generation_config.json"), "w") as f:
                json.dump(generation_config, f, indent=2)
        ref = reference(d, style, seed=1234 + i)
        with open(os.path.join(d, "reference.json"), "w", encoding="utf-8") as f:
            f.write(dump_compact(ref))
        print(
            f"{style}: vocab {ref['vocab_size']}, bos {ref['bos_token_id']}, eos {ref['eos_token_id']}, "
            f"{len(ref['encode'])} encodes, "
            f"{len(ref['decode'])} decodes, files {sorted(os.listdir(d))}"
        )
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
