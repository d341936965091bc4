"""What a fine-tune trains on: data the packages ship, a loss, an evaluation.

    task = get_task("digits")            # sklearn digits, labels: cross-entropy
    task = get_task("stdlib-bytes")      # Python stdlib sources, next byte: cross-entropy
    task = get_task("stdlib-text")       # stdlib docstring sentences, no labels: distillation

A Task yields training batches `(inputs, target)`, scores a forward's output against
them (`loss`), and evaluates a forward on held-out data (`evaluate`). `forward(inputs)`
is whatever runs the model (the emulated P-partition forward while training; the exact
model as teacher). Labels where they exist (task loss); otherwise distillation toward
the exact (teacher) model's outputs. Nothing is downloaded: scikit-learn ships digits,
the interpreter ships its standard library.
"""
from __future__ import annotations

import glob
import os
import re
import sysconfig
from typing import Callable, Optional

import torch
import torch.nn.functional as F

_TASKS: dict = {}


def register_task(cls):
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> list:
    return sorted(_TASKS)


def get_task(name: str, **kw) -> "Task":
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {list_tasks()}")
    return _TASKS[name](**kw)


class Task:
    name = "?"
    objective = "task"           # "task" (labels) or "distill" (teacher outputs)
    data = ""                    # where the data comes from, for the card
    families: tuple = ()         # model families the task applies to
    metric = ""                  # the headline metric evaluate() returns

    def check(self, adapter) -> None:
        if adapter.family not in self.families:
            raise ValueError(f"task {self.name!r} trains {list(self.families)} models, not "
                             f"{adapter.family!r} ({adapter.name})")

    def batches(self, adapter, batch: int, generator: torch.Generator):
        raise NotImplementedError

    def loss(self, out, target, teacher=None) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, forward: Callable, adapter, teacher: Optional[Callable] = None) -> dict:
        raise NotImplementedError


# --------------------------------------------------------------------------- digits

def digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): scikit-learn digits, 8x8 -> 32x32 bilinear,
    3 channels, normalised to [-1, 1]; split 75/25 stratified (random_state=seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=0.25,
                                          stratify=d.target, random_state=seed)

    def prep(x):
        t = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 16.0
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
        return (t.repeat(1, 3, 1, 1) - 0.5) / 0.5

    return prep(xtr), torch.tensor(ytr), prep(xte), torch.tensor(yte)


@register_task
class Digits(Task):
    name, objective, families, metric = "digits", "task", ("vit",), "accuracy"
    data = ("sklearn.datasets.load_digits, 8x8 -> 32x32 bilinear, 3 channels, (x-0.5)/0.5; "
            "train split of train_test_split(test_size=0.25, stratify, random_state=0)")

    def __init__(self, split_seed: int = 0):
        self.split = digits_split(split_seed)

    def batches(self, adapter, batch, generator):
        xtr, ytr = self.split[0], self.split[1]
        while True:
            perm = torch.randperm(len(xtr), generator=generator)
            for i in range(0, len(xtr) - batch + 1, batch):
                b = perm[i:i + batch]
                # random shifts of up to 1 px, as the base model was trained
                dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
                yield torch.roll(xtr[b], shifts=(dy, dx), dims=(2, 3)), ytr[b]

    def loss(self, out, target, teacher=None):
        return F.cross_entropy(out.logits, target)

    def train_inputs(self) -> torch.Tensor:
        """The training images (CoFormer calibration distils on inputs alone)."""
        return self.split[0]

    def evaluate(self, forward, adapter, teacher=None):
        xte, yte = self.split[2], self.split[3]
        with torch.no_grad():
            pred = torch.cat([forward(xte[i:i + 256]).logits.argmax(1) for i in range(0, len(xte), 256)])
            out = {"accuracy": (pred == yte).float().mean().item(), "test_images": len(yte)}
            if teacher is not None:
                ref = torch.cat([teacher(xte[i:i + 256]).logits.argmax(1) for i in range(0, len(xte), 256)])
                out["agreement"] = (pred == ref).float().mean().item()
        return out


# --------------------------------------------------------------------------- stdlib bytes

