"""Shared-prefix training rows: one article's pairs trained as one sequence.

The 2 x |others| training examples of one article are identical up to the first summary (system
prompt, instructions, the article itself): on XSUM with P1's wording, about three quarters of every
example's tokens.
With ``share_prefix`` each training row holds that common prefix once, followed by every example's
own remainder (its *branch*: the two summaries, the question and the answer). Each branch sees the
prefix and itself only, and the position ids of each branch restart at the prefix length, so every
branch token sees exactly the context and positions it would see in its own sequence: the loss and
its gradients equal those of the same examples batched one per row (``tests/test_shared_prefix.py``
checks both, also under DDP), while the forward and backward passes cover the prefix once instead of
2 x |others| times — the scoring engine's prefix reuse, applied to training.

Two attention paths (``SharedPrefixSFTTrainer.attention_path``):

* ``packed`` (Llama-like models, see :func:`packed_path_possible`): the trained model's attention is
  the engine's packed attention (:mod:`selfrec_ft.scoring.packed_attention`) for the trainer's life.
  The prefix attends causally to itself once; the branches attend to the prefix's keys and causally to
  themselves (on a CPU by cascade, with an exact backward through the flash kernel; on GPUs by one
  masked attention over the branches), gradients flowing into both. No masked-out score is computed
  for the prefix, and the collator builds no 4-D mask. The layout is rebuilt in ``compute_loss`` from
  the position ids and travels with the forward call (it survives activation checkpointing's
  recomputation).
* ``mask`` (other models): the model's own attention over the whole row with a 4-D mask.

A row's length is the prefix plus its branches: never more tokens than its examples together, and no
position id beyond the longest of them (each example is checked against ``max_length`` before
packing). ``per_device_train_batch_size`` then counts rows, i.e. articles. The row layout is carried by
``position_ids`` alone (a restart marks a new branch; the restart position is the prefix length), so
rows survive dataset caching and shuffling.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from selfrec_ft.errors import UserError

IGNORE = -100


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs[1:]):
            return j
    return n


def _first_label(labels: list[int]) -> int:
    return next((j for j, t in enumerate(labels) if t != IGNORE), len(labels))


def pack_rows(input_ids: list[list[int]], labels: list[list[int]], max_length: int | None
              ) -> list[dict[str, list[int]]]:
    """Pack the examples of one group (same article) into shared-prefix rows of at most ``max_length``.

    The shared prefix stops at least one token before the first label of every member, so each
    branch starts with a token of its own and predicts its first answer token from its own context.
    """
    if len(input_ids) == 1:
        return [{"input_ids": list(input_ids[0]), "labels": list(labels[0]),
                 "position_ids": list(range(len(input_ids[0]))), "n_examples": 1}]
    limit = min(_first_label(lab) for lab in labels) - 1
    prefix = max(0, min(_common_prefix([list(s) for s in input_ids]), limit))
    rows: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for ids, lab in zip(input_ids, labels):
        branch = len(ids) - prefix
        if cur is None or (max_length is not None and len(cur["input_ids"]) + branch > max_length):
            cur = {"input_ids": list(ids[:prefix]), "labels": [IGNORE] * prefix,
                   "position_ids": list(range(prefix)), "n_examples": 0}
            rows.append(cur)
        cur["input_ids"].extend(ids[prefix:])
        cur["labels"].extend(lab[prefix:])
        cur["position_ids"].extend(range(prefix, len(ids)))
        cur["n_examples"] += 1
    return rows


def pack_dataset_by_group(prepared, max_length: int | None, key: str = "article_id"):
    """TRL-prepared rows (``input_ids``, ``labels``, ``key``) -> shared-prefix rows, one group per ``key``.

    Returns a ``datasets.Dataset`` with ``input_ids``, ``labels``, ``position_ids``, ``n_examples``
    and ``key``, in the order the groups first appear.
    """
    import datasets

    if key not in prepared.column_names:
        raise UserError(f"share_prefix needs a {key!r} column in the training dataset")
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(prepared[key]):
        groups.setdefault(k, []).append(i)
    all_ids, all_labels = prepared["input_ids"], prepared["labels"]
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "n_examples": [], key: []}
    for k, idx in groups.items():
        for row in pack_rows([all_ids[i] for i in idx], [all_labels[i] for i in idx], max_length):
            for name in ("input_ids", "labels", "position_ids", "n_examples"):
                out[name].append(row[name])
            out[key].append(k)
    return datasets.Dataset.from_dict(out)


def branch_layout(position_ids):
    """(prefix length, branch id per token) of one row from its position ids (a restart opens a branch;
    a row without one is a single sequence: prefix 0, one branch)."""
    import torch

    pos = torch.as_tensor(position_ids)
    restart = torch.zeros_like(pos, dtype=torch.bool)
    restart[1:] = pos[1:] <= pos[:-1]
    starts = restart.nonzero().flatten()
    prefix = int(pos[starts[0]]) if len(starts) else 0  # no restart: one plain causal sequence
    return prefix, torch.cumsum(restart.long(), 0)


def shared_prefix_mask(position_ids_rows: list[list[int]], length: int):
    """Boolean attention mask ``[B, 1, T, T]`` (True = may attend) for padded shared-prefix rows."""
    import torch

    mask = torch.zeros(len(position_ids_rows), 1, length, length, dtype=torch.bool)
    for b, pos in enumerate(position_ids_rows):
        n = len(pos)
        prefix, branch = branch_layout(pos)
        q = torch.arange(n)
        causal = q[None, :] <= q[:, None]
        same = branch[None, :] == branch[:, None]
        mask[b, 0, :n, :n] = causal & ((q[None, :] < prefix) | same)
        mask[b, 0, n:, 0] = True  # padding queries look at one real key (their outputs are never used)
    return mask


def row_families(position_ids, length: int):
    """The packed-attention families of one row's first ``length`` tokens (its prefix, then a
    branch at every restart of the position ids; a row without a restart is one plain sequence)."""
    from selfrec_ft.scoring.packed_attention import Family

    pos = [int(p) for p in position_ids[:length]]
    restarts = [j for j in range(1, length) if pos[j] <= pos[j - 1]]
    if not restarts:
        return [Family(0, length)] if length else []
    return [Family(0, pos[restarts[0]], tuple(restarts) + (length,))]  # a branch restarts at the prefix length


class SharedPrefixCollator:
    """Pads shared-prefix rows; ``attention_mask`` is their 4-D boolean mask, or with
    ``four_d_mask=False`` (the packed-attention path, which needs no mask) a 2-D mask of the real tokens."""

    def __init__(self, pad_token_id: int, four_d_mask: bool = True):
        self.pad_token_id = pad_token_id
        self.four_d_mask = four_d_mask

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (length - len(f[key])) for f in features])

        if self.four_d_mask:
            mask = shared_prefix_mask([f["position_ids"] for f in features], length)
        else:
            mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features])
        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "labels": pad("labels", IGNORE),
            "position_ids": pad("position_ids", 0),
            "attention_mask": mask,
        }


def verify_packed_completion_mask(packed, expected_completion_ids: list[list[int]]) -> None:
    """Every branch's labels are ``-100`` then its input ids to the branch end, and the branches'
    completions are exactly the expected ones (as a multiset)."""
    got = []
    for ids, labels, pos in zip(packed["input_ids"], packed["labels"], packed["position_ids"]):
        prefix, branch = branch_layout(pos)
        if any(t != IGNORE for t in labels[:prefix]):
            raise RuntimeError("a shared prefix carries training labels")
        bounds = [prefix] + [j for j in range(prefix + 1, len(pos)) if pos[j] <= pos[j - 1]] + [len(pos)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            lab, seg = labels[a:b], ids[a:b]
            first = _first_label(lab)
            if first == 0 or first == len(lab) or list(lab[first:]) != list(seg[first:]):
                raise RuntimeError("the packed training labels are not a completion-only mask")
            got.append(tuple(lab[first:]))
    if Counter(got) != Counter(tuple(c) for c in expected_completion_ids):
        raise RuntimeError("the packed training labels differ from the completion tokens of the pairs")


def packed_path_possible(model, attn_implementation: str | None) -> bool:
    """Whether shared-prefix rows can train through packed attention (Llama-like models whose
    configured attention is ``sdpa``, ``eager`` or unset; see :mod:`selfrec_ft.scoring.packed_attention`)."""
    from selfrec_ft.scoring.packed_attention import NAME, supports_packed_attention

    return attn_implementation in (None, "sdpa", "eager", NAME) and supports_packed_attention(model)


def shared_prefix_trainer_class():
    """``SFTTrainer`` whose prepared dataset is packed by article (see the module docstring)."""
    import torch
    from trl import SFTTrainer

    from selfrec_ft.scoring.packed_attention import LAYOUT_KWARG, PackedLayout, base_model, set_packed_attention

    class SharedPrefixSFTTrainer(SFTTrainer):
        """TRL's ``SFTTrainer`` on shared-prefix rows (see :mod:`selfrec_ft.training.shared_prefix`).

        ``attention_path`` is ``"packed"`` (the model's attention is switched to packed attention
        for the trainer's life: the prefix once, each branch against the prefix keys and causally
        against itself, nothing masked computed) where the model allows it, else ``"mask"`` (the
        model's own attention with the 4-D mask over the whole row)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            attn = base_model(self.model).config._attn_implementation
            self.attention_path = "packed" if packed_path_possible(self.model, attn) else "mask"
            self.packed_mode = None  # packed attention's mode: None = cascade on CPU, mask elsewhere
            if self.attention_path == "packed":
                set_packed_attention(self.model)
                if isinstance(self.data_collator, SharedPrefixCollator):
                    self.data_collator.four_d_mask = False

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func,
                                                dataset_name)
            return pack_dataset_by_group(prepared, max_length=None)  # examples were checked against max_length

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["input_ids", "labels", "position_ids"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            lengths = mask.diagonal(dim1=-2, dim2=-1).sum(-1).flatten() if mask.dim() == 4 else mask.sum(-1)
            if self.attention_path == "packed":
                positions = inputs["position_ids"].tolist()
                inputs[LAYOUT_KWARG] = PackedLayout([row_families(p, int(n)) for p, n in zip(positions, lengths.tolist())],
                                                    mode=self.packed_mode)
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])  # the layout masks; none to build
            elif mask.dim() == 2:  # a 2-D mask from a packed-path collator: build the 4-D one
                inputs["attention_mask"] = shared_prefix_mask(
                    [p[:n] for p, n in zip(inputs["position_ids"].tolist(), lengths.tolist())],
                    mask.shape[-1]).to(mask.device)
            allowed = inputs["attention_mask"]
            if self.attention_path == "mask" and getattr(self.model.config, "_attn_implementation", "sdpa") == "eager":
                # eager attention adds the mask to the scores: give it the additive form
                inputs["attention_mask"] = torch.zeros(allowed.shape, dtype=torch.float32,
                                                       device=allowed.device).masked_fill(
                    ~allowed, torch.finfo(torch.float32).min)
            training = self.model.training
            before = self._total_train_tokens
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if training:  # TRL counts attention_mask.sum(): count the real tokens instead
                real = lengths.sum()
                self._total_train_tokens = before + self.accelerator.gather_for_metrics(real).sum().item() \
                    // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return SharedPrefixSFTTrainer
