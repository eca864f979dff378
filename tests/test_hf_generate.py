"""transformers' own `model.generate(custom_generate=mtp entry)` and TextIteratorStreamer, on tiny random models."""

from __future__ import annotations

import json
from threading import Thread

import pytest
import torch
from decoding_helpers import random_prompt
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TextIteratorStreamer

from mtp import adapter
from mtp.config import CheckpointError
from mtp.datastore import DatastoreError
from mtp.decoding import generate as mtp_generate
from mtp.hf_generate import entry_path
from mtp.options import OptionError

from tests.conftest import randomize_lora, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread
EOS = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A k=4 checkpoint with random LoRA, trained (so to say) on tiny_model("llama")."""
    base = tiny_model("llama")
    model = adapter.create(base, adapter.identity_of(base, "tiny"), k=4, lora_rank=4)
    randomize_lora(model)
    return model.save(tmp_path_factory.mktemp("hf") / "ckpt")


@pytest.fixture
def model():
    """A fresh plain tiny Llama, as a user loads it (the entry attaches the adapter to it)."""
    return tiny_model("llama")


def words_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the 128 tiny ids: id i is the word w<i>."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(128)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token=f"w{EOS}")


def mtp_call(model, ids, checkpoint, **kwargs):
    return model.generate(ids, custom_generate=entry_path(), trust_remote_code=True, mtp_checkpoint=str(checkpoint),
                          **kwargs)


@pytest.mark.parametrize("method,k,cost_aware", [("linear", 4, None), ("quadratic", 2, None), ("quadratic", 3, True),
                                                ("autoregressive", None, None)])
def test_entry_equals_plain_greedy_generate(model, checkpoint, method, k, cost_aware) -> None:
    for seed, length in ((0, 5), (1, 17)):
        ids = torch.tensor([random_prompt(seed, length, 128)])
        reference = model.generate(ids, do_sample=False, max_new_tokens=24, pad_token_id=0)
        out = mtp_call(model, ids, checkpoint, max_new_tokens=24, mtp_method=method, mtp_k=k, mtp_cost_aware=cost_aware)
        assert out.dtype == torch.long and out.tolist() == reference.tolist(), (method, seed)
    # The adapter stays attached to the model: its own generate is unchanged (the gate is closed).
    assert model.generate(ids, do_sample=False, max_new_tokens=24, pad_token_id=0).tolist() == reference.tolist()


def test_entry_drafts_from_a_datastore(model, checkpoint, tmp_path, monkeypatch) -> None:
    """mtp_datastore: the model's own answers drafted back, the output still plain greedy generate's."""
    monkeypatch.setenv("MTP_CACHE", str(tmp_path / "cache"))
    ids = torch.tensor([random_prompt(3, 9, 128)])
    reference = model.generate(ids, do_sample=False, max_new_tokens=24, pad_token_id=0)
    data = tmp_path / "own.jsonl"
    sample = {"prompt_ids": ids[0].tolist(), "response_ids": reference[0, 9:].tolist()}
    data.write_text((json.dumps(sample) + "\n") * 2)
    out = mtp_call(model, ids, checkpoint, max_new_tokens=24, mtp_method="quadratic", mtp_k=2,
                   mtp_tree_budget=4, mtp_datastore=[str(data)])
    assert out.tolist() == reference.tolist()
    out = mtp_call(model, ids, checkpoint, max_new_tokens=24, mtp_method="quadratic", mtp_k=2,
                   mtp_datastore=str(data))  # one file: a path, not a list of one-letter paths
    assert out.tolist() == reference.tolist()
    with pytest.raises(DatastoreError, match="cannot read datastore source"):
        mtp_call(model, ids, checkpoint, max_new_tokens=4, mtp_datastore=[str(tmp_path / "missing.jsonl")])


def test_entry_follows_generation_config(model, checkpoint) -> None:
    """max_length from the model's generation_config, an EOS from the call, the dict output."""
    ids = torch.tensor([random_prompt(2, 6, 128)])
    model.generation_config.max_length = 15
    assert mtp_call(model, ids, checkpoint).tolist() == model.generate(ids, do_sample=False, pad_token_id=0).tolist()
    plain = model.generate(ids, do_sample=False, max_new_tokens=30, pad_token_id=0)[0, 6:].tolist()
    eos = plain[9]  # a token the model produces: generation stops there, the EOS kept
    expected = model.generate(ids, do_sample=False, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    out = mtp_call(model, ids, checkpoint, max_new_tokens=30, eos_token_id=eos, return_dict_in_generate=True)
    assert out.sequences.tolist() == expected.tolist() and out.sequences[0, -1] == eos


def read_streamed(streamer: TextIteratorStreamer, run) -> tuple[str, object]:
    """Decode in a thread as users do, collecting the streamed text in this one."""
    result = {}
    thread = Thread(target=lambda: result.setdefault("out", run()))
    thread.start()
    text = "".join(streamer)
    thread.join()
    return text, result["out"]


def test_text_iterator_streamer_with_the_entry_and_with_mtp_generate(model, checkpoint) -> None:
    tokenizer = words_tokenizer()
    ids = torch.tensor([random_prompt(3, 8, 128)])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    text, out = read_streamed(streamer, lambda: mtp_call(model, ids, checkpoint, max_new_tokens=20, streamer=streamer,
                                                         mtp_method="linear", mtp_k=4))
    new = out[0, 8:].tolist()
    assert len(new) == 20 and text == tokenizer.decode(new)

    mtp_model = model.__dict__["_mtp_adapter"][1]  # the adapter the entry attached
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    text, trace = read_streamed(streamer, lambda: mtp_generate(mtp_model, ids[0].tolist(), method="quadratic", k=3,
                                                               max_new_tokens=20, streamer=streamer))
    assert trace.token_ids == new and text == tokenizer.decode(new)


@pytest.mark.parametrize("options,error,message", [
    ({"do_sample": True}, OptionError, "decodes greedily"),
    ({"num_beams": 2}, OptionError, "decodes greedily"),
    ({"repetition_penalty": 1.2}, OptionError, "RepetitionPenaltyLogitsProcessor"),
    ({"stop_strings": ["w5"]}, OptionError, "stop_strings"),
    ({"mtp_k": 9}, OptionError, "k must be between 1 and 4"),
    ({"max_new_tokens": None, "max_length": 5}, OptionError, "no new token to generate"),
    ({"mtp_sampler": False}, OptionError, "unknown MTP option(s) mtp_sampler"),
    ({"mtp_cost_aware": "yes"}, OptionError, "cost_aware must be True or False, got 'yes'"),
    ({"mtp_checkpoint": None}, CheckpointError, "needs mtp_checkpoint"),
    ({"mtp_checkpoint": "no/such/dir"}, CheckpointError, "does not exist"),
])
def test_bad_input_is_one_clear_error(model, checkpoint, options, error, message) -> None:
    ids = torch.tensor([random_prompt(4, 5, 128)])
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.generate(ids, **{"custom_generate": entry_path(), "trust_remote_code": True,
                               "mtp_checkpoint": str(checkpoint), "max_new_tokens": 8, **options})


def test_batches_padding_and_other_base_models_are_refused(model, checkpoint) -> None:
    ids = torch.tensor([random_prompt(5, 5, 128)])
    with pytest.raises(OptionError, match="one non-empty prompt at a time"):
        mtp_call(model, torch.cat([ids, ids]), checkpoint, max_new_tokens=4)
    with pytest.raises(OptionError, match="attention_mask must be all ones"):
        mtp_call(model, ids, checkpoint, attention_mask=torch.tensor([[0, 1, 1, 1, 1]]), max_new_tokens=4)
    with pytest.raises(CheckpointError, match="was trained on base model"):
        mtp_call(tiny_model("qwen2"), ids, checkpoint, max_new_tokens=4)
    mtp_call(model, ids, checkpoint, max_new_tokens=4)
    other = adapter.load(checkpoint, tiny_model("llama"), adapter.identity_of(model, "tiny")).save(checkpoint.parent / "b")
    with pytest.raises(CheckpointError, match="already carries the MTP adapter"):
        mtp_call(model, ids, other, max_new_tokens=4)
