"""The Trace of one generation and its metrics (docs/design.md §6 names). UI and benchmark read only this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .layouts import tree_positions

if TYPE_CHECKING:
    from .drafting import Draft


@dataclass
class Step:
    """One verifying forward pass."""

    drafts: list[int]  # draft tokens verified in this pass (empty: nothing to verify)
    accepted: int  # how many of them were accepted (a prefix)
    bonus: int  # the token the model itself produced after the accepted drafts
    seconds: float  # wall time of the pass, verification and drafting included
    input_length: int  # tokens fed to the pass: real + draft + mask
    new_tokens: int = 0  # tokens this step added to the output (accepted + bonus, less any cut by a stop)
    looked_up: bool = False  # the drafts came from prompt lookup (a tree: grafted onto the masks' tree)
    # A draft tree (empty for a chain): each draft's parent (-1: the step's first token) and the
    # accepted path (draft indices, root first).
    parents: list[int] = field(default_factory=list)
    path: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the drafters the drafts came from (drafting.Draft.sources)

    @staticmethod
    def of(draft: "Draft", path: list[int], bonus: int, seconds: float, input_length: int, new_tokens: int) -> "Step":
        tree = not draft.is_chain
        return Step(drafts=list(draft.tokens), accepted=len(path), bonus=bonus, seconds=seconds,
                    input_length=input_length, new_tokens=new_tokens, looked_up=draft.looked_up,
                    parents=list(draft.parents) if tree else [], path=list(path) if tree else [],
                    sources=list(draft.sources))

    @property
    def accepted_path(self) -> list[int]:
        """Indices of the accepted drafts (a chain: its first `accepted`)."""
        return self.path if self.parents else list(range(self.accepted))

    @property
    def rejected(self) -> list[int]:
        """Draft tokens not on the accepted path."""
        kept = set(self.accepted_path)
        return [t for i, t in enumerate(self.drafts) if i not in kept]

    @property
    def depth(self) -> int:
        """How far ahead the drafts reach (a chain: its length)."""
        return 1 + max(tree_positions(self.parents)) if self.parents else len(self.drafts)


@dataclass
class Trace:
    method: str
    k: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)  # new tokens only
    text: str = ""
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0  # whole call, wall clock
    stop_reason: str = ""  # "eos", "stop_string", "max_new_tokens"
    temperature: float = 0.0
    tree_budget: int = 0  # drafts came as trees of at most this many nodes (0: chains)

    @property
    def forward_passes(self) -> int:
        return len(self.steps)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_step(self) -> float:
        """τ: new tokens per verifying forward pass (1.0 for plain decoding; at most k+1 without lookup)."""
        return self.new_tokens / self.forward_passes if self.steps else 0.0

    @property
    def accept_counts(self) -> list[int]:
        return [step.accepted for step in self.steps]

    @property
    def proposed_drafts(self) -> int:
        return sum(len(step.drafts) for step in self.steps)

    @property
    def accepted_drafts(self) -> int:
        return sum(step.accepted for step in self.steps)

    @property
    def draft_acceptance_rate(self) -> float:
        return self.accepted_drafts / self.proposed_drafts if self.proposed_drafts else 0.0

    @property
    def per_offset_acceptance(self) -> list[float]:
        """For offset i (1..k): accepted ÷ proposed among steps that proposed a draft at offset i."""
        rates = []
        for offset in range(1, self.k + 1):
            proposed = [step for step in self.steps if step.depth >= offset]
            rates.append(sum(step.accepted >= offset for step in proposed) / len(proposed) if proposed else 0.0)
        return rates

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict:
        return {
            "method": self.method, "k": self.k, "steps": self.forward_passes, "new_tokens": self.new_tokens,
            "tokens_per_step": self.tokens_per_step, "draft_acceptance_rate": self.draft_acceptance_rate,
            "per_offset_acceptance": self.per_offset_acceptance, "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second, "accept_counts": self.accept_counts,
            "stop_reason": self.stop_reason,
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(self.metrics())
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Trace":
        names = {"method", "k", "prompt_ids", "token_ids", "text", "seconds", "stop_reason", "temperature", "tree_budget"}
        trace = cls(**{key: data[key] for key in names if key in data})
        trace.steps = [Step(**step) for step in data.get("steps", [])]
        return trace
