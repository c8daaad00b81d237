"""Text <-> token ids: one small interface over the tokenizers checkpoints ship.

    tokenizer.json     a `tokenizers` file (a "fast" tokenizer), used as is.
    Marian (opus-mt)   source.spm, target.spm, vocab.json: MarianTokenizer has no fast version.
                       SentencePiece cuts the text into pieces, vocab.json numbers them (the ids
                       are not SentencePiece's own). Reproduced here with `sentencepiece`, as
                       transformers' MarianTokenizer does it (tests compare the two).
    T5 spiece.model    transformers 5's T5Tokenizer *is* a `tokenizers` object converted from it;
                       that conversion is done once, when the checkpoint is read, and saved as the
                       artifact's tokenizer.json.

The checkpoint side (CheckpointTokenizer: find, check, save into an artifact) may import
transformers (export and verify load the model anyway); the artifact side (`from_manifest`,
what `edgeseq run` uses) needs only `tokenizers` or `sentencepiece`.

In the manifest, "tokens.tokenizer" is a file name (tokenizer.json) or, for Marian, an object
naming its files and the settings MarianTokenizer resolved from the checkpoint's
tokenizer_config.json (special and added tokens, vocabularies); see MARIAN_SPEC.
"""

from __future__ import annotations

import re
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, first_line, read_json_object

SPIECE_UNDERLINE = "▁"  # SentencePiece's word-boundary marker (U+2581)
MARIAN = "marian-sentencepiece"
MARIAN_FILES = ("source.spm", "target.spm", "vocab.json")
# The manifest's description of a Marian tokenizer: key -> type(s) of its value.
MARIAN_SPEC: dict[str, Any] = {
    "kind": str, "source_spm": str, "target_spm": str, "vocab": str, "target_vocab": (str, type(None)),
    "separate_vocabs": bool, "unk_token": str, "unk_id": int, "eos_id": int, "special_tokens": list,
    "special_ids": list, "added_tokens": list, "clean_up_tokenization_spaces": bool, "split_special_tokens": bool,
}
ADDED_TOKEN = {"id": int, "content": str, "lstrip": bool, "rstrip": bool, "single_word": bool}


@dataclass(frozen=True)
class Encoded:
    ids: list[int]  # the model's input ids, with the tokenizer's own specials (e.g. a final </s>)
    unknown: list[str]  # pieces of the text that could only become the unknown token, in order


class TextTokenizer(ABC):
    """What run, verify and export need from a tokenizer."""

    @abstractmethod
    def encode(self, text: str) -> Encoded: ...

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    @abstractmethod
    def max_id(self) -> int:
        """The largest id `encode` can produce (checked against the model's vocabulary)."""


