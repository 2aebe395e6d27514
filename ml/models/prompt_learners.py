"""Prompt strategies: where the text feature of each (image, class) pair comes from.

All share one call, `strategy(clip, image_ids, labels) -> (P, D)` text features for P pairs, and are
chosen by `train_pole.prompt` (the names and their builders below: ml.spec.registry.PROMPT_STRATEGIES):
- manual: the template with the class name ("a photo of cat."), fixed;
- pole: the template with the word select_prompts chose for that image and class, fixed;
- coop: N learnable context vectors replace the template's context words (and start from their
  embeddings), the class name stays fixed;
- defo: learnable context and one learnable class vector per class (starting from the embedding of
  the class name);
- target: the template's fixed context and a learnable class vector.
Fixed prompts are encoded once (FrozenClip caches them); learnable ones go through the frozen text
encoder at every step, so their gradients reach the learnt vectors and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ml.models.clip_encoder import FrozenClip
from ml.spec.registry import PROMPT_STRATEGIES, load

log = logging.getLogger("pole")

PLACEHOLDER = "x"  # one BPE token; its embedding is replaced by a learnt vector
CONTEXT_INIT_STD = 0.02  # CoOp's random init, used when the template's context has another length


class FixedPrompts(nn.Module):
    """manual (class names) or pole (chosen words per image and class); nothing to learn."""

    def __init__(self, classes: Sequence[str], template: str, chosen: dict[tuple[str, int], str] | None = None):
        super().__init__()
        self.classes, self.template, self.chosen = list(classes), template, chosen

    def word(self, image_id: str, label: int) -> str:
        if self.chosen is None:
            return self.classes[label - 1]
        try:
            return self.chosen[(image_id, label)]
        except KeyError:
            raise KeyError(
                f"select_prompts chose no word for image {image_id!r}, class {self.classes[label - 1]!r}; "
                "delete the run's select_prompts/ directory to select again"
            ) from None

    def forward(self, clip: FrozenClip, image_ids: Sequence[str], labels: torch.Tensor) -> torch.Tensor:
        words = [self.word(i, int(k)) for i, k in zip(image_ids, labels.tolist(), strict=True)]
        return clip.encode_text([self.template.format(w) for w in words])  # (P, D)

    def spec(self) -> dict:
        chosen = None if self.chosen is None else [[i, k, w] for (i, k), w in sorted(self.chosen.items())]
        return {
            "strategy": "manual" if chosen is None else "pole",
            "classes": self.classes,
            "template": self.template,
            "chosen": chosen,
        }


class LearnedPrompts(nn.Module):
    """coop / defo / target: some input embeddings of the prompt are parameters."""

    def __init__(self, clip: FrozenClip, classes: Sequence[str], template: str, strategy: str, context_length: int = 3):
        super().__init__()
        if strategy not in ("coop", "defo", "target"):
            raise ValueError(f"learnable prompt strategy {strategy!r}; choose coop, defo or target")
        self.classes, self.template, self.strategy = list(classes), template, strategy
        self.context_length = context_length
        prefix, suffix = template.split("{}")
        learn_context = strategy in ("coop", "defo")
        context = " ".join([PLACEHOLDER] * context_length) if learn_context else prefix.strip()
        class_part = [PLACEHOLDER] * len(self.classes) if strategy != "coop" else self.classes
        texts = [f"{context} {c}{suffix}".strip() for c in class_part]
        tokens = clip.tokenize(texts)  # (K, L): start, context, class, suffix, end
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("base", clip.token_embeddings(tokens), persistent=False)  # (K, L, W)
        context_tokens = _word_tokens(clip, prefix.strip())
        self.context_slice = slice(1, 1 + (context_length if learn_context else len(context_tokens)))
        if learn_context:
            self.context = nn.Parameter(self._context_init(clip, context_tokens))  # (N, W)
        if strategy != "coop":
            self.class_position = self.context_slice.stop
            init = [clip.token_embeddings(_word_tokens(clip, c)[None])[0].mean(0) for c in self.classes]
            self.class_vectors = nn.Parameter(torch.stack(init))  # (K, W)

    def _context_init(self, clip: FrozenClip, context_tokens: torch.Tensor) -> torch.Tensor:
        if len(context_tokens) == self.context_length:
            return clip.token_embeddings(context_tokens[None])[0].clone()
        log.warning(
            "template context %r has %d tokens, not train_pole.context_length=%d: context starts random",
            self.template.split("{}")[0],
            len(context_tokens),
            self.context_length,
        )
        width = self.base.shape[-1]
        return torch.randn(self.context_length, width, device=self.base.device) * CONTEXT_INIT_STD

    def class_embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """(P,) 1-based labels -> (P, L, W) prompt input embeddings with the learnt parts in place."""
        rows = labels - 1
        embeddings = self.base[rows]
        parts = [embeddings[:, :1]]
        if self.strategy == "target":
            parts.append(embeddings[:, self.context_slice])
        else:
            parts.append(self.context.expand(len(rows), -1, -1))
        rest = self.context_slice.stop
        if self.strategy != "coop":
            parts.append(self.class_vectors[rows, None])
            rest += 1
        parts.append(embeddings[:, rest:])
        return torch.cat(parts, dim=1)

    def forward(self, clip: FrozenClip, image_ids: Sequence[str], labels: torch.Tensor) -> torch.Tensor:
        distinct, inverse = labels.unique(return_inverse=True)  # each class through the encoder once
        features = clip.encode_token_embeddings(self.class_embeddings(distinct), self.tokens[distinct - 1])
        return features[inverse]  # (P, D)

    def spec(self) -> dict:
        return {
            "strategy": self.strategy,
            "classes": self.classes,
            "template": self.template,
            "context_length": self.context_length,
        }


def manual_prompts(strategy: str, clip: FrozenClip, classes: Sequence[str], template: str, context_length: int, chosen):
    return FixedPrompts(classes, template)


def selected_word_prompts(
    strategy: str, clip: FrozenClip, classes: Sequence[str], template: str, context_length: int, chosen
) -> FixedPrompts:
    if chosen is None:
        raise ValueError(f"prompt strategy {strategy!r} needs the words chosen by select_prompts")
    return FixedPrompts(classes, template, chosen)


def learned_prompts(
    strategy: str, clip: FrozenClip, classes: Sequence[str], template: str, context_length: int, chosen
) -> LearnedPrompts:
    return LearnedPrompts(clip, classes, template, strategy, context_length)


def build_prompt_strategy(
    strategy: str,
    clip: FrozenClip,
    classes: Sequence[str],
    template: str,
    context_length: int = 3,
    chosen: dict[tuple[str, int], str] | None = None,
) -> FixedPrompts | LearnedPrompts:
    """The strategy named by train_pole.prompt (ml.spec.registry.PROMPT_STRATEGIES); `chosen`
    ((image id, label) -> word) is the input of the strategies that use selected words."""
    if strategy not in PROMPT_STRATEGIES:
        raise ValueError(f"prompt strategy {strategy!r}; choose one of {', '.join(PROMPT_STRATEGIES)}")
    return load(PROMPT_STRATEGIES[strategy].builder)(strategy, clip, classes, template, context_length, chosen)


def _word_tokens(clip: FrozenClip, text: str) -> torch.Tensor:
    """The BPE ids of `text` alone, without the start/end tokens."""
    tokens = clip.tokenize([text])[0]
    end = int(tokens.argmax())  # the end-of-text id is the largest in the vocabulary
    return tokens[1:end]
