"""Helpers for the decoding tests: tiny MTP models, greedy references, oracle drafts, chi-square."""

from __future__ import annotations

import itertools
import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mtp import adapter
from mtp.adapter import MTPModel, identity_of
from mtp.drafting import Draft


def tiny_mtp(family: str = "llama", seed: int = 0, k: int = 8, vocab: int = 128, lora_std: float = 0.0,
             layers: int = 2, sampler: bool = True) -> MTPModel:
    """A tiny random base model with an MTP adapter; lora_std > 0 gives LoRA B random values."""
    torch.manual_seed(seed)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM),
                                 "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    config = config_class(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          bos_token_id=None, eos_token_id=None, pad_token_id=0)
    config._attn_implementation = "sdpa"
    base = model_class(config).eval()
    model = adapter.create(base, identity_of(base, f"tiny-{family}"), k=k, lora_rank=4, sampler=sampler).eval()
    if lora_std:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name or name.startswith("sampler.out"):
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * lora_std)
    return model


def greedy_reference(model: MTPModel, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """transformers' own greedy generate on the plain base model (gate closed): the ground truth.
    The tiny models have no EOS, so without `eos` it runs the full length."""
    ids = torch.tensor([prompt])
    out = model.base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def random_prompt(seed: int, length: int, vocab: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (length,), generator=generator).tolist()


class Oracle:
    """A drafter proposing the true continuation as a chain of k (or of the group's masks, if fewer),
    with only its first `correct` drafts right; like the masks, it proposes only when given a group
    the accepted path ended at (not one it ran past: group.behind > 0)."""

    def __init__(self, continuation: list[int], k: int, correct: int | None = None, vocab: int = 128) -> None:
        self.continuation, self.k, self.correct, self.vocab = continuation, k, correct, vocab

    def propose(self, context: list[int], group, sampling) -> Draft:
        if group is None or group.behind:
            return Draft()
        assert context == self.continuation[:len(context)], "the context must be the greedy continuation"
        true = self.continuation[len(context):len(context) + min(self.k, len(group.hidden))]
        good = self.k if self.correct is None else self.correct
        return Draft.chain([t if i < good else (t + 1) % self.vocab for i, t in enumerate(true)])


def oracle(continuation: list[int], k: int, correct: int | None = None, vocab: int = 128) -> Oracle:
    return Oracle(continuation, k, correct, vocab)


@torch.inference_mode()
def next_token_probs(model: MTPModel, contexts: list[list[int]], temperature: float,
                     top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Exact next-token distributions of the plain base model for equally long contexts, (n, V)."""
    from mtp.sampling import distribution
    return distribution(model.base(torch.tensor(contexts)).logits[:, -1], temperature, top_k, top_p)


@torch.inference_mode()
def first_marginals(model: MTPModel, prompt: list[int], vocab: int, temperature: float, count: int = 3,
                    top_k: int | None = None, top_p: float | None = None) -> list[torch.Tensor]:
    """Exact marginal distributions of the first `count` sampled tokens under plain sampling
    (the joint over every prefix: vocab ** (count - 1) contexts in the last batch)."""
    joint = next_token_probs(model, [prompt], temperature, top_k, top_p)[0]
    marginals = [joint]
    for length in range(1, count):
        contexts = [prompt + list(prefix) for prefix in itertools.product(range(vocab), repeat=length)]
        following = next_token_probs(model, contexts, temperature, top_k, top_p).reshape(*[vocab] * (length + 1))
        joint = joint[..., None] * following
        marginals.append(joint.sum(tuple(range(length))))
    return marginals


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic of observed counts against probabilities, pooling cells expected < 5."""
    total = float(counts.sum())
    expected = probs.double() * total
    small = expected < min_expected
    observed = counts.double()
    obs = torch.cat([observed[~small], observed[small].sum()[None]]) if small.any() else observed
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    statistic = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    return statistic, int(keep.sum()) - 1


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Upper quantile of chi-square(df) by Wilson-Hilferty; z = 3.719 is the 1e-4 normal tail."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