class HFTokenizer(TextTokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json)."""

    def __init__(self, tok) -> None:
        self.tok = tok

    @classmethod
    def from_file(cls, path: Path) -> HFTokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise InputError(f"{path}: invalid tokenizer: {first_line(e)}") from None

    def _unk(self) -> tuple[int | None, str | None]:
        name = getattr(self.tok.model, "unk_token", None) or "<unk>"  # WordLevel/WordPiece/BPE name it
        unk = self.tok.token_to_id(name)
        return unk, None if unk is None else self.tok.id_to_token(unk)

    def encode(self, text: str) -> Encoded:
        enc = self.tok.encode(text)
        unk, unk_text = self._unk()
        unknown = [] if unk is None else [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == unk]
        return Encoded(list(enc.ids), [s for s in unknown if s and s != unk_text])

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def max_id(self) -> int:
        return max(self.tok.get_vocab(with_added_tokens=True).values(), default=-1)


def as_text_tokenizer(tok) -> TextTokenizer:
    """A TextTokenizer as is; a bare `tokenizers.Tokenizer` wrapped."""
    return tok if isinstance(tok, TextTokenizer) else HFTokenizer(tok)


def read_vocab(path: Path) -> dict[str, int]:
    """A Marian vocab.json: piece -> id (ids are non-negative integers)."""
    vocab = read_json_object(path, "a JSON object of piece -> id")
    bad = next((k for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise InputError(f"{path}: the id of {bad!r:.40} is {vocab[bad]!r:.40}, not a non-negative integer")
    return vocab


def load_spm(path: Path):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    except Exception as e:  # sentencepiece raises RuntimeError (or others) on a bad model
        raise InputError(f"{path}: not a SentencePiece model ({first_line(e)})") from None
    return sp


class MarianSentencePiece(TextTokenizer):
    """transformers' MarianTokenizer (5.x), from its files and resolved settings (MARIAN_SPEC).

    encode: split the text at added tokens (</s>, <unk>, <pad>, ...: kept whole); in each other
    chunk a leading language code (">>fr<<") is one token and the rest is SentencePiece pieces of
    source.spm; pieces -> ids through vocab.json (a piece it lacks -> <unk>); append </s>.
    decode: ids -> pieces through the (target) vocabulary, special tokens dropped; runs of
    pieces joined by SentencePiece (source.spm unless the vocabularies are separate: as
    MarianTokenizer does), "▁" -> " ", stripped.
    """

    def __init__(self, spec: dict[str, Any], directory: Path) -> None:
        self.spec = spec
        self.source = load_spm(directory / spec["source_spm"])
        target = load_spm(directory / spec["target_spm"])
        self.encoder = read_vocab(directory / spec["vocab"])
        dec_vocab = read_vocab(directory / spec["target_vocab"]) if spec["separate_vocabs"] else self.encoder
        self.decoder = {v: k for k, v in dec_vocab.items()}
        self.decode_spm = target if spec["separate_vocabs"] else self.source
        self.added = {t["content"]: t for t in spec["added_tokens"]}
        self.added_by_id = {t["id"]: t for t in spec["added_tokens"]}
        self.special_tokens = set(spec["special_tokens"])
        self.special_ids = set(spec["special_ids"])
        self.unk_token, self.unk_id, self.eos_id = spec["unk_token"], spec["unk_id"], spec["eos_id"]
        # transformers' Trie: the leftmost added token, the longest one there.
        contents = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, contents))) if contents else None

    def _split(self, text: str) -> list[str]:
        """PreTrainedTokenizer.tokenize's first half: the text cut at added tokens, with their
        lstrip/rstrip/single_word rules applied to the neighbouring chunks."""
        if self.spec["split_special_tokens"] or self._added_re is None:
            return [text]
        chunks, pos = [], 0
        for m in self._added_re.finditer(text):
            chunks += [text[pos:m.start()], m.group()] if m.start() > pos else [m.group()]
            pos = m.end()
        if pos < len(text):
            chunks.append(text[pos:])
        for i, chunk in enumerate(chunks):
            tok = self.added.get(chunk)
            if tok is None:
                continue
            left = chunks[i - 1] if i > 0 else None
            right = chunks[i + 1] if i < len(chunks) - 1 else None
            if tok["rstrip"] and right:
                chunks[i + 1] = right.lstrip()
            if tok["lstrip"] and left:
                chunks[i - 1] = left.rstrip()
            if tok["single_word"]:
                if left and left[-1] != " ":
                    chunks[i - 1] += chunk
                    chunks[i] = ""
                elif right and right[0] != " ":
                    chunks[i + 1] = chunk + chunks[i + 1]
                    chunks[i] = ""
        return chunks

    def _pieces(self, chunk: str) -> list[str]:
        """MarianTokenizer._tokenize: a leading language code, then source.spm's pieces."""
        code = []
        if chunk.startswith(">>") and (end := chunk.find("<<")) != -1:
            code, chunk = [chunk[: end + 2]], chunk[end + 2:]
        return code + self.source.encode(chunk, out_type=str)

    def encode(self, text: str) -> Encoded:
        pieces: list[str] = []
        for chunk in self._split(text):
            if not chunk:
                continue
            if chunk in self.added or chunk in self.special_tokens:
                pieces.append(chunk)
            else:
                pieces.extend(self._pieces(chunk))
        ids = [self.added[p]["id"] if p in self.added else self.encoder.get(p, self.unk_id) for p in pieces]
        unknown = [p.replace(SPIECE_UNDERLINE, "") for p, i in zip(pieces, ids, strict=True)
                   if i == self.unk_id and p != self.unk_token]
        return Encoded(ids + [self.eos_id], [u for u in unknown if u])

    def _piece(self, i: int) -> str:
        if i in self.added_by_id:
            return self.added_by_id[i]["content"]
        if i in self.decoder:
            return self.decoder[i]
        # MarianTokenizer falls back to the SentencePiece model's own piece for ids vocab.json lacks.
        piece = self.decode_spm.IdToPiece(i) if 0 <= i < self.decode_spm.GetPieceSize() else ""
        return piece or self.unk_token

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        tokens = [self._piece(int(i)) for i in ids if not (skip_special_tokens and int(i) in self.special_ids)]
        out, run = "", list[str]()
        for t in tokens:
            if t in self.special_tokens:  # never through SentencePiece
                out += self.decode_spm.decode_pieces(run) + t + " "
                run = []
            else:
                run.append(t)
        out = (out + self.decode_spm.decode_pieces(run)).replace(SPIECE_UNDERLINE, " ").strip()
        if self.spec["clean_up_tokenization_spaces"]:  # PreTrainedTokenizerBase.clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                out = out.replace(a, b)
        return out

    def max_id(self) -> int:
        return max([*self.encoder.values(), *self.added_by_id, self.eos_id])


