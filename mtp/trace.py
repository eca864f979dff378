"""The Trace of one generation and its metrics (DESIGN §5 names). UI and benchmark read only this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Step:
    """One verifying forward pass."""

    drafts: list[int]  # draft tokens verified in this pass (empty: nothing to verify)
    accepted: int  # how many of them were accepted (a prefix)
    bonus: int  # the token the model itself produced after the accepted drafts
    seconds: float  # wall time of the pass, verification and drafting included
    input_length: int  # tokens fed to the pass: real + draft + mask
    new_tokens: int = 0  # tokens this step added to the output (accepted + bonus, less any cut by a stop)
    looked_up: bool = False  # the drafts came from prompt lookup, not from the masks

    @property
    def rejected(self) -> list[int]:
        return self.drafts[self.accepted:]


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
            proposed = [step for step in self.steps if len(step.drafts) >= offset]
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
        names = {"method", "k", "prompt_ids", "token_ids", "text", "seconds", "stop_reason", "temperature"}
        trace = cls(**{key: data[key] for key in names if key in data})
        trace.steps = [Step(**step) for step in data.get("steps", [])]
        return trace