def stdlib_corpus():
    """(train bytes, held-out bytes, held-out file names): the interpreter's top-level
    stdlib *.py sources, sorted by name; every 10th file is held out."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    train, held, names = [], [], []
    for i, f in enumerate(files):
        with open(f, "rb") as fh:
            b = fh.read()
        (held if i % 10 == 9 else train).append(b)
        if i % 10 == 9:
            names.append(os.path.basename(f))
    return b"\n".join(train), b"\n".join(held), names


def byte_windows(data: bytes, n: int, length: int, seed: int) -> torch.Tensor:
    """(n, length + 1) byte windows of `data` at seeded offsets."""
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(t) - length - 1, (n,), generator=g)
    return torch.stack([t[s:s + length + 1] for s in starts.tolist()])


def _text_inputs(ids: torch.Tensor):
    from ..models.hf import TextInputs
    return TextInputs(ids, torch.ones_like(ids))


@register_task
class StdlibBytes(Task):
    name, objective, families, metric = "stdlib-bytes", "task", ("gpt2",), "perplexity"
    data = "Python stdlib top-level *.py sources (sorted), every 10th file held out; bytes as tokens"

    def __init__(self, eval_sequences: int = 64):
        self.train, self.held, self.heldout_files = stdlib_corpus()
        self.eval_sequences = eval_sequences

    def batches(self, adapter, batch, generator):
        t = torch.frombuffer(bytearray(self.train), dtype=torch.uint8).long()
        n = adapter.seq_len
        while True:
            s = torch.randint(0, len(t) - n - 1, (batch,), generator=generator)
            w = torch.stack([t[i:i + n + 1] for i in s.tolist()])
            yield _text_inputs(w[:, :-1]), w[:, 1:]

    def loss(self, out, target, teacher=None):
        return F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), target.reshape(-1))

    def evaluate(self, forward, adapter, teacher=None):
        ev = byte_windows(self.held, self.eval_sequences, adapter.seq_len, 0)
        x, tgt = _text_inputs(ev[:, :-1]), ev[:, 1:]
        with torch.no_grad():
            lg = forward(x).logits
            nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1)).item()
            out = {"perplexity": float(torch.tensor(nll).exp()), "nll": nll,
                   "next_byte_accuracy": (lg.argmax(-1) == tgt).float().mean().item(),
                   "sequences": len(ev)}
            if teacher is not None:
                out["agreement"] = (lg.argmax(-1) == teacher(x).logits.argmax(-1)).float().mean().item()
        return out


# --------------------------------------------------------------------------- stdlib text

_SENT = re.compile(r"(?<=[.!?])\s+")


def stdlib_sentences(min_words: int = 6, max_words: int = 60) -> list:
    """English prose from the docstrings of the interpreter's stdlib modules: module,
    class and function docstrings of the top-level *.py sources, split into sentences,
    kept when they read as prose (words of letters, no code-like symbols), deduplicated,
    in a fixed order. None of data/fidelity/sentences.txt (hand-written) is among them."""
    import ast

    out, seen = [], set()
    for f in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        try:
            with open(f, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                for s in _SENT.split(text):
                    w = s.split()
                    if not min_words <= len(w) <= max_words or not s[0].isupper() or s[-1] not in ".!?":
                        continue
                    if re.search(r"[=<>{}\[\]_`|#\\]|\(\)|::|\.\w+\(", s):
                        continue
                    if sum(x.isalpha() for x in s) < 0.75 * len(s.replace(" ", "")):
                        continue
                    if s not in seen:
                        seen.add(s)
                        out.append(s)
    return out


@register_task
class StdlibText(Task):
    """Sentence-embedding distillation: the mean-pooled embedding under the strategy is
    pulled toward the exact model's (1 - cosine, plus the token features' MSE scaled by
    the teacher's feature variance). Every sentence is its own sequence (no padding);
    sentences of one token count form a batch."""

    name, objective, families, metric = "stdlib-text", "distill", ("bert",), "cos_mean"
    data = ("English sentences from the docstrings of the Python stdlib's top-level modules "
            "(runtime.train.tasks.stdlib_sentences); every 10th held out")

    def __init__(self, tokenizer_dir: Optional[str] = None, max_tokens: int = 64):
        from transformers import AutoTokenizer
        from ..models.hf import minilm_dir

        tok = AutoTokenizer.from_pretrained(tokenizer_dir or str(minilm_dir()), local_files_only=True)
        sents = stdlib_sentences()
        enc = tok(sents, truncation=True, max_length=max_tokens)["input_ids"]
        self.train = [e for i, e in enumerate(enc) if i % 10 != 9]
        self.held = [e for i, e in enumerate(enc) if i % 10 == 9][:400]
        self.n_sentences = len(sents)

    @staticmethod
    def _groups(encoded):
        by: dict = {}
        for e in encoded:
            by.setdefault(len(e), []).append(e)
        return by

    def batches(self, adapter, batch, generator):
        groups = [(n, ids) for n, ids in sorted(self._groups(self.train).items())]
        weights = torch.tensor([len(ids) for _, ids in groups], dtype=torch.float)
        while True:
            n, ids = groups[torch.multinomial(weights, 1, generator=generator).item()]
            pick = torch.randperm(len(ids), generator=generator)[:batch]
            yield _text_inputs(torch.tensor([ids[i] for i in pick.tolist()])), None

    def loss(self, out, target, teacher=None):
        f, t = out.features, teacher.features
        cos = F.cosine_similarity(f.mean(dim=1), t.mean(dim=1), dim=-1)
        return (1 - cos).mean() + F.mse_loss(f, t) / t.var().clamp_min(1e-6)

    def evaluate(self, forward, adapter, teacher=None):
        embs, refs = [], []
        with torch.no_grad():
            for n, ids in sorted(self._groups(self.held).items()):
                x = _text_inputs(torch.tensor(ids))
                embs.append(forward(x).features.mean(dim=1))
                refs.append(teacher(x).features.mean(dim=1))
        return embedding_scores(torch.cat(refs), torch.cat(embs))


def embedding_scores(exact: torch.Tensor, approx: torch.Tensor, k: int = 5) -> dict:
    """Cosine of each embedding to the exact one (mean, 5th percentile, min), top-1
    nearest-neighbour agreement and recall@k among the same sentences."""
    e, a = F.normalize(exact, dim=1), F.normalize(approx, dim=1)
    cos = (e * a).sum(1)
    eye = torch.eye(len(e), dtype=torch.bool)
    top_e = (e @ e.T).masked_fill(eye, -2).topk(k, dim=1).indices
    top_a = (a @ a.T).masked_fill(eye, -2).topk(k, dim=1).indices
    rec = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(top_e, top_a)) / (k * len(e))
    return {"cos_mean": cos.mean().item(), "cos_p5": cos.quantile(0.05).item(),
            "cos_min": cos.min().item(), "nn_top1_agreement": (top_e[:, 0] == top_a[:, 0]).float().mean().item(),
            f"recall_at_{k}": rec, "sentences": len(e)}