def check_spec(value: Any, where: Path) -> list[str]:
    """The files a manifest's "tokens.tokenizer" names (a file name, or a Marian description
    checked against MARIAN_SPEC); anything else is an InputError naming `where`."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    bad = f"{where}: 'tokens.tokenizer' must be a file name or a {MARIAN} description"

    def fits(v: Any, types: Any) -> bool:  # True is an int to isinstance, not here
        types = types if isinstance(types, tuple) else (types,)
        return bool in types if isinstance(v, bool) else isinstance(v, types)

    if not isinstance(value, dict) or value.get("kind") != MARIAN:
        raise InputError(bad)
    wrong = [k for k, t in MARIAN_SPEC.items() if k not in value or not fits(value[k], t)] + \
            [k for k in value if k not in MARIAN_SPEC]
    lists = {"special_tokens": str, "special_ids": int, "added_tokens": dict}
    wrong += [k for k, t in lists.items() if k not in wrong and not all(fits(x, t) for x in value[k])]
    wrong += [f"added_tokens[{n}]" for n, t in enumerate(value.get("added_tokens") or []) if isinstance(t, dict)
              and (set(t) != set(ADDED_TOKEN) or not all(fits(t[k], ty) for k, ty in ADDED_TOKEN.items()))]
    if not wrong and value["separate_vocabs"] != (value["target_vocab"] is not None):
        wrong = ["target_vocab"]
    if wrong:
        raise InputError(f"{bad}: {wrong[0]!r} is missing or malformed")
    return [value[k] for k in ("source_spm", "target_spm", "vocab", "target_vocab") if value[k] is not None]


def from_manifest(tokens: dict[str, Any], directory: Path) -> TextTokenizer:
    """The artifact's tokenizer (the manifest was checked by open_artifact)."""
    ref = tokens["tokenizer"]
    return HFTokenizer.from_file(directory / ref) if isinstance(ref, str) else MarianSentencePiece(ref, directory)


# ---- the checkpoint side ------------------------------------------------------------------------


class CheckpointTokenizer(ABC):
    """What a checkpoint directory ships for tokenization, found and checked by `find`."""

    label: Path  # the file an error about its ids names

    @abstractmethod
    def load(self) -> TextTokenizer: ...

    @abstractmethod
    def save(self, out: Path) -> tuple[str | dict[str, Any], list[str]]:
        """Write what the artifact needs into `out`: (manifest "tokens.tokenizer", files written)."""


class JSONFile(CheckpointTokenizer):
    def __init__(self, path: Path) -> None:
        self.label = path

    def load(self) -> TextTokenizer:
        return HFTokenizer.from_file(self.label)

    def save(self, out: Path) -> tuple[str, list[str]]:
        shutil.copyfile(self.label, out / "tokenizer.json")
        return "tokenizer.json", ["tokenizer.json"]


class T5SentencePiece(CheckpointTokenizer):
    """spiece.model, converted by transformers' T5Tokenizer (what it tokenizes with) to tokenizer.json."""

    def __init__(self, path: Path) -> None:
        self.label = path / "spiece.model"
        load_spm(self.label)
        if (path / "tokenizer_config.json").is_file():
            read_json_object(path / "tokenizer_config.json")
        from transformers import T5Tokenizer

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.json = T5Tokenizer.from_pretrained(path, local_files_only=True).backend_tokenizer.to_str()
        except Exception as e:  # transformers' conversion: anything is this checkpoint's input
            raise InputError(f"{self.label}: cannot convert it to a tokenizer: {first_line(e)}") from None

    def load(self) -> TextTokenizer:
        from tokenizers import Tokenizer

        return HFTokenizer(Tokenizer.from_str(self.json))

    def save(self, out: Path) -> tuple[str, list[str]]:
        (out / "tokenizer.json").write_text(self.json, encoding="utf-8")
        return "tokenizer.json", ["tokenizer.json"]


class MarianFiles(CheckpointTokenizer):
    """source.spm, target.spm, vocab.json (target_vocab.json with separate vocabularies), with the
    settings MarianTokenizer resolves from tokenizer_config.json / special_tokens_map.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = path / "vocab.json"
        for name in MARIAN_FILES:
            if not (path / name).is_file():
                raise InputError(f"{path / name}: missing (a Marian tokenizer is {', '.join(MARIAN_FILES)})")
        load_spm(path / "source.spm")
        load_spm(path / "target.spm")
        read_vocab(path / "vocab.json")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (path / name).is_file():
                read_json_object(path / name)
        self.spec = self._resolve()
        self.tokenizer = MarianSentencePiece(self.spec, path)

    def _resolve(self) -> dict[str, Any]:
        from transformers import MarianTokenizer

        try:
            with warnings.catch_warnings():  # "Recommended: pip install sacremoses." (it normalises nothing)
                warnings.simplefilter("ignore")
                mt = MarianTokenizer.from_pretrained(self.path, local_files_only=True)
        except KeyError as e:  # "<unk> token must be in the vocab"
            raise InputError(f"{self.label}: {first_line(e).strip(chr(34) + chr(39))}") from None
        except Exception as e:
            raise InputError(f"{self.path}: cannot load the Marian tokenizer: {first_line(e)}") from None
        if mt.sp_model_kwargs:  # e.g. sampling: no fixed tokenization to reproduce
            raise InputError(f"{self.path / 'tokenizer_config.json'}: sp_model_kwargs {mt.sp_model_kwargs} "
                             f"are not supported")
        if mt.separate_vocabs:
            read_vocab(self.path / "target_vocab.json")
        return {
            "kind": MARIAN, "source_spm": "source.spm", "target_spm": "target.spm", "vocab": "vocab.json",
            "target_vocab": "target_vocab.json" if mt.separate_vocabs else None,
            "separate_vocabs": bool(mt.separate_vocabs), "unk_token": str(mt.unk_token), "unk_id": mt.unk_token_id,
            "eos_id": mt.eos_token_id, "special_tokens": [str(t) for t in mt.all_special_tokens],
            "special_ids": [int(i) for i in mt.all_special_ids],
            "added_tokens": [{"id": int(i), "content": t.content, "lstrip": bool(t.lstrip), "rstrip": bool(t.rstrip),
                              "single_word": bool(t.single_word)} for i, t in sorted(mt.added_tokens_decoder.items())],
            "clean_up_tokenization_spaces": bool(mt.clean_up_tokenization_spaces),
            "split_special_tokens": bool(mt.split_special_tokens),
        }

    def load(self) -> TextTokenizer:
        return self.tokenizer

    def save(self, out: Path) -> tuple[dict[str, Any], list[str]]:
        files = check_spec(self.spec, out)
        for name in files:
            shutil.copyfile(self.path / name, out / name)
        return self.spec, files


def find(path: Path, family: str) -> CheckpointTokenizer:
    """The checkpoint's tokenizer: tokenizer.json if there is one, else Marian's SentencePiece
    files, else (T5 family) spiece.model. Unreadable files are InputErrors naming them."""
    if (path / "tokenizer.json").is_file():
        return JSONFile(path / "tokenizer.json")
    if any((path / name).is_file() for name in MARIAN_FILES):
        return MarianFiles(path)
    if (path / "spiece.model").is_file():
        if family != "t5":
            raise InputError(f"{path / 'spiece.model'}: without tokenizer.json a SentencePiece model is read only "
                             f"for T5 checkpoints (save a fast tokenizer with "
                             f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
        return T5SentencePiece(path)
    raise InputError(f"{path}: no tokenizer.json (save a fast tokenizer with "
                     f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir)), nor SentencePiece files "
                     f"(Marian: {', '.join(MARIAN_FILES)}; T5: spiece.model)")
